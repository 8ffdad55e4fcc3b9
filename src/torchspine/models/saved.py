"""Saved models and weights: the one saved-model format, and state dicts.

* :func:`save_model` / :func:`load_model`: every model torchspine writes (trained, converted,
  downloaded) is one safetensors file whose metadata rebuilds it exactly (registry name,
  ``create_model`` overrides including specs, and an ``info`` dict: task, classes, label names,
  image size, provenance). ``load_model(path)`` reads all of them, and the two older
  torchspine formats (converter and classifier files of version 0.1).
* :func:`load_state_dict` / :func:`load_weights`: a bare state dict from a safetensors file or a
  training checkpoint read with ``torch.load(weights_only=True)`` (never arbitrary pickles)
  whose dict holds the state dict directly or under ``"model"`` / ``"state_dict"``; a DDP
  ``module.`` prefix is removed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FORMAT", "NoModelMetadata", "load_model", "load_state_dict", "load_weights", "model_config",
           "read_model_metadata", "save_model"]

log = logging.getLogger(__name__)


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict stored in ``path`` (safetensors, or a ``torch.save`` checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"weights {path}: not a readable safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for pickles with code, RuntimeError for garbage
            # torch's message is a paragraph; its last line names what was refused (e.g. a GLOBAL)
            lines = [x for x in str(e).splitlines() if x.strip()]
            why = next((x for x in lines if "GLOBAL" in x), lines[0] if lines else type(e).__name__)
            raise ValueError(f"weights {path}: not a plain tensor file, refused by torch.load(weights_only=True) "
                             f"({why.strip()[:300]}); code in pickles is never run") from e
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise ValueError(f"weights {path}: expected a state dict (or a checkpoint with a 'model' state dict)")
        state = obj
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _fit_dtypes(path: Path | str, state: dict[str, Tensor], own: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with float16 / bfloat16 tensors in the model's dtype (a file saved after
    ``model.half()`` loads into a float32 model; ``load_state_dict(assign=True)`` would keep
    float16 and the first forward fails on "Input type and weight type should be the same").

    Refuses, naming the file and tensors, integer tensors where the model has floating ones
    (their values would be truncated) and NaN / infinite values (a diverged training: every
    prediction would be NaN, i.e. silently nothing).
    """
    out, wrong_kind, not_finite = {}, [], []
    for k, v in state.items():
        ref = own.get(k)
        if ref is not None and ref.is_floating_point():
            if not v.is_floating_point():
                wrong_kind.append(f"{k} ({str(v.dtype).replace('torch.', '')})")
                continue
            if not bool(torch.isfinite(v).all()):
                not_finite.append(k)
            if v.dtype in (torch.float16, torch.bfloat16) and ref.dtype != v.dtype:
                v = v.to(ref.dtype)  # float64 files keep their precision (the converter's parity checks)
        out[k] = v
    if wrong_kind:
        raise ValueError(f"weights {path}: {len(wrong_kind)} tensors are not floating point where the model's are, "
                         f"e.g. {wrong_kind[:3]}: not weights of this model")
    if not_finite:
        raise ValueError(f"weights {path}: {len(not_finite)} tensors hold NaN or infinite values, e.g. "
                         f"{not_finite[:3]} (a training run that diverged?): every prediction would be NaN")
    return out


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load ``path`` into ``model`` (see :func:`load_state_dict`); returns ``model``.

    A state dict of the bare backbone (keys without ``backbone.``) is accepted for a detector
    when ``strict=False``. Mismatches raise ``ValueError`` naming the file and keys.
    """
    state = load_state_dict(path)
    own = model.state_dict()
    if hasattr(model, "backbone") and not any(k in own for k in state) and any(f"backbone.{k}" in own for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shapes:
        raise ValueError(f"weights {path}: shape mismatch for {len(bad_shapes)} tensors, e.g. {bad_shapes[:3]} "
                         f"(built with different settings, e.g. num_classes?)")
    state = _fit_dtypes(path, state, own)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise ValueError(f"weights {path}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if missing or unexpected:
        log.warning("weights %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
    return model


# --- The one saved-model format -------------------------------------------------------------
# Every model torchspine writes (trained, converted, downloaded) is a safetensors file whose
# string metadata rebuilds it: ``format``, ``model`` (registry name), ``overrides`` (JSON of the
# keyword overrides given to create_model, specs as their dicts) and ``info`` (JSON: task,
# num_classes, label names, image size, preprocessing, provenance ...).

FORMAT = "torchspine.model/1"
_LEGACY_CONVERTED = "torchspine.converted/1"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise ValueError(f"model override of type {type(value).__name__} cannot be saved: {value!r}")


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """``{"model": name, "overrides": {...}}`` recorded by ``create_model``, or ``None``."""
    model = getattr(model, "module", model)  # DDP / EMA wrappers
    cfg = getattr(model, "torchspine_config", None)
    return dict(cfg) if cfg else None


def save_model(model: nn.Module, path: str | os.PathLike, *, name: str | None = None,
               overrides: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as safetensors with the metadata :func:`load_model` rebuilds it from.

    ``name`` / ``overrides`` default to what ``create_model`` recorded on the model; ``info``
    holds task-level facts (``num_classes``, ``label_names``, ``image_size`` ...). Atomic.
    """
    from safetensors.torch import save_file

    from torchspine.utils import atomic_write

    model = getattr(model, "module", model)
    recorded = model_config(model) or {}
    name = name or recorded.get("model")
    if not name:
        raise ValueError("save_model: the model was not built by create_model; pass name= and overrides=")
    overrides = recorded.get("overrides", {}) if overrides is None else overrides
    metadata = {"format": FORMAT, "model": name, "overrides": json.dumps(_jsonable(overrides)),
                "info": json.dumps(_jsonable(info or {}))}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


class NoModelMetadata(ValueError):
    """A readable safetensors file that holds tensors without the settings to rebuild a model
    (bare weights, or a torchspine 0.1 trainer file): a run's ``config.json`` may supply them.
    Damaged torchspine metadata is a plain ``ValueError``."""


def _check_info(path: Path, info: Any) -> dict[str, Any]:
    """The saved ``info`` dict, its fields of known meaning checked (a ``ValueError`` names the
    file, field and value; used later, they failed as a bare ``int()`` error or were ignored)."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(info, dict):
        raise ValueError(f"{path}: damaged metadata: 'info' is not a JSON object ({info!r:.100})")
    checks = {"num_classes": lambda v: v is None or (is_int(v) and v >= 1),
              "image_size": lambda v: v is None or (is_int(v) and v >= 1),
              "label_names": lambda v: v is None or isinstance(v, list),
              "category_ids": lambda v: v is None or (isinstance(v, list) and all(is_int(c) for c in v))}
    for key, ok in checks.items():
        if key in info and not ok(info[key]):
            raise ValueError(f"{path}: damaged metadata: info field {key!r} is {info[key]!r:.100}")
    return info


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``{"model", "overrides", "info"}`` of a saved model, without reading its tensors.

    Reads this format and the two older ones (the converter's and the classifier's); refuses
    anything else naming the file and what is missing.
    """
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} is a folder without model.safetensors (not a torchspine run folder)")
        path = candidate
    if not path.is_file():
        raise FileNotFoundError(f"saved model not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    fmt = meta.get("format")
    try:
        if fmt == FORMAT:
            return {"model": meta["model"], "overrides": json.loads(meta["overrides"]),
                    "info": _check_info(path, json.loads(meta.get("info", "{}"))), "path": str(path)}
        if fmt == _LEGACY_CONVERTED:
            return {"model": meta["model"], "overrides": json.loads(meta["overrides"]),
                    "info": {"source": "converted"}, "path": str(path)}
        if "model" in meta and "num_classes" in meta:  # classifier files of torchspine 0.1
            overrides = {**json.loads(meta.get("model_overrides", "{}")), "num_classes": int(meta["num_classes"])}
            info = {"task": "classifier", "num_classes": int(meta["num_classes"]),
                    "label_names": json.loads(meta.get("classes", "[]")), "image_size": int(meta.get("image_size", 224))}
            return {"model": meta["model"], "overrides": overrides, "info": info, "path": str(path)}
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: torchspine metadata is damaged ({e})") from e
    if "model" in meta and "steps" in meta:  # detector files of the torchspine 0.1 trainer
        raise NoModelMetadata(f"{path}: weights of {meta['model']} written by the torchspine 0.1 trainer without the "
                         f"model's settings, so it cannot be rebuilt from the file alone: use "
                         f"create_model({meta['model']!r}, <the run's settings>) and load_weights(model, path), "
                         f"or save it again with save_model")
    raise NoModelMetadata(f"{path}: safetensors file without torchspine model metadata (format={fmt!r}); it holds "
                     f"only tensors: build the model with create_model(...) and use load_weights(model, path)")


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu",
               overrides: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild any model torchspine saved (trained, converted, downloaded) and load its weights.

    ``path`` is a saved-model file or a run folder holding ``model.safetensors``. The model is
    built on the ``meta`` device and filled from the file (strict: every tensor must be there
    with its shape). ``overrides`` change settings on top of the saved ones (``score_thresh``,
    ``image_size`` ...); one that changes a tensor's shape fails naming it. Returns the model
    in eval mode with ``model.torchspine_info`` (the saved ``info``) set.
    """
    from safetensors.torch import load_file

    from torchspine.models.registry import create_model

    meta = read_model_metadata(path)
    if not isinstance(meta["overrides"], dict):
        raise ValueError(f"{meta['path']}: damaged metadata: 'overrides' is not a JSON object "
                         f"({meta['overrides']!r:.100})")
    settings = {**meta["overrides"], **(overrides or {})}
    try:
        with torch.device("meta"):
            model = create_model(meta["model"], **settings)
    except (ValueError, TypeError) as e:  # a file of another version or a foreign writer: name the file
        raise ValueError(f"{meta['path']}: its metadata (model {meta['model']!r}, settings {settings}) does not "
                         f"build a model: {e}") from e
    state = load_file(meta["path"], device=str(device))
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        raise ValueError(f"{meta['path']}: does not fit {meta['model']} built from its own metadata: "
                         f"{len(bad)} shape mismatches {bad[:3]}, {len(missing)} missing {missing[:3]}, "
                         f"{len(unexpected)} unexpected {unexpected[:3]}")
    state = _fit_dtypes(meta["path"], state, own)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # a non-persistent buffer the file cannot hold
        raise ValueError(f"{meta['path']}: {meta['model']} has {len(leftover)} tensors the file does not set, "
                         f"e.g. {leftover[:3]}")
    from torchspine.models.registry import model_info

    model.torchspine_info = {"task": model_info(meta["model"]).task, **meta["info"]}
    return model.eval()
