"""Optimizer, learning-rate schedules and EMA of the SpineNet recipe (generic: any model).

* SGD with momentum; weight decay only on conv (and linear) weights, never on BN or biases:
  the official loss adds ``wd * sum(w**2) / 2`` over variables named ``kernel`` / ``weight``
  (tensorflow/tpu models/official/detection/modeling/base_model.py), whose gradient ``wd * w`` is PyTorch SGD's ``weight_decay``.
* Linear warmup from ``warmup_init_lr`` to ``lr`` over ``warmup_steps``, then step decay
  (``x decay_factor`` at each of ``decay_steps``; RetinaNet, paper section 4.1) or cosine
  decay (Mask R-CNN and classification).
* The learning rate scales linearly with the global batch (Goyal et al., paper [7]).
* EMA of weights via ``torch.optim.swa_utils.AveragedModel``.
"""

from __future__ import annotations

import bisect
import math
from typing import Literal, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "lr_factor", "scale_lr", "build_ema"]

_DECAYED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv/linear weights (decayed) and everything else (BN, biases: not)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if isinstance(module, _DECAYED) and name == "weight" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "conv_weights"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, *, lr: float, momentum: float = 0.9, weight_decay: float = 4e-5,
                    nesterov: bool = False) -> torch.optim.SGD:
    """SGD with weight decay on conv/linear weights only (official ``weight_decay`` loss term)."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)


def scale_lr(lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """Linear scaling rule: ``lr * batch_size / reference_batch``."""
    return lr * batch_size / reference_batch


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0, warmup_init_factor: float = 0.0,
              schedule: Literal["step", "cosine", "constant"] = "step", decay_steps: Sequence[int] = (),
              decay_factor: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based; the lr used by update ``step``).

    Warmup (official ``warmup_learning_rate`` -> ``init_learning_rate``): linear from
    ``warmup_init_factor`` at step 0 to 1 at ``warmup_steps``. Step: ``decay_factor ** k``
    after the ``k``-th boundary. Cosine: from 1 at the end of warmup to ``min_lr_ratio`` at
    ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_init_factor + (1.0 - warmup_init_factor) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return decay_factor ** bisect.bisect_right(list(decay_steps), step)
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}; expected step, cosine or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                    warmup_init_factor: float = 0.0, schedule: Literal["step", "cosine", "constant"] = "step",
                    decay_steps: Sequence[int] = (), decay_factor: float = 0.1,
                    min_lr_ratio: float = 0.0) -> LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` (call ``step()`` after each update)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    decay_steps = tuple(int(s) for s in decay_steps)

    def fn(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps,
                         warmup_init_factor=warmup_init_factor, schedule=schedule, decay_steps=decay_steps,
                         decay_factor=decay_factor, min_lr_ratio=min_lr_ratio)

    return LambdaLR(optimizer, fn)


def build_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Exponential moving average of parameters and buffers (BN statistics follow too)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
