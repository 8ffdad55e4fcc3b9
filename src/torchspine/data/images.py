"""Reading image files: THE one reader for training, evaluation, prediction and ``data check``.

Every image becomes 8-bit RGB the same way, whatever its mode (Pillow decodes the file;
``Image.convert("RGB")`` alone would clip 16-bit values to 255 and turn a 16-bit PNG white):

* 8-bit gray, gray + alpha, RGBA, palette (``P``/``PA``): converted to RGB (alpha dropped);
* CMYK (JPEG / TIFF): Pillow's conversion, ``R = (255 - C) * (255 - K) / 255`` and so on;
* 16-bit gray (``I;16*``) and 16-bit RGB PNGs: the high byte, ``v >> 8`` (as libpng's
  ``png_set_strip_16`` and Pillow's own 16-bit RGB decoding do);
* 32-bit integer (``I``): values within 0..255 kept, within 0..65535 taken as 16-bit
  (``v >> 8``; Pillow opens 16-bit PGM files this way), otherwise stretched linearly from the
  image's minimum..maximum to 0..255 (logged);
* 32-bit float (``F``): values within 0..1 scaled by 255; otherwise stretched from
  minimum..maximum (logged); NaN becomes 0;
* JPEG / TIFF EXIF orientation applied (``ImageOps.exif_transpose``), so a photo taken on
  its side comes out upright, with the width and height a viewer shows;
* multi-frame files (GIF, TIFF): the first frame.

A missing file raises ``FileNotFoundError``; an empty, truncated, zero-size or non-image
file raises ``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "find_images", "read_image", "read_image_array", "read_image_as_annotated",
           "read_image_pil", "stored_size"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _to_uint8(arr: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """A 16-/32-bit integer or float single-channel array -> uint8 (rules in the module docstring)."""
    if mode.startswith("I;16"):
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if 0.0 <= lo and hi <= 1.0:
            return np.rint(arr * 255.0).astype(np.uint8)
    else:  # "I": 32-bit signed integers
        arr = arr.astype(np.int64)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if 0 <= lo and hi <= 255:
            return arr.astype(np.uint8)
        if 0 <= lo and hi <= 65535:
            return (arr >> 8).astype(np.uint8)
    logger.info("image %s (mode %s): values %s..%s stretched to 0..255", path, mode, lo, hi)
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image_pil(path: str | os.PathLike, *, exif_transpose: bool = True):
    """An image file as an 8-bit RGB ``PIL.Image`` (the rules of the module docstring).

    Usable as torchvision ``ImageFolder(loader=...)``. ``exif_transpose=False`` keeps the
    stored pixel grid (for annotations made on it: see :mod:`torchspine.data.coco`).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise FileNotFoundError(f"image {path}: a broken symbolic link (to {os.readlink(path)!r}, which does not "
                                    "exist)")
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        raise ValueError(f"image {path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ValueError(f"image {path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()  # decodes everything: a truncated file fails here, not later
            if im.width < 1 or im.height < 1:
                raise ValueError(f"zero-size image ({im.width}x{im.height})")
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode.startswith("I") or mode == "F":
                gray = _to_uint8(np.asarray(im), mode, path)
                return Image.fromarray(gray, mode="L").convert("RGB")
            if mode in ("P", "PA", "LA", "La", "RGBa", "RGBA", "1", "L", "CMYK", "YCbCr", "LAB", "HSV"):
                if mode in ("P", "PA") and "transparency" in im.info:
                    im = im.convert("RGBA")  # palette transparency goes through RGBA (Pillow's advice)
                return im.convert("RGB")
            if mode == "RGB":
                return im.copy()
            return im.convert("RGB")
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(f"image {path}") else f"image {path}: cannot be decoded ({e})") from e
    except PermissionError as e:  # an OSError, but not a decoding problem: say what to fix
        raise ValueError(f"image {path}: not readable by this user (permission denied)") from e
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        raise ValueError(f"image {path}: cannot be decoded ({e})") from e


def stored_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of the pixel grid as stored, before any EXIF orientation (header only)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def read_image_as_annotated(path: str | os.PathLike, width: int, height: int) -> tuple[np.ndarray, bool]:
    """``(H, W, 3)`` uint8 RGB on the pixel grid an annotation file's ``width x height`` describe,
    and whether that is the stored grid (EXIF orientation not applied).

    The reader shows an image as a viewer does (EXIF orientation applied). An annotation file
    whose width/height are instead the stored grid (the sides swapped; pycocotools-era tools and
    torchvision's ``CocoDetection`` read images without EXIF) has its boxes on the stored pixels,
    so the image is returned as stored. Any other mismatch would misplace every box: a
    ``ValueError`` names the file and both sizes.
    """
    arr = read_image_array(path)
    want = (int(width), int(height))
    got = (arr.shape[1], arr.shape[0])
    if got == want:
        return arr, False
    if stored_size(path) == want:
        return read_image_array(path, exif_transpose=False), True
    raise ValueError(f"image {path} is {got[0]}x{got[1]} but the annotation file says {want[0]}x{want[1]}: its "
                     "boxes cannot be placed; fix width/height or the file")


def read_image_array(path: str | os.PathLike, *, exif_transpose: bool = True) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 RGB array (see :func:`read_image_pil`)."""
    return np.array(read_image_pil(path, exif_transpose=exif_transpose), dtype=np.uint8)


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor (see :func:`read_image_pil`).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or unreadable.
    """
    return torch.from_numpy(read_image_array(path)).permute(2, 0, 1).contiguous()


def find_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named in ``inputs``, with folders expanded to their image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # a broken link named like an image is listed, so reading it reports it (not skipped silently)
            out.extend(sorted(f for f in p.iterdir()
                              if (f.is_file() or (f.is_symlink() and not f.exists()))
                              and f.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(p)  # missing files are reported when read
    return out
