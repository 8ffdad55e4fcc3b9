"""Winograd F(m x m, 3 x 3) convs (models/winograd.py): the same function as the direct conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchspine
from torchspine.models.optimize import optimize_for_inference
from torchspine.models.winograd import WinogradConv2d, winograd_convs_


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (13, 10), (5, 7), (1, 1)])
def test_winograd_conv_matches_direct_conv(m: int, bias: bool, size: tuple[int, int]) -> None:
    """Against the float64 direct conv (F.conv2d): sizes that are not whole tiles are padded and
    cropped; 1x1 inputs see only padding around one pixel."""
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 7, 3, padding=1, bias=bias)
    x = torch.randn(2, 12, *size)
    ref = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1)
    wino = WinogradConv2d(conv, m, min_tiles=1)
    with torch.no_grad():
        out = wino(x)
        out_cl = wino(x.to(memory_format=torch.channels_last))
    assert out.shape == ref.shape and out.dtype == torch.float32
    # float32 rounding of the transforms: F(2,3) ~2e-7, F(4,3) ~2e-6 observed (direct float32 ~3e-7).
    assert _rel_err(out, ref) < (1e-5 if m == 2 else 5e-5)
    assert torch.equal(out, out_cl)


def test_winograd_by_hand() -> None:
    """A 1-channel 2x2 input, all-ones 3x3 kernel: every output is the sum of the whole input
    (each 3x3 window with padding 1 covers all four pixels): 1 + 2 + 3 + 4 = 10, plus bias 0.5."""
    conv = nn.Conv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(0.5)
        out = WinogradConv2d(conv, 2, min_tiles=1)(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert torch.allclose(out, torch.full((1, 1, 2, 2), 10.5), atol=1e-6)


def test_winograd_refuses_other_convs() -> None:
    with pytest.raises(ValueError, match="stride"):
        WinogradConv2d(nn.Conv2d(8, 8, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="tile size m=3"):
        WinogradConv2d(nn.Conv2d(8, 8, 3, padding=1), m=3)


def test_winograd_convs_count_spinenet49() -> None:
    """SpineNet-49's 3x3 stride-1 convs with >= 128 channels, counted from the official block
    specs (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py,
    ``SPINENET_BLOCK_SPECS``; filters 64 / 128 / 256 at L2 / L3 / L4+): one per bottleneck block,
    two per residual block, none at L2 (64 filters); the stride-2 resampling convs never count."""
    # Block list (level, type) from the official SPINENET_BLOCK_SPECS after the two L2 init blocks:
    specs = [(2, "b"), (4, "r"), (3, "b"), (4, "b"), (6, "r"), (4, "b"), (5, "r"), (7, "r"), (5, "b"),
             (5, "b"), (4, "b"), (3, "b"), (5, "b"), (7, "b"), (6, "b")]
    filters = {2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}
    expected = sum((1 if kind == "b" else 2) for level, kind in specs if filters[level] >= 128)
    assert expected == 18
    plain = torchspine.create_model("spinenet49").eval()
    model = optimize_for_inference(plain)
    assert winograd_convs_(model) == expected
    assert sum(isinstance(m, WinogradConv2d) for m in model.modules()) == expected
    assert winograd_convs_(model) == 0  # already replaced: nothing left
    opt = optimize_for_inference(plain, rewrite=True, winograd=True)
    assert sum(isinstance(m, WinogradConv2d) for m in opt.modules()) == expected


@pytest.mark.parametrize("rewrite", [False, True])
def test_winograd_spinenet_matches_original(rewrite: bool) -> None:
    """Every 3x3 stride-1 conv of a tiny SpineNet-49 as Winograd F(2x2, 3x3) (eager): the plain
    model's function within float32 rounding."""
    torch.manual_seed(0)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.25, endpoints_num_filters=32).eval()
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_var.uniform_(0.5, 1.0)
            mod.running_mean.normal_(0, 0.1)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = model(x)
    opt = optimize_for_inference(model, rewrite=rewrite)
    n = winograd_convs_(opt, min_channels=1, min_tiles=1)
    assert n > 20
    with torch.inference_mode():
        out = opt(x.to(memory_format=torch.channels_last))
    err = max(((out[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
    assert err < 1e-4  # ~1e-6 observed


@pytest.mark.slow  # an Inductor compile of a half-width SpineNet-49: 1-3 minutes on 2 busy cores
def test_compiled_winograd_matches_original() -> None:
    torch.manual_seed(0)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.5, endpoints_num_filters=64).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)
    opt = optimize_for_inference(model, compile=True, rewrite=True, winograd=True)
    # filter_size_scale 0.5: L4-L7 3x3 convs have 128 filters, the default Winograd floor.
    assert sum(isinstance(m, WinogradConv2d) for m in opt.modules()) > 0
    with torch.inference_mode():
        out = opt(x.to(memory_format=torch.channels_last))
    err = max(((out[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
    assert err < 1e-4


def test_winograd_refuses_bfloat16() -> None:
    """bfloat16 Winograd F(4x4, 3x3) of a 16->16 conv at 12x12 measured 14% max error against the
    bf16 direct conv (8-bit significand times transform coefficients up to 8): refused."""
    conv = nn.Conv2d(16, 16, 3, padding=1).to(torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        WinogradConv2d(conv)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.25, endpoints_num_filters=32).eval()
    with pytest.raises(ValueError, match="dtype=torch.bfloat16"):
        optimize_for_inference(model, dtype=torch.bfloat16, winograd=True)
