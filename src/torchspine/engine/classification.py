"""Classification training and top-1 / top-5 evaluation (paper sections 4.2 and 5, Table 11).

The recipe of the paper (Goyal et al. [7] with cosine decay, He et al. [11]) on an image
folder: ``RandomResizedCrop`` 224 + flip, SGD momentum 0.9, learning rate scaled linearly with
the batch (0.1 per 256 images), linear warmup (5 epochs), cosine decay, weight decay 1e-4 on
conv / linear weights only (official classification configs, reference section 7), optional
label smoothing (the official swish recipe uses 0.1). Optimizer, schedule and atomic
checkpoints come from :mod:`torchspine.engine.optim` and :mod:`torchspine.engine.checkpoint`;
the model is any registered classifier (``spinenet49_cls``, ``spinenet_cls`` ...).

Outputs in ``out_dir``: ``last.pt`` (full training state, resumable), ``metrics.json`` (per
epoch), ``model.safetensors`` (final weights, with the model name, overrides and class names
in the metadata so :func:`load_classifier` rebuilds it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchspine.data.classification import classification_transforms, image_folder
from torchspine.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights
from torchspine.engine.optim import build_optimizer, build_scheduler, scale_lr
from torchspine.models.registry import create_model
from torchspine.utils import atomic_write_text

__all__ = ["ClassifyConfig", "evaluate_classifier", "load_classifier", "train_classifier", "topk_correct"]

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

    def validate(self) -> "ClassifyConfig":
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"classify config: {name}={getattr(self, name)!r} {why}")

        for name in ("image_size", "batch_size", "epochs"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise bad(name, "must be a positive integer")
        if not self.base_lr > 0:
            raise bad("base_lr", "must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", "must be in [0, 1)")
        if self.schedule not in ("cosine", "step"):
            raise bad("schedule", "must be 'cosine' or 'step'")
        if self.warmup_epochs < 0 or self.weight_decay < 0:
            raise bad("warmup_epochs" if self.warmup_epochs < 0 else "weight_decay", "must be >= 0")
        if not 0.0 < self.min_scale <= 1.0:
            raise bad("min_scale", "must be in (0, 1]")
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


def _loader(dataset, *, batch_size: int, train: bool, workers: int, seed: int) -> DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train and len(dataset) > batch_size,
                      num_workers=workers, generator=g, persistent_workers=False)


def train_classifier(cfg: ClassifyConfig) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` and evaluate on its ``val`` split after every epoch.

    Resumes from ``out_dir/last.pt`` when ``cfg.resume`` and the file exists. Returns the
    final metrics and the per-epoch history.
    """
    cfg.validate()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_set = image_folder(cfg.data, "train", classification_transforms(cfg.image_size, train=True,
                                                                          min_scale=cfg.min_scale))
    val_set = image_folder(cfg.data, "val", classification_transforms(cfg.image_size, train=False))
    if train_set.classes != val_set.classes:
        raise ValueError(f"classification data {cfg.data!r}: train classes {train_set.classes} differ from "
                         f"val classes {val_set.classes}")
    num_classes = len(train_set.classes)
    model = create_model(cfg.model, num_classes=num_classes, **cfg.model_overrides).to(cfg.device)
    train_loader = _loader(train_set, batch_size=cfg.batch_size, train=True, workers=cfg.workers, seed=cfg.seed)
    val_loader = _loader(val_set, batch_size=cfg.batch_size, train=False, workers=cfg.workers, seed=cfg.seed)
    steps_per_epoch = len(train_loader)
    total_steps = cfg.epochs * steps_per_epoch
    lr = scale_lr(cfg.base_lr, cfg.batch_size, 256)
    optimizer = build_optimizer(model, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Step schedule of Table 11: x0.1 at 1/3, 2/3 and 8/9 of training (30, 60, 80 of 90 epochs).
    decay_steps = tuple(int(total_steps * f) for f in (30 / 90, 60 / 90, 80 / 90))
    scheduler = build_scheduler(optimizer, total_steps=total_steps,
                                warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
                                schedule=cfg.schedule, decay_steps=decay_steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    ckpt = out / "last.pt"
    if cfg.resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler)
        start_epoch, step = state["epoch"], state["step"]
        history = list(json.loads(state["extra"].get("history", "[]")))
        logger.info("resumed %s at epoch %d (step %d)", ckpt, start_epoch, step)
    logger.info("classify %s: %d classes, %d train / %d val images, %d steps/epoch, lr %.4g",
                cfg.model, num_classes, len(train_set), len(val_set), steps_per_epoch, lr)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loss_sum, seen = 0.0, 0
        for images, target in train_loader:
            images, target = images.to(cfg.device), target.to(cfg.device)
            loss = criterion(model(images), target)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"classify: non-finite loss {loss_value} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss_value * target.numel()
            seen += target.numel()
        metrics = evaluate_classifier(model, val_loader, device=cfg.device)
        row = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
               "lr": optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(row)
        logger.info("epoch %d/%d: train loss %.4f, val top-1 %.2f%% top-5 %.2f%%", epoch + 1, cfg.epochs,
                    row["train_loss"], metrics["top1"], metrics["top5"])
        save_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, step=step, epoch=epoch + 1,
                        epoch_step=0, extra={"history": json.dumps(history)})
        atomic_write_text(out / "metrics.json", json.dumps({"config": _jsonable(cfg), "history": history},
                                                           indent=2) + "\n")
    meta = {"model": cfg.model, "model_overrides": json.dumps(cfg.model_overrides),
            "num_classes": str(num_classes), "classes": json.dumps(train_set.classes),
            "image_size": str(cfg.image_size)}
    save_weights(out / "model.safetensors", model, metadata=meta)
    final = history[-1] if history else {}
    return {"top1": final.get("val_top1"), "top5": final.get("val_top5"), "history": history,
            "classes": train_set.classes, "weights": str(out / "model.safetensors")}


def _jsonable(cfg: ClassifyConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def load_classifier(weights: str | os.PathLike, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved classifier (:func:`torchspine.models.saved.load_model`) and its facts:
    ``model``, ``num_classes``, ``classes`` (label names) and ``image_size``."""
    from torchspine.models.registry import model_info
    from torchspine.models.saved import load_model, read_model_metadata

    meta = read_model_metadata(weights)
    if model_info(meta["model"]).task != "classifier":
        raise ValueError(f"weights {str(weights)!r} hold a {model_info(meta['model']).task} ({meta['model']}), "
                         f"not a classifier")
    model = load_model(weights, device=device)
    info = model.torchspine_info
    return model.eval(), {"model": meta["model"], "model_overrides": meta["overrides"],
                          "num_classes": info.get("num_classes", getattr(model, "num_classes", None)),
                          "classes": list(info.get("label_names", [])), "image_size": int(info.get("image_size", 224))}
