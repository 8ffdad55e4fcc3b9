"""Detector training: ``train(cfg) -> metrics`` on the shared loop (:mod:`torchspine.engine.loop`).

In order: join the process group (torchrun), seed (a different reproducible seed per rank),
build the datasets (the built-in synthetic set by default; category ids mapped to contiguous
labels 1..K) and the detector, apply the recipe's model surgery (stochastic depth, DropBlock,
cross-process BN, the global loss normaliser, DDP), then :func:`torchspine.engine.fit.fit`
runs the steps (SGD + conv-only weight decay, warmup + step / cosine schedule scaled with the
batch, gradient clipping, EMA, AMP on CUDA) with its hooks (checkpoints, COCO evaluation,
logging) and ``--resume``. Outputs in ``output_dir``: ``checkpoint.pt``, ``model.safetensors``
(:func:`torchspine.models.saved.save_model`: ``load_model(output_dir)`` rebuilds the
detector with its label names and category ids), ``config.json``, ``history.json``,
``metrics.json``, ``curves.png`` and TensorBoard scalars under ``tb/`` (when installed).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from torchspine.data.checks import check_batch_size
from torchspine.data.coco import CocoDetection, collate_detection
from torchspine.data.labels import LabelMap
from torchspine.data.synth import ensure_synth
from torchspine.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transforms, build_train_transforms
from torchspine.engine.build import build_model
from torchspine.engine.config import TrainConfig
from torchspine.engine.distributed import (DistInfo, cleanup_distributed, globalize_loss_normalizer, init_distributed,
                                           wrap_for_training)
from torchspine.engine.evaluate import evaluate_coco
from torchspine.engine.finetune import freeze_backbone_bn, init_from_pretrained
from torchspine.engine.fit import CHECKPOINT_NAME, FitOptions, fit
from torchspine.engine.hooks import barrier
from torchspine.engine.loop import NonFiniteLossError, epoch_batches, rank_seed, seed_everything
from torchspine.engine.optim import scale_lr
from torchspine.engine.plots import plot_curves
from torchspine.layers.dropout import add_dropblock
from torchspine.models.backbone import find_backbone
from torchspine.models.registry import model_info
from torchspine.utils import atomic_write_text, resolve_device

__all__ = ["CHECKPOINT_NAME", "NonFiniteLossError", "train", "build_datasets", "epoch_batches",
           "schedule_steps", "setup_run", "final_model_info"]

logger = logging.getLogger(__name__)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def build_datasets(cfg: TrainConfig, *, with_masks: bool) -> tuple[CocoDetection, CocoDetection]:
    """Train (augmented) and validation (untransformed) datasets; the built-in set by default.
    The validation set uses the training set's label mapping."""
    if cfg.train_ann is None or cfg.val_ann is None:
        synth = ensure_synth()
    train_ann = cfg.train_ann or synth["train_ann"]
    train_images = cfg.train_images or synth["train_images"]
    val_ann = cfg.val_ann or synth["val_ann"]
    val_images = cfg.val_images or synth["val_images"]
    # Training: corrupt images are replaced (full batches), an empty annotation list is refused.
    train_ds = CocoDetection(train_ann, train_images, with_masks=with_masks, skip_bad=cfg.skip_bad_annotations,
                             seed=cfg.seed, replace_corrupt=True, require_annotations=True,
                             skip_flag="--skip-bad-annotations",
                             transforms=build_train_transforms(cfg.image_size, scale_range=cfg.scale_jitter,
                                                               hflip_prob=cfg.hflip_prob))
    val_ds = CocoDetection(val_ann, val_images, with_masks=with_masks, skip_bad=cfg.skip_bad_annotations,
                           transforms=build_eval_transforms(), labels=train_ds.labels,
                           skip_flag="--skip-bad-annotations")
    return train_ds, val_ds


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, tuple[int, ...]]:
    """Total steps and decay boundaries (steps) from epochs, unless given in steps."""
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    decay = cfg.decay_steps or tuple(int(round(e * steps_per_epoch)) for e in cfg.decay_epochs)
    return total, tuple(decay)


def setup_run(*, device_name: str, seed: int, num_threads: int | None, deterministic: bool,
              output_dir: str) -> tuple[DistInfo, torch.device, Path]:
    """Join the process group, pick the device, seed this rank's global RNGs, make the folder."""
    info = init_distributed(torch.device(resolve_device(device_name).type))
    device = resolve_device(device_name, local_rank=info.local_rank if info.distributed else None)
    if num_threads:
        torch.set_num_threads(num_threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(rank_seed(seed, info.rank))
    out = Path(output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return info, device, out


def final_model_info(task: str, *, num_classes: int, image_size: int, steps: int, metrics: dict[str, Any],
                     labels: LabelMap | None = None, label_names: list[str] | None = None) -> dict[str, Any]:
    """The ``info`` saved with a trained model (see :func:`torchspine.models.saved.save_model`):
    a detector's label map (``labels``, written by :meth:`LabelMap.to_info`) or a classifier's
    class names (``label_names``, index = class)."""
    info: dict[str, Any] = {"task": task, "num_classes": num_classes, "image_size": image_size,
                            "preprocessing": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                            "provenance": {"trained_steps": steps,
                                           **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}}
    if labels is not None:
        info.update(labels.to_info())
    elif label_names is not None:
        info["label_names"] = list(label_names)
    return info


def _detection_loss(device: torch.device) -> Callable[[nn.Module, Any], dict[str, torch.Tensor]]:
    def loss(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        return model(images, targets)

    return loss


def train(cfg: TrainConfig, *, model: nn.Module | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; returns the final COCO metrics (``AP``, ``AP50``, ...)
    plus ``steps``, ``train_seconds``, ``images_per_second``, ``evals`` and ``output_dir``
    (on rank 0; ``{}`` on the other ranks).

    Args:
        cfg: the run configuration (validated here).
        model: use this detector instead of building ``cfg.model`` (same API as torchvision's).
        on_step: called after every optimizer step with ``(step, {"loss", "lr"})``.
    """
    cfg = cfg.validate()
    info, device, out = setup_run(device_name=cfg.device, seed=cfg.seed, num_threads=cfg.num_threads,
                                  deterministic=cfg.deterministic, output_dir=cfg.output_dir)
    try:
        return _train(cfg, info, device, out, model, on_step)
    finally:
        cleanup_distributed()


def _build_detector(cfg: TrainConfig, num_classes: int, model: nn.Module | None,
                    label_names: list[str] | None = None) -> nn.Module:
    if model is None:
        overrides = dict(cfg.model_overrides)
        if cfg.stochastic_depth_rate is not None:
            overrides["stochastic_depth_rate"] = cfg.stochastic_depth_rate
        model = build_model(cfg.model, num_classes=num_classes, image_size=cfg.image_size, overrides=overrides)
        if cfg.weights:  # fine-tuning (engine/finetune.py)
            init_from_pretrained(model, cfg.weights, label_names=label_names)
    if cfg.freeze_bn:
        logger.info("froze %d backbone BatchNorm layers", freeze_backbone_bn(model))
    if cfg.dropblock:
        n = add_dropblock(model, block_size=cfg.dropblock_size, keep_prob=cfg.dropblock_keep_prob)
        logger.info("DropBlock(size %d, keep %.2f): %d places in the backbone's blocks", cfg.dropblock_size,
                    cfg.dropblock_keep_prob, n)
    return model


def _train(cfg: TrainConfig, info: DistInfo, device: torch.device, out: Path, model: nn.Module | None,
           on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:
    if info.is_main and (cfg.train_ann is None or cfg.val_ann is None):
        ensure_synth()  # rank 0 generates the built-in set once; the others wait
    barrier()
    with_masks = cfg.with_masks if cfg.with_masks is not None else model_info(cfg.model).task == "instance_segmentation"
    train_ds, val_ds = build_datasets(cfg, with_masks=with_masks)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes "
                         f"{info.world_size}")
    steps_per_epoch = len(train_ds) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(train_ds)} images)")
    total_steps, decay_steps = schedule_steps(cfg, steps_per_epoch)

    model = _build_detector(cfg, train_ds.num_classes, model, train_ds.label_names)
    backbone = find_backbone(model)
    max_level = backbone.spec.max_level if backbone is not None else 7  # 7: the ResNet-FPN baseline's P7
    check_batch_size(cfg.batch_size // info.world_size, cfg.image_size, max_level=max_level)  # before BatchNorm fails deep inside
    model, train_model = wrap_for_training(model, device=device, info=info, sync_bn=cfg.sync_bn,
                                           channels_last=cfg.channels_last)
    if info.distributed and globalize_loss_normalizer(model):
        logger.info("loss normalised by the positives of the global batch (DDP == one process)")

    peak_lr = scale_lr(cfg.lr, cfg.batch_size, cfg.lr_reference_batch)
    if info.is_main:
        atomic_write_text(out / "config.json", json.dumps(_jsonable(cfg.to_dict()), indent=2, default=str))
        logger.info("training %s on %d images (%d classes): %d steps (%d per epoch), global batch %d over %d "
                    "process(es), peak lr %.4g, device %s", cfg.model, len(train_ds), len(train_ds.category_ids),
                    total_steps, steps_per_epoch, cfg.batch_size, info.world_size, peak_lr, device)
    local_batch = cfg.batch_size // info.world_size

    def evaluate(eval_model: nn.Module, step: int) -> dict[str, Any]:
        return evaluate_coco(eval_model, val_ds, device=device, max_images=cfg.eval_max_images,
                             with_masks=with_masks or None, batch_size=max(1, local_batch))

    opts = FitOptions(
        output_dir=out, batch_size=cfg.batch_size, total_steps=total_steps, lr=peak_lr, seed=cfg.seed,
        rank=info.rank, world_size=info.world_size, device=device, num_workers=cfg.num_workers,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        warmup_init_factor=cfg.warmup_init_lr / cfg.lr, schedule=cfg.schedule, decay_steps=decay_steps,
        decay_factor=cfg.decay_factor, min_lr_ratio=cfg.min_lr_ratio, grad_clip_norm=cfg.grad_clip_norm,
        ema_decay=cfg.ema_decay, amp=cfg.amp, amp_dtype=cfg.amp_dtype, channels_last=cfg.channels_last,
        onednn_pointwise=cfg.onednn_pointwise, activation_checkpointing=cfg.activation_checkpointing,
        activation_checkpointing_max_level=cfg.activation_checkpointing_max_level, resume=cfg.resume,
        checkpoint_interval=cfg.checkpoint_interval, eval_interval=cfg.eval_interval,
        log_interval=cfg.log_interval, tensorboard=cfg.tensorboard, progress=cfg.progress,
        stop_at_step=cfg.stop_at_step)
    r = fit(model=model, train_model=train_model, loss_fn=_detection_loss(device), dataset=train_ds,
            collate=collate_detection, opts=opts, evaluate=evaluate,
            summary=lambda m: f"AP {m['AP']:.3f} AP50 {m['AP50']:.3f}", on_step=on_step)
    if not info.is_main:
        return {}
    final = r.final_eval
    assert final is not None
    final_model = r.trainer.ema.module if r.trainer.ema is not None else model
    from torchspine.models.saved import save_model

    recorded = getattr(model, "torchspine_config", None)
    save_model(final_model, out / "model.safetensors",
               name=None if recorded else cfg.model, overrides=None if recorded else dict(cfg.model_overrides),
               info=final_model_info("detection", num_classes=train_ds.num_classes,
                                     labels=train_ds.labels,
                                     image_size=cfg.image_size, steps=r.steps, metrics=final))
    result = {**final, "steps": r.steps, "train_seconds": r.train_seconds, "images_per_second": r.images_per_second,
              "num_train_images": len(train_ds), "corrupt_images_skipped": train_ds.num_corrupt,
              "output_dir": str(out), "evals": r.evals}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    atomic_write_text(out / "history.json", json.dumps({"history": r.history, "evals": r.evals}, indent=2))
    try:  # a plot must never fail a finished run
        plot_curves(out / "curves.png", r.history, r.evals, title=f"{cfg.model} ({r.steps} steps)")
    except Exception as e:  # noqa: BLE001
        logger.warning("could not draw curves.png: %s", e)
    # one line: the command prints the table (it was printed twice)
    logger.info("finished %d steps in %.0f s: AP %.3f AP50 %.3f", r.steps, r.train_seconds, final["AP"], final["AP50"])
    return result
