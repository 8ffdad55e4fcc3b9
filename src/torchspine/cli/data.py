"""``torchspine data``: ``synth`` writes the built-in dataset; ``check`` checks an
annotation file (bad boxes, bad sizes, unknown categories, duplicate ids, an empty
annotation list) and, with ``--images``, opens and decodes every image file (a truncated or
non-image file is named). Boxes that training clips or drops are listed with counts.
Exit status: 0 clean (repairs listed), 1 problems found or no annotations, 2 unreadable file."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchspine.cli.common import image_size, int_at_least


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = sub.add_parser("synth", help="write the built-in synthetic shapes dataset (COCO format)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-train", type=int_at_least(1, "--num-train"), default=None)
    s.add_argument("--num-val", type=int_at_least(1, "--num-val"), default=None)
    s.add_argument("--image-size", type=image_size, default=None)
    s.add_argument("--seed", type=int, default=None)
    c = sub.add_parser("check", help="check a COCO annotation file")
    c.add_argument("ann", help="annotation JSON")
    c.add_argument("--images", help="image folder: every image file must exist and decode")
    c.add_argument("--no-decode", action="store_true", help="with --images, only check that the files exist")
    c.add_argument("--workers", type=int_at_least(1, "--workers"), default=None,
                   help="threads decoding images (default: CPU count + 1, at most 8)")
    c.add_argument("--limit", type=int_at_least(1, "--limit"), default=100, help="records listed (default 100)")


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
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be an object with images/annotations/categories")
        if args.images is not None and not Path(args.images).is_dir():
            raise FileNotFoundError(f"image folder {args.images!r} not found")
        decode = args.images is not None and not args.no_decode
        report = check_coco(data, image_dir=args.images, source=str(path), decode=decode, workers=args.workers,
                            progress=True)
        if report.notes:
            print(report.notes_summary(limit=args.limit))
        if report.problems:
            print(report.summary(limit=args.limit))
            return 1
        decoded = f", {report.images_decoded} images decoded" if decode else ""
        print(f"{path}: {report.num_images} images, {report.num_annotations} annotations{decoded}, no problems")
        return 1 if not data["annotations"] else 0
    print("usage: torchspine data {synth,check} ...")
    return 2
