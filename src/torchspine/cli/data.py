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
    add_import_tile_arguments(sub)


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
    if args.data_command in ("import", "tile"):
        return run_import_tile(args)
    print("usage: torchspine data {synth,check,import,tile} ...")
    return 2


# --- data import / data tile (your own annotations; large images) ---------------------------

def add_import_tile_arguments(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("import", help="Pascal VOC XML / YOLO txt / CSV boxes -> COCO JSON (checked like data check)",
                       description="Convert box annotations to COCO JSON: class names kept, categories numbered "
                                   "1..K (sorted by name, or in --classes order), images 1..N sorted by file name.")
    i.add_argument("--format", required=True, choices=("voc", "yolo", "csv"), dest="import_format")
    i.add_argument("--ann", required=True,
                   help="voc: folder of .xml files (or one file); yolo: folder of .txt label files; csv: the CSV file")
    i.add_argument("--images", required=True, help="image folder (file names in the annotations are relative to it)")
    i.add_argument("--classes", help="class names file, one per line (sets the category order; yolo: index order)")
    i.add_argument("--out", required=True, help="output COCO JSON file")
    t = sub.add_parser("tile", help="cut a COCO dataset of large images into tiles (images + boxes) for training",
                       description="Cut each image into SIZE x SIZE tiles overlapping by FRACTION; a box is kept in "
                                   "a tile when at least --min-visible of its area is inside (clipped to the tile).")
    t.add_argument("ann", help="COCO annotation JSON")
    t.add_argument("--images", required=True, help="image folder of ANN")
    t.add_argument("--out", required=True, help="output folder: OUT/images/*.png and OUT/annotations.json")
    t.add_argument("--tile", type=int, required=True, metavar="SIZE", help="tile side in pixels")
    t.add_argument("--overlap", type=float, default=0.2, metavar="FRACTION",
                   help="overlap of neighbouring tiles (default %(default)s)")
    t.add_argument("--min-visible", type=float, default=0.5,
                   help="keep a cut box when at least this fraction of its area is in the tile (default %(default)s)")
    t.add_argument("--keep-empty", action="store_true", help="also write tiles without boxes")


def run_import_tile(args: argparse.Namespace) -> int:
    import json

    from torchspine.utils import atomic_write_text, read_json

    if args.data_command == "import":
        from torchspine.data.importers import import_annotations, read_class_names

        classes = read_class_names(args.classes) if args.classes else None
        result = import_annotations(args.import_format, args.ann, args.images, classes=classes)
        coco = result.coco
        if result.report.notes:
            print(result.report.notes_summary(limit=100))
        if not result.ok:
            print(result.report.summary(limit=100))
            print(f"not written: fix the {args.import_format} annotations above, then import again")
            return 1
        atomic_write_text(args.out, json.dumps(coco, indent=1) + "\n")
        names = ", ".join(f"{c['id']}={c['name']}" for c in coco["categories"])
        print(f"{args.out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, classes {names}; "
              f"no problems")
        return 0
    from torchspine.data.checks import check_coco, enforce
    from torchspine.data.tiling import tile_dataset

    path = Path(args.ann)
    data = read_json(path, what="annotation file")
    enforce(check_coco(data, image_dir=args.images, source=str(path)), skip_bad=False)
    tiles = tile_dataset(data, args.images, args.out, tile=args.tile, overlap=args.overlap,
                         min_visible=args.min_visible, keep_empty=args.keep_empty)
    out = Path(args.out) / "annotations.json"
    atomic_write_text(out, json.dumps(tiles, indent=1) + "\n")
    print(f"{out}: {len(tiles['images'])} tiles of {args.tile} px from {len(data['images'])} images, "
          f"{len(tiles['annotations'])} boxes (from {len(data['annotations'])}; "
          f"{tiles['tiling']['boxes_in_no_tile']} in no tile with >= {args.min_visible:.0%} visible); "
          f"images in {Path(args.out) / 'images'}")
    return 0
