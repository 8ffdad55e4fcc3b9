"""End-to-end RetinaNet inference on CPU: SpineNet-49 @ 640 vs torchvision RetinaNet-R50-FPN @ 640.

End to end = what a user's ``model([image])`` call does: preprocessing (normalise, resize the long
side to 640, pad), network, anchor decoding, NMS and mapping boxes back to the image. Both
detectors run on the same 480x640 image (a COCO-like aspect), batch 1, all CPU threads,
interleaved (one call of each per repetition, so load from other processes hits both alike);
the median is reported.

* ours: ``retinanet_spinenet49`` prepared by :func:`torchspine.models.optimize.prepare_for_inference`
  (the default for ``torchspine predict``: BN folded, per-level head BN folded, channels_last).
* peer: ``torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
  min_size=640, max_size=640)`` as shipped, and the same peer given the same cheap wins
  (:func:`torchspine.models.optimize.optimize_for_inference`: BN folding, channels_last).
* ``score_thresh=0`` for both so that NMS sees its full load (1000 candidates per level) even
  with randomly initialised weights (whose class probabilities are all about 0.01), and
  torchspine's ``postprocess="per_level"`` (torchvision's rule, the peer's): with the official
  rule (the default: top 5000 per class) a zero threshold would send 450,000 boxes to NMS.

    python benchmarks/bench_detection.py [--reps 5] [--size 640] [--json out.json]
    python benchmarks/bench_detection.py --threads 1 --cpu-time   # robust on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn

from torchspine import create_model
from torchspine.models.optimize import prepare_for_inference
from torchspine.models.optimize import optimize_for_inference


def timed(model: nn.Module, image: torch.Tensor, clock=time.perf_counter) -> float:
    t0 = clock()
    with torch.inference_mode():
        model([image])
    return 1000 * (clock() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="measure the calling thread's CPU time instead of wall time (use with --threads 1: "
                         "robust to other processes on a shared machine, which stall multi-threaded wall time)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and torch.get_num_threads() != 1:
        ap.error("--cpu-time needs --threads 1 (other threads' work would not be counted)")
    clock = time.thread_time if args.cpu_time else time.perf_counter

    import torchvision

    torch.manual_seed(0)
    ours_eager = create_model("retinanet_spinenet49", image_size=args.size, score_thresh=0.0,
                              postprocess="per_level").eval()
    ours = prepare_for_inference(ours_eager)
    peer = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=args.size, max_size=args.size, score_thresh=0.0).eval()
    peer_opt = optimize_for_inference(peer)
    models = {"spinenet49 (prepared)": ours, "spinenet49 (eager)": ours_eager, "r50fpn (as shipped)": peer,
              "r50fpn (same cheap wins)": peer_opt}
    image = torch.rand(3, args.size * 3 // 4, args.size)

    for _ in range(args.warmup):
        for m in models.values():
            timed(m, image, clock)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.reps):
        for k, m in models.items():
            times[k].append(timed(m, image, clock))
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {load:.1f}; image 480x640 -> {args.size}; "
          f"{'thread CPU time' if args.cpu_time else 'wall time'}")
    for k, v in med.items():
        print(f"  {k:28s} {v:9.1f} ms/image   (min {min(times[k]):.1f}, reps {len(times[k])})")
    r_shipped = med["spinenet49 (prepared)"] / med["r50fpn (as shipped)"]
    r_same = med["spinenet49 (prepared)"] / med["r50fpn (same cheap wins)"]
    r_eager = med["spinenet49 (eager)"] / med["r50fpn (as shipped)"]
    print(f"  ratio spinenet49 prepared / r50fpn as shipped:       {r_shipped:.3f}   (goal <= 0.85)")
    print(f"  ratio spinenet49 prepared / r50fpn same cheap wins:  {r_same:.3f}")
    print(f"  ratio spinenet49 eager / r50fpn as shipped:          {r_eager:.3f}")
    if args.json:
        from torchspine.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps({"median_ms": med, "times_ms": times, "load_average": load,
                                                 "ratio_prepared_vs_shipped": r_shipped,
                                                 "ratio_prepared_vs_peer_prepared": r_same}, indent=2) + "\n")


if __name__ == "__main__":
    main()
