"""TensorFlow side of the equivalence tests: runs under the TF interpreter, never imports torch.

Builds official Model Garden models (``tf-models-official``: ``official.vision.modeling``),
gives them non-trivial weights and BN statistics, saves a TF2 object-based checkpoint
(``tf.train.Checkpoint(backbone=..., head=...)``, the layout of Model Garden's
``checkpoint_items``), runs them on fixed random inputs, and writes the outputs.

Usage: ``python build_official.py JOBS.json OUT_DIR``. ``JOBS.json`` is a list of
``{"name", "family": "spinenet"|"mobile", "model_id", "dtype": "float32"|"float64",
"inputs": [[H, W], ...], "head": {...} or null, "seed", "activation", "scaling": {...},
"calibrate": bool}``: ``scaling`` overrides the model id's SCALING_MAP entry (tiny widths),
``calibrate`` sets BN statistics from the network's own activations (see :func:`calibrate`);
for each job ``OUT_DIR/<name>/``
receives ``ckpt-1.*`` and ``io.npz`` (``input_i`` NHWC, ``out_i_<level>`` NHWC, and for a head
``cls_i_<level>`` / ``box_i_<level>``).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402


def randomize(model: tf_keras.layers.Layer, rng: np.random.Generator) -> None:
    """Non-trivial weights: keep the random kernels, randomise BN affine and moving statistics."""
    for v in model.weights:
        name = v.name
        shape = tuple(v.shape)
        if "gamma" in name:
            val = rng.uniform(0.5, 1.5, shape)
        elif "beta" in name:
            val = rng.normal(0.0, 0.2, shape)
        elif "moving_mean" in name:
            val = rng.normal(0.0, 0.2, shape)
        elif "moving_variance" in name:
            val = rng.uniform(0.5, 2.0, shape)
        elif "bias" in name:
            val = rng.normal(0.0, 0.2, shape)
        else:  # kernels: variance scaling with a random gain per layer
            fan_in = int(np.prod(shape[:-1])) if "depthwise" not in name else int(np.prod(shape[:2]))
            val = rng.normal(0.0, 1.0, shape) * np.sqrt(1.0 / max(fan_in, 1)) * rng.uniform(0.8, 1.2)
        v.assign(val.astype(v.dtype.as_numpy_dtype))


def calibrate(model: tf_keras.layers.Layer, x: np.ndarray, rng: np.random.Generator, call=None) -> None:
    """BN moving statistics measured on the network's own activations, then perturbed.

    Random statistics make a deep network's activations explode or vanish, which hides errors
    in float noise or saturation; measured ones keep every layer in its working range. With
    momentum 0 one training-mode pass stores each layer's batch mean and variance (layers in
    order, each seeing the already-normalised outputs of the previous ones); a perturbation
    (mean +- 0.1 std, variance x [0.7, 1.4]) keeps the statistics from being the exact batch
    ones, so the inference path is what is tested.
    """
    bns = [m for m in model.submodules if isinstance(m, tf_keras.layers.BatchNormalization)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    (call or model)(x, training=True)
    for m, mom in zip(bns, saved):
        m.momentum = mom
        var = m.moving_variance.numpy()
        mean = m.moving_mean.numpy() + 0.1 * np.sqrt(var) * rng.normal(size=var.shape)
        m.moving_mean.assign(mean.astype(var.dtype))
        m.moving_variance.assign((var * rng.uniform(0.7, 1.4, var.shape)).astype(var.dtype))


def build_backbone(job: dict, size: tuple[int, int]):
    # A static input size matters: with an unknown width, Model Garden's zero-out-degree test
    # (``j_feat.shape[2] == target_width``) is never true and the L5 extra connection is lost.
    spec = tf_keras.layers.InputSpec(shape=[None, size[0], size[1], 3])
    mid = job["model_id"]
    if job["family"] == "spinenet":
        from official.vision.modeling.backbones import spinenet

        sc = {**spinenet.SCALING_MAP[mid], **job.get("scaling", {})}
        return spinenet.SpineNet(
            input_specs=spec, endpoints_num_filters=sc["endpoints_num_filters"],
            resample_alpha=sc["resample_alpha"], block_repeats=sc["block_repeats"],
            filter_size_scale=sc["filter_size_scale"], activation=_activation(job))
    from official.vision.modeling.backbones import spinenet_mobile

    sc = {**spinenet_mobile.SCALING_MAP[mid], **job.get("scaling", {})}
    return spinenet_mobile.SpineNetMobile(
        input_specs=spec, endpoints_num_filters=sc["endpoints_num_filters"],
        block_repeats=sc["block_repeats"], filter_size_scale=sc["filter_size_scale"],
        activation=_activation(job), se_ratio=0.2, expand_ratio=6)


def _activation(job: dict) -> str:
    # One activation drives backbone and head (Model Garden norm_activation); mobile yamls: hard_swish.
    return job.get("activation", "hard_swish" if job["family"] == "mobile" else "relu")


def build_head(job: dict):
    from official.vision.modeling.heads import dense_prediction_heads

    h = job["head"]
    return dense_prediction_heads.RetinaNetHead(
        min_level=3, max_level=7, num_classes=h["num_classes"], num_anchors_per_location=h["num_anchors"],
        num_convs=h["num_convs"], num_filters=h["num_filters"], use_separable_conv=h.get("separable", False),
        activation=_activation(job))


def run_job(job: dict, out_dir: str) -> None:
    tf_keras.backend.set_floatx(job.get("dtype", "float32"))
    dtype = np.float64 if job.get("dtype") == "float64" else np.float32
    rng = np.random.default_rng(job.get("seed", 0))
    backbone0 = build_backbone(job, job["inputs"][0])
    items = {"backbone": backbone0}
    head = None
    if job.get("head"):
        head = build_head(job)
        items["head"] = head
    io: dict[str, np.ndarray] = {}
    for i, (h, w) in enumerate(job["inputs"]):
        x = rng.normal(0.0, 1.0, (1, h, w, 3)).astype(dtype)
        if i == 0:
            backbone = backbone0
        else:  # same architecture and weights, built for this input size
            backbone = build_backbone(job, (h, w))
            backbone.set_weights(backbone0.get_weights())
        feats = backbone(x, training=False)
        if head is not None and i == 0:
            head(feats, training=False)  # build the head's variables
            randomize(head, rng)
        if i == 0:
            randomize(backbone, rng)
            if job.get("calibrate"):
                calibrate(backbone, rng.normal(0.0, 1.0, (2, h, w, 3)).astype(dtype), rng)
                if head is not None:
                    calib = backbone(rng.normal(0.0, 1.0, (2, h, w, 3)).astype(dtype), training=False)
                    calibrate(head, calib, rng, call=lambda f, training: head(f, training=training))
            feats = backbone(x, training=False)
        io[f"input_{i}"] = x
        for lvl, t in feats.items():
            io[f"out_{i}_{lvl}"] = t.numpy()
        if head is not None:
            scores, boxes = head(feats, training=False)[:2]
            for lvl in scores:
                io[f"cls_{i}_{lvl}"] = scores[lvl].numpy()
                io[f"box_{i}_{lvl}"] = boxes[lvl].numpy()
    target = os.path.join(out_dir, job["name"])
    os.makedirs(target, exist_ok=True)
    tf.train.Checkpoint(**items).save(os.path.join(target, "ckpt"))
    np.savez(os.path.join(target, "io.npz"), **io)
    tf_keras.backend.set_floatx("float32")


def main() -> int:
    jobs_file, out_dir = sys.argv[1], sys.argv[2]
    with open(jobs_file, encoding="utf-8") as f:
        jobs = json.load(f)
    for job in jobs:
        run_job(job, out_dir)
        print(f"built {job['name']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
