"""Architecture diagrams (the paper's Figure 3 style): shapes, output marks and connections are all drawn."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.patches import FancyArrowPatch, Polygon, Rectangle

from torchspine.cli import main as cli_main
from torchspine.specs.zoo import spinenet_spec
from torchspine.analysis.draw import draw_spec, resolve_spec, zero_outdegree_extras


def _patches(fig):
    ax = fig.axes[0]
    blocks = [p for p in ax.patches if isinstance(p, (Rectangle, Polygon))]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    return blocks, arrows


def test_spinenet49_like_figure_3() -> None:
    import matplotlib.pyplot as plt

    spec = spinenet_spec("49")
    fig = draw_spec(spec)
    blocks, arrows = _patches(fig)
    # 2 stem blocks + 15 scale-permuted blocks (paper section 3.2, Figure 4; tensorflow/tpu
    # models/official/detection/modeling/architecture/spinenet.py SPINENET_BLOCK_SPECS).
    assert len(blocks) == 17
    # 4 residual blocks (specs 1, 4, 6, 7) are diamonds (4-vertex polygons), the rest rectangles.
    diamonds = [b for b in blocks if isinstance(b, Polygon) and len(b.get_xy()) in (4, 5)]
    assert len(diamonds) == 4
    # 5 output blocks with a red border.
    red = [b for b in blocks if b.get_edgecolor()[:3] == pytest.approx((0xd7 / 255, 0x19 / 255, 0x1c / 255), abs=1e-3)]
    assert len(red) == 5
    # Every connection: 2 parents per block + the single zero-out-degree extra (feat 11 into
    # block 12: the zero-out-degree rule of tensorflow/tpu
    # models/official/detection/modeling/architecture/spinenet.py) = 31.
    assert zero_outdegree_extras(spec) == {12: [11]}
    assert len(arrows) == 31
    # Width shows resolution: the L2 stem block is wider than the L7 output block.
    widths = {round(b.get_y() + b.get_height() / 2): b.get_width() for b in blocks if isinstance(b, Rectangle)}
    assert widths[0] > widths[15]  # feats 0 (L2 stem) vs feats 15 (spec 13, L7)
    plt.close(fig)


def test_mobile_and_search_results(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    mobile = resolve_spec("spinenet_mobile49")
    fig = draw_spec(mobile)
    blocks, arrows = _patches(fig)
    assert len(blocks) == 2 + 16 and all(len(b.get_xy()) >= 6 for b in blocks)  # MBConv hexagons
    # One zero-out-degree extra (feat 12 into block 13): the rule of tensorflow/tpu
    # models/official/detection/modeling/architecture/spinenet_mbconv.py.
    assert len(arrows) == 2 * 16 + 1
    plt.close(fig)
    # A search result: any valid spec, from a genome string or a JSON file.
    genome = "v1|2b0.1,3r0.2,4b1.3,5b2.4,6b3.5o,7r4.6o,5b4.7o,4b5.8o,3b2.9o|scaling.filter_size_scale=0.5"
    spec = resolve_spec(genome)
    (tmp_path / "s.json").write_text(spec.to_json())
    assert resolve_spec(str(tmp_path / "s.json")) == spec
    fig = draw_spec(spec)
    assert len(_patches(fig)[0]) == 2 + 9
    plt.close(fig)


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_cli_draw_writes_file(tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / f"d{suffix}"
    assert cli_main(["draw", "spinenet49s", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]
    assert "15 blocks" in capsys.readouterr().out


def test_cli_draw_bad_input(tmp_path: Path, capsys) -> None:
    assert cli_main(["draw", "no_such_model", "--out", str(tmp_path / "x.png")]) == 2
    assert "not a registered model name" in capsys.readouterr().err
    assert cli_main(["draw", "spinenet49", "--out", str(tmp_path / "x.gif")]) == 2
    assert "unsupported diagram format" in capsys.readouterr().err
