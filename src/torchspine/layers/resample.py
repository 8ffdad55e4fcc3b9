"""Cross-scale resampling (paper section 3.2, Figure 4; official ``resample_with_alpha``).

Order of operations, as in tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py:

1. reduce: 1x1 conv to ``a = int(C * alpha)`` channels -> BN -> act, where ``C`` is the
   parent's channels divided by 4 when the parent is a bottleneck-like block;
2. spatial: downsample with a 3x3/2 conv -> BN -> act, then max pooling for larger ratios
   (tensorflow/tpu: one pool with k3 s2 for ratio 4, k5 stride r/2 beyond; Model Garden: a
   chain of 3x3/2 'SAME' pools), or upsample by nearest neighbour;
3. project: 1x1 conv to the target block's input channels -> BN (no activation).

Any input size: the target size of level ``l`` is ``ceil(H / 2**l)``, which is what chained
stride-2 'SAME' or symmetric ops give. Integer-factor upsampling is exact nearest repeat (the
official op); when the sizes do not divide, a nearest resize to the exact target size is used
(the official fallback, ``resize_nearest_neighbor``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchspine.layers.conv import ConvNormAct, MaxPool2dSame
from torchspine.specs.spec import NormSpec

__all__ = ["ResampleWithAlpha", "resize_nearest", "level_size"]


def level_size(height: int, width: int, level: int) -> tuple[int, int]:
    """Spatial size of a level-``level`` feature map for an ``height x width`` input."""
    s = 2**level
    # (h + s - 1) // s, not -(-h // s): the ONNX exporters turn a floor division of a negative
    # symbolic size into a truncating one, which gave floor(W / s) instead of ceil(W / s).
    return (height + s - 1) // s, (width + s - 1) // s


def _exporting() -> bool:
    """True while ``torch.export`` / the ONNX exporters trace the model (shapes may be symbolic)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize to ``size``; exact repeat when the factor is an integer.

    While exporting, always a resize to the (possibly symbolic) ``size``, with no branch on the
    input size, so that one exported graph serves every image size: for an integer factor the
    nearest resize to ``size`` picks source index ``floor(i * h / th) = floor(i / f)``, the same
    pixels as the repeat.
    """
    if _exporting():
        return F.interpolate(x, size=(size[0], size[1]), mode="nearest")
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    th, tw = size
    if th % h == 0 and tw % w == 0 and th // h == tw // w:
        return F.interpolate(x, scale_factor=float(th // h), mode="nearest")
    return F.interpolate(x, size=(th, tw), mode="nearest")


class Resample(nn.Module):
    """``project(resize(downsample(reduce(x))))``: the shared order of every resampling scheme
    (``reduce`` and ``downsample`` may be ``None``; the resize is nearest-neighbour to ``size``)."""

    reduce: nn.Module | None
    downsample: nn.Module | None
    project: nn.Module
    in_level: int
    target_level: int

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.reduce is not None:
            x = self.reduce(x)
        if self.downsample is not None:
            x = self.downsample(x)
        # While exporting, every level change resizes to the symbolic target size, so the graph
        # stays right at sizes whose parity differs from the example input's.
        if self.in_level > self.target_level or (_exporting() and self.in_level != self.target_level) \
                or x.shape[-2:] != size:
            x = resize_nearest(x, size)
        return self.project(x)


class ResampleWithAlpha(Resample):
    """Resample one parent feature map to a target block's level and input channels."""

    def __init__(
        self,
        in_channels: int,
        in_level: int,
        target_level: int,
        target_channels: int,
        *,
        alpha: float,
        reduce_divisor: int,
        norm: NormSpec,
        act: str,
        padding: str,
    ) -> None:
        super().__init__()
        reduced = int((in_channels // reduce_divisor) * alpha)
        if reduced < 1:
            raise ValueError(
                f"resample L{in_level}->L{target_level}: int({in_channels}//{reduce_divisor} * {alpha}) "
                f"= {reduced} channels; increase resample_alpha or the filter scale"
            )
        self.in_level = in_level
        self.target_level = target_level
        self.reduce = ConvNormAct(in_channels, reduced, 1, norm=norm, act=act, padding=padding)
        down: list[nn.Module] = []
        if in_level < target_level:
            down.append(ConvNormAct(reduced, reduced, 3, stride=2, norm=norm, act=act, padding=padding))
            ratio = 2 ** (target_level - in_level)
            if ratio > 2:
                if padding == "same":  # Model Garden: repeated MaxPool2D(3, 2, 'SAME')
                    down.extend(MaxPool2dSame(3, 2) for _ in range(target_level - in_level - 1))
                else:  # tensorflow/tpu: a single pool, k3 for ratio 4, k5 beyond, stride r // 2
                    down.append(MaxPool2dSame(3 if ratio <= 4 else 5, ratio // 2))
        self.downsample = nn.Sequential(*down) if down else None
        self.project = ConvNormAct(reduced, target_channels, 1, norm=norm, act=None, padding=padding)
