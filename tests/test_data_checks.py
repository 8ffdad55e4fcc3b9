"""Annotation checks: every bad-record case is reported with its id; the run stops with a
clear message or, with skip_bad, leaves the records out and counts them; a corrupt image is
logged and skipped. Boxes outside the image, empty files and image decoding: tests/test_bad_input.py."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from torchspine.data.checks import check_coco
from torchspine.data.coco import CocoDetection, collate_detection, load_coco


def _write_images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(folder / n)


def _good():
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100, "iscrowd": 0},
                        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }


def test_clean_file_has_no_problems(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    assert check_coco(_good(), image_dir=tmp_path).problems == []


@pytest.mark.parametrize("mutate, kind, record, rid", [
    (lambda d: d["annotations"].append({"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 1, -4, 5]}),
     "bad_box", "annotation", 13),
    (lambda d: d["annotations"].append({"id": 14, "image_id": 1, "category_id": 1, "bbox": [1, 1, float("nan"), 5]}),
     "bad_box", "annotation", 14),
    (lambda d: d["annotations"].append({"id": 15, "image_id": 1, "category_id": 7, "bbox": [1, 1, 4, 5]}),
     "unknown_category", "annotation", 15),
    (lambda d: d["images"].append({"id": 3, "file_name": "missing.png", "width": 40, "height": 30}),
     "missing_image_file", "image", 3),
    (lambda d: d["images"].append({"id": 2, "file_name": "b.png", "width": 40, "height": 30}),
     "duplicate_image_id", "image", 2),
    (lambda d: d["annotations"].append({"id": 10, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 5]}),
     "duplicate_annotation_id", "annotation", 10),
    (lambda d: d["annotations"].append({"id": 16, "image_id": 99, "category_id": 1, "bbox": [1, 1, 4, 5]}),
     "unknown_image", "annotation", 16),
])
def test_each_bad_case_is_reported_with_its_id(tmp_path, mutate, kind, record, rid):
    _write_images(tmp_path / "img", ["a.png", "b.png"])
    data = _good()
    mutate(data)
    report = check_coco(data, image_dir=tmp_path / "img")
    assert [(p.kind, p.record, p.id) for p in report.problems] == [(kind, record, rid)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    # default: stop with a message naming the id
    with pytest.raises(ValueError, match=rf"{record} id {rid}:"):
        load_coco(ann, image_dir=tmp_path / "img")
    # --skip-bad-annotations: the record is left out, the rest kept
    coco = load_coco(ann, image_dir=tmp_path / "img", skip_bad=True)
    if record == "annotation":
        # a duplicated id is ambiguous: every record carrying it goes; other bad ones go alone
        assert len(coco.dataset["annotations"]) == (1 if kind == "duplicate_annotation_id" else 2)
    else:
        assert rid not in coco.imgs
        assert len(coco.dataset["images"]) == (1 if kind == "duplicate_image_id" else 2)


def test_skip_counts_several_problems(tmp_path, caplog):
    _write_images(tmp_path, ["a.png", "b.png"])
    data = _good()
    data["annotations"] += [{"id": 20, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]},
                            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [1, 1, -2, 2]}]
    data["images"].append({"id": 5, "file_name": "gone.png", "width": 40, "height": 30})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(ann, tmp_path, skip_bad=True)
    assert "skipping 1 image(s) and 2 annotation(s)" in caplog.text
    assert len(ds) == 2 and len(ds.coco.dataset["annotations"]) == 2


def test_crowd_and_zero_area_boxes_left_out_of_training_targets(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    data = _good()
    data["annotations"] += [{"id": 30, "image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 10], "iscrowd": 1},
                            {"id": 31, "image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 10], "iscrowd": 0}]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetection(ann, tmp_path)
    image, target = ds[0]
    assert image.shape == (3, 30, 40)
    assert target["boxes"].tolist() == [[1.0, 2.0, 11.0, 12.0]]  # xywh [1,2,10,10] -> xyxy
    assert target["labels"].tolist() == [1]


def test_corrupt_image_is_logged_and_skipped(tmp_path, caplog):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_good()))
    ds = CocoDetection(ann, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert ds[1] is None
    assert "corrupt image id 2" in caplog.text and ds.num_corrupt == 1
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == 1 and targets[0]["image_id"] == 1


def test_missing_annotation_file_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_coco(bad)
