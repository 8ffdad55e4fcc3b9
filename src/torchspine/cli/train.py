"""``torchspine train``: train a detector from a recipe file (default: the built-in demo
recipe on the built-in synthetic dataset). Runs under ``torchrun`` for several processes:
``torchrun --standalone --nproc_per_node=2 -m torchspine train ...``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from torchspine.cli.common import add_device_argument, add_set_argument, image_size, int_at_least, parse_set

DEFAULT_RECIPE = "demo_synth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_RECIPE,
                   help=f"recipe: a packaged name (see --list-recipes) or a JSON file (default {DEFAULT_RECIPE})")
    p.add_argument("--list-recipes", action="store_true", help="list the packaged recipes and exit")
    p.add_argument("--model", help="registered detector name, e.g. retinanet_spinenet49s")
    p.add_argument("--spec", help="backbone spec (JSON file or genome) replacing the model's own")
    p.add_argument("--train-ann", help="COCO annotation JSON of the training set (default: built-in dataset)")
    p.add_argument("--train-images", help="image folder of the training set")
    p.add_argument("--val-ann", help="COCO annotation JSON of the validation set")
    p.add_argument("--val-images", help="image folder of the validation set")
    p.add_argument("--image-size", type=image_size)
    p.add_argument("--batch-size", type=int_at_least(1, "batch size"), help="global batch (all processes)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float, help="learning rate at the recipe's lr_reference_batch")
    add_device_argument(p, default=None)
    p.add_argument("--output-dir", "--out", dest="output_dir")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    p.add_argument("--eval-interval", type=int, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--checkpoint-interval", type=int, help="checkpoint every N steps")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--num-threads", type=int, help="CPU threads per process")
    p.add_argument("--seed", type=int)
    p.add_argument("--skip-bad-annotations", action="store_true",
                   help="leave out records that fail the annotation check (and say how many) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_set_argument(p, help='any config field (value: JSON or a plain string): --set ema_decay=0.9998 --set '
                             '\'model_overrides={"filter_size_scale": 0.25}\'')
    from torchspine.cli.classify import add_task_arguments

    add_task_arguments(p)  # --task classify --data DIR: handled by torchspine.cli.classify


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the command line sets (``None`` flags left out)."""
    over: dict[str, Any] = {}
    for name in ("model", "train_ann", "train_images", "val_ann", "val_images", "image_size", "batch_size", "epochs",
                 "max_steps", "lr", "device", "output_dir", "eval_interval", "checkpoint_interval", "num_workers",
                 "num_threads", "seed"):
        v = getattr(args, name, None)
        if v is not None:
            over[name] = v
    for flag, field in (("resume", "resume"), ("skip_bad_annotations", "skip_bad_annotations")):
        if getattr(args, flag, False):
            over[field] = True
    if getattr(args, "no_progress", False):
        over["progress"] = False
    over.update(parse_set(getattr(args, "sets", [])))
    return over


def run(args: argparse.Namespace) -> int:
    from torchspine.engine.loop import NonFiniteLossError

    try:
        if getattr(args, "task", "detect") == "classify":
            from torchspine.cli.classify import run_train_task

            return run_train_task(args, parse_set(getattr(args, "sets", [])))
        return _train_detector(args)
    except NonFiniteLossError as e:
        print(f"torchspine train: {e}", file=sys.stderr)
        return 3


def _train_detector(args: argparse.Namespace) -> int:
    from torchspine.engine.config import list_recipes, load_config
    from torchspine.engine.evaluate import format_table
    from torchspine.engine.trainer import train

    if args.list_recipes:
        for name in list_recipes():
            print(name)
        return 0
    cfg = load_config(args.config, **config_overrides(args))
    if args.spec:
        cfg = cfg.replace(model_overrides={**cfg.model_overrides, "spec": args.spec})
    result = train(cfg)
    if result:  # rank 0
        print(format_table(result))
        print(f"{result['steps']} steps, {result['images_per_second']:.2f} img/s; outputs in {result['output_dir']}")
    return 0
