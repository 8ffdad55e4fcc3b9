"""Fine-tuning: start a training run from a saved model (``torchspine train --weights``).

What is copied from the pretrained model (:func:`init_from_pretrained`):

* the backbone, always (a tensor that does not fit is an error naming it: the run must build
  the same architecture, which :func:`finetune_config` arranges by taking the model name and
  settings from the weights file);
* the head, all of it when the classes match (same count, and the same names when both sides
  have names); otherwise every tensor except the class-dependent ones, which keep the fresh
  initialisation of the new model (RetinaNet: the classification conv ``cls_logits`` with its
  prior-probability bias; box regression and both towers are copied; Mask R-CNN: the box
  predictor and the mask logits, whose shapes depend on the classes).

:func:`freeze_backbone_bn` keeps the backbone's BatchNorm layers in inference mode (running
statistics and affine parameters fixed), the usual choice when the batch is small.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["FinetuneReport", "class_dependent_keys", "finetune_config", "freeze_backbone_bn", "init_from_pretrained"]

logger = logging.getLogger(__name__)

# Settings that belong to the run, not to the pretrained architecture.
_RUN_SETTINGS = ("num_classes", "image_size")
# Classifier keywords that are not backbone settings (models/classifier.py), and BN settings a
# detector keeps its own of (they change no tensor shape).
_CLASSIFIER_ONLY = ("feature_combination", "level", "drop_rate", "backbone", "norm", "momentum", "epsilon")


@dataclass
class FinetuneReport:
    source: str
    copied: int
    fresh: list[str]
    classes_match: bool

    def summary(self) -> str:
        head = "head copied (classes match)" if self.classes_match else \
            f"classification layer freshly initialised ({len(self.fresh)} tensors: {self.fresh[:4]})"
        return f"initialised from {self.source}: {self.copied} tensors copied; backbone copied; {head}"


def class_dependent_keys(model: nn.Module) -> set[str]:
    """State-dict keys whose shape depends on ``num_classes``: found by building the same
    model (its recorded ``create_model`` settings) on the meta device with another class count."""
    from torchspine.models.registry import create_model
    from torchspine.models.saved import model_config

    cfg = model_config(model)
    if not cfg:
        raise ValueError("fine-tuning needs a model built by create_model (its settings are recorded)")
    n = int(cfg["overrides"].get("num_classes", 91))
    own = model.state_dict()
    with torch.device("meta"):
        other = create_model(cfg["model"], **{**cfg["overrides"], "num_classes": n + 3}).state_dict()
    return {k for k in own if k in other and other[k].shape != own[k].shape}


def finetune_config(cfg: Any) -> Any:
    """``cfg`` with ``model`` / ``model_overrides`` taken from the ``cfg.weights`` file (so the run
    builds the pretrained architecture); the run's own overrides stay on top, and class count
    and image size are the run's."""
    from torchspine.engine.runs import resolve_pretrained
    from torchspine.models.saved import read_model_metadata

    if not getattr(cfg, "weights", None):
        return cfg
    path = resolve_pretrained(cfg.weights, model=cfg.model)
    try:
        meta = read_model_metadata(path)
    except ValueError:
        logger.info("--weights %s has no model metadata: building %s as configured", path, cfg.model)
        return cfg.replace(weights=str(path))
    from torchspine.models.registry import model_info

    if (model_info(meta["model"]).task in ("classifier", "backbone")
            and model_info(cfg.model).task in ("detector", "instance_segmentation")):
        # ImageNet-style pretraining: a classifier's (or bare backbone's) SpineNet initialises the
        # configured detector's backbone; the detector head starts fresh. Only the settings that
        # shape the backbone come along (not the classifier's head, BN momentum or drop rate).
        base = {k: v for k, v in meta["overrides"].items() if k not in _RUN_SETTINGS + _CLASSIFIER_ONLY}
        logger.info("fine-tuning: the backbone of %s %s initialises %s (head freshly initialised)",
                    model_info(meta["model"]).task, meta["model"], cfg.model)
        return cfg.replace(model_overrides={**base, **cfg.model_overrides}, weights=str(path))
    base = {k: v for k, v in meta["overrides"].items() if k not in _RUN_SETTINGS}
    if meta["model"] != cfg.model:
        logger.info("fine-tuning: building %s, the model of %s (the config named %s)", meta["model"], path, cfg.model)
    return cfg.replace(model=meta["model"], model_overrides={**base, **cfg.model_overrides}, weights=str(path))


def init_from_pretrained(model: nn.Module, source: str | os.PathLike, *,
                         label_names: Sequence[str] | None = None) -> FinetuneReport:
    """Copy the pretrained tensors of ``source`` (file, run folder or catalogue entry) into
    ``model`` as the module docstring says; returns what was done."""
    from torchspine.engine.runs import resolve_pretrained
    from torchspine.models.saved import load_state_dict, read_model_metadata

    path = resolve_pretrained(source)
    state = load_state_dict(path)
    try:
        info = read_model_metadata(path).get("info") or {}
    except ValueError:
        info = {}
    own = model.state_dict()
    if hasattr(model, "backbone") and not any(k in own for k in state) and any(f"backbone.{k}" in own for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}  # a bare backbone file
    class_keys = class_dependent_keys(model)
    pre_names = info.get("label_names")
    shapes_fit = all(k in state and state[k].shape == own[k].shape for k in class_keys)
    classes_match = bool(class_keys) and shapes_fit
    if classes_match and pre_names and label_names and list(pre_names) != list(label_names):
        classes_match = False
        logger.info("fine-tuning: same class count but other names (%s vs %s): fresh classification layer",
                    list(pre_names)[:5], list(label_names)[:5])
    elif classes_match and not (pre_names and label_names):
        logger.warning("fine-tuning: %s has as many classes as the data but no names to compare: head copied "
                       "as is (labels assumed to mean the same)", path)
    skip = set() if classes_match else class_keys
    if info.get("task") in ("classification", "classifier", "backbone") and hasattr(model, "head"):
        # a classifier's endpoint projections (1x1 conv + BN per level) are as wide as its own
        # endpoints; the detector's width is a detector setting: those start fresh when they differ
        ends = {k for k, v in state.items() if k.startswith("backbone.endpoints.") and k in own
                and v.shape != own[k].shape}
        if ends:
            logger.info("fine-tuning: %d endpoint tensors of %s have another width: freshly initialised",
                        len(ends), path)
            skip |= ends
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and k not in skip and v.shape != own[k].shape]
    if bad:
        raise ValueError(f"--weights {path}: {len(bad)} tensors do not fit the model being trained, e.g. {bad[:3]}; "
                         f"train the architecture the weights were made for (same model and settings"
                         + (f"; they hold a {info['task']}: give the detector on its backbone as --model, with the "
                            f"same --set model_overrides" if info.get("task") in ("classification", "classifier",
                                                                                   "backbone") else "")
                         + ")")
    backbone_missing = [k for k in own if k.startswith("backbone.") and k not in state]
    if hasattr(model, "backbone") and backbone_missing:
        raise ValueError(f"--weights {path}: the backbone is incomplete: {len(backbone_missing)} tensors missing, "
                         f"e.g. {backbone_missing[:3]}")
    load = {k: v for k, v in state.items() if k in own and k not in skip}
    model.load_state_dict(load, strict=False)
    report = FinetuneReport(str(path), len(load), sorted(skip), classes_match)
    logger.info("%s", report.summary())
    return report


class _FrozenBatchNorm(nn.BatchNorm2d):
    """A BatchNorm2d that stays in inference mode (same state dict, so the model saves as usual)."""

    def train(self, mode: bool = True) -> "_FrozenBatchNorm":
        return super().train(False)


def freeze_backbone_bn(model: nn.Module) -> int:
    """Freeze every BatchNorm2d of ``model.backbone`` (statistics and affine); returns how many."""
    root = getattr(model, "backbone", model)
    count = 0
    for m in root.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _FrozenBatchNorm
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            count += 1
    return count
