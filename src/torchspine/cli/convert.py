"""``torchspine convert``: an official TensorFlow SpineNet checkpoint -> torchspine safetensors."""

from __future__ import annotations

import argparse
import json
import sys

from torchspine.cli.common import add_set_argument, parse_set


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="TF checkpoint prefix (e.g. model.ckpt-231500 or ckpt-1) or directory")
    p.add_argument("--model", required=True,
                   help="torchspine model name, e.g. spinenet49, spinenet_mobile49, retinanet_spinenet49")
    p.add_argument("--out", required=True, help="output .safetensors file (spec overrides stored as metadata)")
    p.add_argument("--codebase", choices=("tpu", "mg"), default=None,
                   help="tensorflow/tpu (TF1 names) or Model Garden (TF2 objects); detected when omitted")
    p.add_argument("--activation", choices=("relu", "swish", "hard_swish"), default=None,
                   help="the activation the checkpoint was trained with (checkpoints do not record it; "
                        "official RetinaNet yamls use swish)")
    add_set_argument(p, help="extra model/spec override, e.g. --set num_classes=91 (repeatable)")
    p.add_argument("--tf-python", default=None,
                   help="Python interpreter with TensorFlow, if this one has none (or TORCHSPINE_TF_PYTHON)")


def run(args: argparse.Namespace) -> int:
    from torchspine.interop.convert import convert_checkpoint, save_converted

    overrides = parse_set(args.sets)
    if args.activation:
        overrides["activation"] = args.activation
    try:
        result = convert_checkpoint(args.checkpoint, args.model, codebase=args.codebase, overrides=overrides,
                                    tf_python=args.tf_python)
    except ImportError as e:
        print(f"torchspine convert: error: {e}", file=sys.stderr)
        return 2
    save_converted(result, args.out)
    n = sum(t.numel() for k, t in result.state_dict.items() if not k.endswith("num_batches_tracked"))
    print(f"converted {args.checkpoint} ({'Model Garden' if result.codebase == 'mg' else 'tensorflow/tpu'}) "
          f"-> {args.out}: {len(result.state_dict)} tensors, {n:,} values, model {args.model} "
          f"with {json.dumps(result.overrides, sort_keys=True)}")
    print("load it with torchspine.interop.convert.load_converted(path)")
    return 0
