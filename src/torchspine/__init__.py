"""torchspine: SpineNet (Du et al., CVPR 2020) for PyTorch."""

from torchspine.models import SpineNet, create_model, list_models, register_model
from torchspine.specs import BlockSpec, NormSpec, ScalingSpec, SpineNetSpec, StemSpec, spinenet_spec

__version__ = "0.1.0"

__all__ = [
    "BlockSpec",
    "NormSpec",
    "ScalingSpec",
    "SpineNet",
    "SpineNetSpec",
    "StemSpec",
    "create_model",
    "list_models",
    "register_model",
    "spinenet_spec",
]
