"""Fill a torch state dict from TensorFlow variables, recording every problem instead of failing early.

Layouts: TF conv kernels are HWIO -> ``permute(3, 2, 0, 1)`` (OIHW); depthwise ``[k, k, C, 1]``
-> ``permute(2, 3, 0, 1)``; transposed-conv kernels ``[k, k, out, in]`` -> ``permute(3, 2, 0, 1)``
(torch ``[in, out, k, k]``); dense kernels ``[in, out]`` -> transposed; BN gamma / beta /
moving_mean / moving_variance -> weight / bias / running_mean / running_var.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["Transfer", "Unit", "is_depthwise"]


@dataclass(frozen=True)
class Unit:
    """One TF layer with weights and the torch module(s) it fills.

    ``kind``: ``conv`` (kernel [+ bias]), ``bn``, or ``block`` (a Keras block layer whose
    children are named; ``children`` maps TF child prefixes to ``(torch path, kind)``).
    """

    kind: str
    path: str
    children: tuple[tuple[str, str, str], ...] = ()

    def moved(self, prefix: str) -> "Unit":
        """The same unit with ``prefix`` in front of every torch path (a backbone inside a detector)."""
        return Unit(self.kind, prefix + self.path, tuple((c, prefix + p, k) for c, p, k in self.children))


def is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


@dataclass
class Transfer:
    """TF variables in, torch tensors out; ``missing`` / ``mismatched`` collect the problems."""

    tf_vars: dict[str, np.ndarray]
    expected: dict[str, torch.Size]
    modules: dict[str, nn.Module]
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def take(self, name: str) -> np.ndarray | None:
        """The variable ``name`` (marked used), or ``None`` recorded as missing."""
        if name not in self.tf_vars:
            self.missing.append(name)
            return None
        self.used.add(name)
        return self.tf_vars[name]

    def put(self, key: str, value: np.ndarray | None, src: str, tf_shape: tuple[int, ...] | None = None) -> None:
        """Store ``value`` (already in torch layout) as ``key`` when the shapes agree."""
        if value is None:
            return
        if key not in self.expected:
            self.mismatched.append(f"{src} -> {key}: the model has no such tensor")
            return
        want = tuple(self.expected[key])
        if tuple(value.shape) != want:
            shown = list(tf_shape) if tf_shape is not None else list(value.shape)
            as_torch = f" (torch layout {list(value.shape)})" if tf_shape is not None else ""
            self.mismatched.append(f"{src} {shown}{as_torch} -> {key} expects {list(want)}")
            return
        # float64 checkpoints keep their precision (load_state_dict casts to the model dtype)
        dtype = np.float64 if value.dtype == np.float64 else np.float32
        self.state[key] = torch.from_numpy(np.ascontiguousarray(value).astype(dtype))

    def _kernel(self, key: str, name: str, axes: tuple[int, ...]) -> None:
        k = self.take(name)
        if k is not None:
            self.put(key, k.transpose(axes) if k.ndim == len(axes) else k, name, tuple(k.shape))

    def conv(self, path: str, prefix: str) -> None:
        """``nn.Conv2d`` at ``path`` from ``{prefix}kernel`` (or ``depthwise_kernel``) [+ ``bias``]."""
        mod = self.modules[path]
        if not isinstance(mod, nn.Conv2d):
            raise TypeError(f"converter: {path} is a {type(mod).__name__}, expected a Conv2d")
        if is_depthwise(mod):
            self._kernel(f"{path}.weight", prefix + "depthwise_kernel", (2, 3, 0, 1))
        else:
            self._kernel(f"{path}.weight", prefix + "kernel", (3, 2, 0, 1))
        if mod.bias is not None:
            self.put(f"{path}.bias", self.take(prefix + "bias"), prefix + "bias")

    def pointwise(self, path: str, prefix: str) -> None:
        """The 1x1 half of a TF ``separable_conv2d`` (``pointwise_kernel``, ``bias``)."""
        self._kernel(f"{path}.weight", prefix + "pointwise_kernel", (3, 2, 0, 1))
        self.put(f"{path}.bias", self.take(prefix + "bias"), prefix + "bias")

    def deconv(self, path: str, prefix: str) -> None:
        """``nn.ConvTranspose2d`` from a TF ``conv2d_transpose`` (kernel ``[k, k, out, in]``)."""
        self._kernel(f"{path}.weight", prefix + "kernel", (3, 2, 0, 1))
        self.put(f"{path}.bias", self.take(prefix + "bias"), prefix + "bias")

    def dense(self, path: str, prefix: str, *, rows: np.ndarray | None = None) -> None:
        """``nn.Linear`` from a TF ``dense`` (kernel ``[in, out]``); ``rows`` reorders the inputs."""
        k = self.take(prefix + "kernel")
        if k is not None:
            w = k[rows] if rows is not None and k.shape[0] == rows.size else k
            self.put(f"{path}.weight", w.T, prefix + "kernel", tuple(k.shape))
        self.put(f"{path}.bias", self.take(prefix + "bias"), prefix + "bias")

    def bn(self, path: str, prefix: str) -> None:
        for tf_name, torch_name in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                    ("moving_variance", "running_var")):
            self.put(f"{path}.{torch_name}", self.take(prefix + tf_name), prefix + tf_name)
        if f"{path}.num_batches_tracked" in self.expected:
            self.state[f"{path}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)

    def unit(self, unit: Unit, prefix: str) -> None:
        if unit.kind == "conv":
            self.conv(unit.path, prefix)
        elif unit.kind == "bn":
            self.bn(unit.path, prefix)
        else:
            for child, path, kind in unit.children:
                (self.conv if kind == "conv" else self.bn)(path, f"{prefix}{child}/")
