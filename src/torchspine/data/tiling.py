"""Large images (aerial photographs, microscopy slides): cut them into overlapping tiles.

* :func:`tile_dataset` cuts a COCO dataset into tiles for training: each box is clipped to
  every tile it touches and kept there when at least ``min_visible`` of its area is inside.
* :func:`predict_tiled` runs a detector tile by tile, maps the boxes back into the image and
  merges the duplicates that overlapping tiles produce: class-wise NMS
  (``torchvision.ops.batched_nms``) or a score-weighted average of each cluster of boxes
  (``"weighted"``; torchvision has no weighted box fusion, so the clustering is written here
  with ``torchvision.ops.box_iou``).

Tile positions (:func:`tile_starts`): the stride is ``tile * (1 - overlap)`` rounded down, and
the last tile is moved back to end at the image border, so every pixel is covered and no tile
is padded. An image no larger than the tile is one tile.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["merge_detections", "predict_tiled", "tile_boxes", "tile_dataset", "tile_starts", "tile_windows"]

logger = logging.getLogger(__name__)

Merge = Literal["nms", "weighted"]


def _check_tiling(tile: int, overlap: float) -> None:
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 32:
        raise ValueError(f"tile size must be an integer >= 32 pixels, got {tile!r}")
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap < 1.0):
        raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap!r}")


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with ``overlap``."""
    _check_tiling(tile, overlap)
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def tile_windows(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of every tile of a ``width x height`` image, row by row."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def tile_boxes(boxes: Tensor, window: tuple[int, int, int, int], min_visible: float) -> tuple[Tensor, Tensor]:
    """Clip ``(N, 4)`` xyxy ``boxes`` to ``window``; returns the clipped boxes in tile
    coordinates and the indices of those with at least ``min_visible`` of their area inside."""
    x0, y0, x1, y1 = window
    clipped = torch.stack([boxes[:, 0].clamp(x0, x1), boxes[:, 1].clamp(y0, y1),
                           boxes[:, 2].clamp(x0, x1), boxes[:, 3].clamp(y0, y1)], dim=1)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    inside = (clipped[:, 2] - clipped[:, 0]).clamp(min=0) * (clipped[:, 3] - clipped[:, 1]).clamp(min=0)
    keep = (inside > 0) & (inside >= min_visible * area)
    idx = keep.nonzero().flatten()
    shift = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    return clipped[idx] - shift, idx


def tile_dataset(coco: dict[str, Any], image_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 tile: int, overlap: float = 0.2, min_visible: float = 0.5, keep_empty: bool = False,
                 image_folder: str = "images") -> dict[str, Any]:
    """Cut every image of a (checked) COCO dict into tiles written as PNG under
    ``out_dir/image_folder``; returns the tiles' COCO dict (ids ``1..``, in image then tile
    order; ``file_name`` ``<stem>_x<X>_y<Y>.png``; each tile records ``source_image_id`` and
    ``offset``). A box is kept in a tile when at least ``min_visible`` of its area is inside;
    tiles without boxes are left out unless ``keep_empty``. Masks are not tiled."""
    from PIL import Image

    from torchspine.data.images import read_image
    from torchspine.utils import atomic_write

    _check_tiling(tile, overlap)
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible!r}")
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    by_image: dict[Any, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images, anns = [], []
    used: set[str] = set()
    dropped = 0
    for img in sorted(coco["images"], key=lambda im: im["id"]):
        pixels = read_image(image_dir / img["file_name"])
        h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
        src = [a for a in by_image.get(img["id"], []) if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in src], dtype=torch.float64).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        kept_anywhere = torch.zeros(len(src), dtype=torch.bool)
        stem = Path(img["file_name"]).stem
        for window in tile_windows(w, h, tile, overlap):
            boxes, idx = tile_boxes(xyxy, window, min_visible)
            kept_anywhere[idx] = True
            if not len(idx) and not keep_empty:
                continue
            x0, y0, x1, y1 = window
            name = f"{stem}_x{x0}_y{y0}.png"
            k = 1
            while name in used:  # two source images with the same stem in different folders
                name, k = f"{stem}_{k}_x{x0}_y{y0}.png", k + 1
            used.add(name)
            crop = pixels[:, y0:y1, x0:x1].permute(1, 2, 0).contiguous().numpy()
            atomic_write(out_dir / image_folder / name, lambda tmp, a=crop: Image.fromarray(a).save(tmp, format="PNG"))
            tid = len(images) + 1
            images.append({"id": tid, "file_name": name, "width": x1 - x0, "height": y1 - y0,
                           "source_image_id": img["id"], "source_file_name": img["file_name"], "offset": [x0, y0]})
            for b, i in zip(boxes.tolist(), idx.tolist()):
                bw, bh = b[2] - b[0], b[3] - b[1]
                anns.append({"id": len(anns) + 1, "image_id": tid, "category_id": src[i]["category_id"],
                             "bbox": [round(b[0], 3), round(b[1], 3), round(bw, 3), round(bh, 3)],
                             "area": round(bw * bh, 3), "iscrowd": 0, "source_annotation_id": src[i]["id"]})
        dropped += int((~kept_anywhere).sum())
    if dropped:
        logger.warning("%d box(es) are in no tile with %.0f%% of their area visible (tiles of %d px too small "
                       "for them?)", dropped, 100 * min_visible, tile)
    return {"info": {"description": f"tiles of {tile} px, overlap {overlap}, min visible {min_visible}"},
            "images": images, "annotations": anns, "categories": list(coco["categories"]),
            "tiling": {"tile": tile, "overlap": overlap, "min_visible": min_visible, "boxes_in_no_tile": dropped}}


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, *, method: Merge = "nms",
                     iou_thresh: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Merge duplicates (same label, IoU > ``iou_thresh``): keep the best (``nms``) or replace
    each cluster around a kept box by the score-weighted mean of its boxes (``weighted``;
    the kept box's score). Returns ``(boxes, scores, labels)`` sorted by score."""
    from torchvision.ops import batched_nms, box_iou

    if method not in ("nms", "weighted"):
        raise ValueError(f"merge method must be 'nms' or 'weighted', got {method!r}")
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_thresh)
    if method == "nms" or not len(keep):
        return boxes[keep], scores[keep], labels[keep]
    iou = box_iou(boxes[keep].float(), boxes.float())  # (kept, all)
    same = labels[keep][:, None] == labels[None, :]
    member = (iou > iou_thresh) & same
    # each box joins the best-scoring kept box it overlaps (kept boxes are in score order)
    first = torch.where(member.any(0), member.float().argmax(0), torch.full_like(labels, -1))
    weights = torch.zeros(len(keep), len(boxes), dtype=torch.float64)
    weights[first.clamp(min=0), torch.arange(len(boxes))] = scores.double() * (first >= 0)
    merged = (weights @ boxes.double()) / weights.sum(1, keepdim=True)
    return merged.to(boxes.dtype), scores[keep], labels[keep]


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
    from torchspine.engine.predict import predict

    _check_tiling(tile, overlap)
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
