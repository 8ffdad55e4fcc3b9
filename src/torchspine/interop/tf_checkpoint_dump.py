"""Dump the variables of a TensorFlow checkpoint to ``.npz`` (needs TensorFlow, not torch).

This file imports nothing from torchspine and no torch, so it can run under another Python
interpreter that has TensorFlow (``torchspine convert --tf-python /path/to/python``, or the
``TORCHSPINE_TF_PYTHON`` environment variable): TensorFlow and torch then never share a
process or a virtual environment. Reading uses only ``tf.train.load_checkpoint``.

Usage: ``python tf_checkpoint_dump.py CHECKPOINT OUT.npz`` writes ``names`` (a JSON list) and
``v0, v1, ...`` (the arrays, in the order of ``names``).
"""

from __future__ import annotations

import json
import sys

# Variables a converter never needs: optimizer slots, step counters, the object graph.
SKIP_MARKERS = ("/.OPTIMIZER_SLOT/", "optimizer/", "/Momentum", "global_step", "save_counter",
                "_CHECKPOINTABLE_OBJECT_GRAPH", "/ExponentialMovingAverage")


def read_checkpoint(path: str) -> dict:
    """``{variable name: numpy array}`` for every numeric model variable of the checkpoint."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    out = {}
    for name, _shape in tf.train.list_variables(path):
        if any(m in name for m in SKIP_MARKERS):
            continue
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
            out[name] = value
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tf_checkpoint_dump.py CHECKPOINT OUT.npz", file=sys.stderr)
        return 2
    import numpy as np

    variables = read_checkpoint(argv[0])
    names = sorted(variables)
    arrays = {f"v{i}": variables[n] for i, n in enumerate(names)}
    np.savez(argv[1], names=np.array(json.dumps(names)), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
