"""``torchspine export``: a model (optionally with converted or trained weights) -> ONNX, checked in onnxruntime."""

from __future__ import annotations

import argparse
import sys

import torch

from torchspine.cli.common import (MIN_IMAGE_SIZE, add_set_argument, int_at_least, is_saved_model, load_saved_model,
                                   parse_set)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None, metavar="RUN_OR_FILE",
                   help="a training run folder or saved model file: the same as --weights RUN_OR_FILE")
    p.add_argument("--model", default=None,
                   help="model name: a backbone (spinenet49), classifier (spinenet49_cls) or detector "
                        "(retinanet_spinenet49); not needed with a run folder or saved model as --weights")
    p.add_argument("--weights", default=None, metavar="RUN_OR_FILE",
                   help="a training run folder or saved model file (its model, settings and trained image size are "
                        "used), a catalogue tag or name (coco, imagenet, retinanet_spinenet49.coco; see `torchspine "
                        "weights list`), or a safetensors / torch state dict for --model")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--size", type=int_at_least(MIN_IMAGE_SIZE, "--size"), nargs="+", default=None, metavar="N",
                   help="example input size: N (square) or H W (default: a run's trained image size, else 256); "
                        "the dynamic graph runs at any size")
    p.add_argument("--no-postprocess", action="store_true",
                   help="detectors: export raw head outputs (cls_logits, bbox_regression) instead of boxes after NMS")
    p.add_argument("--static", action="store_true",
                   help="fixed image size (legacy exporter, faster). Default: dynamic batch and image size for "
                        "backbones, classifiers and --no-postprocess detectors; a detector WITH post-processing "
                        "(the default) is always fixed: one 3 x H x W image of --size")
    add_set_argument(p, help="model keyword / spec override, e.g. --set num_classes=10 (repeatable)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")
    p.add_argument("--int8", action="store_true",
                   help="static INT8 quantization with onnxruntime's tools (QDQ; uint8 activations calibrated on "
                        "--calibrate, int8 per-channel weights); needs --calibrate")
    p.add_argument("--calibrate", default=None, metavar="DIR",
                   help="--int8: folder of representative images (resized to --size) for the activation ranges")
    p.add_argument("--calibrate-count", type=int_at_least(1, "--calibrate-count"), default=32, metavar="N",
                   help="--int8: calibrate on the first N images of DIR (default 32)")
    p.add_argument("--calibrate-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="--int8: how activation ranges are chosen (default minmax)")


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    try:
        return _load_model_unchecked(args)
    except (RuntimeError, KeyError) as e:  # a damaged file or weights of another model
        if not args.weights:
            raise
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"weights {args.weights}: cannot be loaded into {args.model} ({first})") from e


def _load_model_unchecked(args: argparse.Namespace) -> torch.nn.Module:
    from torchspine.models.registry import create_model

    overrides = parse_set(args.sets)
    if args.weights and is_saved_model(args.weights):  # a run folder or saved model: its own settings
        trained = load_saved_model(args.weights, args.model, overrides)
        args.model = trained.name
        args.trained_image_size = trained.image_size
        return trained.model.eval()
    if not args.model:
        raise ValueError("give --model NAME (or a run folder / saved model as --weights)")
    if args.weights:
        # A catalogue tag (coco, imagenet ...) is fetched; any other file is a state dict for --model.
        return create_model(args.model, weights=args.weights, **overrides).eval()
    return create_model(args.model, **overrides).eval()


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from torchspine.interop.onnx import export_onnx, model_kind, verify_onnx

    if args.source is not None:  # `torchspine export RUN --out m.onnx`, like `torchspine eval RUN`
        if args.weights is not None and args.weights != args.source:
            raise ValueError(f"two models given: {args.source} and --weights {args.weights}; give one")
        args.weights = args.source
    if args.int8 and not args.calibrate:
        raise ValueError("--int8 needs --calibrate DIR (a folder of representative images)")
    if args.calibrate and not args.int8:
        raise ValueError("--calibrate is for --int8 exports")
    if args.int8 and not os.path.isdir(args.calibrate):
        raise FileNotFoundError(f"--calibrate {args.calibrate}: no such folder")
    if args.int8:  # before the (slow) float export, not after it
        from torchspine.data.images import find_images

        if not find_images([args.calibrate]):
            raise ValueError(f"--calibrate {args.calibrate}: no image files (.jpg, .png, ...) in the folder")
    model = _load_model(args)
    trained = getattr(args, "trained_image_size", None)
    if args.size is None:
        args.size = [trained or 256]
    elif trained and max(args.size) != trained:
        print(f"torchspine export: warning: --size {' '.join(map(str, args.size))} differs from the size the model "
              f"was trained at ({trained})", file=sys.stderr)
    if len(args.size) not in (1, 2) or min(args.size) < 32:
        raise ValueError(f"--size takes N or H W (each >= 32), got {args.size}")
    h, w = (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size)
    if args.int8 and not args.no_postprocess and model_kind(model) == "retinanet":
        raise ValueError("--int8 quantizes the network only: export the detector with --no-postprocess (raw head "
                         "outputs; decode and NMS in float32 outside the graph). onnxruntime crashed on INT8 graphs "
                         "with post-processing inside")
    if args.int8:
        with tempfile.TemporaryDirectory() as tmp:
            return _export_int8(args, model, (h, w), os.path.join(tmp, "fp32.onnx"))
    result = export_onnx(model, args.out, image_size=(h, w), postprocess=not args.no_postprocess,
                         dynamic=not args.static)
    print(f"exported {args.model} ({result.kind}{', with post-processing' if result.postprocess else ''}) "
          f"-> {args.out}: inputs {list(result.input_names)} {list(result.example_shape)}, outputs "
          f"{list(result.output_names)}, {'dynamic batch and image size' if result.dynamic else 'fixed image size'}")
    if not args.no_check:
        x = torch.rand(3, h, w) if result.postprocess else torch.randn(1, 3, h, w)
        err = verify_onnx(model, result, x)
        print(f"onnxruntime vs PyTorch on a {list(x.shape)} input: max relative difference {err:.2e}")
        if err > 1e-3:
            print("warning: outputs differ more than 1e-3 of their magnitude")
            return 1
    return 0


def _export_int8(args: argparse.Namespace, model: torch.nn.Module, size: tuple[int, int], fp32_path: str) -> int:
    import numpy as np

    from torchspine.interop.onnx import (calibration_inputs, export_onnx, quantize_onnx_int8, run_onnx,
                                         verify_onnx)

    result = export_onnx(model, fp32_path, image_size=size, postprocess=not args.no_postprocess,
                         dynamic=not args.static)
    if not args.no_check:
        x = torch.rand(3, *size) if result.postprocess else torch.randn(1, 3, *size)
        err = verify_onnx(model, result, x)
        print(f"float32 graph: onnxruntime vs PyTorch max relative difference {err:.2e}")
        if err > 1e-3:
            print("warning: the float32 graph differs more than 1e-3 of its magnitude; not quantized")
            return 1
    inputs = calibration_inputs(args.calibrate, result, count=args.calibrate_count)
    quantize_onnx_int8(fp32_path, args.out, inputs, calibrate_method=args.calibrate_method)
    print(f"exported {args.model} ({result.kind}{', with post-processing' if result.postprocess else ''}) as INT8 "
          f"(static, calibrated on {len(inputs)} images of {args.calibrate}, {args.calibrate_method}) -> {args.out}: "
          f"inputs {list(result.input_names)} {list(result.example_shape)}, outputs {list(result.output_names)}, "
          f"{'dynamic batch and image size' if result.dynamic else 'fixed image size'}")
    if not args.no_check and not result.postprocess:
        # Informational: INT8 is not float32; this is the quantization error on a real image.
        got = run_onnx(args.out, inputs[0])
        ref = run_onnx(fp32_path, inputs[0])
        rel = max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-12)) for g, r in zip(got, ref))
        print(f"INT8 vs float32 graph on {len(inputs[0])} calibration image: max relative difference {rel:.2e}")
    return 0
