"""Architecture as data: block, scaling, stem and norm specs (checked when made), and their
JSON and genome codecs (:mod:`torchspine.specs.codec`)."""

from torchspine.specs.spec import (
    BLOCK_TYPE_CODES,
    CODEBASE_FLAVORS,
    MAX_SUPPORTED_LEVEL,
    MIN_SUPPORTED_LEVEL,
    BlockSpec,
    NormSpec,
    ScalingSpec,
    SpineNetSpec,
    StemSpec,
    codebase_overrides,
    register_block_type,
)
from torchspine.specs.zoo import SPINENET_BLOCKS, SPINENET_SCALING, spinenet_spec

__all__ = [
    "BLOCK_TYPE_CODES",
    "CODEBASE_FLAVORS",
    "MAX_SUPPORTED_LEVEL",
    "MIN_SUPPORTED_LEVEL",
    "BlockSpec",
    "NormSpec",
    "ScalingSpec",
    "SpineNetSpec",
    "StemSpec",
    "SPINENET_BLOCKS",
    "SPINENET_SCALING",
    "codebase_overrides",
    "register_block_type",
    "spinenet_spec",
]
