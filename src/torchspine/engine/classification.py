"""Classification training and top-1 / top-5 evaluation (paper sections 4.2 and 5, Table 11).

The recipe of the paper (Goyal et al. [7] with cosine decay, He et al. [11]) on an image
folder: ``RandomResizedCrop`` 224 + flip, SGD momentum 0.9, learning rate scaled linearly with
the batch (0.1 per 256 images), linear warmup (5 epochs), cosine decay, weight decay 1e-4 on
conv / linear weights only (tensorflow/tpu models/official/detection/configs/spinenet classification
configs), optional
label smoothing (the official swish recipe uses 0.1). Optimizer, schedule and atomic
checkpoints come from :mod:`torchspine.engine.optim` and :mod:`torchspine.engine.checkpoint`;
the model is any registered classifier (``spinenet49_cls``, ``spinenet_cls`` ...).

Training runs on the same loop as detection (:mod:`torchspine.engine.loop`): DDP under
torchrun, AMP and an EMA of the weights when configured, a non-finite loss raises
:class:`~torchspine.engine.loop.NonFiniteLossError`, and a resume continues the data order
where it stopped. Outputs in ``out_dir``: ``checkpoint.pt`` (full training state, resumable),
``metrics.json`` (per epoch), ``model.safetensors`` (:func:`torchspine.models.saved.save_model`:
``load_model(out_dir)`` rebuilds the classifier, with its class names).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchspine.data.classification import classification_transforms, image_folder
from torchspine.engine.optim import scale_lr
from torchspine.models.registry import create_model
from torchspine.utils import atomic_write_text

__all__ = ["ClassifyConfig", "evaluate_classifier", "evaluate_saved_classifier", "load_classifier", "train_classifier",
           "topk_correct"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifyConfig:
    """Settings of one classification run (defaults: the paper's ImageNet recipe, scaled).

    Attributes:
        data: image-folder root with ``train/`` and ``val/`` (``<class>/<image>`` inside).
        model: a registered classifier name.
        model_overrides: keyword overrides for the model (spec fields such as
            ``filter_size_scale``; ``feature_combination``; ``level``; ``drop_rate``).
        base_lr: learning rate per 256 images (linear scaling rule; paper [7]: 0.1).
        warmup_epochs: linear warmup from 0 (paper: 5 epochs).
        schedule: ``"cosine"`` (paper's final models) or ``"step"`` (Table 11's step rows:
            x0.1 at 30, 60, 80 of 90 epochs, scaled to ``epochs``).
        label_smoothing: cross-entropy label smoothing (0 in the paper; 0.1 in the official
            swish recipe).
    """

    data: str
    model: str = "spinenet49_cls"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs/classify"
    image_size: int = 224
    batch_size: int = 64
    epochs: int = 90
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    schedule: Literal["cosine", "step"] = "cosine"
    label_smoothing: float = 0.0
    min_scale: float = 0.08
    workers: int = 2
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    grad_clip_norm: float = 0.0  # 0 disables
    ema_decay: float = 0.0  # 0 disables the EMA of weights
    amp: bool = True  # CUDA: autocast; CPU: only with amp_dtype "bfloat16"
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    channels_last: bool = False  # same math, channels_last layout
    onednn_pointwise: bool = False  # same math, CPU: 1x1 convs through oneDNN (needs channels_last)
    activation_checkpointing: bool = False  # same math, less memory: the backbone's blocks recomputed
    activation_checkpointing_max_level: int | None = None  # only the blocks at this level or finer (None: all)
    sync_bn: Literal["auto", "off", "on"] = "auto"
    checkpoint_interval: int = 0  # steps; 0: at every epoch end
    num_threads: int | None = None
    tensorboard: bool = False
    progress: bool = False

    def validate(self) -> "ClassifyConfig":
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"classify config: {name}={getattr(self, name)!r} {why}")

        for name in ("image_size", "batch_size", "epochs"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "must be a positive integer")
        if not (self.base_lr > 0 and math.isfinite(self.base_lr)):
            raise bad("base_lr", "must be positive")
        if not 0.0 <= self.momentum <= 1.0:  # also refuses NaN (every comparison with NaN is false)
            raise bad("momentum", "must be in [0, 1]")
        if not (isinstance(self.workers, int) and self.workers >= 0):
            raise bad("workers", "must be a non-negative integer (0: load in the main process)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "must be in [0, 1)")
        if self.schedule not in ("cosine", "step"):
            raise bad("schedule", "must be 'cosine' or 'step'")
        for name in ("warmup_epochs", "weight_decay", "grad_clip_norm"):  # NaN too: it trained to a NaN loss
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise bad(name, "must be a finite number >= 0" + (" (0 disables clipping)" if "clip" in name else ""))
        if not 0.0 < self.min_scale <= 1.0:
            raise bad("min_scale", "must be in (0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in [0, 1) (0 disables the EMA)")
        if self.amp_dtype not in ("auto", "float16", "bfloat16"):
            raise bad("amp_dtype", "must be 'auto', 'float16' or 'bfloat16'")
        if self.sync_bn not in ("auto", "off", "on"):
            raise bad("sync_bn", "must be 'auto', 'off' or 'on'")
        if not isinstance(self.checkpoint_interval, int) or self.checkpoint_interval < 0:
            raise bad("checkpoint_interval", "must be a non-negative integer")
        if not (isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda")
                                                  or self.device.startswith("cuda:"))):
            raise bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.onednn_pointwise and not self.channels_last:
            raise bad("onednn_pointwise", "needs channels_last=True (it acts on channels_last activations)")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifyConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"classify config: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d).validate()


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-``k`` logits, for each ``k`` (capped at C)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (N, maxk)
    hits = top.eq(target[:, None])
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: DataLoader, *, device: str | torch.device = "cpu",
                        label_smoothing: float = 0.0) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over ``loader``."""
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction="sum")
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        logits = model(images)
        loss_sum += float(criterion(logits, target))
        c1, c5 = topk_correct(logits, target)
        correct1 += c1
        correct5 += c5
        n += target.numel()
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluate_classifier: the loader yielded no images")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "images": n}


def _loader(dataset, *, batch_size: int, workers: int = 0) -> DataLoader:
    """An evaluation loader (in order, every image)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def _classification_loss(device: torch.device, criterion: nn.Module):
    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        images, target = batch
        return criterion(model(images.to(device, non_blocking=True)), target.to(device, non_blocking=True))

    return loss


def train_classifier(cfg: ClassifyConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and evaluate on its ``val`` split after every epoch,
    on the shared training loop (DDP under torchrun, AMP and EMA as configured, exact resume).

    Resumes from ``out_dir/checkpoint.pt`` when ``cfg.resume`` and the file exists. Returns the
    final metrics and the per-epoch history (on rank 0; ``{}`` on the other ranks).
    """
    from torchspine.engine.distributed import cleanup_distributed
    from torchspine.engine.trainer import setup_run

    cfg.validate()
    info, device, out = setup_run(device_name=cfg.device, seed=cfg.seed, num_threads=cfg.num_threads,
                                  deterministic=False, output_dir=cfg.out_dir)
    try:
        return _train_classifier(cfg, info, device, out)
    finally:
        cleanup_distributed()


def _train_classifier(cfg: ClassifyConfig, info: Any, device: torch.device, out: Path) -> dict[str, Any]:
    from torchspine.engine.distributed import wrap_for_training
    from torchspine.engine.fit import FitOptions, fit
    from torchspine.engine.trainer import final_model_info
    from torchspine.models.saved import save_model

    train_set = image_folder(cfg.data, "train", classification_transforms(cfg.image_size, train=True,
                                                                          min_scale=cfg.min_scale))
    val_set = image_folder(cfg.data, "val", classification_transforms(cfg.image_size, train=False))
    if train_set.classes != val_set.classes:
        raise ValueError(f"classification data {cfg.data!r}: train classes {train_set.classes} differ from "
                         f"val classes {val_set.classes}")
    if len(train_set.classes) < 2:  # cross-entropy over one class is 0 whatever the weights: nothing is learnt
        raise ValueError(f"classification data {cfg.data!r}: {len(train_set.classes)} class folder(s) "
                         f"{train_set.classes} in {cfg.data}/train; a classifier needs at least 2 "
                         f"({cfg.data}/train/<class>/<image>)")
    if cfg.batch_size % info.world_size:
        raise ValueError(f"classify config: batch_size={cfg.batch_size} must be divisible by the number of "
                         f"processes {info.world_size}")
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"classify config: batch_size={cfg.batch_size} is larger than the training set "
                         f"({len(train_set)} images in {cfg.data}/train)")
    num_classes = len(train_set.classes)
    model = create_model(cfg.model, num_classes=num_classes, **cfg.model_overrides)
    model, train_model = wrap_for_training(model, device=device, info=info, sync_bn=cfg.sync_bn,
                                           channels_last=cfg.channels_last)
    val_loader = _loader(val_set, batch_size=max(1, cfg.batch_size // info.world_size), workers=cfg.workers)
    steps_per_epoch = len(train_set) // cfg.batch_size
    total_steps = cfg.epochs * steps_per_epoch
    lr = scale_lr(cfg.base_lr, cfg.batch_size, 256)
    # Step schedule of Table 11: x0.1 at 1/3, 2/3 and 8/9 of training (30, 60, 80 of 90 epochs).
    decay_steps = tuple(int(total_steps * f) for f in (30 / 90, 60 / 90, 80 / 90))
    if info.is_main:
        logger.info("classify %s: %d classes, %d train / %d val images, %d steps/epoch, lr %.4g, device %s",
                    cfg.model, num_classes, len(train_set), len(val_set), steps_per_epoch, lr, device)
    opts = FitOptions(
        output_dir=out, batch_size=cfg.batch_size, total_steps=total_steps, lr=lr, seed=cfg.seed, rank=info.rank,
        world_size=info.world_size, device=device, num_workers=cfg.workers, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        schedule=cfg.schedule, decay_steps=decay_steps if cfg.schedule == "step" else (),
        grad_clip_norm=cfg.grad_clip_norm, ema_decay=cfg.ema_decay, amp=cfg.amp, amp_dtype=cfg.amp_dtype,
        channels_last=cfg.channels_last, onednn_pointwise=cfg.onednn_pointwise,
        activation_checkpointing=cfg.activation_checkpointing,
        activation_checkpointing_max_level=cfg.activation_checkpointing_max_level, resume=cfg.resume,
        checkpoint_interval=cfg.checkpoint_interval or steps_per_epoch,
        eval_interval=steps_per_epoch, log_interval=steps_per_epoch, tensorboard=cfg.tensorboard,
        progress=cfg.progress)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    r = fit(model=model, train_model=train_model, loss_fn=_classification_loss(device, criterion), dataset=train_set,
            collate=torch.utils.data.default_collate, opts=opts,
            evaluate=lambda m, step: evaluate_classifier(m, val_loader, device=device),
            summary=lambda m: f"val top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}%")
    if not info.is_main:
        return {}
    evals = {e["step"]: e for e in r.evals}
    history = []
    for rec in r.history:  # one record per epoch (log_interval = steps_per_epoch)
        e = evals.get(rec["step"], {})
        history.append({"epoch": rec["step"] // steps_per_epoch, "step": rec["step"], "train_loss": rec["loss"],
                        "lr": rec["lr"], **{f"val_{k}": v for k, v in e.items() if k != "step"}})
    for row in history:
        logger.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%% top-5 %.2f%%", row["epoch"], cfg.epochs,
                    row["train_loss"], row.get("val_top1", float("nan")), row.get("val_top5", float("nan")))
    atomic_write_text(out / "metrics.json", json.dumps({"config": _jsonable(cfg), "history": history},
                                                       indent=2) + "\n")
    final_model = r.trainer.ema.module if r.trainer.ema is not None else model
    final = r.final_eval or {}
    weights = save_model(final_model, out / "model.safetensors",
                         info=final_model_info("classification", num_classes=num_classes,
                                               label_names=list(train_set.classes),
                                               image_size=cfg.image_size, steps=r.steps, metrics=final))
    return {"top1": final.get("top1"), "top5": final.get("top5"), "history": history,
            "classes": train_set.classes, "weights": str(weights), "steps": r.steps,
            "images_per_second": r.images_per_second}


def _jsonable(cfg: ClassifyConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def load_classifier(weights: str | os.PathLike, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved classifier (a file or run folder, read by
    :func:`torchspine.engine.runs.load_trained`) and its facts: ``model``, ``num_classes``,
    ``classes`` (label names) and ``image_size``."""
    from torchspine.engine.runs import find_model_file, load_trained
    from torchspine.models.registry import model_info
    from torchspine.models.saved import read_model_metadata

    file = find_model_file(weights)[0]
    meta = read_model_metadata(file)
    if model_info(meta["model"]).task != "classifier":
        raise ValueError(f"weights {str(weights)!r} hold a {model_info(meta['model']).task} ({meta['model']}), "
                         f"not a classifier")
    trained = load_trained(file, device=device)
    model, info = trained.model, trained.info
    return model.eval(), {"model": meta["model"], "model_overrides": meta["overrides"],
                          "num_classes": info.get("num_classes", getattr(model, "num_classes", None)),
                          "classes": list(info.get("label_names", [])), "image_size": int(info.get("image_size", 224))}


def evaluate_saved_classifier(weights: str | os.PathLike, data: str | os.PathLike, *, split: str = "val",
                              batch_size: int = 64, workers: int = 0, device: str = "auto") -> dict[str, Any]:
    """Top-1 / top-5 of a saved classifier (file or run folder) on ``data/split``; the split's
    classes must be the model's."""
    from torchspine.utils import resolve_device

    dev = resolve_device(device)
    model, info = load_classifier(weights, device=str(dev))
    dataset = image_folder(data, split, classification_transforms(info["image_size"], train=False))
    if info["classes"] and dataset.classes != info["classes"]:
        raise ValueError(f"{data}/{split}: classes {dataset.classes} differ from the model's {info['classes']}")
    m = evaluate_classifier(model, _loader(dataset, batch_size=batch_size, workers=workers), device=dev)
    return {**m, "model": info["model"], "data": str(data), "split": split}
