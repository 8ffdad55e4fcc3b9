"""The training loop (issue 4, items 3-7): one function, ``train(cfg) -> metrics``.

What it does, in order: join the process group (torchrun), seed, build the datasets (the
built-in synthetic set by default) and the model, apply the recipe (SGD + conv-only weight
decay, warmup + step / cosine schedule scaled with the batch, gradient clipping, EMA,
cross-process BN, AMP on CUDA), resume from ``output_dir/checkpoint.pt`` when asked, then
run steps: the global batch of each step is fixed by (seed, epoch, step) and split across
processes, so a run gives the same batches whatever the process count and after a resume.
A non-finite loss stops the run with its step number, leaving the last good checkpoint.
Evaluation with pycocotools runs every ``eval_interval`` steps and at the end. Outputs in
``output_dir``: ``checkpoint.pt``, ``model.safetensors``, ``config.json``, ``history.json``,
``metrics.json``, ``curves.png`` and TensorBoard scalars under ``tb/`` (when installed).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchspine.data.coco import CocoDetection, collate_detection
from torchspine.data.synth import ensure_synth
from torchspine.data.transforms import build_eval_transforms, build_train_transforms
from torchspine.engine.build import add_dropblock, build_model
from torchspine.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap
from torchspine.engine.config import TrainConfig
from torchspine.engine.distributed import (DistInfo, all_reduce_mean, cleanup_distributed, convert_batchnorm,
                                           globalize_loss_normalizer, init_distributed)
from torchspine.engine.evaluate import evaluate_coco
from torchspine.engine.finetune import freeze_backbone_bn, init_from_pretrained
from torchspine.engine.runs import save_trained, trained_model_info
from torchspine.engine.optim import build_ema, build_optimizer, build_scheduler, scale_lr
from torchspine.engine.plots import plot_curves
from torchspine.utils import atomic_write_text

__all__ = ["NonFiniteLossError", "train", "resolve_device", "build_datasets", "epoch_batches", "schedule_steps"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the 1-based step that produced it."""

    def __init__(self, step: int, value: float, checkpoint: Path | None) -> None:
        where = f"; last good checkpoint kept at {checkpoint}" if checkpoint and checkpoint.exists() else \
            "; no checkpoint had been written yet"
        super().__init__(f"non-finite loss {value} at step {step}, training stopped{where}")
        self.step, self.value, self.checkpoint = step, value, checkpoint


def resolve_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if name == "cuda" and dist_info is not None and dist_info.distributed:
        name = f"cuda:{dist_info.local_rank}"
    return torch.device(name)


def _spec_to_json(v: Any) -> Any:
    from torchspine.specs.spec import SpineNetSpec

    return v.to_dict() if isinstance(v, SpineNetSpec) else v


def build_datasets(cfg: TrainConfig, *, with_masks: bool) -> tuple[CocoDetection, CocoDetection]:
    """Train (augmented) and validation (untransformed) datasets; the built-in set by default."""
    if cfg.train_ann is None or cfg.val_ann is None:
        synth = ensure_synth()
    train_ann = cfg.train_ann or synth["train_ann"]
    train_images = cfg.train_images or synth["train_images"]
    val_ann = cfg.val_ann or synth["val_ann"]
    val_images = cfg.val_images or synth["val_images"]
    train_ds = CocoDetection(train_ann, train_images, with_masks=with_masks, skip_bad=cfg.skip_bad_annotations,
                             seed=cfg.seed,
                             transforms=build_train_transforms(cfg.image_size, scale_range=cfg.scale_jitter,
                                                               hflip_prob=cfg.hflip_prob))
    val_ds = CocoDetection(val_ann, val_images, with_masks=with_masks, skip_bad=cfg.skip_bad_annotations,
                           transforms=build_eval_transforms())
    return train_ds, val_ds


def epoch_batches(num_samples: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation cut into full batches."""
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(num_samples, generator=g).tolist()
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(num_samples // batch_size)]


def schedule_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, tuple[int, ...]]:
    """Total steps and decay boundaries (steps) from epochs, unless given in steps."""
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    decay = cfg.decay_steps or tuple(int(round(e * steps_per_epoch)) for e in cfg.decay_epochs)
    return total, tuple(decay)


def _barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional dependency: pip install torchspine[tensorboard]
        logger.info("tensorboard is not installed: no TensorBoard scalars")
        return None
    return SummaryWriter(str(path))


def train(cfg: TrainConfig, *, model: nn.Module | None = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; returns the final COCO metrics (``AP``, ``AP50``, ...)
    plus ``steps``, ``train_seconds``, ``images_per_second``, ``evals`` and ``output_dir``.

    Args:
        cfg: the run configuration (validated here).
        model: use this detector instead of building ``cfg.model`` (same API as torchvision's).
        on_step: called after every optimizer step with ``(step, {"loss", "lr"})``.
    """
    cfg = cfg.validate()
    info = init_distributed(torch.device("cuda") if cfg.device.startswith("cuda") or
                            (cfg.device == "auto" and torch.cuda.is_available()) else torch.device("cpu"))
    try:
        return _train(cfg, info, model, on_step)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, info: DistInfo, model: nn.Module | None,
           on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:
    device = resolve_device(cfg.device, info)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes "
                         f"{info.world_size}")
    local_batch = cfg.batch_size // info.world_size

    # ---------------------------------------------------------------- data
    if info.is_main and (cfg.train_ann is None or cfg.val_ann is None):
        ensure_synth()  # rank 0 generates the built-in set once; the others wait
    _barrier(info)
    with_masks = cfg.with_masks if cfg.with_masks is not None else cfg.model.startswith("maskrcnn")
    train_ds, val_ds = build_datasets(cfg, with_masks=with_masks)
    steps_per_epoch = len(train_ds) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(train_ds)} images)")
    total_steps, decay_steps = schedule_steps(cfg, steps_per_epoch)

    # --------------------------------------------------------------- model
    if model is None:
        overrides = {k: v for k, v in cfg.model_overrides.items()}
        if cfg.stochastic_depth_rate is not None:
            overrides["stochastic_depth_rate"] = cfg.stochastic_depth_rate
        model = build_model(cfg.model, num_classes=train_ds.num_classes, image_size=cfg.image_size,
                            overrides=overrides)
        if cfg.weights:  # fine-tuning (engine/finetune.py)
            init_from_pretrained(model, cfg.weights, label_names=trained_model_info(cfg, train_ds)["label_names"])
    if cfg.freeze_bn:
        logger.info("froze %d backbone BatchNorm layers", freeze_backbone_bn(model))
    if cfg.dropblock:
        n = add_dropblock(model, block_size=cfg.dropblock_size, keep_prob=cfg.dropblock_keep_prob)
        logger.info("DropBlock(size %d, keep %.2f) after %d BN layers", cfg.dropblock_size, cfg.dropblock_keep_prob, n)
    model = convert_batchnorm(model, device=device, world_size=info.world_size, mode=cfg.sync_bn)
    if info.distributed and globalize_loss_normalizer(model):
        logger.info("loss normalised by the positives of the global batch (DDP == one process)")
    model.to(device)
    ddp_model: nn.Module = model
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # -------------------------------------------------------------- recipe
    peak_lr = scale_lr(cfg.lr, cfg.batch_size, cfg.lr_reference_batch)
    optimizer = build_optimizer(model, lr=peak_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=total_steps, warmup_steps=min(cfg.warmup_steps, total_steps),
                                warmup_init_factor=cfg.warmup_init_lr / cfg.lr, schedule=cfg.schedule,
                                decay_steps=decay_steps, decay_factor=cfg.decay_factor, min_lr_ratio=cfg.min_lr_ratio)
    ema = build_ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    ckpt_path = out / CHECKPOINT_NAME
    step, history, evals = 0, [], []
    if cfg.resume:
        if ckpt_path.is_file():
            state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                    scaler=scaler, map_location=device)
            step = int(state["step"])
            history, evals = list(state["extra"].get("history", [])), list(state["extra"].get("evals", []))
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", ckpt_path, step, state["epoch"],
                        state["epoch_step"])
        else:
            logger.warning("--resume: no checkpoint at %s, starting from scratch", ckpt_path)
    if info.is_main:
        atomic_write_text(out / "config.json", json.dumps(
            {k: ({kk: _spec_to_json(vv) for kk, vv in v.items()} if isinstance(v, dict) else v)
             for k, v in cfg.to_dict().items()}, indent=2, default=str))
        logger.info("training %s on %d images: %d steps (%d per epoch), global batch %d over %d process(es), "
                    "peak lr %.4g, device %s", cfg.model, len(train_ds), total_steps, steps_per_epoch,
                    cfg.batch_size, info.world_size, peak_lr, device)

    def checkpoint(done: int) -> None:
        if info.is_main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, scaler=scaler,
                            step=done, epoch=done // steps_per_epoch, epoch_step=done % steps_per_epoch,
                            extra={"history": history, "evals": evals})
        _barrier(info)

    def run_eval(done: int) -> dict[str, Any] | None:
        result = None
        if info.is_main:
            eval_model = ema.module if ema is not None else unwrap(model)
            result = evaluate_coco(eval_model, val_ds, device=device, max_images=cfg.eval_max_images,
                                   with_masks=with_masks or None, batch_size=max(1, local_batch))
            evals.append({"step": done, **{k: v for k, v in result.items() if isinstance(v, (int, float))}})
            if writer is not None:
                for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "mask_AP"):
                    if k in result:
                        writer.add_scalar(f"val/{k}", result[k], done)
        _barrier(info)
        return result

    writer = _tensorboard(out / "tb") if (cfg.tensorboard and info.is_main) else None
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (cfg.progress and info.is_main),
               dynamic_ncols=True)
    params = [p for p in model.parameters() if p.requires_grad]
    ddp_model.train()
    train_start, images_seen = time.perf_counter(), 0
    interval_loss, interval_n = 0.0, 0
    try:
        while step < total_steps:
            epoch, epoch_step = divmod(step, steps_per_epoch)
            train_ds.set_epoch(epoch)
            local = [b[info.rank * local_batch:(info.rank + 1) * local_batch]
                     for b in epoch_batches(len(train_ds), cfg.batch_size, seed=cfg.seed, epoch=epoch)]
            loader = torch.utils.data.DataLoader(train_ds, batch_sampler=local[epoch_step:],
                                                 collate_fn=collate_detection, num_workers=cfg.num_workers)
            for images, targets in loader:
                t0 = time.perf_counter()
                images = [im.to(device, non_blocking=True) for im in images]
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    if images:
                        loss = sum(ddp_model(images, targets).values())
                    else:  # every image of this batch was corrupt: a zero loss keeps DDP in step
                        loss = sum(p.sum() for p in params) * 0.0
                step_loss = float(all_reduce_mean(loss.detach().float()))
                if not math.isfinite(step_loss):
                    raise NonFiniteLossError(step + 1, step_loss, ckpt_path)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip_norm > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                dt = time.perf_counter() - t0
                images_seen += cfg.batch_size
                interval_loss, interval_n = interval_loss + step_loss, interval_n + 1
                ips = cfg.batch_size / max(dt, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}", refresh=False)
                if step % cfg.log_interval == 0 or step == total_steps:
                    rec = {"step": step, "loss": interval_loss / interval_n, "lr": lr, "img_per_s": ips}
                    history.append(rec)
                    if info.is_main and not cfg.progress:
                        logger.info("step %d/%d loss %.4f lr %.3g %.1f img/s", step, total_steps, rec["loss"], lr, ips)
                    interval_loss, interval_n = 0.0, 0
                    if writer is not None:
                        writer.add_scalar("train/loss", rec["loss"], step)
                        writer.add_scalar("train/lr", lr, step)
                        writer.add_scalar("train/img_per_s", ips, step)
                if on_step is not None:
                    on_step(step, {"loss": step_loss, "lr": lr})
                if cfg.eval_interval and step % cfg.eval_interval == 0 and step < total_steps:
                    ddp_model.eval()
                    r = run_eval(step)
                    ddp_model.train()
                    if r is not None:
                        bar.write(f"step {step}: AP {r['AP']:.3f} AP50 {r['AP50']:.3f}")
                if cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0 and step < total_steps:
                    checkpoint(step)
                if step >= total_steps:
                    break
    finally:
        bar.close()
    train_seconds = time.perf_counter() - train_start
    checkpoint(step)
    ddp_model.eval()
    final = run_eval(step)
    result: dict[str, Any] = {}
    if info.is_main:
        assert final is not None
        final_model = ema.module if ema is not None else unwrap(model)
        save_trained(final_model, out / "model.safetensors",
                     trained_model_info(cfg, train_ds, metrics=final, steps=step))
        result = {**final, "steps": step, "train_seconds": train_seconds,
                  "images_per_second": images_seen / max(train_seconds, 1e-9), "num_train_images": len(train_ds),
                  "corrupt_images_skipped": train_ds.num_corrupt, "output_dir": str(out), "evals": evals}
        atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
        atomic_write_text(out / "history.json", json.dumps({"history": history, "evals": evals}, indent=2))
        try:  # a plot must never fail a finished run
            plot_curves(out / "curves.png", history, evals, title=f"{cfg.model} ({step} steps)")
        except Exception as e:  # noqa: BLE001
            logger.warning("could not draw curves.png: %s", e)
        if writer is not None:
            writer.close()
        logger.info("finished %d steps in %.0f s: AP %.3f AP50 %.3f", step, train_seconds, final["AP"], final["AP50"])
    return result
