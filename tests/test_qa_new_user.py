"""Bad input as a new user gives it, found by trying every command (see docs/bad_data.md,
"Tried as a new user"). Each test failed before its fix. Small files made here; no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import torchspine
from torchspine.cli import describe_error
from torchspine.data.importers import import_csv, import_yolo
from torchspine.weights import hub
from torchspine.weights.catalogue import PretrainedWeights
from helpers import run_cli, tarball

TINY = {"filter_size_scale": 0.25, "endpoints_num_filters": 16, "head_num_filters": 16}


@pytest.fixture(scope="module")
def saved_detector(tmp_path_factory) -> Path:
    """A run folder as `torchspine train --out` leaves it: model.safetensors with its info."""
    run = tmp_path_factory.mktemp("run")
    # two classes a (id 1) and b (id 2) as `torchspine train` records them: labels 1..2, num_classes 3
    model = torchspine.create_model("retinanet_spinenet49s", num_classes=3, image_size=64, **TINY)
    torchspine.save_model(model, run / "model.safetensors",
                          info={"task": "detector", "num_classes": 3, "label_names": ["a", "b"], "category_ids": [1, 2],
                                "image_size": 64})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run / "curves.png")  # like a real run folder
    return run


def _image(path: Path, w: int = 70, h: int = 50) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------- predict
def test_predict_run_folder_given_as_first_input_is_the_model(tmp_path, capsys, saved_detector):
    # Before: the run folder was taken as a folder of images: its curves.png was "predicted" by a
    # randomly initialised retinanet_spinenet49 with exit status 0.
    img = _image(tmp_path / "a.jpg")
    rc, text = run_cli(["predict", saved_detector, img, "--out", tmp_path / "out", "--no-optimize"], capsys)
    assert rc == 0, text
    assert "random initialisation" not in text and f"using {saved_detector} as the model" in text
    meta = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [Path(m["file_name"]).name for m in meta] == ["a.jpg"]  # curves.png is not an input
    # the model file works the same way
    rc, text = run_cli(["predict", saved_detector / "model.safetensors", img, "--out", tmp_path / "o2",
                        "--no-optimize"], capsys)
    assert rc == 0 and "random initialisation" not in text, text


def test_predict_run_folder_among_the_images_or_alone_is_an_error(tmp_path, capsys, saved_detector):
    img = _image(tmp_path / "a.jpg")
    rc, text = run_cli(["predict", "--weights", saved_detector, img, saved_detector, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and f"input {saved_detector} is a training run folder" in text, text
    rc, text = run_cli(["predict", saved_detector, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "no images given after the model" in text, text


@pytest.mark.parametrize("tile, overlap, words", [(0, 0.2, "tile size must be an integer >= 32"),
                                                  (-64, 0.2, "got -64"),
                                                  (64, 1.0, "overlap must be a fraction in [0, 1)")])
def test_predict_bad_tile_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch, tile, overlap, words):
    # Before: --tile 0 silently meant "no tiling" (`if args.tile:`).
    import torchspine.cli.predict as cli_predict

    def no_model(args):  # the check must come first: building the model is the slow part
        raise AssertionError("model built before --tile was checked")

    monkeypatch.setattr(cli_predict, "load_detector", no_model)
    img = _image(tmp_path / "a.jpg")
    rc, text = run_cli(["predict", img, "--tile", tile, "--overlap", overlap, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and f"--tile {tile}" in text and words in text, text


# ------------------------------------------------------------------------------------------ eval
def test_eval_warns_when_the_annotation_file_names_other_classes(tmp_path, capsys, saved_detector):
    # Before: a model of classes a, b scored against a file whose category 1 is "tree", silently.
    _image(tmp_path / "x.png", 64, 64)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 64}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                                                "area": 400, "iscrowd": 0}],
                               "categories": [{"id": 1, "name": "tree"}, {"id": 2, "name": "b"}]}))
    argv = ["eval", "--weights", saved_detector / "model.safetensors", "--ann", ann, "--images", tmp_path,
            "--json", tmp_path / "e.json"]
    rc, text = run_cli(argv, capsys)
    assert rc == 0 and "class names differ" in text and "id 1: 'a' vs 'tree'" in text and "id 2" not in text, text
    ann.write_text(ann.read_text().replace('"tree"', '"a"'))
    rc, text = run_cli(argv, capsys)
    assert rc == 0 and "class names differ" not in text, text


# ---------------------------------------------------------------------------------------- export
def test_export_takes_a_run_folder_as_positional_like_eval(tmp_path, capsys, saved_detector):
    # Before: "unrecognized arguments" for `torchspine export RUN --out m.onnx`.
    rc, text = run_cli(["export", saved_detector, "--out", tmp_path / "m.onnx", "--no-postprocess", "--no-check",
                        "--static"], capsys)
    assert rc == 0, text
    assert (tmp_path / "m.onnx").stat().st_size > 0
    rc, text = run_cli(["export", saved_detector, "--weights", tmp_path / "other.safetensors", "--out",
                        tmp_path / "m2.onnx"], capsys)
    assert rc == 2 and "two models given" in text, text


def test_export_int8_without_calibration_images_fails_before_exporting(tmp_path, capsys, saved_detector,
                                                                       monkeypatch):
    import torchspine.interop.onnx as onnx_mod

    def no_export(*a, **k):
        raise AssertionError("exported before the calibration folder was checked")

    monkeypatch.setattr(onnx_mod, "export_onnx", no_export)
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    rc, text = run_cli(["export", "--weights", saved_detector, "--out", tmp_path / "m.onnx", "--int8",
                        "--calibrate", folder, "--no-postprocess"], capsys)
    assert rc == 2 and f"--calibrate {folder}: no image files" in text, text


def test_pickle_with_code_is_refused_in_one_line_and_never_run(tmp_path, capsys):
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save(Evil(), evil)
    rc, text = run_cli(["export", "--model", "spinenet49s", "--weights", evil, "--out", tmp_path / "m.onnx",
                        "--set", "filter_size_scale=0.25", "--static", "--no-check"], capsys)
    assert rc == 2 and not marker.exists()
    line = [x for x in text.splitlines() if "error" in x]
    assert len(line) == 1 and "evil.pt" in line[0] and "weights_only=True" in line[0] and "GLOBAL" in line[0], text
    assert len(text.strip().splitlines()) == 1, text  # torch's paragraph is cut to the line that matters


# --------------------------------------------------------------------------------------- import
def test_yolo_coordinates_outside_0_1_are_refused_naming_the_line(tmp_path):
    # Before: cx=1.5 was written into the COCO file as a box outside the image, with "no problems".
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    _image(images / "a.jpg")
    (labels / "classes.txt").write_text("tree\n")
    for bad, words in (("0 1.5 0.5 0.2 0.2", "cx=1.5"), ("0 0.5 0.5 0.2 nan", "h=nan"),
                       ("0 0.5 -0.1 0.2 0.2", "cy=-0.1")):
        (labels / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{bad}\n")
        with pytest.raises(ValueError, match=r"a\.txt, line 2: .*" + words.replace(".", r"\.")):
            import_yolo(labels, images)


def test_csv_missing_image_names_the_csv_line(tmp_path):
    _image(tmp_path / "a.jpg")
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,xmin,ymin,xmax,ymax,label\na.jpg,1,2,30,40,tree\nb.jpg,1,2,30,40,tree\n")
    with pytest.raises(FileNotFoundError, match=r"boxes\.csv, line 3: image file not found: .*b\.jpg"):
        import_csv(csv, tmp_path)


# ----------------------------------------------------------------------------------------- train
def test_train_set_of_a_model_keyword_names_the_flag_not_the_recipe(tmp_path, capsys):
    # Before: "configs/demo_synth.json: unknown field 'filter_size_scale'" blamed the packaged recipe.
    rc, text = run_cli(["train", "--set", "filter_size_scale=0.25", "--output-dir", tmp_path / "r"], capsys)
    assert rc == 2 and "--set filter_size_scale" in text and "model_overrides" in text, text
    assert "demo_synth.json" not in text


# ----------------------------------------------------------------------------------- messages
def test_oserror_with_a_message_is_printed_without_errno():
    # utils.atomic_write raises OSError(code, "cannot write PATH: ..."): the CLI printed "[Errno 2] cannot ..."
    e = OSError(2, "cannot write /x/y.json: No such file or directory")
    assert describe_error(e) == "cannot write /x/y.json: No such file or directory"
    # a system OSError with a file name keeps its own form
    assert describe_error(FileNotFoundError(2, "No such file or directory", "a.json")) == \
        "a.json: no such file or directory"


# ------------------------------------------------------------------------------- weights cache
def _entry(url: str) -> PretrainedWeights:
    return PretrainedWeights(name="spinenet49s.qa", model="spinenet49s", tag="qa", url=url, codebase="tpu",
                             overrides={"filter_size_scale": 0.25}, task="backbone", input_size=128,
                             num_classes=None, labels=None, published={}, source="tests")


def _fake_convert(entry, checkpoint, out):
    return torchspine.save_model(torchspine.create_model(entry.model, **entry.overrides), out,
                                 info={"weights": entry.name})


def test_damaged_cached_model_is_converted_again(tmp_path, monkeypatch):
    # Before: `weights get` printed the damaged file as ready (exit 0) and every load failed.
    monkeypatch.setenv("TORCHSPINE_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHSPINE_OFFLINE", "1")
    entry = _entry("http://127.0.0.1:9/w/qa.tar.gz")
    hub.archive_path(entry).parent.mkdir(parents=True)
    hub.archive_path(entry).write_bytes(tarball({"c/model.ckpt-1.index": b"1"}))
    path = hub.model_path(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x07" * 100)  # damaged (a killed copy, a bad disk)
    assert hub.fetch(entry, convert=_fake_convert) == path
    assert torchspine.load_model(path).torchspine_info["weights"] == "spinenet49s.qa"


def test_a_bad_tarball_leaves_no_digest_that_would_refuse_the_good_one(tmp_path, monkeypatch):
    # Before: a wrong tarball put in the cache by hand had its sha256 recorded before it was
    # unpacked; after replacing it, every download of the right file was refused by that digest.
    monkeypatch.setenv("TORCHSPINE_HOME", str(tmp_path))
    monkeypatch.setenv("TORCHSPINE_OFFLINE", "1")
    entry = _entry("http://127.0.0.1:9/w/qa.tar.gz")
    archive = hub.archive_path(entry)
    archive.parent.mkdir(parents=True)
    archive.write_bytes(tarball({"../escape.index": b"1"}))
    with pytest.raises(ValueError, match="refusing member '../escape.index'"):
        hub.fetch(entry, convert=_fake_convert)
    assert hub._recorded(entry.archive) == {}
    archive.write_bytes(b"not a tar at all")
    with pytest.raises(ValueError, match="not a tar archive"):
        hub.fetch(entry, convert=_fake_convert)
    assert hub._recorded(entry.archive) == {}
    good = tarball({"c/model.ckpt-1.index": b"1"})
    archive.write_bytes(good)
    hub.fetch(entry, convert=_fake_convert)
    import hashlib

    assert hub._recorded(entry.archive)["sha256"] == hashlib.sha256(good).hexdigest()


def test_dataloader_worker_error_is_one_line():
    # Before: with workers, `classify train` printed torch's "Caught ValueError in DataLoader worker
    # process 0. Original Traceback (most recent call last): ..." (the whole worker traceback).
    from torch._utils import ExceptionWrapper

    try:
        raise ValueError("image a/trunc.jpg: cannot be decoded (image file is truncated)")
    except ValueError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ValueError) as info:
        wrapped.reraise()
    assert describe_error(info.value) == "image a/trunc.jpg: cannot be decoded (image file is truncated)"


def test_classify_with_one_class_is_refused(tmp_path, capsys):
    # Before: trained "1 classes" (a cross-entropy that is always 0) and reported top-1 100%.
    for split in ("train", "val"):
        (tmp_path / "data" / split / "only").mkdir(parents=True)
        for i in range(2):
            _image(tmp_path / "data" / split / "only" / f"{i}.png", 32, 32)
    rc, text = run_cli(["classify", "train", "--data", tmp_path / "data", "--image-size", 32, "--batch-size", 2,
                        "--epochs", 1, "--out", tmp_path / "run", "--set", "filter_size_scale=0.25"], capsys)
    assert rc == 2 and "1 class folder(s) ['only']" in text and "at least 2" in text, text


def test_classifier_weights_initialise_a_detectors_backbone(tmp_path):
    # Before: `train --weights CLASSIFIER` switched the run's model to the classifier and stopped
    # ("is a classifier, not a detector"): ImageNet-style pretraining was impossible.
    from torchspine.engine.config import load_config
    from torchspine.engine.finetune import finetune_config, init_from_pretrained

    torch.manual_seed(0)
    clf = torchspine.create_model("spinenet49s_cls", num_classes=3, filter_size_scale=0.25)
    path = torchspine.save_model(clf, tmp_path / "clf.safetensors",
                                 info={"task": "classification", "num_classes": 3, "label_names": ["a", "b", "c"]})
    cfg = finetune_config(load_config("demo_synth", weights=str(path)))
    assert cfg.model == "retinanet_spinenet49s"  # the detector stays the configured one
    assert cfg.model_overrides["filter_size_scale"] == 0.25 and "num_classes" not in cfg.model_overrides
    det = torchspine.create_model(cfg.model, num_classes=4, **cfg.model_overrides)
    report = init_from_pretrained(det, path)
    ours, theirs = det.state_dict(), clf.state_dict()
    stem = "backbone.stem.conv.conv.weight"
    assert torch.equal(ours[stem], theirs[stem])  # the backbone is the classifier's
    # the recipe's endpoints are 64 wide, the classifier's 256: those start fresh, as does the head
    assert ours["backbone.endpoints.p3.conv.weight"].shape[0] == 64
    assert "backbone.endpoints.p3.conv.weight" in report.fresh
    assert not any(k.startswith("head.") for k in theirs) and report.copied == sum(
        1 for k in theirs if k in ours and k not in report.fresh)


@pytest.mark.parametrize("model, overrides, words", [
    ("nope_model", "{}", "unknown model 'nope_model'"),
    ("spinenet49", '{"bogus": 1}', "unknown spec field 'bogus'"),
    ("spinenet49", "[1]", "'overrides' is not a JSON object"),
])
def test_load_model_names_the_file_whose_metadata_does_not_build(tmp_path, model, overrides, words):
    # Before: "unknown model 'nope_model'" without the file; "[1]" ended in a TypeError.
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(3)}, str(path),
              metadata={"format": "torchspine.model/1", "model": model, "overrides": overrides, "info": "{}"})
    with pytest.raises(ValueError) as info:
        torchspine.load_model(path)
    assert str(path) in str(info.value) and words in str(info.value)


def test_predict_checks_inputs_and_ann_before_building_the_model(tmp_path, capsys, monkeypatch):
    import torchspine.cli.predict as cli_predict

    def no_model(args):
        raise AssertionError("model built before the inputs were checked")

    monkeypatch.setattr(cli_predict, "load_detector", no_model)
    img = _image(tmp_path / "a.jpg")
    rc, text = run_cli(["predict", img, "--ann", tmp_path / "nothere.json", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "nothere.json" in text and "not found" in text, text
    (tmp_path / "empty").mkdir()
    rc, text = run_cli(["predict", tmp_path / "empty", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "no images found" in text, text
