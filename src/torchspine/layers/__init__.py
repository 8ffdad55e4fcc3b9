"""Reusable layers: conv-norm-act with both official paddings, blocks, cross-scale resampling.

Importing the package registers every block family in ``BLOCK_REGISTRY`` (bottleneck,
residual, MBConv, ResNeXt), so any spec can be built or drawn without importing a model family.
"""

from torchspine.layers.blocks import BLOCK_REGISTRY, BlockFamily, BottleneckBlock, ResidualBlock, register_block
from torchspine.layers.conv import (ConvNormAct, Conv2dSame, MaxPool2dSame, OneDNNPointwiseConv2d, SeparableConv2d,
                                   create_act, create_conv, create_norm, set_onednn_pointwise)
from torchspine.layers.resample import ResampleWithAlpha, level_size, resize_nearest
from torchspine.layers import mbconv as _mbconv  # noqa: F401  (registers the "mbconv" block)
from torchspine.layers import resnext as _resnext  # noqa: F401  (registers the "resnext" block)

__all__ = [
    "BLOCK_REGISTRY",
    "BlockFamily",
    "BottleneckBlock",
    "Conv2dSame",
    "ConvNormAct",
    "MaxPool2dSame",
    "OneDNNPointwiseConv2d",
    "ResampleWithAlpha",
    "ResidualBlock",
    "SeparableConv2d",
    "create_act",
    "create_conv",
    "create_norm",
    "level_size",
    "register_block",
    "resize_nearest",
    "set_onednn_pointwise",
]
