"""torchspine: SpineNet (Du et al., CVPR 2020) for PyTorch.

``import torchspine`` is cheap: the public names below are imported on first use (PEP 562),
and the model families register themselves on the registry's first lookup. The timm entry
points (``timm.create_model("spinenet49")``) are registered when timm is imported, before or
after torchspine (set ``TORCHSPINE_NO_TIMM=1`` to skip that and call :func:`timm_register`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "SpineNet": "torchspine.models.backbone",
    "create_model": "torchspine.models.registry",
    "list_models": "torchspine.models.registry",
    "list_weights": "torchspine.models.registry",
    "load_model": "torchspine.models.saved",
    "save_model": "torchspine.models.saved",
    "model_info": "torchspine.models.registry",
    "register_model": "torchspine.models.registry",
    "BlockSpec": "torchspine.specs",
    "NormSpec": "torchspine.specs",
    "ScalingSpec": "torchspine.specs",
    "SpineNetSpec": "torchspine.specs",
    "StemSpec": "torchspine.specs",
    "spinenet_spec": "torchspine.specs",
    "timm_register": "torchspine.models.timm_models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'torchspine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


def _install_timm_hook() -> None:
    import os

    if os.environ.get("TORCHSPINE_NO_TIMM") == "1":
        return
    from torchspine._timm_hook import install

    install()


_install_timm_hook()
