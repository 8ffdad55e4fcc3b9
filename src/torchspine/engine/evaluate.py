"""COCO evaluation with pycocotools: box AP and, for Mask R-CNN, mask AP.

:func:`coco_metrics` runs ``COCOeval`` on a ground-truth ``COCO`` and a list of COCO result
dicts and returns the 12 standard numbers under readable names; :func:`evaluate_coco` runs a
torchvision-style detector over a dataset first, mapping its contiguous labels back to the
file's category ids. AP itself is never computed here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from typing import Any, Iterable, Sequence

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from torchspine.data.coco import CocoDetection, collate_detection
from torchspine.data.labels import LabelMap

__all__ = ["STAT_NAMES", "coco_metrics", "evaluate_coco", "format_table", "to_coco_results"]

logger = logging.getLogger(__name__)

# Order of COCOeval.stats (pycocotools' summarize()).
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_metrics(coco_gt: COCO, results: list[dict], *, iou_type: str = "bbox",
                 image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """pycocotools' 12 summary numbers. No detections at all gives zeros (pycocotools'
    ``loadRes`` rejects an empty list)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not results:
        # pycocotools' loadRes rejects an empty list; one detection that matches nothing scores the
        # same (no true positives) and keeps -1 for size ranges without ground truth.
        img = next(iter(image_ids)) if image_ids else next(iter(coco_gt.imgs), None)
        cat = next(iter(coco_gt.cats), None)
        if img is None or cat is None:
            return {k: 0.0 for k in STAT_NAMES}
        results = [{"image_id": img, "category_id": cat, "bbox": [0.0, 0.0, 1e-3, 1e-3], "score": 1e-9}]
        if iou_type == "segm":
            results[0]["segmentation"] = [[0.0, 0.0, 1e-3, 0.0, 1e-3, 1e-3]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where a size range has no ground truth; keep its convention.
    out: dict[str, Any] = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    # AP per category (IoU 0.50:0.95, all areas, 100 detections), as summarize() averages it.
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, category)
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[str(cat)] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    out["per_class_AP"] = per_class
    return out


@torch.no_grad()
def evaluate_coco(model: nn.Module, data: CocoDetection | Iterable, *, coco_gt: COCO | None = None,
                  device: str | torch.device = "cpu", batch_size: int = 4, max_images: int | None = None,
                  with_masks: bool | None = None, progress: bool = False,
                  labels: LabelMap | None = None, category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Run ``model`` (eval mode, torchvision detection API) over ``data`` and score it.

    Args:
        data: a :class:`CocoDetection` (its ``coco`` is the ground truth) or a loader of
            ``(images, targets)`` batches with ``coco_gt`` given.
        max_images: score only the first ``max_images`` images.
        with_masks: also score masks (``segm``); default: when predictions carry masks.
        labels: the model's label map (:class:`~torchspine.data.labels.LabelMap`, e.g.
            ``LabelMap.from_info`` of a saved model); default: the dataset's ``labels``.
        category_ids: the same as contiguous ids (``category_ids[label - 1]`` is the file's id).

    Returns ``{"AP", "AP50", ..., "mask_AP", ..., "num_images", "seconds"}`` (box metrics
    unprefixed, mask metrics prefixed ``mask_``).
    """
    device = torch.device(device)
    labels = _label_map(labels, category_ids)
    if isinstance(data, CocoDetection):
        coco_gt = data.coco
        if labels is None:
            labels = data.labels
        n = len(data) if max_images is None else min(max_images, len(data))
        subset = torch.utils.data.Subset(data, range(n))
        loader: Iterable = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                                       collate_fn=collate_detection)
    else:
        loader = data
    if coco_gt is None:
        raise ValueError("evaluate_coco: coco_gt is required when data is not a CocoDetection")
    was_training = model.training
    model.eval()
    boxes, masks, image_ids = [], [], []
    start = time.perf_counter()
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="eval", leave=False)
    for images, targets in loader:
        if max_images is not None and len(image_ids) >= max_images:
            break
        outputs = model([im.to(device) for im in images])
        for t, out in zip(targets, outputs):
            out = {k: v.detach().cpu() for k, v in out.items()}
            if with_masks is False:
                out.pop("masks", None)
            for r in to_coco_results(out, t["image_id"], labels=labels):
                boxes.append({k: v for k, v in r.items() if k != "segmentation"})
                if "segmentation" in r:
                    masks.append(r)
            image_ids.append(int(t["image_id"]))
    seconds = time.perf_counter() - start
    model.train(was_training)
    result: dict[str, Any] = dict(coco_metrics(coco_gt, boxes, iou_type="bbox", image_ids=image_ids))
    if masks or with_masks:
        result.update({f"mask_{k}": v for k, v in coco_metrics(coco_gt, masks, iou_type="segm",
                                                               image_ids=image_ids).items() if k != "per_class_AP"})
    result["class_names"] = {str(c["id"]): c["name"] for c in coco_gt.dataset.get("categories", [])}
    result["num_images"] = len(image_ids)
    result["num_detections"] = len(boxes)
    result["seconds"] = seconds
    logger.info("COCO eval on %d images: AP %.3f AP50 %.3f (%.1f s)", len(image_ids), result["AP"],
                result["AP50"], seconds)
    return result


def format_table(metrics: dict[str, Any], class_names: dict[str, str] | None = None) -> str:
    """A plain-text table of the AP numbers (box, and mask when present; "-" where the data has
    no objects of that size), then box AP per class when the metrics hold it (``class_names``:
    category id -> name)."""
    cols = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    rows = [("box", "")] + ([("mask", "mask_")] if "mask_AP" in metrics else [])
    lines = ["type  " + " ".join(f"{c:>6}" for c in cols)]
    for name, prefix in rows:
        lines.append(f"{name:<5} " + " ".join(f"{100 * metrics[prefix + c]:6.1f}" if metrics[prefix + c] >= 0
                                             else f"{'-':>6}" for c in cols))
    per_class = metrics.get("per_class_AP")
    names = class_names or metrics.get("class_names") or {}
    if per_class and (len(per_class) > 1 or names):
        width = max(12, *(len(str(names.get(c, c))) for c in per_class))
        lines.append(f"{'class':<{width}} {'id':>4} {'AP':>6}")
        for cat, ap in per_class.items():
            value = f"{100 * ap:6.1f}" if ap >= 0 else f"{'-':>6}"
            lines.append(f"{str(names.get(cat, cat)):<{width}} {cat:>4} {value}")
    return "\n".join(lines)


def _label_map(labels: LabelMap | None, category_ids: Sequence[int] | None) -> LabelMap | None:
    if labels is not None and category_ids is not None:
        raise ValueError("give labels or category_ids, not both")
    if category_ids is not None:
        return LabelMap.from_categories([], order=category_ids)
    return labels


def to_coco_results(detections: dict[str, Tensor], image_id: int, *, score_thresh: float = 0.0,
                    labels: LabelMap | None = None,
                    category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """COCO result entries for one image (boxes as ``[x, y, w, h]``; masks as RLE).

    ``labels``: the model's label map (:class:`~torchspine.data.labels.LabelMap`) gives each
    entry's ``category_id``; ``category_ids`` the same as contiguous ids (``category_ids[label
    - 1]`` is the file's id); neither writes the labels themselves.
    """
    labels = _label_map(labels, category_ids)
    keep = detections["scores"] >= score_thresh
    boxes = detections["boxes"][keep].tolist()
    predicted = detections["labels"][keep].tolist()
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
    for j, ((x1, y1, x2, y2), lbl, s) in enumerate(zip(boxes, predicted, scores)):
        cat = int(lbl) if labels is None else labels.category_id(lbl)
        entry: dict[str, Any] = {"image_id": int(image_id), "category_id": cat,
                                 "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                 "score": round(float(s), 5)}
        if rles is not None:
            entry["segmentation"] = rles[j]
        out.append(entry)
    return out
