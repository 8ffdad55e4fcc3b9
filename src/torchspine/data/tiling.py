"""Large images (aerial photographs, microscopy slides): cut them into overlapping tiles.

* :func:`tile_dataset` cuts a COCO dataset into tiles for training: each box is clipped to
  every tile it touches and kept there when at least ``min_visible`` of its area is inside.
* :func:`merge_detections` merges the duplicates that overlapping tiles produce (used by
  :func:`torchspine.engine.predict.predict_tiled`, which runs a detector tile by tile): class-wise NMS
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
from torch import Tensor

__all__ = ["Merge", "check_tiling", "merge_detections", "tile_boxes", "tile_dataset", "tile_starts", "tile_windows"]

logger = logging.getLogger(__name__)

Merge = Literal["nms", "weighted"]


def check_tiling(tile: int, overlap: float) -> None:
    """A ValueError naming the value unless ``tile`` >= 32 px and 0 <= ``overlap`` < 1."""
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 32:
        raise ValueError(f"tile size must be an integer >= 32 pixels, got {tile!r}")
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap < 1.0):
        raise ValueError(f"tile overlap must be a fraction in [0, 1), got {overlap!r}")


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with ``overlap``."""
    check_tiling(tile, overlap)
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

    from torchspine.data.images import read_image_as_annotated
    from torchspine.utils import atomic_write

    check_tiling(tile, overlap)
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
        arr, _ = read_image_as_annotated(image_dir / img["file_name"], img["width"], img["height"])
        pixels = torch.from_numpy(arr).permute(2, 0, 1)  # the grid its boxes were drawn on (EXIF: see there)
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
