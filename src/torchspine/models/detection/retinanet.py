"""RetinaNet with a SpineNet backbone, on torchvision's ``RetinaNet`` (paper sections 4.1, 5.1).

The pieces plugged into torchvision's detector (reference section 8):

* backbone: :class:`~torchspine.models.backbone.SpineNet` (P3..P7, ``endpoints_num_filters``);
* head: :class:`~torchspine.models.detection.heads.RetinaNetHead` (shared convs, per-level BN, official
  init, focal + Huber losses);
* anchors: :class:`~torchspine.models.detection.anchors.SpineNetAnchorGenerator` (anchor size 3 or 4,
  3 scales per octave, aspect ratios {0.5, 1, 2});
* matching at IoU 0.5 / 0.5 (torchvision's ``Matcher`` with low-quality matches, the analogue
  of the official ``force_match_for_each_row``);
* transform: :class:`~torchspine.models.detection.transform.DetectionTransform` (long side to
  ``image_size``, zero-pad to a square).

Per-model settings (``DETECTOR_PRESETS``): image size 640 / 640 / 1024 / 1280 / 1280, head
4x128 (49S), 4x256 (49, 96, 143), 7x512 (190), anchor size 3 (<= 96) or 4 (143, 190).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.ops import boxes as box_ops

from torchspine.models.detection.anchors import SpineNetAnchorGenerator
from torchspine.models.backbone import SpineNet
from torchspine.models.detection.heads import RetinaNetHead
from torchspine.models.registry import register_model
from torchspine.models.detection.transform import DetectionTransform, ResizeMode
from torchspine.specs.spec import SpineNetSpec
from torchspine.specs.zoo import spinenet_spec

__all__ = ["DETECTOR_PRESETS", "DetectorPreset", "SpineNetRetinaNet", "split_detector_kwargs"]


@dataclass(frozen=True)
class DetectorPreset:
    """Official per-model detector settings (TPU yamls, paper section 4.1, reference section 8)."""

    image_size: int
    head_num_filters: int
    head_num_convs: int
    anchor_size: float


DETECTOR_PRESETS: dict[str, DetectorPreset] = {
    "49s": DetectorPreset(640, 128, 4, 3.0),
    "49": DetectorPreset(640, 256, 4, 3.0),
    "96": DetectorPreset(1024, 256, 4, 3.0),
    "143": DetectorPreset(1280, 256, 4, 4.0),
    "190": DetectorPreset(1280, 512, 7, 4.0),
}

RETINANET_KEYS = frozenset({
    "num_classes", "image_size", "resize_mode", "size_divisible", "head_num_filters", "head_num_convs", "anchor_size", "num_scales",
    "aspect_ratios", "focal_alpha", "focal_gamma", "huber_delta", "box_loss_weight", "prior_probability",
    "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates", "fg_iou_thresh", "bg_iou_thresh",
})


def split_detector_kwargs(kwargs: dict[str, Any], keys: frozenset[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(detector settings, backbone spec overrides)``; unknown spec fields fail in ``spec.replace``."""
    det = {k: v for k, v in kwargs.items() if k in keys}
    spec = {k: v for k, v in kwargs.items() if k not in keys}
    return det, spec


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
        head_num_filters, head_num_convs: head tower width and depth.
        anchor_size, num_scales, aspect_ratios: anchor settings.
        focal_alpha, focal_gamma, huber_delta, box_loss_weight, prior_probability: loss / init.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: post-processing.
        fg_iou_thresh, bg_iou_thresh: anchor matching thresholds (official 0.5 / 0.5).
    """

    def __init__(
        self,
        backbone: SpineNet,
        num_classes: int = 91,
        *,
        image_size: int = 640,
        resize_mode: ResizeMode = "square",
        size_divisible: int = 128,
        head_num_filters: int = 256,
        head_num_convs: int = 4,
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
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        spec = backbone.spec
        channels = set(backbone.out_channels.values())
        if len(channels) != 1:
            raise ValueError(f"RetinaNet needs equal channels on every level, got {backbone.out_channels}")
        anchors = SpineNetAnchorGenerator(spec.min_level, spec.max_level, anchor_size=anchor_size,
                                          num_scales=num_scales, aspect_ratios=tuple(aspect_ratios))
        head = RetinaNetHead(
            channels.pop(), anchors.num_anchors_per_location()[0], num_classes,
            num_levels=spec.max_level - spec.min_level + 1, num_filters=head_num_filters,
            num_convs=head_num_convs, norm=spec.norm, act=spec.activation, prior_probability=prior_probability,
            focal_alpha=focal_alpha, focal_gamma=focal_gamma, huber_delta=huber_delta,
            box_loss_weight=box_loss_weight,
        )
        super().__init__(
            backbone, num_classes, min_size=image_size, max_size=image_size, anchor_generator=anchors, head=head,
            score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
            fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh, topk_candidates=topk_candidates,
        )
        self.transform = DetectionTransform(image_size, resize_mode=resize_mode, size_divisible=size_divisible)
        self.num_classes = num_classes
        self.image_size = int(image_size)

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per level: the ``topk_candidates`` best (anchor, class) logits, those with a score above
        ``score_thresh``, decoded and clipped; then class-wise NMS over all levels and the best
        ``detections_per_img``. Class 0 is background (as in the official code, where COCO ids
        start at 1) and never reported.

        Same result as torchvision's ``RetinaNet.postprocess_detections`` (which thresholds
        first, then takes the top-k), but rewritten to take the top-k on the raw logits first
        (the sigmoid is monotonic), as the official post-processing does: torchvision applies a
        sigmoid, a comparison and a ``nonzero`` to every one of the H*W*A*C scores (3.9M at P3
        for a 480x640 image), which costs as much as several head convolutions.
        """
        detections: list[dict[str, Tensor]] = []
        for index, image_shape in enumerate(image_shapes):
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
                boxes_all.append(box_ops.clip_boxes_to_image(boxes, image_shape))
                scores_all.append(scores)
                labels_all.append(labels)
            boxes = torch.cat(boxes_all)
            scores = torch.cat(scores_all)
            labels = torch.cat(labels_all)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections

    def forward_dense(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone + head on an already normalised batch ``(N, 3, H, W)``: raw head outputs
        (``cls_logits (N, HWA, C)``, ``bbox_regression (N, HWA, 4)``), no transform or NMS.
        Used for multiply-add counting and export."""
        return self.head(list(self.backbone(x).values()))


def detector_backbone(model_id: str, spec: Any, spec_overrides: dict[str, Any]) -> SpineNet:
    """The preset's SpineNet (or ``spec``: object, dict, genome or JSON path), with overrides."""
    base = spinenet_spec(model_id) if spec is None else SpineNetSpec.coerce(spec)
    return SpineNet(base.replace(**spec_overrides) if spec_overrides else base)


def _retinanet(model_id: str, *, spec: Any = None, **kwargs: Any) -> SpineNetRetinaNet:
    """The preset's detector; ``spec`` (object, dict, genome or JSON path) replaces its backbone spec."""
    det, spec_overrides = split_detector_kwargs(kwargs, RETINANET_KEYS)
    preset = DETECTOR_PRESETS[model_id]
    settings: dict[str, Any] = dict(image_size=preset.image_size, head_num_filters=preset.head_num_filters,
                                    head_num_convs=preset.head_num_convs, anchor_size=preset.anchor_size)
    settings.update(det)
    backbone = detector_backbone(model_id, spec, spec_overrides)
    if spec is not None:
        kwargs = dict(kwargs, spec=backbone.spec.to_dict())
    model = SpineNetRetinaNet(backbone, **settings)
    model.config = OrderedDict(name=f"retinanet_spinenet{model_id}", **kwargs)  # how to rebuild it
    return model


def _register(model_id: str) -> None:
    def builder(**kwargs: Any) -> SpineNetRetinaNet:
        return _retinanet(model_id, **kwargs)

    preset = DETECTOR_PRESETS[model_id]
    builder.__name__ = f"retinanet_spinenet{model_id}"
    builder.__doc__ = (f"RetinaNet-SpineNet-{model_id.upper()} (official settings: {preset.image_size} px, head "
                       f"{preset.head_num_convs}x{preset.head_num_filters}, anchor size {preset.anchor_size:g}). "
                       f"Keywords: detector settings (see SpineNetRetinaNet) or SpineNet spec fields.")
    register_model(builder, task="detector", preset=model_id, input_size=preset.image_size)


for _id in DETECTOR_PRESETS:
    _register(_id)


@register_model(task="detector")
def retinanet_spinenet(spec: Any, *, preset: str = "49", **kwargs: Any) -> SpineNetRetinaNet:
    """A RetinaNet on any backbone spec (a search result, JSON path or genome), with the
    detector settings of ``preset`` (head, anchors, image size): ``create_model("retinanet_spinenet", spec="best.json")``."""
    if preset not in DETECTOR_PRESETS:
        raise ValueError(f"preset {preset!r} unknown; expected one of {sorted(DETECTOR_PRESETS)}")
    return _retinanet(preset, spec=spec, **kwargs)
