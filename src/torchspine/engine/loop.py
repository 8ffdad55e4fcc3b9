"""The one training loop, shared by detection and classification, in detectron2's shape.

:class:`TrainerBase` runs ``before_train``, then ``before_step`` / :meth:`run_step` /
``after_step`` until ``max_iter``, then ``after_train``; everything else is a hook
(:class:`HookBase`): checkpoints, evaluation, logging and progress. :class:`Trainer` is its
SGD step with everything the recipes use: DDP, AMP (fp16 with a grad scaler, or bf16),
gradient clipping, an EMA of the weights, a per-step learning-rate schedule, and a
non-finite-loss stop (:class:`NonFiniteLossError`).

Reproducibility and exact resume: the data order comes from :class:`ResumableBatchSampler`
(a permutation per epoch seeded by ``(seed, epoch)``, the global batch split across ranks,
started at any step); each sample's augmentation and its stochastic-depth / DropBlock noise
are keyed by ``(seed, epoch, index)`` (:class:`SeededSamples`,
:func:`torchspine.layers.dropout.sample_noise`), so they depend neither on worker processes
nor on the global RNG. What remains on the global RNGs (Python, NumPy, torch CPU and CUDA:
e.g. the Mask R-CNN samplers) is saved per rank in the checkpoint and restored.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from torchspine.engine.distributed import is_distributed
from torchspine.layers.dropout import mix_seed, sample_noise

__all__ = ["HookBase", "NonFiniteLossError", "ResumableBatchSampler", "SeededSamples", "Trainer", "TrainerBase",
           "epoch_batches", "make_loader", "rank_seed", "sample_seed", "seed_everything"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; ``step`` is the 1-based step that produced it."""

    def __init__(self, step: int, value: float, checkpoint: Path | None) -> None:
        where = f"; last good checkpoint kept at {checkpoint}" if checkpoint and Path(checkpoint).exists() else \
            "; no checkpoint had been written yet"
        super().__init__(f"non-finite loss {value} at step {step}, training stopped{where}")
        self.step, self.value, self.checkpoint = step, value, checkpoint


# ------------------------------------------------------------------------------ seeding
def rank_seed(seed: int, rank: int) -> int:
    """The global-RNG seed of one rank: ``seed`` on rank 0 (so one process is seeded as
    before), a different reproducible seed on every other rank."""
    return int(seed) if rank == 0 else mix_seed(seed, rank) % (2 ** 32)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation and noise: a function of the data position only."""
    return mix_seed(seed, epoch, index)


def epoch_batches(num_samples: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """The global batches of one epoch: a permutation seeded by ``(seed, epoch)`` cut into full batches."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_samples, generator=g).tolist()
    else:
        order = list(range(num_samples))
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(num_samples // batch_size)]


class ResumableBatchSampler(torch.utils.data.Sampler):
    """This rank's share of the global batches, epoch after epoch, from ``start_step`` on.

    Yields lists of ``(epoch, index)`` keys (for :class:`SeededSamples`). Endless: the loop
    takes as many batches as it runs steps. Global batch ``k`` of an epoch is the same
    whatever the number of processes, and a resumed run continues at the very next batch.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, shuffle: bool = True) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
        if num_samples < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the training set ({num_samples} images)")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.start_step, self.shuffle = rank, world_size, start_step, shuffle
        self.local_batch = batch_size // world_size
        self.steps_per_epoch = num_samples // batch_size

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch within the epoch)`` of global step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        cached: tuple[int, list[list[int]]] | None = None
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        while True:
            epoch, k = self.position(step)
            if cached is None or cached[0] != epoch:
                cached = (epoch, epoch_batches(self.num_samples, self.batch_size, seed=self.seed, epoch=epoch,
                                               shuffle=self.shuffle))
            yield [(epoch, i) for i in cached[1][k][lo:hi]]
            step += 1


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[index]`` at key ``(epoch, index)``, returned as ``(sample, sample_seed)``.

    A dataset with ``set_epoch`` seeds its own augmentation from (seed, epoch, index) (the
    detection data); any other dataset (torchvision transforms draw from the global RNGs) runs
    with the Python, NumPy and torch CPU RNGs seeded by the sample seed and restored afterwards,
    so augmentation does not depend on worker processes or on what ran before. A ``None``
    sample (an unreadable image) stays ``None``.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int] | None:
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
            item = self.dataset[index]
        else:
            py, npy = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=[]):
                seed_everything(s % (2 ** 63))
                try:
                    item = self.dataset[index]
                finally:
                    random.setstate(py)
                    np.random.set_state(npy)
        return None if item is None else (item, s)


def _collate_seeded(batch: list, collate: Callable[[list], Any]) -> tuple[Any, torch.Tensor, int]:
    kept = [b for b in batch if b is not None]
    return collate([b[0] for b in kept]), torch.tensor([b[1] for b in kept], dtype=torch.int64), len(kept)


def _worker_init(worker_id: int, seed: int, rank: int) -> None:
    # Global RNGs of a worker: reproducible and different per rank and worker. The samples
    # themselves do not depend on them (SeededSamples), but user transforms might.
    seed_everything(mix_seed(seed, rank, worker_id, 0x5EED) % (2 ** 32))


def make_loader(dataset: Any, sampler: ResumableBatchSampler, *, collate: Callable[[list], Any], seed: int,
                num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader that yields ``(batch, sample_seeds, num_samples)`` and never draws from the
    global RNG (its own generator; seeded workers), so building it cannot shift any RNG stream."""
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, sampler.rank, 0xDA7A) % (2 ** 63))
    return torch.utils.data.DataLoader(
        SeededSamples(dataset, seed), batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        collate_fn=functools.partial(_collate_seeded, collate=collate), generator=g,
        worker_init_fn=functools.partial(_worker_init, seed=seed, rank=sampler.rank))


# ------------------------------------------------------------------------------ the loop
class HookBase:
    """Called by :class:`TrainerBase` around training and steps; ``self.trainer`` is set on
    registration. ``state_dict`` / ``load_state_dict`` go into / come from the checkpoint."""

    trainer: "TrainerBase"
    name: str = ""

    def before_train(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def after_train(self) -> None: ...

    def close(self) -> None:
        """Always called, also when training stops with an error."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainerBase:
    """``iter`` counts completed steps; hooks see it after each step (1-based then)."""

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter = self.start_iter = self.max_iter = 0

    def register_hooks(self, hooks: Sequence[HookBase | None]) -> None:
        for h in hooks:
            if h is not None:
                h.trainer = self
                self._hooks.append(h)

    def hook(self, name: str) -> HookBase | None:
        return next((h for h in self._hooks if h.name == name), None)

    def train(self, start_iter: int, max_iter: int) -> None:
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        try:
            for h in self._hooks:
                h.before_train()
            while self.iter < max_iter:
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                self.iter += 1
                for h in self._hooks:
                    h.after_step()
            for h in self._hooks:
                h.after_train()
        finally:
            for h in self._hooks:
                h.close()

    def run_step(self) -> None:
        raise NotImplementedError

    def hook_states(self) -> dict[str, Any]:
        return {h.name: h.state_dict() for h in self._hooks if h.name}

    def load_hook_states(self, states: dict[str, Any]) -> None:
        for h in self._hooks:
            if h.name and h.name in states:
                h.load_state_dict(states[h.name])


def _to_channels_last(batch: Any) -> Any:
    """``batch`` with every 4-D tensor in channels_last (lists, tuples and dicts walked)."""
    if torch.is_tensor(batch):
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch
    if isinstance(batch, dict):
        return {k: _to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(_to_channels_last(v) for v in batch)
    return batch


class Trainer(TrainerBase):
    """One SGD step per call of :meth:`run_step`.

    Args:
        model: the module to call (DDP-wrapped when distributed).
        loss_fn: ``loss_fn(model, batch) -> loss tensor or dict of loss tensors``.
        data: an iterable of ``(batch, sample_seeds, num_samples)`` (:func:`make_loader`).
        optimizer, scheduler: stepped once per step (the scheduler also on a skipped step).
        device: where the step runs.
        amp_dtype: ``torch.float16`` (with ``scaler``), ``torch.bfloat16`` or ``None`` (off).
        ema: an ``AveragedModel`` updated after every optimizer step.
        checkpoint_path: named by :class:`NonFiniteLossError`.
        channels_last: move the batch's 4-D tensors to channels_last before the forward (the
            model's weights are converted by :func:`torchspine.engine.fit.fit`; a detector's
            list of 3-D images is batched inside the model, where the channels_last weights
            of the first convolution carry the layout on).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any], data: Any,
                 optimizer: torch.optim.Optimizer, *, scheduler: Any, device: torch.device,
                 amp_dtype: torch.dtype | None = None, scaler: Any = None, grad_clip_norm: float = 0.0,
                 ema: nn.Module | None = None, checkpoint_path: Path | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.model, self.loss_fn, self.data, self.optimizer = model, loss_fn, data, optimizer
        self.scheduler, self.device, self.amp_dtype, self.ema = scheduler, device, amp_dtype, ema
        self.scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
        self.grad_clip_norm = grad_clip_norm
        self.checkpoint_path = checkpoint_path
        self.channels_last = channels_last
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.last: dict[str, float] = {}
        self._iterator: Iterator | None = None

    @property
    def unwrapped(self) -> nn.Module:
        m = self.model
        return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m

    def run_step(self) -> None:
        if self._iterator is None:
            self._iterator = iter(self.data)
        t0 = time.perf_counter()
        batch, seeds, n_local = next(self._iterator)
        smallest = n_local
        if is_distributed():
            # One tiny collective every step, on the step's device (NCCL has no CPU backend):
            # every rank learns the smallest local batch, so all of them take the same path.
            mins = torch.tensor([float(n_local)], dtype=torch.float32, device=self.device)
            dist.all_reduce(mins, op=dist.ReduceOp.MIN)
            smallest = int(mins[0])
        total = n_local * (dist.get_world_size() if is_distributed() else 1)
        lr = self.optimizer.param_groups[0]["lr"]
        if smallest == 0:
            # Some rank has no readable image in its share: every rank skips the update
            # together (no rank may leave the collectives of the forward and backward).
            logger.warning("step %d: a process has no readable image in its batch; update skipped on all "
                           "processes", self.iter + 1)
            self.scheduler.step()
            self.last = {"loss": float("nan"), "lr": lr, "images": total, "skipped": 1.0,
                         "seconds": time.perf_counter() - t0}
            return
        self.model.train()
        if self.channels_last:
            batch = _to_channels_last(batch)
        with sample_noise(seeds), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                 enabled=self.amp_dtype is not None):
            losses = self.loss_fn(self.model, batch)
        loss = sum(losses.values()) if isinstance(losses, dict) else losses
        value = loss.detach().float()
        if is_distributed():
            value = value.clone()
            dist.all_reduce(value)
            value /= dist.get_world_size()
        step_loss = float(value)
        if not math.isfinite(step_loss):
            raise NonFiniteLossError(self.iter + 1, step_loss, self.checkpoint_path)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.unwrapped)
        self.last = {"loss": step_loss, "lr": lr, "images": total, "skipped": 0.0,
                     "seconds": time.perf_counter() - t0}
