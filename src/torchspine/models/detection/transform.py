"""Detector input handling: channel conversion, normalisation, long-side resize, square padding.

Paper section 5.1 and tensorflow/tpu models/official/detection/utils/input_utils.py: "the long side of an image is resized to the
target image size then the short side is padded with zeros to make a square image", after
ImageNet mean/std normalisation (so the padding is zero in normalised space, as in the
official ``pad_to_fixed_size``). Boxes are mapped back to each original image by
torchvision's ``postprocess``.

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

__all__ = ["DetectionTransform", "ResizeMode", "to_rgb_float"]

ResizeMode = Literal["square", "long_side", "none"]
_RESIZE_MODES = ("square", "long_side", "none")



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
    """

    def __init__(
        self,
        image_size: int,
        *,
        resize_mode: ResizeMode = "square",
        size_divisible: int = 128,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if resize_mode not in _RESIZE_MODES:
            raise ValueError(f"resize_mode {resize_mode!r}: expected one of {_RESIZE_MODES}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        # min_size == max_size == image_size makes torchvision's scale min(S/short, S/long) = S/long.
        super().__init__(int(image_size), int(image_size), list(image_mean), list(image_std),
                         size_divisible=size_divisible)
        self.image_size = int(image_size)
        self.resize_mode = resize_mode

    def forward(
        self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None
    ) -> tuple[ImageList, Optional[list[dict[str, Tensor]]]]:
        if isinstance(images, Tensor):
            images = list(images.unbind(0)) if images.dim() == 4 else [images]
        return super().forward([to_rgb_float(img) for img in images], targets)

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None):
        if self.resize_mode == "none":
            return image, target
        h, w = int(image.shape[-2]), int(image.shape[-1])
        scale = self.image_size / max(h, w)
        if not (torch.jit.is_scripting() or torchvision._is_tracing()) and min(h, w) * scale < 1:
            # An extreme aspect ratio (e.g. 10 x 3000 px): torchvision's floor(side * scale) makes the
            # short side 0 and interpolate fails; keep it one pixel, boxes scaled by the real ratio.
            size = (max(1, math.floor(h * scale)), max(1, math.floor(w * scale)))
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            if target is not None:
                target = dict(target)
                target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
                if "masks" in target:
                    target["masks"] = torch.nn.functional.interpolate(target["masks"][:, None].float(),
                                                                      size=size)[:, 0].byte()
            return image, target
        return super().resize(image, target)

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
                f"mean={tuple(self.image_mean)}, std={tuple(self.image_std)})")
