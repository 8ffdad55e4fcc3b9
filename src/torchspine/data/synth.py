"""A built-in COCO-format dataset of shapes at very different scales.

Each image holds a few filled circles, squares and triangles of three size bands (small
< 32x32 px, medium, large > 96x96 px in COCO's area terms at the default 256 px image),
over a smooth random background with mild noise, so that a small SpineNet must use its
high- and low-resolution levels together. Objects carry polygon masks (exact: a circle is a
32-gon) and COCO ``area`` from the rasterised mask. Generation is deterministic: the same
``seed`` and sizes give byte-identical PNGs and JSON.

Hand-written because no library ships a multi-scale detection toy set with masks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from torchspine.utils import atomic_write, atomic_write_text

__all__ = ["SYNTH_CATEGORIES", "SynthConfig", "generate_synth", "default_synth_root", "ensure_synth"]

logger = logging.getLogger(__name__)

SYNTH_CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
)
# Object side length bands (px) at image_size 256: COCO small is area < 32^2, large > 96^2.
_SIZE_BANDS = ((12, 26), (36, 80), (100, 150))
_VERSION = 1


@dataclass(frozen=True)
class SynthConfig:
    """Sizes of the built-in dataset.

    The defaults were chosen so that a SpineNet-49S-style RetinaNet at filter scale 0.25
    learns it on 2 CPU cores within minutes (see docs/training.md).
    """

    num_train: int = 384
    num_val: int = 64
    image_size: int = 256
    min_objects: int = 2
    max_objects: int = 5
    seed: int = 0

    def validate(self) -> "SynthConfig":
        for name in ("num_train", "num_val", "image_size", "min_objects", "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"synth config: {name} must be >= 1, got {getattr(self, name)}")
        if self.min_objects > self.max_objects:
            raise ValueError(f"synth config: min_objects {self.min_objects} > max_objects {self.max_objects}")
        if self.image_size < 64:
            raise ValueError(f"synth config: image_size must be >= 64, got {self.image_size}")
        return self


def _polygon(kind: int, cx: float, cy: float, side: float, angle: float) -> list[float]:
    """Vertices (x0, y0, x1, y1, ...) of a shape of category ``kind`` centred at (cx, cy)."""
    if kind == 1:  # circle: a 32-gon of diameter ``side``
        n, r, a0 = 32, side / 2, 0.0
    elif kind == 2:  # axis-aligned square
        n, r, a0 = 4, side / 2 * math.sqrt(2), math.pi / 4
    else:  # upright-ish equilateral triangle whose circumcircle has diameter ``side``
        n, r, a0 = 3, side / 2, -math.pi / 2 + angle
    pts: list[float] = []
    for k in range(n):
        a = a0 + 2 * math.pi * k / n
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient plus mild noise (uint8 HxWx3)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, size)
    horizontal = rng.random() < 0.5
    ramp = t[None, :, None] if horizontal else t[:, None, None]
    img = c0 * (1 - ramp) + c1 * ramp
    img = np.broadcast_to(img, (size, size, 3)) + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _split(cfg: SynthConfig, split: str, count: int, first_id: int, image_dir: Path) -> dict:
    rng = np.random.default_rng([cfg.seed, 0 if split == "train" else 1, _VERSION])
    scale = cfg.image_size / 256.0
    images, annotations = [], []
    ann_id = 1
    for i in range(count):
        image_id = first_id + i
        size = cfg.image_size
        canvas = Image.fromarray(_background(rng, size))
        draw = ImageDraw.Draw(canvas)
        n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        # One object of each band first (small, medium, large), then random bands.
        bands = [0, 1, 2][:n_obj] + list(rng.integers(0, 3, max(0, n_obj - 3)))
        placed: list[tuple[float, float, float, float]] = []
        for band in sorted(bands, reverse=True):  # large first, so small ones are drawn on top
            lo, hi = _SIZE_BANDS[int(band)]
            for _attempt in range(30):
                side = float(rng.uniform(lo, hi)) * scale
                cx = float(rng.uniform(side / 2 + 1, size - side / 2 - 1))
                cy = float(rng.uniform(side / 2 + 1, size - side / 2 - 1))
                box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
                # Keep objects separate: no overlap with earlier ones (so masks stay whole).
                if all(box[2] < p[0] or box[0] > p[2] or box[3] < p[1] or box[1] > p[3] for p in placed):
                    break
            else:
                continue
            kind = int(rng.integers(1, 4))
            poly = _polygon(kind, cx, cy, side, float(rng.uniform(-0.3, 0.3)))
            colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], size, size))
            xs, ys = poly[0::2], poly[1::2]
            x, y = max(0.0, min(xs)), max(0.0, min(ys))
            w, h = min(float(size), max(xs)) - x, min(float(size), max(ys)) - y
            placed.append(box)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": kind,
                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                "area": float(mask_utils.area(rle)), "iscrowd": 0,
                "segmentation": [[round(v, 2) for v in poly]],
            })
            ann_id += 1
        file_name = f"{split}_{image_id:06d}.png"
        path = image_dir / file_name
        atomic_write(path, lambda tmp, c=canvas: c.save(tmp, format="PNG"))
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
    return {
        "info": {"description": f"torchspine synthetic shapes v{_VERSION} ({split})", "version": str(_VERSION)},
        "images": images, "annotations": annotations, "categories": list(SYNTH_CATEGORIES),
    }


def generate_synth(out: str | os.PathLike, config: SynthConfig | None = None) -> dict[str, Path]:
    """Write ``out/{train,val}/`` images and ``out/annotations/{train,val}.json``.

    Returns the paths: ``train_ann``, ``train_images``, ``val_ann``, ``val_images``.
    """
    cfg = (config or SynthConfig()).validate()
    out = Path(out)
    paths = {}
    for split, count, first in (("train", cfg.num_train, 1), ("val", cfg.num_val, 1_000_001)):
        image_dir = out / split
        image_dir.mkdir(parents=True, exist_ok=True)
        data = _split(cfg, split, count, first, image_dir)
        ann = out / "annotations" / f"{split}.json"
        atomic_write_text(ann, json.dumps(data))
        paths[f"{split}_ann"], paths[f"{split}_images"] = ann, image_dir
        logger.info("synth %s: %d images, %d objects -> %s", split, len(data["images"]),
                    len(data["annotations"]), ann)
    atomic_write_text(out / "synth.json", json.dumps({"version": _VERSION, **cfg.__dict__}, sort_keys=True))
    return paths


def default_synth_root() -> Path:
    """Where the embedded default dataset lives: ``$TORCHSPINE_DATA`` or ``~/.cache/torchspine``."""
    base = os.environ.get("TORCHSPINE_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "torchspine")
    return Path(base) / f"synth_v{_VERSION}"


def ensure_synth(root: str | os.PathLike | None = None, config: SynthConfig | None = None) -> dict[str, Path]:
    """Generate the built-in dataset at ``root`` unless an identical one is already there."""
    cfg = (config or SynthConfig()).validate()
    root = Path(root) if root is not None else default_synth_root()
    marker = root / "synth.json"
    want = {"version": _VERSION, **cfg.__dict__}
    paths = {"train_ann": root / "annotations" / "train.json", "train_images": root / "train",
             "val_ann": root / "annotations" / "val.json", "val_images": root / "val"}
    if marker.exists() and all(p.exists() for p in paths.values()):
        try:
            if json.loads(marker.read_text()) == want:
                return paths
        except json.JSONDecodeError:
            pass
    return generate_synth(root, cfg)
