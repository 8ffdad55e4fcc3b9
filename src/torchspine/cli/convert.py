"""``torchspine convert``: an official TensorFlow SpineNet checkpoint -> torchspine safetensors.

Reads the checkpoint with numpy alone: TensorFlow is not needed."""

from __future__ import annotations

import argparse
import json
import sys

from torchspine.cli.common import add_set_argument, parse_set


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint",
                   help="TF checkpoint prefix (e.g. model.ckpt-231500 or ckpt-1), .index file or directory")
    p.add_argument("--model", required=True,
                   help="torchspine model name, e.g. spinenet49, spinenet_mobile49, retinanet_spinenet49, "
                        "maskrcnn_spinenet49, spinenet49_cls")
    p.add_argument("--out", required=True, help="output .safetensors file (rebuild it with torchspine.load_model)")
    p.add_argument("--activation", choices=("relu", "swish", "hard_swish"), default=None,
                   help="REQUIRED: the activation the checkpoint was trained with (checkpoints do not record it; "
                        "official tensorflow/tpu 350-epoch models: relu, '-best' models: swish, Model Garden "
                        "mobile: hard_swish)")
    p.add_argument("--codebase", choices=("tpu", "mg"), default=None,
                   help="tensorflow/tpu (TF1 names) or Model Garden (TF2 objects); detected when omitted")
    add_set_argument(p, help="extra model/spec override, e.g. --set endpoints_num_filters=256 (repeatable)")
    p.add_argument("--tf-python", default=None, help=argparse.SUPPRESS)  # accepted, no longer needed


def run(args: argparse.Namespace) -> int:
    from torchspine.interop.codebase import CODEBASE_NAMES
    from torchspine.interop.convert import convert_checkpoint, save_converted

    overrides = parse_set(args.sets)
    if args.activation:
        overrides["activation"] = args.activation
    if "activation" not in overrides:
        print("torchspine convert: error: --activation is required (relu, swish or hard_swish): a checkpoint does "
              "not record it and a wrong one gives wrong outputs without any error", file=sys.stderr)
        return 2
    try:
        result = convert_checkpoint(args.checkpoint, args.model, codebase=args.codebase, overrides=overrides)
    except (FileNotFoundError, ValueError) as e:
        print(f"torchspine convert: error: {e}", file=sys.stderr)
        return 2
    save_converted(result, args.out)
    n = sum(t.numel() for k, t in result.state_dict.items() if not k.endswith("num_batches_tracked"))
    print(f"converted {args.checkpoint} ({CODEBASE_NAMES[result.codebase]}) -> {args.out}: "
          f"{len(result.state_dict)} tensors, {n:,} values, model {args.model}")
    print(f"settings used: {json.dumps(result.settings, sort_keys=True)}")
    print("load it with torchspine.models.saved.load_model(path)")
    return 0
