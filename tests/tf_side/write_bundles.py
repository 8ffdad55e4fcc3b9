"""TensorFlow side of the tensor-bundle reader tests: runs under the TF interpreter, never imports torch.

Writes real checkpoints with TensorFlow itself and records what ``tf.train.load_checkpoint``
reads back from them, so the numpy-only reader is checked against TensorFlow's own reader:

* ``tf1/model.ckpt``: a TF1 ``Saver`` (V2 format) checkpoint of a graph with float32, float64,
  int32, int64, bool, float16, bfloat16 and string variables, scalars and an empty tensor, with
  ``sharded=True`` over two logical CPUs (two data shards) and a ``global_step``;
* ``tf2/ckpt-1``: a TF2 ``tf.train.Checkpoint`` of nested ``tf.Module`` objects, split into
  several shards by ``MaxShardSizePolicy``, plus the object graph TF2 adds;
* ``tf2_big/ckpt-1``: one float32 tensor of 1.2 million values (the chunked crc32c path).

Usage: ``python write_bundles.py OUT_DIR``; writes ``OUT_DIR/<name>/...`` and
``OUT_DIR/<name>/expected.npz`` (numeric tensors by index, ``names`` as JSON) and
``expected_strings.json`` (string tensors as hex).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def dump_expected(prefix: str, out_dir: str) -> None:
    reader = tf.train.load_checkpoint(prefix)
    numeric, strings, dtypes = {}, {}, {}
    for name, _ in tf.train.list_variables(prefix):
        value = reader.get_tensor(name)
        dtypes[name] = reader.get_variable_to_dtype_map()[name].name
        if isinstance(value, bytes) or (isinstance(value, np.ndarray) and value.dtype == object):
            arr = np.asarray(value, dtype=object)
            strings[name] = {"shape": list(arr.shape), "hex": [bytes(v).hex() for v in arr.reshape(-1)]}
        elif dtypes[name] == "bfloat16":  # numpy's npz cannot hold ml_dtypes' bfloat16: widen (exact)
            numeric[name] = np.asarray(value).astype(np.float32)
        else:
            numeric[name] = np.asarray(value)
    names = sorted(numeric)
    np.savez(os.path.join(out_dir, "expected.npz"), names=np.array(json.dumps(names)),
             **{f"v{i}": numeric[n] for i, n in enumerate(names)})
    with open(os.path.join(out_dir, "expected_strings.json"), "w", encoding="utf-8") as f:
        json.dump({"strings": strings, "dtypes": dtypes}, f)


def tf1(out: str) -> None:
    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/cpu:0"):
            v1.get_variable("net/conv2d/kernel", initializer=rng.normal(size=(3, 3, 4, 8)).astype(np.float32))
            v1.get_variable("net/batch_normalization/moving_variance",
                            initializer=rng.uniform(0.5, 2, 8).astype(np.float32))
            v1.get_variable("f64/weights", initializer=rng.normal(size=(5, 7)))
            v1.get_variable("ints/i32", initializer=np.arange(-5, 7, dtype=np.int32).reshape(3, 4))
            v1.get_variable("half/h", initializer=rng.normal(size=(6,)).astype(np.float16))
            v1.train.get_or_create_global_step()
        with tf.device("/cpu:1"):
            v1.get_variable("ints/i64", initializer=np.array([-(2**40), 0, 2**62, 7], dtype=np.int64))
            v1.get_variable("flags/b", initializer=np.array([[True, False, True]]))
            v1.get_variable("scalar", initializer=np.float32(3.5))
            v1.get_variable("empty", initializer=np.zeros((0, 3), np.float32))
            v1.get_variable("bf16", initializer=tf.constant(rng.normal(size=(4,)), dtype=tf.bfloat16))
            v1.get_variable("names", initializer=tf.constant([b"conv2d", b"", b"\xff\x00bytes" * 30]), dtype=tf.string)
        saver = v1.train.Saver(sharded=True)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            prefix = saver.save(sess, os.path.join(out, "model.ckpt"))
    dump_expected(prefix, out)


class Block(tf.Module):
    def __init__(self, rng: np.random.Generator, c: int) -> None:
        super().__init__()
        self.kernel = tf.Variable(rng.normal(size=(3, 3, c, c)).astype(np.float32))
        self.gamma = tf.Variable(rng.uniform(0.5, 1.5, c))  # float64
        self.count = tf.Variable(np.int64(12345678901))


def tf2(out: str) -> None:
    rng = np.random.default_rng(1)
    root = tf.Module()
    root.backbone = tf.Module()
    root.backbone.blocks = [Block(rng, c) for c in (8, 16, 32)]
    root.flag = tf.Variable(True)
    root.label = tf.Variable("spinenet")
    ckpt = tf.train.Checkpoint(model=root)
    options = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=20_000))
    prefix = ckpt.save(os.path.join(out, "ckpt"), options=options)
    dump_expected(prefix, out)


def tf2_big(out: str) -> None:
    rng = np.random.default_rng(2)
    root = tf.Module()
    root.w = tf.Variable(rng.normal(size=(1000, 1200)).astype(np.float32))
    prefix = tf.train.Checkpoint(model=root).save(os.path.join(out, "ckpt"))
    dump_expected(prefix, out)


def main() -> int:
    out = sys.argv[1]
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    for name, fn in (("tf1", tf1), ("tf2", tf2), ("tf2_big", tf2_big)):
        os.makedirs(os.path.join(out, name), exist_ok=True)
        fn(os.path.join(out, name))
        print(f"wrote {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
