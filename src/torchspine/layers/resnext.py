"""ResNeXt bottleneck blocks for SpineNet (paper Appendix B; Xie et al. 2017, "aggregated
residual transformations").

A ResNeXt ``C x Dd`` block is the bottleneck block (``layers.blocks.BottleneckBlock``) whose 3x3
conv is grouped into ``C`` groups of ``D`` channels each, and whose inner width follows the
ResNeXt paper's rule ``int(filters * D / 64) * C`` (so a ResNet stage with 64 filters gets
``C * D`` inner channels, and the width doubles with the filters). Output is ``4 * filters``
channels, like the bottleneck, so the alpha resampling divides a ResNeXt parent's channels
by 4.

Spec settings (``SpineNetSpec.block_options``): ``groups`` (cardinality, default 32) and
``width_per_group`` (default 4).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchspine.layers.blocks import BlockFamily, BottleneckBlock, register_block

__all__ = ["resnext_width", "build_resnext_block"]


def resnext_width(filters: int, *, groups: int, width_per_group: int) -> int:
    """Inner width of a ResNeXt bottleneck with ``filters`` filters (ResNeXt paper, Table 1)."""
    if not (isinstance(groups, int) and groups >= 1):
        raise ValueError(f"ResNeXt: groups must be a positive integer, got {groups!r}")
    if not (isinstance(width_per_group, int) and width_per_group >= 1):
        raise ValueError(f"ResNeXt: width_per_group must be a positive integer, got {width_per_group!r}")
    return max(1, int(filters * width_per_group / 64)) * groups


def build_resnext_block(in_channels: int, filters: int, *, options: dict[str, Any], **kw: Any) -> nn.Module:
    groups = options.get("groups", 32)
    width_per_group = options.get("width_per_group", 4)
    width = resnext_width(filters, groups=groups, width_per_group=width_per_group)
    return BottleneckBlock(in_channels, filters, groups=groups, width=width, **kw)


register_block("resnext", BlockFamily(build_resnext_block, lambda f: 4 * f, 4))
