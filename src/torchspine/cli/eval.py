"""``torchspine eval``: COCO AP / AP50 / AP75 / APs / APm / APl (box, and mask for Mask
R-CNN) of trained weights, with pycocotools; prints the table and writes JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torchspine.cli.common import add_device_argument, image_size, int_at_least, run_folder_weights
from torchspine.utils import atomic_write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="a training output folder (config.json + model.safetensors)")
    p.add_argument("--weights", help="weights file (safetensors or checkpoint.pt); default RUN/model.safetensors")
    p.add_argument("--model", help="detector name (default: from RUN/config.json)")
    p.add_argument("--model-overrides", default=None, help='JSON, e.g. \'{"filter_size_scale": 0.25}\'')
    p.add_argument("--image-size", type=image_size)
    p.add_argument("--ann", help="COCO annotation JSON (default: the run's validation set, else the built-in one)")
    p.add_argument("--images", help="image folder for --ann")
    p.add_argument("--max-images", type=int_at_least(1, "--max-images"),
                   help="evaluate only the first N images (default: all)")
    p.add_argument("--batch-size", type=int_at_least(1, "batch size"), default=4)
    add_device_argument(p, default="auto")
    p.add_argument("--json", dest="json_out", help="write the metrics here (default RUN/eval.json or eval.json)")
    from torchspine.cli.classify import add_task_arguments

    add_task_arguments(p)  # --task classify --data DIR: top-1 / top-5 via torchspine.cli.classify


def _warn_other_classes(trained, dataset, ann: str) -> None:
    """Same category ids, other names (a model evaluated on another dataset's file): the AP
    would silently score circles as trees."""
    labels = trained.labels
    if labels is None or not trained.label_names:
        return
    theirs = dataset.category_names
    diff = [f"id {cid}: {n!r} vs {theirs[cid]!r}" for cid, n in zip(labels.category_ids, labels.names)
            if cid in theirs and str(theirs[cid]) != str(n)]
    if diff:
        print(f"torchspine eval: warning: the model's class names differ from the categories of {ann} "
              f"({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''}): was it trained on this dataset?",
              file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "task", "detect") == "classify":
        from torchspine.cli.classify import run_eval_task

        return run_eval_task(args)
    from torchspine.data.coco import CocoDetection
    from torchspine.data.synth import ensure_synth
    from torchspine.engine.evaluate import evaluate_coco, format_table
    from torchspine.utils import resolve_device
    from torchspine.engine.runs import load_run_config, load_trained, resolve_run_path
    from torchspine.models.registry import model_info
    from torchspine.models.saved import load_weights, read_model_metadata

    cfg: dict = load_run_config(args.run) if args.run else {}
    if args.run and not cfg:
        raise FileNotFoundError(f"{Path(args.run) / 'config.json'} not found: is {args.run!r} a training output "
                                f"folder?")
    weights = str(run_folder_weights(args.run, args.weights))  # errors name the missing file
    if args.ann:
        if not args.images:
            raise ValueError("--ann needs --images")
        ann, images = args.ann, args.images
    elif cfg.get("val_ann"):  # resolved wherever the command runs from
        ann = resolve_run_path(cfg["val_ann"], args.run, what="val_ann")
        images = resolve_run_path(cfg["val_images"], args.run, what="val_images")
    else:
        synth = ensure_synth()
        ann, images = synth["val_ann"], synth["val_images"]
    saved = None
    if not (args.model or args.model_overrides) and str(weights).endswith(".safetensors"):
        try:
            saved = read_model_metadata(weights)
        except ValueError:
            saved = None  # bare weights: rebuilt from the run's config below
    if saved is not None:
        # A saved model (torchspine.models.saved): it rebuilds itself, with its label mapping and image size.
        trained = load_trained(weights, **({"image_size": args.image_size} if args.image_size else {}))
        if args.image_size and trained.image_size and args.image_size != trained.image_size:
            print(f"torchspine eval: warning: --image-size {args.image_size} overrides the size the model was trained "
                  f"at ({trained.image_size})", file=sys.stderr)
        model, name = trained.model, trained.name
        labels = trained.labels  # None (no map recorded): the file's own, ascending ids
        with_masks = model_info(name).task == "instance_segmentation"
        dataset = CocoDetection(ann, images, with_masks=with_masks, labels=labels)
        _warn_other_classes(trained, dataset, ann)
    else:
        from torchspine.engine.build import build_model

        name = args.model or cfg.get("model")
        if not name:
            raise ValueError("give a training output folder or --model")
        overrides = dict(cfg.get("model_overrides") or {})
        if args.model_overrides:
            try:
                given = json.loads(args.model_overrides)
            except json.JSONDecodeError as e:
                raise ValueError(f"--model-overrides is not valid JSON: {e}") from e
            if not isinstance(given, dict):
                raise ValueError(f"--model-overrides must be a JSON object of model keywords, e.g. "
                                 f"'{{\"filter_size_scale\": 0.25}}', got {args.model_overrides!r}")
            overrides.update(given)
        if cfg.get("stochastic_depth_rate") is not None:
            overrides.setdefault("stochastic_depth_rate", cfg["stochastic_depth_rate"])
        image_size = args.image_size or cfg.get("image_size") or 640
        with_masks = model_info(name).task == "instance_segmentation"
        dataset = CocoDetection(ann, images, with_masks=with_masks)
        labels = dataset.labels
        model = build_model(name, num_classes=dataset.num_classes, image_size=image_size, overrides=overrides)
        load_weights(model, weights)
    device = resolve_device(args.device)
    model.to(device)
    metrics = evaluate_coco(model, dataset, device=device, batch_size=args.batch_size, max_images=args.max_images,
                            with_masks=with_masks or None, progress=True, labels=labels)
    print(format_table(metrics))
    out = args.json_out or (str(Path(args.run) / "eval.json") if args.run else "eval.json")
    atomic_write_text(out, json.dumps({"model": name, "weights": str(weights), "annotations": str(ann),
                                       **metrics}, indent=2))
    print(f"metrics written to {out}")
    return 0
