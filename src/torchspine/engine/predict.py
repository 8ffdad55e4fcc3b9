"""Batched prediction with an eval-mode torchvision-style detector."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["predict"]


@torch.inference_mode()
def predict(model: nn.Module, images: Sequence[Tensor], *, batch_size: int = 1) -> list[dict[str, Tensor]]:
    """Run an eval-mode torchvision-style detector over ``images`` (each ``(C, H, W)``, any size).

    Returns one ``{"boxes", "labels", "scores"[, "masks"]}`` per image, in its own pixels.
    """
    if model.training:
        raise ValueError("predict() needs an eval-mode model (call model.eval())")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out: list[dict[str, Tensor]] = []
    for i in range(0, len(images), batch_size):
        batch = [img.to(device) for img in images[i:i + batch_size]]
        out.extend({k: v.cpu() for k, v in d.items()} for d in model(batch))
    return out
