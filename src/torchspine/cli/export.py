"""``torchspine export``: a model (optionally with converted or trained weights) -> ONNX, checked in onnxruntime."""

from __future__ import annotations

import argparse
import json

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model name: a backbone (spinenet49), classifier (spinenet49_cls) or detector "
                        "(retinanet_spinenet49)")
    p.add_argument("--weights", default=None,
                   help="weights: a `torchspine convert` output (its recorded model settings are used) or a "
                        "safetensors / torch state dict for --model")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--size", type=int, nargs="+", default=[256], metavar="N",
                   help="example input size: N (square) or H W; the dynamic graph runs at any size")
    p.add_argument("--no-postprocess", action="store_true",
                   help="detectors: export raw head outputs (cls_logits, bbox_regression) instead of boxes after NMS")
    p.add_argument("--static", action="store_true",
                   help="fixed image size (legacy exporter, faster); default: dynamic batch and image size")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=JSON",
                   help="model keyword / spec override, e.g. --set num_classes=10 (repeatable)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")
    p.add_argument("--int8", action="store_true",
                   help="static INT8 quantization with onnxruntime's tools (QDQ; uint8 activations calibrated on "
                        "--calibrate, int8 per-channel weights); needs --calibrate")
    p.add_argument("--calibrate", default=None, metavar="DIR",
                   help="--int8: folder of representative images (resized to --size) for the activation ranges")
    p.add_argument("--calibrate-count", type=int, default=32, metavar="N",
                   help="--int8: calibrate on the first N images of DIR (default 32)")
    p.add_argument("--calibrate-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="--int8: how activation ranges are chosen (default minmax)")


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    from torchspine.cli.convert import _parse_sets
    from torchspine.models.registry import create_model

    overrides = _parse_sets(args.sets)
    if args.weights:
        from safetensors import safe_open

        if str(args.weights).endswith(".safetensors"):
            with safe_open(args.weights, framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") == "torchspine.converted/1":
                from safetensors.torch import load_file

                from torchspine.interop.convert import build_converted

                if meta["model"] != args.model:
                    raise ValueError(f"{args.weights} holds converted weights of {meta['model']}, not {args.model}")
                merged = {**json.loads(meta["overrides"]), **overrides}
                return build_converted(args.model, merged, load_file(args.weights))
            from safetensors.torch import load_file

            state = load_file(args.weights)
        else:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
        model = create_model(args.model, **overrides)
        model.load_state_dict(state, strict=True)
        return model.eval()
    return create_model(args.model, **overrides).eval()


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from torchspine.interop.onnx import export_onnx, verify_onnx

    if len(args.size) not in (1, 2):
        raise ValueError(f"--size takes N or H W, got {args.size}")
    if args.int8 and not args.calibrate:
        raise ValueError("--int8 needs --calibrate DIR (a folder of representative images)")
    if args.calibrate and not args.int8:
        raise ValueError("--calibrate is for --int8 exports")
    if args.int8 and not args.no_postprocess and "retinanet" in args.model:
        raise ValueError("--int8 quantizes the network only: export the detector with --no-postprocess (raw head "
                         "outputs; decode and NMS in float32 outside the graph). onnxruntime crashed on INT8 graphs "
                         "with post-processing inside")
    if args.int8 and not os.path.isdir(args.calibrate):
        raise FileNotFoundError(f"--calibrate {args.calibrate}: no such folder")
    h, w = (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size)
    model = _load_model(args)
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
