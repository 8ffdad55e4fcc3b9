"""RetinaNet head variables of the official checkpoints -> :class:`torchspine.models.detection.heads.RetinaNetHead`.

Names (reference section 10), which are explicit in both codebases (not auto-generated):

* tensorflow/tpu: ``retinanet/class_net/class-{k}/{kernel,bias}`` (shared convs),
  ``class-{k}-{level}/{gamma,...}`` (per-level BN, ``level`` = pyramid level 3..7),
  ``class-predict/{kernel,bias}``; likewise ``box_net/box-{k}``, ``box-{k}-{level}``,
  ``box-predict``.
* Model Garden: ``head/_cls_convs/{k}``, ``_cls_norms/{level index}/{k}``, ``_classifier``,
  ``_box_convs``, ``_box_norms``, ``_box_regressor``.

Two layout differences are converted, not just copied:

* box deltas: TF encodes ``(dy, dx, dh, dw)`` (Model Garden ``box_ops.encode_boxes``,
  tensorflow/tpu ``box_coder``), torchvision's ``BoxCoder`` ``(dx, dy, dw, dh)``: the four
  outputs of every anchor are swapped pairwise;
* separable heads (SpineNet-Mobile): ``depthwise_kernel`` / ``pointwise_kernel`` / ``bias`` of
  TF ``separable_conv2d`` go to ``SeparableConv2d.depthwise`` / ``.pointwise``;
* anchor order: per location scale-major then aspect ratio in both, but tensorflow/tpu lists
  the aspect ratios as (1.0, 2.0, 0.5) and Model Garden as (0.5, 1.0, 2.0) (reference
  section 8); the predictor outputs are reordered to the torchspine model's aspect ratios.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

if TYPE_CHECKING:
    from torchspine.interop.convert import _Transfer

__all__ = ["CODEBASE_ASPECT_RATIOS", "transfer_head"]

CODEBASE_ASPECT_RATIOS = {"tpu": (1.0, 2.0, 0.5), "mg": (0.5, 1.0, 2.0)}
_BOX_SWAP = (1, 0, 3, 2)  # torch (dx, dy, dw, dh) <- TF (dy, dx, dh, dw)


def _anchor_order(model: nn.Module, codebase: str) -> list[int] | str:
    """For each torch anchor index, the TF anchor index (or a problem message)."""
    gen = model.anchor_generator
    mine = tuple(float(a) for a in gen.official_aspect_ratios)
    theirs = CODEBASE_ASPECT_RATIOS[codebase]
    if sorted(mine) != sorted(theirs):
        return (f"head: the model's aspect ratios {mine} are not the {codebase} checkpoint's {theirs}; "
                f"build the model with aspect_ratios={theirs}")
    num_scales = model.head.num_anchors // len(mine)
    return [k * len(mine) + theirs.index(mine[r]) for k in range(num_scales) for r in range(len(mine))]


def _names(codebase: str, names: set[str]) -> dict[str, str] | str:
    """TF name prefixes of the head's parts, keyed by role."""
    if codebase == "mg":
        roots = sorted({n[: n.index("_classifier/")] for n in names
                        if n.endswith(("_classifier/kernel", "_classifier/pointwise_kernel"))}, key=len)
        if not roots:
            return "head: no Model Garden RetinaNet head in the checkpoint (no '.../_classifier/kernel')"
        r = roots[0]
        return {"cls_conv": r + "_cls_convs/{k}/", "cls_norm": r + "_cls_norms/{li}/{k}/", "cls_pred": r + "_classifier/",
                "box_conv": r + "_box_convs/{k}/", "box_norm": r + "_box_norms/{li}/{k}/", "box_pred": r + "_box_regressor/",
                "root": r}
    roots = sorted({n[: n.index("class_net/")] for n in names
                    if n.endswith(("class_net/class-predict/kernel", "class_net/class-predict/pointwise_kernel"))},
                   key=len)
    if not roots:
        return "head: no tensorflow/tpu RetinaNet head in the checkpoint (no '.../class_net/class-predict/kernel')"
    r = roots[0]
    return {"cls_conv": r + "class_net/class-{k}/", "cls_norm": r + "class_net/class-{k}-{level}/",
            "cls_pred": r + "class_net/class-predict/", "box_conv": r + "box_net/box-{k}/",
            "box_norm": r + "box_net/box-{k}-{level}/", "box_pred": r + "box_net/box-predict/", "root": r}


def transfer_head(model: nn.Module, transfer: "_Transfer", *, codebase: str, names: set[str]) -> list[str]:
    """Fill ``model.head`` from the checkpoint into ``transfer``; return structural problems."""
    head = model.head
    if not hasattr(head, "cls_tower") or not hasattr(head, "cls_logits"):
        return [f"head: no converter for {type(head).__name__} (only torchspine's RetinaNetHead)"]
    parts = _names(codebase, names)
    if isinstance(parts, str):
        return [parts]
    separable = hasattr(head.cls_logits, "pointwise")  # SpineNet-Mobile's head (SeparableConv2d)
    ckpt_separable = any(n.startswith(parts["root"]) and n.endswith("pointwise_kernel") for n in names)
    if separable != ckpt_separable:
        return [f"head: the checkpoint's head convs are {'separable' if ckpt_separable else 'plain'}, the model's "
                f"are {'separable' if separable else 'plain'} (SpineNet-Mobile detectors use separable heads)"]
    order = _anchor_order(model, codebase)
    if isinstance(order, str):
        return [order]
    levels = list(range(model.backbone.spec.min_level, model.backbone.spec.max_level + 1))
    problems: list[str] = []
    for tower, pred, role, kind in ((head.cls_tower, "cls_logits", "cls", "cls"),
                                    (head.box_tower, "bbox_reg", "box", "box")):
        tname = "cls_tower" if role == "cls" else "box_tower"
        for k in range(len(tower.convs)):
            path, prefix = f"head.{tname}.convs.{k}", parts[f"{role}_conv"].format(k=k)
            if separable:  # TF separable_conv2d: depthwise_kernel, pointwise_kernel, bias
                transfer.conv(f"{path}.depthwise", prefix)
                _pointwise(transfer, f"{path}.pointwise", prefix)
            else:
                transfer.conv(path, prefix)
            for li, lvl in enumerate(levels):
                transfer.bn(f"head.{tname}.norms.{li}.{k}", parts[f"{role}_norm"].format(k=k, li=li, level=lvl))
        if separable:
            transfer.conv(f"head.{pred}.depthwise", parts[f"{role}_pred"])
        _predictor(transfer, f"head.{pred}.pointwise" if separable else f"head.{pred}", parts[f"{role}_pred"], order,
                   per_anchor=head.num_classes if kind == "cls" else 4, swap=kind == "box",
                   kernel_name="pointwise_kernel" if separable else "kernel")
    extra_convs = [n for n in names if re.search(r"(_cls_convs/|class-)(\d+)/kernel$", n)
                   and int(re.search(r"(\d+)/kernel$", n).group(1)) >= len(head.cls_tower.convs)]
    if extra_convs:
        problems.append(f"head: the checkpoint has more tower convs than the model ({len(head.cls_tower.convs)}); "
                        f"e.g. {sorted(extra_convs)[:2]} (set head_num_convs)")
    return problems


def _pointwise(transfer: "_Transfer", path: str, prefix: str) -> None:
    kernel = transfer._take(prefix + "pointwise_kernel")
    if kernel is not None:
        transfer._put(f"{path}.weight", kernel.transpose(3, 2, 0, 1), prefix + "pointwise_kernel", tuple(kernel.shape))
    transfer._put(f"{path}.bias", transfer._take(prefix + "bias"), prefix + "bias")


def _predictor(transfer: "_Transfer", path: str, prefix: str, order: list[int], *, per_anchor: int,
               swap: bool, kernel_name: str = "kernel") -> None:
    """Class / box predictor with output channels reordered (anchor order, box coordinate order)."""
    kernel = transfer._take(prefix + kernel_name)
    bias = transfer._take(prefix + "bias")
    if kernel is None or bias is None:
        return
    n_out = kernel.shape[-1]
    if n_out != len(order) * per_anchor:
        transfer.mismatched.append(f"{prefix}{kernel_name} {list(kernel.shape)}: {n_out} outputs, the model has "
                                   f"{len(order)} anchors x {per_anchor} = {len(order) * per_anchor}")
        return
    inner = list(_BOX_SWAP) if swap else list(range(per_anchor))
    idx = np.array([a_tf * per_anchor + inner[j] for a_tf in order for j in range(per_anchor)])
    transfer._put(f"{path}.weight", kernel[..., idx].transpose(3, 2, 0, 1), prefix + kernel_name, tuple(kernel.shape))
    transfer._put(f"{path}.bias", bias[idx], prefix + "bias")
