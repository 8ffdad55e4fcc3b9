"""Conv + BN + activation, with both official padding conventions.

* ``"symmetric"`` (tensorflow/tpu ``fixed_padding``): a k x k conv pads ``(k-1)//2`` before
  and ``k-1-(k-1)//2`` after, which is PyTorch's ``padding=k//2`` for odd k, at any stride.
* ``"same"`` (Keras / TF ``padding='SAME'``): total pad ``max((ceil(H/s)-1)*s + k - H, 0)``,
  the smaller half before. For stride 1 and odd k this is symmetric too; for stride 2 it
  depends on the input size (for even H a 3x3/2 conv pads (0, 1); the 7x7/2 stem (2, 3)).

Max pools are TF 'SAME' in both codebases (padding with -inf), see :class:`MaxPool2dSame`.
Hand-written because PyTorch's ``padding="same"`` is stride-1 only and its pools pad
symmetrically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from torchspine.specs.spec import NormSpec

__all__ = [
    "ConvNormAct",
    "Conv2dSame",
    "MaxPool2dSame",
    "SeparableConv2d",
    "create_act",
    "create_conv",
    "create_norm",
    "init_conv_",
    "OneDNNPointwiseConv2d",
    "same_pad_amounts",
    "set_onednn_pointwise",
]


def create_act(name: str, inplace: bool = True) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "swish":
        return nn.SiLU(inplace=inplace)
    if name == "hard_swish":
        return nn.Hardswish(inplace=inplace)
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected relu, swish, hard_swish")


def create_norm(channels: int, norm: NormSpec) -> nn.BatchNorm2d:
    """BatchNorm2d with TF-convention settings (PyTorch momentum = 1 - TF momentum)."""
    return nn.BatchNorm2d(channels, eps=norm.epsilon, momentum=1.0 - norm.momentum)


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _static_hw(x: torch.Tensor) -> tuple[int, int]:
    """Spatial size; plain ints under the TorchScript tracer (the legacy ONNX exporter needs
    constant pads, so a traced export is fixed to the traced size; torch.export keeps SymInts)."""
    if torch.jit.is_tracing():
        return int(x.shape[-2]), int(x.shape[-1])
    return x.shape[-2], x.shape[-1]


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' padding computed from the input size at run time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = _static_hw(x)
        ph = same_pad_amounts(height, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same_pad_amounts(width, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph[0] == ph[1] and pw[0] == pw[1]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph[0], pw[0]), self.dilation, self.groups)
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MaxPool2dSame(nn.Module):
    """Max pool with TF 'SAME' padding (pads with -inf, so padding never wins)."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = _static_hw(x)
        ph = same_pad_amounts(height, self.kernel_size, self.stride)
        pw = same_pad_amounts(width, self.kernel_size, self.stride)
        if ph[1] - ph[0] <= 1 and pw[1] - pw[0] <= 1:
            # No copy: PyTorch pads max pools with -inf implicitly; 'SAME' puts at most one
            # more row/column after than before, which is the partial last window that
            # ``ceil_mode=True`` adds (out = ceil(H / stride) either way; tests check this
            # against the explicit F.pad version for every size).
            return F.max_pool2d(x, self.kernel_size, self.stride, (ph[0], pw[0]), ceil_mode=True)
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


def create_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
    padding: str = "symmetric",
) -> nn.Conv2d:
    """A conv with the padding convention of the official codebase named by ``padding``."""
    if padding == "same" and stride > 1:
        return Conv2dSame(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)
    if padding not in ("same", "symmetric"):
        raise ValueError(f"unknown padding {padding!r}; expected 'symmetric' or 'same'")
    # Stride 1 (both) or symmetric fixed padding: (k-1)//2 on both sides for odd k.
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                     groups=groups, bias=bias)


def init_conv_(conv: nn.Conv2d) -> None:
    """The official kernel init: variance scaling (scale 1, fan_in, truncated normal).

    TF's truncated normal is cut at two standard deviations and rescaled by 0.87962566 so
    that the truncated distribution has the requested variance 1 / fan_in.
    """
    fan_in = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(conv.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> BN -> activation (``act=None`` for no activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
        norm: NormSpec,
        act: str | None = "relu",
        padding: str = "symmetric",
    ) -> None:
        layers: dict[str, nn.Module] = {
            "conv": create_conv(in_channels, out_channels, kernel_size, stride=stride, groups=groups, padding=padding),
            "bn": create_norm(out_channels, norm),
        }
        if act is not None:
            layers["act"] = create_act(act)
        super().__init__(*[])
        for name, mod in layers.items():
            self.add_module(name, mod)


class SeparableConv2d(nn.Sequential):
    """TF ``separable_conv2d`` with depth multiplier 1: a depthwise kxk conv without bias, then
    a pointwise 1x1 conv with bias; Glorot-uniform weights and zero bias (the Keras defaults
    that the official separable heads keep, tensorflow/tpu
    models/official/detection/modeling/architecture/heads.py ``use_separable_conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        # PyTorch's depthwise (C, 1, k, k) and TF's (k, k, C, 1) have the same fan_in + fan_out.
        nn.init.xavier_uniform_(self.depthwise.weight)
        nn.init.xavier_uniform_(self.pointwise.weight)
        nn.init.zeros_(self.pointwise.bias)


class OneDNNPointwiseConv2d(nn.Conv2d):
    """A 1x1 stride-1 ``nn.Conv2d`` that gives small CPU batches to oneDNN: same weights,
    same state dict, same convolution.

    PyTorch runs a float32 1x1 stride-1 convolution on a batch under 16 with one thread through
    its own GEMM path (``_slow_conv2d_forward`` / ``_slow_conv2d_backward``; the choice is
    ``use_mkldnn`` in aten/src/ATen/native/Convolution.cpp), which on the CPU measured in
    docs/benchmarks.md runs at 40-105 GFLOP/s where oneDNN reaches about 220. A pointwise
    convolution treats every pixel alike, so this layer convolves a channels_last ``(N, C, H, W)``
    input as the ``(N*H, C, 1, W)`` batch of its image rows (a view: no copy in or out), which
    PyTorch hands to oneDNN for the forward and both gradients. Every output is the same sum
    over the same input channels; only the order of the float32 additions inside oneDNN
    differs. Other inputs (NCHW, CUDA, several intra-op threads or batches of 16 and more, which
    PyTorch already gives to oneDNN, fewer than 16 rows) take the plain ``nn.Conv2d`` path.
    :func:`set_onednn_pointwise` switches a model's eligible convolutions (a class swap, undone
    by ``enabled=False``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _rows_eligible(x):
            return super().forward(x)
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n * h, c, 1, w)  # channels_last memory: a view
        y = F.conv2d(rows, self.weight, self.bias)
        return y.reshape(n, h, y.shape[1], w).permute(0, 2, 1, 3)  # channels_last again, a view


def _rows_eligible(x: torch.Tensor) -> bool:
    """PyTorch would take its GEMM path (one thread, batch under 16), and the rows are a view.
    Eager only: traced, scripted and compiled graphs keep the plain convolution."""
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and x.layout == torch.strided
            and x.shape[0] < 16 <= x.shape[0] * x.shape[2] and torch.get_num_threads() == 1
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.jit.is_scripting() and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


def _is_pointwise(m: nn.Module) -> bool:
    return (type(m) in (nn.Conv2d, OneDNNPointwiseConv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding in ((0, 0), "valid") and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros")


def set_onednn_pointwise(model: nn.Module, enabled: bool = True) -> int:
    """Turn every plain 1x1 stride-1 ungrouped ``nn.Conv2d`` in ``model`` into an
    :class:`OneDNNPointwiseConv2d` (``enabled=False``: back to ``nn.Conv2d``); returns how
    many were switched. Parameters, buffers, hooks and state-dict keys are untouched; the
    layer takes effect on channels_last float32 CPU activations (see its docstring)."""
    count = 0
    target = OneDNNPointwiseConv2d if enabled else nn.Conv2d
    for m in model.modules():
        if _is_pointwise(m) and type(m) is not target:
            m.__class__ = target
            count += 1
    return count
