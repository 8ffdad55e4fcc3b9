"""Head variables of the official checkpoints -> torchspine heads (RetinaNet, Mask R-CNN, classifier).

**RetinaNet** names are explicit in both codebases (tensorflow/tpu
``models/official/detection/modeling/architecture/heads.py`` ``RetinanetHead``; tensorflow/models
``official/vision/modeling/heads/dense_prediction_heads.py`` ``RetinaNetHead``):

* tensorflow/tpu: ``retinanet/class_net/class-{k}/{kernel,bias}`` (shared convs),
  ``class-{k}-{level}/{gamma,...}`` (per-level BN, ``level`` = pyramid level 3..7),
  ``class-predict/{kernel,bias}``; likewise ``box_net/box-{k}``, ``box-{k}-{level}``,
  ``box-predict``.
* Model Garden: ``head/_cls_convs/{k}``, ``_cls_norms/{level index}/{k}``, ``_classifier``,
  ``_box_convs``, ``_box_norms``, ``_box_regressor``.

**Mask R-CNN** (tensorflow/tpu ``heads.py`` ``RpnHead``, ``FastrcnnHead``, ``MaskrcnnHead``):
``rpn_head/rpn`` (shared 3x3 conv), ``rpn_head/rpn-l{level}-bn``, ``rpn_head/rpn-class``,
``rpn_head/rpn-box``; ``fast_rcnn_head/conv_{i}``, unnamed BNs ``batch_normalization[_N]`` in
creation order (the convs', then the fc's), ``fc6``, ``class-predict``, ``box-predict`` (dense);
``mask_head/mask-conv-l{i}``, unnamed BNs (the convs', then the deconv's), ``conv5-mask``
(``conv2d_transpose``), ``mask_fcn_logits``.

**ImageNet classifier** (tensorflow/tpu ``heads.py`` ``ClassificationHead``):
``classification_head/dense/{kernel,bias}`` over 1001 classes (index 0 is background).

Layouts converted, not just copied:

* box deltas: TF encodes ``(dy, dx, dh, dw)`` (tensorflow/tpu ``ops/box_utils.py``, Model Garden
  ``box_ops.encode_boxes``), torchvision's ``BoxCoder`` ``(dx, dy, dw, dh)``: the four outputs
  of every anchor (RetinaNet, RPN) or class (Fast R-CNN) are swapped pairwise;
* anchor order: per location scale-major then aspect ratio in both, but tensorflow/tpu lists
  the aspect ratios as (1.0, 2.0, 0.5) and Model Garden as (0.5, 1.0, 2.0); predictor outputs are
  reordered to the torchspine model's aspect ratios;
* the Fast R-CNN fc flattens NHWC RoI features in TF and NCHW in torch: its kernel rows are
  permuted;
* separable heads (SpineNet-Mobile): ``depthwise_kernel`` / ``pointwise_kernel`` / ``bias`` of TF
  ``separable_conv2d`` go to the depthwise and pointwise convs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from torch import nn

from torchspine.interop.pairing import tpu_scopes
from torchspine.interop.transfer import Transfer
from torchspine.models.detection.heads import RetinaNetHead

__all__ = ["CODEBASE_ASPECT_RATIOS", "transfer_classifier_head", "transfer_maskrcnn_heads", "transfer_retinanet_head"]

CODEBASE_ASPECT_RATIOS = {"tpu": (1.0, 2.0, 0.5), "mg": (0.5, 1.0, 2.0)}
_BOX_SWAP = (1, 0, 3, 2)  # torch (dx, dy, dw, dh) <- TF (dy, dx, dh, dw)


def _anchor_order(generator: nn.Module, num_anchors: int, codebase: str) -> list[int] | str:
    """For each torch anchor index, the TF anchor index (or a problem message)."""
    mine = tuple(float(a) for a in generator.official_aspect_ratios)
    theirs = CODEBASE_ASPECT_RATIOS[codebase]
    if sorted(mine) != sorted(theirs):
        return (f"head: the model's aspect ratios {mine} are not the {codebase} checkpoint's {theirs}; "
                f"build the model with aspect_ratios={theirs}")
    num_scales = num_anchors // len(mine)
    return [k * len(mine) + theirs.index(mine[r]) for k in range(num_scales) for r in range(len(mine))]


def _root(names: set[str], suffixes: tuple[str, ...], marker: str) -> str | None:
    roots = sorted({n[: n.index(marker)] for n in names if n.endswith(suffixes) and marker in n}, key=len)
    return roots[0] if roots else None


def _retinanet_names(codebase: str, names: set[str]) -> dict[str, str] | str:
    """TF name prefixes of the head's parts, keyed by role."""
    if codebase == "mg":
        r = _root(names, ("_classifier/kernel", "_classifier/pointwise_kernel"), "_classifier/")
        if r is None:
            return "head: no Model Garden RetinaNet head in the checkpoint (no '.../_classifier/kernel')"
        return {"cls_conv": r + "_cls_convs/{k}/", "cls_norm": r + "_cls_norms/{li}/{k}/",
                "cls_pred": r + "_classifier/", "box_conv": r + "_box_convs/{k}/",
                "box_norm": r + "_box_norms/{li}/{k}/", "box_pred": r + "_box_regressor/", "root": r}
    r = _root(names, ("class_net/class-predict/kernel", "class_net/class-predict/pointwise_kernel"), "class_net/")
    if r is None:
        return "head: no tensorflow/tpu RetinaNet head in the checkpoint (no '.../class_net/class-predict/kernel')"
    return {"cls_conv": r + "class_net/class-{k}/", "cls_norm": r + "class_net/class-{k}-{level}/",
            "cls_pred": r + "class_net/class-predict/", "box_conv": r + "box_net/box-{k}/",
            "box_norm": r + "box_net/box-{k}-{level}/", "box_pred": r + "box_net/box-predict/", "root": r}


def transfer_retinanet_head(model: nn.Module, transfer: Transfer, *, codebase: str, names: set[str]) -> list[str]:
    """Fill ``model.head`` (a :class:`RetinaNetHead`) into ``transfer``; return structural problems."""
    head = model.head
    if not isinstance(head, RetinaNetHead):
        return [f"head: no converter for {type(head).__name__} (only torchspine's RetinaNetHead)"]
    parts = _retinanet_names(codebase, names)
    if isinstance(parts, str):
        return [parts]
    separable = isinstance(getattr(head.cls_logits, "pointwise", None), nn.Conv2d)  # SpineNet-Mobile's head
    ckpt_separable = any(n.startswith(parts["root"]) and n.endswith("pointwise_kernel") for n in names)
    if separable != ckpt_separable:
        return [f"head: the checkpoint's head convs are {'separable' if ckpt_separable else 'plain'}, the model's "
                f"are {'separable' if separable else 'plain'} (SpineNet-Mobile detectors use separable heads)"]
    order = _anchor_order(model.anchor_generator, head.num_anchors, codebase)
    if isinstance(order, str):
        return [order]
    levels = list(model.backbone.output_levels)
    problems: list[str] = []
    for tname, pred, role in (("cls_tower", "cls_logits", "cls"), ("box_tower", "bbox_reg", "box")):
        tower = getattr(head, tname)
        for k in range(len(tower.convs)):
            path, prefix = f"head.{tname}.convs.{k}", parts[f"{role}_conv"].format(k=k)
            if separable:  # TF separable_conv2d: depthwise_kernel, pointwise_kernel, bias
                transfer.conv(f"{path}.depthwise", prefix)
                transfer.pointwise(f"{path}.pointwise", prefix)
            else:
                transfer.conv(path, prefix)
            for li, lvl in enumerate(levels):
                transfer.bn(f"head.{tname}.norms.{li}.{k}", parts[f"{role}_norm"].format(k=k, li=li, level=lvl))
        if separable:
            transfer.conv(f"head.{pred}.depthwise", parts[f"{role}_pred"])
        _predictor(transfer, f"head.{pred}.pointwise" if separable else f"head.{pred}", parts[f"{role}_pred"], order,
                   per_anchor=head.num_classes if role == "cls" else 4, swap=role == "box",
                   kernel_name="pointwise_kernel" if separable else "kernel")
    extra_convs = [n for n in names if (m := re.search(r"(_cls_convs/|class-)(\d+)/kernel$", n))
                   and int(m.group(2)) >= len(head.cls_tower.convs)]
    if extra_convs:
        problems.append(f"head: the checkpoint has more tower convs than the model ({len(head.cls_tower.convs)}); "
                        f"e.g. {sorted(extra_convs)[:2]} (set head_num_convs)")
    return problems


def _predictor(transfer: Transfer, path: str, prefix: str, order: list[int], *, per_anchor: int,
               swap: bool, kernel_name: str = "kernel", dense: bool = False) -> None:
    """Class / box predictor with output channels reordered (anchor order, box coordinate order)."""
    kernel = transfer.take(prefix + kernel_name)
    bias = transfer.take(prefix + "bias")
    if kernel is None or bias is None:
        return
    n_out = kernel.shape[-1]
    if n_out != len(order) * per_anchor:
        transfer.mismatched.append(f"{prefix}{kernel_name} {list(kernel.shape)}: {n_out} outputs, the model has "
                                   f"{len(order)} anchors x {per_anchor} = {len(order) * per_anchor}")
        return
    inner = list(_BOX_SWAP) if swap else list(range(per_anchor))
    idx = np.array([a_tf * per_anchor + inner[j] for a_tf in order for j in range(per_anchor)])
    weight = kernel[..., idx].T if dense else kernel[..., idx].transpose(3, 2, 0, 1)
    transfer.put(f"{path}.weight", weight, prefix + kernel_name, tuple(kernel.shape))
    transfer.put(f"{path}.bias", bias[idx], prefix + "bias")


def transfer_maskrcnn_heads(model: nn.Module, transfer: Transfer, *, codebase: str, names: set[str]) -> list[str]:
    """Fill the RPN, box and mask heads of a torchspine Mask R-CNN from a tensorflow/tpu checkpoint."""
    if codebase != "tpu":
        return ["Mask R-CNN: only tensorflow/tpu checkpoints are supported (the official SpineNet Mask R-CNN "
                "weights come from tensorflow/tpu)"]
    r = _root(names, ("rpn_head/rpn/kernel",), "rpn_head/")
    if r is None:
        return ["Mask R-CNN: no 'rpn_head/rpn/kernel' in the checkpoint (not a tensorflow/tpu Mask R-CNN)"]
    problems: list[str] = []
    # RPN: shared conv, per-level BN, objectness (A) and box (4A) 1x1 convs.
    rpn = model.rpn.head
    transfer.conv("rpn.head.conv", r + "rpn_head/rpn/")
    for li, lvl in enumerate(model.backbone.output_levels):
        transfer.bn(f"rpn.head.norms.{li}", f"{r}rpn_head/rpn-l{lvl}-bn/")
    order = _anchor_order(model.rpn.anchor_generator, rpn.cls_logits.out_channels, codebase)
    if isinstance(order, str):
        return [order]
    _predictor(transfer, "rpn.head.cls_logits", r + "rpn_head/rpn-class/", order, per_anchor=1, swap=False)
    _predictor(transfer, "rpn.head.bbox_pred", r + "rpn_head/rpn-box/", order, per_anchor=4, swap=True)
    scopes = tpu_scopes(names)
    # Fast R-CNN box head: convs with bias, their BNs, fc6 (+ BN), class and class-specific box predictors.
    box_head = model.roi_heads.box_head
    n_convs = len(box_head.convs)
    bns = _conv_bn_stack(transfer, scopes, problems, "roi_heads.box_head", n_convs, r + "fast_rcnn_head",
                         "conv_{}", what="box head", last="fc", setting="head_num_convs")
    c = box_head.convs[-1][0].out_channels if n_convs else box_head.fc.in_features
    res = int(round((box_head.fc.in_features / c) ** 0.5))
    rows = np.arange(c * res * res).reshape(res, res, c).transpose(2, 0, 1).reshape(-1)  # NCHW <- NHWC
    transfer.dense("roi_heads.box_head.fc", f"{r}fast_rcnn_head/fc6/", rows=rows)
    if len(bns) > n_convs:
        transfer.bn("roi_heads.box_head.fc_norm", bns[n_convs])
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    classes = list(range(num_classes))
    _predictor(transfer, "roi_heads.box_predictor.cls_score", f"{r}fast_rcnn_head/class-predict/", classes,
               per_anchor=1, swap=False, dense=True)
    _predictor(transfer, "roi_heads.box_predictor.bbox_pred", f"{r}fast_rcnn_head/box-predict/", classes,
               per_anchor=4, swap=True, dense=True)
    # Mask head: convs with bias and BN, deconv (+ BN), per-class 1x1 logits.
    n_convs = len(model.roi_heads.mask_head.convs)
    bns = _conv_bn_stack(transfer, scopes, problems, "roi_heads.mask_head", n_convs, r + "mask_head",
                         "mask-conv-l{}", what="mask head", last="deconv", setting="mask_num_convs")
    transfer.deconv("roi_heads.mask_head.deconv", f"{r}mask_head/conv5-mask/")
    if len(bns) > n_convs:
        transfer.bn("roi_heads.mask_head.deconv_norm", bns[n_convs])
    transfer.conv("roi_heads.mask_predictor", f"{r}mask_head/mask_fcn_logits/")
    return problems


def _conv_bn_stack(transfer: Transfer, scopes: dict[str, Any], problems: list[str], prefix: str, n_convs: int,
                   scope: str, conv_name: str, *, what: str, last: str, setting: str) -> list[str]:
    """Fill ``prefix.convs.{i}`` (conv with bias, BN) from ``scope/conv_name/`` and the BNs the
    checkpoint lists under ``scope`` in creation order; one more BN follows for ``last``.
    Returns the BN scopes; a count that does not fit is added to ``problems``."""
    bns = scopes.get(scope, {}).get("bn", [])
    if len(bns) != n_convs + 1:
        problems.append(f"Mask R-CNN {what}: the model has {n_convs} convs + {last} with BN, the checkpoint "
                        f"{len(bns)} BNs under {scope.rsplit('/', 1)[-1]}/ (set {setting})")
    for i in range(n_convs):
        transfer.conv(f"{prefix}.convs.{i}.0", f"{scope}/{conv_name.format(i)}/")
        if i < len(bns):
            transfer.bn(f"{prefix}.convs.{i}.1", bns[i])
    return bns


def transfer_classifier_head(model: nn.Module, transfer: Transfer, *, codebase: str, names: set[str]) -> list[str]:
    """Fill the classifier's linear layer from tensorflow/tpu ``classification_head/dense``."""
    r = _root(names, ("classification_head/dense/kernel",), "classification_head/")
    if codebase != "tpu" or r is None:
        return ["classifier: no tensorflow/tpu 'classification_head/dense/kernel' in the checkpoint"]
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        return [f"classifier: {type(model).__name__} has no linear layer 'fc' (num_classes=0?)"]
    extra = [n for n in names if n.startswith(r + "classification_head/") and "/dense/" not in n]
    if extra:  # endpoints_num_filters > 0 adds a conv + BN the torchspine classifier does not have
        return [f"classifier: the checkpoint's head has an embedding conv ({sorted(extra)[:2]}); torchspine "
                f"classifiers pool the endpoints directly (tensorflow/tpu endpoints_num_filters: 0)"]
    transfer.dense("fc", r + "classification_head/dense/")
    return []
