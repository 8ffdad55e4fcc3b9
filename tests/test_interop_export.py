"""ONNX export checked with onnxruntime. Tiny models, 256 px inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from torchspine.cli import main as cli_main  # noqa: E402
from torchspine.models.registry import create_model  # noqa: E402
from torchspine.interop.onnx import _FullRetinaNet, export_onnx, run_onnx, verify_onnx  # noqa: E402

TINY = {"filter_size_scale": 0.25, "endpoints_num_filters": 16}
TOL = 1e-4  # of the largest output magnitude (float32 CPU kernels differ only by rounding)


def test_backbone_model_garden_padding_static_size_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("spinenet49s", padding="same", **TINY).eval()
    res = export_onnx(model, tmp_path / "bb.onnx", image_size=(256, 192), dynamic=False)
    assert res.output_names == ("p3", "p4", "p5", "p6", "p7")
    for batch in (1, 3):  # the batch stays symbolic with the legacy exporter
        assert verify_onnx(model, res, torch.randn(batch, 3, 256, 192)) < TOL
    outs = run_onnx(res.path, np.zeros((2, 3, 256, 192), np.float32))
    # P3..P7 of a 256x192 input: ceil(256 / 2**l) x ceil(192 / 2**l) (reference: level_size)
    assert [o.shape for o in outs] == [(2, 16, 32, 24), (2, 16, 16, 12), (2, 16, 8, 6), (2, 16, 4, 3), (2, 16, 2, 2)]


def test_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("spinenet49_cls", num_classes=7, **TINY).eval()
    res = export_onnx(model, tmp_path / "cls.onnx", dynamic=False)
    assert res.kind == "classifier" and res.output_names == ("logits",)
    assert verify_onnx(model, res, torch.randn(2, 3, 256, 256)) < TOL


def _tiny_retinanet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s", num_classes=5, image_size=256, head_num_filters=16,
                         head_num_convs=1, **TINY).eval()
    with torch.no_grad():  # spread the scores so that detections exist and have no ties
        model.head.cls_logits.weight.normal_(0, 0.3)
        model.head.cls_logits.bias.normal_(0, 1.0)
        model.head.bbox_reg.weight.normal_(0, 0.1)
    return model


def test_retinanet_with_postprocessing(tmp_path: Path) -> None:
    model = _tiny_retinanet()
    res = export_onnx(model, tmp_path / "det.onnx", image_size=(256, 256))
    assert res.postprocess and res.output_names == ("boxes", "scores", "labels")
    x = torch.rand(3, 256, 256)
    boxes, scores, labels = run_onnx(res.path, x.numpy())
    with torch.no_grad():
        ref_boxes, ref_scores, ref_labels = _FullRetinaNet(model)(x)
    assert len(scores) == len(ref_scores) > 0
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3)  # pixels, 256 px image
    np.testing.assert_array_equal(labels, ref_labels.numpy())
    assert labels.min() >= 1  # class 0 is background, never reported


def test_retinanet_dense_outputs(tmp_path: Path) -> None:
    model = _tiny_retinanet()
    res = export_onnx(model, tmp_path / "dense.onnx", postprocess=False, dynamic=False)
    assert res.output_names == ("cls_logits", "bbox_regression")
    assert verify_onnx(model, res, torch.randn(1, 3, 256, 256)) < TOL


def test_cli_export_with_weights(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = create_model("spinenet49s", **TINY)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "m.onnx"
    rc = cli_main(["export", "--model", "spinenet49s", "--weights", str(tmp_path / "w.safetensors"),
                   "--set", "filter_size_scale=0.25", "--set", "endpoints_num_filters=16", "--static",
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.exists() and "max relative difference" in text
    # The file holds the given weights: compare with the model that has them.
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        ref = model.eval()(x)["p3"].numpy()
    np.testing.assert_allclose(run_onnx(out, x.numpy())[0], ref, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow  # torch.export of a SpineNet takes about a minute on 2 busy cores
@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_dynamic_batch_and_any_image_size(tmp_path: Path, padding: str) -> None:
    """One dynamic graph serves every size, odd and non-multiples of 128 included (200x300 failed
    in onnxruntime with a broadcast error before: pads, level sizes and resize factors were fixed
    to the example's size)."""
    torch.manual_seed(0)
    model = create_model("spinenet49s", padding=padding, **TINY).eval()
    res = export_onnx(model, tmp_path / "dyn.onnx", image_size=(256, 384), dynamic=True)
    assert res.dynamic
    for shape in ((1, 3, 256, 256), (2, 3, 384, 256), (1, 3, 200, 300), (1, 3, 97, 130), (1, 3, 33, 47)):
        assert verify_onnx(model, res, torch.randn(*shape)) < TOL, shape
    # P3..P7 sizes are ceil(H / 2**l) (level_size), here for 200x300.
    outs = run_onnx(res.path, np.zeros((1, 3, 200, 300), np.float32))
    assert [o.shape[2:] for o in outs] == [(25, 38), (13, 19), (7, 10), (4, 5), (2, 3)]


@pytest.mark.slow  # a dynamic export: about 30 s of CPU
def test_cli_dynamic_export_at_200x300(tmp_path: Path, capsys) -> None:
    """The CLI's default (dynamic) export at an example size that is no multiple of 128."""
    out = tmp_path / "x.onnx"
    rc = cli_main(["export", "--model", "spinenet49s", "--set", "filter_size_scale=0.125",
                   "--set", "endpoints_num_filters=8", "--size", "200", "300", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "dynamic batch and image size" in text and "max relative difference" in text
    outs = run_onnx(out, np.zeros((1, 3, 130, 97), np.float32))
    assert outs[0].shape == (1, 8, 17, 13)  # ceil(130 / 8), ceil(97 / 8)


def _image_folder(folder: Path, n: int = 4, size: tuple[int, int] = (96, 128)) -> Path:
    """Small PNGs with smooth structure (random blobs), for calibration."""
    from torchvision.io import write_png

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        low = torch.rand(3, size[0] // 16, size[1] // 16, generator=g)
        img = torch.nn.functional.interpolate(low[None], size=size, mode="bilinear", align_corners=False)[0]
        write_png((img * 255).to(torch.uint8), str(folder / f"img{i}.png"))
    return folder


def test_int8_backbone_export_quantizes_convs(tmp_path: Path, capsys) -> None:
    """`torchspine export --int8 --calibrate DIR`: a QDQ graph (int8 convs) whose outputs follow fp32."""
    import onnx

    from torchspine.interop.onnx import calibration_inputs, ExportResult

    folder = _image_folder(tmp_path / "calib")
    out = tmp_path / "bb_int8.onnx"
    rc = cli_main(["export", "--model", "spinenet49s", "--set", "filter_size_scale=0.25",
                   "--set", "endpoints_num_filters=16", "--static", "--size", "128", "--int8",
                   "--calibrate", str(folder), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "INT8" in text and "calibrated on 4 images" in text
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # Every conv (SpineNet-49S: 129) reads int8 weights and activations: in QDQ form both conv inputs
    # come out of DequantizeLinear nodes, the weight's from an int8 initializer.
    graph = onnx.load(str(out)).graph
    dq_out = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 129
    assert all(c.input[0] in dq_out and c.input[1] in dq_out and dq_out[c.input[1]].input[0] in int8 for c in convs)
    # On a calibration image, INT8 tracks the float32 graph: 8-bit steps are 1/255 of each
    # tensor's range; over ~40 layers the error stays a few percent of the largest output.
    res = ExportResult(str(out), "backbone", False, ("images",), ("p3",), False, (1, 3, 128, 128))
    x = calibration_inputs(folder, res, count=1)[0]
    torch.manual_seed(0)
    got = run_onnx(out, x)
    assert len(got) == 5 and got[0].shape == (1, 16, 16, 16)
    line = [s for s in text.splitlines() if s.startswith("INT8 vs float32")][0]
    assert float(line.rsplit(" ", 1)[1]) < 0.25, line


def test_int8_export_needs_a_calibration_folder(tmp_path: Path, capsys) -> None:
    base = ["export", "--model", "spinenet49s", "--set", "filter_size_scale=0.125", "--static", "--int8",
            "--out", str(tmp_path / "x.onnx")]
    assert cli_main(base) == 2
    assert "--int8 needs --calibrate" in capsys.readouterr().err
    assert cli_main(base + ["--calibrate", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(base + ["--calibrate", str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    # A detector is quantized without its post-processing (decode and NMS stay float32, outside).
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "imgs" / "a.png")
    det = ["export", "--model", "retinanet_spinenet49s", "--static", "--int8", "--calibrate", str(tmp_path / "imgs"),
           "--out", str(tmp_path / "d.onnx")]
    assert cli_main(det) == 2
    assert "--no-postprocess" in capsys.readouterr().err
