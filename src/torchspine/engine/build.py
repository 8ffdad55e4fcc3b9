"""Model construction for training: registry name + overrides, or a custom backbone spec.

``spec`` (a :class:`SpineNetSpec`, its dict, a JSON path or a genome string) replaces the
named model's backbone spec while keeping its detector preset (head, anchors, image size):
this is how searched architectures are trained (the search proxy task, paper section 4.1).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from torchspine.layers.dropout import add_dropblock
from torchspine.models.registry import create_model

__all__ = ["build_model", "add_dropblock"]  # add_dropblock lives in torchspine.layers.dropout


def build_model(name: str, *, num_classes: int, image_size: int, overrides: dict[str, Any] | None = None) -> nn.Module:
    """``create_model(name, num_classes=..., image_size=..., **overrides)``.

    ``overrides["spec"]`` (a :class:`SpineNetSpec`, its dict, a JSON path or a genome string)
    replaces the backbone spec of a ``retinanet_spinenet*`` / ``maskrcnn_spinenet*`` model while
    keeping its detector preset; the builders take it themselves.
    """
    from torchspine.models.registry import is_model, list_models, model_info

    if is_model(name) and model_info(name).task not in ("detector", "instance_segmentation"):
        detectors = list_models("retinanet_spinenet*") + list_models("maskrcnn_spinenet*")
        raise ValueError(f"model {name!r} is a {model_info(name).task}, not a detector: give a detector "
                         f"(e.g. {', '.join(detectors[:4])}), or train a classifier with --task classify")
    kw = dict(overrides or {})
    kw.setdefault("num_classes", num_classes)
    kw.setdefault("image_size", image_size)
    if "spec" in kw and model_info(name).task not in ("detector", "instance_segmentation"):
        raise ValueError(f"model_overrides.spec is supported for detectors (retinanet_spinenet*, maskrcnn_spinenet*), "
                         f"not {name!r} (task {model_info(name).task!r})")
    return create_model(name, **kw)
