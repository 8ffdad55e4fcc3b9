"""The ResNet-50-FPN baseline of paper Table 3 with SpineNet's output contract.

torchvision's ResNet-50 body (C3-C5) with its FPN and the RetinaNet ``P6``/``P7`` extra levels
(3x3/2 convs on P5, ReLU before P7, the tensorflow/tpu RetinaNet FPN's arrangement), returning
``{"p3": ..., "p7": ...}`` with 256 channels each, plus ``out_channels``, ``strides``,
``feature_info`` and ``output_shape()`` like :class:`~torchspine.models.backbone.SpineNet`, so
the same detector, classifier and profiler run on both side by side.

Trained from scratch like the paper's models: plain trainable BatchNorm in the body (not
torchvision's frozen BN), all stages trainable, no pretrained weights.

Registered: ``resnet50_fpn`` (and ``resnet101_fpn``, the R101 row of Table 2).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from torchspine.models.registry import register_model

__all__ = ["ResNetFPN"]


class ResNetFPN(nn.Module):
    """ResNet + FPN + P6/P7 with the SpineNet backbone contract (P3..P7 dict)."""

    size_divisibility = 1

    def __init__(self, depth: int = 50, *, fpn_channels: int = 256, width_per_group: int = 64) -> None:
        super().__init__()
        builders = {50: resnet.resnet50, 101: resnet.resnet101}
        if depth not in builders:
            raise ValueError(f"ResNetFPN: depth must be one of {sorted(builders)}, got {depth!r}")
        if not (isinstance(fpn_channels, int) and fpn_channels >= 1):
            raise ValueError(f"ResNetFPN: fpn_channels must be a positive integer, got {fpn_channels!r}")
        body = builders[depth](weights=None, norm_layer=nn.BatchNorm2d, width_per_group=width_per_group)
        # C3, C4, C5 channels of torchvision's bottleneck ResNet (expansion 4).
        in_channels = [512, 1024, 2048]
        self.fpn = BackboneWithFPN(
            body,
            return_layers={"layer2": "p3", "layer3": "p4", "layer4": "p5"},
            in_channels_list=in_channels,
            out_channels=fpn_channels,
            extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
        )
        levels = range(3, 8)
        self.out_channels = {f"p{lvl}": fpn_channels for lvl in levels}
        self.strides = {f"p{lvl}": 2**lvl for lvl in levels}
        self.feature_info = [
            {"module": "fpn", "num_chs": fpn_channels, "reduction": 2**lvl, "level": lvl} for lvl in levels
        ]

    def output_shape(self) -> dict[str, tuple[int, int]]:
        return {k: (self.out_channels[k], self.strides[k]) for k in self.out_channels}

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if x.dim() != 4:
            raise ValueError(f"ResNetFPN expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        feats = self.fpn(x)  # keys p3, p4, p5 (FPN) then p6, p7 (LastLevelP6P7)
        names = list(feats)
        return OrderedDict((f"p{3 + i}", feats[k]) for i, k in enumerate(names))


@register_model(family="resnet_fpn")
def resnet50_fpn(**kwargs: Any) -> ResNetFPN:
    """ResNet-50-FPN baseline (paper Table 3) with the P3..P7 contract; ``fpn_channels``, ``width_per_group``."""
    return ResNetFPN(50, **kwargs)


@register_model(family="resnet_fpn")
def resnet101_fpn(**kwargs: Any) -> ResNetFPN:
    """ResNet-101-FPN (paper Table 2 baseline) with the P3..P7 contract."""
    return ResNetFPN(101, **kwargs)
