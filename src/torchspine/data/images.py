"""Reading image files: one reader for training, evaluation and prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "find_images", "read_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor (grayscale, palette, RGBA converted).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image {path}: cannot be decoded ({e})") from e
    return pil_to_tensor(rgb)


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named in ``inputs``, with folders expanded to their image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(p)  # missing files are reported when read
    return out
