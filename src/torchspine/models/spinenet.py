"""Registered SpineNet backbones: the official family and the paper copy's 49S."""

from __future__ import annotations

from typing import Any

from torchspine.models.backbone import SpineNet
from torchspine.models.registry import register_model, register_variant
from torchspine.specs.spec import SpineNetSpec
from torchspine.specs.zoo import spinenet_spec

__all__ = ["spinenet_from_spec"]


def spinenet_from_spec(spec: SpineNetSpec | str, **overrides: Any) -> SpineNet:
    """A backbone from a spec object, a JSON / genome file path, or a genome string."""
    spec = SpineNetSpec.coerce(spec)
    return SpineNet(spec.replace(**overrides) if overrides else spec)


def _official(model_id: str, **overrides: Any) -> SpineNet:
    return SpineNet(spinenet_spec(model_id, **overrides))


for _id in ("49s", "49", "96", "143", "143l", "190", "49s_paper"):
    register_variant(f"spinenet{_id}", _official, _id, preset=_id,
                     doc=f"SpineNet-{_id.upper()} backbone (official scaling preset); overrides are spec fields.")


@register_model
def spinenet(spec: SpineNetSpec | str, **overrides: Any) -> SpineNet:
    """A backbone from any spec: ``create_model("spinenet", spec="best.json")``."""
    return spinenet_from_spec(spec, **overrides)
