"""``torchspine train``: train a detector from a recipe file (default: the built-in demo
recipe on the built-in synthetic dataset). Runs under ``torchrun`` for several processes:
``torchrun --standalone --nproc_per_node=2 -m torchspine train ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torchspine.cli.common import add_device_argument, add_set_argument, image_size, int_at_least, parse_set

DEFAULT_RECIPE = "demo_synth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
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
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUTPUT_DIR (its config.json and checkpoint.pt; other arguments may be "
                        "left out, and those given must agree with the run)")
    p.add_argument("--weights", metavar="NAME_OR_FILE",
                   help="fine-tune: start from a saved model file, a run folder or a catalogue entry (backbone "
                        "always; the head when the classes match, else a fresh classification layer); see the "
                        "finetune recipe (--config finetune)")
    p.add_argument("--freeze-bn", action="store_true", help="keep the backbone's BatchNorm frozen (inference mode)")
    p.add_argument("--channels-last", action="store_true",
                   help="train in the channels_last memory layout (same math; see docs/benchmarks.md)")
    p.add_argument("--onednn-pointwise", action="store_true",
                   help="CPU: run the 1x1 convolutions through oneDNN (implies --channels-last; same math; "
                        "see docs/training.md)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute the backbone's scale-permuted blocks in the backward pass: less memory, "
                        "one more forward of the blocks, same results")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast (also on the CPU; sets amp=true, amp_dtype=bfloat16)")
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
    _PARSER_ACTIONS[:] = [a for a in p._actions if a.option_strings]


_PARSER_ACTIONS: list[argparse.Action] = []  # for naming a differing field by its flag (--resume)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the command line sets (``None`` flags left out)."""
    over: dict[str, Any] = {}
    for name in ("model", "train_ann", "train_images", "val_ann", "val_images", "image_size", "batch_size", "epochs",
                 "max_steps", "lr", "device", "output_dir", "eval_interval", "checkpoint_interval", "num_workers",
                 "num_threads", "seed"):
        v = getattr(args, name, None)
        if v is not None:
            over[name] = v
    for name in ("train_ann", "train_images", "val_ann", "val_images"):
        if name in over:  # the run's config.json must work from any folder
            over[name] = str(Path(over[name]).resolve())
    if getattr(args, "weights", None):
        w = Path(args.weights)
        over["weights"] = str(w.resolve()) if w.exists() else args.weights  # a file / run, or a catalogue name
    for flag, field in (("resume", "resume"), ("skip_bad_annotations", "skip_bad_annotations"),
                        ("freeze_bn", "freeze_bn"), ("channels_last", "channels_last"),
                        ("onednn_pointwise", "onednn_pointwise"),
                        ("activation_checkpointing", "activation_checkpointing"), ("bf16", "amp")):
        if getattr(args, flag, False):
            over[field] = True
    if getattr(args, "onednn_pointwise", False):
        over["channels_last"] = True  # the oneDNN route works on channels_last activations
    if getattr(args, "bf16", False):
        over["amp_dtype"] = "bfloat16"
    if getattr(args, "no_progress", False):
        over["progress"] = False
    sets = parse_set(getattr(args, "sets", []))
    from dataclasses import fields

    from torchspine.engine.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    for key in sets:
        if key not in known:  # else the error would blame the recipe file for a command-line value
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            inner = key.split(".", 1)[1] if key.startswith("model_overrides.") else key
            raise ValueError(f"--set {key}=...: {key!r} is not a training config field"
                             + (f" (did you mean {close[0]!r}?)" if close and inner == key else "")
                             + "; a model keyword goes in --set 'model_overrides={\"" + inner + "\": ...}' (a JSON "
                             "object of every model keyword: it replaces the recipe's model_overrides)")
    over.update(sets)
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
    over = config_overrides(args)
    out = over.get("output_dir") or load_config(args.config or DEFAULT_RECIPE).output_dir
    if args.resume and not (Path(out) / "config.json").is_file() and (Path(out) / "checkpoint.pt").is_file():
        # a checkpoint without the run's config (written by hand or by an old version): the arguments say it all
        cfg = load_config(args.config or DEFAULT_RECIPE, **over)
        if args.spec:
            cfg = cfg.replace(model_overrides={**cfg.model_overrides, "spec": args.spec})
    elif args.resume:
        from torchspine.engine.config import recipe_path
        from torchspine.engine.runs import resume_config
        from torchspine.utils import read_json

        recipe = read_json(recipe_path(args.config), what="recipe file") if args.config else None
        flags = {a.dest: a.option_strings[-1] for a in _PARSER_ACTIONS}
        flags.update({"model_overrides": "--set model_overrides / --spec", "progress": "--no-progress"})
        cfg = resume_config(out, over, flags=flags, recipe=recipe)
        if args.spec and cfg.model_overrides.get("spec") != args.spec:
            raise ValueError(f"--resume: --spec {args.spec!r} differs from the run's spec "
                             f"{cfg.model_overrides.get('spec')!r}; leave it out to continue that run")
    else:
        cfg = load_config(args.config or DEFAULT_RECIPE, **over)
        if args.spec:
            cfg = cfg.replace(model_overrides={**cfg.model_overrides, "spec": args.spec})
    if cfg.weights and not args.resume:
        from torchspine.engine.finetune import finetune_config

        cfg = finetune_config(cfg)
    result = train(cfg)
    if result:  # rank 0
        print(format_table(result))  # the trainer logs one line; the table is printed once, here
        print(f"{result['steps']} steps, {result['images_per_second']:.2f} img/s; outputs in {result['output_dir']}")
    return 0
