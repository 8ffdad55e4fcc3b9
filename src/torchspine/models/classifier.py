"""Image classification on a SpineNet backbone (paper section 4.2, Table 6, Table 11 / App. D).

The final feature map is ``P = 1/5 * sum_{i=3..7} U(P_i)``, where ``U`` is nearest-neighbour
upsampling to the size of P3; global average pooling gives an ``endpoints_num_filters``-wide
vector (256 for SpineNet-49) and a linear layer gives the logits (softmax is in the loss).
Table 11's variants are options (``feature_combination``):

* ``"avg"`` (AvgFeaMap, the final model): as above;
* ``"concat"``: global-average-pool each level, concatenate (``5 * 256 = 1280`` dims);
* ``"single"``: one level only (``level=3..7``).

Parameters with a 1000-class head: backbone + endpoints + ``(256 + 1) * 1000``; for
SpineNet-49 21,831,488 + 257,000 = 22,088,488, the official 22.1M (tensorflow/tpu
models/official/detection/MODEL_ZOO.md, ImageNet classification).

The model follows timm's small API (``forward_features``, ``forward_head``, ``num_classes``,
``num_features``, ``get_classifier``, ``reset_classifier``) so it can be served through timm.
Registered: ``spinenet{49s,49,96,143,143l,190}_cls``, ``spinenet_mobile49_cls`` and the generic
``spinenet_cls(backbone=<registered backbone name> | spec=<spec>)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from torch import nn

from torchspine.layers.resample import resize_nearest
from torchspine.models.backbone import SpineNet
from torchspine.models.registry import create_model, model_info, register_model, register_variant
from torchspine.specs.spec import SpineNetSpec

__all__ = ["SpineNetClassifier", "FeatureCombination"]

FeatureCombination = Literal["avg", "concat", "single"]
_COMBINATIONS = ("avg", "concat", "single")


class SpineNetClassifier(nn.Module):
    """Classifier on any backbone that returns ``{"p3": ..., ...}`` and has ``out_channels``.

    Args:
        backbone: a :class:`SpineNet` (or any module with the same output contract).
        num_classes: number of classes; ``0`` gives a model without the linear layer
            (``forward`` returns the pooled features).
        feature_combination: ``"avg"``, ``"concat"`` or ``"single"`` (see module docstring).
        level: the level used by ``"single"`` (3..7).
        drop_rate: dropout before the linear layer (0 in the paper).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 1000,
        *,
        feature_combination: FeatureCombination = "avg",
        level: int | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if feature_combination not in _COMBINATIONS:
            raise ValueError(f"classifier: unknown feature_combination {feature_combination!r}; "
                             f"expected one of {_COMBINATIONS}")
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise ValueError(f"classifier: num_classes must be a non-negative integer, got {num_classes!r}")
        keys = list(backbone.out_channels)
        if feature_combination == "single":
            if level is None or f"p{level}" not in backbone.out_channels:
                raise ValueError(f"classifier: feature_combination='single' needs level in "
                                 f"{[int(k[1:]) for k in keys]}, got {level!r}")
            keys = [f"p{level}"]
        elif level is not None:
            raise ValueError(f"classifier: level={level} is only used with feature_combination='single'")
        widths = {backbone.out_channels[k] for k in keys}
        if feature_combination == "avg" and len(widths) != 1:
            raise ValueError(f"classifier: averaging needs equal widths per level, got {backbone.out_channels}")
        self.backbone = backbone
        self.feature_combination = feature_combination
        self.level_keys = tuple(keys)
        self.num_features = (sum(backbone.out_channels[k] for k in keys) if feature_combination == "concat"
                             else backbone.out_channels[keys[0]])
        self.drop_rate = drop_rate
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        # timm-style static description of the pooled feature.
        self.feature_info = getattr(backbone, "feature_info", [])

    # ------------------------------------------------------------------ timm API
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the linear layer (timm API); ``global_pool`` is accepted and must be 'avg' or None."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"classifier: only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | "OrderedDict[str, torch.Tensor]":
        """The combined, unpooled feature map (``"avg"`` / ``"single"``: (N, C, H/8, W/8) for
        P3), or the pyramid dict for ``"concat"``."""
        feats = self.backbone(x)
        if self.feature_combination == "concat":
            return OrderedDict((k, feats[k]) for k in self.level_keys)
        if self.feature_combination == "single":
            return feats[self.level_keys[0]]
        size = tuple(feats[self.level_keys[0]].shape[-2:])
        total = feats[self.level_keys[0]]
        for k in self.level_keys[1:]:
            total = total + resize_nearest(feats[k], size)  # U(P_i): nearest upsampling to P3's size
        return total / len(self.level_keys)

    def forward_head(self, x: torch.Tensor | "OrderedDict[str, torch.Tensor]", pre_logits: bool = False) -> torch.Tensor:
        if isinstance(x, dict):
            x = torch.cat([v.mean(dim=(2, 3)) for v in x.values()], dim=1)  # (N, sum C)
        else:
            x = x.mean(dim=(2, 3))  # global average pooling: (N, C)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# BatchNorm of the official ImageNet configs (tensorflow/tpu classification yamls).
CLASSIFIER_NORM = {"momentum": 0.9, "epsilon": 1e-5}


def _split_classifier_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw.pop(k) for k in ("num_classes", "feature_combination", "level", "drop_rate") if k in kw}


def build_classifier(backbone: str | SpineNetSpec | nn.Module, **kwargs: Any) -> SpineNetClassifier:
    """A classifier on a registered backbone name, a spec, or a backbone module.

    Keywords ``num_classes``, ``feature_combination``, ``level``, ``drop_rate`` go to the
    classifier; the rest are backbone overrides (spec fields). Unless given, BatchNorm uses the
    official classification settings (:data:`CLASSIFIER_NORM`), passed to the backbone when it is
    built (a SpineNet family: a spec, or a registered family named ``spinenet*``)."""
    cls_kw = _split_classifier_kwargs(kwargs)
    # Official classification configs use BN momentum 0.9 / epsilon 1e-5 (tensorflow/tpu
    # models/official/detection/configs/spinenet/spinenet49_classification.yaml),
    # not the detectors' 0.997 / 1e-4 (whose running statistics barely move in a short run).
    if not isinstance(backbone, nn.Module) and not {"norm", "momentum", "epsilon"} & set(kwargs) and (
            isinstance(backbone, SpineNetSpec) or model_info(backbone).family.startswith("spinenet")):
        kwargs = {**kwargs, **CLASSIFIER_NORM}  # spec fields: every create_norm of the backbone gets them
    if isinstance(backbone, SpineNetSpec):
        net: nn.Module = SpineNet(backbone.replace(**kwargs) if kwargs else backbone)
    elif isinstance(backbone, str):
        net = create_model(backbone, **kwargs)
    else:
        if kwargs:
            raise ValueError(f"classifier: backbone overrides {sorted(kwargs)} need a backbone name or spec")
        net = backbone
    if not hasattr(net, "out_channels"):
        raise ValueError(f"classifier: backbone {backbone!r} has no out_channels (not a pyramid backbone)")
    return SpineNetClassifier(net, **cls_kw)


CLASSIFIER_BACKBONES = ("spinenet49s", "spinenet49", "spinenet96", "spinenet143", "spinenet143l", "spinenet190",
                        "spinenet_mobile49")


for _b in CLASSIFIER_BACKBONES:
    register_variant(f"{_b}_cls", build_classifier, _b, task="classifier", preset=_b, input_size=224,
                     doc=f"Classifier on {_b} (paper section 4.2): num_classes (1000), feature_combination "
                         "('avg' | 'concat' | 'single'), level, drop_rate, spec overrides.")


@register_model(task="classifier")
def spinenet_cls(*, backbone: str | SpineNetSpec = "spinenet49", spec: SpineNetSpec | str | None = None,
                 **kwargs: Any) -> SpineNetClassifier:
    """A classifier on any backbone: ``backbone=<registered name>`` or ``spec=<spec | JSON path |
    genome>``; classifier keywords as in :class:`SpineNetClassifier`."""
    if spec is not None:
        return build_classifier(SpineNetSpec.coerce(spec), **kwargs)
    return build_classifier(backbone, **kwargs)
