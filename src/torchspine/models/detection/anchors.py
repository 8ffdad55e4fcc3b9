"""Multi-level anchors as the official SpineNet detectors define them.

Official anchors (tensorflow/tpu models/official/detection/dataloader/anchor.py): on level ``l`` with stride
``2**l`` and for octave scale ``k`` in ``0..num_scales-1`` and aspect ratio ``ar``::

    base = anchor_size * 2**l * 2**(k / num_scales)
    w = base * sqrt(ar),  h = base / sqrt(ar)
    centre = (stride / 2 + x * stride, stride / 2 + y * stride)

per location ordered scale-major then aspect ratio (the head's channel layout follows this
order). A subclass of torchvision's ``AnchorGenerator`` (so ``RetinaNet`` / ``MaskRCNN``
accept it); written because torchvision centres anchors on the cell corner, rounds them to
integers, orders them aspect-major, and infers strides from ``image // feature`` (wrong for
sizes that are not multiples of 128).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

__all__ = ["SpineNetAnchorGenerator", "cell_anchors"]


def cell_anchors(
    level: int,
    *,
    anchor_size: float,
    num_scales: int,
    aspect_ratios: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The ``num_scales * len(aspect_ratios)`` anchors (xyxy) of the cell at the origin of ``level``."""
    stride = 2.0**level
    boxes = []
    for k in range(num_scales):
        base = anchor_size * stride * 2.0 ** (k / num_scales)
        for ar in aspect_ratios:
            half_w = base * math.sqrt(ar) / 2.0
            half_h = base / math.sqrt(ar) / 2.0
            c = stride / 2.0
            boxes.append((c - half_w, c - half_h, c + half_w, c + half_h))
    # Always on the CPU (also inside a ``torch.device("meta")`` build): a plain attribute, not a buffer.
    return torch.tensor(boxes, dtype=dtype, device="cpu")


class SpineNetAnchorGenerator(AnchorGenerator):
    """Anchors for levels ``min_level..max_level`` (official layout, see module docstring).

    Args:
        min_level, max_level: the feature levels the detector's head runs on (P3..P7).
        anchor_size: the official ``anchor_size`` (3 for 49S/49/96, 4 for 143/190).
        num_scales: octave scales per level (3 for RetinaNet, 1 for the Mask R-CNN RPN).
        aspect_ratios: width / height ratios (the official convention).
    """

    def __init__(
        self,
        min_level: int = 3,
        max_level: int = 7,
        *,
        anchor_size: float = 3.0,
        num_scales: int = 3,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        if min_level > max_level:
            raise ValueError(f"anchors: min_level {min_level} > max_level {max_level}")
        if anchor_size <= 0 or num_scales < 1 or not aspect_ratios or any(a <= 0 for a in aspect_ratios):
            raise ValueError(f"anchors: bad settings anchor_size={anchor_size}, num_scales={num_scales}, "
                             f"aspect_ratios={tuple(aspect_ratios)}")
        levels = tuple(range(min_level, max_level + 1))
        # torchvision's fields, for num_anchors_per_location() and repr; cell_anchors replaced below.
        sizes = tuple(tuple(anchor_size * 2.0**lvl * 2.0 ** (k / num_scales) for k in range(num_scales))
                      for lvl in levels)
        super().__init__(sizes, (tuple(aspect_ratios),) * len(levels))
        self.levels = levels
        self.anchor_size = float(anchor_size)
        self.num_scales = int(num_scales)
        self.official_aspect_ratios = tuple(float(a) for a in aspect_ratios)
        self.cell_anchors = [
            cell_anchors(lvl, anchor_size=anchor_size, num_scales=num_scales, aspect_ratios=aspect_ratios)
            for lvl in levels
        ]

    def grid_anchors_for(self, grid_sizes: Sequence[Sequence[int]], *, dtype: torch.dtype,
                         device: torch.device) -> list[Tensor]:
        """Anchors per level for feature maps of ``grid_sizes`` (location-major, anchor-minor)."""
        if len(grid_sizes) != len(self.levels):
            raise ValueError(f"anchors: got {len(grid_sizes)} feature maps, expected {len(self.levels)} "
                             f"(levels {self.levels})")
        out = []
        for (gh, gw), lvl, base in zip(grid_sizes, self.levels, self.cell_anchors):
            stride = 2**lvl
            base = base.to(dtype=dtype, device=device)
            xs = torch.arange(int(gw), dtype=dtype, device=device) * stride
            ys = torch.arange(int(gh), dtype=dtype, device=device) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((sx.reshape(-1), sy.reshape(-1), sx.reshape(-1), sy.reshape(-1)), dim=1)
            # (HW, 1, 4) + (1, A, 4) -> (HW * A, 4)
            out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return out

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        # Anchors stay float32 even under reduced-precision features (box decoding precision).
        per_level = self.grid_anchors_for(grid_sizes, dtype=torch.float32, device=feature_maps[0].device)
        all_levels = torch.cat(per_level)
        return [all_levels for _ in range(len(image_list.image_sizes))]
