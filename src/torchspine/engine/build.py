"""Model construction for training: registry name + overrides, or a custom backbone spec.

``spec`` (a :class:`SpineNetSpec`, its dict, a JSON path or a genome string) replaces the
named model's backbone spec while keeping its detector preset (head, anchors, image size):
this is how searched architectures are trained (the search proxy task, paper section 4.1).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.ops import DropBlock2d

from torchspine.models.registry import create_model, model_info

__all__ = ["build_model", "add_dropblock"]


def build_model(name: str, *, num_classes: int, image_size: int, overrides: dict[str, Any] | None = None) -> nn.Module:
    """``create_model(name, num_classes=..., image_size=..., **overrides)``.

    ``overrides["spec"]`` (a :class:`SpineNetSpec`, its dict, a JSON path or a genome string)
    replaces the backbone spec of a ``retinanet_spinenet*`` / ``maskrcnn_spinenet*`` model while
    keeping its detector preset; the builders take it themselves.
    """
    kw = dict(overrides or {})
    kw.setdefault("num_classes", num_classes)
    kw.setdefault("image_size", image_size)
    if "spec" in kw and model_info(name).task not in ("detector", "instance_segmentation"):
        raise ValueError(f"model_overrides.spec is supported for detectors (retinanet_spinenet*, maskrcnn_spinenet*), "
                         f"not {name!r} (task {model_info(name).task!r})")
    return create_model(name, **kw)


def add_dropblock(model: nn.Module, *, block_size: int = 3, keep_prob: float = 0.9) -> int:
    """Insert torchvision's ``DropBlock2d`` after every BN of the backbone's scale-permuted
    blocks (the official placement: after each BN, before stochastic depth). Returns how
    many were inserted. Off by default, as in the released code (tensorflow/tpu
    models/official/detection/modeling/architecture/spinenet.py hard-codes it off)."""
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
