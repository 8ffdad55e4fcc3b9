"""Winograd minimal filtering for 3x3 stride-1 convolutions (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016), for CPU inference.

``F(m x m, 3 x 3)`` computes each ``m x m`` output tile from an ``(m+2) x (m+2)`` input tile
with ``(m+2)**2`` multiplications per (input, output) channel pair instead of ``9 m**2``: 2.25x
fewer multiply-adds for ``m = 2``, 4x for ``m = 4``. The same function in real arithmetic; in
float32 the transforms add rounding (max error relative to the largest output of a 256->256
conv: 6e-7 for ``m = 2``, 1e-5 for ``m = 4``, 2e-6 for the direct conv; a whole SpineNet-49
stays at 1e-6, see the tests).

Three steps, written so that ``torch.compile`` (Inductor) turns each transform into one fused
loop and oneDNN runs the products:

1. input transform ``V = B^T d B`` of every tile, as sums of strided slices of the padded input
   (constant coefficients), laid out as ``(N, (m+2)**2 * C, tiles_h, tiles_w)`` channels_last;
2. ``(m+2)**2`` independent ``C -> C_out`` products, one grouped 1x1 conv
   (``groups=(m+2)**2``): oneDNN's 1x1 kernels (GEMMs over the tiles; PyTorch's ``bmm`` runs
   at less than half their speed on this class of CPU, measured in docs/benchmarks.md);
3. output transform ``Y = A^T M A`` plus the bias, interleaved back into ``m x m`` tiles and
   cropped.

The filter transform ``U = G g G^T`` is done once, in float64, when the module is built. Hand
written because neither PyTorch nor oneDNN (v3) exposes a Winograd convolution on CPU (NNPACK's,
``torch._nnpack_spatial_convolution``, transforms the filters at every call and needs NCHW).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WinogradConv2d", "winograd_eligible"]

# F(2x2, 3x3) and F(4x4, 3x3): Lavin & Gray 2016, section 4.1 / 4.2 (interpolation points
# 0, 1, -1 and 0, 1, -1, 2, -2, plus infinity).
_TRANSFORMS: dict[int, tuple[list[list[float]], list[list[float]], list[list[float]]]] = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],  # B^T
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],  # G
        [[1, 1, 1, 0], [0, 1, -1, -1]],  # A^T
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def winograd_eligible(conv: nn.Module) -> bool:
    """A plain 3x3 conv, stride 1, zero padding 1, no dilation or groups (Winograd's case)."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and not conv.weight.is_meta)


def _combine(coeffs: list[float], terms: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i coeffs[i] * terms[i]`` over the non-zero coefficients (no multiply for +-1)."""
    out = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        term = t if c == 1 else (-t if c == -1 else t * c)
        out = term if out is None else (out - t if c == -1 else out + (t if c == 1 else t * c))
    assert out is not None
    return out


def _stack_tiles(parts: list[torch.Tensor], out: bool = False):
    """Stack same-shaped (N, C, th, tw) tensors as one (N, th, tw, len(parts), C) tensor; return
    views of the parts (``out=False``) or the stack as an (N, len(parts) * C, th, tw)
    channels_last tensor (``out=True``)."""
    n, c, th, tw = parts[0].shape
    stacked = torch.stack([p.permute(0, 2, 3, 1) for p in parts], dim=3)
    if out:
        return stacked.reshape(n, th, tw, len(parts) * c).permute(0, 3, 1, 2)
    return [stacked[:, :, :, k].permute(0, 3, 1, 2) for k in range(len(parts))]


class WinogradConv2d(nn.Module):
    """The function of a 3x3 stride-1 ``nn.Conv2d`` (padding 1) computed by ``F(m x m, 3 x 3)``.

    Built from an existing conv (kept for small inputs; its weights are transformed for the
    products). Any input size: the input is padded up to whole tiles and the output cropped;
    inputs of fewer than ``min_tiles`` tiles run the direct conv (a 256->256 conv at 10x10, nine
    4x4 tiles, ran 2x slower by Winograd: fixed costs of the transforms). Meant for inference
    (``torch.no_grad``), fastest under ``torch.compile`` with channels_last inputs.
    """

    def __init__(self, conv: nn.Conv2d, m: int = 4, min_tiles: int = 16) -> None:
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"WinogradConv2d: needs a 3x3 stride-1 padding-1 nn.Conv2d, got {conv}")
        if conv.weight.dtype not in (torch.float32, torch.float64):
            # bfloat16 intermediates (8-bit significand) times the transforms' coefficients (up to
            # 5 and 8): a 16->16 conv came out 14% off (max error / max output).
            raise ValueError(f"WinogradConv2d: the conv's weights are {conv.weight.dtype}; Winograd needs "
                             "float32 or float64 (in bfloat16 it loses ~14% accuracy)")
        if m not in _TRANSFORMS:
            raise ValueError(f"WinogradConv2d: tile size m={m}; expected one of {sorted(_TRANSFORMS)}")
        bt, g, at = _TRANSFORMS[m]
        self.m, self.alpha, self.min_tiles = m, m + 2, min_tiles
        self.conv = conv  # the direct conv, for inputs of fewer than ``min_tiles`` tiles
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self._bt, self._at = bt, at
        w = conv.weight.detach().double()  # (Cout, Cin, 3, 3)
        gm = torch.tensor(g, dtype=torch.float64)
        u = torch.einsum("ak,ockl,bl->aboc", gm, w, gm)  # (alpha, alpha, Cout, Cin)
        a2 = self.alpha * self.alpha
        weight = u.reshape(a2 * conv.out_channels, conv.in_channels, 1, 1).to(conv.weight.dtype)
        self.products = nn.Conv2d(a2 * conv.in_channels, a2 * conv.out_channels, 1, groups=a2, bias=False)
        self.products.requires_grad_(False)
        with torch.no_grad():
            self.products.weight.copy_(weight)
        self.products.to(device=conv.weight.device, dtype=conv.weight.dtype)
        self.products.to(memory_format=torch.channels_last)
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        m, alpha = self.m, self.alpha
        th, tw = (h + m - 1) // m, (w + m - 1) // m
        if th * tw < self.min_tiles:  # a static shape under torch.compile: decided when tracing
            return self.conv(x)
        xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h))
        # d[a][b]: element (a, b) of every tile, (N, C, th, tw)
        d = [[xp[:, :, a:a + m * th:m, b:b + m * tw:m] for b in range(alpha)] for a in range(alpha)]
        # B^T d, then (B^T d) B. Each step is stacked into one (N, th, tw, alpha**2, C) tensor:
        # Inductor stores a stack of more than 8 tensors (``max_pointwise_cat_inputs``) instead of
        # recomputing its terms in every consumer, and channels stay the contiguous dimension.
        rows = _stack_tiles([_combine(self._bt[i], [d[a][b] for a in range(alpha)])
                             for i in range(alpha) for b in range(alpha)])
        v = _stack_tiles([_combine(self._bt[j], [rows[i * alpha + b] for b in range(alpha)])
                          for i in range(alpha) for j in range(alpha)], out=True)
        prod = self.products(v)  # (N, alpha**2 * Cout, th, tw), channels_last
        mm = [[prod[:, (i * alpha + j) * self.out_channels:(i * alpha + j + 1) * self.out_channels]
               for j in range(alpha)] for i in range(alpha)]
        cols = _stack_tiles([_combine(self._at[p], [mm[i][j] for i in range(alpha)])
                             for p in range(m) for j in range(alpha)])
        cols = [[cols[p * alpha + j] for j in range(alpha)] for p in range(m)]
        y = torch.stack([torch.stack([_combine(self._at[q], cols[p]) for q in range(m)], dim=-1) for p in range(m)],
                        dim=3)  # (N, Cout, th, m, tw, m)
        y = y.reshape(n, self.out_channels, th * m, tw * m)[:, :, :h, :w]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last)


def winograd_convs_(model: nn.Module, *, min_channels: int = 128, m: int = 4, min_tiles: int = 16) -> int:
    """Replace, in place, every eligible 3x3 conv (:func:`winograd_eligible`) with at least
    ``min_channels`` input and output channels by a :class:`WinogradConv2d`; returns the count.

    The channel floor: with fewer channels the products are too thin for the transforms to pay
    (compiled, one thread: a 64->64 conv at 160x160 ran 1.13x slower by ``F(4x4, 3x3)``,
    128->128 at 80x80 1.7x faster, 256->256 at 40x40 2.1x faster; see docs/benchmarks.md).
    """
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, WinogradConv2d):
            continue
        for name, child in list(parent.named_children()):
            if (winograd_eligible(child) and child.in_channels >= min_channels
                    and child.out_channels >= min_channels):
                setattr(parent, name, WinogradConv2d(child, m, min_tiles))
                count += 1
    return count
