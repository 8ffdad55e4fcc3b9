"""Tiling of large images: tile positions, box clipping with a minimum visible fraction, the
``data tile`` command, and tiled prediction mapping boxes back and merging across tiles.
Expected numbers are worked out by hand in the comments."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

from torchspine.cli import main
from torchspine.data.tiling import merge_detections, tile_boxes, tile_dataset, tile_starts
from torchspine.engine.predict import predict_tiled


def test_tile_starts_cover_the_image_without_padding():
    # stride 256 * 0.75 = 192: 0, 192, 384, 576, then 768 would pass 1000 - 256 = 744 -> 744
    assert tile_starts(1000, 256, 0.25) == [0, 192, 384, 576, 744]
    assert tile_starts(256, 256, 0.5) == [0]
    assert tile_starts(100, 256, 0.2) == [0]  # smaller than a tile: one (smaller) tile
    assert tile_starts(512, 256, 0.0) == [0, 256]
    with pytest.raises(ValueError, match="overlap must be a fraction in \\[0, 1\\), got 1.0"):
        tile_starts(512, 256, 1.0)
    with pytest.raises(ValueError, match="tile size must be an integer >= 32"):
        tile_starts(512, 0, 0.1)


def test_tile_boxes_min_visible():
    boxes = torch.tensor([[90.0, 10, 110, 30],    # 10 of 20 px wide inside x < 100: 50 % visible
                          [10.0, 10, 20, 20],     # fully inside
                          [95.0, 0, 135, 10]])    # 5 of 40 px inside: 12.5 %
    clipped, idx = tile_boxes(boxes, (0, 0, 100, 100), min_visible=0.5)
    assert idx.tolist() == [0, 1]
    assert clipped.tolist() == [[90.0, 10, 100, 30], [10.0, 10, 20, 20]]
    clipped, idx = tile_boxes(boxes, (100, 0, 200, 100), min_visible=0.5)  # tile coordinates: x - 100
    assert idx.tolist() == [0, 2] and clipped.tolist() == [[0.0, 10, 10, 30], [0.0, 0, 35, 10]]


def _coco_image(tmp_path, w=300, h=200):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (w, h), (10, 20, 30)).save(tmp_path / "img" / "big.png")
    return {"images": [{"id": 7, "file_name": "big.png", "width": w, "height": h}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [100, 10, 40, 20], "area": 800,
                             "iscrowd": 0}],
            "categories": [{"id": 3, "name": "tree"}]}


def test_tile_dataset_writes_tiles_and_clipped_boxes(tmp_path):
    coco = _coco_image(tmp_path)
    # tiles of 128, overlap 0: x starts 0, 128, 172 (300 - 128); y starts 0, 72 (200 - 128).
    # The box x 100..140 is 28/40 = 70 % in x-tile 0 and 12/40 = 30 % in x-tile 128 (min 0.5: dropped there).
    out = tile_dataset(coco, tmp_path / "img", tmp_path / "tiles", tile=128, overlap=0.0, min_visible=0.5)
    assert [i["file_name"] for i in out["images"]] == ["big_x0_y0.png"]
    assert out["images"][0]["offset"] == [0, 0] and out["images"][0]["source_image_id"] == 7
    assert out["annotations"][0]["bbox"] == [100.0, 10.0, 28.0, 20.0]
    assert out["annotations"][0]["category_id"] == 3 and out["categories"] == coco["categories"]
    with Image.open(tmp_path / "tiles" / "images" / "big_x0_y0.png") as im:
        assert im.size == (128, 128)
    # min_visible 0.25 keeps the 30 % part too: x 128..140 -> tile coordinates 0..12
    out = tile_dataset(coco, tmp_path / "img", tmp_path / "tiles2", tile=128, overlap=0.0, min_visible=0.25,
                       keep_empty=True)
    assert len(out["images"]) == 6
    by_name = {i["file_name"]: i["id"] for i in out["images"]}
    got = {a["image_id"]: a["bbox"] for a in out["annotations"]}
    assert got == {by_name["big_x0_y0.png"]: [100.0, 10.0, 28.0, 20.0],
                   by_name["big_x128_y0.png"]: [0.0, 10.0, 12.0, 20.0]}


def test_data_tile_command(tmp_path, capsys):
    coco = _coco_image(tmp_path)
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    rc = main(["data", "tile", str(tmp_path / "ann.json"), "--images", str(tmp_path / "img"), "--out",
               str(tmp_path / "t"), "--tile", "128", "--overlap", "0"])
    assert rc == 0
    assert "1 tiles of 128 px from 1 images, 1 boxes" in capsys.readouterr().out
    tiles = tmp_path / "t"
    assert main(["data", "check", str(tiles / "annotations.json"), "--images", str(tiles / "images")]) == 0


def test_merge_nms_and_weighted():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [50.0, 50, 60, 60], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.7])
    labels = torch.tensor([1, 1, 1, 2])
    b, s, lab = merge_detections(boxes, scores, labels, method="nms", iou_thresh=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.8, 0.7]) and lab.tolist() == [1, 1, 2]
    b, s, lab = merge_detections(boxes, scores, labels, method="weighted", iou_thresh=0.5)
    # cluster of boxes 0 and 1 (IoU 9/11 > 0.5): x1 = (0.9*0 + 0.3*1) / 1.2 = 0.25, x2 = 10.25
    assert b[0].tolist() == pytest.approx([0.25, 0.0, 10.25, 10.0])
    assert b[1].tolist() == [50.0, 50, 60, 60] and b[2].tolist() == [0.0, 0, 10, 10]  # other label kept apart


class _BrightBoxDetector(nn.Module):
    """Stand-in detector: one box around the pixels brighter than 200 (score 0.9, label 1)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, images):
        out = []
        for im in images:
            self.seen.append(tuple(im.shape[-2:]))
            ys, xs = torch.nonzero(im[0] > 200, as_tuple=True)
            if len(xs):
                box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
            else:
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                            "labels": torch.zeros(0, dtype=torch.long)})
        return out


def test_predict_tiled_maps_boxes_back_and_merges():
    image = torch.zeros(3, 300, 400, dtype=torch.uint8)
    image[:, 100:130, 180:220] = 255  # object at x 180..220, y 100..130
    model = _BrightBoxDetector().eval()
    # tile 256, overlap 0.5: x starts 0, 128, 144; y starts 0, 44 -> 6 tiles, all of which hold the object
    det = predict_tiled(model, image, tile=256, overlap=0.5, merge="nms")
    assert len(model.seen) == 6 and all(s == (256, 256) for s in model.seen)
    assert det["boxes"].tolist() == [[180.0, 100.0, 220.0, 130.0]]
    det = predict_tiled(model, image, tile=256, overlap=0.5, merge="weighted")
    assert det["boxes"][0].tolist() == pytest.approx([180.0, 100.0, 220.0, 130.0]) and len(det["boxes"]) == 1


def test_predict_tiled_drops_objects_cut_by_a_tile_border():
    image = torch.zeros(3, 256, 512, dtype=torch.uint8)
    image[:, 50:70, 240:280] = 255  # x 240..280 crosses the right border (256) of the first tile
    model = _BrightBoxDetector().eval()
    # tile 256, overlap 0.25: x starts 0, 192, 256. Tile 0 sees only x 240..256 (cut, IoU 0.4 with the
    # whole box: NMS alone would keep it); tile 192 sees the whole object; tile 256 sees x 256..280 (cut).
    for merge in ("nms", "weighted"):
        det = predict_tiled(model, image, tile=256, overlap=0.25, merge=merge)
        assert det["boxes"].tolist() == [[240.0, 50.0, 280.0, 70.0]]
