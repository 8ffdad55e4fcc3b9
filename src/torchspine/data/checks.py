"""Checks of a COCO-format annotation file before training, evaluation or ``data check``.

Every finding names the record it concerns. :func:`check_coco` returns a :class:`CheckReport`
with two lists:

* ``problems``: records that cannot be used as they are (duplicate or non-integer ids,
  unknown images or categories, NaN / negative boxes, bad ``area`` / ``iscrowd`` values,
  segmentations pycocotools cannot rasterise, missing or undecodable image files, bad image
  sizes, an image file whose size is not the one recorded).
  :func:`enforce` stops with a ``ValueError`` listing them or, with ``skip_bad=True``
  (``--skip-bad-annotations``), returns the ids to leave out and logs how many.
* ``notes``: what is repaired on the way, each logged with a count: boxes partly outside
  their image are clipped to it (as torchvision / detectron2 do), boxes entirely outside it
  and zero-area boxes are dropped, an annotation file without annotations is accepted for
  evaluation with a warning (training refuses it: see ``require_annotations`` in
  :func:`torchspine.data.coco.load_coco`); polygons of fewer than 3 points are left out of
  their mask, and an annotation with no other polygon is dropped (as detectron2's
  ``load_coco_json`` does); a missing ``area`` is the box area, a missing
  ``iscrowd`` is 0, a category without a name is called by its id; an image whose recorded
  width/height are its stored pixel grid before the EXIF orientation is used as stored.

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
NOTE_KINDS = ("box_clipped", "box_outside_image", "zero_area_box", "no_annotations", "exif_not_applied",
              "category_without_name", "polygon_dropped", "no_valid_polygon", "exif_orientation")


@dataclass(frozen=True)
class Problem:
    kind: str  # problems: duplicate_image_id, duplicate_annotation_id, duplicate_category_id, bad_image_id,
    # bad_annotation_id, bad_category_id, missing_image_file, bad_file_name, corrupt_image, image_size_mismatch,
    # unknown_category, bad_box, bad_area, bad_iscrowd, bad_segmentation, unknown_image, bad_image_size;
    # notes: see NOTE_KINDS
    record: str  # "image", "annotation", "category" or "file"
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
        return {p.id for p in self.notes if p.kind in ("box_outside_image", "zero_area_box", "no_valid_polygon")}

    @property
    def polygon_fixed_annotation_ids(self) -> set:
        """Annotations whose too-short polygons are left out (the rest of the mask kept)."""
        return {p.id for p in self.notes if p.kind == "polygon_dropped"}

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


def _int_id(v: Any) -> bool:
    """A COCO id: an integer (a float without a fraction, as some exporters write, is accepted)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def record_key(v: Any) -> Any:
    """``v`` usable in a set (a list or object id becomes its repr)."""
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def is_polygon(poly: Any) -> bool:
    """A COCO polygon pycocotools can rasterise by length: x, y pairs of 3 or more points.

    (pycocotools' ``frPyObjects`` takes exactly 4 numbers for a box and raises for fewer.)
    """
    return isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0


def segmentation_error(seg: Any, width: Any, height: Any) -> str | None:
    """Why pycocotools cannot rasterise ``seg`` on a ``width x height`` image, or ``None``.

    pycocotools' ``frPyObjects`` takes a polygon of exactly 4 numbers for a box and raises a
    bare ``Exception`` for fewer; a NaN or huge coordinate makes its ``rleFrPoly`` allocate
    memory in proportion to the edge lengths (a NaN polygon on a 40x30 image exhausted 128 GB);
    an RLE ``size`` other than the image's cannot be placed in the image's mask.
    """
    sized = _finite(width) and _finite(height) and width > 0 and height > 0
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, list):
        for j, poly in enumerate(seg):
            # type() (not isinstance) leaves bools out; a sum is NaN / infinite when any value is
            if not (isinstance(poly, list) and all(type(v) in (int, float) for v in poly)
                    and math.isfinite(sum(poly))):
                return f"polygon {j} is not a list of finite numbers: {poly!r:.80}"
            if len(poly) < 6 or len(poly) % 2:
                return (f"polygon {j} has {len(poly)} numbers: a polygon is x, y pairs of at least 3 points "
                        "(6 or more numbers, an even count)")
            if sized:
                xs, ys = poly[0::2], poly[1::2]
                if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
                    return (f"polygon {j} reaches x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)}: far outside the "
                            f"{width}x{height} image (more than its own size)")
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_int_id(v) and v > 0 for v in size)):
            return f"RLE 'size' {size!r:.40} is not [height, width]"
        if sized and (size[0], size[1]) != (height, width):
            return f"RLE 'size' {size} is not the image's [height, width] [{height}, {width}]"
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                return "RLE 'counts' holds values that are not non-negative integers"
            if sum(counts) != size[0] * size[1]:
                return f"RLE 'counts' cover {sum(counts)} pixels, not {size[0]}x{size[1]} = {size[0] * size[1]}"
            return None
        if isinstance(counts, str):
            from pycocotools import mask as mask_utils

            try:
                decoded = mask_utils.decode({"size": [int(v) for v in size], "counts": counts.encode()})
            except Exception as e:  # pycocotools raises bare ValueError / Exception  # noqa: BLE001
                return f"RLE 'counts' string cannot be decoded ({e})"
            if decoded.shape != (size[0], size[1]):
                return f"RLE 'counts' string decodes to {decoded.shape}, not {size}"
            return None
        return f"RLE 'counts' must be a string or a list of run lengths, got {type(counts).__name__}"
    return f"segmentation must be a list of polygons or an RLE object, got {type(seg).__name__}"


def check_coco(dataset: dict, *, image_dir: str | os.PathLike | None = None, source: str = "annotations",
               decode: bool = False, workers: int | None = None, progress: bool = False,
               segmentation: bool = True) -> CheckReport:
    """Check a loaded COCO dict (see the module docstring); ``decode`` needs ``image_dir``.

    ``segmentation=False`` leaves masks unchecked (box-only training and evaluation never
    rasterise them).
    """
    report = CheckReport(source)
    add, note = report.problems.append, report.notes.append
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: field {key!r} must be a list, got {type(dataset.get(key)).__name__}")
    report.num_images, report.num_annotations = len(dataset["images"]), len(dataset["annotations"])
    if not dataset["annotations"]:
        note(Problem("no_annotations", "file", None, "the 'annotations' list is empty: nothing to train on "
                                                     "(pycocotools reports AP -1 without ground truth)"))
    categories: dict[Any, Any] = {}
    for k, cat in enumerate(dataset["categories"]):
        if not isinstance(cat, dict):
            raise ValueError(f"{source}: every entry of 'categories' must be an object, got {cat!r:.80}")
        cid = cat.get("id")
        if not _int_id(cid):
            add(Problem("bad_category_id", "category", record_key(cid),
                        f"categories[{k}] (name {cat.get('name')!r}): id {cid!r} is not an integer"))
            continue
        if cid in categories:
            add(Problem("duplicate_category_id", "category", cid,
                        f"category id {cid} appears more than once "
                        f"(names {categories[cid]!r} and {cat.get('name')!r})"))
            continue
        categories[cid] = cat.get("name")
        if cat.get("name") in (None, ""):
            note(Problem("category_without_name", "category", cid, f"category id {cid} has no 'name': called "
                                                                   f"{str(cid)!r}"))
    images: dict[Any, dict] = {}
    files: dict[Any, Path] = {}
    for k, img in enumerate(dataset["images"]):
        if not isinstance(img, dict):
            raise ValueError(f"{source}: every entry of 'images' must be an object, got {img!r:.80}")
        iid = img.get("id")
        if not _int_id(iid):
            add(Problem("bad_image_id", "image", record_key(iid), f"images[{k}] (file_name {img.get('file_name')!r}): "
                                                            f"id {iid!r} is not an integer (COCO ids are integers)"))
            continue
        if iid in images:
            add(Problem("duplicate_image_id", "image", iid, f"image id {iid} appears more than once"))
            continue
        images[iid] = img
        w, h = img.get("width"), img.get("height")
        if not (_finite(w) and _finite(h) and w > 0 and h > 0):
            add(Problem("bad_image_size", "image", iid, f"width/height {w!r}x{h!r} are not positive numbers"))
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            add(Problem("bad_file_name", "image", iid, f"file_name {name!r} is not a file name"))
        elif image_dir is not None:
            path = Path(image_dir) / name
            if not path.is_file():
                what = "is a folder, not an image file" if path.is_dir() else "not found"
                if "\\" in name and (Path(image_dir) / name.replace("\\", "/")).is_file():
                    what += f" (a Windows path: the file is at {name.replace(chr(92), '/')!r}; write / in file_name)"
                add(Problem("missing_image_file", "image", iid, f"image file {str(path)!r} {what}"))
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
                from torchspine.data.images import stored_size

                if stored_size(files[iid]) == (w, h):  # annotated on the stored pixels, EXIF not applied
                    note(Problem("exif_not_applied", "image", iid,
                                 f"{files[iid]} is {w}x{h} as stored and {size[0]}x{size[1]} after its EXIF "
                                 "orientation; the file's width/height are the stored ones, so its boxes refer to the "
                                 "stored pixels: the image is used as stored (not rotated)"))
                else:
                    add(Problem("image_size_mismatch", "image", iid,
                                f"{files[iid]} decodes to {size[0]}x{size[1]} but the file says {w}x{h}: its boxes "
                                "cannot be placed (training and evaluation skip the image)"))
    seen_ann: set = set()
    for k, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{source}: every entry of 'annotations' must be an object, got {ann!r:.80}")
        aid = ann.get("id")
        if not _int_id(aid):
            add(Problem("bad_annotation_id", "annotation", record_key(aid),
                        f"annotations[{k}] (image_id {ann.get('image_id')!r}): id {aid!r} is not an integer"))
            continue
        if aid in seen_ann:
            add(Problem("duplicate_annotation_id", "annotation", aid, f"annotation id {aid} appears more than once"))
            continue
        seen_ann.add(aid)
        iid = ann.get("image_id")
        if not _int_id(iid) or iid not in images:
            add(Problem("unknown_image", "annotation", aid, f"image_id {iid!r} is not in 'images'"))
            continue
        cid = ann.get("category_id")
        if not _int_id(cid) or cid not in categories:
            add(Problem("unknown_category", "annotation", aid,
                        f"category_id {cid!r} is not in 'categories' {sorted(categories)}"))
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            add(Problem("bad_box", "annotation", aid, f"bbox {bbox!r:.80} is not 4 finite numbers"))
            continue
        x, y, w, h = bbox
        if w < 0 or h < 0:
            add(Problem("bad_box", "annotation", aid, f"bbox {bbox} has a negative size"))
            continue
        area = ann.get("area")
        if area is not None and not (_finite(area) and area >= 0):
            add(Problem("bad_area", "annotation", aid, f"area {area!r:.40} is not a non-negative number"))
            continue
        crowd = ann.get("iscrowd", 0)
        if not (crowd in (0, 1) and (isinstance(crowd, (int, float)))):
            add(Problem("bad_iscrowd", "annotation", aid, f"iscrowd {crowd!r:.40} is not 0 or 1"))
            continue
        img = images[iid]
        iw, ih = img.get("width"), img.get("height")
        if segmentation:
            seg = ann.get("segmentation")
            if isinstance(seg, list) and seg and all(isinstance(poly, list) for poly in seg):
                short = [j for j, poly in enumerate(seg) if not is_polygon(poly)]
                if len(short) == len(seg):  # detectron2's load_coco_json drops such instances too
                    note(Problem("no_valid_polygon", "annotation", aid,
                                 f"segmentation: no polygon of 3 or more x, y points ({[len(p) for p in seg]} "
                                 "numbers): annotation dropped"))
                    continue
                if short:
                    note(Problem("polygon_dropped", "annotation", aid,
                                 f"segmentation: polygon(s) {short} of fewer than 3 x, y points or an odd count of "
                                 "numbers left out"))
                    seg = [poly for poly in seg if is_polygon(poly)]
            err = segmentation_error(seg, iw, ih)
            if err is not None:
                add(Problem("bad_segmentation", "annotation", aid, f"segmentation: {err}"))
                continue
        if crowd:
            continue  # crowd regions are "ignore" regions of COCO evaluation; never trained on
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
    if any(p.record == "category" for p in report.problems):  # every label depends on the category list
        raise ValueError(f"{report.summary()}\n(fix the 'categories' list: bad categories cannot be skipped)")
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
