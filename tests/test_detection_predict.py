"""``torchspine predict`` and the inference helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from torchspine import create_model
from torchspine.cli import main
from torchspine.data.images import read_image
from torchspine.engine.evaluate import to_coco_results
from torchspine.engine.predict import predict
from torchspine.models.optimize import prepare_for_inference
from torchspine.models.saved import load_weights


TINY = dict(filter_size_scale=0.25, endpoints_num_filters=32, head_num_filters=32, image_size=128)
TINY_ARGS = ["--set", "filter_size_scale=0.25", "--set", "endpoints_num_filters=32", "--set", "head_num_filters=32",
             "--image-size", "128"]


@pytest.fixture()
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s", **TINY)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "epoch": 1, "optimizer": {"lr": 0.1}}, ckpt)
    return model, path, ckpt


def test_predict_command_draws_and_writes_coco_json(tmp_path, tiny_weights, capsys):
    _, weights, _ = tiny_weights
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 150, 3)) * 255).astype(np.uint8)).save(tmp_path / "rgb.jpg")
    Image.fromarray((rng.random((70, 50)) * 255).astype(np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    # Random init gives every class p = 0.01 (official prior), so a 0.009 threshold keeps detections.
    rc = main(["predict", "--model", "retinanet_spinenet49s", "--weights", str(weights), *TINY_ARGS,
               "--score-thresh", "0.009", "--out", str(out),
               str(tmp_path / "rgb.jpg"), str(tmp_path / "corrupt.jpg"), str(tmp_path / "gray.png"),
               str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert rc == 1  # some inputs were skipped
    assert "corrupt.jpg" in captured.err and "missing.png" in captured.err
    assert (out / "rgb.png").is_file() and (out / "gray.png").is_file()
    drawn = Image.open(out / "gray.png")
    assert drawn.size == (50, 70) and drawn.mode == "RGB"
    results = json.loads((out / "detections.json").read_text())
    images = json.loads((out / "images.json").read_text())
    assert {im["file_name"].split("/")[-1] for im in images} == {"rgb.jpg", "gray.png"}
    ids = {im["id"] for im in images}
    assert results and {r["image_id"] for r in results} == ids
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    for r in results:
        # COCO result fields, plus the class name (COCO's, for 91 classes) and the input file
        assert set(r) == {"image_id", "category_id", "bbox", "score", "category_name", "file_name"}
        from torchvision.models._meta import _COCO_CATEGORIES

        assert r["category_name"] == _COCO_CATEGORIES[r["category_id"]]
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
        assert 1 <= r["category_id"] <= 90 and r["score"] >= 0.009


def test_folder_input_and_checkpoint_weights(tmp_path, tiny_weights):
    _, _, ckpt = tiny_weights
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 60, 4), dtype=np.uint8), mode="RGBA").save(folder / "a.png")
    rc = main(["predict", "--model", "retinanet_spinenet49s", "--weights", str(ckpt), *TINY_ARGS,
               "--out", str(tmp_path / "o"), str(folder)])
    assert rc == 0
    assert (tmp_path / "o" / "a.png").is_file()


def test_load_weights_rejects_pickled_code_and_mismatches(tmp_path, tiny_weights):
    model, weights, ckpt = tiny_weights
    other = create_model("retinanet_spinenet49s", **TINY)
    load_weights(other, ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    evil = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "cfg": torch.optim.SGD}, evil)  # a class: not weights-only
    with pytest.raises(ValueError, match="evil.pt"):
        load_weights(other, evil)
    wrong = create_model("retinanet_spinenet49s", **TINY, num_classes=5)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(wrong, weights)
    with pytest.raises(FileNotFoundError):
        load_weights(other, tmp_path / "nope.safetensors")


def test_read_image_names_bad_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(bad)


def test_prepared_model_gives_the_same_detections(tiny_weights):
    model, _, _ = tiny_weights
    model.score_thresh = 0.0
    model.eval()
    image = torch.rand(3, 100, 120)
    ref = predict(model, [image])[0]
    fast = predict(prepare_for_inference(model), [image])[0]
    torch.testing.assert_close(fast["scores"][:20], ref["scores"][:20], atol=1e-4, rtol=0)
    assert to_coco_results(ref, 7)[0]["image_id"] == 7
