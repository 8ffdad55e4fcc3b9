"""The recipe pieces: conv-only weight decay, warmup + step / cosine schedules, linear lr
scaling, EMA, recipe files validated field by field."""

import json
import math

import pytest
import torch
from torch import nn

from torchspine.engine.config import TrainConfig, list_recipes, load_config
from torchspine.engine.optim import build_ema, build_optimizer, build_scheduler, lr_factor, param_groups, scale_lr


def test_weight_decay_only_on_conv_and_linear_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 4e-5)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                    id(model[3].bias)}
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, lr=0.1)
    assert opt.defaults["momentum"] == 0.9


def test_sgd_step_matches_hand_computed_decay():
    # One SGD step with zero loss gradient: w' = w - lr * wd * w on conv weights; BN untouched.
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    nn.init.constant_(model[0].weight, 2.0)
    opt = build_optimizer(model, lr=0.5, weight_decay=0.1)
    (model(torch.zeros(1, 1, 2, 2)).sum() * 0).backward()
    opt.step()
    assert model[0].weight.item() == pytest.approx(2.0 - 0.5 * 0.1 * 2.0)
    assert model[1].weight.item() == 1.0


def test_linear_scaling_rule():
    # paper / official: 0.28 at batch 256 -> 0.0175 at batch 16
    assert scale_lr(0.28, 16, 256) == pytest.approx(0.0175)


def test_warmup_and_step_schedule_by_hand():
    # official: warmup from 0.0067 to 0.28 over 2000 steps, x0.1 at 217610 and 226870
    kw = dict(total_steps=231500, warmup_steps=2000, warmup_init_factor=0.0067 / 0.28, schedule="step",
              decay_steps=(217610, 226870), decay_factor=0.1)
    assert lr_factor(0, **kw) * 0.28 == pytest.approx(0.0067)
    assert lr_factor(1000, **kw) * 0.28 == pytest.approx((0.0067 + 0.28) / 2)
    assert lr_factor(2000, **kw) == 1.0
    assert lr_factor(217609, **kw) == 1.0
    assert lr_factor(217610, **kw) == pytest.approx(0.1)
    assert lr_factor(226870, **kw) == pytest.approx(0.01)


def test_cosine_schedule_by_hand():
    kw = dict(total_steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.0)
    assert lr_factor(5, **kw) == pytest.approx(0.5)  # warmup from 0
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(60, **kw) == pytest.approx(0.5)  # halfway: (1 + cos(pi/2)) / 2
    assert lr_factor(110, **kw) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_drives_the_optimizer():
    model = nn.Conv2d(1, 1, 1)
    opt = build_optimizer(model, lr=1.0)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=4, schedule="step", decay_steps=(6,))
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1])


def test_ema_follows_the_decay():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 0.0)
    ema = build_ema(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update copies the weights
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update_parameters(model)  # 0.9 * 1 + 0.1 * 2
    assert ema.module.weight.item() == pytest.approx(1.1)


def test_packaged_recipes_load_and_carry_the_official_numbers():
    names = list_recipes()
    for name in ("demo_synth", "retinanet_spinenet49_protocol_c", "retinanet_spinenet49_paper",
                 "maskrcnn_spinenet49_protocol_b"):
        assert name in names
    for name in names:
        load_config(name)  # every field validated
    c = load_config("retinanet_spinenet49_protocol_c")
    # tensorflow/tpu models/official/detection/configs/spinenet/spinenet49_retinanet.yaml: 231500 steps, decays at 217610 / 226870, lr 0.28 at batch 256
    assert (c.max_steps, c.decay_steps, c.lr, c.batch_size) == (231500, (217610, 226870), 0.28, 256)
    assert c.weight_decay == 4e-5 and c.grad_clip_norm == 10.0 and c.stochastic_depth_rate == 0.2
    assert not c.dropblock
    assert load_config("retinanet_spinenet143_protocol_c").scale_jitter == (0.1, 1.9)
    p = load_config("retinanet_spinenet49_paper")
    # paper section 4.1: 250 epochs, decays at the last 40, 20, 10 epochs
    assert p.epochs == 250 and p.decay_epochs == (210, 230, 240) and p.dropblock


@pytest.mark.parametrize("field, value, message", [
    ("lr", -1, "field 'lr'"),
    ("lr", "fast", "field 'lr' must be a number"),
    ("batch_size", 0, "field 'batch_size'"),
    ("batch_size", 2.5, "field 'batch_size' must be an integer"),
    ("schedule", "linear", "field 'schedule'"),
    ("momentum", 1.5, "field 'momentum'"),
    ("scale_jitter", [2.0, 1.0], "field 'scale_jitter'"),
    ("scale_jitter", [1.0], "field 'scale_jitter' must be a list of 2"),
    ("decay_epochs", [30, 20], "field 'decay_epochs'"),
    ("device", "tpu", "field 'device'"),
    ("sync_bn", "maybe", "field 'sync_bn'"),
    ("ema_decay", 1.0, "field 'ema_decay'"),
    ("train_ann", "a.json", "field 'train_ann'"),
    ("learning_rate", 0.1, "unknown field 'learning_rate'"),
])
def test_bad_fields_are_named(tmp_path, field, value, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"_comment": "x", field: value}))
    with pytest.raises(ValueError, match=message) as e:
        load_config(str(path))
    assert "r.json" in str(e.value)


def test_defaults_validate_and_comments_ignored():
    c = TrainConfig.from_dict({"_comment": ["anything"], "epochs": 3})
    assert c.epochs == 3.0 and math.isfinite(c.lr)
