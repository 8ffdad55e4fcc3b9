"""Pretrained weights: the official SpineNet checkpoints, downloaded and converted once.

``create_model("retinanet_spinenet49", weights="coco")`` resolves ``"coco"`` here
(:func:`resolve_weights`), fetches the converted file (:func:`torchspine.weights.hub.fetch`) and
rebuilds the model from it (:func:`torchspine.models.saved.load_model`). See docs/weights.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchspine.weights.catalogue import CATALOGUE, PretrainedWeights, coco_label_names, imagenet_label_names
from torchspine.weights.hub import cache_dir, download, extract_tar, fetch, is_offline

__all__ = ["CATALOGUE", "PretrainedWeights", "cache_dir", "coco_label_names", "download", "extract_tar", "fetch",
           "get_weights", "imagenet_label_names", "is_offline", "list_weights", "load_pretrained",
           "resolve_weights"]


def list_weights(model: str | None = None) -> list[PretrainedWeights]:
    """Catalogue entries, all or those of one registered ``model``, sorted by name."""
    if model is not None:
        from torchspine.models.registry import model_info

        model_info(model)  # ValueError with close matches for an unknown model
    return [CATALOGUE[n] for n in sorted(CATALOGUE) if model is None or CATALOGUE[n].model == model]


def get_weights(name: str) -> PretrainedWeights:
    """The catalogue entry ``name`` (``"retinanet_spinenet49.coco"``); ValueError with close matches."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    import difflib

    close = difflib.get_close_matches(name, CATALOGUE, n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(f"unknown weights {name!r}{hint} (see torchspine.list_weights() or `torchspine weights list`)")


def resolve_weights(model: str, weights: str) -> PretrainedWeights:
    """The entry for ``create_model(model, weights=...)``: a tag of ``model`` (``"coco"``) or a
    full catalogue name that belongs to ``model``."""
    if weights in CATALOGUE:
        entry = CATALOGUE[weights]
    elif f"{model}.{weights}" in CATALOGUE:
        entry = CATALOGUE[f"{model}.{weights}"]
    else:
        tags = [e.tag for e in list_weights(model)]
        raise ValueError(f"no weights {weights!r} for {model}: " + (f"it has {tags}" if tags else
                         "the catalogue has none for it") + " (or pass a saved-model file path)")
    if entry.model != model:
        raise ValueError(f"weights {entry.name} are for {entry.model}, not {model}")
    return entry


def _looks_like_path(model: str, weights: str | os.PathLike) -> bool:
    # Catalogue names win: a folder called "coco" in the working directory is not the weights.
    if isinstance(weights, os.PathLike):
        return True
    if weights in CATALOGUE or f"{model}.{weights}" in CATALOGUE:
        return False
    return os.sep in weights or weights.endswith((".safetensors", ".pt", ".pth")) or Path(weights).exists()


def load_pretrained(model: str, weights: str | os.PathLike, *, offline: bool | None = None, progress: bool = True,
                    **overrides: Any):
    """``create_model(model, weights=..., **overrides)``: the model filled with ``weights``.

    ``weights`` is a catalogue tag or name (downloaded and converted on first use, from the cache
    afterwards), a file in the saved-model format (rebuilt from its metadata; it must hold
    ``model``), or any other state-dict file (``create_model(model, **overrides)`` then strict
    :func:`~torchspine.models.saved.load_weights`). ``overrides`` may change settings that do not
    change the weights (``score_thresh``, ``image_size`` ...); ones that do fail with a message
    naming the tensors.
    """
    from torchspine.models.registry import create_model
    from torchspine.models.saved import load_model, load_weights, read_model_metadata

    if _looks_like_path(model, weights):
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"weights file not found: {path}")
        if path.suffix == ".safetensors" or path.is_dir():
            try:
                meta = read_model_metadata(path)
            except ValueError:
                meta = None  # plain safetensors state dict
            if meta is not None:
                if meta["model"] != model:
                    raise ValueError(f"{path} holds a saved {meta['model']}, not {model}")
                return load_model(path, overrides=overrides)
        m = create_model(model, **overrides)
        return load_weights(m, path).eval()
    entry = resolve_weights(model, str(weights))
    return load_model(fetch(entry, offline=offline, progress=progress), overrides=overrides)
