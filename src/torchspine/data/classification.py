"""Image-folder classification data (paper section 4.2 / 5 "training data pre-processing").

* :func:`classification_transforms`: the standard scale and aspect-ratio augmentation of
  Goyal et al. [7] (``RandomResizedCrop`` to 224, horizontal flip) and per-channel ImageNet
  normalisation for training; resize to ``size / 0.875`` and a centre crop for evaluation.
* :func:`image_folder`: torchvision's ``ImageFolder`` on ``root/<split>/<class>/*.png|jpg``.
* :func:`make_shapes_dataset`: a built-in, tiny, offline classification dataset for tests and
  the demo, written as an image folder: one class per shape (circle, square, triangle, cross,
  ring, bar...) drawn at a random position, size and bright colour on a dark random background
  (optionally rotated, with clutter), so the label depends on shape only and a model must
  learn it (chance is ``1 / num_classes``).
"""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

from torchspine.utils import IMAGENET_MEAN, IMAGENET_STD, atomic_write  # IMAGENET_*: re-exported

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SHAPES", "classification_transforms", "image_folder",
           "make_shapes_dataset"]

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "diamond", "star")


def classification_transforms(image_size: int = 224, *, train: bool, crop_pct: float = 0.875,
                              min_scale: float = 0.08):
    """torchvision v2 transforms: ``RandomResizedCrop`` + flip (train) or resize + centre crop (eval)."""
    import torch
    from torchvision.transforms import v2

    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if train:
        spatial = [v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
                   v2.RandomHorizontalFlip()]
    else:
        spatial = [v2.Resize(int(math.floor(image_size / crop_pct)), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.ToImage(), *spatial, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder(root: str | os.PathLike, split: str, transform=None):
    """``ImageFolder(root/split)`` with a clear error when the folder is missing or empty."""
    from torchvision.datasets import ImageFolder

    path = Path(root) / split
    if not path.is_dir():
        raise FileNotFoundError(f"classification data: no {split!r} folder at {str(path)!r} "
                                f"(expected {root}/{split}/<class>/<image>)")
    try:
        from torchspine.data.images import read_image_pil  # the one reader: 16-bit, CMYK, EXIF -> 8-bit RGB

        return ImageFolder(str(path), transform=transform, loader=read_image_pil)
    except (FileNotFoundError, RuntimeError) as e:
        raise ValueError(f"classification data: {str(path)!r}: {e}") from e


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, color: tuple[int, int, int], angle: float) -> None:
    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    w = max(2, int(r / 3))
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=w)
    elif shape == "square":
        draw.polygon(rot([(-r, -r), (r, -r), (r, r), (-r, r)]), fill=color)
    elif shape == "triangle":
        draw.polygon(rot([(0, -r), (r * 0.87, r * 0.5), (-r * 0.87, r * 0.5)]), fill=color)
    elif shape == "diamond":
        draw.polygon(rot([(0, -r), (r * 0.6, 0), (0, r), (-r * 0.6, 0)]), fill=color)
    elif shape == "bar":
        draw.polygon(rot([(-r, -r / 4), (r, -r / 4), (r, r / 4), (-r, r / 4)]), fill=color)
    elif shape == "cross":
        t = r / 3
        draw.polygon(rot([(-r, -t), (r, -t), (r, t), (-r, t)]), fill=color)
        draw.polygon(rot([(-t, -r), (t, -r), (t, r), (-t, r)]), fill=color)
    elif shape == "star":
        pts = [((r if k % 2 == 0 else r * 0.45) * math.cos(math.pi * k / 5 - math.pi / 2),
                (r if k % 2 == 0 else r * 0.45) * math.sin(math.pi * k / 5 - math.pi / 2)) for k in range(10)]
        draw.polygon(rot(pts), fill=color)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {shape!r}")


def _render(shape: str, size: int, rng: random.Random, *, rotate: bool, clutter: int):
    from PIL import Image, ImageDraw

    # Dark random background, bright random foreground: colour carries no class information,
    # contrast keeps every shape visible.
    bg = tuple(rng.randrange(0, 110) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):  # optional faint rectangles, so the shape is not the only structure
        x0, y0 = rng.randrange(0, size), rng.randrange(0, size)
        c = tuple(min(255, v + rng.randrange(10, 40)) for v in bg)
        draw.rectangle([x0, y0, x0 + rng.randrange(2, size // 3), y0 + rng.randrange(2, size // 3)], fill=c)
    r = rng.uniform(0.25, 0.42) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    color = tuple(rng.randrange(150, 256) for _ in range(3))
    _draw_shape(draw, shape, cx, cy, r, color, rng.uniform(0, 2 * math.pi) if rotate else 0.0)
    return img


def make_shapes_dataset(
    root: str | os.PathLike,
    *,
    num_classes: int = 4,
    train_per_class: int = 64,
    val_per_class: int = 16,
    image_size: int = 64,
    seed: int = 0,
    rotate: bool = False,
    clutter: int = 0,
) -> dict[str, int]:
    """Write the built-in shapes dataset as ``root/{train,val}/<shape>/<index>.png``.

    Deterministic for a given ``seed``. ``rotate`` draws shapes at random angles and ``clutter``
    adds that many faint background rectangles (both make the task harder). Returns the number
    of images per split. Each file is written atomically; an existing dataset is overwritten
    file by file.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(f"train_per_class ({train_per_class}) and val_per_class ({val_per_class}) must be >= 1")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = random.Random(seed)
    counts = {}
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for shape in SHAPES[:num_classes]:
            folder = Path(root) / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = _render(shape, image_size, rng, rotate=rotate, clutter=clutter)
                atomic_write(folder / f"{i:05d}.png", lambda tmp, img=img: img.save(tmp, format="PNG"))
        counts[split] = n * num_classes
    logger.info("shapes dataset: %s at %s", counts, root)
    return counts
