"""Official TensorFlow checkpoints -> torchspine: proof of equivalence.

The ``tf`` tests build the official Model Garden models with ``tf-models-official`` in a
separate interpreter (``.venv-tf``, made by ``scripts/setup_tf_venv.sh``; or
``TORCHSPINE_TF_PYTHON``), give them random weights and BN statistics, save a TF2 checkpoint,
convert it (read with numpy alone: TensorFlow only writes the files) and compare every output
level on the same input. Tolerances: 1e-4 of the largest output magnitude in float32, 1e-10 in
float64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchspine.cli import main as cli_main
from torchspine.interop.convert import build_converted, convert_checkpoint, read_tf_checkpoint
from torchspine.models.saved import load_model
from torchspine.interop.keras_order import KerasGraph as _KerasGraph

REPO = Path(__file__).resolve().parents[1]
TF_SIDE = REPO / "tests" / "tf_side" / "build_official.py"


# name -> (job for the TF side, torchspine model, dtype)
JOBS = {
    "sn49": ({"family": "spinenet", "model_id": "49", "dtype": "float32", "inputs": [[128, 128], [128, 256]],
              "seed": 1}, "spinenet49", torch.float32),
    # With the official RetinaNet head of 49S (4 x 128, 91 classes, 9 anchors; Model Garden retinanet configs).
    "sn49s_f64": ({"family": "spinenet", "model_id": "49S", "dtype": "float64", "inputs": [[128, 128], [256, 128]],
                   "seed": 2, "head": {"num_classes": 91, "num_anchors": 9, "num_convs": 4, "num_filters": 128}},
                  "spinenet49s", torch.float64),
    # With the separable-conv mobile head (4 x 48, Model Garden's Mobile-49 config), 5 classes to keep it small.
    "mb49": ({"family": "mobile", "model_id": "49", "dtype": "float32", "inputs": [[128, 128], [256, 128]],
              "seed": 3, "head": {"num_classes": 5, "num_anchors": 9, "num_convs": 4, "num_filters": 48,
                                  "separable": True}}, "spinenet_mobile49", torch.float32),
}
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}  # relative to the largest |output|
ACT = {"spinenet": "relu", "mobile": "hard_swish"}  # what build_official.py builds with
RELU = {"activation": "relu"}
F64 = TOL[torch.float64]  # the tensorflow/tpu-style checkpoints are written in float64


@pytest.fixture(scope="module")
def official(tmp_path_factory, tf_python: str) -> Path:
    out = tmp_path_factory.mktemp("official")
    jobs = [{"name": name, **job} for name, (job, _, _) in JOBS.items()]
    (out / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([tf_python, str(TF_SIDE), str(out / "jobs.json"), str(out)], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _compare(model: torch.nn.Module, io: np.lib.npyio.NpzFile, dtype: torch.dtype) -> None:
    i = 0
    while f"input_{i}" in io:
        x = torch.from_numpy(io[f"input_{i}"]).permute(0, 3, 1, 2).to(dtype)  # NHWC -> NCHW
        with torch.no_grad():
            out = model(x)
        for lvl in range(3, 8):
            ref = torch.from_numpy(io[f"out_{i}_{lvl}"]).permute(0, 3, 1, 2).to(dtype)
            got = out[f"p{lvl}"]
            assert got.shape == ref.shape, (i, lvl, got.shape, ref.shape)
            scale = ref.abs().max().item()
            assert scale > 0.1  # non-trivial outputs
            err = (got - ref).abs().max().item()
            assert err <= TOL[dtype] * scale, f"input {i} ({tuple(x.shape)}) P{lvl}: max err {err:.3g}, scale {scale:.3g}"
        i += 1
    assert i == 2  # a square and a non-square input


@pytest.fixture(scope="module")
def variables(official: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each official checkpoint read once, with numpy (no TensorFlow in this process)."""
    return {name: read_tf_checkpoint(official / name / "ckpt-1") for name in JOBS}


@pytest.mark.tf
@pytest.mark.parametrize("name", list(JOBS))
def test_model_garden_checkpoint_matches_official_outputs(official: Path, variables, name: str) -> None:
    job, model_name, dtype = JOBS[name]
    result = convert_checkpoint(variables[name], model_name, overrides={"activation": ACT[job["family"]]})
    assert result.codebase == "mg"
    model = build_converted(model_name, result.overrides, result.state_dict).to(dtype)
    # The converted model selects Model Garden's padding and BN settings (official/vision/configs/common.py).
    assert model.spec.padding == "same"
    assert (model.spec.norm.momentum, model.spec.norm.epsilon) == (0.99, 1e-3)
    with np.load(official / name / "io.npz") as io:
        _compare(model, io, dtype)


@pytest.mark.tf
@pytest.mark.parametrize("name,detector,num_classes,dtype,act", [
    ("sn49s_f64", "retinanet_spinenet49s", 91, torch.float64, "relu"),
    ("mb49", "retinanet_spinenet_mobile49", 5, torch.float32, "hard_swish"),  # separable convs
])
def test_model_garden_retinanet_head(official: Path, variables, name: str, detector: str, num_classes: int,
                                     dtype: torch.dtype, act: str) -> None:
    result = convert_checkpoint(variables[name], detector, overrides={"activation": act})
    assert result.settings["num_classes"] == num_classes  # read from the checkpoint's head
    model = build_converted(detector, result.overrides, result.state_dict).to(dtype)
    num_anchors = 9
    with np.load(official / name / "io.npz") as io:
        for i in range(2):
            x = torch.from_numpy(io[f"input_{i}"]).permute(0, 3, 1, 2).to(dtype)
            with torch.no_grad():
                cls_maps, box_maps = model.head.forward_levels(list(model.backbone(x).values()))
            for li, lvl in enumerate(range(3, 8)):
                ref_cls = torch.from_numpy(io[f"cls_{i}_{lvl}"])  # (1, H, W, A * C), anchor-major
                ref_box = torch.from_numpy(io[f"box_{i}_{lvl}"])  # (1, H, W, A * 4), (dy, dx, dh, dw)
                n, h, w, _ = ref_box.shape
                # torchvision's BoxCoder order is (dx, dy, dw, dh): swap each anchor's pairs.
                ref_box = ref_box.view(n, h, w, num_anchors, 4)[..., [1, 0, 3, 2]].reshape(n, h, w, -1)
                assert cls_maps[li].shape == (1, num_anchors * num_classes, h, w)
                for got, ref in ((cls_maps[li], ref_cls), (box_maps[li], ref_box)):
                    ref = ref.permute(0, 3, 1, 2)
                    assert (got - ref).abs().max() <= TOL[dtype] * ref.abs().max(), (i, lvl)


@pytest.mark.tf
def test_wrong_model_size_fails_with_a_listing(variables) -> None:
    # A SpineNet-49S checkpoint is not a SpineNet-49: the converter lists the mismatches.
    with pytest.raises(ValueError, match=r"does not match model spinenet49\b") as info:
        convert_checkpoint(variables["sn49s_f64"], "spinenet49", overrides=RELU)
    msg = str(info.value)
    assert "shape mismatches" in msg
    # e.g. the first stem block: 49S has int(64 * 0.65) = 41 filters, 49 has 64 (SCALING_MAP of spinenet.py).
    assert "_conv1/kernel [1, 1, 64, 41] (torch layout [41, 64, 1, 1]) -> stem.groups.0.0.conv1.conv.weight expects [64, 64, 1, 1]" in msg
    # A SpineNet checkpoint is not a SpineNet-Mobile either.
    with pytest.raises(ValueError, match="does not match model spinenet_mobile49"):
        convert_checkpoint(variables["sn49"], "spinenet_mobile49", overrides={"activation": "hard_swish"})


@pytest.mark.tf
def test_training_checkpoint_layout_is_found(variables) -> None:
    # Model Garden training checkpoints nest the model under "model/" (checkpoint_items keyed
    # under model/...); the converter finds the backbone and head wherever they are.
    nested = {f"model/{k}": v for k, v in variables["sn49s_f64"].items()}
    plain = convert_checkpoint(variables["sn49s_f64"], "retinanet_spinenet49s", overrides=RELU).state_dict
    moved = convert_checkpoint(nested, "retinanet_spinenet49s", overrides=RELU).state_dict
    assert plain.keys() == moved.keys() and all(torch.equal(plain[k], moved[k]) for k in plain)
    # A backbone-only checkpoint for a detector: the head is reported missing.
    backbone_only = {k: v for k, v in variables["sn49s_f64"].items() if not k.startswith("head/")}
    with pytest.raises(ValueError, match="no Model Garden RetinaNet head"):
        convert_checkpoint(backbone_only, "retinanet_spinenet49s", overrides=RELU)


@pytest.mark.tf
def test_cli_convert_writes_loadable_safetensors(official: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mobile49.safetensors"
    rc = cli_main(["convert", str(official / "mb49" / "ckpt-1"), "--model", "spinenet_mobile49", "--out", str(out)])
    assert rc == 2 and "--activation is required" in capsys.readouterr().err  # no silent default
    rc = cli_main(["convert", str(official / "mb49" / "ckpt-1"), "--model", "spinenet_mobile49", "--out", str(out),
                   "--activation", "hard_swish"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Model Garden" in printed and '"activation": "hard_swish"' in printed and '"flavor": "mg"' in printed
    model = load_model(out)  # rebuilt from the metadata: flavour "mg"
    assert model.torchspine_info["provenance"]["settings"]["activation"] == "hard_swish"
    assert model.spec.padding == "same" and model.spec.activation == "hard_swish"
    with np.load(official / "mb49" / "io.npz") as io:
        _compare(model, io, torch.float32)
    # The converted file feeds `torchspine export` directly (its recorded settings are used).
    pytest.importorskip("onnxruntime")
    rc = cli_main(["export", "--model", "spinenet_mobile49", "--weights", str(out), "--static", "--size", "128",
                   "--out", str(tmp_path / "m.onnx")])
    assert rc == 0 and "max relative difference" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tpu_style(tmp_path_factory, tf_python: str) -> Path:
    """A TF1 name-based checkpoint written by TF itself from a tensorflow/tpu-style graph."""
    out = tmp_path_factory.mktemp("tpu_style")
    proc = subprocess.run([tf_python, str(REPO / "tests" / "tf_side" / "build_tpu_style.py"), str(out), "retinanet",
                           "maskrcnn", "classifier", "mbconv", "sn190"],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.tf
def test_tpu_name_based_checkpoint_backbone_and_head(tpu_style: Path) -> None:
    variables = read_tf_checkpoint(tpu_style / "retinanet" / "model.ckpt")
    # TF generated the tensorflow/tpu names, e.g. the endpoints continue the root counters
    # after the stem (49S: stem conv2d, two stem bottlenecks conv2d_1..7, endpoints conv2d_8..12).
    assert variables["spinenet/conv2d_8/kernel"].shape == (1, 1, 332, 128)  # P4 from 4 * int(256 * 0.65)
    assert "spinenet/sub_policy14/scale_permuted_block_16/conv2d_2/kernel" in variables
    head_kw = {"head_num_convs": 2, "head_num_filters": 32, "activation": "relu"}
    result = convert_checkpoint(variables, "retinanet_spinenet49s", overrides=head_kw)
    assert result.codebase == "tpu"
    model = build_converted("retinanet_spinenet49s", result.overrides, result.state_dict).to(torch.float64)
    assert model.backbone.spec.padding == "symmetric"
    assert (model.backbone.spec.norm.momentum, model.backbone.spec.norm.epsilon) == (0.997, 1e-4)
    # tensorflow/tpu orders each location's anchors scale-major with aspect ratios (1.0, 2.0, 0.5);
    # the torchspine model uses (0.5, 1.0, 2.0): torch anchor k*3 + r is TF anchor k*3 + tf.index(ar).
    torch_ar, tf_ar = (0.5, 1.0, 2.0), (1.0, 2.0, 0.5)
    anchor_map = [k * 3 + tf_ar.index(torch_ar[r]) for k in range(3) for r in range(3)]
    with np.load(tpu_style / "retinanet" / "io.npz") as io:
        for i in range(2):  # 128 x 128 and 128 x 256
            x = torch.from_numpy(io[f"input_{i}"]).permute(0, 3, 1, 2)
            with torch.no_grad():
                feats = model.backbone(x)
                cls_maps, box_maps = model.head.forward_levels(list(feats.values()))
            for li, lvl in enumerate(range(3, 8)):
                ref = torch.from_numpy(io[f"out_{i}_{lvl}"]).permute(0, 3, 1, 2)
                assert (feats[f"p{lvl}"] - ref).abs().max() <= F64 * ref.abs().max(), (i, lvl)
                n, h, w, _ = io[f"box_{i}_{lvl}"].shape
                ref_cls = torch.from_numpy(io[f"cls_{i}_{lvl}"]).view(n, h, w, 9, 3)[..., anchor_map, :]
                ref_box = torch.from_numpy(io[f"box_{i}_{lvl}"]).view(n, h, w, 9, 4)[..., anchor_map, :][..., [1, 0, 3, 2]]
                for got, want in ((cls_maps[li], ref_cls), (box_maps[li], ref_box)):
                    want = want.reshape(n, h, w, -1).permute(0, 3, 1, 2)
                    assert (got - want).abs().max() <= F64 * want.abs().max(), (i, lvl)
    # The same checkpoint for the wrong size lists the per-scope layer counts and shapes.
    with pytest.raises(ValueError, match="does not match model spinenet49") as info:
        convert_checkpoint(variables, "spinenet49", overrides=RELU)
    assert "spinenet/conv2d_1/kernel [1, 1, 64, 164]" in str(info.value)


SWAP = [1, 0, 3, 2]  # torchvision (dx, dy, dw, dh) <- TF (dy, dx, dh, dw)


@pytest.mark.tf
def test_tpu_maskrcnn_checkpoint(tpu_style: Path) -> None:
    # TF1 variables named as tensorflow/tpu heads.py RpnHead / FastrcnnHead / MaskrcnnHead name them.
    variables = read_tf_checkpoint(tpu_style / "maskrcnn" / "model.ckpt")
    kw = {"activation": "relu", "rpn_num_filters": 32, "head_num_filters": 32, "fc_dims": 64, "head_num_convs": 2,
          "mask_num_convs": 2}
    result = convert_checkpoint(variables, "maskrcnn_spinenet49s", overrides=kw)
    # The tensorflow/tpu Mask R-CNN settings: BN 0.99 / 1e-3 and the class count of the checkpoint.
    assert (result.settings["bn_momentum"], result.settings["bn_epsilon"]) == (0.99, 1e-3)
    assert result.settings["num_classes"] == 5
    model = build_converted("maskrcnn_spinenet49s", result.overrides, result.state_dict).to(torch.float64)
    rpn_map = [(1.0, 2.0, 0.5).index(ar) for ar in (0.5, 1.0, 2.0)]  # torch anchor -> TF anchor
    with np.load(tpu_style / "maskrcnn" / "io.npz") as io, torch.no_grad():
        x = torch.from_numpy(io["input_1"]).permute(0, 3, 1, 2)  # 128 x 256
        feats = model.backbone(x)
        for lvl in range(3, 8):
            ref = torch.from_numpy(io[f"out_1_{lvl}"]).permute(0, 3, 1, 2)
            assert (feats[f"p{lvl}"] - ref).abs().max() <= F64 * ref.abs().max(), lvl
        logits, deltas = model.rpn.head(list(feats.values()))
        for li, lvl in enumerate(range(3, 8)):
            n, h, w, _ = io[f"cls_1_{lvl}"].shape
            ref_cls = torch.from_numpy(io[f"cls_1_{lvl}"])[..., rpn_map].permute(0, 3, 1, 2)
            ref_box = torch.from_numpy(io[f"box_1_{lvl}"]).view(n, h, w, 3, 4)[..., rpn_map, :][..., SWAP]
            ref_box = ref_box.reshape(n, h, w, 12).permute(0, 3, 1, 2)
            for got, want in ((logits[li], ref_cls), (deltas[li], ref_box)):
                assert (got - want).abs().max() <= F64 * want.abs().max(), lvl
        rois = torch.from_numpy(io["box_rois"]).permute(0, 3, 1, 2)
        scores, boxes = model.roi_heads.box_predictor(model.roi_heads.box_head(rois))
        ref_scores = torch.from_numpy(io["box_cls"])
        ref_boxes = torch.from_numpy(io["box_box"]).view(-1, 5, 4)[..., SWAP].reshape(-1, 20)
        assert (scores - ref_scores).abs().max() <= F64 * ref_scores.abs().max()
        assert (boxes - ref_boxes).abs().max() <= F64 * ref_boxes.abs().max()
        masks = model.roi_heads.mask_predictor(model.roi_heads.mask_head(
            torch.from_numpy(io["mask_rois"]).permute(0, 3, 1, 2)))
        ref_masks = torch.from_numpy(io["masks"]).permute(0, 3, 1, 2)  # (R, 28, 28, C) -> (R, C, 28, 28)
        assert masks.shape == ref_masks.shape == (6, 5, 28, 28)
        assert (masks - ref_masks).abs().max() <= F64 * ref_masks.abs().max()


@pytest.mark.tf
def test_tpu_classifier_checkpoint(tpu_style: Path, tmp_path: Path) -> None:
    variables = read_tf_checkpoint(tpu_style / "classifier" / "model.ckpt")
    result = convert_checkpoint(variables, "spinenet49s_cls", overrides=RELU)
    # tensorflow/tpu ImageNet: 1001 classes (index 0 background), BN 0.9 / 1e-5.
    assert result.settings["num_classes"] == 1001
    assert (result.settings["bn_momentum"], result.settings["bn_epsilon"]) == (0.9, 1e-5)
    out = tmp_path / "cls.safetensors"
    from torchspine.interop.convert import save_converted

    save_converted(result, out)
    model = load_model(out).to(torch.float64)
    assert model.torchspine_info["num_classes"] == 1001 and model.torchspine_info["background_class"] == 0
    with np.load(tpu_style / "classifier" / "io.npz") as io, torch.no_grad():
        logits = model.fc(torch.from_numpy(io["pooled"]))
        ref = torch.from_numpy(io["logits"])
        assert (logits - ref).abs().max() <= F64 * ref.abs().max()
        x = torch.from_numpy(io["input_0"]).permute(0, 3, 1, 2)
        feats = model.backbone(x)
        ref3 = torch.from_numpy(io["out_0_3"]).permute(0, 3, 1, 2)
        assert (feats["p3"] - ref3).abs().max() <= F64 * ref3.abs().max()
    # The backbone part of a detector or classifier checkpoint converts on its own.
    backbone = convert_checkpoint(variables, "spinenet49s", overrides=RELU)
    # ... with the BN settings the checkpoint was trained with (a classifier's), not a detector's.
    assert backbone.settings["padding"] == "symmetric" and backbone.settings["bn_epsilon"] == 1e-5


@pytest.mark.tf
def test_tpu_spinenet_mbconv_checkpoint(tpu_style: Path) -> None:
    # tensorflow/tpu SpineNet-MBConv-49 ('spinenet_mbconv/' scopes, depthwise_conv2d, SE convs with
    # bias inside each block scope): the tensorflow/tpu flavour (swish, sigmoid-gated SE).
    variables = read_tf_checkpoint(tpu_style / "mbconv" / "model.ckpt")
    result = convert_checkpoint(variables, "spinenet_mobile49", overrides={"activation": "swish"})
    assert result.codebase == "tpu" and result.settings["flavor"] == "tpu"
    model = build_converted("spinenet_mobile49", result.overrides, result.state_dict).to(torch.float64)
    assert model.spec.padding == "symmetric"
    with np.load(tpu_style / "mbconv" / "io.npz") as io:  # written in float64
        _compare(model, io, torch.float64)


@pytest.mark.tf
def test_tpu_block_repeats_checkpoint(tpu_style: Path) -> None:
    # SpineNet-190's layout (4 blocks per group, alpha 1.0) at a quarter width: every scope then
    # holds several blocks' layers, numbered in creation order (tensorflow/tpu spinenet.py block_group).
    variables = read_tf_checkpoint(tpu_style / "sn190" / "model.ckpt")
    assert "spinenet/sub_policy0/scale_permuted_block_2/conv2d_11/kernel" in variables  # 4 x 3 convs
    kw = {"activation": "relu", "filter_size_scale": 0.325, "endpoints_num_filters": 64}
    result = convert_checkpoint(variables, "spinenet190", overrides=kw)
    model = build_converted("spinenet190", result.overrides, result.state_dict).to(torch.float64)
    with np.load(tpu_style / "sn190" / "io.npz") as io:
        _compare(model, io, torch.float64)


# --------------------------------------------------------------- without TensorFlow
def test_keras_layer_order_replicates_functional_sorting() -> None:
    # Hand-worked example of tf_keras functional._map_graph_network:
    #   in(0) -> a(1) -> b(2) -> out1(4);  in -> c(3) -> out1;  b -> out2(5)
    # DFS from outputs [out1, out2] follows out1's inputs (b, c): b -> a -> in, then c;
    # first-visit indices: out1 0, b 1, a 2, in 3, c 4, out2 5.
    # Depths (longest path to an output): out1 0, out2 0, b 1, c 1, a 2, in 3 (in -> c -> out1 is 2).
    # Sorted by depth desc, ties by first visit: in, a, b, c, out1, out2.
    g = _KerasGraph()
    i = g.add()
    a = g.add(i)
    b = g.add(a)
    c = g.add(i)
    out1 = g.add(b, c)
    out2 = g.add(b)
    assert g.keras_order([out1, out2]) == [i, a, b, c, out1, out2]
    # Reversing the inputs of out1 changes only the tie order between b and c.
    g2 = _KerasGraph()
    i = g2.add()
    a = g2.add(i)
    b = g2.add(a)
    c = g2.add(i)
    out1 = g2.add(c, b)
    out2 = g2.add(b)
    assert g2.keras_order([out1, out2]) == [i, a, c, b, out1, out2]


def test_activation_is_required() -> None:
    # No silent default: a wrong activation gives outputs off by orders of magnitude with no error.
    with pytest.raises(ValueError, match=r"activation=None; give the activation"):
        convert_checkpoint({}, "spinenet49")
    with pytest.raises(ValueError, match=r"activation='gelu'"):
        convert_checkpoint({}, "spinenet49", overrides={"activation": "gelu"})


def test_hard_sigmoid_is_model_gardens() -> None:
    # tensorflow/models official/modeling/activations/sigmoid.py: relu6(x + 3) * 0.16667, so
    # hard_sigmoid(0) = 3 * 0.16667 = 0.50001 (1/6 would give 0.5) and saturates at 6 * 0.16667 = 1.00002.
    from torchspine.layers.mbconv import HardSigmoid

    x = torch.tensor([-4.0, 0.0, 1.5, 4.0], dtype=torch.float64)
    assert HardSigmoid()(x).tolist() == pytest.approx([0.0, 0.50001, 0.750015, 1.00002], abs=1e-12)


def test_conversion_needs_no_tensorflow(tmp_path: Path, monkeypatch) -> None:
    # With TensorFlow unimportable, a damaged file is still read by the numpy reader (and its
    # error names the file), not refused for want of TensorFlow.
    (tmp_path / "ckpt-1.index").write_bytes(b"not a table")
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ValueError, match=r"ckpt-1\.index: .*too short"):
        read_tf_checkpoint(tmp_path / "ckpt-1")
    rc = cli_main(["convert", str(tmp_path / "ckpt-1"), "--model", "spinenet49", "--activation", "relu",
                   "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        read_tf_checkpoint(tmp_path / "nope")
