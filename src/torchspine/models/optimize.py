"""Inference-time optimizations that keep the network's math: BN folding, channels_last,
a lower-precision dtype, and ``torch.compile``.

:func:`optimize_for_inference` returns a new eval-mode module equivalent to the input (up to
floating-point rounding of the folded weights, and the chosen ``dtype``). It works on any
module that contains SpineNet parts (a bare backbone, a detector, a classifier), and on
torchvision ResNet / FPN backbones, so benchmarks can give a peer the same treatment.

BN folding (``conv -> BN`` becomes one conv with a bias) uses
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`. It is applied only where the order of
execution is known without tracing:

* adjacent children of an ``nn.Sequential`` (every :class:`~torchspine.layers.conv.ConvNormAct`,
  torchvision's ``Conv2dNormActivation`` and ResNet ``downsample`` branches);
* children of torchvision's ``IntermediateLayerGetter`` (a ``ModuleDict`` run in order; the
  ResNet stem ``conv1 -> bn1``);
* torchvision ResNet ``BasicBlock`` / ``Bottleneck`` (``conv{i} -> bn{i}``) and the ResNet stem.

Folding is exact for TF 'SAME' convs too (:class:`~torchspine.layers.conv.Conv2dSame`): the
zero padding happens before the conv and BN is an affine map of the conv's output, so
``BN(conv(pad(x))) = conv'(pad(x)) + b'``. Resampling (max pools, nearest resizes) is never
touched. Hand-written module walking because ``torch.fx``-based fusion cannot trace SpineNet
(its resampling branches on input sizes).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["CastInput", "FrozenCompiled", "SpineNetForInference", "rewrite_spinenets_", "fold_batch_norms_", "optimize_for_inference", "prepare_for_inference"]

log = logging.getLogger(__name__)


def _is_bn(m: nn.Module) -> bool:
    if isinstance(m, nn.BatchNorm2d):
        return m.track_running_stats and m.running_mean is not None
    # torchvision.ops.FrozenBatchNorm2d (no import needed: duck-typed on its buffers).
    return type(m).__name__ == "FrozenBatchNorm2d" and hasattr(m, "running_var")


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and _is_bn(bn)
        and conv.out_channels == bn.running_mean.numel()
        and not conv.weight.is_meta
    )


def _fuse(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    if isinstance(bn, nn.BatchNorm2d):
        return fuse_conv_bn_eval(conv, bn)
    # FrozenBatchNorm2d: same affine map, not an nn.BatchNorm2d subclass.
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return fused


def _fold_ordered_children(parent: nn.Module) -> int:
    """Fold adjacent (conv, bn) children of a container that runs its children in order."""
    names = list(parent._modules)
    count = 0
    for a, b in zip(names, names[1:]):
        conv, bn = parent._modules[a], parent._modules[b]
        if conv is not None and bn is not None and _foldable(conv, bn):
            parent._modules[a] = _fuse(conv, bn)
            parent._modules[b] = nn.Identity()
            count += 1
    return count


def _fold_named_pairs(parent: nn.Module, pairs: tuple[tuple[str, str], ...]) -> int:
    count = 0
    for c, b in pairs:
        conv, bn = getattr(parent, c, None), getattr(parent, b, None)
        if conv is not None and bn is not None and _foldable(conv, bn):
            setattr(parent, c, _fuse(conv, bn))
            setattr(parent, b, nn.Identity())
            count += 1
    return count


_TV_RESNET_PAIRS = {
    "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "ResNet": (("conv1", "bn1"),),
}


def fold_batch_norms_(model: nn.Module) -> int:
    """Fold every eval-mode BN that directly follows a conv into that conv, in place.

    Returns the number of folded pairs. Only patterns whose execution order is known are
    folded (see the module docstring); others are left as they are.
    """
    if model.training:
        raise ValueError("fold_batch_norms_ needs an eval-mode model (BN uses its running statistics)")
    count = 0
    for m in list(model.modules()):
        mod_type = type(m)
        if isinstance(m, nn.Sequential) or mod_type.__name__ == "IntermediateLayerGetter":
            count += _fold_ordered_children(m)
        elif mod_type.__module__.startswith("torchvision.models") and mod_type.__name__ in _TV_RESNET_PAIRS:
            count += _fold_named_pairs(m, _TV_RESNET_PAIRS[mod_type.__name__])
    return count


def _plain_1x1(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.dilation == (1, 1) and conv.bias is not None and not conv.weight.is_meta)


def _act_key(m: nn.Module | None) -> tuple:
    """Activation identity for fusing: the same type (and settings) computes the same function."""
    if m is None or isinstance(m, nn.Identity):
        return ("identity",)
    return (type(m).__name__, getattr(m, "negative_slope", None))


def _upsample_add_(base: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``base += nearest_upsample(y)`` without materialising the upsampled tensor, when
    ``base``'s size is an integer multiple of ``y``'s in both dimensions (the same factor);
    otherwise the plain resize and add. In place on ``base``; returns it."""
    from torchspine.layers.resample import resize_nearest

    n, c, hh, ww = base.shape
    h, w = y.shape[-2:]
    if hh % h == 0 and ww % w == 0 and hh // h == ww // w:
        f = hh // h
        base.view(n, c, h, f, w, f).add_(y[:, :, :, None, :, None])
        return base
    return base.add_(resize_nearest(y, (hh, ww)))


def _plain_projection(project: nn.Module) -> bool:
    """A resampling's projection that is one plain 1x1 conv with a bias (its BN folded, no act)."""
    mods = list(project.children()) if isinstance(project, nn.Sequential) else [project]
    return bool(mods) and _plain_1x1(mods[0]) and all(isinstance(m, nn.Identity) for m in mods[1:])


def _concat_inputs_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    """The 1x1 conv with ``conv(cat(x_1..x_n)) = sum_i convs[i](x_i)``: weights concatenated
    along the input channels, biases summed."""
    first = convs[0]
    merged = nn.Conv2d(sum(c.in_channels for c in convs), first.out_channels, 1).eval()
    merged.requires_grad_(False)
    with torch.no_grad():
        merged.weight.copy_(torch.cat([c.weight for c in convs], dim=1))
        merged.bias.copy_(torch.stack([c.bias for c in convs]).sum(0))
    merged.to(device=first.weight.device, dtype=first.weight.dtype)
    if first.weight.is_contiguous(memory_format=torch.channels_last):
        merged.to(memory_format=torch.channels_last)
    return merged


class SpineNetForInference(nn.Module):
    """A SpineNet rewritten for inference, computing the same function (up to float rounding).

    Built by :func:`optimize_for_inference` (``rewrite=True``) from an eval-mode SpineNet whose
    BNs are folded; it shares the original's modules (stem, blocks, endpoints). Three rewrites:

    * **one conv for the reduce convs that read the same parent.** Every resampling of a parent
      starts with a 1x1 conv + act (paper section 3.2, the ``alpha`` reduction); a parent read
      by several later blocks runs one 1x1 conv with the concatenated weights, once, when it is
      produced, and each consumer takes its slice of the channels.
    * **project before nearest upsampling.** The 1x1 projection conv + BN (no activation) is a
      per-pixel linear map and nearest upsampling repeats pixels, so they commute: projecting at
      the parent's resolution costs ``4**k`` times fewer multiply-adds for an upsampling by
      ``2**k``. The upsampled projection is added into the merge sum through a broadcasting
      view, never materialised (the resize fallback covers sizes that do not divide).
    * **one conv for the projections summed into a block's input.** Projections are linear 1x1
      convs (BN folded, no activation), so ``P_a(x_a) + P_b(x_b)`` is one 1x1 conv on the
      channel concatenation ``[x_a, x_b]`` with weights ``[W_a | W_b]`` and bias ``b_a + b_b``:
      the block's input is written once instead of written, re-read and added. Applies to the
      parents that reach the block's resolution before their projection (in SpineNet-49, 10 of
      15 blocks; a projection still to be upsampled is added as above).

    The merge sum then starts from a parent that is not upsampled (when there is one), so the
    additions happen in a different order than in :class:`~torchspine.models.backbone.SpineNet`:
    results differ by float rounding only.
    """

    size_divisibility = 1

    def __init__(self, net: nn.Module, *, fuse_reduce: bool = True, project_first: bool = True,
                 merge_projections: bool = True) -> None:
        from torchspine.layers.resample import ResampleWithAlpha

        super().__init__()
        self.stem, self.blocks, self.endpoints = net.stem, net.blocks, net.endpoints
        for name in ("spec", "out_channels", "strides", "feature_info", "feature_infos", "_levels", "_output_index"):
            setattr(self, name, getattr(net, name))
        self.project_first = project_first
        # consumers[j]: (block index, parent slot) of every alpha resampling that reads feature j
        consumers: dict[int, list[tuple[int, int]]] = {}
        for i, block in enumerate(net.blocks):
            for k, (p, r) in enumerate(zip(block.parents, block.resample)):
                if isinstance(r, ResampleWithAlpha):
                    consumers.setdefault(p, []).append((i, k))
        self.fused = nn.ModuleDict()
        self._fused_plan: dict[int, tuple[tuple[int, int, int], ...]] = {}
        self._fused_act: dict[int, nn.Module] = {}
        if fuse_reduce:
            for j, uses in consumers.items():
                reduces = [net.blocks[i].resample[k].reduce for i, k in uses]
                if len(uses) < 2 or not all(_plain_1x1(r[0]) and isinstance(r[1], nn.Identity) for r in reduces):
                    continue
                acts = {_act_key(r[2] if len(r) > 2 else None) for r in reduces}
                if len(acts) != 1:
                    continue
                convs = [r[0] for r in reduces]
                fused = nn.Conv2d(convs[0].in_channels, sum(c.out_channels for c in convs), 1).eval()
                fused.requires_grad_(False)
                with torch.no_grad():
                    fused.weight.copy_(torch.cat([c.weight for c in convs]))
                    fused.bias.copy_(torch.cat([c.bias for c in convs]))
                fused.to(device=convs[0].weight.device, dtype=convs[0].weight.dtype)
                if convs[0].weight.is_contiguous(memory_format=torch.channels_last):
                    fused.to(memory_format=torch.channels_last)
                self.fused[str(j)] = fused
                self._fused_plan[j] = tuple((i, k, c.out_channels) for (i, k), c in zip(uses, convs))
                self._fused_act[j] = reduces[0][2] if len(reduces[0]) > 2 else nn.Identity()
        # merged[i]: one 1x1 conv on the channel concatenation of block i's resampled parents that
        # reach its resolution before their projection (all but the projected-then-upsampled ones)
        self.merged = nn.ModuleDict()
        self._merged_slots: dict[int, tuple[int, ...]] = {}
        if merge_projections:
            for i, block in enumerate(net.blocks):
                slots = tuple(k for k, r in enumerate(block.resample)
                              if isinstance(r, ResampleWithAlpha) and _plain_projection(r.project)
                              and not (project_first and r.in_level > r.target_level))
                if len(slots) < 2:
                    continue
                convs = [block.resample[k].project[0] for k in slots]
                if len({c.out_channels for c in convs}) != 1:
                    continue
                self.merged[str(i)] = _concat_inputs_conv(convs)
                self._merged_slots[i] = slots
        log.info("SpineNetForInference: %d parents with one fused reduce conv (%d convs), project_first=%s, "
                 "%d blocks with one merged projection conv", len(self.fused),
                 sum(len(v) for v in self._fused_plan.values()), project_first, len(self.merged))

    def _produce(self, j: int, feat: torch.Tensor, reduced: dict[tuple[int, int], torch.Tensor]) -> None:
        plan = self._fused_plan.get(j)
        if plan is None:
            return
        y = self._fused_act[j](self.fused[str(j)](feat))
        for (i, k, _), part in zip(plan, y.split([c for _, _, c in plan], dim=1)):
            reduced[(i, k)] = part

    def _resample(self, r: nn.Module, x: torch.Tensor, size: tuple[int, int], pre_reduced: bool,
                  project: bool = True):
        """(tensor, upsample_pending): the resampled parent, or its projection still at the
        parent's resolution when it is to be upsampled into the sum. ``project=False``: the
        resampled parent before its projection (for a merged projection conv)."""
        from torchspine.layers.resample import ResampleWithAlpha, resize_nearest

        if not isinstance(r, ResampleWithAlpha):
            return r(x, size), False
        if not pre_reduced:
            x = r.reduce(x)
        if r.downsample is not None:
            x = r.downsample(x)
        if self.project_first and r.in_level > r.target_level:
            return r.project(x), True
        if x.shape[-2:] != size:
            x = resize_nearest(x, size)
        return (r.project(x) if project else x), False

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        from torchspine.layers.resample import level_size, resize_nearest

        if x.dim() != 4:
            raise ValueError(f"SpineNet expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        height, width = x.shape[-2], x.shape[-1]
        feats = self.stem(x)
        reduced: dict[tuple[int, int], torch.Tensor] = {}
        for j, f in enumerate(feats):
            self._produce(j, f, reduced)
        for i, block in enumerate(self.blocks):
            size = level_size(height, width, block.level)
            parts = []
            merged_slots = self._merged_slots.get(i, ())
            to_merge = []
            for k, (p, r) in enumerate(zip(block.parents, block.resample)):
                pre = reduced.pop((i, k), None)
                y = self._resample(r, feats[p] if pre is None else pre, size, pre is not None,
                                   project=k not in merged_slots)
                (to_merge if k in merged_slots else parts).append(y)
            if to_merge:  # sum of the projections = one conv on the concatenated inputs
                parts.insert(0, (self.merged[str(i)](torch.cat([y for y, _ in to_merge], dim=1)), False))
            parts.sort(key=lambda t: t[1])  # start the sum from a full-size tensor
            base, pending = parts[0]
            if pending:  # every parent is upsampled: materialise the first
                base = resize_nearest(base, size)
                if base is parts[0][0]:
                    base = base.clone()
            for y, up in parts[1:]:
                if up:
                    _upsample_add_(base, y)
                else:
                    base.add_(y)
            for j in block.extras:
                base.add_(feats[j])
            out = block.group(block.merge_act(base))
            feats.append(out)
            self._produce(len(feats) - 1, out, reduced)
        return feats

    def forward(self, x: torch.Tensor) -> "dict[str, torch.Tensor]":
        from collections import OrderedDict

        feats = self.forward_features(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for lvl, idx in zip(self._levels, self._output_index):
            out[f"p{lvl}"] = self.endpoints[f"p{lvl}"](feats[idx])
        return out


def rewrite_spinenets_(model: nn.Module, **options: Any) -> nn.Module | int:
    """Replace every (BN-folded, eval-mode) SpineNet inside ``model`` by a
    :class:`SpineNetForInference`; a bare SpineNet is returned rewritten. Returns the model."""
    from torchspine.models.backbone import SpineNet

    if isinstance(model, SpineNet):
        return SpineNetForInference(model, **options)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpineNet):
                setattr(parent, name, SpineNetForInference(child, **options))
    return model


class FrozenCompiled(nn.Module):
    """``torch.compile`` of a module with Inductor *freezing* on while it compiles and runs.

    Freezing turns the weights into constants, so Inductor can pre-pack them for oneDNN and
    fuse conv + activation and conv + add + activation (``mkldnn._convolution_pointwise``).
    It is a global Inductor setting (passing ``options={"freezing": True}`` to
    ``torch.compile`` does not reach the oneDNN passes in torch 2.14: the convs then fall back
    to the slow ``thnn_conv2d``), so every call, which may recompile for a new input shape,
    runs under ``torch._inductor.config.patch(freezing=True)``. Frozen weights are captured at
    the first call per shape: later changes to the parameters are not seen. Freezing only
    applies under ``torch.no_grad()`` / ``torch.inference_mode()``.
    """

    def __init__(self, module: nn.Module, **compile_options: Any) -> None:
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, **compile_options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


def optimize_for_inference(
    model: nn.Module,
    *,
    channels_last: bool = True,
    fold_bn: bool = True,
    dtype: torch.dtype | None = None,
    compile: bool = False,
    compile_options: dict[str, Any] | None = None,
    freeze: bool = True,
    rewrite: bool = False,
    winograd: bool = False,
) -> nn.Module:
    """An equivalent eval-mode copy of ``model`` prepared for fast inference.

    Args:
        model: any module (a SpineNet backbone, a detector or classifier built on one, a
            torchvision backbone). It is not modified.
        channels_last: convert 4-D parameters and buffers to ``torch.channels_last``; feed
            channels_last inputs too (convs run ~1.5x faster in oneDNN on CPU).
        fold_bn: fold BatchNorm into the preceding conv (:func:`fold_batch_norms_`).
        dtype: cast floating-point parameters and buffers (e.g. ``torch.bfloat16``); inputs
            must then be cast by the caller. ``None`` keeps the model's dtype.
        compile: wrap the result with :func:`torch.compile` (Inductor, ``dynamic=False``).
            Returns the compiled wrapper; the first call per input shape compiles.
        compile_options: extra keyword arguments for :func:`torch.compile`.
        freeze: with ``compile``, compile and run with Inductor freezing
            (:class:`FrozenCompiled`: pre-packed oneDNN weights, fused conv + act / add).
        rewrite: replace SpineNets by :class:`SpineNetForInference` (one conv for the reduce
            convs sharing a parent, projection before nearest upsampling, one conv for the
            projections summed into a block's input); same function.
        winograd: compute the 3x3 stride-1 convs with at least 128 channels by Winograd's
            ``F(4x4, 3x3)`` (:func:`~torchspine.models.winograd.winograd_convs_`): 4x fewer
            multiply-adds in the products, same function up to float32 rounding (~1e-5
            relative per conv). Pays on the CPU under ``compile`` (the transforms become fused
            loops); slower in eager mode. Inputs under 16 tiles (e.g. 10x10) keep the direct conv.

    Returns:
        A new module in eval mode with ``requires_grad`` off on every parameter.
    """
    if winograd and dtype not in (None, torch.float32, torch.float64):
        raise ValueError(f"optimize_for_inference: winograd=True needs float32 weights, got dtype={dtype} "
                         "(Winograd in bfloat16 loses ~14% accuracy)")
    out = copy.deepcopy(model).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if fold_bn:
        n = fold_batch_norms_(out)
        log.info("folded %d conv+BN pairs", n)
    if dtype is not None:
        out = out.to(dtype=dtype)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    if rewrite:
        out = rewrite_spinenets_(out)
    if winograd:
        from torchspine.models.winograd import winograd_convs_

        log.info("Winograd F(4x4, 3x3) for %d convs", winograd_convs_(out))
    if compile:
        opts: dict[str, Any] = {"dynamic": False}
        opts.update(compile_options or {})
        out = FrozenCompiled(out, **opts) if freeze else torch.compile(out, **opts)
    return out


def _fold_head_norms_(model: nn.Module) -> int:
    count = 0
    for m in model.modules():
        fold = getattr(m, "fold_batch_norms_", None)
        if callable(fold) and m is not model:
            count += int(fold() or 0)
    return count


class CastInput:
    """A forward pre-hook that casts a module's first (tensor) argument to ``dtype`` and,
    optionally, to channels_last: lets a lower-precision network take float32 or uint8 images.

    A class rather than a closure so that the prepared model can be deep-copied and pickled.
    """

    def __init__(self, dtype: torch.dtype, channels_last: bool = False) -> None:
        self.dtype = dtype
        self.channels_last = channels_last

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        if not args or not isinstance(args[0], torch.Tensor):
            return args
        x = args[0]
        fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.preserve_format
        if not x.is_floating_point():  # uint8 images: [0, 255] -> [0, 1], as DetectionTransform does
            x = x.float() / float(torch.iinfo(x.dtype).max) if x.dtype != torch.bool else x.float()
        return (x.to(dtype=self.dtype, memory_format=fmt), *args[1:])


def _cast_detector_inputs_(model: nn.Module, dtype: torch.dtype, channels_last: bool) -> list[str]:
    """Make a detector whose parameters are in ``dtype`` accept ordinary (float32 / uint8) images.

    The transform (resize, normalise, pad) and the anchors, box decoding and NMS stay in float32
    (box coordinates in bfloat16 would be quantised to 2-4 px at 640 px); the backbone casts
    its input (the normalised batch) to ``dtype``, so the backbone and the heads run in it. Head
    outputs (logits, box deltas) are cast back to float32 by the post-processing
    (``SpineNetRetinaNet.postprocess_detections``; torchvision's ``BoxCoder.decode`` casts the
    deltas to the anchors' dtype). For a Mask R-CNN, RoIAlign runs on float32 copies of the
    features (its kernel needs the boxes' dtype) and the box / mask heads cast their inputs back.
    Returns the names of the hooked modules.
    """
    hooked = []
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        backbone.register_forward_pre_hook(CastInput(dtype, channels_last))
        hooked.append("backbone")
    roi_heads = getattr(model, "roi_heads", None)
    if isinstance(roi_heads, nn.Module):
        for name in ("box_roi_pool", "mask_roi_pool"):
            pool = getattr(roi_heads, name, None)
            if isinstance(pool, nn.Module):
                pool.register_forward_pre_hook(_FloatFeatures())
                hooked.append(f"roi_heads.{name}")
        for name in ("box_head", "mask_head"):
            head = getattr(roi_heads, name, None)
            if isinstance(head, nn.Module):
                head.register_forward_pre_hook(CastInput(dtype, channels_last))
                hooked.append(f"roi_heads.{name}")
        for name in ("box_predictor", "mask_predictor"):
            head = getattr(roi_heads, name, None)
            if isinstance(head, nn.Module):
                head.register_forward_hook(_FloatOutputs())
                hooked.append(f"roi_heads.{name}")
    rpn_head = getattr(getattr(model, "rpn", None), "head", None)
    if isinstance(rpn_head, nn.Module):  # proposals: scores and NMS in float32 (no bfloat16 NMS kernel)
        rpn_head.register_forward_hook(_FloatOutputs())
        hooked.append("rpn.head")
    return hooked


def _to_float(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_float(v) for k, v in x.items()}
    return x


class _FloatOutputs:
    """Forward hook: floating-point outputs (tensors, or lists / tuples / dicts of them) to float32."""

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        return _to_float(output)


class _FloatFeatures:
    """Pre-hook for torchvision's ``MultiScaleRoIAlign``: float32 features (the boxes stay float32)."""

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        feats = args[0]
        if isinstance(feats, dict):
            feats = {k: v.float() for k, v in feats.items()}
        return (feats, *args[1:])


def prepare_for_inference(model: nn.Module, *, channels_last: bool = True, fold_bn: bool = True,
                          pad_to_square: bool = False, dtype: torch.dtype | None = None,
                          rewrite: bool = False, compile: bool = False) -> nn.Module:
    """An eval-mode copy prepared for fast CPU inference (BN folding, channels_last, no square pad).

    Uses :func:`torchspine.models.optimize.optimize_for_inference` for the backbone and heads,
    then folds the RetinaNet head's per-level BNs (shared convs, so the generic folder
    cannot) into per-level convs. Unless ``pad_to_square``, a detector's transform keeps the
    paper's long-side resize but pads only to a multiple of 32 instead of to a square (the square
    is for static-shape training batches; a 480x640 image then costs 480x640, not 640x640).
    Detections can differ slightly near the bottom / right edge, whose receptive fields
    covered padding.

    With ``dtype`` (e.g. ``torch.bfloat16``), a detector still takes ordinary float32 or uint8
    images: pre-processing, anchors, box decoding and NMS run in float32, the backbone and
    heads in ``dtype`` (:func:`_cast_detector_inputs_`). A bare backbone or classifier casts
    its input too.

    ``rewrite`` replaces the SpineNet by :class:`SpineNetForInference` (same function, less
    work). ``compile`` compiles a detector's backbone and head (or the whole model otherwise)
    with :class:`FrozenCompiled` (Inductor, freezing); each new input shape compiles once, so
    combine it with ``pad_to_square=True`` for one shape per image size.
    """
    from torchspine.models.detection.transform import DetectionTransform

    out = optimize_for_inference(model, channels_last=False, fold_bn=fold_bn, dtype=dtype)
    transform = getattr(out, "transform", None)
    if isinstance(transform, DetectionTransform) and not pad_to_square and transform.resize_mode == "square":
        transform.resize_mode = "long_side"
        transform.size_divisible = 32
    if fold_bn:
        n = _fold_head_norms_(out)
        log.info("folded %d per-level head BNs", n)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    if rewrite:
        out = rewrite_spinenets_(out)
    detector = isinstance(getattr(out, "transform", None), nn.Module)
    if dtype is not None:
        if detector:
            hooked = _cast_detector_inputs_(out, dtype, channels_last)
            log.info("%s inputs cast to %s in %s", type(out).__name__, dtype, ", ".join(hooked))
        else:
            out.register_forward_pre_hook(CastInput(dtype, channels_last))
    if compile:
        if detector and isinstance(getattr(out, "head", None), nn.Module):
            out.backbone = FrozenCompiled(out.backbone, dynamic=False)
            out.head = FrozenCompiled(out.head, dynamic=False)
        else:
            out = FrozenCompiled(out, dynamic=False)
    return out
