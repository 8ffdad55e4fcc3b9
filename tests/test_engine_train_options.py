"""The same-math training options (channels_last, activation checkpointing of the backbone's
scale-permuted blocks) and CPU bf16 autocast: one step with each option against one step
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
    over = config_overrides(p.parse_args(["--channels-last", "--activation-checkpointing", "--bf16"]))
    assert over == {"channels_last": True, "activation_checkpointing": True, "amp": True, "amp_dtype": "bfloat16"}
    cfg = TrainConfig().replace(**over)
    assert cfg.channels_last and cfg.activation_checkpointing and cfg.amp_dtype == "bfloat16"
    assert not TrainConfig().channels_last and not TrainConfig().activation_checkpointing  # off by default
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig.from_dict({"channels_last": "yes"})


class _Stop(Exception):
    pass


def test_resume_is_exact_with_channels_last_and_checkpointing(tmp_path):
    data = generate_synth(tmp_path / "synth", SynthConfig(num_train=8, num_val=2, image_size=64, seed=3))
    base = {
        "model": "retinanet_spinenet49s", "model_overrides": TINY_DETECTOR, "image_size": 64,
        "train_ann": str(data["train_ann"]), "train_images": str(data["train_images"]),
        "val_ann": str(data["val_ann"]), "val_images": str(data["val_images"]),
        "batch_size": 4, "max_steps": 4, "lr": 0.02, "lr_reference_batch": 4, "warmup_steps": 1,
        "schedule": "cosine", "device": "cpu", "num_threads": 1, "log_interval": 1, "checkpoint_interval": 1,
        "eval_interval": 0, "tensorboard": False, "progress": False, "seed": 5, "stochastic_depth_rate": 0.2,
        "dropblock": True, "ema_decay": 0.9, "channels_last": True, "activation_checkpointing": True,
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
                 "--channels-last", "--activation-checkpointing", "--bf16",
                 "--set", 'model_overrides={"filter_size_scale": 0.125, "endpoints_num_filters": 8}',
                 "--set", "warmup_epochs=0"]) == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["channels_last"] and cfg["activation_checkpointing"] and cfg["amp_dtype"] == "bfloat16"
    assert (out / "model.safetensors").is_file()
