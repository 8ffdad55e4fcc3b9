"""Mask R-CNN with a SpineNet backbone, on torchvision's ``MaskRCNN`` (paper sections 4.1, 6).

Layout of the official SpineNet Mask R-CNN (tensorflow/tpu ``heads.RpnHead``,
``FastrcnnHead``, ``MaskrcnnHead`` with ``use_batch_norm``; 4 convs + 1 fc box head as in the
SpineNet yamls). The per-component parameter counts below reproduce the official totals
**exactly** (40,753,521 / 55,185,009 / 79,169,649 for 49 / 96 / 143 with 91 classes):

* RPN over P3..P7: one 3x3 conv (bias) shared across levels, **per-level BN**, act, then
  1x1 objectness (A) and 1x1 box (4A) convs; A = 3 (one scale, aspect ratios {0.5, 1, 2}).
  590,080 + 5 x 512 + 771 + 3,084 = 596,495 parameters.
* RoIAlign 7x7 on P3..P7 (level from the box size, canonical level 4 at 224 px, as official).
* Box head: 4 x (3x3 conv with bias, BN, act), flatten, fc 12,544 -> 1,024 (bias), BN, act;
  predictor fc 1,024 -> 91 classes and 1,024 -> 4 x 91 class-specific boxes.
  4 x 590,592 + 12,846,080 + 2,048 + 93,275 + 373,100 = 15,676,871 parameters.
* RoIAlign 14x14; mask head: 4 x (3x3 conv with bias, BN, act), 2x2/2 deconv (bias), BN, act,
  1x1 conv to 91 classes (28x28 masks). 4 x 590,592 + 262,400 + 512 + 23,387 = 2,648,667.

Heads total 18,922,033; plus backbone with endpoints 21,831,488 (49) = 40,753,521.

The RPN head and the conv/fc/mask heads are written here because torchvision's ``RPNHead``
has no normalisation (let alone per level) and its ``FastRCNNConvFCHead`` / ``MaskRCNNHeads``
drop the conv bias when a norm is given and put no BN after the fc or the deconv.
Proposal, sampling, box-coder and NMS settings are torchvision's defaults, which equal the
official ones (2000/1000 proposals train/test, RPN IoU 0.7/0.3 with 256 samples, RoI
512 samples at 25 % foreground, box weights (10, 10, 5, 5), score 0.05, NMS 0.5, 100 boxes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from torchspine.layers.conv import create_act, create_norm
from torchspine.models.detection.anchors import SpineNetAnchorGenerator
from torchspine.models.backbone import SpineNet
from torchspine.models.registry import register_model
from torchspine.models.detection.retinanet import detector_backbone, split_detector_kwargs
from torchspine.models.detection.transform import DetectionTransform, ResizeMode
from torchspine.specs.spec import CODEBASE_FLAVORS, NormSpec

__all__ = ["MASKRCNN_PRESETS", "MaskRCNNPreset", "SpineNetMaskRCNN", "RPNHeadPerLevelBN", "ConvFCBoxHead",
           "MaskHead"]


@dataclass(frozen=True)
class MaskRCNNPreset:
    """Official per-model Mask R-CNN settings (TPU yamls, reference section 8)."""

    image_size: int
    anchor_size: float


MASKRCNN_PRESETS: dict[str, MaskRCNNPreset] = {
    "49s": MaskRCNNPreset(640, 3.0),
    "49": MaskRCNNPreset(640, 3.0),
    "96": MaskRCNNPreset(1024, 3.0),
    "143": MaskRCNNPreset(1280, 4.0),
    "190": MaskRCNNPreset(1536, 5.0),
}

MASKRCNN_KEYS = frozenset({
    "num_classes", "image_size", "resize_mode", "size_divisible", "anchor_size", "num_scales", "aspect_ratios", "rpn_num_filters",
    "head_num_filters", "head_num_convs", "fc_dims", "mask_num_convs", "score_thresh", "nms_thresh",
    "detections_per_img", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
})


def _conv_bn_act(in_channels: int, out_channels: int, *, norm: NormSpec, act: str) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)  # with bias, as the official heads
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, create_norm(out_channels, norm), create_act(act))


class RPNHeadPerLevelBN(nn.Module):
    """RPN head: shared 3x3 conv, per-level BN + act, 1x1 objectness and box convs."""

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
        convs = []
        for i in range(num_convs):
            convs.append(_conv_bn_act(in_channels if i == 0 else num_filters, num_filters, norm=norm, act=act))
        self.convs = nn.Sequential(*convs)
        flat = (num_filters if num_convs else in_channels) * resolution * resolution
        self.fc = nn.Linear(flat, fc_dims)
        self.fc_norm = nn.BatchNorm1d(fc_dims, eps=norm.epsilon, momentum=1.0 - norm.momentum)
        self.act = create_act(act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs(x).flatten(1)  # (R, C*7*7)
        return self.act(self.fc_norm(self.fc(x)))


class MaskHead(nn.Module):
    """Mask head body: ``num_convs`` x (3x3 conv + BN + act), 2x2/2 deconv + BN + act."""

    def __init__(self, in_channels: int, *, num_convs: int = 4, num_filters: int = 256,
                 norm: NormSpec = NormSpec(), act: str = "relu") -> None:
        super().__init__()
        convs = []
        for i in range(num_convs):
            convs.append(_conv_bn_act(in_channels if i == 0 else num_filters, num_filters, norm=norm, act=act))
        self.convs = nn.Sequential(*convs)
        self.deconv = nn.ConvTranspose2d(num_filters, num_filters, 2, stride=2)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        self.deconv_norm = create_norm(num_filters, norm)
        self.act = create_act(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.deconv_norm(self.deconv(self.convs(x))))


class SpineNetMaskRCNN(MaskRCNN):
    """torchvision ``MaskRCNN`` with a SpineNet backbone and the official head layout.

    Same interface as torchvision's ``MaskRCNN``: train mode returns the five losses, eval
    mode ``[{"boxes", "labels", "scores", "masks"}]`` in the input images' coordinates.
    """

    def __init__(
        self,
        backbone: SpineNet,
        num_classes: int = 91,
        *,
        image_size: int = 640,
        resize_mode: ResizeMode = "square",
        size_divisible: int = 128,
        anchor_size: float = 3.0,
        num_scales: int = 1,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_num_filters: int = 256,
        head_num_filters: int = 256,
        head_num_convs: int = 4,
        fc_dims: int = 1024,
        mask_num_convs: int = 4,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        spec = backbone.spec
        channels = set(backbone.out_channels.values())
        if len(channels) != 1:
            raise ValueError(f"Mask R-CNN needs equal channels on every level, got {backbone.out_channels}")
        in_channels = channels.pop()
        names = list(backbone.out_channels)
        num_levels = len(names)
        norm, act = spec.norm, spec.activation
        anchors = SpineNetAnchorGenerator(spec.min_level, spec.max_level, anchor_size=anchor_size,
                                          num_scales=num_scales, aspect_ratios=tuple(aspect_ratios))
        rpn_head = RPNHeadPerLevelBN(in_channels, anchors.num_anchors_per_location()[0], num_levels=num_levels,
                                     num_filters=rpn_num_filters, norm=norm, act=act)
        box_head = ConvFCBoxHead(in_channels, 7, num_convs=head_num_convs, num_filters=head_num_filters,
                                 fc_dims=fc_dims, norm=norm, act=act)
        box_predictor = FastRCNNPredictor(fc_dims, num_classes)
        nn.init.normal_(box_predictor.cls_score.weight, std=0.01)
        nn.init.zeros_(box_predictor.cls_score.bias)
        nn.init.normal_(box_predictor.bbox_pred.weight, std=0.001)
        nn.init.zeros_(box_predictor.bbox_pred.bias)
        mask_head = MaskHead(in_channels, num_convs=mask_num_convs, num_filters=head_num_filters, norm=norm, act=act)
        mask_predictor = nn.Conv2d(head_num_filters, num_classes, 1)
        nn.init.normal_(mask_predictor.weight, std=0.001)
        nn.init.zeros_(mask_predictor.bias)
        super().__init__(
            backbone, None, min_size=image_size, max_size=image_size,
            rpn_anchor_generator=anchors, rpn_head=rpn_head,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=MultiScaleRoIAlign(names, 7, sampling_ratio=2), box_head=box_head,
            box_predictor=box_predictor, box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
            box_detections_per_img=detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(names, 14, sampling_ratio=2), mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.transform = DetectionTransform(image_size, resize_mode=resize_mode, size_divisible=size_divisible)
        self.num_classes = num_classes
        self.image_size = int(image_size)
        self._roi_channels = in_channels

    def forward_dense(self, x: Tensor, *, num_proposals: int = 1000, num_detections: int = 100) -> dict[str, Tensor]:
        """The network's dense work without sampling or NMS, for multiply-add counting: backbone,
        RPN head, box head on ``num_proposals`` RoIs (paper Table 5: 1000 proposals) and mask head
        on ``num_detections`` RoIs (placeholder RoI features; the RoIAlign itself has no MACs)."""
        features = self.backbone(x)
        objectness, deltas = self.rpn.head(list(features.values()))
        c = self._roi_channels
        box_feats = x.new_zeros((num_proposals, c, 7, 7))
        scores, boxes = self.roi_heads.box_predictor(self.roi_heads.box_head(box_feats))
        mask_feats = x.new_zeros((num_detections, c, 14, 14))
        masks = self.roi_heads.mask_predictor(self.roi_heads.mask_head(mask_feats))
        return {"objectness": objectness[0], "scores": scores, "boxes": boxes, "masks": masks}


def _maskrcnn(model_id: str, *, spec: Any = None, **kwargs: Any) -> SpineNetMaskRCNN:
    """The preset's detector; ``spec`` (object, dict, genome or JSON path) replaces its backbone spec."""
    det, spec_overrides = split_detector_kwargs(kwargs, MASKRCNN_KEYS)
    preset = MASKRCNN_PRESETS[model_id]
    settings: dict[str, Any] = dict(image_size=preset.image_size, anchor_size=preset.anchor_size)
    settings.update(det)
    # Official Mask R-CNN SpineNet yamls: BN momentum 0.99, epsilon 1e-3 (reference section 7).
    # (the Model Garden values of the codebase table).
    spec_overrides.setdefault("momentum", CODEBASE_FLAVORS["mg"]["momentum"])
    spec_overrides.setdefault("epsilon", CODEBASE_FLAVORS["mg"]["epsilon"])
    backbone = detector_backbone(model_id, spec, spec_overrides)
    if spec is not None:
        kwargs = dict(kwargs, spec=backbone.spec.to_dict())
    model = SpineNetMaskRCNN(backbone, **settings)
    model.config = OrderedDict(name=f"maskrcnn_spinenet{model_id}", **kwargs)
    return model


def _register(model_id: str) -> None:
    def builder(**kwargs: Any) -> SpineNetMaskRCNN:
        return _maskrcnn(model_id, **kwargs)

    preset = MASKRCNN_PRESETS[model_id]
    builder.__name__ = f"maskrcnn_spinenet{model_id}"
    builder.__doc__ = (f"Mask R-CNN-SpineNet-{model_id.upper()} (official layout, {preset.image_size} px, RPN anchor "
                       f"size {preset.anchor_size:g}). Keywords: detector settings (see SpineNetMaskRCNN) or "
                       f"SpineNet spec fields.")
    register_model(builder, task="instance_segmentation", preset=model_id, input_size=preset.image_size)


for _id in MASKRCNN_PRESETS:
    _register(_id)


@register_model(task="instance_segmentation")
def maskrcnn_spinenet(spec: Any, *, preset: str = "49", **kwargs: Any) -> SpineNetMaskRCNN:
    """A Mask R-CNN on any backbone spec (a search result, JSON path or genome), with the
    detector settings of ``preset`` (head, anchors, image size): ``create_model("maskrcnn_spinenet", spec="best.json")``."""
    if preset not in MASKRCNN_PRESETS:
        raise ValueError(f"preset {preset!r} unknown; expected one of {sorted(MASKRCNN_PRESETS)}")
    return _maskrcnn(preset, spec=spec, **kwargs)
