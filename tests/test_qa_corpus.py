"""A corpus of broken annotation files, images and model files, run through the public API and
the CLI by someone who did not write the code (see docs/bad_data.md). Each case failed before
its fix (a traceback from deep inside pycocotools / numpy / torch, a hang, or a silently wrong
result); every file is made here, nothing is downloaded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchspine.data.checks import check_coco
from torchspine.data.coco import CocoDetection, load_coco
from torchspine.engine.evaluate import coco_metrics
from helpers import run_cli


def _good() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0,
                         "segmentation": [[1, 2, 11, 2, 11, 12, 1, 12]]},
                        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0,
                         "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]]}],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }


@pytest.fixture()
def images(tmp_path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(d / n)
    return d


def _set(path: list, value):
    def mutate(d):
        obj = d
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return mutate


# (mutation, expected problem kind, words the message must hold). Before: each loaded without a
# word and then failed later with a bare KeyError / TypeError / pycocotools Exception, or trained
# on silently (a duplicate category id: the second name won).
BROKEN = [
    (_set(["categories", 0, "id"], "1"), "bad_category_id", "id '1' is not an integer"),
    (lambda d: d["categories"].append({"id": 1, "name": "z"}), "duplicate_category_id", "names 'x' and 'z'"),
    (_set(["images", 0, "id"], "abc"), "bad_image_id", "id 'abc' is not an integer"),
    (_set(["images", 0, "id"], [1]), "bad_image_id", "id [1] is not an integer"),
    (_set(["images", 0, "id"], 1.5), "bad_image_id", "id 1.5 is not an integer"),
    (lambda d: [a.pop("id") for a in d["annotations"]], "bad_annotation_id", "annotations[0] (image_id 1): id None"),
    (_set(["annotations", 0, "area"], "big"), "bad_area", "area 'big'"),
    (_set(["annotations", 0, "iscrowd"], "no"), "bad_iscrowd", "iscrowd 'no' is not 0 or 1"),
    (_set(["annotations", 0, "category_id"], True), "unknown_category", "category_id True"),
    (_set(["images", 0, "file_name"], 5), "bad_file_name", "file_name 5"),
    (_set(["annotations", 0, "segmentation"], [[1, 2, "x", 4, 5, 6]]), "bad_segmentation", "not a list of finite"),
    (_set(["annotations", 0, "segmentation"], [1, 2, 11, 2, 11, 12]), "bad_segmentation", "not a list of finite"),
    (_set(["annotations", 0, "segmentation"], "abc"), "bad_segmentation", "got str"),
    (_set(["annotations", 0, "segmentation"], {"counts": [0, 100], "size": [10, 10]}), "bad_segmentation",
     "RLE 'size' [10, 10] is not the image's [height, width] [30, 40]"),
    (_set(["annotations", 0, "segmentation"], {"counts": [0, 100], "size": [30, 40]}), "bad_segmentation",
     "cover 100 pixels, not 30x40 = 1200"),
    (_set(["annotations", 0, "segmentation"], {"counts": "!!!!", "size": [30, 40]}), "bad_segmentation",
     "cannot be decoded"),
]


@pytest.mark.parametrize("mutate, kind, words", BROKEN)
def test_broken_record_is_refused_naming_file_record_and_value(tmp_path, images, mutate, kind, words):
    data = _good()
    mutate(data)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    assert kind in check_coco(data, image_dir=images).counts()
    with pytest.raises(ValueError) as e:
        CocoDetection(ann, images, with_masks=True)
    assert str(ann) in str(e.value) and words in str(e.value) and kind in str(e.value)


@pytest.mark.parametrize("coords", [[1, 2, float("nan"), 2, 11, 12], [1, 2, 1e12, 2, 11, 12]])
def test_polygon_with_nan_or_huge_coordinates_is_refused_not_rasterised(tmp_path, images, coords):
    # Before: pycocotools' rleFrPoly allocated memory in proportion to the edge lengths (NaN
    # becomes INT_MIN): the process was killed for memory. (Not run against the old code.)
    data = _good()
    data["annotations"][0]["segmentation"] = [coords]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))  # json writes NaN, as Python's json.dump does by default
    with pytest.raises(ValueError, match="annotation id 10: segmentation: polygon 0"):
        CocoDetection(ann, images, with_masks=True)
    CocoDetection(ann, images, with_masks=False)  # box-only training never rasterises it


@pytest.mark.parametrize("seg, kept", [
    ([[1, 2, 3, 4]], None), ([[1, 2]], None), ([[]], None), ([[1, 2, 3, 4, 5, 6, 7]], None),
    ([[1, 2, 3, 4], [1, 2, 11, 2, 11, 12, 1, 12]], [[1, 2, 11, 2, 11, 12, 1, 12]]),
])
def test_polygons_of_fewer_than_three_points_are_left_out_of_the_mask(tmp_path, images, caplog, seg, kept):
    # Before: pycocotools read a 4-number polygon as a box and failed ("Argument 'bb' has
    # incorrect type"), and fewer numbers raised a bare "Exception: input type is not supported."
    # Now as detectron2's load_coco_json: short polygons dropped; no polygon left: the instance.
    data = _good()
    data["annotations"][0]["segmentation"] = seg
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, images, with_masks=True)
    image, target = ds[0]
    if kept is None:
        assert 10 not in ds.coco.anns and len(target["boxes"]) == 0
        assert "annotation id 10: segmentation: no polygon of 3 or more x, y points" in caplog.text
    else:
        assert ds.coco.anns[10]["segmentation"] == kept
        assert int(target["masks"][0].sum()) == 100  # the 10 x 10 square x 1..11, y 2..12
        assert "polygon(s) [0] of fewer than 3 x, y points" in caplog.text


def test_bad_category_cannot_be_skipped(tmp_path, images):
    data = _good()
    data["categories"].append({"id": 1, "name": "z"})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bad categories cannot be skipped"):
        load_coco(ann, image_dir=images, skip_bad=True)


def test_non_integer_ids_skipped_with_the_flag(tmp_path, images):
    # Before: an image id that is a list crashed the check itself ("unhashable type: 'list'").
    data = _good()
    data["images"][0]["id"] = [1]
    data["annotations"][0]["image_id"] = [1]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    coco = load_coco(ann, image_dir=images, skip_bad=True)
    assert sorted(coco.imgs) == [2] and sorted(coco.anns) == [11]


def test_missing_area_iscrowd_and_category_name_are_filled_for_evaluation(tmp_path):
    # Before: pycocotools' COCOeval raised KeyError 'area' / 'iscrowd' in evaluate(), and the
    # evaluation summary KeyError 'name'. A detection equal to the only ground-truth box has
    # IoU 1 at every threshold: AP 1.0 by COCO's definition.
    data = _good()
    for a in data["annotations"]:
        del a["area"], a["iscrowd"]
    del data["categories"][0]["name"]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    coco = load_coco(ann)
    assert coco.anns[10]["area"] == 100.0 and coco.anns[10]["iscrowd"] == 0  # w * h = 10 * 10
    assert coco.cats[1]["name"] == "1"
    dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "score": 0.9},
            {"image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "score": 0.9}]
    assert coco_metrics(coco, dets)["AP"] == pytest.approx(1.0)


def test_image_smaller_than_the_file_says_is_skipped_by_name_not_a_numpy_error(tmp_path, images, caplog):
    # Before: with masks, "could not broadcast input array from shape (15,20) into shape (30,40)";
    # without, the boxes (made for a 20x15 image) were silently placed on the 40x30 one.
    data = _good()
    data["images"][0].update(width=20, height=15)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(ann, images, with_masks=True)
    with caplog.at_level(logging.WARNING):
        assert ds[0] is None and ds[1] is not None
    assert "a.png is 40x30 but the annotation file says 20x15" in caplog.text
    assert ds.corrupt_image_ids == {1}


def _exif_jpeg(path: Path, orientation: int) -> None:
    """A 60x40 (w x h) stored image, black with a white 10x6 block at stored x 5..15, y 2..8."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[2:8, 5:15] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, quality=100, exif=exif.tobytes())


def test_exif_rotated_image_follows_the_grid_its_boxes_were_drawn_on(tmp_path):
    # Orientation 6 ("rotate 90 CW to display"): displayed size 40x60; stored pixel (x, y)
    # is shown at (H - 1 - y, x) (EXIF 2.3, Orientation tag). The white block at stored
    # x 5..15, y 2..8 is shown at x 32..38, y 5..15.
    d = tmp_path / "img"
    d.mkdir()
    _exif_jpeg(d / "r.jpg", 6)
    cats = [{"id": 1, "name": "block"}]
    displayed = {"images": [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 60}], "categories": cats,
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [32, 5, 6, 10]}]}
    stored = {"images": [{"id": 1, "file_name": "r.jpg", "width": 60, "height": 40}], "categories": cats,
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 2, 10, 6]}]}
    for data, shape in ((displayed, (3, 60, 40)), (stored, (3, 40, 60))):
        ann = tmp_path / "ann.json"
        ann.write_text(json.dumps(data))
        image, target = CocoDetection(ann, d)[0]
        assert tuple(image.shape) == shape
        x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
        inside = image[:, y0:y1, x0:x1]
        assert inside.mean() > 0.9 and image.mean() < 0.1  # the box holds the white block
    # Before: the stored-grid file gave a 40x60 image whose box [5, 2, 10, 6] covered black
    # pixels (and `data check` only noted the mismatch); now data check names the repair.
    report = check_coco(stored, image_dir=d, decode=True)
    assert report.problems == [] and report.note_counts() == {"exif_not_applied": 1}


def test_data_check_names_bad_segmentation_and_size_mismatch(tmp_path, images, capsys):
    data = _good()
    data["annotations"][0]["segmentation"] = [[1, 2, float("nan"), 4, 5, 6]]
    data["images"][1].update(width=80, height=60)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    rc, text = run_cli(["data", "check", ann, "--images", images], capsys)
    assert rc == 1, text
    assert "annotation id 10: segmentation: polygon 0 is not a list of finite numbers" in text
    assert "b.png decodes to 40x30 but the file says 80x60" in text


# ------------------------------------------------------------------------------------ importers
def _png(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("fmt, name", [("yolo", "a.txt"), ("yolo", "classes.txt"), ("csv", "boxes.csv")])
def test_import_of_a_file_that_is_not_utf8_names_it(tmp_path, capsys, fmt, name):
    # Before: "error: 'utf-8' codec can't decode byte 0xe9 in position 5: ..." without the file.
    _png(tmp_path / "img" / "a.png")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "classes.txt").write_text("cat\n")
    (tmp_path / "lab" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "lab" / "boxes.csv").write_text("filename,xmin,ymin,xmax,ymax,class\na.png,1,2,10,12,cat\n")
    bad = tmp_path / "lab" / name
    bad.write_bytes(bad.read_bytes().replace(b"cat", b"caf\xe9").replace(b"0.5 0.5", b"0.5 \xe9"))
    ann = tmp_path / "lab" / ("boxes.csv" if fmt == "csv" else "")
    rc, text = run_cli(["data", "import", "--format", fmt, "--ann", ann, "--images", tmp_path / "img",
                        "--out", tmp_path / "out.json"], capsys)
    assert rc == 2 and f"{bad}: not UTF-8 text" in text, text
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("row, words", [
    ("a.png,10,12,1,2,cat", "line 2: corners (10, 12) - (1, 2) have the max corner before the min corner"),
    ("a.png,nan,2,10,12,cat", "line 2: corners (nan, 2) - (10, 12) are not finite numbers"),
])
def test_csv_box_that_cannot_be_converted_names_its_line(tmp_path, capsys, row, words):
    # Before: "annotation id 1: bbox [10.0, 12.0, -9.0, -10.0] has a negative size" (an id the
    # CSV does not have); a NaN corner: "bbox [nan, ...] is not 4 finite numbers", no line.
    _png(tmp_path / "img" / "a.png")
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("filename,xmin,ymin,xmax,ymax,class\n" + row + "\n")
    rc, text = run_cli(["data", "import", "--format", "csv", "--ann", csv_file, "--images", tmp_path / "img",
                        "--out", tmp_path / "out.json"], capsys)
    assert rc == 2 and f"CSV file {csv_file}, {words}" in text, text


def test_voc_inverted_box_names_the_xml_object_and_its_values(tmp_path, capsys):
    _png(tmp_path / "img" / "a.png")
    (tmp_path / "voc").mkdir()
    xml = tmp_path / "voc" / "a.xml"
    xml.write_text("<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>"
                   "<object><name>cat</name><bndbox><xmin>20</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax>"
                   "</bndbox></object></annotation>")
    rc, text = run_cli(["data", "import", "--format", "voc", "--ann", tmp_path / "voc", "--images", tmp_path / "img",
                        "--out", tmp_path / "out.json"], capsys)
    assert rc == 2 and f"VOC file {xml}, object 1 (bndbox xmin 20 ymin 2 xmax 10 ymax 12" in text, text


def test_yolo_import_of_an_exif_rotated_photo_uses_the_image_as_shown(tmp_path):
    # YOLO labels are fractions of the image as shown (Ultralytics sizes images with exif_size in
    # ultralytics/data/utils.py). Stored 60x40 with orientation 6 is shown 40x60, the white block at
    # x 32..38, y 5..15 (see _exif_jpeg): label cx = 35/40, cy = 10/60, w = 6/40, h = 10/60.
    # Before: the stored 60x40 was used: width 60, height 40, the box at x 47..56, y 3..10 (black).
    from torchspine.data.importers import import_yolo

    (tmp_path / "img").mkdir()
    _exif_jpeg(tmp_path / "img" / "r.jpg", 6)
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "r.txt").write_text(f"0 {35 / 40} {10 / 60} {6 / 40} {10 / 60}\n")
    res = import_yolo(tmp_path / "lab", tmp_path / "img", classes=["block"])
    assert res.ok, res.report.summary()
    assert (res.coco["images"][0]["width"], res.coco["images"][0]["height"]) == (40, 60)
    assert res.coco["annotations"][0]["bbox"] == pytest.approx([32, 5, 6, 10], abs=1e-3)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(res.coco))
    image, target = CocoDetection(ann, tmp_path / "img")[0]
    x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
    assert image[:, y0:y1, x0:x1].mean() > 0.9


# ---------------------------------------------------------------------------------- model files
TINY = {"filter_size_scale": 0.25, "endpoints_num_filters": 16, "head_num_filters": 16}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A tiny saved detector: (file, its tensors, its metadata)."""
    import torchspine
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = tmp_path_factory.mktemp("model") / "good.safetensors"
    model = torchspine.create_model("retinanet_spinenet49s", num_classes=2, image_size=64, **TINY)
    torchspine.save_model(model, path, info={"task": "detector", "num_classes": 2, "label_names": ["a"],
                                             "category_ids": [1], "image_size": 64})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return path, load_file(str(path)), meta


def _variant(tmp_path: Path, saved, *, tensors=None, **meta) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "variant.safetensors"
    save_file(tensors if tensors is not None else saved[1], str(path), metadata={**saved[2], **meta})
    return path


def test_half_precision_file_loads_into_a_float32_model_that_runs(tmp_path, saved):
    # Before: load_model kept the file's float16 tensors (load_state_dict(assign=True)) and the
    # first forward failed: "Input type (torch.FloatTensor) and weight type (torch.HalfTensor)".
    import torchspine

    half = {k: v.half() if v.is_floating_point() else v for k, v in saved[1].items()}
    model = torchspine.load_model(_variant(tmp_path, saved, tensors=half))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert set(out[0]) >= {"boxes", "scores", "labels"}


@pytest.mark.parametrize("how, words", [
    (lambda v: v.to(torch.int32), "tensors are not floating point where the model's are"),
    (lambda v: torch.full_like(v, float("nan")), "tensors hold NaN or infinite values"),
])
def test_integer_or_nan_weights_are_refused_by_load_model_and_predict(tmp_path, saved, capsys, how, words):
    # Before: int32 weights: a RuntimeError from load_state_dict in load_model, and `predict`
    # truncated them to integers silently; NaN weights: predict wrote 0 detections, exit 0.
    import torchspine

    bad = {k: how(v) if v.is_floating_point() else v for k, v in saved[1].items()}
    path = _variant(tmp_path, saved, tensors=bad)
    with pytest.raises(ValueError, match=words):
        torchspine.load_model(path)
    img = _png(tmp_path / "i.png", 70, 50)
    rc, text = run_cli(["predict", path, img, "--out", tmp_path / "out", "--no-optimize"], capsys)
    assert rc == 2 and words in text and str(path) in text, text
    assert not (tmp_path / "out" / "detections.json").exists()


@pytest.mark.parametrize("meta, words", [
    ({"info": "[1, 2]"}, "damaged metadata: 'info' is not a JSON object"),
    ({"info": json.dumps({"num_classes": "two"})}, "info field 'num_classes' is 'two'"),
    ({"info": json.dumps({"image_size": "big"})}, "info field 'image_size' is 'big'"),
    ({"info": json.dumps({"category_ids": ["x", "y"]})}, "info field 'category_ids' is ['x', 'y']"),
    ({"info": "{bad"}, "torchspine metadata is damaged"),
])
def test_damaged_info_is_named_by_load_model_and_predict(tmp_path, saved, capsys, meta, words):
    # Before: load_model: TypeError "'list' object is not a mapping"; predict: "AttributeError:
    # 'list' object has no attribute 'get'", "invalid literal for int() with base 10: 'two'"
    # (no file named), or the bad field ignored (exit 0); bad JSON was taken for bare weights of
    # retinanet_spinenet49 and reported as a shape mismatch.
    import torchspine

    path = _variant(tmp_path, saved, **meta)
    with pytest.raises(ValueError) as e:
        torchspine.load_model(path)
    assert str(path) in str(e.value) and words in str(e.value)
    rc, text = run_cli(["predict", path, _png(tmp_path / "i.png"), "--out", tmp_path / "out", "--no-optimize"], capsys)
    assert rc == 2 and words in text and str(path) in text, text


def test_overrides_of_the_wrong_type_are_named_by_predict(tmp_path, saved, capsys):
    # Before: "error: TypeError: '<' not supported between instances of 'str' and 'int' (run
    # with -v ...)", no file named (predict rebuilds the model with its own overrides).
    over = {**json.loads(saved[2]["overrides"]), "num_classes": "2"}
    path = _variant(tmp_path, saved, overrides=json.dumps(over))
    rc, text = run_cli(["predict", path, _png(tmp_path / "i.png"), "--out", tmp_path / "out", "--no-optimize"], capsys)
    assert rc == 2 and f"{path}: its metadata (model 'retinanet_spinenet49s'" in text and "TypeError" not in text, text


# ------------------------------------------------------------------------------ train arguments
@pytest.mark.parametrize("argv, words", [
    (["--lr", "nan"], "value given for 'lr' (over recipe demo_synth.json): field 'lr' must be a non-negative number"),
    (["--set", "model_overrides=5"], "value given for 'model_overrides' (over recipe demo_synth.json): field "
                                     "'model_overrides' must be an object, got 5"),
    (["--set", "model_overrides.head_num_filters=16"],
     "a model keyword goes in --set 'model_overrides={\"head_num_filters\": ...}'"),
])
def test_train_names_the_command_line_value_not_the_recipe(capsys, argv, words):
    # Before: "demo_synth.json: field 'model_overrides' must be an object, got 5" (the packaged
    # recipe blamed for a command-line value), and for a dotted key the hint repeated the prefix:
    # --set 'model_overrides={"model_overrides.head_num_filters": ...}'.
    rc, text = run_cli(["train", "--config", "demo_synth", *argv], capsys)
    assert rc == 2 and words in text, text


@pytest.mark.parametrize("content, words", [
    ("[]", "expected a COCO object with an 'images' list"),
    ('{"images": 5}', "expected a COCO object with an 'images' list"),
    ('{"images": [{"file_name": "i.png", "id": "x"}]}', "images[0] needs an integer 'id' and a 'file_name'"),
    ('{"images": [{"file_name": "i.png"}]}', "images[0] needs an integer 'id' and a 'file_name'"),
])
def test_predict_ann_that_is_not_a_coco_image_list_is_named(tmp_path, saved, capsys, content, words):
    # Before: "AttributeError: 'list' object has no attribute 'get'", "KeyError: 'id'",
    # "TypeError: 'int' object is not iterable", "invalid literal for int() with base 10: 'x'".
    ann = tmp_path / "ann.json"
    ann.write_text(content)
    rc, text = run_cli(["predict", saved[0], _png(tmp_path / "i.png"), "--ann", ann, "--out", tmp_path / "out",
                        "--no-optimize"], capsys)
    assert rc == 2 and f"--ann {ann}: {words}" in text, text


@pytest.mark.parametrize("argv, words", [
    (["train", "--weight-decay", "nan"], "classify config: weight_decay=nan must be a finite number >= 0"),
    (["train", "--warmup-epochs", "nan"], "classify config: warmup_epochs=nan must be a finite number >= 0"),
    (["train", "--workers", "-1"], "classify config: workers=-1 must be a non-negative integer"),
    (["train", "--base-lr", "inf"], "classify config: base_lr=inf must be positive"),
    (["eval", "--weights", "w.safetensors", "--batch-size", "0"], "batch size must be at least 1, got 0"),
])
def test_classify_refuses_nan_and_negative_settings_before_training(tmp_path, capsys, argv, words):
    # Before: --weight-decay nan trained until "NonFiniteLossError: non-finite loss nan at step 2"
    # (NaN passed the `< 0` check); --workers -1 stopped inside torch's DataLoader; eval
    # --batch-size 0 failed in the DataLoader ("batch_size should be a positive integer value").
    rc, text = run_cli(["classify", *argv, "--data", tmp_path / "nothing", "--out", tmp_path / "o"]
                       if argv[0] == "train" else ["classify", *argv, "--data", tmp_path / "nothing"], capsys)
    assert rc == 2 and words in text, text


@pytest.mark.parametrize("h, w", [(3000, 10), (10, 10000), (1, 1)])
def test_extreme_aspect_ratio_images_are_detected_within_their_bounds(saved, h, w):
    # Before: a 10 x 3000 px image at image_size 64: torchvision's resize floors the short side
    # to 0 -> "RuntimeError: Input and output sizes should be greater than 0" (and `predict`
    # stopped there, leaving the remaining images undone).
    import torchspine

    model = torchspine.load_model(saved[0], overrides={"score_thresh": 0.0})
    with torch.no_grad():
        out = model([torch.rand(3, h, w)])[0]
    boxes = out["boxes"]
    assert len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()


def test_tiling_cuts_the_pixel_grid_the_boxes_were_drawn_on(tmp_path):
    # Before: `data tile` cut the EXIF-rotated image (40x60) while the file's boxes were on the
    # stored 60x40 grid: the tile's box covered black pixels; a size mismatch was not noticed.
    from torchspine.data.tiling import tile_dataset

    d = tmp_path / "img"
    d.mkdir()
    _exif_jpeg(d / "r.jpg", 6)
    coco = {"images": [{"id": 1, "file_name": "r.jpg", "width": 60, "height": 40}],
            "categories": [{"id": 1, "name": "block"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 2, 10, 6], "iscrowd": 0}]}
    out = tile_dataset(coco, d, tmp_path / "tiles", tile=32, overlap=0.0)
    for ann in out["annotations"]:
        tile = next(t for t in out["images"] if t["id"] == ann["image_id"])
        arr = np.asarray(Image.open(tmp_path / "tiles" / "images" / tile["file_name"]))
        x, y, w, h = (round(v) for v in ann["bbox"])
        assert arr[y:y + h, x:x + w].mean() > 230  # white block under the box
    coco["images"][0].update(width=50, height=50)
    with pytest.raises(ValueError, match="r.jpg is 40x60 but the annotation file says 50x50"):
        tile_dataset(coco, d, tmp_path / "tiles2", tile=32, overlap=0.0)


@pytest.mark.parametrize("argv, words", [
    (["--max-images", "0"], "--max-images must be at least 1, got 0"),
    (["--batch-size", "0"], "batch size must be at least 1, got 0"),
    (["--model-overrides", "[1]"], "--model-overrides must be a JSON object of model keywords"),
])
def test_eval_refuses_settings_that_evaluate_nothing_or_crash(tmp_path, saved, capsys, argv, words):
    # Before: --max-images 0 (or -1) scored no image and overwrote eval.json with AP -1, exit 0;
    # --batch-size 0 stopped in torch's DataLoader; --model-overrides [1] was
    # "TypeError: cannot convert dictionary update sequence element #0 to a sequence".
    rc, text = run_cli(["eval", "--weights", saved[0], "--model", "retinanet_spinenet49s", *argv,
                        "--json", tmp_path / "eval.json"], capsys)
    assert rc == 2 and words in text, text
    assert not (tmp_path / "eval.json").exists()


def test_windows_path_in_file_name_is_named_with_the_fix(tmp_path):
    # Before: only "image file '.../sub\\a.png' not found" (a COCO file written on Windows).
    _png(tmp_path / "img" / "sub" / "a.png")
    data = {"images": [{"id": 1, "file_name": "sub\\a.png", "width": 40, "height": 30}], "annotations": [],
            "categories": [{"id": 1, "name": "x"}]}
    (msg,) = [p.message for p in check_coco(data, image_dir=tmp_path / "img").problems]
    assert "not found (a Windows path: the file is at 'sub/a.png'; write / in file_name)" in msg


def test_annotation_file_with_a_byte_order_mark_loads(tmp_path, images):
    # Before: "not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig))" for a file saved
    # as "UTF-8 with BOM" (Windows Notepad, PowerShell); the CSV importer already accepted it.
    ann = tmp_path / "ann.json"
    ann.write_bytes(b"\xef\xbb\xbf" + json.dumps(_good()).encode())
    assert sorted(load_coco(ann, image_dir=images).imgs) == [1, 2]


@pytest.mark.parametrize("orientation, on", [(6, "the stored pixel grid (not rotated), 60x40"),
                                             (3, "the image as a viewer shows it (EXIF applied), 60x40")])
def test_csv_import_names_exif_rotated_images_and_the_grid_their_boxes_are_read_on(tmp_path, orientation, on):
    # Pixel boxes do not say which grid they were drawn on. Before: nothing was said; now a note
    # names each image with an EXIF orientation and the grid used (turns: the recorded size
    # decides, see CocoDetection; flips and half turns keep the size: the image as shown).
    from torchspine.data.importers import import_csv

    (tmp_path / "img").mkdir()
    _exif_jpeg(tmp_path / "img" / "r.jpg", orientation)
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("filename,xmin,ymin,xmax,ymax,class\nr.jpg,5,2,15,8,block\n")
    res = import_csv(csv_file, tmp_path / "img")
    assert res.ok
    (note,) = [p.message for p in res.report.notes if p.kind == "exif_orientation"]
    assert f"r.jpg carries EXIF orientation {orientation}: its boxes are read on {on}" in note


# --------------------------------------------------------------------------------------- resume
def test_resume_with_the_original_command_is_not_refused_for_a_recipe_value_it_overrode(tmp_path):
    # Before: `train --config demo_synth --set model_overrides={...} --resume` refused with
    # "--set model_overrides {...64 filters...} (recipe) differs from the run's model_overrides
    # {...16 filters...}": the recipe's value, which the same command line had replaced.
    from torchspine.engine.config import load_config
    from torchspine.engine.runs import resume_config
    from torchspine.utils import read_json

    mine = {"filter_size_scale": 0.25, "endpoints_num_filters": 16, "head_num_filters": 16}
    cfg = load_config("demo_synth", model_overrides=mine, output_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    from torchspine.engine.config import recipe_path

    recipe = read_json(recipe_path("demo_synth"))
    assert recipe["model_overrides"] != mine  # the recipe's own value differs
    again = resume_config(tmp_path, {"model_overrides": mine}, recipe=recipe)
    assert again.model_overrides == mine and again.resume
    with pytest.raises(ValueError, match=r"--resume: model_overrides .* \(command line\) differs"):
        resume_config(tmp_path, {"model_overrides": {**mine, "head_num_filters": 32}}, recipe=recipe)


def test_damaged_checkpoint_message_names_the_file_not_torchs_weights_only_advice(tmp_path):
    # Before: torch's paragraph advising to re-run torch.load with weights_only=False (which would
    # run code from the file) ending in "Unsupported operand 103".
    import torchspine
    from torchspine.engine.checkpoint import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    path.write_text("garbage\n")
    model = torchspine.create_model("spinenet49s", **{"filter_size_scale": 0.25})
    with pytest.raises(ValueError) as e:
        load_checkpoint(path, model=model)
    text = str(e.value)
    assert f"checkpoint {str(path)!r} cannot be read (" in text and "remove it to start the run over" in text
    assert "weights_only" not in text and "\n" not in text


def _bomb_png(path: Path) -> Path:
    """A PNG whose header claims 100000 x 100000 pixels (Pillow refuses to open it: a possible
    decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))
    return path


def test_import_with_a_decompression_bomb_header_names_the_image(tmp_path, capsys):
    # Before: "error: DecompressionBombError: Image size (10000000000 pixels) exceeds limit ...
    # (run with -v for the traceback)", without the file (Pillow's error is not an OSError).
    _bomb_png(tmp_path / "img" / "b.png")
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("filename,xmin,ymin,xmax,ymax,class\nb.png,1,2,10,12,cat\n")
    rc, text = run_cli(["data", "import", "--format", "csv", "--ann", csv_file, "--images", tmp_path / "img",
                        "--out", tmp_path / "o.json"], capsys)
    assert rc == 2 and f"image {tmp_path / 'img' / 'b.png'}: cannot be read (Image size (10000000000 pixels)" in text
    from torchspine.data.images import read_image

    with pytest.raises(ValueError, match="b.png: cannot be decoded"):
        read_image(tmp_path / "img" / "b.png")


def test_predict_reports_a_broken_link_in_an_image_folder(tmp_path, saved, capsys):
    # Before: a dangling symlink named b.jpg was left out of the folder's images without a word
    # (exit 0); now it is read, named as a broken link, skipped, and the exit status is 1.
    d = tmp_path / "imgs"
    _png(d / "a.png")
    (d / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    rc, text = run_cli(["predict", saved[0], d, "--out", tmp_path / "out", "--no-optimize"], capsys)
    assert rc == 1 and f"image {d / 'b.jpg'}: a broken symbolic link" in text, text
    assert [Path(m["file_name"]).name for m in json.loads((tmp_path / "out" / "images.json").read_text())] == ["a.png"]


def test_unreadable_image_says_permission_denied_not_cannot_be_decoded(tmp_path, monkeypatch):
    # chmod 000 cannot be tested as root (the test machines run as root), so Pillow's open is made
    # to fail as it does for an unreadable file. Before: "cannot be decoded ([Errno 13] ...)".
    import PIL.Image

    from torchspine.data.images import read_image

    path = _png(tmp_path / "a.png")

    def denied(fp, *a, **k):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(PIL.Image, "open", denied)
    with pytest.raises(ValueError, match=r"a.png: not readable by this user \(permission denied\)"):
        read_image(path)


@pytest.mark.parametrize("argv, words", [
    (["--score-thresh", "nan"], "--score-thresh must be a number in [0, 1], got 'nan'"),
    (["--score-thresh", "2"], "--score-thresh must be a number in [0, 1], got '2'"),
    (["--tile", "64", "--merge-iou", "nan"], "--merge-iou must be a number in [0, 1], got 'nan'"),
    (["--num-classes", "0"], "--num-classes must be at least 1, got 0"),
])
def test_predict_refuses_thresholds_that_keep_nothing_silently(tmp_path, saved, capsys, argv, words):
    # Before: --score-thresh nan / 2 and --merge-iou nan wrote 0 detections with exit 0;
    # --num-classes 0 was blamed on the model file's metadata.
    rc, text = run_cli(["predict", saved[0], _png(tmp_path / "i.png"), "--out", tmp_path / "out", *argv], capsys)
    assert rc == 2 and words in text, text
    assert not (tmp_path / "out").exists()


def test_int8_calibration_skips_an_unreadable_image_and_names_it(tmp_path, caplog):
    # Before: one truncated JPEG in the calibration folder stopped `export --int8` after the
    # float export ("image ...: cannot be decoded"); --calibrate-count 0 said "no image files".
    from types import SimpleNamespace

    from torchspine.interop.onnx import calibration_inputs

    d = tmp_path / "calib"
    _png(d / "b.png")
    (d / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = SimpleNamespace(example_shape=(3, 64, 64), postprocess=True)
    with caplog.at_level(logging.WARNING):
        inputs = calibration_inputs(d, result, count=1)
    assert len(inputs) == 1 and inputs[0].shape == (3, 64, 64)  # b.png took a.jpg's place
    assert "a.jpg" in caplog.text
    (d / "b.png").unlink()
    with pytest.raises(ValueError, match="none of its 1 image files can be read"):
        calibration_inputs(d, result, count=1)
    with pytest.raises(ValueError, match="at least one image, got count=0"):
        calibration_inputs(d, result, count=0)
