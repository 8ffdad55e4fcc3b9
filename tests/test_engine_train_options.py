"""The same-math training options (channels_last, 1x1 convolutions through oneDNN, activation
checkpointing of the backbone's scale-permuted blocks) and CPU bf16 autocast: one step with each option against one step
without, BatchNorm running statistics, the noise of stochastic depth / DropBlock, the flags,
and an exact resume with the options on."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from torchspine.cli.train import add_arguments, config_overrides
from torchspine.data.synth import SynthConfig, generate_synth
from torchspine.engine.config import TrainConfig
from torchspine.engine.fit import amp_dtype_for
from torchspine.engine.loop import _to_channels_last
from torchspine.engine.trainer import train
from torchspine.layers.conv import Conv2dSame, OneDNNPointwiseConv2d, set_onednn_pointwise
from torchspine.layers.dropout import DropPath, add_dropblock, sample_noise
from torchspine.models.backbone import set_activation_checkpointing
from torchspine.models.registry import create_model

TINY_DETECTOR = {"filter_size_scale": 0.125, "endpoints_num_filters": 16, "head_num_filters": 16,
                 "head_num_convs": 1}


def _backbone(**kw):
    torch.manual_seed(0)
    model = create_model("spinenet49", filter_size_scale=0.25, stochastic_depth_rate=0.2, **kw)
    add_dropblock(model)  # DropBlock after every BN of the blocks: noise in the recomputed part
    return model


def _backbone_step(model, x, seeds):
    model.train()
    with sample_noise(seeds):
        out = model(x)
    loss = sum((v.float() ** 2).mean() for v in out.values())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("keyed", [True, False], ids=["sample-keyed noise", "global-RNG noise"])
def test_checkpointing_gives_the_same_step_and_touches_bn_statistics_once(keyed):
    plain = _backbone()
    ckpt = copy.deepcopy(plain)
    assert set_activation_checkpointing(ckpt) == 1
    assert any(isinstance(m, DropPath) and m.rate > 0 for m in plain.modules())
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    seeds = [11, 12] if keyed else None
    torch.manual_seed(3)
    loss_a, grads_a = _backbone_step(plain, x, seeds)
    torch.manual_seed(3)
    loss_b, grads_b = _backbone_step(ckpt, x, seeds)
    # The recomputation is the same float32 function on the same inputs with the same masks:
    # equal bit for bit on the CPU (allclose would also let a replayed-noise bug slip by less).
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)
    # A naive checkpoint updates every recomputed BN's running statistics a second time and
    # counts the batch twice; here they equal the plain step's exactly.
    ba, bb = _buffers(plain), _buffers(ckpt)
    assert ba.keys() == bb.keys() and any(k.endswith("num_batches_tracked") for k in ba)
    for k in ba:
        assert torch.equal(ba[k], bb[k]), k
    assert int(bb["blocks.0.group.0.conv1.bn.num_batches_tracked"]) == 1
    # momentum restored after the recomputation
    assert all(m.momentum == p.momentum for m, p in zip(ckpt.modules(), plain.modules())
               if isinstance(m, torch.nn.BatchNorm2d))


def test_checkpointing_only_in_training_with_gradients():
    model = _backbone()
    set_activation_checkpointing(model)
    calls = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: calls.append(1))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(calls) == len(model.blocks)  # one forward per block, nothing recomputed
    assert set_activation_checkpointing(torch.nn.Linear(2, 2)) == 0


def test_checkpointing_limited_to_fine_levels():
    plain = _backbone()
    ckpt = copy.deepcopy(plain)
    set_activation_checkpointing(ckpt, max_level=3)
    calls = {i: 0 for i in range(len(ckpt.blocks))}
    for i, block in enumerate(ckpt.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    loss_a, grads_a = _backbone_step(plain, x, [1, 2])
    loss_b, grads_b = _backbone_step(ckpt, x, [1, 2])
    # SpineNet-49's blocks at levels 2-3 run twice (forward, then recomputed), the others once.
    levels = [b.level for b in ckpt.blocks]
    assert calls == {i: 2 if lvl <= 3 else 1 for i, lvl in enumerate(levels)} and 2 in calls.values()
    assert torch.equal(loss_a, loss_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    with pytest.raises(ValueError, match="max_level"):
        set_activation_checkpointing(ckpt, max_level="3")
    with pytest.raises(ValueError, match="activation_checkpointing_max_level"):
        TrainConfig.from_dict({"activation_checkpointing_max_level": 0})


def _detector_step(model, images, targets, dtype=None):
    model.train()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        losses = model(images, targets)
    loss = sum(losses.values())
    loss.backward()
    return loss.detach().float(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _detector_data():
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [60.0, 40.0, 120.0, 110.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(2)]
    return images, targets


def _detector():
    torch.manual_seed(0)
    return create_model("retinanet_spinenet49s", num_classes=3, image_size=128, **TINY_DETECTOR)


def _projected_step(model, x, dtype=None, proj_seed=4, frozen_bn=False):
    """One training forward + backward of a backbone with a fixed random projection of its
    outputs as the loss (every output element gets its own weight: a well-spread gradient)."""
    model.train()
    for m in model.modules():
        if frozen_bn and isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x)
    g = torch.Generator().manual_seed(proj_seed)
    loss = sum((v.to(x.dtype) * torch.randn(v.shape, generator=g).to(x.dtype)).sum() for v in out.values())
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_channels_last_step_is_the_same_function():
    # Checked in float64: a freshly initialised SpineNet in training mode amplifies rounding by
    # orders of magnitude (BatchNorm over the few values of the deep, small maps: measured
    # float32 vs float64 gradients differ by 2-5% at 256 px, by more than 100% at 128 px, in
    # either layout), so a float32 comparison could only bound noise. In float64 (rounding
    # 1e-16) the two layouts agree to 1e-12 measured; 1e-9 leaves room and still catches any
    # real difference (a wrong layout or a dropped term changes the result at the percent level).
    torch.manual_seed(0)
    plain = create_model("spinenet49", filter_size_scale=0.25).double()
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    convs = [m.weight for m in cl.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss_a, g_a = _projected_step(plain, x)
    loss_b, g_b = _projected_step(cl, _to_channels_last(x))
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-9, atol=0)
    assert ((g_b - g_a).norm() / g_a.norm()).item() < 1e-9
    bn_a, bn_b = _buffers(plain), _buffers(cl)
    for k in bn_a:
        torch.testing.assert_close(bn_b[k], bn_a[k], rtol=1e-9, atol=1e-12)


def test_channels_last_detector_loss_equals_nchw():
    # The whole detector (torchvision's transform batches the images in NCHW; the channels_last
    # weights of the first convolution carry the layout on): the loss within float32 rounding.
    plain = _detector()
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    images, targets = _detector_data()
    loss_a, _ = _detector_step(plain, images, targets)
    loss_b, _ = _detector_step(cl, images, targets)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)


def test_cpu_bf16_autocast_is_opt_in_and_close_to_float32():
    cpu = torch.device("cpu")
    assert amp_dtype_for(cpu, True, "bfloat16") is torch.bfloat16
    assert amp_dtype_for(cpu, True, "auto") is None  # the recipes' amp: true keeps CPU runs in float32
    assert amp_dtype_for(cpu, True, "float16") is None
    assert amp_dtype_for(cpu, False, "bfloat16") is None
    # BatchNorm in inference mode (as when fine-tuning with frozen BN), because in training mode
    # a fresh network turns rounding into noise (see the channels_last test): with it, even
    # float32 and float64 disagree. bfloat16 keeps 8 significant bits (unit roundoff
    # 2**-9 = 0.2%) in every convolution's inputs and outputs; over ~50 convolutions in series
    # the errors add up to a few percent (measured: loss 1-2% off, gradient cosine 0.985-0.992
    # at 128-256 px). Checked: loss within 5%, gradient cosine above 0.97: a bf16 step points
    # where the float32 step points.
    torch.manual_seed(0)
    model = create_model("spinenet49", filter_size_scale=0.25)
    bf = copy.deepcopy(model)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    loss_a, g_a = _projected_step(model, x, frozen_bn=True)
    loss_b, g_b = _projected_step(bf, x, torch.bfloat16, frozen_bn=True)
    torch.testing.assert_close(loss_b, loss_a, rtol=5e-2, atol=0)
    assert torch.nn.functional.cosine_similarity(g_a, g_b, dim=0).item() > 0.97


def test_batch_to_channels_last_walks_containers():
    x = torch.randn(2, 3, 8, 8)
    out = _to_channels_last(((x, [torch.randn(3, 8, 8)]), {"y": x}))
    assert out[0][0].is_contiguous(memory_format=torch.channels_last) and torch.equal(out[0][0], x)
    assert out[0][1][0].dim() == 3 and isinstance(out[0][1], list)
    assert out[1]["y"].is_contiguous(memory_format=torch.channels_last)


def test_train_flags_set_the_config_fields():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    over = config_overrides(p.parse_args(["--channels-last", "--onednn-pointwise", "--activation-checkpointing",
                                          "--bf16"]))
    assert over == {"channels_last": True, "onednn_pointwise": True, "activation_checkpointing": True, "amp": True,
                    "amp_dtype": "bfloat16"}
    cfg = TrainConfig().replace(**over)
    assert cfg.channels_last and cfg.onednn_pointwise and cfg.activation_checkpointing and cfg.amp_dtype == "bfloat16"
    default = TrainConfig()
    assert not (default.channels_last or default.onednn_pointwise or default.activation_checkpointing)  # off
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig.from_dict({"channels_last": "yes"})
    # The oneDNN route acts on channels_last activations only: without the layout it would do
    # nothing, so a config refuses it and the flag brings the layout along.
    with pytest.raises(ValueError, match="'onednn_pointwise' needs channels_last"):
        TrainConfig.from_dict({"onednn_pointwise": True})
    assert config_overrides(p.parse_args(["--onednn-pointwise"])) == {"onednn_pointwise": True, "channels_last": True}


class _Stop(Exception):
    pass


def test_resume_is_exact_with_channels_last_onednn_pointwise_and_checkpointing(tmp_path):
    data = generate_synth(tmp_path / "synth", SynthConfig(num_train=8, num_val=2, image_size=64, seed=3))
    base = {
        "model": "retinanet_spinenet49s", "model_overrides": TINY_DETECTOR, "image_size": 64,
        "train_ann": str(data["train_ann"]), "train_images": str(data["train_images"]),
        "val_ann": str(data["val_ann"]), "val_images": str(data["val_images"]),
        "batch_size": 4, "max_steps": 4, "lr": 0.02, "lr_reference_batch": 4, "warmup_steps": 1,
        "schedule": "cosine", "device": "cpu", "num_threads": 1, "log_interval": 1, "checkpoint_interval": 1,
        "eval_interval": 0, "tensorboard": False, "progress": False, "seed": 5, "stochastic_depth_rate": 0.2,
        "dropblock": True, "ema_decay": 0.9, "channels_last": True, "activation_checkpointing": True,
        "onednn_pointwise": True,
    }
    full = TrainConfig.from_dict({**base, "output_dir": str(tmp_path / "full")})
    cut = TrainConfig.from_dict({**base, "output_dir": str(tmp_path / "cut")})
    train(full)

    def stop(step, _):  # noqa: ANN001, ANN202
        if step == 2:
            raise _Stop()

    with pytest.raises(_Stop):
        train(cut, on_step=stop)
    train(cut.replace(resume=True))
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def losses(d):
        return [h["loss"] for h in json.loads((tmp_path / d / "history.json").read_text())["history"]]

    assert len(losses("full")) == 4 and losses("cut") == losses("full")


def test_classifier_trains_with_every_option_from_the_command_line(tmp_path):
    # The classification task takes the same flags (channels_last batches are 4-D tensors here).
    from torchspine.cli import main
    from torchspine.data.classification import make_shapes_dataset

    data = tmp_path / "d"
    make_shapes_dataset(data, num_classes=2, train_per_class=4, val_per_class=2, image_size=32)
    out = tmp_path / "run"
    assert main(["train", "--task", "classify", "--data", str(data), "--output-dir", str(out), "--epochs", "1",
                 "--batch-size", "4", "--image-size", "32", "--device", "cpu", "--no-progress",
                 "--channels-last", "--onednn-pointwise", "--activation-checkpointing", "--bf16",
                 "--set", 'model_overrides={"filter_size_scale": 0.125, "endpoints_num_filters": 8}',
                 "--set", "warmup_epochs=0"]) == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["channels_last"] and cfg["onednn_pointwise"] and cfg["activation_checkpointing"]
    assert cfg["amp_dtype"] == "bfloat16"
    assert (out / "model.safetensors").is_file()


def _conv_ops(fn):
    """The aten operators ``fn`` runs (forward and backward), by name."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_onednn_pointwise_conv_is_the_same_convolution_through_onednn():
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(64, 32, 1, bias=True)
    fast = copy.deepcopy(plain)
    assert set_onednn_pointwise(fast) == 1 and type(fast) is OneDNNPointwiseConv2d
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 64, 16, 24).contiguous(memory_format=torch.channels_last)

    def step(conv):
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        y = conv(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return y, xi.grad, conv.weight.grad, conv.bias.grad

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # PyTorch's own choice for a 1x1 stride-1 conv of a batch of 2 on one thread (use_mkldnn in
        # aten/src/ATen/native/Convolution.cpp): its GEMM path, which this layer exists to avoid ...
        assert {"aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward"} <= _conv_ops(lambda: step(plain))
        # ... and the layer's: oneDNN for the forward and the backward, no GEMM-path kernel.
        ops = _conv_ops(lambda: step(fast))
        assert "aten::mkldnn_convolution" in ops and not any("slow_conv2d" in k for k in ops), sorted(ops)
        ref, out = step(plain), step(fast)
    finally:
        torch.set_num_threads(threads)
    # The same sums of products in another order: equal to float32 rounding, bounded relative to
    # the largest value of each tensor (sums of hundreds of terms cancel in places, so an
    # elementwise relative bound would measure cancellation); a wrong view (rows and channels
    # mixed up) is off by O(1) of that scale.
    for a, b in zip(ref, out):
        assert a.shape == b.shape and ((b - a).abs().max() / a.abs().max()).item() < 1e-5
    assert out[0].is_contiguous(memory_format=torch.channels_last)  # the layout carries on, no copy
    assert out[1].is_contiguous(memory_format=torch.channels_last)
    # Inputs it leaves to nn.Conv2d: NCHW, and fewer than 16 image rows in all. Bit-equal.
    for other in (x.contiguous(), x[:, :, :7].contiguous(memory_format=torch.channels_last)):
        assert torch.equal(fast(other), plain(other))


def test_set_onednn_pointwise_switches_only_plain_1x1_stride1_convs_and_back():
    torch.manual_seed(0)
    model = create_model("spinenet49", filter_size_scale=0.25)
    model.extra = torch.nn.ModuleList([Conv2dSame(8, 8, 1), torch.nn.Conv2d(8, 8, 1, stride=2),
                                       torch.nn.Conv2d(8, 8, 1, groups=2), torch.nn.Conv2d(8, 8, 3)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pointwise = [m for m in model.modules() if type(m) is torch.nn.Conv2d and m.kernel_size == (1, 1)
                 and m.stride == (1, 1) and m.groups == 1]
    assert len(pointwise) > 40  # SpineNet-49: two per bottleneck block, plus projections
    assert set_onednn_pointwise(model) == len(pointwise)
    assert all(type(m) is OneDNNPointwiseConv2d for m in pointwise)
    assert [type(m) for m in model.extra] == [Conv2dSame, torch.nn.Conv2d, torch.nn.Conv2d, torch.nn.Conv2d]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert set_onednn_pointwise(model) == 0  # already switched
    assert set_onednn_pointwise(model, enabled=False) == len(pointwise)
    assert all(type(m) is torch.nn.Conv2d for m in pointwise)


def test_onednn_pointwise_backbone_step_is_the_same_function():
    # One forward + backward of SpineNet-49 (channels_last, float32) with and without the
    # switch, BatchNorm in inference mode (in training mode a fresh network amplifies float32
    # rounding into noise: see test_channels_last_step_is_the_same_function). The two differ only
    # in the order of the float32 additions inside the 1x1 convolutions.
    torch.manual_seed(0)
    plain = create_model("spinenet49", filter_size_scale=0.25).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    assert set_onednn_pointwise(fast) > 0
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    loss_a, g_a = _projected_step(plain, x, frozen_bn=True)
    loss_b, g_b = _projected_step(fast, x, frozen_bn=True)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)
    assert ((g_b - g_a).norm() / g_a.norm()).item() < 1e-5


def test_onednn_pointwise_detector_step_matches_in_training_mode():
    # The whole detector in training mode. The loss agrees to float32 rounding. Gradients and
    # BatchNorm's running statistics after the step go through training-mode BN over the few
    # values of the deepest maps, which turns rounding into differences of 5-20% (measured: the
    # NCHW and channels_last steps, the same math, differ by 15% in the gradient and 17% in the
    # worst running statistic); the switch must stay within that noise (measured 11% and 6%),
    # while a wrong convolution changes the loss itself.
    nchw = _detector()
    plain = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    assert set_onednn_pointwise(fast) > 0
    images, targets = _detector_data()
    (loss_n, g_n), (loss_a, g_a), (loss_b, g_b) = (_detector_step(m, images, targets) for m in (nchw, plain, fast))
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)

    def stat_distance(m1, m2):
        b1, b2 = _buffers(m1), _buffers(m2)
        return max(((b2[k] - b1[k]).abs().max() / b1[k].abs().max().clamp_min(1e-12)).item()
                   for k in b1 if "running" in k)

    layout_noise = ((g_a - g_n).norm() / g_a.norm()).item(), stat_distance(nchw, plain)
    ours = ((g_b - g_a).norm() / g_a.norm()).item(), stat_distance(plain, fast)
    assert ours[0] < 2 * layout_noise[0] and ours[1] < 2 * layout_noise[1], (ours, layout_noise)
    assert all(int(v) == 1 for k, v in _buffers(fast).items() if k.endswith("num_batches_tracked"))


def test_fit_refuses_onednn_pointwise_without_channels_last(tmp_path):
    # fit() sits below both configs (detection and classification training): it checks too.
    from torchspine.engine.fit import FitOptions, fit

    model = torch.nn.Conv2d(3, 3, 1)
    opts = FitOptions(output_dir=tmp_path, batch_size=1, total_steps=1, lr=0.1, onednn_pointwise=True)
    with pytest.raises(ValueError, match="onednn_pointwise: acts on channels_last"):
        fit(model=model, train_model=model, loss_fn=lambda m, b: m(b).sum(), dataset=[torch.zeros(3, 4, 4)],
            collate=torch.stack, opts=opts)
    assert type(model) is torch.nn.Conv2d  # refused before anything was switched
