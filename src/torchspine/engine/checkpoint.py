"""Atomic training checkpoints (generic: any model, optimizer, scheduler).

A checkpoint holds the model, optimizer, scheduler and EMA state dicts, the RNG states
(torch CPU, CUDA, Python ``random``, NumPy) and the data position (epoch, step), written to
a temporary file and renamed over the old one, so a crash never leaves a half-written file.
It is read with ``torch.load(weights_only=True)`` (no arbitrary pickles), always onto the
CPU first: RNG states must come back as CPU byte tensors whatever device the run uses
(``torch.set_rng_state`` refuses a CUDA tensor), and ``load_state_dict`` puts every other
tensor where the model and optimizer live. A run writes one RNG state per process
(``rng_ranks``). The final model is written with :func:`torchspine.models.saved.save_model`.
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

__all__ = ["clean_orphans", "rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint",
           "unwrap"]

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


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "meta":
        raise ValueError("RNG state was loaded onto the 'meta' device and holds no data; load the checkpoint "
                         "with map_location='cpu'")
    return t.detach().to("cpu", torch.uint8)


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`; tensors on any device are brought back as CPU byte tensors."""
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda = [_cpu_bytes(t) for t in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d: CUDA RNG not "
                           "restored", len(cuda), torch.cuda.device_count())


def clean_orphans(path: str | os.PathLike) -> int:
    """Remove temporary files that a killed atomic write of ``path`` left beside it; returns how many."""
    from torchspine.utils import remove_stale_temporaries

    return len(remove_stale_temporaries(path))


def _to(obj: Any, device: str | torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, ema: nn.Module | None = None, scaler: Any = None,
                    step: int, epoch: int, epoch_step: int, extra: dict[str, Any] | None = None,
                    rng_ranks: list[dict[str, Any]] | None = None) -> None:
    """Write the full training state atomically (write to a temp file, fsync, rename).

    ``epoch_step`` is the number of batches of ``epoch`` already consumed: the data position.
    ``rng_ranks``: the RNG states of every process (default: this process's only).
    """
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "rng_ranks": rng_ranks,
        "step": int(step), "epoch": int(epoch), "epoch_step": int(epoch_step),
        "extra": extra or {},
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    logger.debug("checkpoint step %d -> %s", step, path)


def torch_load_reason(e: BaseException) -> str:
    """The line of a ``torch.load(weights_only=True)`` error that says what was wrong. torch's
    message is a paragraph advising ``weights_only=False`` (running the file's code), which is
    wrong advice for a damaged file; the reason is the line after "WeightsUnpickler error:", a
    line naming a refused GLOBAL, or the first line."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    for i, line in enumerate(lines):
        if "GLOBAL" in line:
            return line[:300]
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, ema: nn.Module | None = None, scaler: Any = None,
                    map_location: str | torch.device = "cpu", restore_rng: bool = True,
                    rank: int = 0) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the whole state dict (step, epoch...).

    The file is read onto the CPU; ``map_location`` moves the model / EMA tensors before they
    are loaded (``"meta"`` for a model built on the meta device). RNG states always stay on the
    CPU. ``rank`` picks this process's RNG state when the run saved one per process.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({torch_load_reason(e)}): it is damaged or not a "
                         f"torchspine checkpoint; remove it to start the run over") from e
    if str(map_location) != "cpu":
        state["model"] = _to(state["model"], map_location)
        if state.get("ema") is not None:
            state["ema"] = _to(state["ema"], map_location)
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
        ranks = state.get("rng_ranks")
        if ranks and rank < len(ranks):
            set_rng_state(ranks[rank])
        else:
            if ranks:
                logger.warning("checkpoint %s holds RNG states of %d processes; process %d restores rank 0's",
                               path, len(ranks), rank)
            set_rng_state(state["rng"])
    return state

