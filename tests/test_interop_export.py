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


def test_cli_export_rejects_bad_size(tmp_path: Path, capsys) -> None:
    rc = cli_main(["export", "--model", "spinenet49s", "--set", "filter_size_scale=0.25", "--size", "200",
                   "--out", str(tmp_path / "x.onnx")])
    assert rc == 2
    assert "multiple of 128" in capsys.readouterr().err


@pytest.mark.slow  # torch.export of a SpineNet takes about a minute on 2 busy cores
def test_dynamic_batch_and_image_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("spinenet49s", **TINY).eval()
    res = export_onnx(model, tmp_path / "dyn.onnx", image_size=(256, 384), dynamic=True)
    assert res.dynamic
    for shape in ((1, 3, 256, 256), (2, 3, 384, 256), (1, 3, 640, 512)):
        assert verify_onnx(model, res, torch.randn(*shape)) < TOL
