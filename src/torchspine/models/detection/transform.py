"""Detector input handling: channel conversion, normalisation, long-side resize, square padding.

Paper section 5.1 and tensorflow/tpu models/official/detection/utils/input_utils.py: "the long side of an image is resized to the
target image size then the short side is padded with zeros to make a square image", after
ImageNet mean/std normalisation (so the padding is zero in normalised space, as in the
official ``pad_to_fixed_size``). Boxes are mapped back to each original image by
torchvision's ``postprocess`` (scale = resized size / original size per axis, the official
``image_info[2]``).

The resized size is the official one (``resize_and_crop_image`` of tensorflow/tpu
``utils/input_utils.py`` and tensorflow/models ``official/vision/ops/preprocess_ops.py``):
``scale = min(S / h, S / w)`` and ``round(h * scale)`` in float32 (round half to even, as
``tf.round``); torchvision floors ``h * scale`` (one pixel short for e.g. 334 x 500 -> 427 x 640
instead of 428 x 640). Two bilinear kernels: ``"bilinear"`` (half-pixel centres: Model Garden's
TF2 ``tf.image.resize``, and ``F.interpolate(align_corners=False)``) and ``"bilinear_tf1"``
(tensorflow/tpu's TF1 ``tf.image.resize_images``: source pixel ``i * in / out``, no half-pixel
offset, which ``F.interpolate`` does not offer).

A subclass of torchvision's ``GeneralizedRCNNTransform``; written because torchvision resizes
the *short* side (``min_size``) and pads only to a multiple of 32, and rejects grayscale,
RGBA and integer images.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torchvision
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from torchspine.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DetectionTransform", "ResizeInterpolation", "ResizeMode", "official_resized_size", "resize_bilinear_tf1",
           "to_rgb_float"]

ResizeMode = Literal["square", "long_side", "none"]
_RESIZE_MODES = ("square", "long_side", "none")
ResizeInterpolation = Literal["bilinear", "bilinear_tf1"]
_INTERPOLATIONS = ("bilinear", "bilinear_tf1")


def official_resized_size(height: int, width: int, image_size: int) -> tuple[int, int]:
    """``(h, w)`` of an image whose long side is resized to ``image_size``, as the official code
    computes it: ``scale = min(S / h, S / w)``, ``round(size * scale)``, all in float32 and
    rounding half to even (``tf.round``)."""
    size = torch.tensor([float(height), float(width)], dtype=torch.float32)
    target = torch.tensor(float(image_size), dtype=torch.float32)
    scale = torch.minimum(target / size[0], target / size[1])
    new = torch.round(size * scale)
    # An extreme aspect ratio (e.g. 1 x 3000 px) would round its short side to 0: keep one pixel.
    return max(1, int(new[0])), max(1, int(new[1]))


def _tf1_axis(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    # Source coordinate i * (in / out), both factors float32 as in TF's CalculateResizeScale.
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32, device=device) * scale.to(device)
    lo = src.floor().clamp(max=in_size - 1)
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=in_size - 1)
    return lo, hi, frac


def resize_bilinear_tf1(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(C, H, W)`` to ``size`` as TF1 ``tf.image.resize_images`` does it
    (``align_corners=False``, ``half_pixel_centers=False``: output pixel ``i`` samples input
    ``i * in / out``), the resize of tensorflow/tpu ``utils/input_utils.py``."""
    h, w = image.shape[-2:]
    y0, y1, fy = _tf1_axis(int(h), int(size[0]), image.device)
    x0, x1, fx = _tf1_axis(int(w), int(size[1]), image.device)
    img = image.float()
    top = img[:, y0, :]
    bottom = img[:, y1, :]
    fy = fy[None, :, None]
    rows = top + (bottom - top) * fy
    left = rows[:, :, x0]
    right = rows[:, :, x1]
    return (left + (right - left) * fx[None, None, :]).to(image.dtype)



def to_rgb_float(image: Tensor) -> Tensor:
    """A ``(3, H, W)`` float image in [0, 1] from ``(H, W)``, ``(1|3|4, H, W)``, float or uint8.

    Grayscale is repeated to three channels; RGBA drops its alpha channel; integer images are
    divided by their dtype's maximum (255 for uint8).
    """
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3:
        raise ValueError(f"an image must be (H, W) or (C, H, W), got shape {tuple(image.shape)}")
    c = image.shape[0]
    if c == 1:
        image = image.expand(3, -1, -1)
    elif c == 2:  # gray + alpha
        image = image[:1].expand(3, -1, -1)
    elif c == 4:
        image = image[:3]
    elif c != 3:
        raise ValueError(f"an image must have 1, 2, 3 or 4 channels, got {c} (shape {tuple(image.shape)})")
    if not image.is_floating_point():
        if image.dtype == torch.bool:
            image = image.float()
        else:
            image = image.float() / float(torch.iinfo(image.dtype).max)
    return image


class DetectionTransform(GeneralizedRCNNTransform):
    """Resize + pad as the paper does, on torchvision's transform.

    Args:
        image_size: target long side (the official ``image_size``: 640 for 49S/49, 1024 for 96,
            1280 for 143/190).
        resize_mode: ``"square"`` (paper: long side to ``image_size``, zero-pad to
            ``image_size x image_size``), ``"long_side"`` (same resize, pad the batch only to
            a multiple of ``size_divisible``), ``"none"`` (no resize; pad to a multiple of
            ``size_divisible``).
        size_divisible: padding multiple for ``"long_side"`` / ``"none"`` (128 = the P7 stride,
            so every level tiles exactly; SpineNet itself accepts any size).
        image_mean, image_std: normalisation (ImageNet, :data:`torchspine.utils.IMAGENET_MEAN` / ``IMAGENET_STD``).
        resize_interpolation: ``"bilinear"`` (half-pixel centres; Model Garden) or ``"bilinear_tf1"``
            (tensorflow/tpu's TF1 resize); see the module docstring.
    """

    def __init__(
        self,
        image_size: int,
        *,
        resize_mode: ResizeMode = "square",
        size_divisible: int = 128,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        resize_interpolation: ResizeInterpolation = "bilinear",
    ) -> None:
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode {resize_mode!r}: expected one of {_RESIZE_MODES}")
        if resize_interpolation not in _INTERPOLATIONS:
            raise ValueError(f"resize_interpolation {resize_interpolation!r}: expected one of {_INTERPOLATIONS}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        # min_size == max_size == image_size makes torchvision's scale min(S/short, S/long) = S/long.
        super().__init__(int(image_size), int(image_size), list(image_mean), list(image_std),
                         size_divisible=size_divisible)
        self.image_size = int(image_size)
        self.resize_mode = resize_mode
        self.resize_interpolation = resize_interpolation

    def forward(
        self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None
    ) -> tuple[ImageList, Optional[list[dict[str, Tensor]]]]:
        if isinstance(images, Tensor):
            images = list(images.unbind(0)) if images.dim() == 4 else [images]
        return super().forward([to_rgb_float(img) for img in images], targets)

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None):
        if self.resize_mode == "none":
            return image, target
        h, w = (int(v) for v in image.shape[-2:])
        size = official_resized_size(h, w, self.image_size)
        if self.resize_interpolation == "bilinear_tf1":
            image = resize_bilinear_tf1(image, size)
        else:
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is None:
            return image, target
        target = dict(target)
        if "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], [h, w], list(size))
        if "masks" in target:
            masks = target["masks"][:, None].float()
            target["masks"] = torch.nn.functional.interpolate(masks, size=size)[:, 0].byte()
        return image, target

    def canvas_size(self, image_shape: Sequence[int]) -> tuple[int, int]:
        """The padded image that holds a resized image of ``image_shape``: ``image_size`` square
        (``"square"``), else each side rounded up to ``size_divisible`` (Model Garden's
        ``image_info[1]``, the box clipping window of its detection generator)."""
        if self.resize_mode == "square":
            return self.image_size, self.image_size
        d = self.size_divisible
        return int(math.ceil(image_shape[0] / d) * d), int(math.ceil(image_shape[1] / d) * d)

    def batch_images(self, images: list[Tensor], size_divisible: int = 128) -> Tensor:
        height = max(img.shape[-2] for img in images)
        width = max(img.shape[-1] for img in images)
        if self.resize_mode == "square":
            side = max(height, width, self.image_size)
            height = width = side
        else:
            height = int(math.ceil(height / size_divisible) * size_divisible)
            width = int(math.ceil(width / size_divisible) * size_divisible)
        batch = images[0].new_zeros((len(images), 3, height, width))
        for i, img in enumerate(images):
            batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(image_size={self.image_size}, resize_mode={self.resize_mode!r}, "
                f"resize_interpolation={self.resize_interpolation!r}, mean={tuple(self.image_mean)}, "
                f"std={tuple(self.image_std)})")
