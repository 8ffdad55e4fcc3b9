"""Training curves: loss and learning rate per step, AP per evaluation, as one PNG."""

from __future__ import annotations

import os
from typing import Sequence

from torchspine.utils import atomic_write

__all__ = ["plot_curves"]


def plot_curves(path: str | os.PathLike, history: Sequence[dict], evals: Sequence[dict], *, title: str = "") -> None:
    """``history``: dicts with ``step``, ``loss``, ``lr``; ``evals``: dicts with ``step``, ``AP``, ``AP50``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if history:
        steps = [h["step"] for h in history]
        ax.plot(steps, [h["loss"] for h in history], lw=0.8, label="loss")
        ax.set_yscale("log")
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], color="tab:orange", lw=0.8, label="lr")
        ax2.set_ylabel("learning rate")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss")
    ax = axes[1]
    if evals:
        steps = [e["step"] for e in evals]
        for key in ("AP", "AP50", "AP75", "mask_AP"):
            if key in evals[0]:
                ax.plot(steps, [e[key] for e in evals], marker="o", label=key)
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("COCO metric")
    ax.set_ylim(0, 1)
    ax.set_title("validation")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
