"""The SpineNet backbone, built only from a :class:`~torchspine.specs.SpineNetSpec`.

Follows paper section 3 and the official graph builder (tensorflow/tpu
models/official/detection/modeling/architecture/spinenet.py):
stem -> scale-permuted blocks (each: resample the parents (two; one in the graph-damage
ablations), add zero-out-degree extras for output blocks, ``act(sum)``, a group of
``block_repeats`` blocks) -> endpoints (1x1 conv, BN, act) for levels ``min_level..max_level``.

The forward pass returns ``{"p3": ..., "p7": ...}``. Any input size works: the level-``l``
map has size ``ceil(H / 2**l) x ceil(W / 2**l)``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchspine.layers.blocks import BLOCK_REGISTRY
from torchspine.layers.conv import ConvNormAct, MaxPool2dSame, create_act, init_conv_
from torchspine.layers.dropout import noise_position, replay_noise
from torchspine.layers.resample import ResampleWithAlpha, level_size
from torchspine.specs.spec import SpineNetSpec

__all__ = ["FeatureInfo", "SpineNet", "Stem", "STEM_BUILDERS", "RESAMPLE_BUILDERS", "find_backbone", "named_backbone",
           "register_resample", "register_stem", "set_activation_checkpointing", "zero_outdegree_extras"]


@dataclass(frozen=True)
class FeatureInfo:
    """Static description of one entry of the running ``feats`` list."""

    level: int
    channels: int
    block_type: str


def _block_group(spec: SpineNetSpec, block_type: str, in_channels: int, filters: int, *,
                 stride: int, drop_path_rate: float) -> nn.Sequential:
    """``block_repeats`` blocks in sequence; the first may stride/project, all share the rate."""
    family = BLOCK_REGISTRY[block_type]
    options = dict(spec.block_options)
    blocks = []
    for r in range(spec.scaling.block_repeats):
        block = family.build(
            in_channels if r == 0 else family.out_channels(filters),
            filters,
            stride=stride if r == 0 else 1,
            norm=spec.norm,
            act=spec.activation,
            padding=spec.padding,
            drop_path_rate=drop_path_rate,
            options=options,
        )
        blocks.append(block)
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    """Base of the stems: an entry (conv, maybe a pool) then the stem block groups, each of which
    strides up to its level; every group's output is a candidate parent (``feats``)."""

    def _build_groups(self, spec: SpineNetSpec, channels: int, level: int) -> None:
        st = spec.stem
        family = BLOCK_REGISTRY[st.block_type]
        self.groups = nn.ModuleList()
        infos = []
        for lvl in st.block_levels:
            filters = spec.filters(lvl)
            self.groups.append(_block_group(spec, st.block_type, channels, filters,
                                            stride=2 ** (lvl - level), drop_path_rate=0.0))
            channels, level = family.out_channels(filters), lvl
            infos.append(FeatureInfo(lvl, channels, st.block_type))
        self.feature_infos = tuple(infos)

    def entry(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.entry(x)
        feats = []
        for group in self.groups:
            x = group(x)
            feats.append(x)
        return feats


class ResNetStem(Stem):
    """7x7/2 conv (fixed filters) -> BN -> act -> 3x3/2 'SAME' max pool -> stem block groups."""

    def __init__(self, spec: SpineNetSpec) -> None:
        super().__init__()
        self.conv = ConvNormAct(3, spec.stem.conv_filters, 7, stride=2, norm=spec.norm, act=spec.activation,
                                padding=spec.padding)
        self.pool = MaxPool2dSame(3, 2)
        self._build_groups(spec, spec.stem.conv_filters, 2)

    def entry(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


# Stem and resampling builders by spec field, so model families plug in without a second
# backbone class. A stem is an nn.Module returning a list of maps, with ``feature_infos``.
STEM_BUILDERS: dict[str, Callable[[SpineNetSpec], nn.Module]] = {"resnet": ResNetStem}
RESAMPLE_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_stem(kind: str, builder: Callable[[SpineNetSpec], nn.Module]) -> None:
    STEM_BUILDERS[kind] = builder


def register_resample(kind: str, builder: Callable[..., nn.Module]) -> None:
    RESAMPLE_BUILDERS[kind] = builder


def _alpha_resample(spec: SpineNetSpec, parent: FeatureInfo, target_level: int, target_channels: int) -> nn.Module:
    return ResampleWithAlpha(
        parent.channels, parent.level, target_level, target_channels,
        alpha=spec.scaling.resample_alpha,
        reduce_divisor=BLOCK_REGISTRY[parent.block_type].resample_reduce_divisor,
        norm=spec.norm, act=spec.activation, padding=spec.padding,
    )


register_resample("alpha", _alpha_resample)


def zero_outdegree_extras(spec: SpineNetSpec) -> dict[int, list[int]]:
    """``{block index: feats indices}`` that the zero-out-degree rule adds to output blocks.

    The official rule (paper section 3.3; tensorflow/tpu
    models/official/detection/modeling/architecture/spinenet.py): an output block also sums,
    unresampled, every earlier feature (stem groups first, then blocks in build order) of the
    same level and output width that no block has consumed yet. Used by the builder and by the
    Figure-3 drawings, so both always agree.
    """
    types = {b.block_type for b in spec.blocks} | {spec.stem.block_type}
    missing = sorted(t for t in types if t not in BLOCK_REGISTRY)
    if missing:
        raise ValueError(f"spec {spec.name}: block type(s) {missing} have no implementation; "
                         f"known: {sorted(BLOCK_REGISTRY)}")
    families = {t: BLOCK_REGISTRY[t] for t in types}
    stem_family = families[spec.stem.block_type]
    feats = [(lvl, stem_family.out_channels(spec.filters(lvl))) for lvl in spec.stem.block_levels]
    outdegree = [0] * (len(feats) + len(spec.blocks))
    extras: dict[int, list[int]] = {}
    for i, b in enumerate(spec.blocks):
        channels = families[b.block_type].out_channels(spec.filters(b.level))
        for p in b.input_offsets:
            outdegree[p] += 1
        if b.is_output and spec.zero_outdegree_connections:
            found = [j for j, (lvl, ch) in enumerate(feats) if outdegree[j] == 0 and lvl == b.level and ch == channels]
            for j in found:
                outdegree[j] += 1
            if found:
                extras[i] = found
        feats.append((b.level, channels))
    return extras


class ScalePermutedBlock(nn.Module):
    """One row of the spec: resample the parents, merge, and run the block group."""

    def __init__(self, spec: SpineNetSpec, index: int, feats: list[FeatureInfo], extras: Sequence[int] = ()) -> None:
        super().__init__()
        b = spec.blocks[index]
        family = BLOCK_REGISTRY[b.block_type]
        filters = spec.filters(b.level)
        target_channels = family.out_channels(filters)  # the resample projects to the block's width
        self.level = b.level
        self.parents = tuple(b.input_offsets)
        build = RESAMPLE_BUILDERS[spec.resample]
        self.resample = nn.ModuleList(build(spec, feats[p], b.level, target_channels) for p in self.parents)
        # Zero-out-degree extras (see zero_outdegree_extras): summed unresampled, so they must
        # already have the block's level and width.
        for j in extras:
            if (feats[j].level, feats[j].channels) != (b.level, target_channels):
                raise ValueError(f"spec {spec.name}: block {index} cannot take feature {j} unresampled")
        self.extras = tuple(extras)
        self.merge_act = create_act(spec.activation)
        self.group = _block_group(spec, b.block_type, target_channels, filters, stride=1,
                                  drop_path_rate=spec.drop_path_rate(index))
        self.info = FeatureInfo(b.level, family.out_channels(filters), b.block_type)

    def checkpointed(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """:meth:`forward` under activation checkpointing (``torch.utils.checkpoint``,
        non-reentrant): only the block's inputs and output are kept, its inside is recomputed
        in the backward pass. The recomputation is the same function: the same batch
        statistics in BatchNorm but no second update of the running statistics, the same
        stochastic-depth / DropBlock masks (sample-keyed noise replayed from its position;
        global-RNG noise by the checkpoint's RNG-state replay), the same autocast state."""
        position = noise_position()

        def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
            return contextlib.nullcontext(), _recompute_context(self, position)

        return torch.utils.checkpoint.checkpoint(self, feats, size, use_reentrant=False, context_fn=contexts)

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = self.resample[0](feats[self.parents[0]], size)
        for resample, p in zip(self.resample[1:], self.parents[1:]):  # one parent in graph-damage ablations
            x += resample(feats[p], size)  # in place: x is the projection's fresh output
        for j in self.extras:
            x += feats[j]
        return self.group(self.merge_act(x))


@contextlib.contextmanager
def _recompute_context(block: nn.Module, position: tuple[tuple[int, ...] | None, int]) -> Iterator[None]:
    """The recomputation of a checkpointed block: BatchNorm layers in training mode normalise
    with the batch statistics as before but leave their running statistics alone (momentum 0
    for the duration: ``running * 1 + 0 * batch`` is ``running`` bit for bit; the layer still
    saves the same tensors for its backward, which the checkpoint checks), and
    ``num_batches_tracked`` is put back; the sample-keyed noise restarts where the first
    forward drew it."""
    norms = [(m, m.momentum, int(m.num_batches_tracked)) for m in block.modules()
             if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m, _, _ in norms:
        m.momentum = 0.0
    try:
        with replay_noise(position):
            yield
    finally:
        for m, momentum, tracked in norms:
            m.momentum = momentum
            m.num_batches_tracked.fill_(tracked)


def set_activation_checkpointing(model: nn.Module, enabled: bool = True, max_level: int | None = None) -> int:
    """Turn activation checkpointing of the scale-permuted blocks on or off in every SpineNet
    inside ``model``; returns how many backbones were set. ``max_level``: only the blocks at
    that level or finer (their maps hold most of the activation memory: a level-2 block keeps
    4x the values of a level-3 one at half the width, while the compute per block varies less
    across levels), ``None`` for all. It applies to training forwards with gradients only and
    changes no result (see :meth:`ScalePermutedBlock.checkpointed`): less memory for one more
    forward pass of the checkpointed blocks."""
    if max_level is not None and (not isinstance(max_level, int) or isinstance(max_level, bool)):
        raise ValueError(f"set_activation_checkpointing: max_level must be an integer level or None, "
                         f"got {max_level!r}")
    count = 0
    for m in model.modules():
        if isinstance(m, SpineNet):
            m.activation_checkpointing = bool(enabled)
            m.activation_checkpointing_max_level = max_level
            count += 1
    return count


class SpineNet(nn.Module):
    """A SpineNet backbone built from ``spec``.

    Attributes:
        spec: the validated spec.
        out_channels: channels per output key (``{"p3": 256, ...}``).
        strides: stride per output key (``{"p3": 8, ...}``).
        feature_info: timm-style list of ``{"module", "num_chs", "reduction", "level"}``.
        size_divisibility: 1 (any input size works).
    """

    size_divisibility = 1
    activation_checkpointing = False  # set_activation_checkpointing
    activation_checkpointing_max_level: int | None = None

    def __init__(self, spec: SpineNetSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.stem.kind not in STEM_BUILDERS:
            raise ValueError(f"spec {spec.name}: no stem builder for kind {spec.stem.kind!r}; "
                             f"known: {sorted(STEM_BUILDERS)}")
        if spec.resample not in RESAMPLE_BUILDERS:
            raise ValueError(f"spec {spec.name}: no resample builder {spec.resample!r}; "
                             f"known: {sorted(RESAMPLE_BUILDERS)}")
        for t in {b.block_type for b in spec.blocks} | {spec.stem.block_type}:
            if t not in BLOCK_REGISTRY:
                raise ValueError(f"spec {spec.name}: block type {t!r} has no implementation; "
                                 f"known: {sorted(BLOCK_REGISTRY)}")
        self.stem = STEM_BUILDERS[spec.stem.kind](spec)
        feats: list[FeatureInfo] = list(self.stem.feature_infos)
        extras = zero_outdegree_extras(spec)
        self.blocks = nn.ModuleList()
        output_index: dict[int, int] = {}
        for i, b in enumerate(spec.blocks):
            block = ScalePermutedBlock(spec, i, feats, extras.get(i, ()))
            self.blocks.append(block)
            feats.append(block.info)
            if b.is_output:
                output_index[b.level] = len(feats) - 1
        self.feature_infos = tuple(feats)
        levels = range(spec.min_level, spec.max_level + 1)
        self._output_index = tuple(output_index[lvl] for lvl in levels)
        self._levels = tuple(levels)
        self.endpoints = nn.ModuleDict({
            f"p{lvl}": ConvNormAct(feats[output_index[lvl]].channels, spec.scaling.endpoints_num_filters, 1,
                                   norm=spec.norm, act=spec.activation, padding=spec.padding)
            for lvl in levels
        })
        self.out_channels = {f"p{lvl}": spec.scaling.endpoints_num_filters for lvl in levels}
        self.strides = {f"p{lvl}": 2**lvl for lvl in levels}
        self.feature_info = [
            {"module": f"endpoints.p{lvl}", "num_chs": spec.scaling.endpoints_num_filters,
             "reduction": 2**lvl, "level": lvl}
            for lvl in levels
        ]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: variance-scaling convs, BN gamma 1 and beta 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def output_levels(self) -> tuple[int, ...]:
        """The pyramid levels of the outputs, ascending (``min_level .. max_level``)."""
        return self._levels

    @property
    def output_feature_index(self) -> dict[int, int]:
        """For each output level, the index of the block output it comes from in
        :meth:`forward_features` (stem outputs first, then one per scale-permuted block)."""
        return dict(zip(self._levels, self._output_index))

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """detectron2-style ``{name: (channels, stride)}``."""
        return {k: (self.out_channels[k], self.strides[k]) for k in self.out_channels}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All block outputs, stem first (the running ``feats`` list)."""
        if x.dim() != 4:
            raise ValueError(f"SpineNet expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        height, width = x.shape[-2], x.shape[-1]
        feats = self.stem(x)
        checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        top = self.activation_checkpointing_max_level
        for block in self.blocks:
            size = level_size(height, width, block.level)
            if checkpoint and (top is None or block.level <= top):
                feats.append(block.checkpointed(feats, size))
            else:
                feats.append(block(feats, size))
        return feats

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.forward_features(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for lvl, idx in zip(self._levels, self._output_index):
            out[f"p{lvl}"] = self.endpoints[f"p{lvl}"](feats[idx])
        return out


def named_backbone(model: nn.Module) -> tuple[str, SpineNet] | None:
    """``(qualified name, module)`` of the first SpineNet inside ``model`` (``""`` for the model
    itself: a backbone, a detector's ``backbone``, a classifier's ...), or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, SpineNet):
            return name, module
    return None


def find_backbone(model: nn.Module) -> SpineNet | None:
    """The SpineNet inside ``model`` (the model itself if it is one), or ``None``."""
    found = named_backbone(model)
    return None if found is None else found[1]
