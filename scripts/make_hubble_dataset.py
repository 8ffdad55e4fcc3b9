"""A small real detection dataset for the own-data walk-through (docs/own_data.md).

The image is scikit-image's ``hubble_deep_field`` (872 x 1000 px, shipped in the scikit-image
wheel, so nothing is downloaded; NASA image, public domain: "may be freely used in the public
domain", per skimage.data.hubble_deep_field's notes). Its left 600 columns are the training
image, the right 400 the validation image. The boxes are NOT hand-drawn: every connected region
of the Gaussian-smoothed (sigma 1.5) grey image above Otsu's threshold with at least 30 pixels
is one "galaxy" box (its bounding box, to the pixel); 196 objects of 7 to 43 px in the whole
image. A detector trained on them learns to find the bright sources this rule finds.

Writes, under --out: train/hubble_train.png, val/hubble_val.png, their Pascal VOC XML files
(train/voc/, val/voc/, 1-based inclusive corners as the VOC devkit writes them) and the same
boxes as CSV (train/boxes.csv, val/boxes.csv: filename,xmin,ymin,xmax,ymax,class in pixels).

    python scripts/make_hubble_dataset.py --out data/hubble
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

SPLIT_X = 600
MIN_AREA = 30


def galaxy_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` (pixel edges) of the bright sources of an RGB image (see the module docstring)."""
    from skimage import color, filters, measure

    smooth = filters.gaussian(color.rgb2gray(image), 1.5)
    labels = measure.label(smooth > filters.threshold_otsu(smooth))
    return [(p.bbox[1], p.bbox[0], p.bbox[3], p.bbox[2]) for p in measure.regionprops(labels) if p.area >= MIN_AREA]


def _voc(path: Path, filename: str, width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> None:
    objs = "".join(f"  <object><name>galaxy</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                   f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>\n"
                   for x1, y1, x2, y2 in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation>\n  <filename>{filename}</filename>\n  <size><width>{width}</width>"
                    f"<height>{height}</height><depth>3</depth></size>\n{objs}</annotation>\n")


def make(out: Path) -> dict[str, int]:
    from PIL import Image
    from skimage import data

    image = data.hubble_deep_field()
    counts = {}
    for split, x0, x1 in (("train", 0, SPLIT_X), ("val", SPLIT_X, image.shape[1])):
        part = np.ascontiguousarray(image[:, x0:x1])
        boxes = galaxy_boxes(part)  # found on the part itself: no box is cut by the split
        name = f"hubble_{split}.png"
        (out / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(part).save(out / split / name)
        _voc(out / split / "voc" / f"hubble_{split}.xml", name, part.shape[1], part.shape[0], boxes)
        with open(out / split / "boxes.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "xmin", "ymin", "xmax", "ymax", "class"])
            w.writerows([name, *b, "galaxy"] for b in boxes)
        counts[split] = len(boxes)
    return counts


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    counts = make(Path(ap.parse_args().out))
    print(f"galaxy boxes: {counts}")
