"""optimize_for_inference: the optimized copy computes the same function as the original."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchspine
from torchspine.models.optimize import fold_batch_norms_, optimize_for_inference



def _randomize_bn_(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so that folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _max_rel_err(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in b)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_optimized_backbone_matches_original(padding: str) -> None:
    torch.manual_seed(0)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.25, endpoints_num_filters=32,
                                    padding=padding, activation="swish").eval()
    _randomize_bn_(model)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 97, 130)  # odd sizes: 'SAME' pads differ before/after
    with torch.no_grad():
        ref = model(x)
    opt = optimize_for_inference(model)
    # Every BN in SpineNet follows a conv inside a ConvNormAct: all are folded.
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules())
    assert n_bn == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert not opt.training and all(not p.requires_grad for p in opt.parameters())
    # The original is untouched.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    with torch.inference_mode():
        out = opt(x.to(memory_format=torch.channels_last))
    assert list(out) == list(ref)
    # fp32 folding changes rounding only: ~1e-6 relative observed; 1e-4 leaves room.
    assert _max_rel_err(out, ref) < 1e-4


def test_optimize_bf16_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.25, endpoints_num_filters=32).eval()
    _randomize_bn_(model)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)
    opt = optimize_for_inference(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in opt.parameters())
    with torch.inference_mode():
        out = opt(x.to(torch.bfloat16, memory_format=torch.channels_last))
    out = {k: v.float() for k, v in out.items()}
    # bf16 has an 8-bit mantissa (relative step 2**-8 = 0.4%); errors accumulate over
    # ~40 convs, so a few percent of the largest activation is the expected scale.
    assert _max_rel_err(out, ref) < 0.1


def test_fold_torchvision_resnet_fpn() -> None:
    """The benchmark's peer gets the same treatment: every BN of R50-FPN folds."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    peer = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d,
                               trainable_layers=5, returned_layers=[2, 3, 4],
                               extra_blocks=LastLevelP6P7(256, 256)).eval()
    _randomize_bn_(peer)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = peer(x)
    folded = optimize_for_inference(peer, channels_last=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        out = folded(x)
    assert _max_rel_err(out, ref) < 1e-4


def test_fold_needs_eval_mode() -> None:
    model = torchspine.create_model("spinenet49", filter_size_scale=0.125, endpoints_num_filters=8)
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norms_(model)


@pytest.mark.slow
def test_compiled_with_freezing_matches_original() -> None:
    """torch.compile + Inductor freezing (about 30 s of compiling on 2 cores: marked slow)."""
    torch.manual_seed(0)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.25, endpoints_num_filters=16).eval()
    _randomize_bn_(model)
    x = torch.randn(1, 3, 96, 130)
    with torch.no_grad():
        ref = model(x)
    opt = optimize_for_inference(model, compile=True)
    with torch.inference_mode():
        out = opt(x.to(memory_format=torch.channels_last))
    assert _max_rel_err(out, ref) < 1e-4


def test_optimize_models_built_on_spinenet() -> None:
    """Composite models: every backbone BN folds, outputs match."""
    torch.manual_seed(0)
    cls = torchspine.create_model("spinenet49_cls", filter_size_scale=0.125, endpoints_num_filters=16,
                                  num_classes=5).eval()
    _randomize_bn_(cls)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = cls(x)
    opt = optimize_for_inference(cls)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules())
    with torch.inference_mode():
        out = opt(x.to(memory_format=torch.channels_last))
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-4

    det = torchspine.create_model("retinanet_spinenet49", filter_size_scale=0.125, endpoints_num_filters=16,
                                  num_classes=3).eval()
    _randomize_bn_(det)
    opt = optimize_for_inference(det)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.backbone.modules())
    with torch.inference_mode():
        ref, out = det.backbone(x), opt.backbone(x.to(memory_format=torch.channels_last))
    assert _max_rel_err(out, ref) < 1e-4


def _tiny_detector(name: str) -> nn.Module:
    torch.manual_seed(0)
    # score_thresh 0: random heads give ~0.01 scores; every candidate is kept, so there is something to compare.
    model = torchspine.create_model(name, filter_size_scale=0.25, endpoints_num_filters=32, image_size=128,
                                    num_classes=4, score_thresh=0.0).eval()
    _randomize_bn_(model)
    return model


@pytest.mark.parametrize("name", ["retinanet_spinenet49s", "maskrcnn_spinenet49"])
def test_bf16_detector_takes_float_and_uint8_images(name: str) -> None:
    """prepare_for_inference(dtype=bfloat16) on a detector: ordinary images in, float32 detections out."""
    from torchspine.models.optimize import prepare_for_inference

    model = _tiny_detector(name)
    fp32 = prepare_for_inference(model)
    bf16 = prepare_for_inference(model, dtype=torch.bfloat16)
    assert any(p.dtype == torch.bfloat16 for p in bf16.parameters())
    g = torch.Generator().manual_seed(1)
    img_u8 = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8, generator=g)
    img_f = img_u8.float() / 255
    with torch.inference_mode():
        det_f = bf16([img_f])[0]
        det_u8 = bf16([img_u8])[0]
        ref = fp32([img_f])[0]
    # uint8 and its float equivalent are the same image.
    torch.testing.assert_close(det_u8["boxes"], det_f["boxes"])
    assert det_f["boxes"].dtype == torch.float32 and det_f["scores"].dtype == torch.float32
    assert len(det_f["boxes"]) > 0
    # Boxes stay within the image and the best score is near the fp32 one (bf16 keeps 8 bits of
    # mantissa: a logit of about -4.6 (prior 0.01) is off by at most 2**-6, so the sigmoid by < 1e-3).
    assert (det_f["boxes"][:, 2] <= 120 + 1e-3).all() and (det_f["boxes"][:, 3] <= 100 + 1e-3).all()
    assert abs(det_f["scores"].max().item() - ref["scores"].max().item()) < 0.01


def test_bf16_detector_features_close_to_fp32() -> None:
    """The bf16 backbone inside the detector computes the fp32 function up to bf16 rounding."""
    from torchspine.models.optimize import prepare_for_inference

    model = _tiny_detector("retinanet_spinenet49s")
    bf16 = prepare_for_inference(model, dtype=torch.bfloat16)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        ref = model.backbone(x)
        out = {k: v.float() for k, v in bf16.backbone(x).items()}  # float32 input: the hook casts it
    # bf16 relative step 2**-8 accumulated over ~40 convs: a few percent (see test_optimize_bf16_close_to_fp32).
    assert _max_rel_err(out, ref) < 0.1


@pytest.mark.parametrize("padding,size", [("symmetric", (97, 130)), ("same", (128, 128)), ("symmetric", (256, 192))])
def test_rewrite_matches_original(padding: str, size: tuple[int, int]) -> None:
    """optimize_for_inference(rewrite=True): fused reduce convs + projection before nearest
    upsampling + merged projections compute the plain model's function (odd sizes use the
    resize fallback)."""
    from torchspine.models.optimize import SpineNetForInference

    torch.manual_seed(0)
    model = torchspine.create_model("spinenet49", filter_size_scale=0.25, endpoints_num_filters=32,
                                    padding=padding).eval()
    _randomize_bn_(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
    opt = optimize_for_inference(model, rewrite=True)
    assert isinstance(opt, SpineNetForInference)
    # SpineNet-49: 12 stem/block outputs are read by two or more resamplings (spec connections).
    assert len(opt.fused) == 12
    # 10 blocks whose two parents are both at the block's level or finer (official block specs,
    # tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py): parents
    # (0, 1) -> L2 and L4, (2, 4) -> L4, (3, 5) -> L6 and L4, (6, 8) -> L7, (8, 10) -> L5,
    # (7, 12) -> L5, (5, 14) -> L7, (12, 14) -> L6. Their projections become one conv.
    assert len(opt.merged) == 10
    with torch.inference_mode():
        out = opt(x.to(memory_format=torch.channels_last))
        only_fuse = SpineNetForInference(optimize_for_inference(model), project_first=False,
                                         merge_projections=False)(x)
        only_project = SpineNetForInference(optimize_for_inference(model), fuse_reduce=False,
                                            merge_projections=False)(x)
        merge_all = SpineNetForInference(optimize_for_inference(model), project_first=False)
        assert len(merge_all.merged) == 15  # every block: no projection is left before an upsampling
        only_merge = merge_all(x)
    # Same float32 function: BN folding and the reordered sums change rounding only (~1e-6 observed).
    for o in (out, only_fuse, only_project, only_merge):
        assert list(o) == list(ref) and _max_rel_err(o, ref) < 1e-4
    # The plain model and its state dict are untouched.
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_rewrite_inside_a_detector() -> None:
    """A RetinaNet's SpineNet is rewritten in place; dense outputs match the plain model."""
    from torchspine.models.optimize import SpineNetForInference

    model = _tiny_detector("retinanet_spinenet49s")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = model.forward_dense(x)
    opt = optimize_for_inference(model, rewrite=True)
    assert isinstance(opt.backbone, SpineNetForInference)
    with torch.inference_mode():
        out = opt.forward_dense(x.to(memory_format=torch.channels_last))
    assert _max_rel_err(out, ref) < 1e-4


def test_prepare_for_inference_rewrite_same_detections() -> None:
    from torchspine.models.optimize import SpineNetForInference, prepare_for_inference

    model = _tiny_detector("retinanet_spinenet49s")
    img = torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = prepare_for_inference(model)([img])[0]
        prepared = prepare_for_inference(model, rewrite=True)
        out = prepared([img])[0]
    assert isinstance(prepared.backbone, SpineNetForInference)
    # Same float32 function: the top scores agree to rounding (~1e-7 observed).
    torch.testing.assert_close(out["scores"][:50], ref["scores"][:50], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["boxes"][:50], ref["boxes"][:50], atol=1e-3, rtol=0)  # pixels


@pytest.mark.slow  # two Inductor compiles: about a minute on 2 busy cores
def test_prepare_for_inference_compiled_bf16_detector() -> None:
    from torchspine.models.optimize import prepare_for_inference

    model = _tiny_detector("retinanet_spinenet49s")
    img = torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = prepare_for_inference(model, pad_to_square=True)([img])[0]
        out = prepare_for_inference(model, pad_to_square=True, dtype=torch.bfloat16, rewrite=True,
                                    compile=True)([(img * 255).to(torch.uint8)])[0]
    # bf16 logits near the prior (-4.6) are off by <= 2**-6, so scores by < 1e-3 (see the bf16 test above).
    assert abs(out["scores"].max().item() - ref["scores"].max().item()) < 0.01
