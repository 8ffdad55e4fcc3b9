"""A run folder is self-contained: predict / eval / export take it (or its model file) and use
its model, settings, image size and class names from any working folder; --resume takes the
run's config and names an argument that disagrees with it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchspine.cli import main
from torchspine.data.synth import SynthConfig, generate_synth
from torchspine.engine.runs import load_trained
from torchspine.models.saved import read_model_metadata

TINY = {"filter_size_scale": 0.125, "endpoints_num_filters": 16, "head_num_filters": 16, "head_num_convs": 1,
        "momentum": 0.9}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run trained from a working folder with RELATIVE data paths."""
    root = tmp_path_factory.mktemp("proj")
    generate_synth(root / "data", SynthConfig(num_train=8, num_val=2, image_size=96, seed=3))
    old = os.getcwd()
    os.chdir(root)
    try:
        rc = main(["train", "--model", "retinanet_spinenet49s", "--set", f"model_overrides={json.dumps(TINY)}",
                   "--train-ann", "data/annotations/train.json", "--train-images", "data/train",
                   "--val-ann", "data/annotations/val.json", "--val-images", "data/val", "--image-size", "96",
                   "--batch-size", "4", "--max-steps", "2", "--device", "cpu", "--no-progress", "--out", "runs/a",
                   "--set", "tensorboard=false", "--set", "checkpoint_interval=0", "--set", "warmup_steps=0"])
    finally:
        os.chdir(old)
    assert rc == 0
    return root / "runs" / "a"


def test_model_file_carries_classes_names_and_image_size(run):
    meta = read_model_metadata(run / "model.safetensors")
    data = json.loads((run.parent.parent / "data" / "annotations" / "train.json").read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    info = meta["info"]
    # labels 1..K in ascending category id order; label L is category_ids[L - 1], named label_names[L - 1]
    assert info["image_size"] == 96 and info["num_classes"] == len(cats) + 1
    assert info["category_ids"] == sorted(cats) and info["label_names"] == [cats[i] for i in sorted(cats)]
    t = load_trained(run)
    assert [t.category_id(label) for label in range(1, len(cats) + 1)] == sorted(cats)
    assert t.label_names[1:] == [cats[i] for i in sorted(cats)]
    cfg = json.loads((run / "config.json").read_text())
    assert Path(cfg["train_ann"]).is_absolute() and Path(cfg["val_images"]).is_absolute()


def test_predict_export_eval_from_another_folder(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = run.parent.parent / "data" / "val"
    assert main(["predict", str(images), "--weights", str(run), "--out", "pred", "--score-thresh", "0.0"]) == 0
    dets = json.loads(Path("pred/detections.json").read_text())
    val_ann = run.parent.parent / "data" / "annotations" / "val.json"
    names = {c["id"]: c["name"] for c in json.loads(val_ann.read_text())["categories"]}
    assert dets and all(d["category_name"] == names[d["category_id"]] for d in dets)
    # image ids from the annotation file, matched by file name
    val = json.loads((run.parent.parent / "data" / "annotations" / "val.json").read_text())
    assert main(["predict", str(images), "--weights", str(run / "model.safetensors"), "--out", "pred2",
                 "--ann", str(run.parent.parent / "data" / "annotations" / "val.json"), "--image-size", "128"]) == 0
    err = capsys.readouterr().err
    assert "--image-size 128 overrides the size the model was trained at (96)" in err
    got = {Path(m["file_name"]).name: m["id"] for m in json.loads(Path("pred2/images.json").read_text())}
    assert got == {im["file_name"]: im["id"] for im in val["images"]}
    # tiles of 64 px with 50 % overlap over the 96 px images: 4 tiles each, boxes back in image pixels
    assert main(["predict", str(images), "--weights", str(run), "--out", "pred3", "--tile", "64", "--overlap", "0.5",
                 "--merge", "weighted", "--score-thresh", "0.0"]) == 0
    assert "tiles of 64" in capsys.readouterr().out
    for d in json.loads(Path("pred3/detections.json").read_text()):
        x, y, w, h = d["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96.01 and y + h <= 96.01
    assert main(["eval", str(run), "--json", "eval.json"]) == 0
    out = capsys.readouterr().out
    assert "APl" in out and out.count("type ") == 1
    assert main(["export", "--weights", str(run), "--out", "m.onnx", "--no-check"]) == 0
    assert "[3, 96, 96]" in capsys.readouterr().out  # the trained size, not the 256 default


def test_resume_takes_the_run_config_and_names_a_differing_argument(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--resume: --batch-size 8 \(command line\) differs from the run's "
                                         r"batch_size 4"):
        from torchspine.cli import build_parser
        from torchspine.cli.train import run as train_run

        train_run(build_parser("train").parse_args(["train", "--out", str(run), "--resume", "--batch-size", "8"]))
    # a longer run is not a resume (the LR schedule spans max_steps): the error says how to train longer
    with pytest.raises(ValueError, match=r"--max-steps 999 .*to train longer, start a new run from this one's "
                                         r"weights: --weights .*model.safetensors --out NEW_FOLDER"):
        train_run(build_parser("train").parse_args(["train", "--out", str(run), "--resume", "--max-steps", "999"]))
    # nothing repeated: everything from the run (finished: no further steps, same model)
    before = load_file(run / "model.safetensors")
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "--batch-size", "4"]) == 0
    after = load_file(run / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_legacy_model_file_with_relative_paths(run, tmp_path, monkeypatch):
    """A run written before models carried their settings: tensors only, config.json with relative paths."""
    legacy = tmp_path / "proj" / "runs" / "old"
    legacy.mkdir(parents=True)
    cfg = json.loads((run / "config.json").read_text())
    data = run.parent.parent / "data"
    (tmp_path / "proj" / "data").symlink_to(data)
    cfg.update(train_ann="data/annotations/train.json", train_images="data/train",
               val_ann="data/annotations/val.json", val_images="data/val")
    (legacy / "config.json").write_text(json.dumps(cfg))
    save_file(load_file(run / "model.safetensors"), legacy / "model.safetensors", metadata={"model": cfg["model"]})
    monkeypatch.chdir(tmp_path / "proj" / "runs")  # neither the project folder nor the run folder
    t = load_trained(legacy)
    assert t.name == "retinanet_spinenet49s" and t.image_size == 96
    # such runs trained on the file's category ids as labels (num_classes = largest id + 1)
    cats = {c["id"]: c["name"] for c in json.loads((data / "annotations" / "train.json").read_text())["categories"]}
    assert t.num_classes == max(cats) + 1
    assert all(t.label_names[i] == name and t.category_id(i) == i for i, name in cats.items())


def _gt(boxes_by_cat):
    from pycocotools.coco import COCO

    anns = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (c, b) in enumerate(boxes_by_cat)]
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 200, "height": 200, "file_name": "a.png"}], "annotations": anns,
                    "categories": [{"id": 1, "name": "tree"}, {"id": 5, "name": "car"}]}
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_eval_table_names_each_class_and_dashes_sizes_without_objects():
    from torchspine.engine.evaluate import coco_metrics, format_table

    # two small objects (area < 32^2): COCO has no medium or large ground truth -> "-" (pycocotools' -1)
    gt = _gt([(1, [10, 10, 20, 20]), (5, [100, 100, 20, 20])])
    m = coco_metrics(gt, [])  # no detections at all
    assert m["AP"] == 0.0 and m["APm"] == -1.0 and m["APl"] == -1.0
    # a perfect detection of the tree only: AP(tree) = 1, AP(car) = 0, mean 0.5
    m = coco_metrics(gt, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}])
    assert m["per_class_AP"] == pytest.approx({"1": 1.0, "5": 0.0}) and m["AP"] == pytest.approx(0.5)
    table = format_table(m, {"1": "tree", "5": "car"})
    lines = table.splitlines()
    assert lines[1].split()[-2:] == ["-", "-"]  # APm, APl
    assert lines[-2].split() == ["tree", "1", "100.0"] and lines[-1].split() == ["car", "5", "0.0"]


def test_label_text_is_readable_on_every_box_colour():
    from torchspine.analysis.visualize import PALETTE, _luminance, text_color

    for c in PALETTE:
        fg = text_color(c)
        hi, lo = sorted((_luminance(c), _luminance(fg)), reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, c  # WCAG 2 AA contrast for normal text
