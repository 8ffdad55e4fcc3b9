"""Drawing detections (boxes, names, scores, masks) onto images."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["PALETTE", "draw_detections", "text_color"]

# Box colours (Sasha Trubetskoy's "20 distinct colours", first ten).
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    def lin(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``background`` (WCAG contrast ratio)."""
    lum = _luminance(background)
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def _font() -> str | None:
    """A TrueType font for labels (DejaVu Sans as shipped by matplotlib or the system), else None."""
    try:
        import matplotlib

        from pathlib import Path

        f = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return str(f) if f.is_file() else None
    except ImportError:
        return None


def _label_text(label: int, score: float, names: Sequence[str] | None) -> str:
    name = names[label] if names is not None and 0 <= label < len(names) else str(label)
    return f"{name} {score:.2f}"


def draw_detections(
    image: Tensor,
    detections: dict[str, Tensor],
    *,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.3,
    width: int = 2,
) -> Tensor:
    """``image`` (``(C, H, W)`` uint8 or float in [0, 1]) with boxes, names and scores drawn
    (masks too when present); detections below ``score_thresh`` are skipped. Returns uint8 RGB."""
    from torchvision.transforms.functional import convert_image_dtype
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from torchspine.models.detection.transform import to_rgb_float

    img = convert_image_dtype(to_rgb_float(image.cpu()), torch.uint8)
    keep = detections["scores"] >= score_thresh
    boxes = detections["boxes"][keep].float()
    labels = detections["labels"][keep].tolist()
    scores = detections["scores"][keep].tolist()
    colors = [PALETTE[lbl % len(PALETTE)] for lbl in labels]
    if "masks" in detections and keep.any():
        masks = detections["masks"][keep][:, 0] > 0.5
        img = draw_segmentation_masks(img, masks, alpha=0.4, colors=colors)
    if boxes.numel():
        font = {"font": _font(), "font_size": max(10, min(img.shape[-2:]) // 40)} if _font() else {}
        # names on a filled box of the box colour in black or white text: readable on any image
        img = draw_bounding_boxes(img, boxes, labels=[_label_text(lb, s, class_names) for lb, s in zip(labels, scores)],
                                  colors=colors, width=width, **font,
                                  label_colors=[text_color(c) for c in colors], label_background_colors=colors,
                                  fill_labels=True)
    return img
