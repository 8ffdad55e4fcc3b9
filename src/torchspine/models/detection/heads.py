"""Every detector head: the RetinaNet head (plain or separable) and the Mask R-CNN heads.

RetinaNet (tensorflow/tpu models/official/detection/modeling/architecture/heads.py
``RetinanetHead``; Model Garden ``RetinaNetHead``):

* separate class and box towers of ``num_convs`` 3x3 convs (with bias) whose weights are
  **shared across levels**, each followed by a **per-level** BatchNorm and the activation;
* tower convs N(0, 0.01) with zero bias; predictors N(0, 1e-5); class bias
  ``-log((1 - 0.01) / 0.01)`` so every initial class probability is 0.01;
* ``separable=True`` (SpineNet-Mobile, paper Appendix A, official ``use_separable_conv``):
  every tower conv and both predictors are :class:`~torchspine.layers.conv.SeparableConv2d`
  (depthwise 3x3 + pointwise 1x1 with bias, Keras default init), towers and per-level BN kept;
* outputs laid out anchor-major, class-minor per location (``[H, W, A * C] -> [-1, A, C]``).

Losses (tensorflow/tpu models/official/detection/modeling/losses.py ``RetinanetClassLoss`` /
``RetinanetBoxLoss``): sigmoid focal loss (alpha 0.25, gamma 1.5) summed over all anchors of
the batch, Huber loss (delta 0.1) summed over the positive anchors' four box deltas; both
normalised by the number of positive anchors in the batch plus one (times four for boxes);
the box loss is scaled by ``box_loss_weight`` (50) so that ``sum(losses.values())`` is the
official total loss.

Mask R-CNN (same heads.py: ``RpnHead``, ``FastrcnnHead``, ``MaskrcnnHead`` with
``use_batch_norm``): :class:`RPNHeadPerLevelBN` (one 3x3 conv shared across levels, BN per
level, 1x1 objectness and box convs), :class:`ConvFCBoxHead` (convs + BN, one fc + BN) with
:func:`box_predictor`, :class:`MaskHead` (convs + BN, 2x2/2 deconv + BN) with
:func:`mask_predictor`. Conv and deconv kernels of the box and mask heads are
variance-scaling (scale 2, fan_out, normal), RPN kernels N(0, 0.01), box predictors
N(0, 0.01) / N(0, 0.001), all biases zero, as in that file.

Written instead of torchvision's heads because its ``RetinaNetHead`` has one BN (or none)
shared by all levels, a 0.01 predictor init, L1 box loss and per-image normalisation; its
``RPNHead`` has no normalisation; its ``FastRCNNConvFCHead`` / ``MaskRCNNHeads`` drop the conv
bias when a norm is given and put no BN after the fc or the deconv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import sigmoid_focal_loss

from torchspine.layers.conv import SeparableConv2d, create_act, create_norm
from torchspine.specs.spec import NormSpec

__all__ = ["ConvFCBoxHead", "pyramid_width", "MaskHead", "RPNHeadPerLevelBN", "RetinaNetHead", "SharedConvTower", "box_predictor",
           "mask_predictor"]


def pyramid_width(backbone: nn.Module, detector: str) -> int:
    """The one channel width of every pyramid level, which heads shared across levels need."""
    widths = set(backbone.out_channels.values())
    if len(widths) != 1:
        raise ValueError(f"{detector} needs equal channels on every level, got {backbone.out_channels}")
    return widths.pop()


class SharedConvTower(nn.Module):
    """``num_convs`` x (3x3 conv shared across levels -> BN of this level -> act); the convs are
    :class:`~torchspine.layers.conv.SeparableConv2d` when ``separable``."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_levels: int, *, norm: NormSpec,
                 act: str, separable: bool = False) -> None:
        super().__init__()
        self.separable = separable
        if separable:
            self.convs = nn.ModuleList(SeparableConv2d(in_channels if i == 0 else channels, channels)
                                       for i in range(num_convs))
        else:
            self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
                                       for i in range(num_convs))
            for conv in self.convs:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
        # norms[level_index][conv_index]
        self.norms = nn.ModuleList(
            nn.ModuleList(create_norm(channels, norm) for _ in range(num_convs)) for _ in range(num_levels)
        )
        self.act = create_act(act)
        self.fused: nn.ModuleList | None = None  # per-level conv+BN folds, see fold_batch_norms_

    def _fold(self, conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
        if self.separable:  # BN follows the pointwise conv: fold it there, keep the depthwise
            return nn.Sequential(conv.depthwise, fuse_conv_bn_eval(conv.pointwise, bn))
        return fuse_conv_bn_eval(conv, bn)

    def fold_batch_norms_(self) -> int:
        """Inference only: fold each level's BNs into per-level copies of the shared convs.

        Exact up to rounding (BN in eval mode is affine); the generic folder in
        :mod:`torchspine.models.optimize` cannot do this because the convs are shared.
        Returns the number of folded (conv, BN) pairs.
        """
        if self.training:
            raise ValueError("fold_batch_norms_ needs an eval-mode head")
        if self.fused is not None or next(self.convs[0].parameters()).is_meta:
            return 0
        self.fused = nn.ModuleList(
            nn.ModuleList(self._fold(conv, bn) for conv, bn in zip(self.convs, norms)) for norms in self.norms
        )
        return len(self.convs) * len(self.norms)

    def forward(self, x: Tensor, level_index: int) -> Tensor:
        if self.fused is not None:
            for conv in self.fused[level_index]:
                x = self.act(conv(x))
            return x
        norms = self.norms[level_index]
        for conv, bn in zip(self.convs, norms):
            x = self.act(bn(conv(x)))
        return x


class RetinaNetHead(nn.Module):
    """Class and box subnets with shared convs and per-level BN (see module docstring).

    Args:
        in_channels: channels of every pyramid level (``endpoints_num_filters``).
        num_anchors: anchors per location (``num_scales * len(aspect_ratios)``).
        num_classes: class outputs per anchor (91 for COCO ids, background 0 unused).
        num_levels: pyramid levels (5 for P3..P7).
        num_filters, num_convs: tower width and depth (4x128 49S, 4x256 49-143, 7x512 190).
        norm, act: BatchNorm settings and activation (the backbone's).
        prior_probability: initial foreground probability of every class.
        focal_alpha, focal_gamma, huber_delta, box_loss_weight: loss settings.
        separable: separable tower convs and predictors (SpineNet-Mobile's head).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        num_levels: int = 5,
        num_filters: int = 256,
        num_convs: int = 4,
        norm: NormSpec = NormSpec(),
        act: str = "relu",
        prior_probability: float = 0.01,
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        huber_delta: float = 0.1,
        box_loss_weight: float = 50.0,
        separable: bool = False,
    ) -> None:
        super().__init__()
        if num_convs < 1 or num_filters < 1:
            raise ValueError(f"RetinaNet head: num_convs ({num_convs}) and num_filters ({num_filters}) must be >= 1")
        if not 0.0 < prior_probability < 1.0:
            raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_levels = num_levels
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.huber_delta = huber_delta
        self.box_loss_weight = box_loss_weight
        self.separable = separable
        # The first tower conv maps in_channels -> num_filters (official: equal in every config).
        tower = dict(norm=norm, act=act, separable=separable)
        self.cls_tower = SharedConvTower(in_channels, num_filters, num_convs, num_levels, **tower)
        self.box_tower = SharedConvTower(in_channels, num_filters, num_convs, num_levels, **tower)
        class_bias = -math.log((1 - prior_probability) / prior_probability)
        if separable:
            self.cls_logits: nn.Module = SeparableConv2d(num_filters, num_anchors * num_classes)
            self.bbox_reg: nn.Module = SeparableConv2d(num_filters, num_anchors * 4)
            nn.init.constant_(self.cls_logits.pointwise.bias, class_bias)
        else:
            self.cls_logits = nn.Conv2d(num_filters, num_anchors * num_classes, 3, padding=1)
            self.bbox_reg = nn.Conv2d(num_filters, num_anchors * 4, 3, padding=1)
            nn.init.normal_(self.cls_logits.weight, std=1e-5)
            nn.init.constant_(self.cls_logits.bias, class_bias)
            nn.init.normal_(self.bbox_reg.weight, std=1e-5)
            nn.init.zeros_(self.bbox_reg.bias)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    @staticmethod
    def _flatten(x: Tensor, k: int) -> Tensor:
        n, _, h, w = x.shape
        # (N, A*K, H, W) -> (N, A, K, H, W) -> (N, H, W, A, K) -> (N, HWA, K)
        return x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)

    def forward_levels(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw per-level maps: class logits ``(N, A*C, H, W)`` and box deltas ``(N, A*4, H, W)``."""
        if len(features) != self.num_levels:
            raise ValueError(f"RetinaNet head: expected {self.num_levels} feature maps, got {len(features)}")
        cls_maps, box_maps = [], []
        for i, f in enumerate(features):
            cls_maps.append(self.cls_logits(self.cls_tower(f, i)))
            box_maps.append(self.bbox_reg(self.box_tower(f, i)))
        return cls_maps, box_maps

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        cls_maps, box_maps = self.forward_levels(features)
        return {
            "cls_logits": torch.cat([self._flatten(c, self.num_classes) for c in cls_maps], dim=1),
            "bbox_regression": torch.cat([self._flatten(b, 4) for b in box_maps], dim=1),
        }

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        """Official losses, normalised by the batch's positive anchors + 1 (module docstring)."""
        cls_logits = head_outputs["cls_logits"].float()
        bbox_regression = head_outputs["bbox_regression"].float()
        num_pos = sum(int((m >= 0).sum()) for m in matched_idxs)
        normalizer = float(num_pos) + 1.0
        cls_total = cls_logits.new_zeros(())
        box_total = cls_logits.new_zeros(())
        for tgt, logits, deltas, anc, matched in zip(targets, cls_logits, bbox_regression, anchors, matched_idxs):
            fg = matched >= 0
            gt_classes = torch.zeros_like(logits)
            labels = tgt["labels"][matched[fg]]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"target labels must be in [0, {self.num_classes}), got "
                                 f"min {int(labels.min())} max {int(labels.max())}")
            gt_classes[fg, labels] = 1.0
            valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
            cls_total = cls_total + sigmoid_focal_loss(
                logits[valid], gt_classes[valid], alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
            if fg.any():
                target_deltas = self.box_coder.encode_single(tgt["boxes"][matched[fg]], anc[fg])
                box_total = box_total + F.huber_loss(deltas[fg], target_deltas, delta=self.huber_delta,
                                                     reduction="sum")
        return {
            "classification": cls_total / normalizer,
            "bbox_regression": self.box_loss_weight * box_total / (4.0 * normalizer),
        }


# ------------------------------------------------------------------------------ Mask R-CNN
def _init_fan_out_(conv: nn.Module) -> None:
    """Variance scaling, scale 2, fan_out, normal: the box / mask head convs and deconv."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(conv.bias)


def _conv_bn_act(in_channels: int, out_channels: int, *, norm: NormSpec, act: str) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)  # with bias, as the official heads
    _init_fan_out_(conv)
    return nn.Sequential(conv, create_norm(out_channels, norm), create_act(act))


def _conv_stack(in_channels: int, num_convs: int, num_filters: int, *, norm: NormSpec, act: str) -> nn.Sequential:
    return nn.Sequential(*(_conv_bn_act(in_channels if i == 0 else num_filters, num_filters, norm=norm, act=act)
                           for i in range(num_convs)))


class RPNHeadPerLevelBN(nn.Module):
    """RPN head: one 3x3 conv shared across levels, per-level BN + act, 1x1 objectness and box
    convs (official ``RpnHead``, which builds one conv whatever its ``num_convs``)."""

    def __init__(self, in_channels: int, num_anchors: int, *, num_levels: int, num_filters: int = 256,
                 norm: NormSpec = NormSpec(), act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_filters, 3, padding=1)
        self.norms = nn.ModuleList(create_norm(num_filters, norm) for _ in range(num_levels))
        self.act = create_act(act)
        self.cls_logits = nn.Conv2d(num_filters, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(num_filters, num_anchors * 4, 1)
        for conv in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if len(features) != len(self.norms):
            raise ValueError(f"RPN head: expected {len(self.norms)} feature maps, got {len(features)}")
        logits, deltas = [], []
        for f, bn in zip(features, self.norms):
            t = self.act(bn(self.conv(f)))
            logits.append(self.cls_logits(t))  # (N, A, H, W)
            deltas.append(self.bbox_pred(t))  # (N, 4A, H, W)
        return logits, deltas


class ConvFCBoxHead(nn.Module):
    """Box head: ``num_convs`` x (3x3 conv + BN + act), flatten, fc + BN + act."""

    def __init__(self, in_channels: int, resolution: int, *, num_convs: int = 4, num_filters: int = 256,
                 fc_dims: int = 1024, norm: NormSpec = NormSpec(), act: str = "relu") -> None:
        super().__init__()
        self.convs = _conv_stack(in_channels, num_convs, num_filters, norm=norm, act=act)
        flat = (num_filters if num_convs else in_channels) * resolution * resolution
        self.fc = nn.Linear(flat, fc_dims)
        nn.init.xavier_uniform_(self.fc.weight)  # tf.layers.dense defaults
        nn.init.zeros_(self.fc.bias)
        self.fc_norm = nn.BatchNorm1d(fc_dims, eps=norm.epsilon, momentum=1.0 - norm.momentum)
        self.act = create_act(act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x).flatten(1)  # (R, C*7*7)
        return self.act(self.fc_norm(self.fc(x)))


def box_predictor(fc_dims: int, num_classes: int) -> FastRCNNPredictor:
    """torchvision's class + class-specific box fcs, official init N(0, 0.01) / N(0, 0.001)."""
    predictor = FastRCNNPredictor(fc_dims, num_classes)
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return predictor


class MaskHead(nn.Module):
    """Mask head body: ``num_convs`` x (3x3 conv + BN + act), 2x2/2 deconv + BN + act."""

    def __init__(self, in_channels: int, *, num_convs: int = 4, num_filters: int = 256,
                 norm: NormSpec = NormSpec(), act: str = "relu") -> None:
        super().__init__()
        self.convs = _conv_stack(in_channels, num_convs, num_filters, norm=norm, act=act)
        self.deconv = nn.ConvTranspose2d(num_filters, num_filters, 2, stride=2)
        _init_fan_out_(self.deconv)
        self.deconv_norm = create_norm(num_filters, norm)
        self.act = create_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.deconv_norm(self.deconv(self.convs(x))))


def mask_predictor(num_filters: int, num_classes: int) -> nn.Conv2d:
    """1x1 conv to one mask logit map per class (official ``mask_fcn_logits``)."""
    conv = nn.Conv2d(num_filters, num_classes, 1)
    _init_fan_out_(conv)
    return conv
