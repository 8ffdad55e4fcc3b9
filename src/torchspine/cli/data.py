"""``torchspine data``: ``synth`` writes the built-in dataset; ``check`` checks an
annotation file (boxes outside the image, bad sizes, unknown categories, missing files,
duplicate ids)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = sub.add_parser("synth", help="write the built-in synthetic shapes dataset (COCO format)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-train", type=int, default=None)
    s.add_argument("--num-val", type=int, default=None)
    s.add_argument("--image-size", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    c = sub.add_parser("check", help="check a COCO annotation file")
    c.add_argument("ann", help="annotation JSON")
    c.add_argument("--images", help="image folder (also checks that every image file exists)")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from torchspine.data.synth import SynthConfig, generate_synth

        over = {k: v for k, v in (("num_train", args.num_train), ("num_val", args.num_val),
                                  ("image_size", args.image_size), ("seed", args.seed)) if v is not None}
        paths = generate_synth(args.out, SynthConfig(**over))
        for key, path in paths.items():
            print(f"{key:13s} {path}")
        return 0
    if args.data_command == "check":
        from torchspine.data.checks import check_coco

        from torchspine.utils import read_json

        path = Path(args.ann)
        data = read_json(path, what="annotation file")
        report = check_coco(data, image_dir=args.images, source=str(path))
        if report.problems:
            print(report.summary(limit=100))
            return 1
        print(f"{path}: {len(data['images'])} images, {len(data['annotations'])} annotations, no problems")
        return 0
    print("usage: torchspine data {synth,check} ...")
    return 2
