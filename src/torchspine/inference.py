"""Detector inference helpers: load weights, read images, predict, draw, COCO results.

Used by ``torchspine predict`` and reusable by training / evaluation code for drawing.

* Weights: a safetensors file (``*.safetensors``) or a training checkpoint read with
  ``torch.load(weights_only=True)`` (never arbitrary pickles) whose dict holds the state
  dict directly or under ``"model"`` / ``"state_dict"``; a DDP ``module.`` prefix is removed.
* Results: the COCO result format (``image_id``, ``category_id``, ``bbox`` as
  ``[x, y, width, height]``, ``score``; ``segmentation`` as RLE for Mask R-CNN), which
  ``pycocotools.coco.COCO.loadRes`` reads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "IMAGE_EXTENSIONS",
    "class_names_for",
    "draw_detections",
    "find_images",
    "load_state_dict",
    "load_weights",
    "predict",
    "prepare_for_inference",
    "read_image",
    "to_coco_results",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def load_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict stored in ``path`` (safetensors, or a ``torch.save`` checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"weights {path}: not a readable safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for pickles with code, RuntimeError for garbage
            raise ValueError(f"weights {path}: cannot be read with torch.load(weights_only=True) ({e})") from e
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise ValueError(f"weights {path}: expected a state dict (or a checkpoint with a 'model' state dict)")
        state = obj
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> nn.Module:
    """Load ``path`` into ``model`` (see :func:`load_state_dict`); returns ``model``.

    A state dict of the bare backbone (keys without ``backbone.``) is accepted for a detector
    when ``strict=False``. Mismatches raise ``ValueError`` naming the file and keys.
    """
    state = load_state_dict(path)
    own = model.state_dict()
    if hasattr(model, "backbone") and not any(k in own for k in state) and any(f"backbone.{k}" in own for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    bad_shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad_shapes:
        raise ValueError(f"weights {path}: shape mismatch for {len(bad_shapes)} tensors, e.g. {bad_shapes[:3]} "
                         f"(built with different settings, e.g. num_classes?)")
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise ValueError(f"weights {path}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if missing or unexpected:
        log.warning("weights %s: %d missing, %d unexpected keys", path, len(missing), len(unexpected))
    return model


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor (grayscale, palette, RGBA converted).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image {path}: cannot be decoded ({e})") from e
    return pil_to_tensor(rgb)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named in ``inputs``, with folders expanded to their image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(p)  # missing files are reported when read
    return out


def _fold_head_norms_(model: nn.Module) -> int:
    count = 0
    for m in model.modules():
        fold = getattr(m, "fold_batch_norms_", None)
        if callable(fold) and m is not model:
            count += int(fold() or 0)
    return count


def prepare_for_inference(model: nn.Module, *, channels_last: bool = True, fold_bn: bool = True,
                          pad_to_square: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """An eval-mode copy prepared for fast CPU inference (BN folding, channels_last, no square pad).

    Uses :func:`torchspine.tools.optimize.optimize_for_inference` for the backbone and heads,
    then folds the RetinaNet head's per-level BNs (shared convs, so the generic folder
    cannot) into per-level convs. Unless ``pad_to_square``, a detector's transform keeps the
    paper's long-side resize but pads only to a multiple of 32 instead of to a square (the square
    is for static-shape training batches; a 480x640 image then costs 480x640, not 640x640).
    Detections can differ slightly near the bottom / right edge, whose receptive fields
    covered padding.
    """
    from torchspine.models.transform import DetectionTransform
    from torchspine.tools.optimize import optimize_for_inference

    out = optimize_for_inference(model, channels_last=False, fold_bn=fold_bn, dtype=dtype)
    transform = getattr(out, "transform", None)
    if isinstance(transform, DetectionTransform) and not pad_to_square and transform.resize_mode == "square":
        transform.resize_mode = "long_side"
        transform.size_divisible = 32
    if fold_bn:
        n = _fold_head_norms_(out)
        log.info("folded %d per-level head BNs", n)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


@torch.inference_mode()
def predict(model: nn.Module, images: Sequence[Tensor], *, batch_size: int = 1) -> list[dict[str, Tensor]]:
    """Run an eval-mode torchvision-style detector over ``images`` (each ``(C, H, W)``, any size).

    Returns one ``{"boxes", "labels", "scores"[, "masks"]}`` per image, in its own pixels.
    """
    if model.training:
        raise ValueError("predict() needs an eval-mode model (call model.eval())")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out: list[dict[str, Tensor]] = []
    for i in range(0, len(images), batch_size):
        batch = [img.to(device) for img in images[i:i + batch_size]]
        out.extend({k: v.cpu() for k, v in d.items()} for d in model(batch))
    return out


def class_names_for(num_classes: int) -> list[str] | None:
    """COCO names (index = category id) when ``num_classes`` is 91, else ``None``."""
    if num_classes == 91:
        from torchvision.models._meta import _COCO_CATEGORIES

        return list(_COCO_CATEGORIES)
    return None


def _label_text(label: int, score: float, names: Sequence[str] | None) -> str:
    name = names[label] if names is not None and 0 <= label < len(names) else str(label)
    return f"{name} {score:.2f}"


def draw_detections(
    image: Tensor,
    detections: dict[str, Tensor],
    *,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.3,
    width: int = 2,
) -> Tensor:
    """``image`` (``(C, H, W)`` uint8 or float in [0, 1]) with boxes, names and scores drawn
    (masks too when present); detections below ``score_thresh`` are skipped. Returns uint8 RGB."""
    from torchvision.transforms.functional import convert_image_dtype
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from torchspine.models.transform import to_rgb_float

    img = convert_image_dtype(to_rgb_float(image.cpu()), torch.uint8)
    keep = detections["scores"] >= score_thresh
    boxes = detections["boxes"][keep].float()
    labels = detections["labels"][keep].tolist()
    scores = detections["scores"][keep].tolist()
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
    colors = [palette[lbl % len(palette)] for lbl in labels]
    if "masks" in detections and keep.any():
        masks = detections["masks"][keep][:, 0] > 0.5
        img = draw_segmentation_masks(img, masks, alpha=0.4, colors=colors)
    if boxes.numel():
        img = draw_bounding_boxes(img, boxes, labels=[_label_text(lb, s, class_names) for lb, s in zip(labels, scores)],
                                  colors=colors, width=width)
    return img


def to_coco_results(detections: dict[str, Tensor], image_id: int, *, score_thresh: float = 0.0) -> list[dict[str, Any]]:
    """COCO result entries for one image (boxes as ``[x, y, w, h]``; masks as RLE)."""
    keep = detections["scores"] >= score_thresh
    boxes = detections["boxes"][keep].tolist()
    labels = detections["labels"][keep].tolist()
    scores = detections["scores"][keep].tolist()
    rles = None
    if "masks" in detections:
        import numpy as np
        from pycocotools import mask as mask_utils

        masks = (detections["masks"][keep][:, 0] > 0.5).numpy().astype(np.uint8)
        rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
        for r in rles:
            r["counts"] = r["counts"].decode("ascii")
    out = []
    for j, ((x1, y1, x2, y2), lbl, s) in enumerate(zip(boxes, labels, scores)):
        entry: dict[str, Any] = {"image_id": int(image_id), "category_id": int(lbl),
                                 "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                 "score": round(float(s), 5)}
        if rles is not None:
            entry["segmentation"] = rles[j]
        out.append(entry)
    return out
