"""``torchspine export``: a model (optionally with converted or trained weights) -> ONNX, checked in onnxruntime."""

from __future__ import annotations

import argparse

import torch

from torchspine.cli.common import MIN_IMAGE_SIZE, add_set_argument, int_at_least, parse_set


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model name: a backbone (spinenet49), classifier (spinenet49_cls) or detector "
                        "(retinanet_spinenet49)")
    p.add_argument("--weights", default=None,
                   help="weights: a catalogue tag or name (coco, imagenet, retinanet_spinenet49.coco; see "
                        "`torchspine weights list`), a saved model (`torchspine convert` / train output: its recorded "
                        "settings are used) or a safetensors / torch state dict for --model")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--size", type=int_at_least(MIN_IMAGE_SIZE, "--size"), nargs="+", default=[256], metavar="N",
                   help="example input size: N (square) or H W; dynamic export needs multiples of 128, >= 256")
    p.add_argument("--no-postprocess", action="store_true",
                   help="detectors: export raw head outputs (cls_logits, bbox_regression) instead of boxes after NMS")
    p.add_argument("--static", action="store_true",
                   help="fixed image size (legacy exporter, faster); default: dynamic batch and image size")
    add_set_argument(p, help="model keyword / spec override, e.g. --set num_classes=10 (repeatable)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")


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
    if args.weights:
        # A saved model (trained, converted, downloaded) is rebuilt from its own settings; a
        # catalogue tag (coco, imagenet ...) is fetched; any other file is a state dict for --model.
        return create_model(args.model, weights=args.weights, **overrides).eval()
    return create_model(args.model, **overrides).eval()


def run(args: argparse.Namespace) -> int:
    from torchspine.interop.onnx import export_onnx, verify_onnx

    if len(args.size) not in (1, 2):
        raise ValueError(f"--size takes N or H W, got {args.size}")
    h, w = (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size)
    model = _load_model(args)
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
