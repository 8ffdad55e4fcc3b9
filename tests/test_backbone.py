"""The SpineNet backbone against the official models (paper section 3;
tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchspine.layers.conv import Conv2dSame, MaxPool2dSame, same_pad_amounts
from torchspine.layers.resample import ResampleWithAlpha
from torchspine.models.registry import create_model
from torchspine.specs.spec import NormSpec
from torchspine.analysis.profile import count_macs, count_params



def _meta(name: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **overrides).eval()


# ------------------------------------------------------------- parameters and MACs
# Backbone + endpoints trainable parameters, exact: the sum of the official TPU graph's trainable variables.
OFFICIAL_PARAMS = {
    "spinenet49s": 9_089_215,
    "spinenet49": 21_831_488,
    "spinenet96": 36_262_976,
    "spinenet143": 60_247_616,
    "spinenet143l": 100_796_257,
    "spinenet190": 126_587_664,
}
# Backbone without endpoints, official TPU graph (millions, rounded to 3 decimals).
OFFICIAL_BACKBONE_PARAMS_M = {
    "spinenet49s": 8.705, "spinenet49": 20.649, "spinenet96": 35.081, "spinenet143": 59.065,
    "spinenet190": 123.523,
}
# Conv multiply-adds of backbone + endpoints (official TPU graph), billions, at the published size.
OFFICIAL_MACS = {
    "spinenet49s": (640, 12.33),
    "spinenet49": (640, 28.26),
    "spinenet96": (1024, 119.05),
    "spinenet143": (1280, 295.26),
    "spinenet190": (1280, 620.98),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_exact_official_parameter_counts(name: str) -> None:
    model = _meta(name)
    assert count_params(model) == OFFICIAL_PARAMS[name]
    if name in OFFICIAL_BACKBONE_PARAMS_M:
        backbone = count_params(model) - count_params(model.endpoints)
        assert abs(backbone / 1e6 - OFFICIAL_BACKBONE_PARAMS_M[name]) <= 0.0005


@pytest.mark.parametrize("name", sorted(OFFICIAL_MACS))
def test_macs_within_one_percent(name: str) -> None:
    size, official = OFFICIAL_MACS[name]
    macs = count_macs(_meta(name), torch.empty(1, 3, size, size, device="meta"))
    assert abs(macs / 1e9 / official - 1) < 0.01, f"{name}@{size}: {macs / 1e9:.2f}B vs {official}B"


# --------------------------------------------------------------- graph construction
def test_zero_outdegree_rule_adds_exactly_feat11_into_block12() -> None:
    # Zero-out-degree rule (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py,
    # _build_scale_permuted_network): the only extra for SpineNet is feat 11 (spec 9, L5 bottleneck)
    # added, unresampled, into spec 12 (the P5 output).
    for name in ("spinenet49", "spinenet96", "spinenet49s"):
        model = _meta(name)
        extras = {i: blk.extras for i, blk in enumerate(model.blocks) if blk.extras}
        assert extras == {12: (11,)}, name
    model = _meta("spinenet49", zero_outdegree_connections=False)
    assert all(blk.extras == () for blk in model.blocks)


def test_extra_parent_is_summed_in_forward() -> None:
    """Switching the rule off changes the output of P5 (and what depends on it) only."""
    torch.manual_seed(0)
    with_rule = create_model("spinenet49", filter_size_scale=0.125, endpoints_num_filters=8).eval()
    without = create_model("spinenet49", filter_size_scale=0.125, endpoints_num_filters=8,
                           zero_outdegree_connections=False).eval()
    without.load_state_dict(with_rule.state_dict())  # same weights: the rule adds none
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = with_rule.forward_features(x), without.forward_features(x)
    # feats index 14 is block 12 (P5); blocks before it see identical inputs.
    assert all(torch.equal(a[i], b[i]) for i in range(14))
    assert not torch.equal(a[14], b[14])


def test_stochastic_depth_per_block_rates() -> None:
    # Stochastic depth (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py): rate for spec
    # i = init * (i + 1) / 15, none on the stem, every
    # repeat of a group shares its block's rate.
    model = _meta("spinenet96", stochastic_depth_rate=0.2)
    for i, blk in enumerate(model.blocks):
        assert len(blk.group) == 2  # block_repeats of 96
        for b in blk.group:
            assert b.drop_path.p == pytest.approx(0.2 * (i + 1) / 15)
            assert b.drop_path.mode == "row"  # per-sample mask, as the official op
    for group in model.stem.groups:
        assert all(isinstance(b.drop_path, nn.Identity) for b in group)


def test_block_repeats_and_stem() -> None:
    # Stem (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py, _build_stem): stem conv
    # 7x7/2 with 64 filters (never scaled), two L2 groups
    # of block_repeats bottlenecks; only stem_block_1 has a projection (64 -> 4f).
    for name, repeats, f2 in (("spinenet49s", 1, 41), ("spinenet96", 2, 64), ("spinenet190", 4, 83)):
        model = _meta(name)
        assert model.stem.conv.conv.out_channels == 64 and model.stem.conv.conv.kernel_size == (7, 7)
        assert [len(g) for g in model.stem.groups] == [repeats, repeats]
        projections = [m for m in model.modules() if hasattr(m, "shortcut") and m.shortcut is not None]
        assert len(projections) == 1 and projections[0] is model.stem.groups[0][0]
        assert model.stem.groups[0][0].shortcut.conv.in_channels == 64
        assert model.stem.groups[0][0].out_channels == 4 * f2


# ------------------------------------------------------------------ padding conventions
@pytest.mark.parametrize(
    "size, kernel, stride, pads",
    [
        # TF 'SAME': out = ceil(H / s), total = max((out - 1) * s + k - H, 0), smaller half first.
        (320, 3, 2, (0, 1)),  # out 160, total 159*2+3-320 = 1
        (640, 7, 2, (2, 3)),  # the MG stem: out 320, total 319*2+7-640 = 5
        (7, 3, 2, (1, 1)),  # out 4, total 3*2+3-7 = 2
        (333, 3, 2, (1, 1)),  # out 167, total 166*2+3-333 = 2
        (200, 7, 2, (2, 3)),  # out 100, total 99*2+7-200 = 5
        (40, 5, 8, (0, 0)),  # out 5, total max(4*8+5-40, 0) = 0
        (25, 5, 4, (2, 2)),  # out 7, total 6*4+5-25 = 4
        (26, 5, 4, (1, 2)),  # out 7, total 6*4+5-26 = 3
    ],
)
def test_same_pad_amounts_by_hand(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    assert same_pad_amounts(size, kernel, stride) == pads


def test_conv2d_same_tiny_example_by_hand() -> None:
    # 4x4 input 0..15, 3x3 all-ones kernel, stride 2. TF 'SAME' pads (0, 1): windows start
    # at rows/cols 0 and 2, the second one runs into one zero row/column.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    expected = torch.tensor([[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11],
                             [8 + 9 + 10 + 12 + 13 + 14, 10 + 11 + 14 + 15]], dtype=torch.float32)
    assert torch.equal(conv(x)[0, 0], expected)  # [[45, 39], [66, 50]]
    # The tensorflow/tpu convention pads symmetrically (PyTorch padding=1): a different map.
    sym = F.conv2d(x, conv.weight, stride=2, padding=1)
    assert sym[0, 0, 0, 0].item() == 0 + 1 + 4 + 5


def test_maxpool2d_same_tiny_example_by_hand() -> None:
    # -(0..15): 'SAME' k3 s2 pads (0, 1) with -inf, so padding never wins even for negatives.
    x = -torch.arange(16.0).reshape(1, 1, 4, 4)
    pool = MaxPool2dSame(3, 2)
    assert torch.equal(pool(x)[0, 0], torch.tensor([[0.0, -2.0], [-8.0, -10.0]]))
    # PyTorch's symmetric MaxPool2d(3, 2, 1) has the same output size but shifted windows.
    assert not torch.equal(F.max_pool2d(x, 3, 2, 1), pool(x))


@pytest.mark.parametrize("kernel, stride", [(3, 2), (5, 4), (5, 8), (5, 16), (3, 1)])
def test_same_ops_match_explicit_padding_at_every_size(kernel: int, stride: int) -> None:
    """Conv2dSame / MaxPool2dSame equal an explicit F.pad of the hand formula, at any size."""
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, kernel, stride=stride, bias=False)
    pool = MaxPool2dSame(kernel, stride)
    for h in range(1, 41):
        w = 2 * h + 1
        x = torch.randn(1, 2, h, w)
        ph, pw = same_pad_amounts(h, kernel, stride), same_pad_amounts(w, kernel, stride)
        expected_size = (-(-h // stride), -(-w // stride))
        ref_conv = F.conv2d(F.pad(x, (pw[0], pw[1], ph[0], ph[1])), conv.weight, stride=stride)
        ref_pool = F.max_pool2d(F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf")), kernel, stride)
        with torch.no_grad():
            y_conv, y_pool = conv(x), pool(x)
        assert tuple(y_pool.shape[-2:]) == tuple(y_conv.shape[-2:]) == expected_size
        assert torch.allclose(y_conv, ref_conv, atol=1e-6)
        assert torch.equal(y_pool, ref_pool)


@pytest.mark.parametrize("padding, conv_type", [("symmetric", nn.Conv2d), ("same", Conv2dSame)])
def test_padding_convention_selects_convs(padding: str, conv_type: type) -> None:
    model = _meta("spinenet49", padding=padding)
    assert type(model.stem.conv.conv) is conv_type
    if padding == "symmetric":
        assert model.stem.conv.conv.padding == (3, 3)  # TPU fixed padding 7x7: (3, 3)
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert strided and all(type(m) is conv_type for m in strided)
    unstrided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (1, 1)]
    assert all(type(m) is nn.Conv2d for m in unstrided)  # stride 1 is symmetric in both codebases


# -------------------------------------------------------------------------- resampling
def _resample(in_level: int, target_level: int, padding: str) -> ResampleWithAlpha:
    return ResampleWithAlpha(16, in_level, target_level, 8, alpha=0.5, reduce_divisor=4,
                             norm=NormSpec(), act="relu", padding=padding)


def _pools(r: ResampleWithAlpha) -> list[tuple[int, int]]:
    return [(m.kernel_size, m.stride) for m in (r.downsample or []) if isinstance(m, MaxPool2dSame)]


def test_tpu_resample_pool_choice() -> None:
    # Resampling (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py,
    # _resample_with_alpha): after the 3x3/2 conv, one 'SAME' pool with stride r // 2,
    # kernel 3 for r <= 4 and 5 beyond: r=4 -> k3 s2, r=8 -> k5 s4, r=16 -> k5 s8, r=32 -> k5 s16.
    assert _pools(_resample(3, 4, "symmetric")) == []  # r = 2: the strided conv alone
    assert _pools(_resample(3, 5, "symmetric")) == [(3, 2)]
    assert _pools(_resample(3, 6, "symmetric")) == [(5, 4)]
    assert _pools(_resample(3, 7, "symmetric")) == [(5, 8)]
    assert _pools(_resample(2, 7, "symmetric")) == [(5, 16)]
    conv = _resample(3, 5, "symmetric").downsample[0].conv
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))  # fixed (1, 1)


def test_mg_resample_chained_pools() -> None:
    # Resampling (tensorflow/models official/vision/modeling/backbones/spinenet.py): 'SAME' 3x3/2 conv, then
    # MaxPool2D(3, 2, 'SAME') until the size matches.
    assert _pools(_resample(3, 4, "same")) == []
    assert _pools(_resample(3, 5, "same")) == [(3, 2)]
    assert _pools(_resample(3, 6, "same")) == [(3, 2)] * 2
    assert _pools(_resample(3, 7, "same")) == [(3, 2)] * 3
    assert _pools(_resample(2, 7, "same")) == [(3, 2)] * 4
    assert type(_resample(3, 5, "same").downsample[0].conv) is Conv2dSame


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("height, width", [(200, 333), (129, 65), (31, 17)])
def test_resampling_reaches_every_level_at_odd_sizes(padding: str, height: int, width: int) -> None:
    torch.manual_seed(0)
    for in_level in range(2, 8):
        x = torch.randn(1, 16, -(-height // 2**in_level), -(-width // 2**in_level))
        for target in range(2, 8):
            r = _resample(in_level, target, padding).eval()
            size = (-(-height // 2**target), -(-width // 2**target))  # ceil(H / 2**level)
            with torch.no_grad():
                y = r(x, size)
            assert tuple(y.shape) == (1, 8, *size), (in_level, target)


def test_integer_upsampling_is_nearest_repeat() -> None:
    # Nearest upsampling (both official spinenet.py files, and paper section 3.2): upsampling by an integer factor
    # repeats each pixel.
    r = _resample(4, 2, "symmetric").eval()
    x = torch.randn(1, 16, 3, 5)
    with torch.no_grad():
        reduced = r.reduce(x)
        y = r.project(reduced.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))
        assert torch.allclose(r(x, (12, 20)), y)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_whole_backbone_any_size(padding: str) -> None:
    torch.manual_seed(0)
    model = create_model("spinenet49", filter_size_scale=0.125, endpoints_num_filters=8, padding=padding).eval()
    # ceil(H / 2**level) by hand: 200x333 -> p3 25x42, p4 13x21, p5 7x11, p6 4x6, p7 2x3.
    expected = {"p3": (25, 42), "p4": (13, 21), "p5": (7, 11), "p6": (4, 6), "p7": (2, 3)}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 200, 333))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == expected
