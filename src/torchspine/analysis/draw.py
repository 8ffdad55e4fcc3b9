"""Architecture diagrams in the style of the paper's Figure 3 (matplotlib, no graphviz).

Figure 3 stacks the blocks in build order from the bottom (stem) to the top, draws each block
as wide as its feature resolution (a lower level is wider), a rectangle for a bottleneck block
and a diamond for a residual block, marks output blocks with a red border and draws every
cross-scale connection. :func:`draw_spec` does the same for any valid
:class:`~torchspine.specs.SpineNetSpec` (the zoo, a search result as JSON or genome, an
ablation): MBConv blocks are drawn as hexagons and ResNeXt blocks as hatched rectangles;
connections added by the zero-out-degree rule (paper section 3.3,
:func:`~torchspine.models.backbone.zero_outdegree_extras`, the builder's own rule) are dashed.

Hand-written with matplotlib patches because a layered graph layout (graphviz) would not keep
the paper's fixed vertical build order and resolution-proportional widths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torchspine.models.backbone import find_backbone, zero_outdegree_extras
from torchspine.specs.spec import SpineNetSpec

__all__ = ["draw_spec", "resolve_spec", "zero_outdegree_extras"]

_COLORS = {1: "#d9f0d3", 2: "#a6dba0", 3: "#5aae61", 4: "#c2a5cf", 5: "#9970ab", 6: "#fdb863", 7: "#e08214",
           8: "#b35806"}


@dataclass(frozen=True)
class _Node:
    index: int  # feats index
    level: int
    block_type: str
    is_output: bool
    is_stem: bool
    channels_bottleneck_like: bool


def resolve_spec(spec_or_name: str) -> SpineNetSpec:
    """A spec from a registered model name, a JSON / genome file, or a genome string."""
    if isinstance(spec_or_name, SpineNetSpec):
        return spec_or_name
    text = str(spec_or_name).strip()
    if text.startswith("v1|"):
        return SpineNetSpec.from_genome(text)
    if os.path.exists(text):
        return SpineNetSpec.load(text)
    from torchspine.models.registry import create_model, is_model

    if not is_model(text):
        raise ValueError(f"{text!r} is not a registered model name, an existing spec file, or a genome ('v1|...')")
    import torch

    with torch.device("meta"):
        backbone = find_backbone(create_model(text))
    if backbone is None:
        raise ValueError(f"model {text!r} has no SpineNet backbone to draw")
    return backbone.spec


def draw_spec(
    spec: SpineNetSpec,
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    dpi: int = 150,
):
    """Draw ``spec`` like the paper's Figure 3; save to ``path`` (``.svg``/``.png``/``.pdf``) if given.

    Returns the matplotlib ``Figure``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Polygon, Rectangle
    from matplotlib.path import Path as MplPath

    n_stem = spec.num_stem_blocks
    nodes: list[_Node] = [
        _Node(j, lvl, spec.stem.block_type, False, True, True) for j, lvl in enumerate(spec.stem.block_levels)
    ] + [
        _Node(n_stem + i, b.level, b.block_type, b.is_output, False, b.block_type != "residual")
        for i, b in enumerate(spec.blocks)
    ]
    levels = [n.level for n in nodes]
    lo, hi = min(levels), max(levels)
    step = 1.0  # vertical distance between consecutive blocks
    height = 0.46

    def width(level: int) -> float:  # resolution-proportional: each level down is one unit wider
        return 0.5 + 0.55 * (hi - level)

    max_w = width(lo)
    fig_h = max(4.0, 0.42 * len(nodes) + 1.2)
    fig, ax = plt.subplots(figsize=(max_w * 0.9 + 4.2, fig_h))
    ys = {n.index: n.index * step for n in nodes}

    # Connections first (under the blocks). Parent 0 bends left, parent 1 right; the bulge grows
    # with the distance so long-range connections stay apart.
    extras = zero_outdegree_extras(spec)
    for i, b in enumerate(spec.blocks):
        child = n_stem + i
        conns = [(p, side, "-") for p, side in zip(b.input_offsets, (-1, 1))]
        conns += [(p, 1, "--") for p in extras.get(i, [])]
        for p, side, style in conns:
            y0, y1 = ys[p] + height / 2, ys[child] - height / 2
            span = (ys[child] - ys[p]) / step
            x0 = side * width(nodes[p].level) * 0.25
            x1 = side * width(nodes[child].level) * 0.25
            bulge = side * (max_w / 2 + 0.25 + 0.18 * span) if span > 1 else (x0 + x1) / 2
            verts = [(x0, y0), (bulge, y0 + 0.35 * (y1 - y0)), (bulge, y1 - 0.35 * (y1 - y0)), (x1, y1)]
            if span <= 1:
                verts = [(x0, y0), (x0, (y0 + y1) / 2), (x1, (y0 + y1) / 2), (x1, y1)]
            arrow = FancyArrowPatch(path=MplPath(verts, [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4,
                                                         MplPath.CURVE4]),
                                    arrowstyle="-|>", mutation_scale=7, lw=0.8, linestyle=style,
                                    color="#555555" if style == "-" else "#c51b7d", alpha=0.85, zorder=1)
            ax.add_patch(arrow)

    for n in nodes:
        w, y = width(n.level), ys[n.index]
        face = _COLORS.get(n.level, "#dddddd")
        edge, lw = ("#d7191c", 2.4) if n.is_output else ("#333333", 0.9)
        if n.block_type == "residual":  # diamond
            patch = Polygon([(-w / 2, y), (0, y + height / 2 + 0.08), (w / 2, y), (0, y - height / 2 - 0.08)],
                            closed=True, facecolor=face, edgecolor=edge, lw=lw, zorder=3)
        elif n.block_type == "mbconv":  # hexagon
            c = min(0.18, w / 4)
            patch = Polygon([(-w / 2, y), (-w / 2 + c, y + height / 2), (w / 2 - c, y + height / 2), (w / 2, y),
                             (w / 2 - c, y - height / 2), (-w / 2 + c, y - height / 2)],
                            closed=True, facecolor=face, edgecolor=edge, lw=lw, zorder=3)
        else:  # bottleneck (rectangle); resnext hatched
            patch = Rectangle((-w / 2, y - height / 2), w, height, facecolor=face, edgecolor=edge, lw=lw, zorder=3,
                              hatch="///" if n.block_type == "resnext" else None)
        if n.is_stem:
            patch.set_linestyle(":")
        ax.add_patch(patch)
        label = f"L{n.level}"
        ax.text(0, y, label, ha="center", va="center", fontsize=7, zorder=4,
                fontweight="bold" if n.is_output else "normal")
        tag = "stem" if n.is_stem else f"{n.index - n_stem}"
        ax.text(-max_w / 2 - 0.15 - 0.5, y, tag, ha="right", va="center", fontsize=6, color="#666666")
        if n.is_output:
            ax.text(max_w / 2 + 0.7, y, f"P{n.level}", ha="left", va="center", fontsize=7, color="#d7191c",
                    fontweight="bold")

    reach = max_w / 2 + 0.6 + 0.18 * len(nodes)
    ax.set_xlim(-reach - 0.4, reach + 0.4)
    ax.set_ylim(-0.8, ys[nodes[-1].index] + 0.8)
    ax.set_aspect("auto")
    ax.axis("off")
    name = title if title is not None else (spec.name or "SpineNet spec")
    counts = {t: sum(1 for b in spec.blocks if b.block_type == t) for t in sorted({b.block_type for b in spec.blocks})}
    ax.set_title(f"{name}: {len(spec.blocks)} scale-permuted blocks ("
                 + ", ".join(f"{c} {t}" for t, c in counts.items()) + ")", fontsize=9)
    legend = ("rectangle: bottleneck   diamond: residual   hexagon: MBConv   red border: output\n"
              "width: resolution (wider = lower level)   dashed: zero-out-degree connection   bottom: stem")
    fig.text(0.5, 0.01, legend, ha="center", va="bottom", fontsize=6, color="#444444")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if path is not None:
        from torchspine.utils import atomic_write

        fmt = os.path.splitext(str(path))[1].lstrip(".").lower() or "png"
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"{path}: unsupported diagram format {fmt!r}; use .png, .svg or .pdf")
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
        plt.close(fig)
    return fig
