"""Variable names and shapes of tensorflow/tpu-style SpineNet RetinaNets at the catalogue's sizes.

Runs under the TF interpreter and never imports torch. Reuses the TF1 graph of
``build_tpu_style.py`` (TF itself names the variables ``conv2d_N`` / ``batch_normalization_N``
per scope) with the model size set per job: ``filter_size_scale``, ``resample_alpha``,
``endpoints_num_filters``, ``block_repeats`` (the first block of each tensorflow/tpu
``block_group`` keeps its projection, the repeats have none: tensorflow/tpu
models/official/detection/modeling/architecture/spinenet.py) and the RetinaNet head. Only the
graph is built: no values are initialised or saved, so SpineNet-190 costs no memory.

Usage: ``python tpu_catalogue_shapes.py JOBS.json OUT.json``; ``JOBS.json`` is a list of
``{"name", "scale", "alpha", "endpoints", "repeats", "head_convs", "head_filters", "num_classes"}``;
``OUT.json`` maps each name to ``{variable name: shape}``.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import build_tpu_style as tpu  # noqa: E402

v1 = tpu.v1
_bottleneck, _residual = tpu.bottleneck, tpu.residual


def _repeated(job: dict):
    def bottleneck(x, f, project):
        x = _bottleneck(x, f, project)
        for _ in range(1, job["repeats"]):
            x = _bottleneck(x, f, False)
        return x

    def residual(x, f):
        for _ in range(job["repeats"]):
            x = _residual(x, f)
        return x

    return bottleneck, residual


def shapes(job: dict) -> dict[str, list[int]]:
    tpu.SCALE, tpu.ALPHA, tpu.ENDPOINTS = job["scale"], job["alpha"], job["endpoints"]
    tpu.HEAD_CONVS, tpu.HEAD_FILTERS, tpu.NUM_CLASSES = job["head_convs"], job["head_filters"], job["num_classes"]
    tpu.bottleneck, tpu.residual = _repeated(job)
    with v1.Graph().as_default():
        images = v1.placeholder(tpu.tf.float32, [1, None, None, 3])
        tpu.retinanet_head(tpu.spinenet(images))
        return {v.op.name: v.shape.as_list() for v in v1.global_variables()}


def main() -> int:
    v1.disable_eager_execution()
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    out = {job["name"]: shapes(job) for job in jobs}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
