"""Models: the backbone built from a spec, and the registered families."""

from torchspine.models import spinenet as _spinenet  # noqa: F401  (registers the family)
from torchspine.models.detection import retinanet as _retinanet  # noqa: F401  (registers retinanet_spinenet*)
from torchspine.models.detection import maskrcnn as _maskrcnn  # noqa: F401  (registers maskrcnn_spinenet*)
from torchspine.models import mobile as _mobile  # noqa: F401  (registers spinenet_mobile*)
from torchspine.models import resnext as _resnext  # noqa: F401  (registers spinenet49_resnext*)
from torchspine.models import classifier as _classifier  # noqa: F401  (registers *_cls)
from torchspine.models import resnet_fpn as _resnet_fpn  # noqa: F401  (registers resnet50_fpn, resnet101_fpn)
from torchspine.models.detection import retinanet_mobile as _retinanet_mobile  # noqa: F401  (registers retinanet_spinenet_mobile*)
from torchspine.models.backbone import SpineNet
from torchspine.models.registry import create_model, is_model, list_models, register_model

__all__ = ["SpineNet", "create_model", "is_model", "list_models", "register_model"]
