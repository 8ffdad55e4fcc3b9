"""Architecture as data: block, scaling, stem and norm specs, validation, JSON and genome codecs."""

from torchspine.specs.spec import (
    BLOCK_TYPE_CODES,
    MAX_SUPPORTED_LEVEL,
    MIN_SUPPORTED_LEVEL,
    BlockSpec,
    NormSpec,
    ScalingSpec,
    SpineNetSpec,
    StemSpec,
)
from torchspine.specs.zoo import SPINENET_BLOCKS, SPINENET_SCALING, spinenet_spec

__all__ = [
    "BLOCK_TYPE_CODES",
    "MAX_SUPPORTED_LEVEL",
    "MIN_SUPPORTED_LEVEL",
    "BlockSpec",
    "NormSpec",
    "ScalingSpec",
    "SpineNetSpec",
    "StemSpec",
    "SPINENET_BLOCKS",
    "SPINENET_SCALING",
    "spinenet_spec",
]
