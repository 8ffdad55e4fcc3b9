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

Exporters: the dynamo exporter (``torch.export``) gives dynamic batch and image size for
backbones, classifiers and dense RetinaNet outputs, at **any** image size (200x300 included):
SpineNet's graph computes the level sizes ``ceil(H / 2**l)``, the nearest-resize targets and
the TF 'SAME' pads from the input size, and for the export these are written in integer
arithmetic only (:func:`_export_twin` swaps in pad modules with the same math;
:func:`torchspine.layers.resample.resize_nearest` always resizes to the symbolic target size),
so nothing is fixed to the example's size or parity. The dynamo exporter fails inside
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

from torchspine.models.backbone import SpineNet
from torchspine.utils import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ExportResult", "calibration_inputs", "export_onnx", "model_kind", "quantize_onnx_int8", "run_onnx",
           "verify_onnx"]

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
        image_size: the example input's ``(H, W)``; the dynamic graph runs at any size.
        batch_size: the example batch (dynamic export keeps the batch symbolic anyway, and
            traces with a batch of at least 2: torch.export fixes a size-1 dimension).
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
        if dynamic:
            wrapper = _wrap_twin(wrapper)
        example = (torch.randn(max(batch_size, 2) if dynamic else batch_size, 3, h, w),)
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
                from torch.export import Dim

                # positional (a tuple), so the wrapped forward's argument name does not matter;
                # Dim.DYNAMIC: torch.export derives the valid range (every size, checked in tests).
                dynamic_shapes = ({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},)
                prog = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset,
                                         input_names=list(inputs), output_names=list(outputs),
                                         dynamic_shapes=dynamic_shapes, verbose=False)
                prog.save(tmp)

    with torch.no_grad():
        atomic_write(path, write)
    log.info("exported %s (%s%s) to %s", type(model).__name__, kind, " + post-processing" if postprocess else "", path)
    return ExportResult(str(path), kind, postprocess, inputs, outputs, dynamic, tuple(example[0].shape))


def _same_pads(size, kernel: int, stride: int, dilation: int = 1):
    """TF 'SAME' (before, after) pads in integer arithmetic only, so a symbolic size stays symbolic
    (:func:`torchspine.layers.conv.same_pad_amounts` uses ``math.ceil(size / stride)``, which
    torch.export resolves for the example size: the exported pads were fixed to its parity)."""
    out = (size + stride - 1) // stride
    total = torch.sym_max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _ExportConv2dSame(nn.Module):
    """Export twin of :class:`~torchspine.layers.conv.Conv2dSame` (same weights, same math):
    explicit zero pad by symbolic amounts, then an unpadded conv."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        ph = _same_pads(x.shape[-2], c.kernel_size[0], c.stride[0], c.dilation[0])
        pw = _same_pads(x.shape[-1], c.kernel_size[1], c.stride[1], c.dilation[1])
        x = torch.nn.functional.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return torch.nn.functional.conv2d(x, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


class _ExportMaxPool2dSame(nn.Module):
    """Export twin of :class:`~torchspine.layers.conv.MaxPool2dSame`: -inf pad by symbolic amounts."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = _same_pads(x.shape[-2], self.kernel_size, self.stride)
        pw = _same_pads(x.shape[-1], self.kernel_size, self.stride)
        x = torch.nn.functional.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
        return torch.nn.functional.max_pool2d(x, self.kernel_size, self.stride)


def _export_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose size-dependent 'SAME' pads are computed symbolically (for the
    dynamic export); the parameters are shared, not copied."""
    import copy

    from torchspine.layers.conv import Conv2dSame, MaxPool2dSame

    memo = {id(p): p for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    twin = copy.deepcopy(model, memo)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dSame):
                setattr(parent, name, _ExportConv2dSame(child))
            elif isinstance(child, MaxPool2dSame):
                setattr(parent, name, _ExportMaxPool2dSame(child.kernel_size, child.stride))
    return twin


def _wrap_twin(wrapper: nn.Module) -> nn.Module:
    """The export wrapper around :func:`_export_twin` of its model (shared weights)."""
    if isinstance(wrapper, (_BackboneOutputs, _DenseRetinaNet)):
        return type(wrapper)(_export_twin(wrapper.model)).eval()
    return _export_twin(wrapper).eval()


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


# Ops quantized by the INT8 export: the network's convolutions and the ops between them (the
# merges' adds, the pools and resizes) so that activations stay in int8 from one conv to the
# next. Pre-processing (Sub / Div), anchors, box decoding and NMS stay float32.
INT8_OP_TYPES = ("Conv", "Add", "MaxPool", "Resize", "Relu")


def calibration_inputs(images_dir: str | os.PathLike, result: ExportResult, *, count: int = 32,
                       mean: tuple[float, float, float] = IMAGENET_MEAN,
                       std: tuple[float, float, float] = IMAGENET_STD) -> list[np.ndarray]:
    """Calibration inputs for an exported graph from the images in ``images_dir`` (the first
    ``count`` readable ones, sorted by name; an unreadable image is skipped with a warning),
    each resized to the export's example size.

    A detector with post-processing takes the raw ``(3, H, W)`` image in [0, 1] (its graph
    normalises); the other graphs take the ImageNet-normalised batch ``(1, 3, H, W)`` that the
    detector transform and the classifiers' pre-processing produce.
    """
    from torchspine.data.images import find_images, read_image

    folder = os.fspath(images_dir)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--calibrate {folder}: no such folder")
    if count < 1:
        raise ValueError(f"calibration needs at least one image, got count={count}")
    files = find_images([folder])
    if not files:
        raise ValueError(f"--calibrate {folder}: no image files (.jpg, .png, ...) in the folder")
    h, w = result.example_shape[-2:]
    out, bad = [], []
    for f in files:
        if len(out) == count:
            break
        try:  # an unreadable image is skipped (named), as predict does; the next one takes its place
            img = read_image(f).float()[None] / 255.0
        except (FileNotFoundError, ValueError) as e:
            bad.append(str(e))
            log.warning("calibration: skipping %s", e)
            continue
        img = torch.nn.functional.interpolate(img, size=(h, w), mode="bilinear", align_corners=False,
                                              antialias=True).clamp_(0, 1)
        if result.postprocess:
            out.append(img[0].numpy())
        else:
            m = torch.tensor(mean).view(1, 3, 1, 1)
            sd = torch.tensor(std).view(1, 3, 1, 1)
            out.append(((img - m) / sd).numpy())
    if not out:
        raise ValueError(f"--calibrate {folder}: none of its {len(files)} image files can be read (first: {bad[0]})")
    return out


def quantize_onnx_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, inputs: list[np.ndarray], *,
                       per_channel: bool = True, calibrate_method: str = "minmax") -> str:
    """Static INT8 quantization of an exported float32 graph with onnxruntime's tools.

    ``onnxruntime.quantization.quantize_static`` in QDQ format (QuantizeLinear /
    DequantizeLinear pairs that onnxruntime and OpenVINO fuse into int8 kernels): uint8
    activations with ranges calibrated on ``inputs`` (``calibrate_method``: ``minmax``,
    ``percentile`` or ``entropy``), int8 weights, per output channel by default. Only
    :data:`INT8_OP_TYPES` are quantized. The graph is first pre-processed
    (``quant_pre_process``: shape inference and graph optimisation), as onnxruntime
    recommends. The output is written atomically; returns its path.
    """
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    from torchspine.utils import atomic_write

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method {calibrate_method!r}: expected one of {sorted(methods)}")
    if not inputs:
        raise ValueError("INT8 quantization needs at least one calibration input")
    import onnx

    name = onnx.load(os.fspath(fp32_path), load_external_data=False).graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {name: x}

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        try:
            quant_pre_process(os.fspath(fp32_path), pre, skip_symbolic_shape=True)
        except Exception as e:  # pre-processing is an optimisation; quantize the graph as exported
            log.warning("quant_pre_process failed (%s); quantizing the exported graph as is", e)
            pre = os.fspath(fp32_path)

        if any(n.op_type == "NonMaxSuppression" for n in onnx.load(pre, load_external_data=False).graph.node):
            # Measured: onnxruntime 1.32 segfaulted running such a graph quantized (even with only the
            # backbone / head nodes quantized), on images where a level had no candidate.
            raise ValueError(f"{fp32_path}: a detector graph with post-processing (NMS) inside; quantize the dense "
                             "graph (export_onnx(..., postprocess=False)) and decode + NMS in float32 outside")

        def write(tmp_out: str) -> None:
            quantize_static(pre, tmp_out, _Reader(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(INT8_OP_TYPES), per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[calibrate_method],
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})

        atomic_write(out_path, write)
    log.info("INT8 (static, QDQ, %d calibration inputs) -> %s", len(inputs), out_path)
    return os.fspath(out_path)
