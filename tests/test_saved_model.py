"""The one saved-model format: ``save_model`` / ``load_model`` rebuild every kind of model exactly.

Each test saves a small model (``filter_size_scale=0.25``, tiny heads), loads it back from the
file alone, and checks that every tensor is identical and the outputs on a fixed input agree: the
reference is the model before saving, so a missing setting (a spec field, a head width, the
activation) shows as a shape error or a different output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchspine
from torchspine.models.saved import load_model, read_model_metadata, save_model

SMALL = {"filter_size_scale": 0.25}
KINDS = {
    "detector": ("retinanet_spinenet49s", {**SMALL, "num_classes": 5, "image_size": 128, "head_num_filters": 16,
                                           "activation": "swish"}),
    "instance_segmentation": ("maskrcnn_spinenet49s", {**SMALL, "num_classes": 4, "image_size": 128,
                                                       "head_num_filters": 16, "rpn_num_filters": 16, "fc_dims": 32}),
    "classifier": ("spinenet49s_cls", {**SMALL, "num_classes": 7, "momentum": 0.9, "epsilon": 1e-5}),
    "backbone": ("spinenet49s", {**SMALL, "endpoints_num_filters": 24}),
    "mobile backbone": ("spinenet_mobile49s", {"flavor": "mg"}),
}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    # The tensors are bit-equal (checked separately); float32 kernels may sum in another order
    # for another memory alignment (seen: 6e-7 on outputs of magnitude 1), so outputs are not.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _randomize_bn(model: torch.nn.Module) -> None:
    # Non-trivial BN statistics, so that the outputs depend on every saved buffer.
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _outputs(model: torch.nn.Module, kind: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        if kind in ("detector", "instance_segmentation"):
            x = torch.rand(1, 3, 128, 128)
            feats = model.backbone(x)
            return list(feats.values())
        if kind == "classifier":
            return [model(torch.rand(2, 3, 64, 64))]
        return list(model(torch.rand(1, 3, 128, 128)).values())


@pytest.mark.parametrize("kind", list(KINDS))
def test_load_model_rebuilds_every_kind_exactly(tmp_path: Path, kind: str) -> None:
    name, overrides = KINDS[kind]
    torch.manual_seed(1)
    model = torchspine.create_model(name, **overrides).eval()
    _randomize_bn(model)
    info = {"num_classes": overrides.get("num_classes"), "label_names": ["a", "b"], "image_size": 128}
    path = save_model(model, tmp_path / "m.safetensors", info=info)
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    # The task comes from the registry entry, not from the name.
    assert loaded.torchspine_info["task"] == torchspine.model_info(name).task
    assert loaded.torchspine_info["label_names"] == ["a", "b"]
    own, got = model.state_dict(), loaded.state_dict()
    assert own.keys() == got.keys()
    assert all(torch.equal(own[k], got[k]) for k in own)
    for a, b in zip(_outputs(model, kind.split()[-1] if kind == "mobile backbone" else kind),
                    _outputs(loaded, kind.split()[-1] if kind == "mobile backbone" else kind)):
        _close(a, b)
    # Saved again from the loaded model: the same metadata (the settings survive a round trip).
    again = save_model(loaded, tmp_path / "again.safetensors", info=info)
    assert read_model_metadata(again)["overrides"] == read_model_metadata(path)["overrides"]


def test_run_folder_and_overrides_on_top(tmp_path: Path) -> None:
    name, overrides = KINDS["detector"]
    model = torchspine.create_model(name, **overrides)
    save_model(model, tmp_path / "model.safetensors")
    loaded = load_model(tmp_path, overrides={"score_thresh": 0.6})  # a run folder
    assert loaded.score_thresh == 0.6
    # A setting that changes a tensor's shape fails naming the tensors.
    with pytest.raises(ValueError, match="shape mismatches"):
        load_model(tmp_path, overrides={"num_classes": 9})


def test_converted_files_new_and_legacy(tmp_path: Path) -> None:
    from torchspine.interop.convert import ConversionResult, save_converted

    torch.manual_seed(2)
    model = torchspine.create_model("spinenet49s", **SMALL, padding="same", momentum=0.99, epsilon=1e-3).eval()
    result = ConversionResult(model.state_dict(), "spinenet49s", {**SMALL, "padding": "same", "momentum": 0.99,
                                                                  "epsilon": 1e-3}, "mg", "ckpt-1")
    save_converted(result, tmp_path / "new.safetensors")
    meta = read_model_metadata(tmp_path / "new.safetensors")
    prov = meta["info"]["provenance"]
    assert prov["converted_from"] == "ckpt-1" and prov["codebase"] == "Model Garden"
    # The pre-1 converter format (torchspine.converted/1) is still read.
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata=result.metadata())
    x = torch.rand(1, 3, 128, 128)
    ref = model(x)
    for f in ("new.safetensors", "old.safetensors"):
        for loaded in (load_model(tmp_path / f),):
            assert loaded.spec.padding == "same" and loaded.spec.norm.momentum == 0.99
            out = loaded(x)
            for k in ref:
                _close(ref[k], out[k])


def test_legacy_classifier_file_is_read(tmp_path: Path) -> None:
    from torchspine.engine.classification import load_classifier

    model = torchspine.create_model("spinenet49s_cls", **SMALL, num_classes=3).eval()
    # The metadata train_classifier of torchspine 0.1 wrote.
    meta = {"model": "spinenet49s_cls", "model_overrides": json.dumps(SMALL), "num_classes": "3",
            "classes": json.dumps(["cat", "dog", "fox"]), "image_size": "96"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "cls.safetensors"),
              metadata=meta)
    loaded, info = load_classifier(tmp_path / "cls.safetensors")
    assert info["classes"] == ["cat", "dog", "fox"] and info["image_size"] == 96 and info["num_classes"] == 3
    x = torch.rand(1, 3, 64, 64)
    _close(model(x), loaded(x))
    # A detector file is refused by load_classifier, naming what it is.
    det = torchspine.create_model("spinenet49s", **SMALL)
    save_model(det, tmp_path / "bb.safetensors")
    with pytest.raises(ValueError, match="backbone"):
        load_classifier(tmp_path / "bb.safetensors")


def test_unreadable_files_are_refused_clearly(tmp_path: Path) -> None:
    model = torchspine.create_model("spinenet49s", **SMALL)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "trainer.safetensors"), metadata={"model": "spinenet49s", "steps": "10",
                                                                       "AP": "0.1"})
    with pytest.raises(ValueError, match="without the model's settings"):
        load_model(tmp_path / "trainer.safetensors")
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="load_weights"):
        load_model(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="without model.safetensors"):
        load_model(tmp_path)


def test_create_model_weights_path(tmp_path: Path) -> None:
    name, overrides = KINDS["backbone"]
    model = torchspine.create_model(name, **overrides).eval()
    save_model(model, tmp_path / "bb.safetensors")
    again = torchspine.create_model(name, weights=str(tmp_path / "bb.safetensors"))
    x = torch.rand(1, 3, 128, 128)
    _close(model(x)["p3"], again(x)["p3"])
    with pytest.raises(ValueError, match="holds a saved spinenet49s, not spinenet49"):
        torchspine.create_model("spinenet49", weights=str(tmp_path / "bb.safetensors"))
    # A plain state dict goes into create_model(name, **overrides) strictly.
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "sd.safetensors"))
    plain = torchspine.create_model(name, weights=str(tmp_path / "sd.safetensors"), **overrides)
    _close(model(x)["p3"], plain(x)["p3"])
