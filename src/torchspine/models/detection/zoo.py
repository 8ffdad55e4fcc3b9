"""Every registered detector: one preset table and one builder (paper sections 4.1, 6, Appendix A).

A :class:`DetectorPreset` names the detector class, the registered backbone it is built on and
the detector settings (keywords of the class) that differ from the class defaults. Settings
come from the official configs (tensorflow/tpu models/official/detection/configs/spinenet/
spinenet*_retinanet.yaml, spinenet*_mrcnn.yaml, spinenet-mbconv49_retinanet.yaml and
spinenet49_mbconv_retinanet.yaml):

* RetinaNet: image size 640 / 640 / 1024 / 1280 / 1280 for 49S / 49 / 96 / 143 / 190, head
  4x128 (49S), 4x256 (49, 96, 143), 7x512 (190), anchor size 3 (<= 96) or 4 (143, 190);
* RetinaNet-SpineNet-Mobile: separable head of 4 convs as wide as the endpoints (48 / 40 / 24
  for 49 / 49S / 49XS), 384 / 384 / 256 px, anchor size 3; the paper copy's Table 9 names
  (``*_paper``) map to the released presets;
* Mask R-CNN: 640 / 640 / 1024 / 1280 / 1536 px, anchor size 3 / 3 / 3 / 4 / 5; 190 has an RPN of
  384 filters and box / mask heads of 7 convs of 384; the backbone's BatchNorm is momentum 0.99,
  epsilon 1e-3 (``batch_norm_momentum`` / ``batch_norm_epsilon`` of every SpineNet Mask R-CNN
  config); ``momentum`` / ``epsilon`` / ``norm`` given by the caller win.

:func:`build_detector` routes each keyword by the detector class's signature: its settings go
to the detector, every other keyword is a backbone override (a spec field, or ``flavor`` for
SpineNet-Mobile); ``spec=`` (a spec object, dict, JSON path or genome) replaces the preset's
backbone spec, which is how searched architectures become detectors.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from torchspine.models.backbone import SpineNet
from torchspine.models.detection.maskrcnn import SpineNetMaskRCNN
from torchspine.models.detection.retinanet import SpineNetRetinaNet
from torchspine.models.registry import Task, create_model, register_model, register_variant
from torchspine.specs.spec import CODEBASE_FLAVORS, SpineNetSpec

__all__ = ["DETECTOR_PRESETS", "DetectorPreset", "build_detector", "detector_settings"]

# Official Mask R-CNN backbone BatchNorm (spinenet*_mrcnn.yaml batch_norm_activation): 0.99 / 1e-3,
# the same values as the Model Garden row of the codebase table.
MASKRCNN_NORM = {k: CODEBASE_FLAVORS["mg"][k] for k in ("momentum", "epsilon")}


@dataclass(frozen=True)
class DetectorPreset:
    """One registered detector: its class, backbone and the settings that differ from the defaults."""

    detector: type[nn.Module]
    backbone: str  # a registered backbone name
    settings: Mapping[str, Any]
    backbone_defaults: Mapping[str, Any] = field(default_factory=dict)  # spec overrides the caller may override
    family: str = "spinenet"

    @property
    def task(self) -> Task:
        return "instance_segmentation" if issubclass(self.detector, SpineNetMaskRCNN) else "detector"

    @property
    def image_size(self) -> int:
        return int(self.settings["image_size"])


def _retinanet(size: int, head: tuple[int, int], anchor: float) -> dict[str, Any]:
    return {"image_size": size, "head_num_convs": head[0], "head_num_filters": head[1], "anchor_size": anchor}


def _mobile(size: int) -> dict[str, Any]:
    # Head as wide as the endpoints (head_num_filters None), so width overrides keep them equal.
    return {"image_size": size, "head_num_convs": 4, "head_num_filters": None, "anchor_size": 3.0,
            "separable_head": True}


def _maskrcnn(size: int, anchor: float, **heads: int) -> dict[str, Any]:
    return {"image_size": size, "anchor_size": anchor, **heads}


_R, _M = SpineNetRetinaNet, SpineNetMaskRCNN
_MOBILE = "spinenet_mobile"

DETECTOR_PRESETS: dict[str, DetectorPreset] = {
    "retinanet_spinenet49s": DetectorPreset(_R, "spinenet49s", _retinanet(640, (4, 128), 3.0)),
    "retinanet_spinenet49": DetectorPreset(_R, "spinenet49", _retinanet(640, (4, 256), 3.0)),
    "retinanet_spinenet96": DetectorPreset(_R, "spinenet96", _retinanet(1024, (4, 256), 3.0)),
    "retinanet_spinenet143": DetectorPreset(_R, "spinenet143", _retinanet(1280, (4, 256), 4.0)),
    "retinanet_spinenet190": DetectorPreset(_R, "spinenet190", _retinanet(1280, (7, 512), 4.0)),
    **{f"retinanet_spinenet_mobile{m}": DetectorPreset(_R, f"spinenet_mobile{m}", _mobile(size), family=_MOBILE)
       for m, size in (("49", 384), ("49s", 384), ("49xs", 256), ("49xxs_paper", 256), ("49xs_paper", 384),
                       ("49s_paper", 384), ("49_paper", 384))},
    "maskrcnn_spinenet49s": DetectorPreset(_M, "spinenet49s", _maskrcnn(640, 3.0), MASKRCNN_NORM),
    "maskrcnn_spinenet49": DetectorPreset(_M, "spinenet49", _maskrcnn(640, 3.0), MASKRCNN_NORM),
    "maskrcnn_spinenet96": DetectorPreset(_M, "spinenet96", _maskrcnn(1024, 3.0), MASKRCNN_NORM),
    "maskrcnn_spinenet143": DetectorPreset(_M, "spinenet143", _maskrcnn(1280, 4.0), MASKRCNN_NORM),
    "maskrcnn_spinenet190": DetectorPreset(
        _M, "spinenet190", _maskrcnn(1536, 5.0, rpn_num_filters=384, head_num_filters=384, head_num_convs=7,
                                     mask_num_convs=7), MASKRCNN_NORM),
}


def detector_settings(detector: type[nn.Module]) -> frozenset[str]:
    """The keyword settings of a detector class (its signature minus the backbone and the parts)."""
    params = inspect.signature(detector.__init__).parameters
    parts = set(getattr(detector, "PARTS", ()))
    return frozenset(n for n, p in params.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in parts) | {"num_classes"}


def build_detector(name: str, *, spec: SpineNetSpec | dict | str | None = None, **kwargs: Any) -> nn.Module:
    """The detector of preset ``name`` (see :data:`DETECTOR_PRESETS`); keywords are its settings
    or backbone overrides, ``spec`` replaces the backbone spec (module docstring)."""
    if name not in DETECTOR_PRESETS:
        raise ValueError(f"unknown detector preset {name!r}; expected one of {sorted(DETECTOR_PRESETS)}")
    preset = DETECTOR_PRESETS[name]
    keys = detector_settings(preset.detector)
    settings = {**preset.settings, **{k: v for k, v in kwargs.items() if k in keys}}
    overrides = {k: v for k, v in kwargs.items() if k not in keys}
    if "norm" not in overrides:  # each default applies unless the caller sets it (or a whole NormSpec)
        overrides = {**preset.backbone_defaults, **overrides}
    if spec is None:
        backbone = create_model(preset.backbone, **overrides)
    else:
        base = SpineNetSpec.coerce(spec)
        backbone = SpineNet(base.replace(**overrides) if overrides else base)
    return preset.detector(backbone, **settings)


for _name, _preset in DETECTOR_PRESETS.items():
    _kind = "Mask R-CNN" if _preset.task == "instance_segmentation" else "RetinaNet"
    _shown = ", ".join(f"{k}={v}" for k, v in _preset.settings.items())
    register_variant(
        _name, build_detector, _name, task=_preset.task, family=_preset.family, preset=_preset.backbone,
        input_size=_preset.image_size,
        doc=f"{_kind} on {_preset.backbone} (official settings: {_shown}). Keywords: detector settings "
            f"(see {_preset.detector.__name__}), backbone spec fields, or spec= to replace the backbone spec.",
    )


def _on_any_spec(detector: type[nn.Module], prefix: str, spec: Any, preset: str, kwargs: dict[str, Any]) -> nn.Module:
    found = DETECTOR_PRESETS.get(prefix + preset)
    if found is None or found.detector is not detector:
        known = sorted(n.removeprefix(prefix) for n, p in DETECTOR_PRESETS.items() if p.detector is detector)
        raise ValueError(f"{prefix.rstrip('_')}: preset {preset!r} unknown; expected one of {known}")
    return build_detector(prefix + preset, spec=spec, **kwargs)


@register_model(task="detector")
def retinanet_spinenet(spec: Any, *, preset: str = "49", **kwargs: Any) -> SpineNetRetinaNet:
    """A RetinaNet on any backbone spec (a search result, JSON path or genome) with the detector
    settings of ``preset`` (head, anchors, image size): ``create_model("retinanet_spinenet", spec="best.json")``."""
    return _on_any_spec(SpineNetRetinaNet, "retinanet_spinenet", spec, preset, kwargs)


@register_model(task="instance_segmentation")
def maskrcnn_spinenet(spec: Any, *, preset: str = "49", **kwargs: Any) -> SpineNetMaskRCNN:
    """A Mask R-CNN on any backbone spec (a search result, JSON path or genome) with the
    detector settings of ``preset``: ``create_model("maskrcnn_spinenet", spec="best.json")``."""
    return _on_any_spec(SpineNetMaskRCNN, "maskrcnn_spinenet", spec, preset, kwargs)
