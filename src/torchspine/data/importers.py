"""Box annotations as users have them (Pascal VOC XML, YOLO text, CSV) -> one COCO JSON dict.

Every importer keeps the class names, gives stable ids (categories ``1..K`` in the order of
``classes`` when given, else sorted by name; images ``1..N`` sorted by file name; annotations
numbered in that order, so re-importing the same files gives the same file) and runs the same
checks as ``torchspine data check`` (:func:`torchspine.data.checks.check_coco`) on the result.

Coordinate conventions (each converted to COCO ``[x, y, w, h]`` in pixels, origin at the
top-left corner of the top-left pixel):

* VOC: ``xmin ymin xmax ymax`` are 1-based inclusive pixel indices (the VOC devkit); the box is
  ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``, as detectron2's VOC loader reads it.
* YOLO: one ``class cx cy w h`` line per box, normalised by the image size; class indices
  0-based into ``classes.txt`` (or ``--classes``).
* CSV: a header naming the columns (``filename``/``image``/``path``, ``xmin ymin xmax ymax`` or
  ``x1 y1 x2 y2``, ``class``/``label``; the TensorFlow Object Detection CSV has these), or no
  header and the keras-retinanet layout ``path,x1,y1,x2,y2,class``; corners in pixels. A row
  with empty box fields lists an image without objects.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from torchspine.data.checks import CheckReport, Problem, check_coco
from torchspine.data.images import IMAGE_EXTENSIONS

__all__ = ["FORMATS", "ImportResult", "import_annotations", "import_csv", "import_voc", "import_yolo",
           "read_class_names"]

logger = logging.getLogger(__name__)

FORMATS = ("voc", "yolo", "csv")


@dataclass
class _Box:
    file_name: str
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    extra: dict[str, Any] | None = None
    where: str = ""  # the file and line / object it came from, for messages


@dataclass
class ImportResult:
    """The COCO dict and the check report of an import."""

    coco: dict[str, Any]
    report: CheckReport

    @property
    def ok(self) -> bool:
        return not self.report.problems


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a byte-order mark is dropped); bad bytes are a ``ValueError`` naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments ignored), e.g. YOLO's ``classes.txt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file not found: {path}")
    names = [ln.strip() for ln in _read_text(path, "class names file").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"class names file {path}: no names in it")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"class names file {path}: names listed twice: {dup}")
    return names


def _image_size(path: Path, where: str | None = None, *, displayed: bool = False) -> tuple[int, int]:
    """``(width, height)`` from the file header (no decoding); ``where`` names the record citing it.

    ``displayed``: after the EXIF orientation (sides swapped for orientations 5-8), the image a
    viewer shows; otherwise the stored pixel grid.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError((f"{where}: " if where else "") + f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = int(im.width), int(im.height)
            if displayed and im.getexif().get(0x0112) in (5, 6, 7, 8):  # 0x0112: Orientation
                w, h = h, w
            return w, h
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"image {path}: cannot be read ({e})") from e


def _number(text: str | None, *, where: str, field: str) -> float:
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {field!r} is not a number: {text!r}") from None


def _note_exif_orientations(report: CheckReport, images: list[dict[str, Any]], image_dir: Path) -> None:
    """A note for each image with an EXIF orientation: pixel boxes (VOC, CSV) do not say whether
    they were drawn on the stored pixels or on the image as a viewer shows it, and a flip or a
    half turn keeps the size, so nothing can tell; the note says which one the boxes are read on."""
    from PIL import Image

    for im in images:
        path = image_dir / im["file_name"]
        try:
            with Image.open(path) as pil:
                turn, stored = pil.getexif().get(0x0112), pil.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # an unreadable image is a problem of its own in the report
        if turn not in (2, 3, 4, 5, 6, 7, 8):
            continue
        on = ("the stored pixel grid (not rotated)" if turn >= 5 and (im["width"], im["height"]) == stored
              else "the image as a viewer shows it (EXIF applied)")
        report.notes.append(Problem("exif_orientation", "image", im["id"],
                                    f"{path} carries EXIF orientation {turn}: its boxes are read on {on}, "
                                    f"{im['width']}x{im['height']}; check that they were drawn there"))


def _build(boxes: Iterable[_Box], sizes: dict[str, tuple[int, int]], *, classes: Sequence[str] | None,
           image_dir: str | os.PathLike | None, source: str, sizes_as_shown: bool = False) -> ImportResult:
    boxes = list(boxes)
    bad = [f"{b.where}: corners ({b.x1:g}, {b.y1:g}) - ({b.x2:g}, {b.y2:g}) "
           + ("are not finite numbers" if not all(map(math.isfinite, (b.x1, b.y1, b.x2, b.y2)))
              else "have the max corner before the min corner")
           for b in boxes if not (all(map(math.isfinite, (b.x1, b.y1, b.x2, b.y2))) and b.x2 >= b.x1 and b.y2 >= b.y1)]
    if bad:
        raise ValueError(f"{source}: {len(bad)} box(es) cannot be converted:\n  " + "\n  ".join(bad[:10])
                         + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""))
    names = list(classes) if classes is not None else sorted({b.label for b in boxes})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    unknown = sorted({b.label for b in boxes} - set(cat_id))
    if unknown:
        raise ValueError(f"{source}: class name(s) {unknown} are not in the class list {names}")
    images = [{"id": i + 1, "file_name": f, "width": w, "height": h}
              for i, (f, (w, h)) in enumerate(sorted(sizes.items()))]
    image_id = {im["file_name"]: im["id"] for im in images}
    order = sorted(range(len(boxes)), key=lambda i: (image_id[boxes[i].file_name], i))
    anns = []
    for k, i in enumerate(order):
        b = boxes[i]
        w, h = b.x2 - b.x1, b.y2 - b.y1
        ann = {"id": k + 1, "image_id": image_id[b.file_name], "category_id": cat_id[b.label],
               "bbox": [round(b.x1, 3), round(b.y1, 3), round(w, 3), round(h, 3)], "area": round(w * h, 3),
               "iscrowd": 0}
        ann.update(b.extra or {})
        anns.append(ann)
    coco = {"info": {"description": f"imported by torchspine from {source}"}, "images": images,
            "annotations": anns, "categories": [{"id": cat_id[n], "name": n} for n in names]}
    report = check_coco(coco, image_dir=image_dir, source=source, decode=image_dir is not None)
    if image_dir is not None and not sizes_as_shown:
        _note_exif_orientations(report, images, Path(image_dir))
    logger.info("%s: %d images, %d boxes, %d classes", source, len(images), len(anns), len(names))
    return ImportResult(coco, report)


def _xml_files(ann: Path) -> list[Path]:
    if ann.is_dir():
        files = sorted(ann.glob("*.xml"))
        if not files:
            raise FileNotFoundError(f"no .xml files in {ann}")
        return files
    if not ann.is_file():
        raise FileNotFoundError(f"VOC annotation file or folder not found: {ann}")
    return [ann]


def import_voc(ann: str | os.PathLike, image_dir: str | os.PathLike, *, classes: Sequence[str] | None = None,
               skip_difficult: bool = False) -> ImportResult:
    """Pascal VOC XML files (a folder of them, or one file) -> COCO; ``difficult`` boxes are
    kept with ``"difficult": 1`` unless ``skip_difficult``."""
    image_dir = Path(image_dir)
    boxes: list[_Box] = []
    sizes: dict[str, tuple[int, int]] = {}
    for path in _xml_files(Path(ann)):
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise ValueError(f"VOC file {path}: not valid XML ({e})") from e
        fname = (root.findtext("filename") or "").strip()
        if not fname:
            raise ValueError(f"VOC file {path}: no <filename>")
        if fname in sizes:
            raise ValueError(f"VOC file {path}: image {fname!r} is described by two XML files")
        size = root.find("size")
        w = h = None
        if size is not None and size.findtext("width") and size.findtext("height"):
            w = int(_number(size.findtext("width"), where=f"VOC file {path}", field="size/width"))
            h = int(_number(size.findtext("height"), where=f"VOC file {path}", field="size/height"))
        if not w or not h:  # some tools write 0 or leave it out: read the image header
            w, h = _image_size(image_dir / fname, f"VOC file {path}")
        sizes[fname] = (w, h)
        for j, obj in enumerate(root.iter("object")):
            where = f"VOC file {path}, object {j + 1}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise ValueError(f"{where}: no <name>")
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            if difficult and skip_difficult:
                continue
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError(f"{where}: no <bndbox>")
            x1, y1, x2, y2 = (_number(bb.findtext(k), where=where, field=f"bndbox/{k}")
                              for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append(_Box(fname, name, x1 - 1, y1 - 1, x2, y2, {"difficult": 1} if difficult else None,
                              f"{where} (bndbox xmin {x1:g} ymin {y1:g} xmax {x2:g} ymax {y2:g}, 1-based)"))
    return _build(boxes, sizes, classes=classes, image_dir=image_dir, source=str(ann))


def import_yolo(label_dir: str | os.PathLike, image_dir: str | os.PathLike, *,
                classes: Sequence[str] | None = None) -> ImportResult:
    """YOLO ``.txt`` label files -> COCO. Every image in ``image_dir`` is listed (one without a
    label file has no objects); class names from ``classes``, else ``label_dir/classes.txt``."""
    label_dir, image_dir = Path(label_dir), Path(image_dir)
    if not label_dir.is_dir():
        raise FileNotFoundError(f"YOLO label folder not found: {label_dir}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    if classes is None:
        if not (label_dir / "classes.txt").is_file():
            raise FileNotFoundError(f"YOLO labels need class names: {label_dir / 'classes.txt'} not found "
                                    f"(give --classes FILE, one name per line, in class-index order)")
        classes = read_class_names(label_dir / "classes.txt")
    classes = list(classes)
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise ValueError(f"image folder {image_dir}: {by_stem[p.stem].name} and {p.name} share the stem "
                             f"{p.stem!r}; YOLO labels cannot tell them apart")
        by_stem[p.stem] = p
    labels = sorted(p for p in label_dir.glob("*.txt") if p.name != "classes.txt")
    orphans = [p.name for p in labels if p.stem not in by_stem]
    if orphans:
        raise FileNotFoundError(f"YOLO label file(s) without an image in {image_dir}: {orphans[:5]}"
                                + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""))
    boxes: list[_Box] = []
    # Normalised to the image as shown, after its EXIF orientation (Ultralytics, whose format
    # this is, sizes images with exif_size in ultralytics/data/utils.py and reads them rotated).
    sizes = {p.name: _image_size(p, displayed=True) for p in images}
    for lp in labels:
        img = by_stem[lp.stem]
        w, h = sizes[img.name]
        for n, line in enumerate(_read_text(lp, "YOLO file").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"YOLO file {lp}, line {n}"
            if len(parts) != 5:
                raise ValueError(f"{where}: expected 'class cx cy w h' (5 fields), got {len(parts)}: {line!r}")
            c = _number(parts[0], where=where, field="class")
            if c != int(c) or not 0 <= c < len(classes):
                raise ValueError(f"{where}: class {parts[0]!r} is not an index into the {len(classes)} classes "
                                 f"{classes}")
            cx, cy, bw, bh = (_number(v, where=where, field=f) for v, f in zip(parts[1:], ("cx", "cy", "w", "h")))
            # YOLO coordinates are fractions of the image: a value outside [0, 1] (or NaN) is a broken
            # line (pixels written as fractions, a wrong image), not a box to clip
            bad = [f"{f}={v}" for f, v in zip(("cx", "cy", "w", "h"), (cx, cy, bw, bh)) if not 0.0 <= v <= 1.0]
            if bad:
                raise ValueError(f"{where}: {', '.join(bad)} outside [0, 1] (YOLO coordinates are fractions of the "
                                 f"image width and height): {line.strip()!r}")
            boxes.append(_Box(img.name, classes[int(c)], (cx - bw / 2) * w, (cy - bh / 2) * h,
                              (cx + bw / 2) * w, (cy + bh / 2) * h, where=where))
    return _build(boxes, sizes, classes=classes, image_dir=image_dir, source=str(label_dir), sizes_as_shown=True)


_CSV_COLUMNS = {
    "file": ("filename", "file_name", "image", "image_path", "path", "file", "image_id"),
    "x1": ("xmin", "x1", "x_min", "left"),
    "y1": ("ymin", "y1", "y_min", "top"),
    "x2": ("xmax", "x2", "x_max", "right"),
    "y2": ("ymax", "y2", "y_max", "bottom"),
    "label": ("class", "label", "class_name", "category", "name"),
}


def import_csv(csv_file: str | os.PathLike, image_dir: str | os.PathLike, *,
               classes: Sequence[str] | None = None) -> ImportResult:
    """A CSV of boxes (see the module docstring for the layouts read) -> COCO."""
    csv_file, image_dir = Path(csv_file), Path(image_dir)
    if not csv_file.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_file}")
    rows = [r for r in csv.reader(io.StringIO(_read_text(csv_file, "CSV file"), newline=""))
            if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"CSV file {csv_file}: empty")
    header = [c.strip().lower() for c in rows[0]]
    cols: dict[str, int] = {}
    for key, options in _CSV_COLUMNS.items():
        for o in options:
            if o in header:
                cols[key] = header.index(o)
                break
    if len(cols) == len(_CSV_COLUMNS):
        body, first = rows[1:], 2
    elif not cols and len(rows[0]) == 6:  # keras-retinanet: path,x1,y1,x2,y2,class (no header)
        cols = {"file": 0, "x1": 1, "y1": 2, "x2": 3, "y2": 4, "label": 5}
        body, first = rows, 1
    else:
        missing = [k for k in _CSV_COLUMNS if k not in cols]
        raise ValueError(f"CSV file {csv_file}: header {rows[0]} lacks column(s) for {missing} (accepted names: "
                         + "; ".join(f"{k}: {'/'.join(v)}" for k, v in _CSV_COLUMNS.items() if k in missing)
                         + "), and it is not a 6-column path,x1,y1,x2,y2,class file")
    boxes: list[_Box] = []
    sizes: dict[str, tuple[int, int]] = {}
    for n, row in enumerate(body, start=first):
        where = f"CSV file {csv_file}, line {n}"
        if len(row) <= max(cols.values()):
            raise ValueError(f"{where}: {len(row)} fields, expected at least {max(cols.values()) + 1}")
        fname = row[cols["file"]].strip()
        if not fname:
            raise ValueError(f"{where}: empty image file name")
        if fname not in sizes:
            sizes[fname] = _image_size(image_dir / fname, where)
        coords = [row[cols[k]].strip() for k in ("x1", "y1", "x2", "y2")]
        label = row[cols["label"]].strip()
        if not any(coords) and not label:
            continue  # an image without objects
        x1, y1, x2, y2 = (_number(v, where=where, field=k) for v, k in zip(coords, ("x1", "y1", "x2", "y2")))
        if not label:
            raise ValueError(f"{where}: box without a class name")
        boxes.append(_Box(fname, label, x1, y1, x2, y2, where=where))
    return _build(boxes, sizes, classes=classes, image_dir=image_dir, source=str(csv_file))


def import_annotations(fmt: str, ann: str | os.PathLike, image_dir: str | os.PathLike, *,
                       classes: Sequence[str] | None = None) -> ImportResult:
    """Dispatch on ``fmt`` (``voc``, ``yolo`` or ``csv``)."""
    if fmt == "voc":
        return import_voc(ann, image_dir, classes=classes)
    if fmt == "yolo":
        return import_yolo(ann, image_dir, classes=classes)
    if fmt == "csv":
        return import_csv(ann, image_dir, classes=classes)
    raise ValueError(f"--format {fmt!r}: expected one of {FORMATS}")
