"""torchspine: SpineNet (Du et al., CVPR 2020) for PyTorch."""

from torchspine.models import SpineNet, create_model, list_models, register_model
from torchspine.models.registry import list_weights, model_info
from torchspine.models.saved import load_model, save_model
from torchspine.specs import BlockSpec, NormSpec, ScalingSpec, SpineNetSpec, StemSpec, spinenet_spec
from torchspine.models.timm_models import timm_register

# timm entry points (docs/family.md): registered on import whenever timm is installed, so that
# ``timm.create_model("spinenet49", features_only=True)`` works after ``import torchspine``.
# Set TORCHSPINE_NO_TIMM=1 to skip (and call torchspine.timm_register() yourself).
import importlib.util as _importlib_util
import os as _os

if _os.environ.get("TORCHSPINE_NO_TIMM") != "1" and _importlib_util.find_spec("timm") is not None:
    timm_register()

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
    "list_weights",
    "load_model",
    "model_info",
    "register_model",
    "save_model",
    "spinenet_spec",
    "timm_register",
]
