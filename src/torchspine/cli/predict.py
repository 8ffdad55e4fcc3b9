"""``torchspine predict``: run a detector on images or folders, draw the detections, and write
them in COCO result format.

Writes, under ``--out``: one drawn image per input (``<name>.png``; ``<name>_<i>.png`` when
names repeat), ``detections.json`` (COCO results: ``image_id``, ``category_id``, ``bbox``
``[x, y, w, h]``, ``score``, and RLE ``segmentation`` for Mask R-CNN) and ``images.json``
(``id``, ``file_name``, ``width``, ``height`` for each image id). An input that is missing or
cannot be decoded is reported by name on stderr and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from torchspine.analysis.visualize import class_names_for, draw_detections
from torchspine.cli.common import add_set_argument, image_size, parse_set
from torchspine.data.images import find_images, read_image
from torchspine.engine.evaluate import to_coco_results
from torchspine.engine.predict import predict
from torchspine.models.optimize import prepare_for_inference
from torchspine.models.registry import create_model, model_info
from torchspine.utils import atomic_write, atomic_write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--model", default="retinanet_spinenet49", help="registered detector name (default: %(default)s)")
    p.add_argument("--weights", default=None,
                   help="catalogue weights (coco, or a name from `torchspine weights list`; downloaded once), a "
                        "saved model, or a safetensors file / training checkpoint (torch.load weights_only); "
                        "without it the model is randomly initialised (a warning is printed)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the weights (default: the saved model's, else 91 for COCO)")
    p.add_argument("--image-size", type=image_size, default=None, help="target long side (default: the model's)")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="draw and write detections with at least this score (default: %(default)s)")
    add_set_argument(p, dest="overrides", help="extra model keyword (detector setting or SpineNet spec field), "
                                               "value JSON or a plain string, e.g. --set filter_size_scale=0.25; "
                                               "repeatable")
    p.add_argument("--no-optimize", action="store_true", help="skip BN folding and channels_last")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    arr = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = parse_set(args.overrides)
    if args.num_classes is not None or not args.weights:
        kwargs["num_classes"] = args.num_classes or 91
    kwargs.setdefault("score_thresh", args.score_thresh)  # the model's own post-NMS filter
    if args.image_size is not None:
        kwargs["image_size"] = args.image_size
    if model_info(args.model).task not in ("detector", "instance_segmentation"):
        raise ValueError(f"--model {args.model!r} is a {model_info(args.model).task}, not a detector "
                         "(try retinanet_spinenet49 or maskrcnn_spinenet49)")
    if args.weights:
        model = create_model(args.model, weights=args.weights, **kwargs)
    else:
        model = create_model(args.model, **kwargs)
        print("torchspine predict: warning: no --weights given, using random initialisation", file=sys.stderr)
    model.eval()
    info = getattr(model, "torchspine_info", {})
    # A saved model (models/saved.py) carries the file's category ids of its labels 1..K.
    category_ids = info.get("category_ids")
    if not args.no_optimize:
        model = prepare_for_inference(model)
    names = info.get("label_names") or class_names_for(getattr(model, "num_classes", kwargs.get("num_classes", 91)))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    files = find_images(args.inputs)
    if not files:
        raise ValueError(f"no images found in {args.inputs}")
    results: list[dict] = []
    images_meta: list[dict] = []
    failed = 0
    used_names: set[str] = set()
    for image_id, path in enumerate(files, start=1):
        try:
            image = read_image(path)
        except (FileNotFoundError, ValueError) as e:
            print(f"torchspine predict: skipping {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        t0 = time.perf_counter()
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
        results.extend(to_coco_results(det, image_id, score_thresh=args.score_thresh, category_ids=category_ids))
        images_meta.append({"id": image_id, "file_name": str(path), "width": int(image.shape[-1]),
                            "height": int(image.shape[-2]), "drawn": name})
        print(f"{path}: {int(keep.sum())} detections >= {args.score_thresh} ({ms:.0f} ms) -> {out_dir / name}")
    atomic_write_text(out_dir / "detections.json", json.dumps(results) + "\n")
    atomic_write_text(out_dir / "images.json", json.dumps(images_meta, indent=1) + "\n")
    print(f"wrote {len(results)} detections for {len(images_meta)} images to {out_dir / 'detections.json'}"
          + (f"; {failed} input(s) skipped" if failed else ""))
    return 1 if failed else 0
