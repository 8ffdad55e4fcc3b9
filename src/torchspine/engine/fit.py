"""Put a training run together on the one loop: data order, optimizer and schedule, EMA, AMP,
hooks, resume. Detection (:mod:`torchspine.engine.trainer`) and classification
(:mod:`torchspine.engine.classification`) build their model, data, loss and evaluation, then
call :func:`fit`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from torchspine.engine.hooks import CheckpointHook, EvalHook, LogHook, resume
from torchspine.engine.loop import ResumableBatchSampler, Trainer, make_loader
from torchspine.engine.optim import build_ema, build_optimizer, build_scheduler

__all__ = ["CHECKPOINT_NAME", "FitOptions", "FitResult", "amp_dtype_for", "fit"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class FitOptions:
    """What :func:`fit` needs beyond the model, data and loss (the tasks fill it from their configs)."""

    output_dir: Path
    batch_size: int  # global
    total_steps: int
    lr: float  # peak, already scaled to the batch
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    num_workers: int = 0
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_steps: int = 0
    warmup_init_factor: float = 0.0
    schedule: str = "step"
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1
    min_lr_ratio: float = 0.0
    grad_clip_norm: float = 0.0
    ema_decay: float = 0.0
    amp: bool = False
    amp_dtype: str = "auto"
    # Same-math speed / memory options (docs/benchmarks.md has the measurements):
    channels_last: bool = False  # weights, optimizer state and 4-D batches in channels_last
    activation_checkpointing: bool = False  # recompute the backbone's scale-permuted blocks in the backward
    activation_checkpointing_max_level: int | None = None  # only blocks at this level or finer (None: all)
    onednn_pointwise: bool = False  # 1x1 convs on channels_last CPU activations through oneDNN (needs channels_last)
    resume: bool = False
    checkpoint_interval: int = 0
    eval_interval: int = 0
    log_interval: int = 10
    tensorboard: bool = False
    progress: bool = True
    shuffle: bool = True
    # Stop (checkpoint + final evaluation) at this step while the schedule still spans total_steps,
    # so that a later run with resume=True continues the same run (the search's ASHA rungs).
    stop_at_step: int | None = None


@dataclass
class FitResult:
    trainer: Trainer
    steps: int
    final_eval: dict[str, Any] | None
    evals: list[dict[str, Any]]
    history: list[dict[str, Any]]
    train_seconds: float
    images_per_second: float
    steps_per_epoch: int


def amp_dtype_for(device: torch.device, amp: bool, name: str = "auto") -> torch.dtype | None:
    """The autocast dtype, ``None`` when disabled. On CUDA ``auto`` prefers bf16 (else fp16 with
    a grad scaler); on the CPU autocast runs only when bfloat16 is asked for by name (``auto``
    and ``float16`` leave a CPU run in float32, as the recipes' ``amp: true`` always did)."""
    if not amp:
        return None
    if device.type != "cuda":
        return torch.bfloat16 if device.type == "cpu" and name == "bfloat16" else None
    if name == "float16":
        return torch.float16
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fit(*, model: nn.Module, train_model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any], dataset: Any,
        collate: Callable[[list], Any], opts: FitOptions,
        evaluate: Callable[[nn.Module, int], dict[str, Any] | None] | None = None,
        summary: Callable[[dict[str, Any]], str] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """Train ``model`` (``train_model`` is what the step calls: ``model`` or its DDP wrapper).

    ``evaluate(eval_model, step)`` scores the EMA weights when there are any, else ``model``.
    """
    out = Path(opts.output_dir)
    if opts.channels_last:  # before the optimizer, the EMA copy and the resume: their state follows the layout
        model.to(memory_format=torch.channels_last)
    if opts.onednn_pointwise:
        if not opts.channels_last:
            raise ValueError("onednn_pointwise: acts on channels_last activations; set channels_last as well")
        from torchspine.layers.conv import set_onednn_pointwise

        switched = set_onednn_pointwise(model)
        if opts.device.type != "cpu":
            logger.info("onednn_pointwise: no effect on %s (a CPU option)", opts.device)
        logger.info("onednn_pointwise: %d 1x1 convolutions run through oneDNN", switched)
    if opts.activation_checkpointing:
        from torchspine.models.backbone import set_activation_checkpointing

        if not set_activation_checkpointing(model, max_level=opts.activation_checkpointing_max_level):
            raise ValueError(f"activation_checkpointing: {type(model).__name__} has no SpineNet backbone to "
                             "checkpoint")
    optimizer = build_optimizer(model, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=opts.total_steps,
                                warmup_steps=min(opts.warmup_steps, opts.total_steps),
                                warmup_init_factor=opts.warmup_init_factor, schedule=opts.schedule,  # type: ignore[arg-type]
                                decay_steps=opts.decay_steps, decay_factor=opts.decay_factor,
                                min_lr_ratio=opts.min_lr_ratio)
    ema = build_ema(model, opts.ema_decay) if opts.ema_decay > 0 else None
    amp_dtype = amp_dtype_for(opts.device, opts.amp, opts.amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ckpt = out / CHECKPOINT_NAME

    sampler = ResumableBatchSampler(len(dataset), opts.batch_size, seed=opts.seed, rank=opts.rank,
                                    world_size=opts.world_size, shuffle=opts.shuffle)
    trainer = Trainer(train_model, loss_fn, None, optimizer, scheduler=scheduler, device=opts.device,
                      amp_dtype=amp_dtype, scaler=scaler, grad_clip_norm=opts.grad_clip_norm, ema=ema,
                      checkpoint_path=ckpt, channels_last=opts.channels_last)
    if amp_dtype is not None or opts.channels_last or opts.activation_checkpointing:
        logger.info("training options: autocast %s, channels_last %s, onednn_pointwise %s, activation "
                    "checkpointing %s", amp_dtype, opts.channels_last, opts.onednn_pointwise,
                    opts.activation_checkpointing)
    eval_model = ema.module if ema is not None else model
    log = LogHook(opts.log_interval, total_steps=opts.total_steps, batch_size=opts.batch_size,
                  progress=opts.progress, tensorboard_dir=out / "tb" if opts.tensorboard else None, on_step=on_step)
    ev = EvalHook(opts.eval_interval, (lambda step: evaluate(eval_model, step)) if evaluate else (lambda step: None),
                  summary)
    trainer.register_hooks([log, ev, CheckpointHook(ckpt, opts.checkpoint_interval,
                                                    steps_per_epoch=sampler.steps_per_epoch)])
    start = 0
    if opts.resume:
        if ckpt.is_file():
            start = resume(trainer, ckpt, rank=opts.rank)
        else:
            logger.warning("resume: no checkpoint at %s, starting from scratch", ckpt)
    sampler.start_step = start
    # Built after the resume, from its own generator: creating it draws from no global RNG.
    trainer.data = make_loader(dataset, sampler, collate=collate, seed=opts.seed, num_workers=opts.num_workers,
                               pin_memory=opts.device.type == "cuda")
    end = opts.total_steps if opts.stop_at_step is None else min(opts.stop_at_step, opts.total_steps)
    trainer.train(start, end)
    done = end - start
    return FitResult(trainer=trainer, steps=trainer.iter, final_eval=ev.final, evals=ev.evals, history=log.history,
                     train_seconds=log.train_seconds,
                     images_per_second=done * opts.batch_size / max(log.train_seconds, 1e-9),
                     steps_per_epoch=sampler.steps_per_epoch)
