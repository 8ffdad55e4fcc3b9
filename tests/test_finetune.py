"""Fine-tuning (`torchspine train --weights`): what is copied from the pretrained model.

Each assertion compares tensors with the pretrained file's own tensors (copied) or with the
fresh model's initialisation (not copied), so the expected values come from the files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from torchspine import create_model
from torchspine.cli import main
from torchspine.data.synth import SynthConfig, generate_synth
from torchspine.engine.finetune import class_dependent_keys, freeze_backbone_bn, init_from_pretrained
from torchspine.models.saved import save_model

TINY = {"filter_size_scale": 0.125, "endpoints_num_filters": 16, "head_num_filters": 16, "head_num_convs": 1,
        "momentum": 0.9}


def _pretrained(tmp_path, num_classes, names):
    torch.manual_seed(1)
    m = create_model("retinanet_spinenet49s", num_classes=num_classes, image_size=64, **TINY)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5)  # unlike any fresh initialisation
    path = save_model(m, tmp_path / "pre.safetensors", info={"num_classes": num_classes, "label_names": names})
    return path, m.state_dict()


def test_other_classes_get_a_fresh_classification_layer(tmp_path):
    path, pre = _pretrained(tmp_path, 4, ["bg", "a", "b", "c"])
    torch.manual_seed(2)
    model = create_model("retinanet_spinenet49s", num_classes=2, image_size=64, **TINY)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert class_dependent_keys(model) == {"head.cls_logits.weight", "head.cls_logits.bias"}
    rep = init_from_pretrained(model, path, label_names=["bg", "tree"])
    assert not rep.classes_match and rep.fresh == ["head.cls_logits.bias", "head.cls_logits.weight"]
    now = model.state_dict()
    for k in now:
        if k.startswith("head.cls_logits"):
            assert torch.equal(now[k], fresh[k]), k  # the new model's own initialisation (prior bias)
        else:
            assert torch.equal(now[k], pre[k]), k  # backbone, towers and box regression copied
    assert torch.allclose(now["head.cls_logits.bias"], torch.tensor(-4.59512), atol=1e-4)  # -log(0.99/0.01)


def test_matching_classes_copy_the_head_and_other_names_do_not(tmp_path):
    path, pre = _pretrained(tmp_path, 3, ["bg", "tree", "car"])
    model = create_model("retinanet_spinenet49s", num_classes=3, image_size=64, **TINY)
    rep = init_from_pretrained(model, path, label_names=["bg", "tree", "car"])
    assert rep.classes_match and all(torch.equal(v, pre[k]) for k, v in model.state_dict().items())
    model = create_model("retinanet_spinenet49s", num_classes=3, image_size=64, **TINY)
    fresh = model.state_dict()["head.cls_logits.weight"].clone()
    rep = init_from_pretrained(model, path, label_names=["bg", "cell", "nucleus"])
    assert not rep.classes_match and torch.equal(model.state_dict()["head.cls_logits.weight"], fresh)


def test_other_architecture_is_an_error_naming_tensors(tmp_path):
    path, _ = _pretrained(tmp_path, 3, None)
    model = create_model("retinanet_spinenet49s", num_classes=3, image_size=64, **{**TINY, "filter_size_scale": 0.25})
    with pytest.raises(ValueError, match=r"tensors do not fit the model being trained, e\.g\. \['backbone\."):
        init_from_pretrained(model, path)
    with pytest.raises(FileNotFoundError, match="no such file or run folder"):
        init_from_pretrained(model, tmp_path / "missing.safetensors")


def test_frozen_backbone_bn_keeps_statistics_in_training_mode():
    model = create_model("retinanet_spinenet49s", num_classes=3, image_size=64, **TINY)
    n = freeze_backbone_bn(model)
    assert n > 0
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model.train()
    model.backbone(torch.rand(2, 3, 64, 64))
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert set(model.state_dict()) == set(create_model("retinanet_spinenet49s", num_classes=3, **TINY).state_dict())


def test_train_weights_cli_starts_from_the_run_and_records_it(tmp_path):
    data = generate_synth(tmp_path / "synth", SynthConfig(num_train=8, num_val=2, image_size=64, seed=3))
    common = ["--train-ann", str(data["train_ann"]), "--train-images", str(data["train_images"]),
              "--val-ann", str(data["val_ann"]), "--val-images", str(data["val_images"]), "--image-size", "64",
              "--batch-size", "4", "--max-steps", "1", "--device", "cpu", "--no-progress", "--set", "tensorboard=false",
              "--set", "checkpoint_interval=0", "--set", "warmup_steps=0"]
    pre = tmp_path / "pre"
    assert main(["train", "--model", "retinanet_spinenet49s", "--set", f"model_overrides={json.dumps(TINY)}",
                 "--out", str(pre), *common]) == 0
    ft = tmp_path / "ft"
    # no --model / --set model_overrides: the architecture comes from the weights
    assert main(["train", "--config", "finetune", "--weights", str(pre), "--out", str(ft), *common,
                 "--freeze-bn", "--set", "lr=1e-9", "--set", "momentum=0"]) == 0
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["weights"] == str(pre / "model.safetensors") and cfg["model_overrides"]["filter_size_scale"] == 0.125
    a, b = load_file(pre / "model.safetensors"), load_file(ft / "model.safetensors")
    # lr ~0 and frozen backbone BN: backbone convolutions unchanged to float precision
    conv = [k for k in a if k.startswith("backbone.") and k.endswith("conv.weight")]
    assert conv and all(torch.allclose(a[k], b[k], atol=1e-6) for k in conv)
    bn = [k for k in a if k.startswith("backbone.") and k.endswith("running_mean")]
    assert bn and all(torch.equal(a[k], b[k]) for k in bn)
