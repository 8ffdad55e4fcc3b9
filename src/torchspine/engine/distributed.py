"""Process-group setup for ``torchrun`` and batch norm across processes.

``torchrun --nproc_per_node=N -m torchspine train ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK``; :func:`init_distributed` joins the group with gloo on CPU and nccl on GPU.

The recipe uses synchronized BN (paper section 4.1; ``use_sync_bn`` in the official configs). PyTorch's
``nn.SyncBatchNorm`` only runs on CUDA, so on multi-process CPU runs
:class:`AllReduceBatchNorm2d` (hand-written: no CPU counterpart exists in torch) computes the
batch statistics over all processes with a differentiable all-reduce. With it, N processes
with the same global batch compute the same function as one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "AllReduceBatchNorm2d", "convert_batchnorm",
           "globalize_loss_normalizer", "is_distributed", "wrap_for_training"]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """A process group of two or more processes is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        logger.info("process group: rank %d/%d, backend %s", rank, world, backend)
    return DistInfo(rank, world, local)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients (hand-written:
    torch.distributed.nn.functional.all_reduce is deprecated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(x)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's batch (CPU / gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        # Two passes (mean, then centred squares) rather than E[x^2] - E[x]^2, which loses
        # precision when |mean| >> std; both sums are all-reduced with autograd-aware ops.
        c = x.shape[1]
        n_local = x.shape[0] * x.shape[2] * x.shape[3]
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), x.new_full((1,), float(n_local))]))
        count = stats[c]
        mean = stats[:c] / count
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum((0, 2, 3))) / count  # biased, used to normalise
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        y = centred * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(model: nn.Module, *, device: torch.device, world_size: int, mode: str = "auto") -> nn.Module:
    """Cross-process BN when distributed: ``nn.SyncBatchNorm`` on CUDA, the all-reduce BN on
    CPU; untouched for one process (so it can never break a single-process run)."""
    if mode == "off" or world_size <= 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_bn(model)


def wrap_for_training(model: nn.Module, *, device: torch.device, info: DistInfo, sync_bn: str = "auto",
                      channels_last: bool = False) -> tuple[nn.Module, nn.Module]:
    """``(model, train_model)``: the model with cross-process BN (:func:`convert_batchnorm`) on
    ``device`` (in channels_last when asked: before DDP, which registers the parameters' layout),
    and the module to train: ``DistributedDataParallel`` around it when distributed, else the
    model itself."""
    model = convert_batchnorm(model, device=device, world_size=info.world_size, mode=sync_bn).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, train_model


def _swap_bn(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = AllReduceBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                                   affine=module.affine, track_running_stats=module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, _swap_bn(child))
    return module


def globalize_loss_normalizer(model: nn.Module) -> bool:
    """Make a RetinaNet head normalise its losses by the positives of the *global* batch.

    The official loss divides by the number of positive anchors + 1 of each replica's batch
    (tensorflow/tpu models/official/detection/modeling/losses.py), so N processes would not compute the same function as one process
    with the same global batch. Wrapping ``head.compute_loss`` (an instance attribute; the
    model's code is unchanged) rescales each process's loss by
    ``world * (local_pos + 1) / (global_pos + 1)``: after DDP's gradient average, that is the
    gradient of the single-process loss. Returns whether a head was wrapped.
    """
    head = getattr(model, "head", None)
    original = getattr(head, "compute_loss", None)
    if original is None or not is_distributed():
        return False
    world = dist.get_world_size()

    def compute_loss(targets, head_outputs, anchors, matched_idxs):  # noqa: ANN001, ANN202 - torchvision signature
        losses = original(targets, head_outputs, anchors, matched_idxs)
        # The count lives on the loss's device: NCCL has no CPU backend ("No backend type
        # associated with device type cpu"); it stays a tensor (no host sync).
        device = next(iter(losses.values())).device
        local = torch.zeros((), dtype=torch.float32, device=device)
        for m in matched_idxs:
            local = local + (m >= 0).sum().to(device=device, dtype=torch.float32)
        total = local.clone()
        dist.all_reduce(total)
        scale = world * (local + 1.0) / (total + 1.0)
        return {k: v * scale.to(v.dtype) for k, v in losses.items()}

    head.compute_loss = compute_loss
    return True
