"""RetinaNet with SpineNet-Mobile backbones and separable-conv heads (paper Appendix A).

"All convolutional layers in resampling operations and box/class nets are replaced with
separable convolution": every tower conv and both predictors are a depthwise 3x3 (no bias)
followed by a pointwise 1x1 (with bias), depth multiplier 1, Glorot-uniform init (official
``use_separable_conv``; reference section 8). Towers keep the shared-across-levels convs and
per-level BN of :class:`~torchspine.models.detection.heads.RetinaNetHead`, whose losses are reused.

Presets (reference sections 2 and 8): 4 convs with 48 / 40 / 24 filters, 384 / 384 / 256 px
for 49 / 49S / 49XS (the paper copy's 49XXS / 49XS / 49S / 49 under ``*_paper`` names),
anchor size 3. Trainable parameters with 91 classes: 2,337,579 / 1,030,653 / 872,711
(the official counts, reference section 9).

Registered: ``retinanet_spinenet_mobile49``, ``retinanet_spinenet_mobile49s``,
``retinanet_spinenet_mobile49xs`` and ``retinanet_spinenet_mobile{49xxs,49xs,49s,49}_paper``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from torchspine.models.backbone import SpineNet
from torchspine.models.detection.heads import RetinaNetHead, SharedConvTower
from torchspine.models.registry import register_model
from torchspine.models.detection.retinanet import RETINANET_KEYS, SpineNetRetinaNet, split_detector_kwargs
from torchspine.specs.mobile import MOBILE_INPUT_SIZE, MOBILE_SCALING, mobile_spec
from torchspine.specs.spec import NormSpec

__all__ = ["SeparableConv2d", "SeparableConvTower", "SeparableRetinaNetHead", "mobile_retinanet"]


class SeparableConv2d(nn.Sequential):
    """TF ``separable_conv2d`` (depth multiplier 1): depthwise kxk without bias, pointwise 1x1
    with bias; Glorot-uniform weights, zero bias (Keras defaults)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        # PyTorch's depthwise (C, 1, k, k) and TF's (k, k, C, 1) have the same fan_in + fan_out.
        nn.init.xavier_uniform_(self.depthwise.weight)
        nn.init.xavier_uniform_(self.pointwise.weight)
        nn.init.zeros_(self.pointwise.bias)


class SeparableConvTower(SharedConvTower):
    """:class:`SharedConvTower` whose shared convs are separable."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_levels: int, *, norm: NormSpec,
                 act: str) -> None:
        super().__init__(in_channels, channels, num_convs, num_levels, norm=norm, act=act)
        self.convs = nn.ModuleList(SeparableConv2d(in_channels if i == 0 else channels, channels)
                                   for i in range(num_convs))

    def fold_batch_norms_(self) -> int:
        """Inference only: fold each level's BN into a per-level copy of the pointwise conv."""
        if self.training:
            raise ValueError("fold_batch_norms_ needs an eval-mode head")
        if self.fused is not None or self.convs[0].pointwise.weight.is_meta:
            return 0
        self.fused = nn.ModuleList(
            nn.ModuleList(nn.Sequential(conv.depthwise, fuse_conv_bn_eval(conv.pointwise, bn))
                          for conv, bn in zip(self.convs, norms))
            for norms in self.norms
        )
        return len(self.convs) * len(self.norms)


class SeparableRetinaNetHead(RetinaNetHead):
    """:class:`RetinaNetHead` with separable tower convs and predictors (official mobile head)."""

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, *, num_levels: int = 5,
                 num_filters: int = 48, num_convs: int = 4, norm: NormSpec = NormSpec(), act: str = "swish",
                 prior_probability: float = 0.01, **loss_kw: Any) -> None:
        super().__init__(in_channels, num_anchors, num_classes, num_levels=num_levels, num_filters=num_filters,
                         num_convs=num_convs, norm=norm, act=act, prior_probability=prior_probability, **loss_kw)
        self.cls_tower = SeparableConvTower(in_channels, num_filters, num_convs, num_levels, norm=norm, act=act)
        self.box_tower = SeparableConvTower(in_channels, num_filters, num_convs, num_levels, norm=norm, act=act)
        self.cls_logits = SeparableConv2d(num_filters, num_anchors * num_classes)
        self.bbox_reg = SeparableConv2d(num_filters, num_anchors * 4)
        nn.init.constant_(self.cls_logits.pointwise.bias, -math.log((1 - prior_probability) / prior_probability))


# Official mobile detector settings (reference section 8): head 4 x endpoints_num_filters.
_MOBILE_HEAD_CONVS = 4
_MOBILE_ANCHOR_SIZE = 3.0


def mobile_retinanet(model_id: str, **kwargs: Any) -> SpineNetRetinaNet:
    """A RetinaNet-SpineNet-Mobile detector; keywords are detector settings, ``flavor`` or spec fields."""
    det, spec_overrides = split_detector_kwargs(kwargs, RETINANET_KEYS)
    flavor = spec_overrides.pop("flavor", "tpu")
    spec = mobile_spec(model_id, flavor=flavor, **spec_overrides)
    settings: dict[str, Any] = dict(image_size=MOBILE_INPUT_SIZE[model_id],
                                    head_num_filters=spec.scaling.endpoints_num_filters,
                                    head_num_convs=_MOBILE_HEAD_CONVS, anchor_size=_MOBILE_ANCHOR_SIZE)
    settings.update(det)
    model = SpineNetRetinaNet(SpineNet(spec), **settings)
    old: RetinaNetHead = model.head
    model.head = SeparableRetinaNetHead(
        spec.scaling.endpoints_num_filters, old.num_anchors, old.num_classes, num_levels=old.num_levels,
        num_filters=settings["head_num_filters"], num_convs=settings["head_num_convs"], norm=spec.norm,
        act=spec.activation, prior_probability=settings.get("prior_probability", 0.01),
        focal_alpha=old.focal_alpha, focal_gamma=old.focal_gamma, huber_delta=old.huber_delta,
        box_loss_weight=old.box_loss_weight,
    )
    model.config = OrderedDict(name=f"retinanet_spinenet_mobile{model_id}", **kwargs)  # how to rebuild it
    return model


def _register(model_id: str) -> None:
    def builder(**kwargs: Any) -> SpineNetRetinaNet:
        return mobile_retinanet(model_id, **kwargs)

    builder.__name__ = f"retinanet_spinenet_mobile{model_id}"
    builder.__doc__ = (f"RetinaNet-SpineNet-Mobile-{model_id.upper()} with separable head convs (paper Appendix A; "
                       f"{MOBILE_INPUT_SIZE[model_id]} px). Keywords: detector settings, flavor, spec fields.")
    register_model(builder, task="detector", family="spinenet_mobile", preset=model_id,
                   input_size=MOBILE_INPUT_SIZE[model_id])


for _id in MOBILE_SCALING:
    _register(_id)


