"""SpineNet-49 with ResNeXt blocks (paper Appendix B, Table 10).

"Replacing the blocks in SpineNet-49 with either ResNeXt 32x4d or 32x8d blocks": every block,
the two stem groups and the residual blocks included, becomes a ResNeXt bottleneck
(:mod:`torchspine.layers.resnext`) at the same level and with the same parents. That is the
configuration that reproduces the paper copy's Table 10 parameter counts once the standard
4x256 RetinaNet head (6,711,895 trainable parameters at 91 classes, as in retinanet_spinenet49) is
added: 23,219,264 + 6.71M = 29.93M (paper: 30.0M) and 39,332,928 + 6.71M = 46.04M (46.1M).
Keeping the residual blocks and the stem as they were gives 28.6M / 39.5M instead.

Registered: ``spinenet49_resnext32x4d``, ``spinenet49_resnext32x8d``.
"""

from __future__ import annotations

from typing import Any

from torchspine.models.backbone import SpineNet
from torchspine.models.registry import register_model
from torchspine.specs.spec import BlockSpec, SpineNetSpec
from torchspine.specs.zoo import spinenet_spec

__all__ = ["resnext_spec"]


def resnext_spec(
    spec: SpineNetSpec,
    *,
    groups: int = 32,
    width_per_group: int = 4,
    replace_types: tuple[str, ...] = ("bottleneck", "residual"),
    stem: bool = True,
) -> SpineNetSpec:
    """``spec`` with its blocks of ``replace_types`` (and the stem if ``stem``) turned into
    ResNeXt ``groups x width_per_group``d bottlenecks; levels and connections unchanged."""
    blocks = tuple(
        BlockSpec(b.level, "resnext", b.input_offsets, b.is_output) if b.block_type in replace_types else b
        for b in spec.blocks
    )
    options = {**dict(spec.block_options), "groups": groups, "width_per_group": width_per_group}
    overrides: dict[str, Any] = {"blocks": blocks, "block_options": options}
    if stem:
        overrides["stem.block_type"] = "resnext"
    suffix = f"_resnext{groups}x{width_per_group}d"
    overrides["name"] = (spec.name or "spinenet") + suffix
    return spec.replace(**overrides)


@register_model(family="spinenet_resnext")
def spinenet49_resnext32x4d(**overrides: Any) -> SpineNet:
    """SpineNet-49 with ResNeXt 32x4d blocks (paper Appendix B); overrides are spec fields."""
    return SpineNet(resnext_spec(spinenet_spec("49"), groups=32, width_per_group=4).replace(**overrides))


@register_model(family="spinenet_resnext")
def spinenet49_resnext32x8d(**overrides: Any) -> SpineNet:
    """SpineNet-49 with ResNeXt 32x8d blocks (paper Appendix B); overrides are spec fields."""
    return SpineNet(resnext_spec(spinenet_spec("49"), groups=32, width_per_group=8).replace(**overrides))
