"""Detection transforms of the paper and the official input pipeline
(tensorflow/tpu models/official/detection/dataloader/retinanet_parser.py, utils/input_utils.py).

Training: the long side is resized to ``size * s`` with ``s`` drawn from the scale-jitter
range, a random ``size x size`` window is cropped when the result is larger, the image is
padded to ``size x size``; before all this it is flipped horizontally at random. Boxes (xyxy pixels) and
instance masks follow every step; boxes that lose all their area in the crop are dropped.

Split of work with the detector: these transforms hand the model a ``3 x size x size``
float image in ``0..1``; the model's own ``GeneralizedRCNNTransform`` normalises with the
ImageNet mean/std and resizes to its ``image_size``, which is a no-op scale when it equals
``size``. The pad value is the ImageNet mean, so after normalisation the padding is zero,
as in the official pipeline (which pads after normalising).

Each random transform draws from the ``torch.Generator`` passed in, so that a sample's
augmentation depends only on (seed, epoch, index): identical across process counts and
after a resume. Hand-written because torchvision.transforms.v2 draws from the global RNG
and has no long-side-jitter-then-crop-to-square op.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from torchspine.utils import IMAGENET_MEAN, IMAGENET_STD  # re-exported

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "RandomHorizontalFlip",
    "ScaleJitterCrop",
    "build_train_transforms",
    "build_eval_transforms",
]


Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target, torch.Generator], tuple[torch.Tensor, Target]]


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _resize(image: torch.Tensor, target: Target, out_h: int, out_w: int) -> tuple[torch.Tensor, Target]:
    """Resize image (bilinear), boxes (scaled) and masks (nearest) to ``out_h x out_w``."""
    h, w = image.shape[-2:]
    image = F.interpolate(image[None], size=(out_h, out_w), mode="bilinear", align_corners=False,
                          antialias=out_h < h)[0]
    target = dict(target)
    if "boxes" in target and target["boxes"].numel():
        scale = torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h], dtype=target["boxes"].dtype)
        target["boxes"] = target["boxes"] * scale
    if "masks" in target and target["masks"].numel():
        # (N, H, W) uint8 -> nearest keeps them binary
        target["masks"] = F.interpolate(target["masks"][None].float(), size=(out_h, out_w), mode="nearest")[0].to(
            target["masks"].dtype)
    elif "masks" in target:
        target["masks"] = target["masks"].new_zeros((0, out_h, out_w))
    return image, target


def _crop(image: torch.Tensor, target: Target, top: int, left: int, height: int, width: int,
          *, min_size: float = 1.0) -> tuple[torch.Tensor, Target]:
    """Crop to the window; clip boxes to it and drop those narrower/shorter than ``min_size``."""
    image = image[:, top:top + height, left:left + width]
    target = dict(target)
    boxes = target.get("boxes")
    if boxes is not None:
        shifted = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        shifted[:, 0::2] = shifted[:, 0::2].clamp(0, width)
        shifted[:, 1::2] = shifted[:, 1::2].clamp(0, height)
        keep = ((shifted[:, 2] - shifted[:, 0]) >= min_size) & ((shifted[:, 3] - shifted[:, 1]) >= min_size)
        target["boxes"] = shifted[keep]
        for key in ("labels", "area", "iscrowd"):
            if key in target:
                target[key] = target[key][keep]
        if "masks" in target:
            target["masks"] = target["masks"][:, top:top + height, left:left + width][keep]
    return image, target


def _pad(image: torch.Tensor, target: Target, height: int, width: int, fill: Sequence[float]) -> tuple[torch.Tensor, Target]:
    """Pad at the bottom/right to ``height x width`` (boxes unchanged)."""
    c, h, w = image.shape
    if (h, w) == (height, width):
        return image, target
    out = torch.empty((c, height, width), dtype=image.dtype)
    out[:] = torch.tensor(fill, dtype=image.dtype)[:, None, None]
    out[:, :h, :w] = image
    target = dict(target)
    if "masks" in target:
        m = target["masks"]
        padded = m.new_zeros((m.shape[0], height, width))
        padded[:, :h, :w] = m
        target["masks"] = padded
    return out, target


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target, gen)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class ScaleJitterCrop:
    """Official scale jitter: long side to ``size * s``, ``s ~ U[scale_min, scale_max]``,
    random ``size x size`` crop when larger, pad to ``size x size``."""

    def __init__(self, size: int, scale_range: tuple[float, float] = (0.5, 2.0), *,
                 fill: Sequence[float] = IMAGENET_MEAN) -> None:
        lo, hi = scale_range
        if size < 1:
            raise ValueError(f"ScaleJitterCrop: size must be >= 1, got {size}")
        if not 0 < lo <= hi:
            raise ValueError(f"ScaleJitterCrop: scale_range must satisfy 0 < min <= max, got {scale_range}")
        self.size, self.scale_range, self.fill = size, (float(lo), float(hi)), tuple(fill)

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator) -> tuple[torch.Tensor, Target]:
        h, w = image.shape[-2:]
        s = _uniform(gen, *self.scale_range) * self.size / max(h, w)
        new_h, new_w = max(1, round(h * s)), max(1, round(w * s))
        image, target = _resize(image, target, new_h, new_w)
        crop_h, crop_w = min(new_h, self.size), min(new_w, self.size)
        top = int(torch.randint(0, new_h - crop_h + 1, (), generator=gen))
        left = int(torch.randint(0, new_w - crop_w + 1, (), generator=gen))
        if (crop_h, crop_w) != (new_h, new_w):
            image, target = _crop(image, target, top, left, crop_h, crop_w)
        return _pad(image, target, self.size, self.size, self.fill)

    def __repr__(self) -> str:
        return f"ScaleJitterCrop({self.size}, scale_range={self.scale_range})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target, gen: torch.Generator) -> tuple[torch.Tensor, Target]:
        if float(torch.rand((), generator=gen)) >= self.p:
            return image, target
        w = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        if "boxes" in target:
            b = target["boxes"]
            target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def build_train_transforms(size: int, *, scale_range: tuple[float, float] = (0.5, 2.0),
                           hflip_prob: float = 0.5) -> Compose:
    """Horizontal flip, then scale jitter + crop + pad to ``size`` (official order: the flip
    comes first, so the padding always sits at the bottom/right)."""
    return Compose([RandomHorizontalFlip(hflip_prob), ScaleJitterCrop(size, scale_range)])


def build_eval_transforms() -> Compose:
    """Identity: at evaluation the detector's own transform resizes, and predictions come
    back in the original image's coordinates, which is what COCO evaluation needs."""
    return Compose([])
