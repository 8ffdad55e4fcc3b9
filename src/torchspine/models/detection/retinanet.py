"""RetinaNet with a SpineNet backbone, on torchvision's ``RetinaNet`` (paper sections 4.1, 5.1).

The parts plugged into torchvision's detector (tensorflow/tpu
models/official/detection/modeling/retinanet_model.py and the SpineNet RetinaNet configs):

* backbone: :class:`~torchspine.models.backbone.SpineNet` (P3..P7, ``endpoints_num_filters``);
* head: :class:`~torchspine.models.detection.heads.RetinaNetHead` (shared convs, per-level BN,
  official init, focal + Huber losses; separable for SpineNet-Mobile);
* anchors: :class:`~torchspine.models.detection.anchors.SpineNetAnchorGenerator` (anchor size 3 or 4,
  3 scales per octave, aspect ratios {0.5, 1, 2});
* matching at IoU 0.5 / 0.5 (torchvision's ``Matcher`` with low-quality matches, the analogue
  of the official ``force_match_for_each_row``);
* transform: :class:`~torchspine.models.detection.transform.DetectionTransform` (long side to
  ``image_size``, zero-pad to a square);
* post-processing (``postprocess="official"``, the default): the detection generator of
  tensorflow/tpu ``ops/postprocess_ops.py`` (``MultilevelDetectionGenerator``,
  ``_generate_detections_v1``) and tensorflow/models ``official/vision/modeling/layers/
  detection_generator.py`` (``MultilevelDetectionGenerator``, the class-aware ``v2`` of the
  SpineNet RetinaNet configs): sigmoid scores without the background class, boxes decoded from
  every anchor of every level (weights 1, ``dh, dw <= log(1000 / 16)``) and clipped, then per
  class the ``pre_nms_top_k`` (5000) best anchors over all levels, those scoring above
  ``score_thresh`` (0.05), class-wise NMS at ``nms_thresh`` (0.5), and the best
  ``detections_per_img`` (100) of all classes. ``postprocess="per_level"`` is torchvision's
  RetinaNet rule (the ``topk_candidates`` best (anchor, class) pairs per level), kept for
  comparison.

As in torchvision, the head and the anchor generator may be passed in; otherwise they are
built from the settings. The per-model settings are the preset table in
:mod:`torchspine.models.detection.zoo`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Sequence

import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.ops import boxes as box_ops

from torchspine.models.backbone import SpineNet
from torchspine.models.detection.anchors import SpineNetAnchorGenerator
from torchspine.models.detection.heads import RetinaNetHead, pyramid_width
from torchspine.models.detection.transform import DetectionTransform, ResizeInterpolation, ResizeMode

__all__ = ["SpineNetRetinaNet"]

Postprocess = Literal["official", "per_level"]
ClipBoxesTo = Literal["image", "canvas"]


class SpineNetRetinaNet(RetinaNet):
    """torchvision ``RetinaNet`` with SpineNet backbone, head, anchors and transform.

    Same interface as torchvision's detectors: train mode ``model(images, targets) -> losses``
    (``{"classification", "bbox_regression"}``, already weighted: their sum is the official
    loss); eval mode ``model(images) -> [{"boxes", "labels", "scores"}]`` in each input image's
    coordinates. ``images`` is a list of ``(C, H, W)`` tensors of any size; 1- or 4-channel and
    uint8 images are converted.

    Args:
        backbone: a SpineNet.
        num_classes: classifier outputs (91 for COCO category ids 1..90, like the official code);
            class 0 is background and never reported.
        image_size: target long side; images are resized and padded per ``resize_mode``.
        resize_mode, size_divisible: see :class:`~torchspine.models.detection.transform.DetectionTransform`.
        anchor_generator: the anchors (default: a :class:`SpineNetAnchorGenerator` from
            ``anchor_size``, ``num_scales``, ``aspect_ratios``).
        head: the head (default: a :class:`RetinaNetHead` from the ``head_*``, loss and init settings).
        head_num_filters, head_num_convs: head tower width (``None``: the backbone's width) and depth.
        separable_head: separable tower convs and predictors (SpineNet-Mobile, paper Appendix A).
        anchor_size, num_scales, aspect_ratios: anchor settings.
        focal_alpha, focal_gamma, huber_delta, box_loss_weight, prior_probability: loss / init.
        score_thresh, nms_thresh, detections_per_img: post-processing (official 0.05 / 0.5 / 100).
        postprocess: ``"official"`` (per class top ``pre_nms_top_k`` over all levels, the official
            detection generators; module docstring) or ``"per_level"`` (torchvision's: the
            ``topk_candidates`` best (anchor, class) pairs of each level).
        pre_nms_top_k: candidates per class before NMS (official 5000), for ``"official"``.
        topk_candidates: candidates per level, for ``"per_level"``.
        clip_boxes_to: where boxes are clipped before NMS: ``"image"`` (the resized image,
            tensorflow/tpu: ``image_info[1]`` is the scaled size) or ``"canvas"`` (the padded
            input, ``image_size`` square; Model Garden: its ``image_info[1]`` is the desired
            size, so boxes may reach into the padding and, mapped back, past the image).
        resize_interpolation: ``"bilinear"`` (Model Garden, torchvision) or ``"bilinear_tf1"``
            (tensorflow/tpu); see :class:`~torchspine.models.detection.transform.DetectionTransform`.
        fg_iou_thresh, bg_iou_thresh: anchor matching thresholds (official 0.5 / 0.5).
    """

    PARTS: ClassVar[tuple[str, ...]] = ("anchor_generator", "head")

    def __init__(
        self,
        backbone: SpineNet,
        num_classes: int = 91,
        *,
        image_size: int = 640,
        resize_mode: ResizeMode = "square",
        size_divisible: int = 128,
        anchor_generator: SpineNetAnchorGenerator | None = None,
        head: RetinaNetHead | None = None,
        head_num_filters: int | None = 256,
        head_num_convs: int = 4,
        separable_head: bool = False,
        anchor_size: float = 3.0,
        num_scales: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        focal_alpha: float = 0.25,
        focal_gamma: float = 1.5,
        huber_delta: float = 0.1,
        box_loss_weight: float = 50.0,
        prior_probability: float = 0.01,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        postprocess: Postprocess = "official",
        pre_nms_top_k: int = 5000,
        clip_boxes_to: ClipBoxesTo = "image",
        resize_interpolation: ResizeInterpolation = "bilinear",
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if postprocess not in ("official", "per_level"):
            raise ValueError(f"postprocess {postprocess!r}: expected 'official' or 'per_level'")
        if clip_boxes_to not in ("image", "canvas"):
            raise ValueError(f"clip_boxes_to {clip_boxes_to!r}: expected 'image' or 'canvas'")
        if pre_nms_top_k < 1:
            raise ValueError(f"pre_nms_top_k must be >= 1, got {pre_nms_top_k}")
        spec = backbone.spec
        in_channels = pyramid_width(backbone, "RetinaNet")
        if anchor_generator is None:
            anchor_generator = SpineNetAnchorGenerator(spec.min_level, spec.max_level, anchor_size=anchor_size,
                                                       num_scales=num_scales, aspect_ratios=tuple(aspect_ratios))
        if head is None:
            head = RetinaNetHead(
                in_channels, anchor_generator.num_anchors_per_location()[0], num_classes,
                num_levels=spec.max_level - spec.min_level + 1, num_filters=head_num_filters or in_channels,
                num_convs=head_num_convs, norm=spec.norm, act=spec.activation, prior_probability=prior_probability,
                focal_alpha=focal_alpha, focal_gamma=focal_gamma, huber_delta=huber_delta,
                box_loss_weight=box_loss_weight, separable=separable_head,
            )
        super().__init__(
            backbone, num_classes, min_size=image_size, max_size=image_size, anchor_generator=anchor_generator, head=head,
            score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh, topk_candidates=topk_candidates,
        )
        self.transform = DetectionTransform(image_size, resize_mode=resize_mode, size_divisible=size_divisible,
                                            resize_interpolation=resize_interpolation)
        self.num_classes = num_classes
        self.image_size = int(image_size)
        self.postprocess = postprocess
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.clip_boxes_to = clip_boxes_to

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Head outputs -> ``{"boxes", "scores", "labels"}`` per image, in resized-image pixels
        (``postprocess`` chooses the rule; module docstring). Class 0 is background (as in the
        official code, where COCO ids start at 1) and never reported."""
        if self.postprocess == "official":
            return [self._official_detections(head_outputs, anchors, index, shape)
                    for index, shape in enumerate(image_shapes)]
        return [self._per_level_detections(head_outputs, anchors, index, shape)
                for index, shape in enumerate(image_shapes)]

    def _clip_window(self, image_shape: tuple[int, int]) -> tuple[int, int]:
        return self.transform.canvas_size(image_shape) if self.clip_boxes_to == "canvas" else tuple(image_shape)

    def _official_candidates(self, logits: Tensor, *, by_topk: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(anchor index, class index, score) of the candidates of the official generator: per
        class the ``pre_nms_top_k`` best anchors, those scoring above ``score_thresh``.

        ``by_topk=True`` is the official order of work (tensorflow/models ``_select_top_k_scores``:
        a top-k per class over all anchors, then the threshold); it traces into an ONNX graph
        (the post-processed export) but costs about half a SpineNet-49 forward on a CPU at
        640 px (183 ms vs 28 ms for 91 classes, measured 2026-11-26). ``by_topk=False`` gives the
        same candidates (up to ties at the k-th score) the other way round: the threshold first,
        compared on the raw logits (sigmoid is monotonic), then a sort of the few survivors by
        (class, score) and a rank within each class.
        """
        t = float(self.score_thresh)
        if by_topk:
            top, anchor_idx = logits.t().topk(min(self.pre_nms_top_k, logits.shape[0]), dim=1)  # (C, k)
            scores = torch.sigmoid(top.float())
            keep = scores > t
            class_idx = torch.arange(logits.shape[1], device=logits.device)[:, None].expand_as(anchor_idx)
            return anchor_idx[keep], class_idx[keep], scores[keep]
        # A small margin below logit(t): the exact test is on the float32 sigmoid, just after.
        bound = math.log(t / (1.0 - t)) - 1e-3 if 0.0 < t < 1.0 else (float("-inf") if t <= 0 else float("inf"))
        anchor_idx, class_idx = torch.nonzero(logits > bound, as_tuple=True)
        scores = torch.sigmoid(logits[anchor_idx, class_idx].float())
        keep = scores > t
        anchor_idx, class_idx, scores = anchor_idx[keep], class_idx[keep], scores[keep]
        # Sorted by class, best score first within a class (scores are in (0, 1]).
        order = torch.sort(class_idx.double() * 2.0 - scores.double()).indices
        cls_sorted = class_idx[order]
        rank = torch.arange(cls_sorted.numel(), device=cls_sorted.device) - torch.searchsorted(cls_sorted, cls_sorted)
        order = order[rank < self.pre_nms_top_k]
        return anchor_idx[order], class_idx[order], scores[order]

    def _official_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], index: int,
                             image_shape: tuple[int, int]) -> dict[str, Tensor]:
        """The official detection generator (module docstring) for image ``index``."""
        logits = torch.cat([lv[index] for lv in head_outputs["cls_logits"]])[:, 1:]  # (N, C - 1): no background
        deltas = torch.cat([lv[index] for lv in head_outputs["bbox_regression"]])
        anchors_all = torch.cat(anchors[index]) if isinstance(anchors[index], (list, tuple)) else anchors[index]
        tracing = torch.jit.is_tracing() or torch.jit.is_scripting()
        anchor_idx, class_idx, scores = self._official_candidates(logits, by_topk=tracing)
        boxes = self.box_coder.decode_single(deltas[anchor_idx].float(), anchors_all[anchor_idx])
        boxes = box_ops.clip_boxes_to_image(boxes, self._clip_window(image_shape))
        labels = class_idx + 1
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def _per_level_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]], index: int,
                              image_shape: tuple[int, int]) -> dict[str, Tensor]:
        """Per level: the ``topk_candidates`` best (anchor, class) logits, those with a score above
        ``score_thresh``, decoded and clipped; then class-wise NMS over all levels and the best
        ``detections_per_img``.

        Same result as torchvision's ``RetinaNet.postprocess_detections`` (which thresholds
        first, then takes the top-k), but rewritten to take the top-k on the raw logits first
        (the sigmoid is monotonic): torchvision applies a sigmoid, a comparison and a
        ``nonzero`` to every one of the H*W*A*C scores (3.9M at P3 for a 480x640 image).
        """
        boxes_all, scores_all, labels_all = [], [], []
        for logits_l, deltas_l, anchors_l in zip(head_outputs["cls_logits"], head_outputs["bbox_regression"],
                                                 anchors[index]):
            logits = logits_l[index]  # (HWA, C)
            num_classes = logits.shape[-1]
            flat = logits.reshape(-1)
            top, idx = flat.topk(min(self.topk_candidates, flat.numel()))
            scores = torch.sigmoid(top.float())
            labels = idx % num_classes
            keep = (scores > self.score_thresh) & (labels != 0)
            scores, labels, idx = scores[keep], labels[keep], idx[keep]
            anchor_idx = torch.div(idx, num_classes, rounding_mode="floor")
            boxes = self.box_coder.decode_single(deltas_l[index][anchor_idx].float(), anchors_l[anchor_idx])
            boxes_all.append(box_ops.clip_boxes_to_image(boxes, self._clip_window(image_shape)))
            scores_all.append(scores)
            labels_all.append(labels)
        boxes = torch.cat(boxes_all)
        scores = torch.cat(scores_all)
        labels = torch.cat(labels_all)
        keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}

    def forward_dense(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone + head on an already normalised batch ``(N, 3, H, W)``: raw head outputs
        (``cls_logits (N, HWA, C)``, ``bbox_regression (N, HWA, 4)``), no transform or NMS.
        Used for multiply-add counting and export."""
        return self.head(list(self.backbone(x).values()))
