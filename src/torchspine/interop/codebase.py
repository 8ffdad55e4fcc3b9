"""Which official codebase wrote a checkpoint, and the conventions each one trained with.

* **tensorflow/tpu** (``"tpu"``, TF1 name-based checkpoints: ``spinenet/conv2d_N/kernel``):
  fixed symmetric padding for strided convs (``nn_ops.conv2d_fixed_padding``) and, by model
  kind, the BatchNorm of its yamls: RetinaNet and backbones momentum 0.997 / epsilon 1e-4
  (``configs/base_config.py``), Mask R-CNN 0.99 / 1e-3 (``configs/spinenet/spinenet*_mrcnn.yaml``),
  ImageNet classifiers 0.9 / 1e-5 (``configs/classification_config.py``), all in tensorflow/tpu
  ``models/official/detection``.
* **Model Garden** (``"mg"``, TF2 object-based checkpoints: ``backbone/layer_with_weights-N``):
  Keras ``'same'`` padding and momentum 0.99 / epsilon 1e-3 (tensorflow/models
  ``official/vision/configs/common.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from torchspine.specs.spec import CODEBASE_FLAVORS

__all__ = ["CODEBASE_DEFAULTS", "CODEBASE_NAMES", "Codebase", "checkpoint_task", "codebase_settings",
           "detect_codebase", "detector_settings_for"]

Codebase = Literal["tpu", "mg"]

CODEBASE_NAMES = {"tpu": "tensorflow/tpu", "mg": "Model Garden"}

# Padding convention and BN settings of each codebase's detection backbones: the one table of
# the specs (torchspine.specs.spec.CODEBASE_FLAVORS).
CODEBASE_DEFAULTS: dict[str, dict[str, Any]] = CODEBASE_FLAVORS

# tensorflow/tpu trained its Mask R-CNN and ImageNet models with other BN settings than RetinaNet.
_TPU_TASK_NORM = {
    "instance_segmentation": {"momentum": 0.99, "epsilon": 1e-3},
    "classifier": {"momentum": 0.9, "epsilon": 1e-5},
}


def codebase_settings(codebase: str, task: str) -> dict[str, Any]:
    """Spec settings (padding, BN momentum / epsilon) a checkpoint of ``task`` from ``codebase`` needs."""
    if codebase not in CODEBASE_DEFAULTS:
        raise ValueError(f"unknown codebase {codebase!r}; expected 'tpu' (tensorflow/tpu) or 'mg' (Model Garden)")
    out = dict(CODEBASE_DEFAULTS[codebase])
    if codebase == "tpu":
        out.update(_TPU_TASK_NORM.get(task, {}))
    return out


def detect_codebase(names: list[str] | set[str]) -> Codebase:
    """``"mg"`` for object-based names (``layer_with_weights-N``), ``"tpu"`` for ``spinenet/...``."""
    if any("layer_with_weights-" in n for n in names):
        return "mg"
    if any(n.startswith(("spinenet/", "spinenet_mbconv/")) or "/spinenet/" in n or "/spinenet_mbconv/" in n
           for n in names):
        return "tpu"
    sample = sorted(names)[:5]
    raise ValueError(f"cannot tell which official codebase wrote this checkpoint (no 'layer_with_weights-N' "
                     f"and no 'spinenet/' variables); first names: {sample}")


def checkpoint_task(names: list[str] | set[str]) -> str:
    """The kind of model that wrote the checkpoint, from its head scopes (the BN settings follow
    it even when only the backbone is converted)."""
    if any("rpn_head/" in n or "fast_rcnn_head/" in n for n in names):
        return "instance_segmentation"
    if any("classification_head/" in n for n in names):
        return "classifier"
    if any("class_net/" in n or "_classifier/" in n for n in names):
        return "detector"
    return "backbone"


def detector_settings_for(codebase: str, task: str) -> dict[str, Any]:
    """The inference conventions of each codebase that a converted detector keeps (its outputs
    then match what the official code returns for the same image):

    * tensorflow/tpu resizes with TF1 ``tf.image.resize_images`` (no half-pixel centres;
      ``utils/input_utils.py``) and clips boxes to the scaled image (``image_info[1]`` is the
      scaled size; ``modeling/retinanet_model.py``);
    * Model Garden resizes with TF2 ``tf.image.resize`` (half-pixel centres) and clips to the
      desired (padded) size, its ``image_info[1]`` (``official/vision/ops/preprocess_ops.py``,
      ``official/vision/serving/detection.py``).

    Both then run the same detection generator (the RetinaNet default ``postprocess="official"``).
    """
    if task not in ("detector", "instance_segmentation"):
        return {}
    out: dict[str, Any] = {"resize_interpolation": "bilinear_tf1" if codebase == "tpu" else "bilinear"}
    if task == "detector":
        out["clip_boxes_to"] = "image" if codebase == "tpu" else "canvas"
    return out
