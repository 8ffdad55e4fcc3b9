"""Model construction for training: registry name + overrides, or a custom backbone spec.

``spec`` (a :class:`SpineNetSpec`, its dict, a JSON path or a genome string) replaces the
named model's backbone spec while keeping its detector preset (head, anchors, image size):
this is how searched architectures are trained (issue 4 / search proxy task).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.ops import DropBlock2d

from torchspine.models.registry import create_model
from torchspine.specs.spec import SpineNetSpec

__all__ = ["build_model", "resolve_spec", "add_dropblock"]


def resolve_spec(spec: Any) -> SpineNetSpec:
    if isinstance(spec, SpineNetSpec):
        return spec.validate()
    if isinstance(spec, dict):
        return SpineNetSpec.from_dict(spec, source="model_overrides.spec")
    if isinstance(spec, str):
        return SpineNetSpec.from_genome(spec) if spec.startswith("v1|") else SpineNetSpec.load(spec)
    raise ValueError(f"model_overrides.spec must be a SpineNetSpec, a dict, a JSON path or a genome string, "
                     f"got {type(spec).__name__}")


def build_model(name: str, *, num_classes: int, image_size: int, overrides: dict[str, Any] | None = None) -> nn.Module:
    """``create_model(name, num_classes=..., image_size=..., **overrides)``, honouring ``spec``."""
    kw = dict(overrides or {})
    kw.setdefault("num_classes", num_classes)
    kw.setdefault("image_size", image_size)
    spec = kw.pop("spec", None)
    if spec is None:
        return create_model(name, **kw)
    from torchspine.models.backbone import SpineNet

    if name.startswith("retinanet_spinenet"):
        from torchspine.models.retinanet import DETECTOR_PRESETS, RETINANET_KEYS, SpineNetRetinaNet

        presets, keys, cls = DETECTOR_PRESETS, RETINANET_KEYS, SpineNetRetinaNet
        preset_id = name.removeprefix("retinanet_spinenet")
    elif name.startswith("maskrcnn_spinenet"):
        from torchspine.models.maskrcnn import MASKRCNN_KEYS, MASKRCNN_PRESETS, SpineNetMaskRCNN

        presets, keys, cls = MASKRCNN_PRESETS, MASKRCNN_KEYS, SpineNetMaskRCNN
        preset_id = name.removeprefix("maskrcnn_spinenet")
    else:
        raise ValueError(f"model_overrides.spec is supported for retinanet_spinenet*/maskrcnn_spinenet* models, "
                         f"not {name!r}")
    if preset_id not in presets:
        raise ValueError(f"model {name!r}: no detector preset {preset_id!r}; known: {sorted(presets)}")
    preset = presets[preset_id]
    settings = {k: getattr(preset, k) for k in ("image_size", "head_num_filters", "head_num_convs", "anchor_size")
                if hasattr(preset, k)}
    det = {k: v for k, v in kw.items() if k in keys}
    spec_overrides = {k: v for k, v in kw.items() if k not in keys}
    settings.update(det)
    s = resolve_spec(spec)
    if spec_overrides:
        s = s.replace(**spec_overrides)
    return cls(SpineNet(s), **settings)


def add_dropblock(model: nn.Module, *, block_size: int = 3, keep_prob: float = 0.9) -> int:
    """Insert torchvision's ``DropBlock2d`` after every BN of the backbone's scale-permuted
    blocks (the official placement: after each BN, before stochastic depth). Returns how
    many were inserted. Off by default, as in the released code (reference section 7)."""
    backbone = getattr(model, "backbone", model)
    root = getattr(backbone, "blocks", backbone)
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Sequential(child, DropBlock2d(1.0 - keep_prob, block_size)))
                count += 1
            else:
                visit(child)

    visit(root)
    return count
