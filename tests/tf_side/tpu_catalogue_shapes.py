"""Variable names and shapes of tensorflow/tpu-style SpineNet detectors and classifiers at the
catalogue's sizes.

Runs under the TF interpreter and never imports torch. Reuses the TF1 graph of
``build_tpu_style.py`` (TF itself names the variables ``conv2d_N`` / ``batch_normalization_N``
per scope) with the model size set per job: ``filter_size_scale``, ``resample_alpha``,
``endpoints_num_filters``, ``block_repeats`` (the first block of each tensorflow/tpu
``block_group`` keeps its projection, the repeats have none: tensorflow/tpu
models/official/detection/modeling/architecture/spinenet.py) and one head per job: the
RetinaNet head, the Mask R-CNN heads (``RpnHead``, ``FastrcnnHead``, ``MaskrcnnHead`` of
tensorflow/tpu models/official/detection/modeling/architecture/heads.py: RPN filters, the box
and mask heads' conv count and width, the box head's fc width) or the classification head
(``classification_head/dense``). Only the graph is built: no values are initialised or saved,
so SpineNet-190 costs no memory.

Usage: ``python tpu_catalogue_shapes.py JOBS.json OUT.json``; ``JOBS.json`` is a list of
``{"name", "scale", "alpha", "endpoints", "repeats", "head", "num_classes", ...}`` with ``head``
``"retinanet"`` (default; ``head_convs``, ``head_filters``), ``"maskrcnn"`` (``rpn_filters``,
``head_convs``, ``head_filters``, ``fc_dims``) or ``"classifier"``; ``OUT.json`` maps each name
to ``{variable name: shape}``.
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
    tpu.bottleneck, tpu.residual = _repeated(job)
    head = job.get("head", "retinanet")
    with v1.Graph().as_default():
        images = v1.placeholder(tpu.tf.float32, [1, None, None, 3])
        feats = tpu.spinenet(images)
        if head == "retinanet":
            tpu.HEAD_CONVS, tpu.HEAD_FILTERS = job["head_convs"], job["head_filters"]
            tpu.NUM_CLASSES = job["num_classes"]
            tpu.retinanet_head(feats)
        elif head == "maskrcnn":  # RoI features as wide as the endpoints: 7x7 (box head), 14x14 (mask head)
            tpu.RPN_FILTERS = job["rpn_filters"]
            tpu.MRCNN_CONVS, tpu.MRCNN_FILTERS = job["head_convs"], job["head_filters"]
            tpu.FC_DIMS, tpu.MRCNN_CLASSES = job["fc_dims"], job["num_classes"]
            box_rois = v1.placeholder(tpu.tf.float32, [1, 7, 7, job["endpoints"]])
            mask_rois = v1.placeholder(tpu.tf.float32, [1, 14, 14, job["endpoints"]])
            tpu.maskrcnn_heads(feats, box_rois, mask_rois)
        elif head == "classifier":  # a dense layer on the pooled endpoints
            pooled = v1.placeholder(tpu.tf.float32, [1, job["endpoints"]])
            with v1.variable_scope("classification_head"):
                v1.layers.dense(pooled, job["num_classes"])
        else:
            raise ValueError(f"job {job['name']}: unknown head {head!r}")
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
