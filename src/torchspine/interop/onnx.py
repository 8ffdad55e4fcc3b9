"""ONNX export of backbones, classifiers and RetinaNet, checked with onnxruntime.

What is exported (``kind`` is detected from the model):

* ``backbone`` (:class:`~torchspine.models.backbone.SpineNet`): input ``images`` ``(N, 3, H, W)``,
  outputs ``p3`` ... ``p7``;
* ``classifier``: input ``images``, output ``logits`` ``(N, num_classes)``;
* ``retinanet`` without post-processing (``postprocess=False``): the normalised batch through
  backbone and head (``SpineNetRetinaNet.forward_dense``), outputs ``cls_logits (N, HWA, C)``
  and ``bbox_regression (N, HWA, 4)``;
* ``retinanet`` with post-processing (``postprocess=True``, default for detectors): the whole
  torchvision detector (resize/pad/normalise transform, anchors, box decoding, NMS) on one
  ``(3, H, W)`` image in [0, 1], outputs ``boxes``, ``scores``, ``labels``.

Exporters (torch 2.x ``torch.onnx.export``): the dynamo exporter (``torch.export``) gives
dynamic batch and image size for backbones, classifiers and dense RetinaNet outputs. SpineNet's
graph computes 'SAME' pads and nearest-resize factors from the input size, which torch.export
can only keep symbolic when height and width are multiples of 2**max_level (128 for P7) and at
least 256, so those are the dynamic ranges. The dynamo exporter fails inside
``torchvision.ops.batched_nms``, so a detector with post-processing uses the legacy TorchScript
exporter (``dynamo=False``), whose graph is fixed to the traced image size and to batch 1
(resize or pad images to that size first). ``dynamic=False`` uses the legacy exporter for the
other kinds too: fixed image size, symbolic batch, and an export several times faster.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from torchspine.models.backbone import SpineNet, find_backbone

__all__ = ["ExportResult", "export_onnx", "model_kind", "run_onnx", "verify_onnx"]

log = logging.getLogger(__name__)

Kind = Literal["backbone", "classifier", "retinanet"]


def model_kind(model: nn.Module) -> Kind:
    """``backbone``, ``classifier`` or ``retinanet`` (what :func:`export_onnx` can export)."""
    if isinstance(model, SpineNet):
        return "backbone"
    if hasattr(model, "forward_dense") and hasattr(model, "head") and hasattr(model, "anchor_generator"):
        return "retinanet"
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):
        return "classifier"
    raise ValueError(f"cannot export {type(model).__name__}: expected a SpineNet backbone, a classifier "
                     "(forward_features/forward_head) or a RetinaNet (forward_dense)")


class _BackboneOutputs(nn.Module):
    """Tuple outputs in level order (ONNX graphs have positional outputs)."""

    def __init__(self, model: SpineNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(images).values())


class _DenseRetinaNet(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_dense(images)
        return out["cls_logits"], out["bbox_regression"]


class _FullRetinaNet(nn.Module):
    """One image in, the first (only) detection dict out as a tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        det = self.model([image])[0]
        return det["boxes"], det["scores"], det["labels"]


@dataclass(frozen=True)
class ExportResult:
    path: str
    kind: str
    postprocess: bool
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic: bool
    example_shape: tuple[int, ...]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: tuple[int, int] = (256, 256),
    batch_size: int = 1,
    postprocess: bool | None = None,
    dynamic: bool = True,
    opset: int = 18,
) -> ExportResult:
    """Export ``model`` (eval mode) to ONNX at ``path`` (written atomically).

    Args:
        image_size: the example input's ``(H, W)``; for dynamic export a multiple of
            ``2**max_level`` of at least ``2 * 2**max_level`` (256 for P3-P7).
        batch_size: the example batch (dynamic export keeps the batch symbolic anyway).
        postprocess: detectors only; ``True`` (default) exports transform + NMS.
        dynamic: symbolic batch and image size with the dynamo exporter; ``False`` uses the
            faster legacy exporter with a fixed image size and a symbolic batch. Detectors with
            post-processing are always fixed-size, batch 1.
        opset: ONNX opset.
    """
    from torchspine.utils import atomic_write

    kind = model_kind(model)
    model = model.eval()
    h, w = image_size
    if kind == "retinanet" and postprocess is None:
        postprocess = True
    postprocess = bool(postprocess) and kind == "retinanet"

    if postprocess:
        wrapper: nn.Module = _FullRetinaNet(model)
        example: tuple[torch.Tensor, ...] = (torch.rand(3, h, w),)
        inputs, outputs = ("image",), ("boxes", "scores", "labels")
        dynamic = False
    else:
        if kind == "backbone":
            wrapper = _BackboneOutputs(model)
            outputs = tuple(model.out_channels)
        elif kind == "classifier":
            wrapper, outputs = model, ("logits",)
        else:
            wrapper, outputs = _DenseRetinaNet(model), ("cls_logits", "bbox_regression")
        example = (torch.randn(batch_size, 3, h, w),)
        inputs = ("images",)
    wrapper = wrapper.eval()

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if postprocess or not dynamic:
                # Legacy TorchScript exporter: fixed image size; the batch stays dynamic when the
                # graph allows it (not with post-processing, which takes one image).
                axes = None if postprocess else {name: {0: "batch"} for name in inputs + outputs}
                torch.onnx.export(wrapper, example, tmp, dynamo=False, opset_version=max(opset, 11),
                                  input_names=list(inputs), output_names=list(outputs), dynamic_axes=axes)
            else:
                dynamic_shapes = None
                if dynamic:
                    from torch.export import Dim

                    unit = 2 ** _max_level(model)
                    if h % unit or w % unit or h < 2 * unit or w < 2 * unit:
                        raise ValueError(f"dynamic export needs an example image size that is a multiple of "
                                         f"{unit} and at least {2 * unit}, got {h}x{w}")
                    # positional (a tuple), so the wrapped forward's argument name does not matter
                    dynamic_shapes = ({0: Dim("batch", min=1, max=1024),
                                       2: unit * Dim("height_units", min=2, max=64),
                                       3: unit * Dim("width_units", min=2, max=64)},)
                prog = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset,
                                         input_names=list(inputs), output_names=list(outputs),
                                         dynamic_shapes=dynamic_shapes, verbose=False)
                prog.save(tmp)

    with torch.no_grad():
        atomic_write(path, write)
    log.info("exported %s (%s%s) to %s", type(model).__name__, kind, " + post-processing" if postprocess else "", path)
    return ExportResult(str(path), kind, postprocess, inputs, outputs, dynamic, tuple(example[0].shape))


def _max_level(model: nn.Module) -> int:
    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError(f"{type(model).__name__} has no SpineNet backbone")
    return backbone.spec.max_level


def run_onnx(path: str | os.PathLike, *inputs: np.ndarray) -> list[np.ndarray]:
    """Run an exported file with onnxruntime on CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, inputs)))


def verify_onnx(model: nn.Module, result: ExportResult, x: torch.Tensor) -> float:
    """Largest |onnxruntime - PyTorch| over all outputs, relative to the largest |PyTorch| output."""
    model = model.eval()
    with torch.no_grad():
        if result.postprocess:
            ref = _FullRetinaNet(model)(x)
        elif result.kind == "backbone":
            ref = tuple(model(x).values())
        elif result.kind == "classifier":
            ref = (model(x),)
        else:
            ref = _DenseRetinaNet(model)(x)
    got = run_onnx(result.path, x.numpy())
    if len(got) != len(ref):
        raise ValueError(f"{result.path}: {len(got)} outputs, PyTorch gives {len(ref)}")
    worst, scale = 0.0, 0.0
    for g, r in zip(got, ref):
        r = r.numpy()
        if g.shape != r.shape:
            raise ValueError(f"{result.path}: output shape {g.shape} vs PyTorch {r.shape}")
        if r.size:
            worst = max(worst, float(np.abs(g.astype(np.float64) - r).max()))
            scale = max(scale, float(np.abs(r).max()))
    return worst / scale if scale else worst
