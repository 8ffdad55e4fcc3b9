"""``torchspine eval``: COCO AP / AP50 / AP75 / APs / APm / APl (box, and mask for Mask
R-CNN) of trained weights, with pycocotools; prints the table and writes JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torchspine.cli.common import add_device_argument, image_size, run_folder_weights
from torchspine.utils import atomic_write_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="a training output folder (config.json + model.safetensors)")
    p.add_argument("--weights", help="weights file (safetensors or checkpoint.pt); default RUN/model.safetensors")
    p.add_argument("--model", help="detector name (default: from RUN/config.json)")
    p.add_argument("--model-overrides", default=None, help='JSON, e.g. \'{"filter_size_scale": 0.25}\'')
    p.add_argument("--image-size", type=image_size)
    p.add_argument("--ann", help="COCO annotation JSON (default: the run's validation set, else the built-in one)")
    p.add_argument("--images", help="image folder for --ann")
    p.add_argument("--max-images", type=int)
    p.add_argument("--batch-size", type=int, default=4)
    add_device_argument(p, default="auto")
    p.add_argument("--json", dest="json_out", help="write the metrics here (default RUN/eval.json or eval.json)")
    from torchspine.cli.classify import add_task_arguments

    add_task_arguments(p)  # --task classify --data DIR: top-1 / top-5 via torchspine.cli.classify


def run(args: argparse.Namespace) -> int:
    if getattr(args, "task", "detect") == "classify":
        from torchspine.cli.classify import run_eval_task

        return run_eval_task(args)
    from torchspine.data.coco import CocoDetection
    from torchspine.data.synth import ensure_synth
    from torchspine.engine.evaluate import evaluate_coco, format_table
    from torchspine.engine.trainer import resolve_device
    from torchspine.models.registry import model_info
    from torchspine.models.saved import load_model, load_weights, read_model_metadata

    cfg: dict = {}
    if args.run:
        cfg_path = Path(args.run) / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: is {args.run!r} a training output folder?")
        cfg = json.loads(cfg_path.read_text())
    weights = str(run_folder_weights(args.run, args.weights))  # errors name the missing file
    if args.ann:
        if not args.images:
            raise ValueError("--ann needs --images")
        ann, images = args.ann, args.images
    elif cfg.get("val_ann"):
        ann, images = cfg["val_ann"], cfg["val_images"]
    else:
        synth = ensure_synth()
        ann, images = synth["val_ann"], synth["val_images"]
    saved = None
    if not (args.model or args.model_overrides or args.image_size) and str(weights).endswith(".safetensors"):
        try:
            saved = read_model_metadata(weights)
        except ValueError:
            saved = None  # bare weights: rebuilt from the run's config below
    if saved is not None:
        # A saved model (torchspine.models.saved): it rebuilds itself, with its label mapping.
        model = load_model(weights)
        name = saved["model"]
        category_ids = saved["info"].get("category_ids")
        with_masks = model_info(name).task == "instance_segmentation"
        dataset = CocoDetection(ann, images, with_masks=with_masks, category_ids=category_ids)
    else:
        from torchspine.engine.build import build_model

        name = args.model or cfg.get("model")
        if not name:
            raise ValueError("give a training output folder or --model")
        overrides = dict(cfg.get("model_overrides") or {})
        if args.model_overrides:
            try:
                overrides.update(json.loads(args.model_overrides))
            except json.JSONDecodeError as e:
                raise ValueError(f"--model-overrides is not valid JSON: {e}") from e
        if cfg.get("stochastic_depth_rate") is not None:
            overrides.setdefault("stochastic_depth_rate", cfg["stochastic_depth_rate"])
        image_size = args.image_size or cfg.get("image_size") or 640
        with_masks = model_info(name).task == "instance_segmentation"
        dataset = CocoDetection(ann, images, with_masks=with_masks)
        category_ids = dataset.category_ids
        model = build_model(name, num_classes=dataset.num_classes, image_size=image_size, overrides=overrides)
        load_weights(model, weights)
    device = resolve_device(args.device)
    model.to(device)
    metrics = evaluate_coco(model, dataset, device=device, batch_size=args.batch_size, max_images=args.max_images,
                            with_masks=with_masks or None, progress=True, category_ids=category_ids)
    print(format_table(metrics))
    out = args.json_out or (str(Path(args.run) / "eval.json") if args.run else "eval.json")
    atomic_write_text(out, json.dumps({"model": name, "weights": str(weights), "annotations": str(ann),
                                       **metrics}, indent=2))
    print(f"metrics written to {out}")
    return 0
