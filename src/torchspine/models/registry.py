"""The model registry: ``create_model(name, **overrides)`` is the single way in (timm style).

A registered builder is a callable taking keyword overrides and returning an ``nn.Module``.
Overrides that name spec fields (``filter_size_scale=0.25``, ``activation="swish"``) produce
a new, validated spec; builders of composite models (detectors, classifiers) also take their
own keywords (``num_classes`` ...).

The model modules (:data:`MODEL_MODULES`) register their builders when imported, which
happens on the first lookup (``create_model``, ``list_models``, ``model_info``, ``is_model``),
not on ``import torchspine``. A family with several presets registers each one with
:func:`register_variant`.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from torch import nn

__all__ = ["MODEL_MODULES", "ModelInfo", "Task", "create_model", "is_model", "list_models", "list_weights",
           "model_info", "register_model", "register_variant"]

Task = Literal["backbone", "detector", "instance_segmentation", "classifier"]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, without building it (timm's pretrained_cfg, torchvision's
    ``Weights.meta``): its task, family and preset, the input size its recipe trains at, the
    published figures it reproduces (``{"params": ..., "macs": ..., "AP": ...}``) and the tags of
    the pretrained weights that exist for it (``("coco", "coco_relu")``: ``create_model(name,
    weights=tag)``; the entries are in :mod:`torchspine.weights`)."""

    name: str
    task: Task
    family: str = "spinenet"
    preset: str | None = None
    input_size: int | None = None
    published: dict[str, Any] = field(default_factory=dict)
    weights: tuple[str, ...] = ()


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, task: Task = "backbone",
                   family: str = "spinenet", preset: str | None = None, input_size: int | None = None,
                   published: dict[str, Any] | None = None):
    """Decorator registering a builder under its function name (or ``name``) with its metadata."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        _INFO[key] = ModelInfo(key, task, family, preset, input_size, dict(published or {}))
        return f

    return wrap(fn) if fn is not None else wrap


def register_variant(name: str, build: Callable[..., nn.Module], *args: Any, doc: str, task: Task = "backbone",
                     family: str = "spinenet", preset: str | None = None, input_size: int | None = None,
                     published: dict[str, Any] | None = None) -> Callable[..., nn.Module]:
    """Register ``build(*args, **overrides)`` as the model ``name`` (one preset of a family).

    The registered builder is named ``name``, documented by ``doc`` and shows ``build``'s
    keywords as its signature (``inspect.signature`` works on it as on a hand-written builder).
    """

    def builder(**overrides: Any) -> nn.Module:
        return build(*args, **overrides)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    builder.__signature__ = inspect.signature(functools.partial(build, *args))  # type: ignore[attr-defined]
    return register_model(builder, name=name, task=task, family=family, preset=preset, input_size=input_size,
                          published=published)


def model_info(name: str) -> ModelInfo:
    """The registered metadata of ``name`` (ValueError naming close matches when unknown)."""
    _check_known(name)
    from dataclasses import replace

    from torchspine.weights.catalogue import CATALOGUE

    return replace(_INFO[name], weights=tuple(sorted(e.tag for e in CATALOGUE.values() if e.model == name)))


def list_weights(model: str | None = None) -> list:
    """The official pretrained weights (catalogue entries), all or those of ``model``; each has
    ``name``, ``tag``, ``url``, settings and ``published`` figures (see :mod:`torchspine.weights`)."""
    from torchspine.weights import list_weights as _list

    return _list(model)


# Importing each of these registers its builders (done once, on the first registry lookup).
MODEL_MODULES: tuple[str, ...] = (
    "torchspine.models.spinenet",  # spinenet49s ... spinenet190, spinenet (any spec)
    "torchspine.models.mobile",  # spinenet_mobile*
    "torchspine.models.resnext",  # spinenet49_resnext*
    "torchspine.models.resnet_fpn",  # resnet50_fpn, resnet101_fpn
    "torchspine.models.classifier",  # *_cls, spinenet_cls
    "torchspine.models.detection.zoo",  # retinanet_*, maskrcnn_* (the detector preset table)
)
_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: the model modules use the registry while they are imported
    try:
        for module in MODEL_MODULES:
            importlib.import_module(module)
    except BaseException:
        _loaded = False
        raise


def _check_known(name: str) -> None:
    _ensure_loaded()
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see torchspine.list_models())")


def list_models(pattern: str = "*", *, task: Task | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (and ``task``), sorted."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and (task is None or _INFO[n].task == task))


def is_model(name: str) -> bool:
    _ensure_loaded()
    return name in _MODELS


def create_model(name: str, weights: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` go to its builder (spec fields or model options).

    ``weights``: a pretrained tag of the model (``"coco"``, ``"imagenet"``; see
    ``model_info(name).weights``), a catalogue name (``"retinanet_spinenet49.coco"``), or the
    path of a saved model or state dict. Catalogue weights are downloaded and converted on first
    use (needs internet) and read from the cache afterwards; the model comes back in eval mode
    with the settings the weights were trained with (``overrides`` may only change settings that
    leave the tensors' shapes alone, e.g. ``score_thresh``).
    """
    _check_known(name)
    if weights is not None:
        from torchspine.weights import load_pretrained

        return load_pretrained(name, weights, **overrides)
    model = _MODELS[name](**overrides)
    # Recorded so that save_model / load_model can rebuild exactly this model.
    model.torchspine_config = {"model": name, "overrides": dict(overrides)}
    return model
