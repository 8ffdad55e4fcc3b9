"""Models: the backbone built from a spec, the registered families and the registry.

Importing this package does not import the model families: the registry imports them
(:data:`~torchspine.models.registry.MODEL_MODULES`) on its first lookup.
"""

from torchspine.models.backbone import SpineNet, find_backbone
from torchspine.models.registry import create_model, is_model, list_models, model_info, register_model

__all__ = ["SpineNet", "create_model", "find_backbone", "is_model", "list_models", "model_info", "register_model"]
