"""Typed training configuration; recipe files are JSON with ``"_comment"`` fields.

A recipe file (``src/torchspine/configs/*.json``) holds :class:`TrainConfig` fields; any key
starting with ``_`` is a comment (JSON has none) and is ignored. Every field is validated at
load with a message naming the file and the field. The schedule may be given in epochs
(``epochs``, ``decay_epochs``), which the trainer turns into steps from the dataset size and
the global batch, or in steps (``max_steps``, ``decay_steps``), as the official yamls do.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from torchspine.utils import read_json

__all__ = ["TrainConfig", "load_config", "list_recipes", "recipe_path"]

Schedule = Literal["step", "cosine", "constant"]
SyncBN = Literal["auto", "off", "on"]
AmpDtype = Literal["auto", "float16", "bfloat16"]


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults are the demo's small CPU run on the
    built-in dataset; the packaged recipes set the paper's / released values.

    Recipe values (paper section 4.1; tensorflow/tpu models/official/detection/configs/spinenet/*.yaml): SGD momentum 0.9, weight decay
    4e-5 on conv weights only, lr 0.28 at batch 256 scaled linearly with the batch, linear
    warmup from 0.0067 over 2000 steps, step decay x0.1 twice, gradient clipping at norm 10,
    stochastic depth 0.2 with swish (protocol C).
    """

    # model
    model: str = "retinanet_spinenet49s"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. filter_size_scale, spec (path)
    image_size: int = 256
    weights: str | None = None  # fine-tune from a saved model / run folder / catalogue entry (engine/finetune.py)
    freeze_bn: bool = False  # keep the backbone's BatchNorm in inference mode (fine-tuning with small batches)
    # data (None: the built-in synthetic dataset, generated on first use)
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    with_masks: bool | None = None  # None: decided by the model (Mask R-CNN needs masks)
    scale_jitter: tuple[float, float] = (0.5, 2.0)
    hflip_prob: float = 0.5
    skip_bad_annotations: bool = False
    num_workers: int = 0
    # schedule
    batch_size: int = 8  # global batch (all processes together)
    epochs: float = 40.0
    max_steps: int | None = None  # overrides epochs when set
    # Stop (checkpoint + final evaluation) at this step while the schedule still spans the whole run,
    # so a later run with resume=True continues it (the search's successive-halving rungs).
    stop_at_step: int | None = None
    lr: float = 0.28  # learning rate at lr_reference_batch
    lr_reference_batch: int = 256  # lr scales linearly: lr * batch_size / lr_reference_batch
    schedule: Schedule = "step"
    decay_epochs: tuple[float, ...] = ()
    decay_steps: tuple[int, ...] = ()  # overrides decay_epochs when set
    decay_factor: float = 0.1
    warmup_steps: int = 2000
    warmup_init_lr: float = 0.0067  # at lr_reference_batch; scaled like lr
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    # optimizer and regularisation
    momentum: float = 0.9
    weight_decay: float = 4e-5
    grad_clip_norm: float = 10.0  # 0 disables
    stochastic_depth_rate: float | None = None  # None: the model's own setting
    dropblock: bool = False  # paper section 4.1 (protocol A); the released SpineNet code hard-disables it
    dropblock_size: int = 3
    dropblock_keep_prob: float = 0.9
    ema_decay: float = 0.0  # 0 disables the EMA of weights
    sync_bn: SyncBN = "auto"  # auto: SyncBatchNorm on multi-GPU, all-reduce BN on multi-CPU
    amp: bool = True  # CUDA: autocast; CPU: only with amp_dtype "bfloat16" (auto / float16 stay float32 there)
    amp_dtype: AmpDtype = "auto"  # auto: bfloat16 where supported, else float16 with a grad scaler
    channels_last: bool = False  # same math, channels_last layout (docs/benchmarks.md: the measured gain)
    onednn_pointwise: bool = False  # same math, CPU: 1x1 convs through oneDNN (needs channels_last)
    activation_checkpointing: bool = False  # same math, less memory: the backbone's blocks recomputed in backward
    activation_checkpointing_max_level: int | None = None  # only the blocks at this level or finer (None: all)
    # run
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int | None = None  # CPU threads per process (None: torch's default)
    seed: int = 0
    deterministic: bool = False
    output_dir: str = "runs/train"
    resume: bool = False
    checkpoint_interval: int = 100  # steps; 0: only at the end
    eval_interval: int = 0  # steps; 0: only at the end
    eval_max_images: int | None = None
    log_interval: int = 10
    tensorboard: bool = True
    progress: bool = True

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "config") -> "TrainConfig":
        def fail(name: str, msg: str) -> None:
            raise ValueError(f"{source}: field {name!r} {msg} (got {getattr(self, name)!r})")

        if not isinstance(self.model, str) or not self.model:
            fail("model", "must be a registered model name")
        if not isinstance(self.model_overrides, dict):
            fail("model_overrides", "must be an object of model keyword overrides")
        for name in ("image_size", "batch_size", "lr_reference_batch", "log_interval", "dropblock_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "must be a positive integer")
        for name in ("num_workers", "warmup_steps", "checkpoint_interval", "eval_interval", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "must be a non-negative integer")
        for name in ("max_steps", "stop_at_step", "eval_max_images", "num_threads",
                     "activation_checkpointing_max_level"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                fail(name, "must be a positive integer or null")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            fail("epochs", "must be a positive number")
        for name in ("lr", "warmup_init_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                fail(name, "must be a non-negative number")
        if self.lr <= 0:
            fail("lr", "must be positive")
        for name in ("momentum", "decay_factor", "hflip_prob", "min_lr_ratio", "ema_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                fail(name, "must be in [0, 1]")
        if self.ema_decay == 1.0:
            fail("ema_decay", "must be < 1 (0 disables the EMA)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            fail("weight_decay", "must be a non-negative number")
        if not (math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0):
            fail("grad_clip_norm", "must be >= 0 (0 disables clipping)")
        if self.stochastic_depth_rate is not None and not 0.0 <= self.stochastic_depth_rate < 1.0:
            fail("stochastic_depth_rate", "must be in [0, 1) or null")
        if not 0.0 < self.dropblock_keep_prob <= 1.0:
            fail("dropblock_keep_prob", "must be in (0, 1]")
        lo, hi = self.scale_jitter
        if not (0 < lo <= hi):
            fail("scale_jitter", "must be [min, max] with 0 < min <= max")
        if self.schedule not in get_args(Schedule):
            fail("schedule", f"must be one of {get_args(Schedule)}")
        if self.amp_dtype not in get_args(AmpDtype):
            fail("amp_dtype", f"must be one of {get_args(AmpDtype)}")
        if self.sync_bn not in get_args(SyncBN):
            fail("sync_bn", f"must be one of {get_args(SyncBN)}")
        if list(self.decay_epochs) != sorted(self.decay_epochs) or any(e <= 0 for e in self.decay_epochs):
            fail("decay_epochs", "must be increasing positive numbers")
        if list(self.decay_steps) != sorted(self.decay_steps) or any(s <= 0 for s in self.decay_steps):
            fail("decay_steps", "must be increasing positive integers")
        if self.decay_epochs and max(self.decay_epochs) >= self.epochs and self.max_steps is None:
            fail("decay_epochs", f"must all be below epochs={self.epochs}")
        if self.decay_steps and self.max_steps is not None and max(self.decay_steps) >= self.max_steps:
            fail("decay_steps", f"must all be below max_steps={self.max_steps}")
        if self.onednn_pointwise and not self.channels_last:
            fail("onednn_pointwise", "needs channels_last: true (it acts on channels_last activations)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            fail("device", "must be auto, cpu, cuda or cuda:N")
        data = [self.train_ann, self.train_images]
        if any(v is None for v in data) and any(v is not None for v in data):
            fail("train_ann", "and train_images must be given together")
        val = [self.val_ann, self.val_images]
        if any(v is None for v in val) and any(v is not None for v in val):
            fail("val_ann", "and val_images must be given together")
        return self

    # -------------------------------------------------------------- (de)coding
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object of TrainConfig fields")
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key.startswith("_"):
                continue  # comment
            if key not in names:
                import difflib

                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{source}: unknown field {key!r}{hint}")
            kwargs[key] = _coerce(key, value, hints[key], source)
        return cls(**kwargs).validate(source)

    def replace(self, **overrides: Any) -> "TrainConfig":
        merged = {**self.to_dict(), **{k: v for k, v in overrides.items()}}
        return TrainConfig.from_dict(merged, source="overrides")


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check a JSON value against the field's type (int accepted for float; lists to tuples)."""
    def bad(expect: str) -> ValueError:
        return ValueError(f"{source}: field {key!r} must be {expect}, got {value!r}")

    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        if value not in args:
            raise bad(f"one of {args}")
        return value
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
        origin, args = get_origin(hint), get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        elem = args[0]
        if len(args) == 2 and args[1] is not Ellipsis and len(value) != 2:
            raise bad("a list of 2 numbers")
        return tuple(_coerce(key, v, elem, source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("an object")
        return {k: v for k, v in value.items() if not str(k).startswith("_")}
    return value


def recipe_path(name: str) -> Path:
    """A packaged recipe by name (``retinanet_spinenet49_protocol_c``) or any file path."""
    p = Path(name)
    if p.suffix == ".json" and p.exists():
        return p
    packaged = resources.files("torchspine") / "configs" / f"{name.removesuffix('.json')}.json"
    if packaged.is_file():
        return Path(str(packaged))
    raise FileNotFoundError(f"recipe {name!r} is neither a file nor a packaged recipe; "
                            f"packaged: {list_recipes()}")


def list_recipes() -> list[str]:
    root = resources.files("torchspine") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json")) if root.is_dir() else []


def load_config(path: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """Load a recipe file (or packaged recipe name) and apply ``overrides`` (validated)."""
    p = recipe_path(str(path))
    d = read_json(p, what="recipe file")
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a JSON object of TrainConfig fields")
    d.update(overrides)
    try:
        return TrainConfig.from_dict(d, source=str(p))
    except ValueError as e:
        # a bad value given as an override (a command-line flag or --set) is not the recipe's fault
        m = re.match(rf"{re.escape(str(p))}: (?:unknown )?field '(\w+)'", str(e))
        if m and m.group(1) in overrides:
            raise ValueError(f"value given for {m.group(1)!r} (over recipe {p.name})" + str(e)[len(str(p)):]) from None
        raise
