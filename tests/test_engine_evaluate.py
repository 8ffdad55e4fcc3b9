"""COCO evaluation (pycocotools) on hand-made detections."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from torchspine.data.coco import CocoDetection
from torchspine.engine.evaluate import coco_metrics, evaluate_coco, format_table


def _gt():
    # two 100x100 images; boxes of area 60*60 = 3600 (COCO "medium": 32^2 < area < 96^2)
    data = {
        "images": [{"id": 1, "file_name": "1.png", "width": 100, "height": 100},
                   {"id": 2, "file_name": "2.png", "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 60, 60], "area": 3600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [30, 20, 60, 60], "area": 3600, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, data


def test_perfect_detections_give_ap_one():
    coco, data = _gt()
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
               for a in data["annotations"]]
    m = coco_metrics(coco, results)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert m["APm"] == pytest.approx(1.0)
    assert m["APs"] == -1.0 and m["APl"] == -1.0  # pycocotools: no ground truth in that size range


def test_hand_built_precision_recall_case():
    # Ranked detections: TP (0.9), FP (0.8, empty region), TP (0.7). Precision/recall points:
    # (P=1, R=0.5), (P=0.5, R=0.5), (P=2/3, R=1). COCO interpolates precision as the max precision
    # at recall >= r over 101 recall thresholds: r in 0..0.50 (51 points) -> 1; r in 0.51..1.0
    # (50 points) -> 2/3. AP = (51 * 1 + 50 * 2/3) / 101 = 0.834983..., the same at every IoU
    # threshold because the true positives are exact.
    coco, data = _gt()
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 60, 60], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [75, 75, 20, 20], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [30, 20, 60, 60], "score": 0.7},
    ]
    m = coco_metrics(coco, results)
    expected = (51 * 1.0 + 50 * 2.0 / 3.0) / 101
    assert m["AP"] == pytest.approx(expected, abs=1e-6)
    assert m["AP50"] == pytest.approx(expected, abs=1e-6)
    assert m["AR100"] == pytest.approx(1.0)


def test_half_iou_box_counts_only_at_low_thresholds():
    # Detection shifted by 20 px: IoU = 40*60 / (2*3600 - 40*60) = 2400/4800 = 0.5 -> a TP only
    # at the 0.50 threshold (COCO matches IoU >= t), so AP50 = 1 and AP = 1/10 (1 of 10 thresholds).
    coco, _ = _gt()
    results = [{"image_id": 1, "category_id": 1, "bbox": [30, 10, 60, 60], "score": 0.9},
               {"image_id": 2, "category_id": 1, "bbox": [30, 20, 60, 60], "score": 0.95}]
    m = coco_metrics(coco, results)
    # image 2 exact and ranked first (TP at all 10 thresholds); image 1 TP only at 0.5: AP50 = 1, at t >= 0.55 recall 0.5
    # with precision 1 -> 51/101. AP = (1 + 9 * 51/101) / 10.
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP"] == pytest.approx((1 + 9 * 51 / 101) / 10, abs=1e-6)


def test_no_detections_gives_zeros():
    coco, _ = _gt()
    assert coco_metrics(coco, [])["AP"] == 0.0


class _Oracle(torch.nn.Module):
    """Returns the ground truth of each image as detections (from its pixel-size key)."""

    def __init__(self, boxes_by_height):
        super().__init__()
        self.boxes_by_height = boxes_by_height

    def forward(self, images):
        out = []
        for im in images:
            b = torch.tensor(self.boxes_by_height[im.shape[-2]], dtype=torch.float32)
            out.append({"boxes": b, "scores": torch.full((len(b),), 0.9), "labels": torch.ones(len(b), dtype=torch.int64)})
        return out


def test_evaluate_coco_runs_a_model_in_image_coordinates(tmp_path):
    # Images of different sizes; the oracle returns xyxy boxes in each image's own pixels.
    _, data = _gt()
    data["images"][1]["height"] = 90
    for img in data["images"]:
        Image.fromarray(np.zeros((img["height"], img["width"], 3), np.uint8)).save(tmp_path / img["file_name"])
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "ann.json", tmp_path)
    oracle = _Oracle({100: [[10, 10, 70, 70]], 90: [[30, 20, 90, 80]]})
    m = evaluate_coco(oracle, ds, batch_size=2)
    assert m["AP"] == pytest.approx(1.0) and m["num_images"] == 2
    assert "box" in format_table(m) and "100.0" in format_table(m)


class _MaskOracle(torch.nn.Module):
    """Returns each image's ground-truth box and its rectangle mask as (N, 1, H, W) probabilities."""

    def forward(self, images):
        out = []
        for im in images:
            h, w = im.shape[-2:]
            masks = torch.zeros(1, 1, h, w)
            masks[0, 0, 10:70, 10:70] = 0.9
            out.append({"boxes": torch.tensor([[10.0, 10.0, 70.0, 70.0]]), "scores": torch.tensor([0.9]),
                        "labels": torch.tensor([1]), "masks": masks})
        return out


def test_mask_metrics_for_mask_predictions(tmp_path):
    # One image, one square object with a polygon mask equal to its box: a predicted mask equal
    # to that square gives mask AP 1.0; box AP 1.0 too.
    data = {"images": [{"id": 1, "file_name": "1.png", "width": 100, "height": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 60, 60], "area": 3600,
                             "iscrowd": 0, "segmentation": [[10, 10, 70, 10, 70, 70, 10, 70]]}],
            "categories": [{"id": 1, "name": "thing"}]}
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "1.png")
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "ann.json", tmp_path, with_masks=True)
    m = evaluate_coco(_MaskOracle(), ds)
    assert m["AP"] == pytest.approx(1.0) and m["mask_AP"] == pytest.approx(1.0)
    assert "mask" in format_table(m)
