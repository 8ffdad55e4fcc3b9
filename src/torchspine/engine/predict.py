"""Batched prediction with an eval-mode torchvision-style detector, whole images or tile by tile
(the tile geometry and the merging of duplicates are in :mod:`torchspine.data.tiling`)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from torchspine.data.tiling import Merge, check_tiling, merge_detections, tile_windows

__all__ = ["predict", "predict_tiled"]

logger = logging.getLogger(__name__)


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


def _inside_interior(boxes: Tensor, windows: Tensor, width: int, height: int, margin: float) -> Tensor:
    """``(N, T)``: box n lies in window t without touching any of t's borders that are inside
    the image (a border on the image's own edge cuts nothing)."""
    b, w = boxes[:, None, :], windows[None, :, :].to(boxes.dtype)
    lo_x = torch.where(w[..., 0] > 0, w[..., 0] + margin, w[..., 0])
    lo_y = torch.where(w[..., 1] > 0, w[..., 1] + margin, w[..., 1])
    hi_x = torch.where(w[..., 2] < width, w[..., 2] - margin, w[..., 2])
    hi_y = torch.where(w[..., 3] < height, w[..., 3] - margin, w[..., 3])
    return (b[..., 0] >= lo_x) & (b[..., 1] >= lo_y) & (b[..., 2] <= hi_x) & (b[..., 3] <= hi_y)


@torch.inference_mode()
def predict_tiled(model: nn.Module, image: Tensor, *, tile: int, overlap: float = 0.2, merge: Merge = "nms",
                  iou_thresh: float = 0.5, batch_size: int = 4, max_detections: int | None = None,
                  edge_margin: float = 2.0) -> dict[str, Tensor]:
    """Detections of an eval-mode detector on ``image`` (``(C, H, W)``), predicted tile by tile
    (each tile at the model's own input size), mapped back to image pixels and merged across
    tiles. Boxes only: masks of Mask R-CNN are dropped here.

    A box within ``edge_margin`` px of a tile border inside the image is an object cut by the
    tile; it is dropped when another tile holds the same box away from its borders (that tile
    saw the whole object, as long as the overlap is larger than the objects). The rest are
    merged with ``merge`` at ``iou_thresh``."""
    check_tiling(tile, overlap)
    h, w = int(image.shape[-2]), int(image.shape[-1])
    windows = tile_windows(w, h, tile, overlap)
    crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    outs = predict(model, crops, batch_size=batch_size)
    boxes, scores, labels = [], [], []
    for (x0, y0, _, _), det in zip(windows, outs):
        if "masks" in det and len(det["masks"]):
            logger.debug("tiled prediction drops masks")
        shift = torch.tensor([x0, y0, x0, y0], dtype=det["boxes"].dtype)
        boxes.append(det["boxes"] + shift)
        scores.append(det["scores"])
        labels.append(det["labels"])
    b, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    if len(windows) > 1 and len(b):
        win = torch.tensor(windows)
        tile_of = torch.cat([torch.full((len(x),), i) for i, x in enumerate(boxes)])
        clean = _inside_interior(b, win, w, h, edge_margin)  # (N, T)
        cut = ~clean[torch.arange(len(b)), tile_of]
        clean[torch.arange(len(b)), tile_of] = False
        drop = cut & clean.any(1)
        b, s, lab = b[~drop], s[~drop], lab[~drop]
    b, s, lab = merge_detections(b, s, lab, method=merge, iou_thresh=iou_thresh)
    if max_detections is not None:
        b, s, lab = b[:max_detections], s[:max_detections], lab[:max_detections]
    logger.debug("%d tiles of %d px: %d detections after merging", len(windows), tile, len(s))
    return {"boxes": b, "scores": s, "labels": lab}
