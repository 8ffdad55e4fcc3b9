"""Fine-tuning against training from scratch on a small real dataset (numbers in docs/own_data.md).

1. pretrain: the built-in demo recipe (SpineNet-49S RetinaNet, width 0.25, on the synthetic
   shapes set), or --pretrained RUN to reuse one;
2. data: scripts/make_hubble_dataset.py (NASA Hubble Deep Field, public domain), imported from
   VOC and cut into 256 px tiles with 25 % overlap (the library functions behind
   `torchspine data import` / `data tile`);
3. the packaged `finetune` recipe from the pretrained run, and the same recipe from scratch
   (same architecture, BN not frozen), for each seed; box AP on the validation tiles, and AP of
   tiled prediction on the whole validation image (predict --tile, merged by NMS).

    python scripts/finetune_experiment.py --out /tmp/ft --device cuda --seeds 0 1
    python scripts/finetune_experiment.py --out /tmp/ft --device cpu --steps 4 --pretrain-steps 4   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the recipe's)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="demo pretraining steps (default: the recipe's)")
    ap.add_argument("--pretrained", default=None, help="reuse this pretrained run folder")
    ap.add_argument("--num-workers", type=int, default=0, help="data workers of the pretraining run")
    ap.add_argument("--export", default=None, help="copy the pretrained model and the results here as they come")
    args = ap.parse_args()

    import torch

    from make_hubble_dataset import make
    from torchspine.data.importers import import_voc
    from torchspine.data.images import read_image
    from torchspine.data.tiling import tile_dataset
    from torchspine.engine.predict import predict_tiled
    from torchspine.engine.config import load_config
    from torchspine.engine.evaluate import coco_metrics
    from torchspine.engine.finetune import finetune_config
    from torchspine.engine.runs import load_trained
    from torchspine.engine.trainer import train
    from torchspine.utils import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"device": args.device, "progress": False, "tensorboard": False}
    export = Path(args.export) if args.export else None

    def keep(src: Path, name: str) -> None:
        if export is not None:
            import shutil

            export.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, export / name)
    t0 = time.perf_counter()
    pre = Path(args.pretrained) if args.pretrained else out / "pretrain"
    if not args.pretrained:
        over = {**common, "output_dir": str(pre), "eval_interval": 0, "num_workers": args.num_workers}
        if args.pretrain_steps:
            over.update(max_steps=args.pretrain_steps, warmup_steps=min(30, args.pretrain_steps - 1))
        r = train(load_config("demo_synth", **over))
        print(f"pretrain (demo recipe on synthetic shapes): AP {100 * r['AP']:.1f}, {r['steps']} steps, "
              f"{r['train_seconds']:.0f} s", flush=True)
        keep(pre / "model.safetensors", "pretrained.safetensors")
        keep(pre / "metrics.json", "pretrained_metrics.json")

    data = out / "hubble"
    counts = make(data)
    paths = {}
    for split in ("train", "val"):
        res = import_voc(data / split / "voc", data / split)
        assert res.ok, res.report.summary()
        atomic_write_text(data / f"{split}.json", json.dumps(res.coco))
        tiles = tile_dataset(res.coco, data / split, data / f"tiles_{split}", tile=256, overlap=0.25, min_visible=0.5)
        atomic_write_text(data / f"tiles_{split}" / "annotations.json", json.dumps(tiles))
        paths[split] = (str(data / f"tiles_{split}" / "annotations.json"), str(data / f"tiles_{split}" / "images"))
        print(f"{split}: {counts[split]} boxes -> {len(tiles['images'])} tiles, {len(tiles['annotations'])} boxes",
              flush=True)
    full_val = json.loads((data / "val.json").read_text())
    from pycocotools.coco import COCO
    import contextlib
    import io

    gt = COCO()
    gt.dataset = full_val
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    val_image = read_image(data / "val" / full_val["images"][0]["file_name"])

    pre_cfg = load_config("demo_synth")
    rows = []
    for seed in args.seeds:
        for mode in ("finetune", "scratch"):
            over = {**common, "seed": seed, "train_ann": paths["train"][0], "train_images": paths["train"][1],
                    "val_ann": paths["val"][0], "val_images": paths["val"][1],
                    "output_dir": str(out / f"{mode}_s{seed}")}
            if args.steps:
                over.update(max_steps=args.steps, warmup_steps=min(50, args.steps - 1), checkpoint_interval=0)
            if mode == "finetune":
                cfg = finetune_config(load_config("finetune", weights=str(pre), **over))
            else:  # the same architecture and recipe, random initialisation, BN trained
                cfg = load_config("finetune", model=pre_cfg.model, model_overrides=pre_cfg.model_overrides,
                                  freeze_bn=False, **over)
            r = train(cfg)
            trained = load_trained(out / f"{mode}_s{seed}")
            model = trained.model.to("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
            det = predict_tiled(model, val_image, tile=256, overlap=0.25, merge="nms")
            res = [{"image_id": full_val["images"][0]["id"], "category_id": trained.category_id(int(lb)),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
                   for b, s, lb in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())]
            full = coco_metrics(gt, res)
            rows.append({"mode": mode, "seed": seed, "steps": r["steps"], "seconds": round(r["train_seconds"], 1),
                         "tile_AP": round(100 * r["AP"], 1), "tile_AP50": round(100 * r["AP50"], 1),
                         "image_AP": round(100 * full["AP"], 1), "image_AP50": round(100 * full["AP50"], 1)})
            print(json.dumps(rows[-1]), flush=True)
            atomic_write_text(out / "finetune_experiment.json", json.dumps({"rows": rows}, indent=1))
            keep(out / "finetune_experiment.json", "finetune_experiment.json")
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    summary = {"device": dev, "rows": rows, "total_seconds": round(time.perf_counter() - t0)}
    atomic_write_text(out / "finetune_experiment.json", json.dumps(summary, indent=1))
    keep(out / "finetune_experiment.json", "finetune_experiment.json")
    keep(out / f"finetune_s{args.seeds[0]}" / "model.safetensors", "finetuned.safetensors")
    print(f"{'mode':9s} {'seed':>4s} {'steps':>5s} {'tileAP':>7s} {'AP50':>6s} {'imageAP':>8s} {'AP50':>6s}")
    for r in rows:
        print(f"{r['mode']:9s} {r['seed']:4d} {r['steps']:5d} {r['tile_AP']:7.1f} {r['tile_AP50']:6.1f} "
              f"{r['image_AP']:8.1f} {r['image_AP50']:6.1f}")
    print(f"device {dev}; {summary['total_seconds']} s in all")


if __name__ == "__main__":
    main()
