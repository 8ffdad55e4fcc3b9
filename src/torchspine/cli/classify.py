"""``torchspine classify``: image classification with SpineNet (paper section 4.2).

Subcommands:

* ``data OUT``: write the built-in shapes dataset (image folder, offline);
* ``train --data DIR``: train a registered classifier (cosine schedule, label smoothing option);
* ``eval --data DIR --weights model.safetensors``: top-1 / top-5 on a split.
"""

from __future__ import annotations

import argparse
from typing import Any

from torchspine.cli.common import add_device_argument, add_set_argument, image_size, int_at_least, parse_set
from torchspine.data.classification import SHAPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="classify_command", metavar="SUBCOMMAND")
    d = sub.add_parser("data", help="write the built-in shapes classification dataset")
    d.add_argument("out", help="output folder (gets train/ and val/)")
    d.add_argument("--classes", type=int, default=4, help=f"number of shape classes (2-{len(SHAPES)})")
    d.add_argument("--train-per-class", type=int, default=64)
    d.add_argument("--val-per-class", type=int, default=16)
    d.add_argument("--size", type=int, default=64, help="image side in pixels")
    d.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="train a classifier on an image folder")
    t.add_argument("--data", required=True, help="image-folder root with train/ and val/")
    t.add_argument("--model", default="spinenet49_cls", help="registered classifier (default spinenet49_cls)")
    add_set_argument(t, dest="set",
                     help="model override, repeatable (e.g. filter_size_scale=0.25, feature_combination=concat)")
    t.add_argument("--out", default="runs/classify", help="output folder (checkpoint, metrics, weights)")
    t.add_argument("--image-size", type=image_size, default=224)
    t.add_argument("--batch-size", type=int_at_least(1, "batch size"), default=64)
    t.add_argument("--epochs", type=int, default=90)
    t.add_argument("--base-lr", type=float, default=0.1, help="learning rate per 256 images (linear scaling)")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--warmup-epochs", type=float, default=5.0)
    t.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--min-scale", type=float, default=0.08, help="RandomResizedCrop minimum area fraction")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    add_device_argument(t, default="cpu")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT/checkpoint.pt exists")

    e = sub.add_parser("eval", help="top-1 / top-5 of saved weights on an image folder split")
    e.add_argument("--data", required=True)
    e.add_argument("--weights", required=True, help="model.safetensors written by `classify train`")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int_at_least(1, "batch size"), default=64)
    e.add_argument("--workers", type=int_at_least(0, "--workers"), default=2)
    add_device_argument(e, default="cpu")


def _print_training(result: dict[str, Any]) -> None:
    for row in result["history"]:
        print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  "
              f"val top-1 {row.get('val_top1', float('nan')):6.2f}%  top-5 {row.get('val_top5', float('nan')):6.2f}%")
    print(f"weights: {result['weights']}")


def _print_eval(m: dict[str, Any]) -> None:
    print(f"{m['model']} on {m['data']}/{m['split']} ({m['images']} images): "
          f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}")


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "classify_command", None)
    if cmd == "data":
        from torchspine.data.classification import make_shapes_dataset

        counts = make_shapes_dataset(args.out, num_classes=args.classes, train_per_class=args.train_per_class,
                                     val_per_class=args.val_per_class, image_size=args.size, seed=args.seed)
        print(f"wrote {counts['train']} train and {counts['val']} val images ({args.classes} classes) to {args.out}")
        return 0
    if cmd == "train":
        from torchspine.engine.classification import ClassifyConfig, train_classifier

        cfg = ClassifyConfig(
            data=args.data, model=args.model, model_overrides=parse_set(args.set), out_dir=args.out,
            image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs, base_lr=args.base_lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, schedule=args.schedule,
            label_smoothing=args.label_smoothing, min_scale=args.min_scale, workers=args.workers, seed=args.seed,
            device=args.device, resume=not args.no_resume,
        ).validate()
        result = train_classifier(cfg)
        if result:  # rank 0
            _print_training(result)
        return 0
    if cmd == "eval":
        from torchspine.engine.classification import evaluate_saved_classifier

        _print_eval(evaluate_saved_classifier(args.weights, args.data, split=args.split, batch_size=args.batch_size,
                                              workers=args.workers, device=args.device))
        return 0
    raise ValueError("classify: choose a subcommand: data, train or eval (see `torchspine classify --help`)")


# ----------------------------------------------------------------------------------------
# `torchspine train --task classify` / `torchspine eval --task classify`: the detection
# commands build the classification config here and call the same library functions.
def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """``--task`` and ``--data`` for the train / eval commands."""
    p.add_argument("--task", choices=("detect", "classify"), default="detect",
                   help="detect (default) or classify (image folder; see `torchspine classify --help`)")
    p.add_argument("--data", help="classify: image-folder root with train/ and val/ (<class>/<image> inside)")


def config_from_train_args(args: argparse.Namespace, sets: dict[str, Any]):
    """The :class:`ClassifyConfig` of ``torchspine train --task classify --data DIR ...``:
    the train command's flags, then ``--set`` of any ClassifyConfig field (an unknown name is
    a model override, as is everything under ``model_overrides``)."""
    from dataclasses import fields as dc_fields

    from torchspine.engine.classification import ClassifyConfig

    if not getattr(args, "data", None):
        raise ValueError("train --task classify needs --data DIR (an image folder with train/ and val/)")
    known = {f.name for f in dc_fields(ClassifyConfig)}
    values: dict[str, Any] = {"data": args.data, "model": getattr(args, "model", None) or "spinenet49_cls",
                              "resume": bool(getattr(args, "resume", False)), "device": "auto"}
    overrides: dict[str, Any] = {}
    for ours, theirs in (("image_size", "image_size"), ("batch_size", "batch_size"), ("base_lr", "lr"),
                         ("out_dir", "output_dir"), ("workers", "num_workers"), ("seed", "seed"),
                         ("device", "device"), ("num_threads", "num_threads")):
        value = getattr(args, theirs, None)
        if value is not None:
            values[ours] = value
    if getattr(args, "epochs", None) is not None:
        values["epochs"] = int(round(args.epochs))
    if getattr(args, "no_progress", False):
        values["progress"] = False
    for flag in ("channels_last", "onednn_pointwise", "activation_checkpointing"):
        if getattr(args, flag, False):
            values[flag] = True
    if getattr(args, "onednn_pointwise", False):
        values["channels_last"] = True  # the oneDNN route works on channels_last activations
    if getattr(args, "bf16", False):
        values["amp"], values["amp_dtype"] = True, "bfloat16"
    for key, value in sets.items():
        if key == "model_overrides":
            if not isinstance(value, dict):
                raise ValueError(f"--set model_overrides=...: expected a JSON object, got {value!r}")
            overrides.update(value)
        elif key in known and key not in ("data", "model_overrides"):
            values[key] = value
        else:
            overrides[key] = value
    values["model_overrides"] = overrides
    return ClassifyConfig(**values).validate()


def run_train_task(args: argparse.Namespace, sets: dict[str, Any]) -> int:
    """``torchspine train --task classify``: build the config, train, print."""
    from torchspine.engine.classification import train_classifier

    result = train_classifier(config_from_train_args(args, sets))
    if result:
        _print_training(result)
    return 0


def run_eval_task(args: argparse.Namespace) -> int:
    """``torchspine eval --task classify --data DIR (--weights W | RUN)``: top-1 / top-5."""
    from torchspine.engine.classification import evaluate_saved_classifier

    if not getattr(args, "data", None):
        raise ValueError("eval --task classify needs --data DIR (an image folder with a val/ split)")
    weights = getattr(args, "weights", None) or getattr(args, "run", None)
    if not weights:
        raise ValueError("eval --task classify needs --weights FILE or a run folder")
    device = getattr(args, "device", None) or "auto"
    _print_eval(evaluate_saved_classifier(weights, args.data, split="val",
                                          batch_size=getattr(args, "batch_size", None) or 64, workers=0,
                                          device=device))
    return 0
