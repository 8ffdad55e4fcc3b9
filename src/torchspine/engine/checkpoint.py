"""Atomic training checkpoints (generic: any model, optimizer, scheduler).

A checkpoint holds the model, optimizer, scheduler and EMA state dicts, the RNG states
(torch CPU, CUDA, Python ``random``, NumPy) and the data position (epoch, step), written to
a temporary file and renamed over the old one, so a crash never leaves a half-written file.
It is read with ``torch.load(weights_only=True)`` (no arbitrary pickles). Final weights are
also exported as safetensors.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchspine.utils import atomic_write

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "save_weights", "unwrap"]

logger = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / AveragedModel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain Python values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, ema: nn.Module | None = None, scaler: Any = None,
                    step: int, epoch: int, epoch_step: int, extra: dict[str, Any] | None = None) -> None:
    """Write the full training state atomically (write to a temp file, fsync, rename).

    ``epoch_step`` is the number of batches of ``epoch`` already consumed: the data position.
    """
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "step": int(step), "epoch": int(epoch), "epoch_step": int(epoch_step),
        "extra": extra or {},
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    logger.debug("checkpoint step %d -> %s", step, path)


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, ema: nn.Module | None = None, scaler: Any = None,
                    map_location: str | torch.device = "cpu", restore_rng: bool = True) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the whole state dict (step, epoch...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {e}") from e
    try:
        unwrap(model).load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as e:  # another model's (or a damaged) checkpoint
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"checkpoint {str(path)!r} does not fit this model ({first}): it was written by another "
                         "model or other settings; use another output folder, or the settings of that run") from e
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Model weights (parameters and buffers) as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {}))
