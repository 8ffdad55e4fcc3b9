"""SpineNet-Mobile (paper Appendix A): the mobile stem, separable resampling, registered models.

Plugs into the one :class:`~torchspine.models.backbone.SpineNet` class:

* stem kind ``"mobile"``: 3x3/2 conv with ``int(conv_filters * filter_size_scale)`` filters ->
  BN -> act, then one block group per ``stem.block_levels`` entry (official: an L1 MBConv at
  stride 1, then an L2 MBConv at stride 2; tensorflow/tpu models/official/detection/modeling/architecture/spinenet_mbconv.py);
* resample kind ``"sepconv"``: :class:`~torchspine.layers.mbconv.ResampleSepConv`.

Registered backbones: ``spinenet_mobile49``, ``spinenet_mobile49s``, ``spinenet_mobile49xs``
(released presets) and ``spinenet_mobile{49xxs,49xs,49s,49}_paper`` (paper copy Table 9).
Each takes ``flavor="tpu"`` (default) or ``"mg"`` and spec-field overrides.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchspine.layers.conv import ConvNormAct
from torchspine.layers.mbconv import ResampleSepConv
from torchspine.models.backbone import FeatureInfo, SpineNet, Stem, register_resample, register_stem
from torchspine.models.registry import register_variant
from torchspine.specs.mobile import MOBILE_SCALING, mobile_spec
from torchspine.specs.spec import SpineNetSpec

__all__ = ["MobileStem", "MOBILE_MODEL_IDS"]


class MobileStem(Stem):
    """3x3/2 conv -> BN -> act (level 1), then stem block groups (official mobile stem)."""

    def __init__(self, spec: SpineNetSpec) -> None:
        super().__init__()
        conv_filters = max(1, int(spec.stem.conv_filters * spec.scaling.filter_size_scale))
        self.conv = ConvNormAct(3, conv_filters, 3, stride=2, norm=spec.norm, act=spec.activation,
                                padding=spec.padding)
        self._build_groups(spec, conv_filters, 1)

    def entry(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _sepconv_resample(spec: SpineNetSpec, parent: FeatureInfo, target_level: int, target_channels: int) -> nn.Module:
    return ResampleSepConv(parent.channels, parent.level, target_level, target_channels,
                           norm=spec.norm, act=spec.activation, padding=spec.padding)


register_stem("mobile", MobileStem)
register_resample("sepconv", _sepconv_resample)

MOBILE_MODEL_IDS = tuple(MOBILE_SCALING)


def _mobile(model_id: str, *, flavor: str = "tpu", **overrides: Any) -> SpineNet:
    return SpineNet(mobile_spec(model_id, flavor=flavor, **overrides))  # type: ignore[arg-type]


for _id in MOBILE_MODEL_IDS:
    register_variant(f"spinenet_mobile{_id}", _mobile, _id, family="spinenet_mobile", preset=_id,
                     doc=f"SpineNet-Mobile-{_id.upper()} backbone (paper Appendix A); flavor 'tpu' or 'mg'; "
                         "overrides are spec fields or MBConv options.")
