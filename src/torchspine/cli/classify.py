"""``torchspine classify``: image classification with SpineNet (paper section 4.2).

Subcommands:

* ``data OUT``: write the built-in shapes dataset (image folder, offline);
* ``train --data DIR``: train a registered classifier (cosine schedule, label smoothing option);
* ``eval --data DIR --weights model.safetensors``: top-1 / top-5 on a split.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from torchspine.data.classification import SHAPES


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected name=value (e.g. filter_size_scale=0.25)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


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
    t.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="model override, repeatable (e.g. filter_size_scale=0.25, feature_combination=concat)")
    t.add_argument("--out", default="runs/classify", help="output folder (checkpoint, metrics, weights)")
    t.add_argument("--image-size", type=int, default=224)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--epochs", type=int, default=90)
    t.add_argument("--base-lr", type=float, default=0.1, help="learning rate per 256 images (linear scaling)")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--warmup-epochs", type=float, default=5.0)
    t.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--min-scale", type=float, default=0.08, help="RandomResizedCrop minimum area fraction")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")

    e = sub.add_parser("eval", help="top-1 / top-5 of saved weights on an image folder split")
    e.add_argument("--data", required=True)
    e.add_argument("--weights", required=True, help="model.safetensors written by `classify train`")
    e.add_argument("--split", default="val")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", default="cpu")


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
            data=args.data, model=args.model, model_overrides=_parse_set(args.set), out_dir=args.out,
            image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs, base_lr=args.base_lr,
            weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, schedule=args.schedule,
            label_smoothing=args.label_smoothing, min_scale=args.min_scale, workers=args.workers, seed=args.seed,
            device=args.device, resume=not args.no_resume,
        ).validate()
        result = train_classifier(cfg)
        for row in result["history"]:
            print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  "
                  f"val top-1 {row['val_top1']:6.2f}%  top-5 {row['val_top5']:6.2f}%")
        print(f"weights: {result['weights']}")
        return 0
    if cmd == "eval":
        from torchspine.data.classification import classification_transforms, image_folder
        from torchspine.engine.classification import _loader, evaluate_classifier, load_classifier

        model, info = load_classifier(args.weights, device=args.device)
        dataset = image_folder(args.data, args.split, classification_transforms(info["image_size"], train=False))
        if info["classes"] and dataset.classes != info["classes"]:
            raise ValueError(f"{args.data}/{args.split}: classes {dataset.classes} differ from the model's "
                             f"{info['classes']}")
        loader = _loader(dataset, batch_size=args.batch_size, train=False, workers=args.workers, seed=0)
        m = evaluate_classifier(model, loader, device=args.device)
        print(f"{info['model']} on {args.data}/{args.split} ({m['images']} images): "
              f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}")
        return 0
    raise ValueError("classify: choose a subcommand: data, train or eval (see `torchspine classify --help`)")


# ----------------------------------------------------------------------------------------
# `torchspine train --task classify` / `torchspine eval --task classify`: the detection
# commands hand classification runs to the functions below.
def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """``--task`` and ``--data`` for the train / eval commands."""
    p.add_argument("--task", choices=("detect", "classify"), default="detect",
                   help="detect (default) or classify (image folder; see `torchspine classify --help`)")
    p.add_argument("--data", help="classify: image-folder root with train/ and val/ (<class>/<image> inside)")


def _device(name: str | None) -> str:
    from torchspine.utils import resolve_device

    return str(resolve_device(name))


def run_train_task(args: argparse.Namespace) -> int:
    """``torchspine train --task classify --data DIR [--model spinenet49_cls] [--epochs N] ...``."""
    from torchspine.engine.classification import ClassifyConfig

    if not getattr(args, "data", None):
        raise ValueError("train --task classify needs --data DIR (an image folder with train/ and val/)")
    known = {f for f in ClassifyConfig.__dataclass_fields__}
    fields: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for key, value in _parse_set(getattr(args, "sets", []) or []).items():
        if key == "model_overrides":
            if not isinstance(value, dict):
                raise ValueError(f"--set model_overrides=...: expected a JSON object, got {value!r}")
            overrides.update(value)
        elif key in known and key not in ("data", "model_overrides"):
            fields[key] = value
        else:
            overrides[key] = value
    for ours, theirs in (("image_size", "image_size"), ("batch_size", "batch_size"), ("base_lr", "lr"),
                         ("out_dir", "output_dir"), ("workers", "num_workers"), ("seed", "seed")):
        value = getattr(args, theirs, None)
        if value is not None:
            fields[ours] = value
    if getattr(args, "epochs", None) is not None:
        fields["epochs"] = int(round(args.epochs))
    ns = argparse.Namespace(
        classify_command="train", data=args.data, model=getattr(args, "model", None) or "spinenet49_cls",
        set=[f"{k}={json.dumps(v)}" for k, v in overrides.items()],
        out=fields.pop("out_dir", "runs/classify"), image_size=fields.pop("image_size", 224),
        batch_size=fields.pop("batch_size", 64), epochs=fields.pop("epochs", 90), base_lr=fields.pop("base_lr", 0.1),
        weight_decay=fields.pop("weight_decay", 1e-4), warmup_epochs=fields.pop("warmup_epochs", 5.0),
        schedule=fields.pop("schedule", "cosine"), label_smoothing=fields.pop("label_smoothing", 0.0),
        min_scale=fields.pop("min_scale", 0.08), workers=fields.pop("workers", 2), seed=fields.pop("seed", 0),
        device=_device(getattr(args, "device", None)), no_resume=not getattr(args, "resume", False),
    )
    if fields:
        raise ValueError(f"train --task classify: cannot set {sorted(fields)} here")
    return run(ns)


def run_eval_task(args: argparse.Namespace) -> int:
    """``torchspine eval --task classify --data DIR (--weights W | RUN)``: top-1 / top-5."""
    from pathlib import Path

    if not getattr(args, "data", None):
        raise ValueError("eval --task classify needs --data DIR (an image folder with a val/ split)")
    weights = getattr(args, "weights", None) or (str(Path(args.run) / "model.safetensors")
                                                 if getattr(args, "run", None) else None)
    if not weights:
        raise ValueError("eval --task classify needs --weights FILE or a run folder")
    ns = argparse.Namespace(classify_command="eval", data=args.data, weights=weights, split="val",
                            batch_size=getattr(args, "batch_size", None) or 64, workers=0,
                            device=_device(getattr(args, "device", None)))
    return run(ns)
