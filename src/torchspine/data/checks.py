"""Checks of a COCO-format annotation file before training starts.

Every problem is reported with the id of the record it concerns. :func:`check_coco` returns
a :class:`CheckReport`; :func:`enforce` either raises ``ValueError`` listing the problems or,
with ``skip_bad=True``, returns the ids to leave out and logs how many.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Problem", "CheckReport", "check_coco", "enforce"]

logger = logging.getLogger(__name__)

# Slack for boxes that touch the border after float rounding (COCO boxes are floats).
_EDGE_TOL = 1.0


@dataclass(frozen=True)
class Problem:
    kind: str  # one of: duplicate_image_id, duplicate_annotation_id, missing_image_file,
    # unknown_category, bad_box, box_outside_image, unknown_image, bad_image_size
    record: str  # "image" or "annotation"
    id: Any
    message: str


@dataclass
class CheckReport:
    source: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad_image_ids(self) -> set:
        return {p.id for p in self.problems if p.record == "image"}

    @property
    def bad_annotation_ids(self) -> set:
        return {p.id for p in self.problems if p.record == "annotation"}

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s) {self.counts()}"]
        lines += [f"  {p.record} id {p.id}: {p.message}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_coco(dataset: dict, *, image_dir: str | os.PathLike | None = None,
               source: str = "annotations") -> CheckReport:
    """Check a loaded COCO dict: duplicate image/annotation ids, missing image files,
    annotations of unknown images or categories, negative/NaN/zero box sizes, boxes
    outside their image."""
    report = CheckReport(source)
    add = report.problems.append
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: field {key!r} must be a list, got {type(dataset.get(key)).__name__}")
    images: dict[Any, dict] = {}
    for img in dataset["images"]:
        iid = img.get("id")
        if iid in images:
            add(Problem("duplicate_image_id", "image", iid, f"image id {iid} appears more than once"))
            continue
        images[iid] = img
        w, h = img.get("width"), img.get("height")
        if not (_finite(w) and _finite(h) and w > 0 and h > 0):
            add(Problem("bad_image_size", "image", iid, f"width/height {w}x{h} are not positive numbers"))
        if image_dir is not None:
            path = Path(image_dir) / str(img.get("file_name", ""))
            if not img.get("file_name") or not path.is_file():
                add(Problem("missing_image_file", "image", iid, f"image file {str(path)!r} not found"))
    categories = {c.get("id") for c in dataset["categories"]}
    seen_ann: set = set()
    for ann in dataset["annotations"]:
        aid = ann.get("id")
        if aid in seen_ann:
            add(Problem("duplicate_annotation_id", "annotation", aid, f"annotation id {aid} appears more than once"))
            continue
        seen_ann.add(aid)
        iid = ann.get("image_id")
        if iid not in images:
            add(Problem("unknown_image", "annotation", aid, f"image_id {iid} is not in 'images'"))
            continue
        if ann.get("category_id") not in categories:
            add(Problem("unknown_category", "annotation", aid,
                        f"category_id {ann.get('category_id')} is not in 'categories' {sorted(categories)}"))
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            add(Problem("bad_box", "annotation", aid, f"bbox {bbox} is not 4 finite numbers"))
            continue
        x, y, w, h = bbox
        if w < 0 or h < 0:
            add(Problem("bad_box", "annotation", aid, f"bbox {bbox} has a negative size"))
            continue
        img = images[iid]
        iw, ih = img.get("width"), img.get("height")
        if _finite(iw) and _finite(ih) and (x < -_EDGE_TOL or y < -_EDGE_TOL or x + w > iw + _EDGE_TOL
                                            or y + h > ih + _EDGE_TOL):
            add(Problem("box_outside_image", "annotation", aid,
                        f"bbox {bbox} extends outside image {iid} of size {iw}x{ih}"))
    return report


def enforce(report: CheckReport, *, skip_bad: bool) -> tuple[set, set]:
    """Stop with a clear message, or (``skip_bad``) return the image and annotation ids to drop."""
    if not report.problems:
        return set(), set()
    if not skip_bad:
        raise ValueError(report.summary() + "\n(fix the file, or pass --skip-bad-annotations to leave these records out)")
    bad_images, bad_anns = report.bad_image_ids, report.bad_annotation_ids
    logger.warning("%s\nskipping %d image(s) and %d annotation(s)", report.summary(), len(bad_images), len(bad_anns))
    return bad_images, bad_anns
