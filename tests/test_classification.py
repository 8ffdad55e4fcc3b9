"""Classification (paper section 4.2): built-in data, a short real training that beats chance,
top-1 / top-5 evaluation, resume and the ``torchspine classify`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch.utils.data import DataLoader

from torchspine.cli import main
from torchspine.data.classification import SHAPES, classification_transforms, image_folder, make_shapes_dataset
from torchspine.engine.classification import (
    ClassifyConfig,
    evaluate_classifier,
    load_classifier,
    topk_correct,
    train_classifier,
)



def test_topk_correct_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # target 1: top-1 hit
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # target 4: rank 5 -> top-5 hit only
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])  # target 5: rank 6 -> miss
    assert topk_correct(logits, torch.tensor([1, 4, 5])) == [1, 2]
    # Fewer classes than k: top-5 of 2 classes always contains the target.
    assert topk_correct(torch.tensor([[0.0, 1.0]]), torch.tensor([0])) == [0, 1]


def test_shapes_dataset_layout_and_determinism(tmp_path: Path) -> None:
    counts = make_shapes_dataset(tmp_path / "a", num_classes=3, train_per_class=2, val_per_class=1, image_size=16)
    assert counts == {"train": 6, "val": 3}
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == sorted(SHAPES[:3])
    make_shapes_dataset(tmp_path / "b", num_classes=3, train_per_class=2, val_per_class=1, image_size=16)
    a = (tmp_path / "a" / "val" / "circle" / "00000.png").read_bytes()
    assert a == (tmp_path / "b" / "val" / "circle" / "00000.png").read_bytes()
    with pytest.raises(ValueError, match="num_classes"):
        make_shapes_dataset(tmp_path / "c", num_classes=1)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        ClassifyConfig(data="x", label_smoothing=1.5).validate()
    with pytest.raises(ValueError, match="unknown field"):
        ClassifyConfig.from_dict({"data": "x", "learning_rate": 0.1})


def test_short_training_beats_chance_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    make_shapes_dataset(data, num_classes=3, train_per_class=32, val_per_class=16, image_size=32)
    cfg = ClassifyConfig(
        data=str(data), model="spinenet49_cls",
        model_overrides={"filter_size_scale": 0.25, "endpoints_num_filters": 32},
        out_dir=str(tmp_path / "run"), image_size=32, batch_size=16, epochs=20,
        base_lr=1.6,  # 0.1 at batch 16 (linear scaling, paper [7])
        warmup_epochs=1, min_scale=0.5, workers=0, label_smoothing=0.1,
    )
    result = train_classifier(cfg)
    # 3 balanced classes: chance top-1 is 33.3%; top-5 of 3 classes is always 100%.
    assert result["top1"] > 50.0, result["history"]
    assert result["top5"] == 100.0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 20

    # Saved weights rebuild the same classifier and give the same accuracy.
    model, info = load_classifier(result["weights"])
    assert info["classes"] == list(SHAPES[:3]) and info["num_classes"] == 3
    val = image_folder(data, "val", classification_transforms(32, train=False))
    again = evaluate_classifier(model, DataLoader(val, batch_size=16))
    assert again["top1"] == pytest.approx(result["top1"])

    # Resume: a finished run with more epochs continues from last.pt (epoch 20 -> 21).
    more = train_classifier(ClassifyConfig(**{**cfg.__dict__, "epochs": 21}))
    assert [h["epoch"] for h in more["history"]] == list(range(1, 22))


def test_classify_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "eval", "--data", str(tmp_path), "--weights", str(tmp_path / "none.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["classify", "data", str(tmp_path / "d"), "--classes", "2", "--train-per-class", "1",
                 "--val-per-class", "1", "--size", "16"]) == 0
    assert (tmp_path / "d" / "train" / "circle" / "00000.png").is_file()


def test_train_and_eval_commands_reach_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "d", tmp_path / "run"
    make_shapes_dataset(data, num_classes=2, train_per_class=4, val_per_class=2, image_size=32)
    assert main(["train", "--task", "classify", "--data", str(data), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "32", "--out", str(out), "--num-workers", "0", "--device", "cpu",
                 "--set", 'model_overrides={"filter_size_scale": 0.125, "endpoints_num_filters": 8}',
                 "--set", "warmup_epochs=0"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.pt").is_file()
    capsys.readouterr()
    assert main(["eval", "--task", "classify", "--data", str(data), str(out), "--device", "cpu"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["train", "--task", "classify"]) == 2  # no --data: a clear error, exit code 2


def _tiny_cfg(data: Path, out: Path, **over) -> ClassifyConfig:
    base = dict(data=str(data), model="spinenet49_cls",
                model_overrides={"filter_size_scale": 0.125, "endpoints_num_filters": 8, "drop_rate": 0.2},
                out_dir=str(out), image_size=32, batch_size=4, epochs=2, base_lr=0.4, warmup_epochs=0,
                min_scale=0.3, workers=0, ema_decay=0.5, checkpoint_interval=1)
    base.update(over)
    return ClassifyConfig(**base)


class _Crash(Exception):
    pass


def test_classifier_resume_after_a_crash_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    import torchspine.engine.classification as cls

    data = tmp_path / "d"
    make_shapes_dataset(data, num_classes=2, train_per_class=4, val_per_class=2, image_size=32)
    train_classifier(_tiny_cfg(data, tmp_path / "full"))  # 2 epochs x 2 steps

    original = cls._classification_loss
    calls = {"n": 0}

    def crashing(device, criterion):  # noqa: ANN001, ANN202
        inner = original(device, criterion)

        def loss(model, batch):  # noqa: ANN001, ANN202
            calls["n"] += 1
            if calls["n"] == 4:  # dies inside step 4 (the second epoch), checkpoint of step 3 kept
                raise _Crash()
            return inner(model, batch)

        return loss

    monkeypatch.setattr(cls, "_classification_loss", crashing)
    with pytest.raises(_Crash):
        train_classifier(_tiny_cfg(data, tmp_path / "crashed"))
    monkeypatch.setattr(cls, "_classification_loss", original)
    # Before: the loader was re-seeded on resume (the epoch's order and crops repeated) and
    # dropout / RandomResizedCrop draws came from a restarted stream.
    result = train_classifier(_tiny_cfg(data, tmp_path / "crashed", resume=True))
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "crashed" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert result["steps"] == 4


def test_classifier_nan_raises_the_detector_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchspine.engine.classification as cls
    from torchspine.engine.loop import NonFiniteLossError

    data = tmp_path / "d"
    make_shapes_dataset(data, num_classes=2, train_per_class=4, val_per_class=2, image_size=32)
    original = cls._classification_loss

    def poisoned(device, criterion):  # noqa: ANN001, ANN202
        inner = original(device, criterion)
        calls = {"n": 0}

        def loss(model, batch):  # noqa: ANN001, ANN202
            calls["n"] += 1
            value = inner(model, batch)
            return value * float("nan") if calls["n"] == 2 else value

        return loss

    monkeypatch.setattr(cls, "_classification_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 2") as e:
        train_classifier(_tiny_cfg(data, tmp_path / "nan"))
    assert e.value.step == 2
    assert (tmp_path / "nan" / "checkpoint.pt").is_file()  # the step-1 checkpoint is kept


@pytest.mark.parametrize("backbone", ["spinenet49s", "spinenet49", "spinenet_mobile49"])
def test_classifier_norm_is_given_at_construction_with_the_same_result(backbone: str) -> None:
    """The classifier's BatchNorm (momentum 0.9 / epsilon 1e-5 of tensorflow/tpu
    models/official/detection/configs/spinenet/spinenet49_classification.yaml) is built in, not
    switched after building: the same tensors, BN settings and spec as building the backbone
    with the detector defaults and switching every BatchNorm afterwards (the earlier way)."""
    from torch import nn

    from torchspine import create_model
    from torchspine.specs import NormSpec

    torch.manual_seed(0)
    model = create_model(f"{backbone}_cls", num_classes=10, filter_size_scale=0.25)
    torch.manual_seed(0)
    before = create_model(backbone, filter_size_scale=0.25)
    assert before.spec.norm == NormSpec()  # the detectors' 0.997 / 1e-4 unless told otherwise
    before.spec = before.spec.replace(momentum=0.9, epsilon=1e-5)
    for m in before.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = 1.0 - 0.9, 1e-5  # PyTorch momentum = 1 - TF momentum
    after = model.backbone
    assert after.spec == before.spec and after.spec.norm == NormSpec(momentum=0.9, epsilon=1e-5)
    a, b = after.state_dict(), before.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    bn_a = [(n, m.momentum, m.eps) for n, m in after.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bn_b = [(n, m.momentum, m.eps) for n, m in before.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bn_a == bn_b and bn_a and all(mo == pytest.approx(0.1) and eps == 1e-5 for _, mo, eps in bn_a)
    # a norm given by the caller wins; a module backbone keeps its own
    assert create_model(f"{backbone}_cls", num_classes=10, filter_size_scale=0.25,
                        momentum=0.99).backbone.spec.norm == NormSpec(momentum=0.99, epsilon=1e-4)
    from torchspine.models.classifier import build_classifier

    assert build_classifier(create_model(backbone, filter_size_scale=0.25),
                            num_classes=3).backbone.spec.norm == NormSpec()
