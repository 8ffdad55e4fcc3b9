"""MBConv blocks and separable-conv resampling for SpineNet-Mobile (paper Appendix A;
tensorflow/tpu models/official/detection/modeling/architecture/nn_blocks.py ``mbconv_block``,
spinenet_mbconv.py ``resample_with_sepconv``,
Model Garden ``InvertedBottleneckBlock``).

* :class:`MBConvBlock` (MnasNet / MobileNetV2 inverted bottleneck): expand 1x1 (``in *
  expand_ratio``) -> BN -> act -> depthwise kxk (stride) -> BN -> act -> squeeze-excitation ->
  project 1x1 (``out``) -> BN, no activation. Residual (with stochastic depth) only when
  ``in == out`` and stride 1; no activation after the add (linear bottleneck).
* Squeeze-excitation squeezes to ``max(1, int(in_channels * se_ratio))`` channels (a ratio of
  the block's *input* channels, as both official codebases do), with two gate/activation
  flavours: tensorflow/tpu (inner swish, sigmoid gate) and Model Garden (inner relu,
  hard-sigmoid gate ``relu6(x + 3) / 6``). torchvision's ``SqueezeExcitation`` is the op.
* :class:`ResampleSepConv`: no alpha reduction; downsample by repeated [depthwise 3x3/2 -> BN
  -> act], upsample by nearest neighbour, then 1x1 conv to the target channels -> BN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation

from torchspine.layers.blocks import BlockFamily, _drop_path, register_block
from torchspine.layers.conv import ConvNormAct
from torchspine.layers.resample import Resample
from torchspine.specs.spec import NormSpec

__all__ = ["MBConvBlock", "ResampleSepConv", "SE_ACTIVATIONS", "SE_GATINGS", "MBCONV_DEFAULT_OPTIONS"]

# Inner activation and gate of the squeeze-excitation module, by official name.
SE_ACTIVATIONS: dict[str, type[nn.Module]] = {"swish": nn.SiLU, "relu": nn.ReLU, "hard_swish": nn.Hardswish}
SE_GATINGS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}

# Official defaults (tensorflow/tpu ``DEFAULT_EXPAND_RATIO``, ``se_ratio`` 0.2, kernel 3,
# ``nn_ops.squeeze_excitation`` with swish inside and a sigmoid gate).
MBCONV_DEFAULT_OPTIONS: dict[str, Any] = {
    "expand_ratio": 6,
    "kernel_size": 3,
    "se_ratio": 0.2,
    "se_activation": "swish",
    "se_gating": "sigmoid",
}


class MBConvBlock(nn.Module):
    """Inverted bottleneck with squeeze-excitation; output ``out_channels`` channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        expand_ratio: int = 6,
        kernel_size: int = 3,
        se_ratio: float | None = 0.2,
        se_activation: str = "swish",
        se_gating: str = "sigmoid",
        norm: NormSpec,
        act: str = "relu",
        padding: str = "symmetric",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if se_activation not in SE_ACTIVATIONS:
            raise ValueError(f"MBConv: unknown se_activation {se_activation!r}; expected one of {tuple(SE_ACTIVATIONS)}")
        if se_gating not in SE_GATINGS:
            raise ValueError(f"MBConv: unknown se_gating {se_gating!r}; expected one of {tuple(SE_GATINGS)}")
        if not (isinstance(expand_ratio, int) and expand_ratio >= 1):
            raise ValueError(f"MBConv: expand_ratio must be a positive integer, got {expand_ratio!r}")
        if not (isinstance(kernel_size, int) and kernel_size % 2 == 1):
            raise ValueError(f"MBConv: kernel_size must be an odd integer, got {kernel_size!r}")
        self.out_channels = out_channels
        mid = in_channels * expand_ratio
        self.expand = (ConvNormAct(in_channels, mid, 1, norm=norm, act=act, padding=padding)
                       if expand_ratio != 1 else None)
        self.depthwise = ConvNormAct(mid, mid, kernel_size, stride=stride, groups=mid, norm=norm, act=act,
                                     padding=padding)
        self.se = None
        if se_ratio is not None and 0.0 < se_ratio <= 1.0:
            self.se = SqueezeExcitation(mid, max(1, int(in_channels * se_ratio)),
                                        activation=SE_ACTIVATIONS[se_activation],
                                        scale_activation=SE_GATINGS[se_gating])
        self.project = ConvNormAct(mid, out_channels, 1, norm=norm, act=None, padding=padding)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path = _drop_path(drop_path_rate) if self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if self.has_residual:
            y = self.drop_path(y) + x
        return y


def _build_mbconv(in_channels: int, filters: int, *, options: dict[str, Any], **kw: Any) -> nn.Module:
    known = set(MBCONV_DEFAULT_OPTIONS)
    opts = {k: v for k, v in options.items() if k in known}
    return MBConvBlock(in_channels, filters, **{**MBCONV_DEFAULT_OPTIONS, **opts}, **kw)


# MBConv keeps ``filters`` output channels; there is no alpha reduction in front of it.
register_block("mbconv", BlockFamily(_build_mbconv, lambda f: f, 1))


class ResampleSepConv(Resample):
    """SpineNet-Mobile cross-scale resampling (official ``resample_with_sepconv``).

    Downsampling by ``2**k`` is ``k`` times [depthwise 3x3/2 (no bias) -> BN -> act] on the
    parent's channels; upsampling is nearest neighbour; then a 1x1 conv to
    ``target_channels`` -> BN (no activation).
    """

    def __init__(
        self,
        in_channels: int,
        in_level: int,
        target_level: int,
        target_channels: int,
        *,
        norm: NormSpec,
        act: str,
        padding: str,
    ) -> None:
        super().__init__()
        self.in_level = in_level
        self.target_level = target_level
        self.reduce = None
        steps = max(target_level - in_level, 0)
        self.downsample = (
            nn.Sequential(*(ConvNormAct(in_channels, in_channels, 3, stride=2, groups=in_channels, norm=norm,
                                        act=act, padding=padding) for _ in range(steps)))
            if steps else None
        )
        self.project = ConvNormAct(in_channels, target_channels, 1, norm=norm, act=None, padding=padding)

