"""Parameter and multiply-add counts, as the official profiler counts them.

* Parameters: trainable parameters (BN gamma and beta count, running statistics do not),
  the same as the sum of TF trainable variables (``tf.trainable_variables()`` of the official
  graph, tensorflow/tpu models/official/detection).
* Multiply-adds: convolutions and linear layers, counted by forward hooks on a ``meta``
  device forward pass, so even SpineNet-190 at 1280 px is counted without allocating
  weights or activations. The official ``tf.profiler`` total also counts BN, activations and
  additions (e.g. 28.5B vs 28.26B for SpineNet-49 at 640); :func:`count_macs` can add those
  elementwise ops too (``elementwise=True``) for a like-for-like comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from torchspine.models.backbone import find_backbone

__all__ = ["ModelProfile", "count_macs", "count_params", "profile_model", "PUBLISHED"]


def count_params(module: nn.Module, *, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_macs(
    model: nn.Module,
    inputs: torch.Tensor | tuple,
    *,
    elementwise: bool = False,
    forward: Callable[..., object] | None = None,
) -> int:
    """Multiply-adds of one forward pass per image (batch size is divided out).

    Convolutions: ``out_elems * in_channels/groups * kh * kw``; linear: ``out_elems * in_features``.
    With ``elementwise=True``, BN and activation modules add one operation per output element
    (a rough stand-in for what ``tf.profiler`` adds on top of the convolutions).
    """
    total = [0]
    batch = inputs.shape[0] if isinstance(inputs, torch.Tensor) else 1

    def conv_hook(mod: nn.Conv2d, inp, out) -> None:
        kh, kw = mod.kernel_size
        total[0] += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, inp, out) -> None:
        total[0] += out.numel() * mod.in_features

    def elem_hook(mod: nn.Module, inp, out) -> None:
        total[0] += out.numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif elementwise and isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.SiLU, nn.Hardswish)):
            handles.append(m.register_forward_hook(elem_hook))
    try:
        with torch.no_grad():
            if forward is not None:
                forward(inputs)
            elif isinstance(inputs, tuple):
                model(*inputs)
            else:
                model(inputs)
    finally:
        for h in handles:
            h.remove()
    return total[0] // batch


@dataclass(frozen=True)
class Published:
    """Published figures for one model (params exact, multiply-adds in billions)."""

    params: int | None = None  # official trainable parameters, exact
    macs_conv: float | None = None  # conv-only multiply-adds, computed from the TPU code's graph
    macs_official: float | None = None  # official tf.profiler figure (BN, act, adds included)
    paper_params: float | None = None  # the paper copy's figure, millions
    paper_macs: float | None = None  # the paper copy's figure, billions
    size: int = 640
    source: str = ""


# Backbone + endpoints, counted on the official TPU graph. Paper-copy figures for
# backbones alone are not published; the detector tables live with the detectors.
PUBLISHED: dict[str, Published] = {
    "spinenet49s": Published(9_089_215, 12.33, 12.5, size=640, source="TPU code"),
    "spinenet49": Published(21_831_488, 28.26, 28.5, size=640, source="TPU code"),
    "spinenet96": Published(36_262_976, 119.05, 120.0, size=1024, source="TPU code"),
    "spinenet143": Published(60_247_616, 295.26, 297.2, size=1280, source="TPU code"),
    "spinenet143l": Published(100_796_257, None, None, size=1280, source="TPU code"),
    "spinenet190": Published(126_587_664, 620.98, 624.1, size=1280, source="TPU code"),
    # SpineNet-Mobile backbone + endpoints (MACs conv-only, computed from the TPU code).
    "spinenet_mobile49": Published(2_268_708, 0.785, None, size=384, source="TPU code"),
    "spinenet_mobile49s": Published(975_678, None, None, size=384, source="TPU code"),
    "spinenet_mobile49xs": Published(842_456, None, None, size=256, source="TPU code"),
    # ImageNet classifiers at 224 (1000 classes): params = backbone + endpoints + 257,000 (513,000
    # for 190's 512-wide endpoints); tf.profiler MACs from the TPU ImageNet zoo (tensorflow/tpu models/official/detection/MODEL_ZOO.md);
    # paper copy Table 6 (ImageNet columns) beside them.
    "spinenet49s_cls": Published(None, None, None, 14.2, 2.9, size=224, source="paper copy Table 6 (no official 49S classifier)"),
    "spinenet49_cls": Published(22_088_488, None, 3.5, 24.5, 4.4, size=224, source="TPU ImageNet zoo; paper Table 6"),
    "spinenet96_cls": Published(36_519_976, None, 5.7, 38.9, 6.6, size=224, source="TPU ImageNet zoo; paper Table 6"),
    "spinenet143_cls": Published(60_504_616, None, 9.1, 60.5, 9.7, size=224, source="TPU ImageNet zoo; paper Table 6"),
    "spinenet190_cls": Published(127_100_664, None, 19.1, None, None, size=224, source="TPU ImageNet zoo"),
    # Detectors, 91 classes. params: official exact trainable counts; macs_conv: conv-only
    # count from the TPU code; macs_official: the official tf.profiler totals (MODEL_ZOO.md);
    # paper_*: the paper copy's Table 2 (RetinaNet) / Table 5 (Mask R-CNN), an earlier revision whose
    # numbers no official configuration reproduces (see docs/detection.md).
    "retinanet_spinenet49s": Published(11_265_942, 30.78, None, 16.3, 44.7, size=640,
                                       source="TPU code (zoo 11.9M / 33.8B not reproducible); paper Table 2"),
    "retinanet_spinenet49": Published(28_543_383, 85.28, 85.57, 30.9, 92.8, size=640,
                                      source="TPU code + tf.profiler; paper Table 2"),
    "retinanet_spinenet96": Published(42_974_871, 265.02, 266.05, 45.3, 283.8, size=1024,
                                      source="TPU code + tf.profiler; paper Table 2"),
    "retinanet_spinenet143": Published(66_959_511, 523.34, 525.49, 66.9, 544.5, size=1280,
                                       source="TPU code + tf.profiler; paper Table 2"),
    "retinanet_spinenet190": Published(163_637_351, 1881.66, 1885.42, None, None, size=1280,
                                       source="TPU code + tf.profiler (190 is not in the paper copy's Table 2)"),
    # SpineNet-Mobile RetinaNet, separable head, 91 classes. params / macs_conv: TPU code;
    # macs_official: TPU zoo 1.0B for 49. Paper copy Table 9 rows go with the
    # *_paper names (its 49XXS / 49XS are the released 49XS / 49S; docs/family.md).
    "retinanet_spinenet_mobile49": Published(2_337_579, 0.981, 1.0, None, None, size=384, source="TPU code + zoo"),
    "retinanet_spinenet_mobile49s": Published(1_030_653, 0.496, None, None, None, size=384, source="TPU code"),
    "retinanet_spinenet_mobile49xs": Published(872_711, 0.166, None, None, None, size=256, source="TPU code"),
    "retinanet_spinenet_mobile49xxs_paper": Published(872_711, 0.166, None, 0.85, 0.16, size=256,
                                                      source="= released 49XS; paper Table 9"),
    "retinanet_spinenet_mobile49xs_paper": Published(1_030_653, 0.496, None, 1.01, 0.52, size=384,
                                                     source="= released 49S; paper Table 9"),
    "retinanet_spinenet_mobile49s_paper": Published(None, None, None, 1.34, 0.67, size=384,
                                                    source="paper Table 9 (no released counterpart)"),
    "retinanet_spinenet_mobile49_paper": Published(2_337_579, 0.981, 1.0, 2.28, 0.97, size=384,
                                                   source="= released 49; paper Table 9"),
    # Mask R-CNN: MACs with 1000 proposals and 100 masks; official = TPU MODEL_ZOO.md.
    "maskrcnn_spinenet49s": Published(None, None, None, 19.2, 82.5, size=640,
                                      source="no official figures; paper Table 5"),
    "maskrcnn_spinenet49": Published(40_753_521, None, 215.7, 43.6, 225.0, size=640,
                                     source="TPU MODEL_ZOO; paper Table 5"),
    "maskrcnn_spinenet96": Published(55_185_009, None, 314.6, 57.5, 325.0, size=1024,
                                     source="TPU MODEL_ZOO; paper Table 5"),
    "maskrcnn_spinenet143": Published(79_169_649, None, 498.4, 79.1, 518.8, size=1280,
                                      source="TPU MODEL_ZOO; paper Table 5"),
    "maskrcnn_spinenet190": Published(None, None, 1685.7, None, None, size=1536,
                                      source="TPU MODEL_ZOO 168.2M (exact count not published) / 1685.7B"),
}


@dataclass(frozen=True)
class ModelProfile:
    name: str
    size: tuple[int, int]
    params: int
    macs: int
    backbone_params: int | None = None
    backbone_macs: int | None = None
    macs_elementwise: int | None = None  # conv + linear + one op per BN / activation output


def profile_model(model: nn.Module, name: str, size: int | tuple[int, int] = 640) -> ModelProfile:
    """Count a model's parameters and multiply-adds at ``size`` on the meta device.

    ``model`` may live on any device; it is counted through a meta copy so nothing is allocated.
    """
    h, w = (size, size) if isinstance(size, int) else size
    meta = model.to("meta") if next(model.parameters()).device.type == "meta" else None
    if meta is None:
        import copy

        meta = copy.deepcopy(model).to("meta")
    meta.eval()
    x = torch.empty(1, 3, h, w, device="meta")
    params = count_params(meta)
    # Detectors count their dense network (backbone + heads, no pre/post-processing) via forward_dense.
    dense = getattr(meta, "forward_dense", None)
    macs = count_macs(meta, x, forward=dense)
    macs_elem = count_macs(meta, x, forward=dense, elementwise=True)
    bb = find_backbone(meta)
    bb_params = bb_macs = None
    if bb is not None:
        bb_params = count_params(bb) - count_params(bb.endpoints)
        bb_macs = count_macs(bb, x, forward=lambda t: bb.forward_features(t))
    return ModelProfile(name, (h, w), params, macs, bb_params, bb_macs, macs_elem)
