"""Official TensorFlow SpineNet checkpoints -> torchspine models, without TensorFlow.

The public API of the converter; the work is split by concern:

* :mod:`torchspine.interop.tf_bundle`: reads the checkpoint (numpy only);
* :mod:`torchspine.interop.codebase`: which codebase wrote it and its conventions (padding, BN);
* :mod:`torchspine.interop.keras_order` / :mod:`torchspine.interop.pairing`: which checkpoint
  variable fills which torch module (Model Garden layer order, tensorflow/tpu scopes);
* :mod:`torchspine.interop.convert_head`: RetinaNet, Mask R-CNN and classifier heads;
* :mod:`torchspine.interop.transfer`: tensor layouts and the record of problems.

Every variable is checked by shape; any missing, extra or mismatched variable makes
:func:`convert_checkpoint` raise a ``ValueError`` that lists them, so a checkpoint of another
model size fails with that message rather than a shape error deep in ``load_state_dict``.

A checkpoint does not record the activation it was trained with (the official 350-epoch
tensorflow/tpu models use relu, the "-best" ones swish, Model Garden's mobile models
hard_swish), and a wrong guess gives wrong outputs with no error: the activation is therefore
required. The converted model uses the codebase's padding convention and the BatchNorm settings
its model kind was trained with (:func:`torchspine.interop.codebase.codebase_settings`); all of
them are recorded in :attr:`ConversionResult.settings` and in the saved file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from torchspine.data.labels import BY_CATEGORY_ID
from torchspine.interop.codebase import (
    CODEBASE_DEFAULTS,
    CODEBASE_NAMES,
    Codebase,
    checkpoint_task,
    codebase_settings,
    detect_codebase,
    detector_settings_for,
)
from torchspine.interop.convert_head import (
    transfer_classifier_head,
    transfer_maskrcnn_heads,
    transfer_retinanet_head,
)
from torchspine.interop.pairing import find_mg_backbone_prefix, mg_pairs, tpu_pairs
from torchspine.interop.tf_bundle import read_checkpoint as read_tf_checkpoint  # the converter API's name
from torchspine.interop.transfer import Transfer
from torchspine.layers.mbconv import ResampleSepConv
from torchspine.models.backbone import SpineNet, named_backbone
from torchspine.models.detection.heads import RetinaNetHead
from torchspine.models.registry import create_model, model_info

__all__ = [
    "ACTIVATIONS",
    "CODEBASE_DEFAULTS",
    "ConversionResult",
    "build_converted",
    "convert_checkpoint",
    "detect_codebase",
    "read_tf_checkpoint",
    "save_converted",
]

log = logging.getLogger(__name__)

ACTIVATIONS = ("relu", "swish", "hard_swish")


@dataclass
class ConversionResult:
    """A converted state dict, the model it belongs to, how to rebuild it and the settings used."""

    state_dict: dict[str, torch.Tensor]
    model_name: str
    overrides: dict[str, Any]
    codebase: str
    source: str
    settings: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata :func:`save_converted` writes (torchspine's one saved-model format)."""
        from torchspine.models.saved import FORMAT

        return {"format": FORMAT, "model": self.model_name, "overrides": json.dumps(self.overrides, sort_keys=True),
                "info": json.dumps(self.info(), sort_keys=True)}

    def info(self) -> dict[str, Any]:
        """What the saved file records about the conversion (``torchspine_info`` after loading)."""
        task = model_info(self.model_name).task
        out: dict[str, Any] = {"task": task, "provenance": {"converted_from": self.source,
                                                            "codebase": CODEBASE_NAMES[self.codebase],
                                                            "settings": self.settings}}
        if "num_classes" in self.settings:
            out["num_classes"] = self.settings["num_classes"]
        if task == "classifier" and self.settings.get("num_classes") == 1001:
            out["background_class"] = 0  # tensorflow/tpu ImageNet convention: 1000 classes + background
        if task in ("detector", "instance_segmentation"):
            out["label_convention"] = BY_CATEGORY_ID  # the official detectors' class index is the category id
        return out


def _backbone_of(model: nn.Module) -> tuple[SpineNet, str]:
    found = named_backbone(model)
    if found is None:
        raise ValueError(f"model {type(model).__name__} has no SpineNet backbone to convert into")
    name, backbone = found
    return backbone, name + "." if name else ""


def _is_mobile(backbone: SpineNet) -> bool:
    return any(isinstance(b.resample[0], ResampleSepConv) for b in backbone.blocks)


def _num_classes_in(tf_vars: dict[str, np.ndarray], task: str, probe: nn.Module) -> int | None:
    """The number of classes the checkpoint's head predicts, when it says so unambiguously."""
    def last_dim(suffix: str) -> int | None:
        hits = sorted((n for n in tf_vars if n.endswith(suffix)), key=len)
        return int(tf_vars[hits[0]].shape[-1]) if hits else None

    if task == "classifier":
        return last_dim("classification_head/dense/kernel")
    if task == "instance_segmentation":
        return last_dim("fast_rcnn_head/class-predict/kernel")
    head = getattr(probe, "head", None)
    if task == "detector" and isinstance(head, RetinaNetHead):
        n = next((last_dim(s) for s in ("class_net/class-predict/kernel", "class_net/class-predict/pointwise_kernel",
                                         "_classifier/kernel", "_classifier/pointwise_kernel") if last_dim(s)), None)
        return n // head.num_anchors if n and n % head.num_anchors == 0 else None
    return None


def convert_checkpoint(
    checkpoint: str | os.PathLike | dict[str, np.ndarray],
    model_name: str,
    *,
    codebase: Codebase | None = None,
    overrides: dict[str, Any] | None = None,
) -> ConversionResult:
    """Convert an official checkpoint into the state dict of ``create_model(model_name, ...)``.

    Args:
        checkpoint: a checkpoint path (prefix, ``.index`` file or directory), or already-read variables.
        model_name: a registered backbone (``spinenet49``, ``spinenet_mobile49``), a detector whose
            backbone and head are filled (``retinanet_spinenet49``, ``maskrcnn_spinenet49``), or a
            classifier (``spinenet49_cls``).
        codebase: ``"tpu"`` or ``"mg"``; detected from the variable names when omitted.
        overrides: model keywords / spec fields. ``activation`` is required (a checkpoint does not
            record it); ``num_classes`` is read from the checkpoint's head when omitted.

    Raises:
        ValueError: without ``activation``, or listing missing, extra and mismatched variables
            when the checkpoint does not match the model.
    """
    overrides = dict(overrides or {})
    act = overrides.get("activation")
    if act not in ACTIVATIONS:
        raise ValueError(f"convert {model_name}: activation={act!r}; give the activation the checkpoint was trained "
                         f"with, one of {ACTIVATIONS} (checkpoints do not record it: the official 350-epoch "
                         f"tensorflow/tpu models use relu, the '-best' ones swish, Model Garden's mobile ones "
                         f"hard_swish)")
    source = "<variables>" if isinstance(checkpoint, dict) else str(checkpoint)
    tf_vars = checkpoint if isinstance(checkpoint, dict) else read_tf_checkpoint(checkpoint)
    names = set(tf_vars)
    codebase = codebase or detect_codebase(names)
    task = model_info(model_name).task
    with torch.device("meta"):
        probe = create_model(model_name, **overrides)
    settings = ({"flavor": codebase} if _is_mobile(_backbone_of(probe)[0])  # flavour: padding, BN, SE gating
                else codebase_settings(codebase, checkpoint_task(names)))
    if "num_classes" not in overrides and task != "backbone":
        n = _num_classes_in(tf_vars, task, probe)
        if n is not None:
            settings["num_classes"] = n
    settings.update(detector_settings_for(codebase, task))
    model_kwargs = {**settings, **overrides}
    with torch.device("meta"):
        model = create_model(model_name, **model_kwargs)
    backbone, bb_prefix = _backbone_of(model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    transfer = Transfer(tf_vars, expected, dict(model.named_modules()))
    problems: list[str] = []

    if codebase == "mg":
        scope_of_backbone = find_mg_backbone_prefix(names)
        pairs = mg_pairs(backbone, names, scope_of_backbone)
    else:
        pairs, problems, scope_of_backbone = tpu_pairs(backbone, names)
    for unit, tf_prefix in pairs:
        transfer.unit(unit.moved(bb_prefix), tf_prefix)

    if task == "detector":
        problems += transfer_retinanet_head(model, transfer, codebase=codebase, names=names)
    elif task == "instance_segmentation":
        problems += transfer_maskrcnn_heads(model, transfer, codebase=codebase, names=names)
    elif task == "classifier":
        problems += transfer_classifier_head(model, transfer, codebase=codebase, names=names)

    missing_torch = sorted(k for k in expected if k not in transfer.state)
    with_head = task != "backbone"
    extra = sorted(n for n in names if n not in transfer.used and (n.startswith(scope_of_backbone) or with_head))
    if transfer.missing or transfer.mismatched or missing_torch or extra or problems:
        raise ValueError(_mismatch_message(model_name, source, codebase, transfer, missing_torch, extra, problems))
    spec = backbone.spec
    used = {"codebase": codebase, "activation": spec.activation, "padding": spec.padding,
            "bn_momentum": spec.norm.momentum, "bn_epsilon": spec.norm.epsilon,
            **{k: v for k, v in model_kwargs.items()
               if k in ("flavor", "num_classes", "resize_interpolation", "clip_boxes_to")}}
    log.info("converted %s (%s) into %s with %s", source, CODEBASE_NAMES[codebase], model_name, used)
    return ConversionResult({k: transfer.state[k] for k in expected}, model_name, model_kwargs, codebase, source, used)


def _mismatch_message(model_name: str, source: str, codebase: str, t: Transfer, missing_torch: list[str],
                      extra: list[str], problems: list[str]) -> str:
    def block(title: str, items: list[str], limit: int = 12) -> str:
        if not items:
            return ""
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more

    return (
        f"checkpoint {source} ({CODEBASE_NAMES[codebase]}) does not match model "
        f"{model_name}: is it the right model size / family?"
        + block("structure", problems)
        + block("shape mismatches (checkpoint variable -> model tensor)", t.mismatched)
        + block("missing from the checkpoint", t.missing)
        + block("model tensors left unfilled", missing_torch)
        + block("extra checkpoint variables not used by the model", extra)
    )


def build_converted(model_name: str, overrides: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """``create_model(model_name, **overrides)`` holding ``state_dict`` (strict), in eval mode.

    Built on the meta device and filled with ``assign=True``: the random initialisation of a
    large model would be thrown away anyway.
    """
    with torch.device("meta"):
        model = create_model(model_name, **overrides)
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise ValueError(f"converted weights leave {len(leftover)} tensors of {model_name} unset, e.g. {leftover[:3]}")
    return model.eval()


def save_converted(result: ConversionResult, path: str | os.PathLike, *, info: dict[str, Any] | None = None) -> None:
    """Write the converted model in torchspine's one saved-model format (:func:`torchspine.models.saved.save_model`);
    ``info`` adds to what the conversion records (e.g. the catalogue entry it came from)."""
    from torchspine.models.saved import save_model

    model = build_converted(result.model_name, result.overrides, result.state_dict)
    save_model(model, path, name=result.model_name, overrides=result.overrides, info={**result.info(), **(info or {})})

