"""Mask R-CNN with a SpineNet backbone, on torchvision's ``MaskRCNN`` (paper sections 4.1, 6).

Layout of the official SpineNet Mask R-CNN (tensorflow/tpu
models/official/detection/modeling/architecture/heads.py ``RpnHead``, ``FastrcnnHead``,
``MaskrcnnHead`` with ``use_batch_norm``; the heads live in
:mod:`torchspine.models.detection.heads`). With the 49 / 96 / 143 settings (RPN 256 filters,
4 convs of 256 + one fc of 1,024 in the box head, 4 convs of 256 in the mask head; tensorflow/tpu
models/official/detection/configs/spinenet/spinenet{49,96,143}_mrcnn.yaml) the parameter
counts reproduce the official totals **exactly** (40,753,521 / 55,185,009 / 79,169,649 with 91
classes):

* RPN over P3..P7: one 3x3 conv (bias) shared across levels, **per-level BN**, act, then
  1x1 objectness (A) and 1x1 box (4A) convs; A = 3 (one scale, aspect ratios {0.5, 1, 2}).
  590,080 + 5 x 512 + 771 + 3,084 = 596,495 parameters.
* RoIAlign 7x7 on P3..P7 (level ``floor(4 + log2(sqrt(area) / 224))``, as official) with **one
  bilinear sample at the centre of each bin** (``roi_sampling_ratio=1``): tensorflow/tpu
  ``ops/spatial_transform_ops.py`` and tensorflow/models ``official/vision/ops/
  spatial_transform_ops.py`` ``multilevel_crop_and_resize`` (``sample_offset=0.5``), equal to
  torchvision's ``roi_align(sampling_ratio=1, aligned=False)`` (tested against Model Garden);
  torchvision's Mask R-CNN averages 2 x 2 samples.
* Box head: 4 x (3x3 conv with bias, BN, act), flatten, fc 12,544 -> 1,024 (bias), BN, act;
  predictor fc 1,024 -> 91 classes and 1,024 -> 4 x 91 class-specific boxes.
  4 x 590,592 + 12,846,080 + 2,048 + 93,275 + 373,100 = 15,676,871 parameters.
* RoIAlign 14x14 (the same sampling); mask head: 4 x (3x3 conv with bias, BN, act), 2x2/2 deconv (bias), BN, act,
  1x1 conv to 91 classes (28x28 masks). 4 x 590,592 + 262,400 + 512 + 23,387 = 2,648,667.

Heads total 18,922,033; plus backbone with endpoints 21,831,488 (49) = 40,753,521.

SpineNet-190 (spinenet190_mrcnn.yaml): RPN 384 filters (one conv: the official ``RpnHead``
ignores its ``num_convs``), box and mask heads of 7 convs of 384, endpoints 512 wide:
RPN 1,779,471 + box head 29,477,191 + mask head 10,366,171 + backbone 126,587,664 =
168,210,497, the official 168.2M.

Proposal, sampling, box-coder and NMS settings are torchvision's defaults, which equal the
official ones (2000/1000 proposals train/test, RPN IoU 0.7/0.3 with 256 samples, RoI
512 samples at 25 % foreground, box weights (10, 10, 5, 5), score 0.05, NMS 0.5, 100 boxes).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from torchspine.models.backbone import SpineNet
from torchspine.models.detection.anchors import SpineNetAnchorGenerator
from torchspine.models.detection.heads import ConvFCBoxHead, MaskHead, RPNHeadPerLevelBN, pyramid_width
from torchspine.models.detection.heads import box_predictor as _box_predictor
from torchspine.models.detection.heads import mask_predictor as _mask_predictor
from torchspine.models.detection.transform import DetectionTransform, ResizeInterpolation, ResizeMode

__all__ = ["SpineNetMaskRCNN"]


class SpineNetMaskRCNN(MaskRCNN):
    """torchvision ``MaskRCNN`` with a SpineNet backbone and the official head layout.

    Same interface as torchvision's ``MaskRCNN``: train mode returns the five losses, eval
    mode ``[{"boxes", "labels", "scores", "masks"}]`` in the input images' coordinates.

    As in torchvision, the parts (``rpn_anchor_generator``, ``rpn_head``, ``box_head``,
    ``box_predictor``, ``mask_head``, ``mask_predictor``) may be passed in; each one left
    ``None`` is built from the settings: ``anchor_size`` / ``num_scales`` / ``aspect_ratios``,
    ``rpn_num_filters``, ``head_num_convs`` / ``head_num_filters`` / ``fc_dims`` (box head),
    ``mask_num_convs`` / ``head_num_filters`` (mask head), BN and activation from the backbone spec.
    """

    PARTS: ClassVar[tuple[str, ...]] = ("rpn_anchor_generator", "rpn_head", "box_head", "box_predictor",
                                        "mask_head", "mask_predictor")

    def __init__(
        self,
        backbone: SpineNet,
        num_classes: int = 91,
        *,
        image_size: int = 640,
        resize_mode: ResizeMode = "square",
        size_divisible: int = 128,
        rpn_anchor_generator: SpineNetAnchorGenerator | None = None,
        rpn_head: nn.Module | None = None,
        box_head: nn.Module | None = None,
        box_predictor: nn.Module | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
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
        resize_interpolation: ResizeInterpolation = "bilinear",
        roi_sampling_ratio: int = 1,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        spec = backbone.spec
        in_channels = pyramid_width(backbone, "Mask R-CNN")
        names = list(backbone.out_channels)
        num_levels = len(names)
        norm, act = spec.norm, spec.activation
        if rpn_anchor_generator is None:
            rpn_anchor_generator = SpineNetAnchorGenerator(spec.min_level, spec.max_level, anchor_size=anchor_size,
                                                           num_scales=num_scales, aspect_ratios=tuple(aspect_ratios))
        if rpn_head is None:
            rpn_head = RPNHeadPerLevelBN(in_channels, rpn_anchor_generator.num_anchors_per_location()[0],
                                         num_levels=num_levels, num_filters=rpn_num_filters, norm=norm, act=act)
        if box_head is None:
            box_head = ConvFCBoxHead(in_channels, 7, num_convs=head_num_convs, num_filters=head_num_filters,
                                     fc_dims=fc_dims, norm=norm, act=act)
        if box_predictor is None:
            box_predictor = _box_predictor(fc_dims, num_classes)
        if mask_head is None:
            mask_head = MaskHead(in_channels, num_convs=mask_num_convs, num_filters=head_num_filters, norm=norm,
                                 act=act)
        if mask_predictor is None:
            mask_predictor = _mask_predictor(head_num_filters, num_classes)
        super().__init__(
            backbone, None, min_size=image_size, max_size=image_size,
            rpn_anchor_generator=rpn_anchor_generator, rpn_head=rpn_head,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_roi_pool=MultiScaleRoIAlign(names, 7, sampling_ratio=roi_sampling_ratio), box_head=box_head,
            box_predictor=box_predictor, box_score_thresh=score_thresh, box_nms_thresh=nms_thresh,
            box_detections_per_img=detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(names, 14, sampling_ratio=roi_sampling_ratio), mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.transform = DetectionTransform(image_size, resize_mode=resize_mode, size_divisible=size_divisible,
                                            resize_interpolation=resize_interpolation)
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
