"""timm entry points for the SpineNet family (optional; needs ``timm``).

After :func:`timm_register` (called when timm is imported in a program that imported
torchspine, see ``torchspine/_timm_hook.py``, or by hand):

* ``timm.create_model("spinenet49")`` is the ImageNet-style classifier (1000 classes,
  paper section 4.2), ``num_classes=10`` changes the head, ``drop_rate`` is dropout before the
  linear layer and ``drop_path_rate`` the backbone's stochastic-depth rate;
* ``timm.create_model("spinenet49", features_only=True)`` is the backbone returning the list
  ``[P3, P4, P5, P6, P7]`` (``out_indices`` selects among them), with a timm ``FeatureInfo``
  (``channels()``, ``reduction()``, ``module_name()``), timm's features-only convention;
* other keywords are spec fields (``filter_size_scale=0.25``, ``activation="swish"``) or
  family options (``flavor="mg"`` for mobile models).

No pretrained weights are published for PyTorch, so ``pretrained=True`` raises.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchspine.models.registry import create_model
from torchspine.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["TIMM_MODELS", "SpineNetFeatures", "timm_register"]

# torchspine backbone names exposed in timm under the same names.
TIMM_MODELS: tuple[str, ...] = (
    "spinenet49s", "spinenet49", "spinenet96", "spinenet143", "spinenet143l", "spinenet190",
    "spinenet_mobile49", "spinenet_mobile49s", "spinenet_mobile49xs",
    "spinenet49_resnext32x4d", "spinenet49_resnext32x8d",
)


class SpineNetFeatures(nn.Module):
    """timm ``features_only`` view of a pyramid backbone: returns a list of maps."""

    def __init__(self, backbone: nn.Module, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)) -> None:
        super().__init__()
        from timm.models import FeatureInfo

        keys = list(backbone.out_channels)
        for i in out_indices:
            if not -len(keys) <= i < len(keys):
                raise ValueError(f"features_only: out_index {i} out of range for levels {keys}")
        self.backbone = backbone
        self.out_keys = tuple(keys[i] for i in out_indices)
        info = [{**d, "module": f"backbone.{d['module']}"} for d in backbone.feature_info]
        self.feature_info = FeatureInfo(info, tuple(i % len(keys) for i in out_indices))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return [feats[k] for k in self.out_keys]


def _pretrained_cfg(name: str, num_classes: int) -> dict[str, Any]:
    return {
        "architecture": name, "num_classes": num_classes, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bilinear", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "first_conv": "backbone.stem.conv.conv", "classifier": "fc", "license": "apache-2.0",
    }


def _make_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(f"timm {name}: no pretrained PyTorch weights are published (use torchspine convert)")
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        in_chans = kwargs.pop("in_chans", 3)
        if in_chans != 3:
            raise ValueError(f"timm {name}: in_chans={in_chans} is not supported (the stem takes RGB)")
        global_pool = kwargs.pop("global_pool", "avg")
        if global_pool not in ("avg", ""):
            raise ValueError(f"timm {name}: only global_pool='avg' is supported, got {global_pool!r}")
        if "drop_path_rate" in kwargs:
            kwargs["stochastic_depth_rate"] = kwargs.pop("drop_path_rate")
        features_only = kwargs.pop("features_only", False)
        out_indices = tuple(kwargs.pop("out_indices", (0, 1, 2, 3, 4)))
        if features_only:
            kwargs.pop("num_classes", None)
            kwargs.pop("drop_rate", None)
            model: nn.Module = SpineNetFeatures(create_model(name, **kwargs), out_indices)
        else:
            from torchspine.models.classifier import build_classifier

            kwargs.setdefault("num_classes", 1000)
            model = build_classifier(name, **kwargs)
        cfg = _pretrained_cfg(name, getattr(model, "num_classes", 0))
        model.pretrained_cfg = cfg
        model.default_cfg = cfg
        return model

    entrypoint.__name__ = name
    entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"torchspine {name}: classifier, or the P3-P7 backbone with features_only=True."
    return entrypoint


_REGISTERED = False


def timm_register() -> bool:
    """Register :data:`TIMM_MODELS` with timm (idempotent). Returns False if timm is missing."""
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        from timm.models import register_model
        from timm.models._registry import _model_entrypoints
    except ImportError:
        return False
    for name in TIMM_MODELS:
        if name not in _model_entrypoints:
            fn = _make_entrypoint(name)
            globals()[name] = fn  # timm looks the entry point up by module and name
            register_model(fn)
    _REGISTERED = True
    return True
