"""Reusable layers: conv-norm-act with both official paddings, blocks, cross-scale resampling."""

from torchspine.layers.blocks import BLOCK_REGISTRY, BlockFamily, BottleneckBlock, ResidualBlock, register_block
from torchspine.layers.conv import ConvNormAct, Conv2dSame, MaxPool2dSame, create_act, create_conv, create_norm
from torchspine.layers.resample import ResampleWithAlpha, level_size, resize_nearest

__all__ = [
    "BLOCK_REGISTRY",
    "BlockFamily",
    "BottleneckBlock",
    "Conv2dSame",
    "ConvNormAct",
    "MaxPool2dSame",
    "ResampleWithAlpha",
    "ResidualBlock",
    "create_act",
    "create_conv",
    "create_norm",
    "level_size",
    "register_block",
    "resize_nearest",
]
