"""Checks of a COCO-format annotation file before training, evaluation or ``data check``.

Every finding names the record it concerns. :func:`check_coco` returns a :class:`CheckReport`
with two lists:

* ``problems``: records that cannot be used as they are (duplicate ids, unknown images or
  categories, NaN / negative boxes, missing or undecodable image files, bad image sizes).
  :func:`enforce` stops with a ``ValueError`` listing them or, with ``skip_bad=True``
  (``--skip-bad-annotations``), returns the ids to leave out and logs how many.
* ``notes``: what is repaired on the way, each logged with a count: boxes partly outside
  their image are clipped to it (as torchvision / detectron2 do), boxes entirely outside it
  and zero-area boxes are dropped, an annotation file without annotations is accepted for
  evaluation with a warning (training refuses it: see ``require_annotations`` in
  :func:`torchspine.data.coco.load_coco`).

With ``decode=True`` every image file is opened and fully decoded with the one image reader
(:func:`torchspine.data.images.read_image_pil`), in a thread pool with a progress bar, so a
truncated JPEG or a text file named ``.png`` is reported by name.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Problem", "CheckReport", "check_coco", "check_batch_size", "enforce", "decode_images"]

logger = logging.getLogger(__name__)

# Slack for boxes that touch the border after float rounding (COCO boxes are floats): a box
# poking out by less than this is clipped without a note.
_EDGE_TOL = 1.0

# Kinds of CheckReport.notes (repaired, not fatal).
NOTE_KINDS = ("box_clipped", "box_outside_image", "zero_area_box", "no_annotations", "image_size_mismatch")


@dataclass(frozen=True)
class Problem:
    kind: str  # problems: duplicate_image_id, duplicate_annotation_id, missing_image_file, corrupt_image,
    # unknown_category, bad_box, unknown_image, bad_image_size; notes: see NOTE_KINDS
    record: str  # "image", "annotation" or "file"
    id: Any
    message: str


@dataclass
class CheckReport:
    source: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    images_decoded: int = 0

    @property
    def bad_image_ids(self) -> set:
        return {p.id for p in self.problems if p.record == "image"}

    @property
    def bad_annotation_ids(self) -> set:
        return {p.id for p in self.problems if p.record == "annotation"}

    @property
    def dropped_annotation_ids(self) -> set:
        """Annotations left out with a note (entirely outside the image, zero area)."""
        return {p.id for p in self.notes if p.kind in ("box_outside_image", "zero_area_box")}

    @property
    def clipped_annotation_ids(self) -> set:
        return {p.id for p in self.notes if p.kind == "box_clipped"}

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def note_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.notes))

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s) {self.counts()}"]
        lines += [f"  {p.record} id {p.id}: {p.message}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def notes_summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {len(self.notes)} warning(s): records repaired or dropped {self.note_counts()}"]
        lines += [f"  {p.record} id {p.id}: {p.message}" if p.record != "file" else f"  {p.message}"
                  for p in self.notes[:limit]]
        if len(self.notes) > limit:
            lines.append(f"  ... and {len(self.notes) - limit} more")
        return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def decode_images(paths: dict[Any, Path], *, workers: int | None = None,
                  progress: bool = True) -> dict[Any, tuple[str | None, tuple[int, int] | None]]:
    """Decode every image fully: ``{id: (error or None, (width, height) or None)}``.

    Threads help: Pillow releases the GIL while decoding.
    """
    from tqdm.auto import tqdm

    from torchspine.data.images import read_image_pil

    def one(item: tuple[Any, Path]) -> tuple[Any, str | None, tuple[int, int] | None]:
        key, path = item
        try:
            im = read_image_pil(path)
            return key, None, im.size
        except (ValueError, FileNotFoundError) as e:
            return key, str(e), None

    workers = workers or min(8, (os.cpu_count() or 1) + 1)
    out: dict[Any, tuple[str | None, tuple[int, int] | None]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for key, err, size in tqdm(pool.map(one, paths.items()), total=len(paths), desc="decoding images",
                                   disable=not progress, leave=False):
            out[key] = (err, size)
    return out


def check_coco(dataset: dict, *, image_dir: str | os.PathLike | None = None, source: str = "annotations",
               decode: bool = False, workers: int | None = None, progress: bool = False) -> CheckReport:
    """Check a loaded COCO dict (see the module docstring); ``decode`` needs ``image_dir``."""
    report = CheckReport(source)
    add, note = report.problems.append, report.notes.append
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: field {key!r} must be a list, got {type(dataset.get(key)).__name__}")
    report.num_images, report.num_annotations = len(dataset["images"]), len(dataset["annotations"])
    if not dataset["annotations"]:
        note(Problem("no_annotations", "file", None, "the 'annotations' list is empty: nothing to train on "
                                                     "(pycocotools reports AP -1 without ground truth)"))
    images: dict[Any, dict] = {}
    files: dict[Any, Path] = {}
    for img in dataset["images"]:
        if not isinstance(img, dict):
            raise ValueError(f"{source}: every entry of 'images' must be an object, got {img!r:.80}")
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
            else:
                files[iid] = path
    if decode:
        if image_dir is None:
            raise ValueError(f"{source}: decoding the images needs the image folder")
        for iid, (err, size) in decode_images(files, workers=workers, progress=progress).items():
            report.images_decoded += 1
            if err is not None:
                add(Problem("corrupt_image", "image", iid, err))
                continue
            w, h = images[iid].get("width"), images[iid].get("height")
            if _finite(w) and _finite(h) and size != (w, h):
                note(Problem("image_size_mismatch", "image", iid,
                             f"{files[iid]} decodes to {size[0]}x{size[1]} but the file says {w}x{h} "
                             "(boxes are read against the decoded image)"))
    categories = {c.get("id") for c in dataset["categories"] if isinstance(c, dict)}
    seen_ann: set = set()
    for ann in dataset["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"{source}: every entry of 'annotations' must be an object, got {ann!r:.80}")
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
                        f"category_id {ann.get('category_id')} is not in 'categories' {sorted(categories, key=str)}"))
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            add(Problem("bad_box", "annotation", aid, f"bbox {bbox} is not 4 finite numbers"))
            continue
        x, y, w, h = bbox
        if w < 0 or h < 0:
            add(Problem("bad_box", "annotation", aid, f"bbox {bbox} has a negative size"))
            continue
        if ann.get("iscrowd", 0):
            continue  # crowd regions are "ignore" regions of COCO evaluation; never trained on
        img = images[iid]
        iw, ih = img.get("width"), img.get("height")
        if w == 0 or h == 0:
            note(Problem("zero_area_box", "annotation", aid, f"bbox {bbox} has zero area: dropped"))
            continue
        if not (_finite(iw) and _finite(ih)):
            continue
        if x >= iw or y >= ih or x + w <= 0 or y + h <= 0:
            note(Problem("box_outside_image", "annotation", aid,
                         f"bbox {bbox} lies entirely outside image {iid} of size {iw}x{ih}: dropped"))
        elif x < -_EDGE_TOL or y < -_EDGE_TOL or x + w > iw + _EDGE_TOL or y + h > ih + _EDGE_TOL:
            note(Problem("box_clipped", "annotation", aid,
                         f"bbox {bbox} extends outside image {iid} of size {iw}x{ih}: clipped to it"))
    return report


def clip_box(bbox: list[float], width: float, height: float) -> list[float]:
    """An ``[x, y, w, h]`` box clipped to a ``width x height`` image."""
    x0, y0 = min(max(bbox[0], 0.0), width), min(max(bbox[1], 0.0), height)
    x1, y1 = min(max(bbox[0] + bbox[2], 0.0), width), min(max(bbox[1] + bbox[3], 0.0), height)
    return [x0, y0, x1 - x0, y1 - y0]


def enforce(report: CheckReport, *, skip_bad: bool,
            skip_flag: str | None = None) -> tuple[set, set]:
    """Stop with a clear message, or (``skip_bad``) return the image and annotation ids to drop.

    ``skip_flag`` is the option the caller offers to skip bad records (``--skip-bad-annotations``
    for training); the message suggests it only when it is given. Notes (clipped or dropped
    boxes) are logged with their counts either way.
    """
    if report.notes:
        logger.warning("%s", report.notes_summary())
    if not report.problems:
        return set(), set()
    if not skip_bad:
        hint = f"fix the file, or pass {skip_flag} to leave these records out" if skip_flag else "fix the file"
        raise ValueError(f"{report.summary()}\n({hint})")
    bad_images, bad_anns = report.bad_image_ids, report.bad_annotation_ids
    logger.warning("%s\nskipping %d image(s) and %d annotation(s)", report.summary(), len(bad_images), len(bad_anns))
    return bad_images, bad_anns


def check_batch_size(local_batch: int, image_size: int, *, max_level: int = 7) -> None:
    """Refuse a per-process batch that BatchNorm cannot train on.

    In training, BatchNorm needs more than one value per channel: with one image per process,
    the ``image_size / 2**max_level`` feature map (1x1 at 128 px for P7) gives it a single
    value and the run would fail inside the resampling with an opaque BatchNorm error
    (observed: a RetinaNet-49S forward in training mode on one 128 px image fails with
    "Expected more than 1 value per channel ... [1, 32, 1, 1]"; one 256 px image trains).
    """
    side = math.ceil(image_size / 2 ** max_level)
    if local_batch * side * side < 2:
        raise ValueError(
            f"a batch of {local_batch} image per process at {image_size} px leaves a {side}x{side} feature map at "
            f"level {max_level} (stride {2 ** max_level}): BatchNorm cannot train on one value per channel. "
            f"Use --batch-size 2 or more per process, or --image-size {2 ** (max_level + 1)} or more")
