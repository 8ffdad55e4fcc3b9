"""The proxy task of paper section 5.1: the reward of one sampled architecture.

Paper defaults (``ProxyTask()``): the sampled spec scaled to 0.25 of SpineNet-49's feature
dimension (``filter_size_scale=0.25``, so 64 endpoint filters), resampling ``alpha=0.25``,
box and class nets of width 64, image size 512, 5 epochs, and the reward is COCO AP on a
held-out part of the *training* data (the paper reserves 7392 of train2017's 118287 images:
``val_fraction`` 0.0625). Everything is a field, so that on a CPU a trial runs on the
built-in synthetic dataset in a minute or two (``ProxyTask.quick()``).

A trial trains the RetinaNet of ``detector`` (its head depth and anchors) with the sampled
backbone through ``torchspine.engine.trainer.train`` and evaluates with pycocotools there.
The held-out split is a seeded random split of the training annotation file, written once
(atomically) to ``split_dir`` and shared by all trials.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torchspine.specs.spec import SpineNetSpec
from torchspine.utils import atomic_write_text

__all__ = ["ProxyTask", "split_annotations"]

logger = logging.getLogger(__name__)

# Paper 5.1: 7392 images reserved out of COCO train2017's 118287.
PAPER_VAL_FRACTION = 7392 / 118287
_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def split_annotations(ann_file: str | os.PathLike, out_dir: str | os.PathLike, *, val_fraction: float,
                      seed: int = 0) -> tuple[Path, Path]:
    """Split a COCO annotation file by image into (train, held-out) files under ``out_dir``.

    Deterministic in (file content, ``val_fraction``, ``seed``); files are written atomically,
    so concurrent trials writing the same split are safe.
    """
    ann_file = Path(ann_file)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"proxy task: val_fraction must be in (0, 1), got {val_fraction}")
    raw = ann_file.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ann_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or len(data["images"]) < 2:
        raise ValueError(f"{ann_file}: needs an 'images' list with at least two images to hold some out")
    key = hashlib.sha1(raw + f"|{val_fraction}|{seed}".encode()).hexdigest()[:12]
    out = Path(out_dir) / f"split-{key}"
    train_path, val_path = out / "proxy_train.json", out / "proxy_val.json"
    if train_path.exists() and val_path.exists():
        return train_path, val_path
    ids = sorted(img["id"] for img in data["images"])
    random.Random(seed).shuffle(ids)
    n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    held = set(ids[:n_val])
    for path, keep in ((train_path, lambda i: i not in held), (val_path, lambda i: i in held)):
        part = {**data, "images": [im for im in data["images"] if keep(im["id"])],
                "annotations": [a for a in data.get("annotations", []) if keep(a["image_id"])]}
        atomic_write_text(path, json.dumps(part))
    logger.info("proxy split of %s: %d train / %d held-out images -> %s", ann_file, len(ids) - n_val, n_val, out)
    return train_path, val_path


@dataclass(frozen=True)
class ProxyTask:
    """Train and evaluate one architecture; ``task(spec) -> {"reward": AP, ...}``.

    Attributes:
        filter_size_scale, resample_alpha, endpoints_num_filters: the proxy backbone scaling
            (paper: 0.25, 0.25 and 256 x 0.25 = 64).
        head_num_filters: width of the box and class nets (paper: 64).
        detector: the RetinaNet preset whose head depth / anchors are used.
        image_size: training and evaluation size (paper: 512).
        epochs: training epochs over the proxy-train split (paper: 5); ``max_steps`` overrides.
        val_fraction: share of the training images held out for the reward.
        train_ann, train_images: the training data (``None``: the built-in synthetic set).
        batch_size, lr, lr_reference_batch, warmup_steps: the short schedule (``lr`` is the
            rate at ``lr_reference_batch``, scaled linearly to ``batch_size``; warmup, then cosine).
        scale_jitter: training scale jitter (released recipe: [0.5, 2.0]).
        norm_momentum: BN moving-average decay of the proxy backbone (TF convention); ``None``
            keeps the spec's 0.997. Runs of a few hundred steps need a faster one (0.9): with
            0.997 the running statistics are still near their initial values when the reward is
            measured (the training area measured AP 0 after 300 steps).
        eval_max_images: cap on held-out images evaluated (``None``: all).
        num_threads: CPU threads per trial (``None``: what Ray gives the worker).
        work_dir: where trial outputs and the split go (``None``: a temporary directory).
        keep_outputs: keep each trial's training directory (checkpoints, curves).
        seed: training seed (the same for every trial, so rewards compare architectures).
        split_seed: seed of the held-out split.
        reward_metric: the COCO metric used as reward (paper: ``"AP"``; ``"AP50"`` gives a
            signal sooner in very short CPU trials).
    """

    filter_size_scale: float = 0.25
    resample_alpha: float = 0.25
    endpoints_num_filters: int = 64
    head_num_filters: int = 64
    detector: str = "retinanet_spinenet49"
    image_size: int = 512
    epochs: float = 5.0
    max_steps: int | None = None
    val_fraction: float = PAPER_VAL_FRACTION
    train_ann: str | None = None
    train_images: str | None = None
    batch_size: int = 8
    lr: float = 0.28
    lr_reference_batch: int = 256
    warmup_steps: int = 50
    scale_jitter: tuple[float, float] = (0.5, 2.0)
    norm_momentum: float | None = None
    eval_max_images: int | None = None
    num_threads: int | None = None
    work_dir: str | None = None
    keep_outputs: bool = False
    seed: int = 0
    split_seed: int = 0
    reward_metric: str = "AP"

    def validate(self) -> ProxyTask:
        if (self.train_ann is None) != (self.train_images is None):
            raise ValueError("proxy task: train_ann and train_images must be given together")
        if self.train_ann is not None and not Path(self.train_ann).is_file():
            raise FileNotFoundError(f"proxy task: annotation file {self.train_ann!r} not found")
        if self.train_images is not None and not Path(self.train_images).is_dir():
            raise FileNotFoundError(f"proxy task: image directory {self.train_images!r} not found")
        for name in ("filter_size_scale", "resample_alpha", "epochs", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"proxy task: {name} must be positive, got {getattr(self, name)!r}")
        for name in ("endpoints_num_filters", "head_num_filters", "image_size", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"proxy task: {name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"proxy task: val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.reward_metric not in _METRICS:
            raise ValueError(f"proxy task: reward_metric must be one of {_METRICS}, got {self.reward_metric!r}")
        if not self.detector.startswith("retinanet_spinenet"):
            raise ValueError(f"proxy task: detector must be a retinanet_spinenet* preset, got {self.detector!r}")
        return self

    @classmethod
    def quick(cls, **overrides: Any) -> ProxyTask:
        """Settings for a CPU trial of about a minute on the built-in dataset (not the paper's)."""
        # The built-in demo recipe's settings (src/torchspine/configs/demo_synth.json), shortened.
        kw: dict[str, Any] = {"image_size": 128, "max_steps": 150, "batch_size": 8, "lr": 0.02,
                              "lr_reference_batch": 8, "warmup_steps": 30, "scale_jitter": (0.8, 1.25),
                              "norm_momentum": 0.9, "val_fraction": 0.125, "eval_max_images": 32}
        kw.update(overrides)
        return cls(**kw)

    def scaled_spec(self, spec: SpineNetSpec) -> SpineNetSpec:
        """The proxy backbone: ``spec`` with the proxy scaling (block_repeats kept)."""
        over: dict[str, Any] = {"filter_size_scale": self.filter_size_scale, "resample_alpha": self.resample_alpha,
                                "endpoints_num_filters": self.endpoints_num_filters}
        if self.norm_momentum is not None:
            over["norm.momentum"] = self.norm_momentum
        return spec.replace(**over)

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, spec: SpineNetSpec, *, steps: int | None = None, max_steps: int | None = None,
                 trial_dir: str | None = None) -> dict[str, Any]:
        """Train and evaluate ``spec``; with ``steps`` (early stopping), train a ``max_steps`` run only
        up to ``steps``, resuming the checkpoint in ``trial_dir`` from the trial's previous rung
        (the learning-rate schedule spans ``max_steps`` in every rung, so a trial that reaches
        the last rung has had exactly the full-budget run)."""
        from torchspine.data.synth import ensure_synth
        from torchspine.engine.config import TrainConfig
        from torchspine.engine.trainer import train

        self.validate()
        if steps is not None:
            if max_steps is None or trial_dir is None:
                raise ValueError("proxy task: a rung (steps) needs max_steps and trial_dir")
            if self.max_steps is not None and max_steps != self.max_steps:
                raise ValueError(f"proxy task: the fidelity schedule's max_steps={max_steps} differs from the "
                                 f"proxy task's max_steps={self.max_steps}")
        work = Path(self.work_dir) if self.work_dir else Path(tempfile.gettempdir()) / "torchspine-search"
        if self.train_ann is None:
            synth = ensure_synth()
            train_ann, train_images = synth["train_ann"], synth["train_images"]
        else:
            train_ann, train_images = Path(self.train_ann), Path(self.train_images)
        split_train, split_val = split_annotations(train_ann, work, val_fraction=self.val_fraction,
                                                   seed=self.split_seed)

        def config(out_dir: Path) -> TrainConfig:
            return TrainConfig(
                model=self.detector,
                model_overrides={"spec": self.scaled_spec(spec), "head_num_filters": self.head_num_filters},
                image_size=self.image_size,
                train_ann=str(split_train), train_images=str(train_images),
                val_ann=str(split_val), val_images=str(train_images),
                batch_size=self.batch_size, epochs=self.epochs,
                max_steps=self.max_steps if steps is None else max_steps,
                stop_at_step=steps, resume=steps is not None,
                lr=self.lr, lr_reference_batch=self.lr_reference_batch, warmup_steps=self.warmup_steps,
                warmup_init_lr=0.0, schedule="cosine", scale_jitter=tuple(self.scale_jitter),
                eval_max_images=self.eval_max_images, num_threads=self.num_threads,
                seed=self.seed, output_dir=str(out_dir), checkpoint_interval=0, tensorboard=False,
                progress=False, log_interval=10, device="auto",
            )

        if steps is not None:
            metrics = train(config(Path(trial_dir)))
        else:
            with tempfile.TemporaryDirectory(prefix=f"{spec.name or 'trial'}-", dir=_mkdir(work / "trials")) as tmp:
                out_dir = work / "trials" / (spec.name or Path(tmp).name) if self.keep_outputs else Path(tmp)
                metrics = train(config(out_dir))
        out = {"reward": float(metrics[self.reward_metric])}
        for k in (*_METRICS, "steps", "train_seconds"):
            if k in metrics:
                out[k] = float(metrics[k])
        return out


def _mkdir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
