"""``torchspine predict``: run a detector on images or folders, draw the detections, and write
them in COCO result format.

``--weights`` takes a run folder (``torchspine train --out``), a saved model file or a
weights file: a run or saved model brings its model, settings, image size, classes and label
names, so nothing has to be repeated (a flag that changes the trained image size is warned
about). Without ``--weights``, a run folder or ``.safetensors`` file given as the first input is
the model (``torchspine predict RUN img.jpg``, like ``torchspine eval RUN``). ``--tile SIZE`` cuts large images into overlapping tiles, predicts each at the model's
size and merges the boxes (torchspine.data.tiling).

Writes, under ``--out``: one drawn image per input (``<name>.png``; ``<name>_<i>.png`` when
names repeat), ``detections.json`` (COCO results: ``image_id``, ``category_id`` (the
annotation file's id), ``category_name``, ``bbox`` ``[x, y, w, h]``, ``score``, ``file_name``,
and RLE ``segmentation`` for Mask R-CNN) and ``images.json`` (``id``, ``file_name``, ``width``,
``height`` for each image id). Image ids come from ``--ann`` (a COCO file listing the images by
file name) when given, else they number the inputs 1.. in order. An input that is missing or
cannot be decoded is reported by name on stderr and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from torchspine.analysis.visualize import draw_detections
from torchspine.cli.common import (add_set_argument, fraction, image_size, int_at_least, is_saved_model,
                                   load_saved_model, parse_set)
from torchspine.data.images import find_images, read_image
from torchspine.engine.evaluate import to_coco_results
from torchspine.engine.predict import predict
from torchspine.models.optimize import prepare_for_inference
from torchspine.models.registry import create_model, model_info
from torchspine.utils import atomic_write, atomic_write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--weights", default=None, metavar="RUN_OR_FILE",
                   help="a training run folder or saved model file (brings model, settings, image size and class "
                        "names), catalogue weights (coco, or a name from `torchspine weights list`; downloaded "
                        "once), or a safetensors file / training checkpoint for --model; without it the model is "
                        "randomly initialised (a warning is printed)")
    p.add_argument("--model", default=None,
                   help="registered detector name, for catalogue or bare weights or none (default: the run's, else "
                        "retinanet_spinenet49)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-classes", type=int_at_least(1, "--num-classes"), default=None,
                   help="classes of bare weights (default: the saved model's, else 91 = COCO)")
    p.add_argument("--image-size", type=image_size, default=None,
                   help="target long side (default: the run's trained size, else the model's)")
    p.add_argument("--score-thresh", type=fraction("--score-thresh"), default=0.3,
                   help="draw and write detections with at least this score (default: %(default)s)")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="large images: predict on SIZE x SIZE tiles (e.g. the training tile size) and merge")
    p.add_argument("--overlap", type=float, default=0.2, metavar="FRACTION",
                   help="--tile: overlap of neighbouring tiles; make it larger than the objects (default %(default)s)")
    p.add_argument("--merge", choices=("nms", "weighted"), default="nms",
                   help="--tile: merge boxes across tiles by class-wise NMS or a score-weighted mean "
                        "(default %(default)s)")
    p.add_argument("--merge-iou", type=fraction("--merge-iou"), default=0.5, help="--tile: IoU above which boxes are merged")
    p.add_argument("--ann", default=None,
                   help="COCO annotation file listing the inputs: its image ids are used in detections.json")
    add_set_argument(p, dest="overrides", help="extra model keyword (detector setting or SpineNet spec field), "
                                               "value JSON or a plain string, e.g. --set filter_size_scale=0.25; "
                                               "repeatable")
    p.add_argument("--no-optimize", action="store_true", help="skip BN folding and channels_last")
    p.add_argument("--threads", type=int_at_least(1, "--threads"), default=None, help="torch CPU threads (default: torch's)")


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    arr = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def load_detector(args: argparse.Namespace) -> tuple[torch.nn.Module, list[str] | None, Callable[[int], int]]:
    """The model, its label names (index = label) and label -> the annotation file's category id."""
    from torchspine.engine.runs import TrainedModel

    kwargs = parse_set(args.overrides)
    kwargs.setdefault("score_thresh", args.score_thresh)  # the model's own post-NMS filter
    if args.image_size:
        kwargs["image_size"] = args.image_size
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.weights and is_saved_model(args.weights):  # a run folder or saved model: its own settings
        trained = load_saved_model(args.weights, args.model, kwargs)
        if args.image_size and trained.image_size and args.image_size != trained.image_size:
            print(f"torchspine predict: warning: --image-size {args.image_size} overrides the size the model was "
                  f"trained at ({trained.image_size}); detections may be much worse", file=sys.stderr)
    else:
        name = args.model or "retinanet_spinenet49"
        if model_info(name).task not in ("detector", "instance_segmentation"):
            raise ValueError(f"--model {name!r} is a {model_info(name).task}, not a detector "
                             "(try retinanet_spinenet49 or maskrcnn_spinenet49)")
        if not args.weights:
            kwargs.setdefault("num_classes", 91)
            model = create_model(name, **kwargs)
            print("torchspine predict: warning: no --weights given, using random initialisation", file=sys.stderr)
        else:  # catalogue weights (fetched once) or a state dict for --model
            if args.num_classes is None and not _looks_like_catalogue(args.weights):
                kwargs.setdefault("num_classes", 91)
            model = create_model(name, weights=args.weights, **kwargs)
        info = dict(getattr(model, "torchspine_info", None) or {})
        info.setdefault("num_classes", getattr(getattr(model, "head", None), "num_classes", None)
                        or kwargs.get("num_classes", 91))
        trained = TrainedModel(model=model, name=name, info=info, path=Path(str(args.weights or name)))
    return trained.model, trained.label_names, trained.category_id


def _looks_like_catalogue(weights: str) -> bool:
    return not Path(weights).exists() and os.sep not in weights and not weights.endswith((".safetensors", ".pt", ".pth"))


def _image_ids(ann: str | None, files: list[Path]) -> dict[Path, int]:
    if ann is None:
        return {f: i for i, f in enumerate(files, start=1)}
    from torchspine.utils import read_json

    data = read_json(ann, what="annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"--ann {ann}: expected a COCO object with an 'images' list")
    by_name: dict[str, int] = {}
    for k, im in enumerate(data["images"]):
        iid = im.get("id") if isinstance(im, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool) or not isinstance(im.get("file_name"), str):
            raise ValueError(f"--ann {ann}: images[{k}] needs an integer 'id' and a 'file_name', got {im!r:.120}")
        by_name.setdefault(Path(im["file_name"]).name, iid)
    missing = [f.name for f in files if f.name not in by_name]
    if missing:
        raise ValueError(f"--ann {ann}: no image named {missing[0]!r} (and {len(missing) - 1} more inputs) in its "
                         f"'images'")
    return {f: by_name[f.name] for f in files}


def _is_run_or_model(p: Path) -> bool:
    return (p.is_dir() and (p / "model.safetensors").is_file()) or (p.is_file() and p.suffix == ".safetensors")


def _take_model_from_inputs(args: argparse.Namespace) -> None:
    """``predict RUN IMAGES``: a run folder or saved model given first, without ``--weights``, is
    the model (otherwise its curves.png would be "predicted" by a random model). A run folder or
    model file anywhere else among the inputs is an error naming it."""
    first = Path(args.inputs[0])
    if not args.weights and _is_run_or_model(first):
        args.weights = args.inputs[0]
        args.inputs = list(args.inputs[1:])
        print(f"torchspine predict: using {first} as the model (same as --weights {first})", file=sys.stderr)
        if not args.inputs:
            raise ValueError(f"no images given after the model {first}: torchspine predict --weights {first} "
                             "IMAGES --out OUT")
    for item in args.inputs:
        if _is_run_or_model(Path(item)):
            raise ValueError(f"input {item} is a training run folder or saved model, not an image: give it as "
                             f"--weights {item}")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image_size is not None and args.image_size < 32:
        raise ValueError(f"--image-size must be >= 32, got {args.image_size}")
    if args.tile is not None:  # before the model is built: --tile 0 must not mean "no tiling"
        from torchspine.data.tiling import check_tiling

        try:
            check_tiling(args.tile, args.overlap)
        except ValueError as e:
            raise ValueError(f"--tile {args.tile} --overlap {args.overlap}: {e}") from None
    _take_model_from_inputs(args)
    # inputs and --ann first: a wrong path should not wait for the model to be built
    files = find_images(args.inputs)
    if not files:
        raise ValueError(f"no images found in {args.inputs}")
    ids = _image_ids(args.ann, files)
    model, names, category_id = load_detector(args)
    if not hasattr(model, "transform") or not (hasattr(model, "roi_heads") or hasattr(model, "head")):
        raise ValueError(f"{args.model or args.weights!r} is not a detector (try retinanet_spinenet49 or a "
                         f"detection run folder)")
    model.eval()
    if not args.no_optimize:
        model = prepare_for_inference(model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    images_meta: list[dict] = []
    failed = 0
    used_names: set[str] = set()
    for path in files:
        image_id = ids[path]
        try:
            image = read_image(path)
        except (FileNotFoundError, ValueError) as e:
            print(f"torchspine predict: skipping {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        t0 = time.perf_counter()
        if args.tile:
            from torchspine.engine.predict import predict_tiled

            det = predict_tiled(model, image, tile=args.tile, overlap=args.overlap, merge=args.merge,
                                iou_thresh=args.merge_iou)
        else:
            det = predict(model, [image])[0]
        ms = 1000 * (time.perf_counter() - t0)
        keep = det["scores"] >= args.score_thresh
        stem = path.stem
        name = f"{stem}.png"
        k = 1
        while name in used_names:
            name = f"{stem}_{k}.png"
            k += 1
        used_names.add(name)
        _save_png(out_dir / name, draw_detections(image, det, class_names=names, score_thresh=args.score_thresh))
        for r in to_coco_results(det, image_id, score_thresh=args.score_thresh):
            label = r["category_id"]
            r["category_id"] = category_id(label)
            if names is not None and 0 <= label < len(names):
                r["category_name"] = names[label]
            r["file_name"] = str(path)
            results.append(r)
        images_meta.append({"id": image_id, "file_name": str(path), "width": int(image.shape[-1]),
                            "height": int(image.shape[-2]), "drawn": name})
        print(f"{path}: {int(keep.sum())} detections >= {args.score_thresh} ({ms:.0f} ms"
              + (f", tiles of {args.tile}" if args.tile else "") + f") -> {out_dir / name}")
    atomic_write_text(out_dir / "detections.json", json.dumps(results) + "\n")
    atomic_write_text(out_dir / "images.json", json.dumps(images_meta, indent=1) + "\n")
    print(f"wrote {len(results)} detections for {len(images_meta)} images to {out_dir / 'detections.json'}"
          + (f"; {failed} input(s) skipped" if failed else ""))
    return 1 if failed else 0
