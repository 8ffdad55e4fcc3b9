"""Building blocks of the scale-permuted network (paper section 3;
tensorflow/tpu models/official/detection/modeling/architecture/nn_blocks.py; He et al. 2016).

* :class:`BottleneckBlock`: 1x1(f) -> BN -> act -> 3x3(f, stride) -> BN -> act -> 1x1(4f) -> BN,
  optional 1x1(4f, stride) + BN projection shortcut, stochastic depth on the branch, then
  ``act(branch + shortcut)``. Output ``4 * filters`` channels.
* :class:`ResidualBlock`: 3x3(f, stride) -> BN -> act -> 3x3(f) -> BN, optional 1x1(f) + BN
  projection, stochastic depth, ``act(sum)``. Output ``filters`` channels.

All convs have no bias. A projection is used unless ``in_channels`` equals the output
channels and the stride is 1 (official ``block_group``).

Block families register themselves in :data:`BLOCK_REGISTRY` so that the backbone builder
stays one class for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from torchspine.layers.conv import ConvNormAct, create_act
from torchspine.layers.dropout import DropPath
from torchspine.specs.spec import NormSpec

__all__ = ["BLOCK_REGISTRY", "BlockFamily", "BottleneckBlock", "ResidualBlock", "register_block"]


def _drop_path(rate: float) -> nn.Module:
    # The official op (nn_ops.drop_connect): a per-sample Bernoulli(keep) mask on the residual
    # branch, scaled by 1/keep during training; DropPath can key its noise by sample.
    return DropPath(rate) if rate > 0 else nn.Identity()


class _ResidualUnit(nn.Module):
    """``act(drop_path(branch(x)) + shortcut(x))``: the shared shape of the bottleneck and
    residual blocks; the shortcut is a 1x1 conv + BN projection when the shape changes."""

    def _init_unit(self, in_channels: int, out_channels: int, *, stride: int, norm: NormSpec, act: str,
                   padding: str, drop_path_rate: float) -> None:
        self.out_channels = out_channels
        self.shortcut = (
            ConvNormAct(in_channels, out_channels, 1, stride=stride, norm=norm, act=None, padding=padding)
            if stride != 1 or in_channels != out_channels
            else None
        )
        self.drop_path = _drop_path(drop_path_rate)
        self.act = create_act(act)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        y = self.drop_path(self.branch(x))
        y += shortcut  # in place: y is a fresh tensor that no backward pass needs
        return self.act(y)


class BottleneckBlock(_ResidualUnit):
    expansion = 4

    def __init__(
        self,
        in_channels: int,
        filters: int,
        *,
        stride: int = 1,
        norm: NormSpec,
        act: str = "relu",
        padding: str = "symmetric",
        drop_path_rate: float = 0.0,
        groups: int = 1,
        width: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = filters * self.expansion
        mid = width if width is not None else filters
        self._init_unit(in_channels, out_channels, stride=stride, norm=norm, act=act, padding=padding,
                        drop_path_rate=drop_path_rate)
        self.conv1 = ConvNormAct(in_channels, mid, 1, norm=norm, act=act, padding=padding)
        self.conv2 = ConvNormAct(mid, mid, 3, stride=stride, groups=groups, norm=norm, act=act, padding=padding)
        self.conv3 = ConvNormAct(mid, out_channels, 1, norm=norm, act=None, padding=padding)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class ResidualBlock(_ResidualUnit):
    expansion = 1

    def __init__(
        self,
        in_channels: int,
        filters: int,
        *,
        stride: int = 1,
        norm: NormSpec,
        act: str = "relu",
        padding: str = "symmetric",
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_unit(in_channels, filters, stride=stride, norm=norm, act=act, padding=padding,
                        drop_path_rate=drop_path_rate)
        self.conv1 = ConvNormAct(in_channels, filters, 3, stride=stride, norm=norm, act=act, padding=padding)
        self.conv2 = ConvNormAct(filters, filters, 3, norm=norm, act=None, padding=padding)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


@dataclass(frozen=True)
class BlockFamily:
    """How the backbone builds a block type.

    Attributes:
        build: ``build(in_channels, filters, *, stride, norm, act, padding, drop_path_rate,
            options) -> nn.Module`` with an ``out_channels`` attribute; ``options`` is the
            spec's ``block_options`` as a dict.
        out_channels: output channels of a block with ``filters`` filters.
        resample_reduce_divisor: the alpha reduction divides the parent's channels by this
            before multiplying by alpha (4 for bottleneck-like parents, official
            ``resample_with_alpha``).
    """

    build: Callable[..., nn.Module]
    out_channels: Callable[[int], int]
    resample_reduce_divisor: int


BLOCK_REGISTRY: dict[str, BlockFamily] = {}


def register_block(name: str, family: BlockFamily, *, code: str | None = None) -> None:
    """Register how to build block type ``name``; with ``code`` (one letter, its genome code)
    specs may name the type too (:func:`torchspine.specs.register_block_type`)."""
    if code is not None:
        from torchspine.specs.spec import register_block_type

        register_block_type(name, code)
    BLOCK_REGISTRY[name] = family


def _build_bottleneck(in_channels: int, filters: int, *, options: dict[str, Any], **kw: Any) -> nn.Module:
    return BottleneckBlock(in_channels, filters, **kw)


def _build_residual(in_channels: int, filters: int, *, options: dict[str, Any], **kw: Any) -> nn.Module:
    return ResidualBlock(in_channels, filters, **kw)


register_block("bottleneck", BlockFamily(_build_bottleneck, lambda f: 4 * f, 4))
register_block("residual", BlockFamily(_build_residual, lambda f: f, 1))

