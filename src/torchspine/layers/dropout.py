"""Stochastic depth and DropBlock, with noise that can be keyed by the sample.

* :class:`DropPath`: stochastic depth (Huang et al. 2016; paper section 4.1, protocol C), the
  official op of tensorflow/tpu models/official/detection/modeling/architecture/nn_ops.py
  ``drop_connect``: a per-sample Bernoulli(keep) mask on the residual branch, scaled by 1/keep.
* :class:`DropBlock`: DropBlock (Ghiasi et al. 2018, the paper's [5]) as the official
  ``nn_ops.Dropblock``: the block size is clipped to the feature map, seeds fall where a whole
  block fits, a stride-1 'SAME' min-pool grows them into blocks, and the kept units are
  rescaled by the fraction kept. Hand-written because torchvision's ``DropBlock2d`` needs an
  odd block size no larger than the map (SpineNet's level-7 map is 1 x 1 at 64 px) and does
  not clip. One deliberate difference: the kept fraction is measured per sample, not over
  the whole batch, so the function does not depend on how a batch is split across processes.
* :func:`add_dropblock`: places DropBlock where the official SpineNet builder does
  (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py passes one
  ``dropblock`` to every block group, stem and scale-permuted; nn_blocks.py applies it after
  every BN of a residual / bottleneck block and to the shortcut, projected or identity), and
  nowhere else (not in the cross-scale resampling, the endpoints or the stem's 7x7 conv).
  The modules have no parameters or buffers: the state dict keeps its keys, so a model
  trained with DropBlock loads into one built without it.

Sample-keyed noise: inside :func:`sample_noise` (the trainer wraps each training forward in
it), both layers draw each sample's noise from a generator seeded by that sample's seed and
the call's position in the forward pass. The masks then depend on the data (seed, epoch,
sample index) only: the same on one process or many, after a resume, and different between
ranks (they see different samples). Outside the context they draw from the global RNG, as
torchvision's ``StochasticDepth`` does.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropBlock", "DropPath", "add_dropblock", "mix_seed", "noise_position", "replay_noise", "sample_noise"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 finaliser over the sequence)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


class _NoiseState(threading.local):
    seeds: list[int] | None = None
    calls: int = 0


_STATE = _NoiseState()


@contextlib.contextmanager
def sample_noise(seeds: Sequence[int] | torch.Tensor | None) -> Iterator[None]:
    """Key the noise of :class:`DropPath` / :class:`DropBlock` by sample (one seed per sample
    of the batch, in batch order). ``None`` leaves the global RNG in charge."""
    previous = (_STATE.seeds, _STATE.calls)
    _STATE.seeds = None if seeds is None else [int(s) for s in (seeds.tolist() if torch.is_tensor(seeds) else seeds)]
    _STATE.calls = 0
    try:
        yield
    finally:
        _STATE.seeds, _STATE.calls = previous


def noise_position() -> tuple[tuple[int, ...] | None, int]:
    """Where the sample-keyed noise stands now: ``(seeds, calls so far)``. Activation
    checkpointing records it before a checkpointed forward and replays from it
    (:func:`replay_noise`), so the recomputation draws the very same masks."""
    return (None if _STATE.seeds is None else tuple(_STATE.seeds)), _STATE.calls


@contextlib.contextmanager
def replay_noise(position: tuple[tuple[int, ...] | None, int]) -> Iterator[None]:
    """Draw sample-keyed noise from ``position`` (a :func:`noise_position`) inside the context,
    and restore the state outside it (the recomputation runs during the backward pass, outside
    the trainer's :func:`sample_noise`)."""
    previous = (_STATE.seeds, _STATE.calls)
    seeds, calls = position
    _STATE.seeds, _STATE.calls = (None if seeds is None else list(seeds)), calls
    try:
        yield
    finally:
        _STATE.seeds, _STATE.calls = previous


def _per_sample_uniform(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor | None:
    """``U[0, 1)`` noise of ``(N, *shape)``, each sample's from its own seeded generator, or
    ``None`` outside :func:`sample_noise` (or when the batch size does not match)."""
    seeds = _STATE.seeds
    if seeds is None:
        return None
    if len(seeds) != like.shape[0]:
        raise ValueError(f"sample_noise: {len(seeds)} sample seeds for a batch of {like.shape[0]}")
    call = _STATE.calls
    _STATE.calls += 1
    gen = torch.Generator(device=like.device)
    out = []
    for s in seeds:
        gen.manual_seed(mix_seed(s, call))
        out.append(torch.rand(tuple(shape), generator=gen, device=like.device, dtype=torch.float32))
    return torch.stack(out)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: ``x * mask / keep`` with one mask per sample
    (torchvision's ``StochasticDepth(p, mode="row")``, whose ``p`` / ``mode`` it also exposes)."""

    mode = "row"

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    @property
    def p(self) -> float:
        return self.rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        noise = _per_sample_uniform((1,) * (x.dim() - 1), x)
        if noise is None:
            noise = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=torch.float32)
        mask = (noise < keep).to(x.dtype)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class DropBlock(nn.Module):
    """DropBlock as the official ``nn_ops.Dropblock`` (see the module docstring)."""

    def __init__(self, block_size: int = 3, keep_prob: float = 0.9) -> None:
        super().__init__()
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"DropBlock: block_size must be a positive integer, got {block_size!r}")
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"DropBlock: keep_prob must be in (0, 1], got {keep_prob}")
        self.block_size, self.keep_prob = block_size, float(keep_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep_prob == 1.0:
            return x
        n, c, h, w = x.shape
        size = min(self.block_size, h, w)
        # Official seed rate (gamma); its valid-region term uses the unclipped size, and is
        # guarded here where that region would be empty.
        valid_h, valid_w = max(h - self.block_size + 1, 1), max(w - self.block_size + 1, 1)
        gamma = (1.0 - self.keep_prob) * (h * w) / size ** 2 / (valid_h * valid_w)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        valid = (((rows >= size // 2) & (rows < h - (size - 1) // 2))[:, None]
                 & ((cols >= size // 2) & (cols < w - (size - 1) // 2))[None, :]).to(torch.float32)
        noise = _per_sample_uniform((c, h, w), x)
        if noise is None:
            noise = torch.rand((n, c, h, w), device=x.device, dtype=torch.float32)
        keep = ((1.0 - valid + (1.0 - gamma) + noise) >= 1.0).to(torch.float32)  # 0 at block seeds
        # Grow each seed into a size x size block: stride-1 min-pool with TF 'SAME' padding
        # (the smaller half before; pads never drop anything).
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        keep = -F.max_pool2d(F.pad(-keep, (before, after, before, after), value=-1.0), size, stride=1)
        kept = keep.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return x * (keep / kept).to(x.dtype)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, keep_prob={self.keep_prob}"


def add_dropblock(model: nn.Module, *, block_size: int = 3, keep_prob: float = 0.9,
                  min_level: int | None = None) -> int:
    """Insert :class:`DropBlock` into the backbone's residual / bottleneck blocks at the
    official places (module docstring); ``min_level`` limits it to block groups at that level
    or deeper (the official ResNet recipes use levels 4-5; the SpineNet builder passes it to
    every group). Returns how many DropBlock modules were added. The state dict is unchanged.
    """
    from torchspine.layers.blocks import BottleneckBlock, ResidualBlock
    from torchspine.layers.conv import ConvNormAct

    backbone = getattr(model, "backbone", model)
    backbone = getattr(backbone, "body", backbone)  # torchvision BackboneWithFPN-style wrappers
    stem, blocks = getattr(backbone, "stem", None), getattr(backbone, "blocks", None)
    if blocks is None:
        raise ValueError(f"add_dropblock: {type(model).__name__} has no SpineNet backbone (no .blocks)")
    groups: list[tuple[int, nn.Module]] = []
    for info, group in zip(getattr(stem, "feature_infos", ()), getattr(stem, "groups", ())):
        groups.append((info.level, group))
    for block in blocks:
        groups.append((block.level, block.group))
    count = 0
    for level, group in groups:
        if min_level is not None and level < min_level:
            continue
        for block in group.modules():
            if not isinstance(block, (BottleneckBlock, ResidualBlock)):
                continue
            for name in ("conv1", "conv2", "conv3"):
                cna = getattr(block, name, None)
                if isinstance(cna, ConvNormAct) and "dropblock" not in cna._modules:
                    cna.add_module("dropblock", DropBlock(block_size, keep_prob))
                    count += 1
            if block.shortcut is None:  # the identity shortcut gets one too (nn_blocks.py)
                block.shortcut = DropBlock(block_size, keep_prob)
                count += 1
            elif isinstance(block.shortcut, ConvNormAct) and "dropblock" not in block.shortcut._modules:
                block.shortcut.add_module("dropblock", DropBlock(block_size, keep_prob))
                count += 1
    return count
