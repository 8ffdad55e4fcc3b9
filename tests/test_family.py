"""The rest of the model family (paper Appendices A-D): SpineNet-Mobile, ResNeXt blocks, ablations, the
classification network, timm entry points. Parameter counts are built on the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchspine as ts
from torchspine.models.backbone import SpineNet
from torchspine.specs.ablations import FISH, HOURGLASS, graph_damage, ordering_spec
from torchspine.specs.mobile import mobile_spec
from torchspine.specs.spec import SpineNetSpec
from torchspine.analysis.profile import count_macs, count_params



def meta_params(name: str, **kw) -> int:
    with torch.device("meta"):
        return count_params(ts.create_model(name, **kw))


# ----------------------------------------------------------------------------- mobile
@pytest.mark.parametrize("name, expected", [
    # Official SpineNet-Mobile backbone + endpoints (computed from the TPU code's graph).
    ("spinenet_mobile49", 2_268_708),
    ("spinenet_mobile49s", 975_678),
    ("spinenet_mobile49xs", 842_456),
    # Official detectors with separable heads, 91 classes (the TPU code's graph).
    ("retinanet_spinenet_mobile49", 2_337_579),
    ("retinanet_spinenet_mobile49s", 1_030_653),
    ("retinanet_spinenet_mobile49xs", 872_711),
])
def test_mobile_official_param_counts(name: str, expected: int) -> None:
    assert meta_params(name) == expected


def test_mobile_separable_head_by_hand() -> None:
    # Mobile-49 head by hand (48 filters, 4 convs, 5 levels, 9 anchors, 91 classes):
    # tower conv = depthwise 9*48 + pointwise 48*48 + bias 48 = 2784; 4 per tower, 2 towers;
    # per-level BN 2*48 per conv per level; predictors: 9*48 + 48*819 + 819 and 9*48 + 48*36 + 36.
    tower = 4 * 2784 + 5 * 4 * 2 * 48
    expected = 2 * tower + (9 * 48 + 48 * 819 + 819) + (9 * 48 + 48 * 36 + 36)
    with torch.device("meta"):
        det = ts.create_model("retinanet_spinenet_mobile49")
    assert count_params(det.head) == expected == 68_871


def test_mobile_paper_names_map_to_released_presets() -> None:
    # Paper copy Appendix A: 49XXS / 49XS use scale 0.6 / 0.65 with 24 / 40 head filters, which
    # are the released 49XS / 49S presets; 49S (0.75, 48 filters) is new.
    assert meta_params("spinenet_mobile49xxs_paper") == 842_456
    assert meta_params("spinenet_mobile49xs_paper") == 975_678
    assert meta_params("spinenet_mobile49_paper") == 2_268_708
    s = mobile_spec("49s_paper")
    assert (s.scaling.filter_size_scale, s.scaling.endpoints_num_filters) == (0.75, 48)


def test_mobile_mbconv_structure_and_flavors() -> None:
    tpu = ts.create_model("spinenet_mobile49xs")
    mg = ts.create_model("spinenet_mobile49xs", flavor="mg")
    block = tpu.blocks[0].group[0]
    # Stem: 3x3/2 conv with int(8 * 0.6) = 4 filters (tensorflow/tpu models/official/detection/modeling/architecture/spinenet_mbconv.py).
    assert tpu.stem.conv.conv.out_channels == 4 and tpu.stem.conv.conv.stride == (2, 2)
    # Block 0 is L2: int(24 * 0.6) = 14 channels, expand x6 = 84, SE squeezes to int(14 * 0.2) = 2.
    assert block.expand.conv.out_channels == 84
    assert block.se.fc1.out_channels == 2 and block.has_residual
    assert isinstance(block.se.activation, nn.SiLU) and isinstance(block.se.scale_activation, nn.Sigmoid)
    mg_block = mg.blocks[0].group[0]
    assert isinstance(mg_block.se.activation, nn.ReLU) and isinstance(mg_block.se.scale_activation, nn.Hardsigmoid)
    assert mg.spec.activation == "swish" and ts.create_model("spinenet_mobile49s", flavor="mg").spec.activation == "hard_swish"
    gated = ts.create_model("spinenet_mobile49xs", se_gating="hard_sigmoid", se_activation="relu")
    assert isinstance(gated.blocks[3].group[0].se.scale_activation, nn.Hardsigmoid)
    # The separable resampling has no alpha 1x1: a L4 -> L6 parent gets two depthwise 3x3/2 convs.
    down = tpu.blocks[5].resample[0]  # block 5 is L6 with parent feats[4] (L4)
    assert len(down.downsample) == 2 and down.downsample[0].conv.groups == down.downsample[0].conv.in_channels
    with pytest.raises(ValueError, match="se_gating"):
        ts.create_model("spinenet_mobile49xs", se_gating="tanh")


def test_mobile_forward_shapes() -> None:
    m = ts.create_model("spinenet_mobile49xs").eval()
    out = m(torch.randn(1, 3, 64, 96))
    assert [tuple(v.shape) for v in out.values()] == [(1, 24, 64 // s, 96 // s) for s in (8, 16, 32)] + \
        [(1, 24, 1, 2), (1, 24, 1, 1)]


# ---------------------------------------------------------------------------- ResNeXt
def test_resnext_block_params_by_hand() -> None:
    with torch.device("meta"):
        m = ts.create_model("spinenet49_resnext32x4d")
    # Stem block 1, ResNeXt 32x4d with 64 filters: inner width int(64 * 4 / 64) * 32 = 128.
    # shortcut 64*256 + BN 512; conv1 64*128 + 256; grouped conv2 128*(128/32)*9 + 256; conv3 128*256 + 512.
    expected = (64 * 256 + 512) + (64 * 128 + 256) + (128 * 4 * 9 + 256) + (128 * 256 + 512)
    assert count_params(m.stem.groups[0]) == expected == 63_488
    assert m.stem.groups[0][0].conv2.conv.groups == 32


@pytest.mark.parametrize("name, paper_total_m", [("spinenet49_resnext32x4d", 30.0), ("spinenet49_resnext32x8d", 46.1)])
def test_resnext_reproduces_table10_params(name: str, paper_total_m: float) -> None:
    # Paper copy Table 10 gives detector totals; the RetinaNet head (4x256, 91 classes) is the
    # same as SpineNet-49's, so total = backbone + (retinanet_spinenet49 - spinenet49).
    head = meta_params("retinanet_spinenet49") - meta_params("spinenet49")
    total = meta_params(name) + head
    assert abs(total / 1e6 - paper_total_m) < 0.1


# -------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("name, expected", [
    # Official ImageNet classifiers: backbone + endpoints + 256*1000 + 1000 (TPU MODEL_ZOO.md: 22.1M for 49).
    ("spinenet49_cls", 21_831_488 + 257_000),
    ("spinenet190_cls", 126_587_664 + 513_000),
])
def test_classifier_official_param_counts(name: str, expected: int) -> None:
    assert meta_params(name) == expected


def test_classifier_variants_shapes_and_widths() -> None:
    kw = dict(filter_size_scale=0.125, endpoints_num_filters=16, num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    for combination, level, width in (("avg", None, 16), ("concat", None, 5 * 16), ("single", 5, 16)):
        m = ts.create_model("spinenet49_cls", feature_combination=combination, level=level, **kw).eval()
        assert m.num_features == width and m.fc.in_features == width
        assert m(x).shape == (2, 7)
    with pytest.raises(ValueError, match="level"):
        ts.create_model("spinenet49_cls", feature_combination="single", **kw)


def test_classifier_average_is_nearest_upsampled_mean() -> None:
    m = ts.create_model("spinenet49_cls", filter_size_scale=0.125, endpoints_num_filters=8, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = m.backbone(x)
        # Paper 4.2 by hand: P = 1/5 sum_i U(P_i), U = nearest repeat to P3's 8x8.
        manual = sum(f.repeat_interleave(8 // f.shape[-1], -1).repeat_interleave(8 // f.shape[-2], -2)
                     for f in feats.values()) / 5
        torch.testing.assert_close(m.forward_features(x), manual)
        torch.testing.assert_close(m(x), m.fc(manual.mean(dim=(2, 3))))


def test_classifier_on_any_spec_and_bn_settings() -> None:
    spec = mobile_spec("49xs")
    m = ts.create_model("spinenet_cls", spec=spec, num_classes=5).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    # Official classification BN: momentum 0.9 / epsilon 1e-5 (spinenet49_classification.yaml).
    assert m.backbone.spec.norm.momentum == 0.9 and m.backbone.spec.norm.epsilon == 1e-5
    bn = next(x for x in m.backbone.modules() if isinstance(x, nn.BatchNorm2d))
    assert bn.momentum == pytest.approx(0.1) and bn.eps == 1e-5  # PyTorch momentum = 1 - 0.9
    # The same head on the R50-FPN baseline (same P3-P7 contract), for side-by-side runs.
    r50 = ts.create_model("spinenet_cls", backbone="resnet50_fpn", num_classes=5).eval()
    assert r50(torch.randn(1, 3, 64, 64)).shape == (1, 5) and r50.num_features == 256


# --------------------------------------------------------------------------- ablations
def test_graph_damage_edges() -> None:
    spec = ts.spinenet_spec("49")
    # Official block 3 (feats 5) has parents (2, 4): short-range 4 (built just before), long-range 2.
    short, long_, seq = (graph_damage(spec, m) for m in ("short", "long", "sequential"))
    assert short.blocks[3].input_offsets == (2,)
    assert long_.blocks[3].input_offsets == (4,)
    assert seq.blocks[3].input_offsets == (4,)
    # Sequential: every block takes the block built right before it; block 0 the last stem block.
    assert [b.input_offsets for b in seq.blocks] == [(i + 1,) for i in range(len(spec.blocks))]
    for damaged in (short, long_, seq):
        assert all(len(b.input_offsets) == 1 for b in damaged.blocks)
        assert [(b.level, b.block_type, b.is_output) for b in damaged.blocks] == \
            [(b.level, b.block_type, b.is_output) for b in spec.blocks]
        assert SpineNetSpec.from_genome(damaged.to_genome()) == damaged
    with pytest.raises(ValueError, match="mode"):
        graph_damage(spec, "both")


def test_graph_damage_builds_one_resample_per_block() -> None:
    damaged = graph_damage(ts.spinenet_spec("49", filter_size_scale=0.125, endpoints_num_filters=8), "long")
    m = SpineNet(damaged).eval()
    assert all(len(b.resample) == 1 for b in m.blocks)
    assert m(torch.randn(1, 3, 64, 64))["p7"].shape == (1, 8, 1, 1)


def test_fixed_orderings_have_r0_sp53_allocation() -> None:
    # Table 1 R0-SP53: stem {2 L2}; permuted {1, 4, 6, 2, 1, 1} over L2..L7.
    for ordering in (HOURGLASS, FISH):
        assert ordering.stem_levels == (2, 2)
        assert [ordering.levels.count(lvl) for lvl in range(2, 8)] == [1, 4, 6, 2, 1, 1]
    assert HOURGLASS.output_levels == (7, 6, 5, 4, 3) and FISH.output_levels == (3, 4, 5, 6, 7)
    # Connections are the search's: any valid choice builds, e.g. the two previous blocks.
    parents = [(max(0, i), i + 1) for i in range(len(HOURGLASS.levels))]
    spec = ordering_spec("hourglass", parents, filter_size_scale=0.125, endpoints_num_filters=8)
    assert [b.level for b in spec.blocks] == list(HOURGLASS.levels)
    assert SpineNet(spec).eval()(torch.randn(1, 3, 64, 64))["p3"].shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="parent tuples"):
        ordering_spec(FISH, parents[:-1])


def test_resnet50_fpn_baseline() -> None:
    # torchvision ResNet-50 without fc: 25,557,032 - 2,049,000 = 23,508,032. FPN by hand: laterals
    # (512+1024+2048)*256 + 3*256, outputs 3*(256*256*9 + 256), P6/P7 2*(256*256*9 + 256).
    expected = 23_508_032 + (3584 * 256 + 768) + 3 * 590_080 + 2 * 590_080
    assert meta_params("resnet50_fpn") == expected == 27_376_704
    m = ts.create_model("resnet50_fpn").eval()
    out = m(torch.randn(1, 3, 64, 96))
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"] and m.output_shape()["p5"] == (256, 32)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]


def test_resnet50_fpn_macs_reproduce_table3() -> None:
    # Table 3: R50-FPN RetinaNet 96.8B multiply-adds at 640; head MACs = retinanet_spinenet49's
    # dense forward minus its backbone (same 4x256 head on 256-wide P3-P7).
    x = torch.empty(1, 3, 640, 640, device="meta")
    with torch.device("meta"):
        det, bb, r50 = ts.create_model("retinanet_spinenet49"), ts.create_model("spinenet49"), ts.create_model("resnet50_fpn")
    head = count_macs(det, x, forward=det.forward_dense) - count_macs(bb, x)
    assert abs((count_macs(r50, x) + head) / 1e9 - 96.8) < 0.2


# -------------------------------------------------------------------------------- timm
def test_timm_create_model_both_ways() -> None:
    timm = pytest.importorskip("timm")
    feats = timm.create_model("spinenet49", features_only=True, filter_size_scale=0.125).eval()
    assert feats.feature_info.reduction() == [8, 16, 32, 64, 128]
    assert feats.feature_info.channels() == [256] * 5
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [8, 4, 2, 1, 1] and len(outs) == len(feats.feature_info.channels())
    sel = timm.create_model("spinenet_mobile49xs", features_only=True, out_indices=(1, 2))
    assert sel.feature_info.reduction() == [16, 32] and sel.feature_info.channels() == [24, 24]
    cls = timm.create_model("spinenet49", num_classes=10, filter_size_scale=0.125).eval()
    assert cls(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert cls.get_classifier().out_features == 10
    cls.reset_classifier(3)
    assert cls(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with torch.device("meta"):
        assert count_params(timm.create_model("spinenet49")) == 22_088_488  # 1000 classes by default
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("spinenet49", pretrained=True)


def test_mobile_mg_flavor_same_padding_any_size() -> None:
    from torchspine.layers.conv import Conv2dSame

    m = ts.create_model("spinenet_mobile49xs", flavor="mg").eval()
    # Model Garden pads every strided conv 'SAME', depthwise resampling convs included.
    assert isinstance(m.blocks[5].resample[0].downsample[0].conv, Conv2dSame)
    out = m(torch.randn(1, 3, 97, 130))
    # ceil(97 / 2**l) x ceil(130 / 2**l), by hand: l=3 13x17, 4 7x9, 5 4x5, 6 2x3, 7 1x2.
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]


def test_graph_damage_applies_to_any_spec() -> None:
    damaged = graph_damage(mobile_spec("49xs"), "sequential")
    assert damaged.blocks[0].input_offsets == (1,)  # the L2 stem block
    m = SpineNet(damaged).eval()
    assert m(torch.randn(1, 3, 64, 64))["p3"].shape == (1, 24, 8, 8)
