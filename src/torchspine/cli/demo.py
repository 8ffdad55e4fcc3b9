"""``torchspine demo``: the built-in end-to-end demo.

Prints the family's profile table, generates the built-in synthetic dataset, trains a small
SpineNet-49S RetinaNet on it on the CPU (about ten minutes on 2 cores), evaluates it with
pycocotools and writes into one folder: ``ap_table.txt``, ``metrics.json``, ``curves.png``
and ``predictions/*.png`` (validation images with the detections drawn).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from torchspine.cli.common import add_device_argument
from torchspine.utils import atomic_write, atomic_write_text

RECIPE = "demo_synth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe's)")
    p.add_argument("--num-images", type=int, default=6, help="validation images drawn with predictions")
    add_device_argument(p, default=None)  # default: the recipe's (cpu)
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads")
    p.add_argument("--no-profile", action="store_true", help="skip the profile table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


FAMILY = ("spinenet49s", "spinenet49", "spinenet96", "spinenet143", "spinenet190")


def _print_family_profile() -> None:
    """One line per backbone: parameters and multiply-adds at its published size (built on
    the meta device: no memory, no time), beside the official parameter count."""
    import torch

    from torchspine.analysis.profile import PUBLISHED, profile_model
    from torchspine.models.registry import create_model

    print(f"{'model':<14} {'size':>5} {'params':>13} {'official':>13} {'MACs':>9}")
    for name in FAMILY:
        pub = PUBLISHED.get(name)
        size = pub.size if pub else 640
        with torch.device("meta"):
            model = create_model(name)
        prof = profile_model(model, name, size)
        official = f"{pub.params:,}" if pub and pub.params else "-"
        print(f"{name:<14} {size:>5} {prof.params:>13,} {official:>13} {prof.macs / 1e9:>8.2f}B")


def run(args: argparse.Namespace) -> int:
    import torch
    from torchvision.io import write_png

    from torchspine.data.coco import CocoDetection
    from torchspine.data.labels import LabelMap
    from torchspine.data.synth import ensure_synth
    from torchspine.engine.config import load_config
    from torchspine.engine.evaluate import format_table
    from torchspine.engine.trainer import train
    from torchspine.analysis.visualize import draw_detections

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.no_profile:
        print("== SpineNet family: parameters and multiply-adds ==")
        _print_family_profile()
    print(f"\n== built-in dataset -> {out / 'data'} ==")
    paths = ensure_synth(out / "data")
    over: dict = {"output_dir": str(out / "train"), "train_ann": str(paths["train_ann"]),
                  "train_images": str(paths["train_images"]), "val_ann": str(paths["val_ann"]),
                  "val_images": str(paths["val_images"])}
    if args.steps is not None:
        over["max_steps"] = args.steps
    if args.device is not None:
        over["device"] = args.device
    if args.num_threads is not None:
        over["num_threads"] = args.num_threads
    if args.no_progress:
        over["progress"] = False
    cfg = load_config(RECIPE, **over)
    print(f"\n== training {cfg.model} {cfg.model_overrides} at {cfg.image_size} px ==")
    result = train(cfg)
    table = format_table(result)
    atomic_write_text(out / "ap_table.txt", table + "\n")
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2))
    if (out / "train" / "curves.png").exists():
        shutil.copyfile(out / "train" / "curves.png", out / "curves.png")

    # A few validation images with the trained model's detections drawn.
    from torchspine.models.saved import load_model

    val = CocoDetection(paths["val_ann"], paths["val_images"])
    model = load_model(out / "train")
    names = LabelMap.from_info(model.torchspine_info, source=str(out / "train")).names_by_label
    pred_dir = out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    with torch.no_grad():
        for i in range(min(args.num_images, len(val))):
            image, target = val[i]
            det = model([image])[0]
            drawn = draw_detections(image, det, class_names=names, score_thresh=0.3)
            atomic_write(pred_dir / f"val_{target['image_id']}.png", lambda tmp, d=drawn: write_png(d, tmp))
    print("\n== result ==")
    print(table)
    print(f"demo finished in {(time.perf_counter() - t0) / 60:.1f} min: {out}/ap_table.txt, metrics.json, "
          f"curves.png, predictions/ ({min(args.num_images, len(val))} images)")
    return 0
