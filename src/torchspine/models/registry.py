"""The model registry: ``create_model(name, **overrides)`` is the single way in (timm style).

A registered builder is a callable taking keyword overrides and returning an ``nn.Module``.
Overrides that name spec fields (``filter_size_scale=0.25``, ``activation="swish"``) produce
a new, validated spec; builders of composite models (detectors, classifiers) also take their
own keywords (``num_classes`` ...).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from torch import nn

__all__ = ["create_model", "list_models", "register_model", "is_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator registering a builder under its function name (or ``name``)."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_loaded() -> None:
    # Importing the model modules registers their builders.
    import torchspine.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _MODELS


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` go to its builder (spec fields or model options)."""
    _ensure_loaded()
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see torchspine.list_models())")
    return _MODELS[name](**overrides)
