"""Detections end to end against the official TensorFlow code: what a user of the official weights sees.

The ``tf`` tests run Model Garden (``tf-models-official``, ``official.vision``) in the TF
interpreter (``tests/tf_side/mg_detection.py``; ``TORCHSPINE_TF_PYTHON`` or ``.venv-tf``) and
compare, on the same inputs:

1. preprocessing (normalisation, resized size, bilinear kernel, padding, box scale) with Model
   Garden's serving path and with tensorflow/tpu's ``utils/input_utils.py`` re-created call by
   call (TF1 ``resize_images``);
2. anchors with ``official.vision.ops.anchor.Anchor`` at 640 x 640 and non-square sizes;
3. the detection generator (``MultilevelDetectionGenerator`` with the ``retinanet_spinenet_coco``
   settings, v2 and v1 = tensorflow/tpu's steps) on the same raw head outputs;
4. a whole RetinaNet-SpineNet-49 (quarter width) built by Model Garden's factory, saved as a TF
   checkpoint, converted by torchspine and both run on the same image (the official serving
   module on one side, ``model([image])`` on the other).

The tests without TensorFlow check the same rules on hand-computed numbers.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from torchspine.models.detection.anchors import SpineNetAnchorGenerator
from torchspine.models.detection.transform import DetectionTransform, official_resized_size, resize_bilinear_tf1
from torchspine.models.registry import create_model

REPO = Path(__file__).resolve().parents[1]
TF_SIDE = REPO / "tests" / "tf_side" / "mg_detection.py"
SWAP = [1, 0, 3, 2]  # yxyx <-> xyxy, and TF (dy, dx, dh, dw) -> torchvision (dx, dy, dw, dh)
LEVELS = range(3, 8)

# Images whose resize exercises the rounding: 334 x 500 -> 427.52 rows (round 428, floor 427);
# 480 x 640 (exact); 500 x 333 -> 639.99... columns with float64 floor; 150 x 200 upscaled.
IMAGE_SIZES = [(334, 500), (480, 640), (500, 333), (150, 200)]
ANCHOR_SIZES = [(640, 640), (384, 640), (640, 896)]


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A uint8 HWC image with structure at several scales (bilinear up-sampled noise)."""
    out = np.zeros((h, w, 3), np.float64)
    for cells in (4, 16, 64):
        coarse = rng.uniform(0, 255, (cells, cells, 3))
        ys = np.linspace(0, cells - 1, h)
        xs = np.linspace(0, cells - 1, w)
        y0 = np.floor(ys).astype(int).clip(max=cells - 2)
        x0 = np.floor(xs).astype(int).clip(max=cells - 2)
        fy = (ys - y0)[:, None, None]
        fx = (xs - x0)[None, :, None]
        c = coarse
        out += ((c[y0][:, x0] * (1 - fy) * (1 - fx) + c[y0 + 1][:, x0] * fy * (1 - fx)
                 + c[y0][:, x0 + 1] * (1 - fy) * fx + c[y0 + 1][:, x0 + 1] * fy * fx) / 3)
    return out.clip(0, 255).astype(np.uint8)


def _encode(boxes_xyxy: np.ndarray, anchors_xyxy: np.ndarray) -> np.ndarray:
    """TF box encoding (dy, dx, dh, dw), weights 1: the deltas that decode to ``boxes``."""
    aw, ah = anchors_xyxy[:, 2] - anchors_xyxy[:, 0], anchors_xyxy[:, 3] - anchors_xyxy[:, 1]
    ax, ay = anchors_xyxy[:, 0] + aw / 2, anchors_xyxy[:, 1] + ah / 2
    bw, bh = boxes_xyxy[:, 2] - boxes_xyxy[:, 0], boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    bx, by = boxes_xyxy[:, 0] + bw / 2, boxes_xyxy[:, 1] + bh / 2
    return np.stack([(by - ay) / ah, (bx - ax) / aw, np.log(bh / ah), np.log(bw / aw)], axis=1)


def _grid(size: int) -> list[tuple[int, int]]:
    return [(math.ceil(size / 2**lvl), math.ceil(size / 2**lvl)) for lvl in LEVELS]


def _head_outputs(rng: np.random.Generator, case: str, size: int = 640, num_classes: int = 91) -> dict:
    """Raw head outputs in TF layout (1, H, W, A * C) / (1, H, W, A * 4), anchor-major."""
    anchors = SpineNetAnchorGenerator(anchor_size=3.0).grid_anchors_for(
        _grid(size), dtype=torch.float64, device=torch.device("cpu"))
    out = {}
    for li, ((h, w), lvl) in enumerate(zip(_grid(size), LEVELS)):
        n = h * w * 9
        if case == "sparse":
            # Trained-detector-like: a few hundred scores per class above 0.05 (logit -2.94).
            logits = rng.normal(-5.5, 1.0, (n, num_classes))
            deltas = rng.normal(0.0, 0.25, (n, 4))
        else:  # "crowded": one object fills P3 with class 1, weaker class 2 / 3 candidates elsewhere
            logits = np.full((n, num_classes), -8.0) + rng.normal(0, 0.1, (n, num_classes))
            deltas = rng.normal(0.0, 0.25, (n, 4))
            if lvl == 3:
                logits[:, 1] = 3.0 + rng.normal(0, 0.2, n)  # 57,600 class-1 candidates (> 5000 cap)
                target = np.tile([[100.0, 120.0, 300.0, 330.0]], (n, 1)) + rng.normal(0, 2.0, (n, 4))
                deltas = _encode(target, anchors[li].numpy())
                pick = rng.choice(n, 400, replace=False)
                logits[pick, 2] = rng.normal(0.0, 0.5, 400)
            else:
                pick = rng.choice(n, min(n, 60), replace=False)
                logits[pick, 3] = rng.normal(-1.0, 0.5, len(pick))
        out[f"{case}_cls_{lvl}"] = logits.astype(np.float32).reshape(1, h, w, 9 * num_classes)
        out[f"{case}_box_{lvl}"] = deltas.astype(np.float32).reshape(1, h, w, 36)
    return out


ROI_IMAGE = 256


def _roi_inputs(rng: np.random.Generator) -> dict:
    """Features of levels 3..7 of a 256 x 256 image (NHWC) and 60 boxes (1, R, 4) yxyx of
    28..250 px, so that every level gets some."""
    out = {f"feat_{l}": rng.normal(0, 1, (1, ROI_IMAGE // 2**l, ROI_IMAGE // 2**l, 4)).astype(np.float32)
           for l in LEVELS}
    side = np.exp(rng.uniform(np.log(28), np.log(250), (60, 2)))
    y0 = rng.uniform(0, ROI_IMAGE - side[:, 0])
    x0 = rng.uniform(0, ROI_IMAGE - side[:, 1])
    out["boxes"] = np.stack([y0, x0, y0 + side[:, 0], x0 + side[:, 1]], axis=1)[None].astype(np.float32)
    return out


def _rcnn_inputs(rng: np.random.Generator, num_rois: int = 1000, num_classes: int = 91) -> dict:
    """Second-stage inputs: 1000 proposals (yxyx) inside a 428 x 640 image, class logits with a
    few confident RoIs, class-specific deltas (dy, dx, dh, dw) scaled by the (10, 10, 5, 5) weights."""
    side = np.exp(rng.uniform(np.log(16), np.log(400), (num_rois, 2)))
    y0 = rng.uniform(0, 428 - np.minimum(side[:, 0], 427))
    x0 = rng.uniform(0, 640 - side[:, 1])
    rois = np.stack([y0, x0, np.minimum(y0 + side[:, 0], 428), x0 + side[:, 1]], axis=1)
    logits = rng.normal(0, 1.0, (num_rois, num_classes))
    logits[:, 0] += 3.0  # mostly background
    hot = rng.choice(num_rois, 300, replace=False)
    logits[hot, rng.integers(1, num_classes, 300)] += rng.uniform(3, 8, 300)
    deltas = rng.normal(0, 1, (num_rois, num_classes, 4)) * np.array([1.0, 1.0, 0.5, 0.5])
    return {"rois": rois[None].astype(np.float32), "scores": logits[None].astype(np.float32),
            "boxes": deltas.reshape(1, num_rois, num_classes * 4).astype(np.float32)}


RETINANET = {"size": 640, "filter_size_scale": 0.25, "endpoints": 64, "head_filters": 64, "logit_std": 0.45,
             "logit_bias": -5.0, "seed": 7}
GEN_CASES = ("sparse", "crowded")
GEN_CLIPS = {"canvas": [640.0, 640.0], "image": [428.0, 640.0]}


@pytest.fixture(scope="module")
def official(tmp_path_factory, tf_python: str) -> Path:
    out = tmp_path_factory.mktemp("mg_detection")
    rng = np.random.default_rng(0)
    np.savez(out / "images.npz", **{f"img_{i}": _smooth_image(rng, h, w) for i, (h, w) in enumerate(IMAGE_SIZES)})
    heads: dict = {}
    for case in GEN_CASES:
        heads.update(_head_outputs(rng, case))
    np.savez(out / "heads.npz", **heads)
    np.savez(out / "image.npz", image=_smooth_image(rng, 334, 500))
    np.savez(out / "roi.npz", **_roi_inputs(rng))
    np.savez(out / "rcnn.npz", **_rcnn_inputs(rng))
    jobs = [
        {"name": "anchors", "kind": "anchors", "sizes": ANCHOR_SIZES, "anchor_sizes": [3.0, 4.0]},
        {"name": "preprocess", "kind": "preprocess", "desired": 640, "inputs": str(out / "images.npz")},
        {"name": "generator", "kind": "generator", "padded": [640, 640], "anchor_size": 3.0,
         "cases": list(GEN_CASES), "clips": GEN_CLIPS, "inputs": str(out / "heads.npz")},
        {"name": "rcnn_generator", "kind": "rcnn_generator", "image_shape": [428.0, 640.0],
         "inputs": str(out / "rcnn.npz")},
        {"name": "roialign", "kind": "roialign", "crops": [7, 14], "inputs": str(out / "roi.npz")},
        {"name": "retinanet", "kind": "retinanet", **RETINANET, "inputs": str(out / "image.npz")},
    ]
    (out / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([tf_python, str(TF_SIDE), str(out / "jobs.json"), str(out)], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------- 1. preprocessing
@pytest.mark.tf
@pytest.mark.parametrize("codebase", ["mg", "tpu"])
def test_preprocessing_matches_official(official: Path, codebase: str) -> None:
    interp = "bilinear" if codebase == "mg" else "bilinear_tf1"
    t = DetectionTransform(640, resize_interpolation=interp).eval()
    with np.load(official / "images.npz") as imgs, np.load(official / "preprocess.npz") as ref:
        for i, (h, w) in enumerate(IMAGE_SIZES):
            img = torch.from_numpy(imgs[f"img_{i}"]).permute(2, 0, 1)  # uint8 CHW, RGB
            batch, _ = t([img])
            info = ref[f"{codebase}_info_{i}"]  # [[h, w], [desired or scaled], [y_scale, x_scale], offset]
            scaled = tuple(int(v) for v in np.round(info[0] * info[2]))
            assert batch.image_sizes[0] == scaled, (i, batch.image_sizes[0], scaled)
            # The scale that maps boxes back: torchvision's resized / original, the official image_info[2].
            ratio = np.array(batch.image_sizes[0], np.float32) / np.array([h, w], np.float32)
            np.testing.assert_array_equal(ratio, info[2].astype(np.float32))
            want = torch.from_numpy(ref[f"{codebase}_image_{i}"]).permute(2, 0, 1)  # normalised, padded 640 x 640
            got = batch.tensors[0]
            assert got.shape == want.shape == (3, 640, 640)
            err = (got - want).abs().max().item()
            assert err <= 2e-5, f"{codebase} image {i} ({h}x{w}): max err {err:.3g} (normalised units)"


# ----------------------------------------------------------------------------------- 2. anchors
@pytest.mark.tf
@pytest.mark.parametrize("anchor_size", [3.0, 4.0])
@pytest.mark.parametrize("size", ANCHOR_SIZES)
def test_anchors_match_model_garden(official: Path, anchor_size: float, size: tuple[int, int]) -> None:
    h, w = size
    grids = [(math.ceil(h / 2**lvl), math.ceil(w / 2**lvl)) for lvl in LEVELS]
    ours = SpineNetAnchorGenerator(anchor_size=anchor_size).grid_anchors_for(grids, dtype=torch.float32,
                                                                             device=torch.device("cpu"))
    with np.load(official / "anchors.npz") as ref:
        for lvl, got in zip(LEVELS, ours):
            want = ref[f"anchors_{anchor_size:g}_{h}x{w}_{lvl}"]  # (H, W, A * 4) yxyx, scale-major then aspect
            want = torch.from_numpy(want.reshape(-1, 4)[:, SWAP])
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------- 3. detection generator
def _tiny_detector(**kw) -> torch.nn.Module:
    return create_model("retinanet_spinenet49s", filter_size_scale=0.25, endpoints_num_filters=16,
                        head_num_filters=16, head_num_convs=1, num_classes=91, **kw).eval()


def _torch_head_outputs(heads, case: str) -> dict[str, list[torch.Tensor]]:
    cls, box = [], []
    for lvl in LEVELS:
        c = torch.from_numpy(heads[f"{case}_cls_{lvl}"])
        b = torch.from_numpy(heads[f"{case}_box_{lvl}"])
        cls.append(c.reshape(1, -1, 91))
        box.append(b.reshape(1, -1, 4)[..., SWAP])
    return {"cls_logits": cls, "bbox_regression": box}


def _assert_same_detections(got: dict[str, torch.Tensor], ref_boxes_yxyx: np.ndarray, ref_scores: np.ndarray,
                            ref_classes: np.ndarray, *, box_atol: float, score_atol: float, what: str) -> None:
    """Same detections: equal counts, scores equal rank by rank, and every official detection
    matched one-to-one by a torchspine one of the same class, box and score (two detections whose
    scores differ by less than the float noise may come in either order)."""
    ref_boxes = torch.from_numpy(np.ascontiguousarray(ref_boxes_yxyx[:, SWAP])).float()
    ref_scores_t = torch.from_numpy(ref_scores).float()
    assert len(got["boxes"]) == len(ref_boxes), f"{what}: {len(got['boxes'])} detections, official {len(ref_boxes)}"
    assert len(ref_boxes) > 0
    torch.testing.assert_close(got["scores"].float(), ref_scores_t, atol=score_atol, rtol=0)
    free = torch.ones(len(ref_boxes), dtype=torch.bool)
    for box, score, label in zip(got["boxes"].float(), got["scores"].float(), got["labels"]):
        ok = (free & (torch.from_numpy(ref_classes.astype(np.int64)) == label)
              & ((ref_boxes - box).abs().amax(1) <= box_atol) & ((ref_scores_t - score).abs() <= score_atol))
        assert ok.any(), f"{what}: class {int(label)} box {box.tolist()} score {float(score):.6f} has no official match"
        free[torch.nonzero(ok)[0, 0]] = False


@pytest.mark.tf
def test_generator_config_is_what_torchspine_uses(official: Path) -> None:
    # retinanet_spinenet_coco's detection generator: v2, class-aware, 5000 / 0.05 / 0.5 / 100, no box weights.
    with np.load(official / "generator.npz") as ref:
        top_k, thresh, iou, max_det, agnostic, weights = ref["config"].tolist()
        assert str(ref["config_version"]) == "v2"
    m = _tiny_detector()
    assert (m.postprocess, m.pre_nms_top_k, m.score_thresh, m.nms_thresh, m.detections_per_img) == \
        ("official", top_k, pytest.approx(thresh), iou, max_det)
    assert agnostic == 0.0 and weights == 0.0 and m.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert m.box_coder.bbox_xform_clip == pytest.approx(math.log(1000.0 / 16))


@pytest.mark.tf
@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("clip", list(GEN_CLIPS))
@pytest.mark.parametrize("case", GEN_CASES)
def test_detection_generator_matches_model_garden(official: Path, case: str, clip: str, version: str) -> None:
    model = _tiny_detector(clip_boxes_to=clip)
    anchors = model.anchor_generator.grid_anchors_for(_grid(640), dtype=torch.float32, device=torch.device("cpu"))
    with np.load(official / "heads.npz") as heads:
        outputs = _torch_head_outputs(heads, case)
    # The resized image is 428 x 640 inside the 640 x 640 canvas (a 334 x 500 image).
    got = model.postprocess_detections(outputs, [anchors], [(428, 640)])[0]
    with np.load(official / "generator.npz") as ref:
        key = f"{case}_{version}_{clip}"
        _assert_same_detections(got, ref[f"{key}_boxes"], ref[f"{key}_scores"], ref[f"{key}_classes"],
                                box_atol=1e-3, score_atol=1e-6, what=key)


# ------------------------------------------------------------------- 5. Mask R-CNN RoIAlign
@pytest.mark.tf
@pytest.mark.parametrize("crop", [7, 14])
def test_roialign_matches_model_garden(official: Path, crop: int) -> None:
    # torchspine's Mask R-CNN pools RoIs with torchvision's MultiScaleRoIAlign (aligned=False,
    # levels floor(4 + log2(sqrt(area) / 224))) and one sample per bin (roi_sampling_ratio=1);
    # Model Garden with MultilevelROIAligner (official/vision/modeling/layers/roi_aligner.py).
    # torchvision's default of 2 x 2 samples per bin was off by up to 2.1 (features ~ N(0, 1)).
    from collections import OrderedDict

    with torch.device("meta"):
        model = create_model("maskrcnn_spinenet49s", num_classes=5)
    pool = model.roi_heads.box_roi_pool if crop == 7 else model.roi_heads.mask_roi_pool
    assert pool.output_size == (crop, crop) and pool.sampling_ratio == 1
    with np.load(official / "roi.npz") as inp, np.load(official / "roialign.npz") as ref:
        feats = OrderedDict((f"p{l}", torch.from_numpy(inp[f"feat_{l}"]).permute(0, 3, 1, 2)) for l in LEVELS)
        boxes = torch.from_numpy(inp["boxes"][0][:, SWAP])
        got = pool(feats, [boxes], [(ROI_IMAGE, ROI_IMAGE)])  # (R, C, crop, crop)
        want = torch.from_numpy(ref[f"roi_{crop}"][0]).permute(0, 3, 1, 2)
    assert got.shape == want.shape
    # float32 bilinear weights computed in another order: 1e-5 of the largest |feature| (~4.5);
    # measured 1.3e-5.
    tol = 1e-5 * want.abs().max().item()
    err = (got - want).abs().amax(dim=(1, 2, 3))
    assert err.max() <= tol, f"RoIs off: {int((err > tol).sum())} of {len(err)}, max {err.max():.3g}"


@pytest.mark.tf
def test_second_stage_generator_matches_model_garden(official: Path) -> None:
    # torchspine's Mask R-CNN box post-processing (torchvision's RoIHeads: softmax, background
    # dropped, class-specific decoding with weights (10, 10, 5, 5), clip, score > 0.05, class-wise
    # NMS 0.5, 100) against Model Garden's DetectionGenerator (Mask R-CNN config, v2).
    model = create_model("maskrcnn_spinenet49s", filter_size_scale=0.25, endpoints_num_filters=16,
                         rpn_num_filters=16, head_num_filters=16, head_num_convs=1, fc_dims=16,
                         mask_num_convs=1, num_classes=91).eval()
    with np.load(official / "rcnn.npz") as inp, np.load(official / "rcnn_generator.npz") as ref:
        logits = torch.from_numpy(inp["scores"][0])
        deltas = torch.from_numpy(inp["boxes"][0]).view(-1, 91, 4)[..., SWAP].reshape(-1, 91 * 4)
        rois = torch.from_numpy(inp["rois"][0][:, SWAP])
        boxes, scores, labels = model.roi_heads.postprocess_detections(logits, deltas, [rois], [(428, 640)])
        got = {"boxes": boxes[0], "scores": scores[0], "labels": labels[0]}
        _assert_same_detections(got, ref["boxes"], ref["scores"], ref["classes"], box_atol=1e-3, score_atol=1e-6,
                                what="second stage")


# ------------------------------------------------------------------------------ 4. whole model
@pytest.fixture(scope="module")
def converted(official: Path):
    from torchspine.interop.convert import build_converted, convert_checkpoint

    with np.load(official / "retinanet.npz") as ref:
        act = str(ref["activation"])
    kw = {"activation": act, "filter_size_scale": RETINANET["filter_size_scale"],
          "endpoints_num_filters": RETINANET["endpoints"], "head_num_filters": RETINANET["head_filters"]}
    ckpt = official / "retinanet" / "ckpt-1"
    mg = convert_checkpoint(ckpt, "retinanet_spinenet49", overrides=kw)
    # The tensorflow/tpu pipeline on the same weights: what a tensorflow/tpu conversion records.
    tpu = convert_checkpoint(ckpt, "retinanet_spinenet49",
                             overrides={**kw, "resize_interpolation": "bilinear_tf1", "clip_boxes_to": "image"})
    return mg, {name: build_converted("retinanet_spinenet49", r.overrides, r.state_dict) for name, r in
                (("mg", mg), ("tpu", tpu))}


@pytest.mark.tf
def test_converted_model_garden_detector_records_its_conventions(converted) -> None:
    result, models = converted
    assert result.codebase == "mg"
    assert result.settings["resize_interpolation"] == "bilinear" and result.settings["clip_boxes_to"] == "canvas"
    m = models["mg"]
    assert m.transform.resize_interpolation == "bilinear" and m.clip_boxes_to == "canvas"
    assert m.postprocess == "official"


@pytest.mark.tf
@pytest.mark.parametrize("pipeline", ["mg", "tpu"])
def test_whole_retinanet_detections_match(official: Path, converted, pipeline: str) -> None:
    _, models = converted
    model = models[pipeline]
    with np.load(official / "image.npz") as f:
        image = torch.from_numpy(f["image"]).permute(2, 0, 1)  # uint8 CHW, 334 x 500
    with torch.no_grad():
        got = model([image])[0]
    with np.load(official / "retinanet.npz") as ref:
        info = ref[f"{pipeline}_info"]
        # The official boxes are in resized-image pixels; / image_info[2] maps them to the image
        # (what Model Garden's COCO evaluator does).
        boxes = ref[f"{pipeline}_boxes"] / np.tile(info[2], 2)
        scores, classes = ref[f"{pipeline}_scores"], ref[f"{pipeline}_classes"]
        if pipeline == "mg":
            # Realistic scores: the detections are not saturated.
            assert 0.05 < scores.min() < scores.max() < 0.999
            n_above = sum(int((1 / (1 + np.exp(-ref[f"mg_cls_{lvl}"])) > 0.05).sum()) for lvl in LEVELS)
            assert 1000 < n_above < 200_000, n_above  # many candidates compete in NMS
    # float32 backbones in both frameworks: scores within 1e-4, boxes within 0.02 px of the image
    # (measured 2.4e-5 and 0.003 px).
    _assert_same_detections(got, boxes, scores, classes, box_atol=2e-2, score_atol=1e-4,
                            what=f"{pipeline} pipeline")


# ------------------------------------------------------------------------------ without TensorFlow
def test_official_resized_size_rounds_in_float32() -> None:
    # round(h * min(S / h, S / w)) (tf.round, half to even): 334 x 500 -> 334 * 1.28 = 427.52 -> 428
    # (torchvision's floor gave 427); 40 x 50 -> 256: 204.8 -> 205.
    assert official_resized_size(334, 500, 640) == (428, 640)
    assert official_resized_size(50, 40, 256) == (256, 205)
    assert official_resized_size(480, 640, 640) == (480, 640)
    t = DetectionTransform(640).eval()
    images, _ = t([torch.rand(3, 334, 500)])
    assert images.image_sizes == [(428, 640)]


def test_tf1_bilinear_samples_without_half_pixel_offset() -> None:
    # TF1 resize_images (tensorflow/tpu input_utils): output pixel i samples input i * in / out.
    # 1 x 4 row [0, 10, 20, 30] -> 8 columns: source 0, .5, 1, ..., 3.5 (clamped at the last pixel):
    # 0, 5, 10, 15, 20, 25, 30, 30. Half-pixel centres (source (i + .5) / 2 - .5) would give
    # 0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30.
    row = torch.tensor([[[0.0, 10.0, 20.0, 30.0]]])
    out = resize_bilinear_tf1(row, (1, 8))
    assert out[0, 0].tolist() == [0, 5, 10, 15, 20, 25, 30, 30]
    half = torch.nn.functional.interpolate(row[None], size=(1, 8), mode="bilinear", align_corners=False)
    assert half[0, 0, 0].tolist() == [0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30]
    # Down-sampling 4 -> 2: sources 0 and 2 -> [0, 20].
    assert resize_bilinear_tf1(row, (1, 2))[0, 0].tolist() == [0, 20]


def test_official_postprocess_keeps_classes_a_per_level_cut_drops() -> None:
    # One level, 2000 anchors: class 1 scores 0.95 on 1500 anchors that all decode to one box,
    # class 2 scores 0.5 on 300 other anchors with separate boxes. The official generator keeps
    # the top 5000 per class, so NMS leaves 1 class-1 box and class-2 boxes fill the other 99.
    # torchvision's rule (top 1000 (anchor, class) pairs of the level) sees only class 1.
    torch.manual_seed(0)
    n, c = 2000, 3
    anchors = torch.zeros(n, 4)
    xy = torch.rand(n, 2) * 500
    anchors[:, :2], anchors[:, 2:] = xy, xy + 40
    logits = torch.full((1, n, c), -9.0)
    logits[0, :1500, 1] = 2.944 + torch.rand(1500) * 0.01  # sigmoid ~ 0.95
    logits[0, 1500:1800, 2] = torch.rand(300) * 0.01       # sigmoid ~ 0.5
    deltas = torch.zeros(1, n, 4)
    boxes_same = torch.tensor([100.0, 100.0, 200.0, 200.0]).expand(1500, 4)
    deltas[0, :1500] = torch.tensor(_encode(boxes_same.numpy(), anchors[:1500].numpy())[:, SWAP]).float()
    kw = {"filter_size_scale": 0.25, "endpoints_num_filters": 16, "head_num_filters": 16, "head_num_convs": 1,
          "num_classes": c}
    off = create_model("retinanet_spinenet49s", **kw).eval()
    per_level = create_model("retinanet_spinenet49s", postprocess="per_level", **kw).eval()
    outs = {"cls_logits": [logits], "bbox_regression": [deltas]}
    a = off.postprocess_detections(outs, [[anchors]], [(640, 640)])[0]
    b = per_level.postprocess_detections(outs, [[anchors]], [(640, 640)])[0]
    assert (a["labels"] == 1).sum() == 1 and (a["labels"] == 2).sum() == 99
    assert set(b["labels"].tolist()) == {1} and len(b["labels"]) == 1


def test_clip_to_canvas_lets_boxes_reach_into_the_padding() -> None:
    # A 428 x 640 resized image on a 640 x 640 canvas: a box decoded to y2 = 600 stays at 600 with
    # clip_boxes_to="canvas" (Model Garden) and is clipped to 428 with "image" (tensorflow/tpu).
    anchors = torch.tensor([[300.0, 380.0, 400.0, 600.0]])
    logits = torch.tensor([[[-9.0, 3.0]]])
    deltas = torch.zeros(1, 1, 4)
    kw = {"filter_size_scale": 0.25, "endpoints_num_filters": 16, "head_num_filters": 16, "head_num_convs": 1,
          "num_classes": 2}
    outs = {"cls_logits": [logits], "bbox_regression": [deltas]}
    for clip, y2 in (("canvas", 600.0), ("image", 428.0)):
        m = create_model("retinanet_spinenet49s", clip_boxes_to=clip, **kw).eval()
        got = m.postprocess_detections(outs, [[anchors]], [(428, 640)])[0]
        assert got["boxes"].tolist() == [[300.0, 380.0, 400.0, y2]]
    with pytest.raises(ValueError, match="clip_boxes_to"):
        create_model("retinanet_spinenet49s", clip_boxes_to="border", **kw)


def test_official_candidates_same_both_ways() -> None:
    # The fast path (threshold, then rank per class) and the traceable one (top-k per class over
    # all anchors, then threshold; the official order) select the same candidates. Class 1 has
    # 300 candidates above 0.05, more than the cap of 100 used here.
    torch.manual_seed(1)
    m = create_model("retinanet_spinenet49s", filter_size_scale=0.25, endpoints_num_filters=16, head_num_filters=16,
                     head_num_convs=1, num_classes=6, pre_nms_top_k=100).eval()
    logits = torch.randn(3000, 5) - 4.0
    logits[:300, 0] = torch.rand(300) * 3
    fast = m._official_candidates(logits, by_topk=False)
    ref = m._official_candidates(logits, by_topk=True)
    def key(a, c, s):
        return sorted(zip(c.tolist(), a.tolist(), s.tolist()))

    got, want = key(*fast), key(*ref)
    assert [g[:2] for g in got] == [w[:2] for w in want]  # same (class, anchor) pairs
    assert max(abs(g[2] - w[2]) for g, w in zip(got, want)) < 1e-6  # sigmoid may differ in the last bit
    assert (fast[1] == 0).sum() == 100 and len(fast[0]) > 100
