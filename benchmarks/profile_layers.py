"""Where SpineNet-49's time goes on the CPU: per conv, grouped by role and level.

Eager, BN folded, channels_last, fp32 (``optimize_for_inference``), batch 1 at 640x640, one
thread by default. Each conv is timed with forward pre/post hooks on the thread's CPU time
(``time.thread_time``: robust to other processes' load; one thread so no work hides in other
threads), summed over ``--reps`` forwards after a warm-up, and grouped:

* ``stem``: the 7x7/2 conv and the stem's bottleneck blocks (L2);
* ``resample reduce L<l>`` / ``resample 3x3/2 L<l>`` / ``resample project L<l>``: the
  cross-scale resampling convs by the level they run at;
* ``block 1x1`` / ``block 3x3`` by level: the scale-permuted blocks' convs;
* ``endpoints``: the 1x1 output convs.

Prints share of time, share of MACs and achieved GMAC/s per group, and the conv total against
the whole forward (the rest is pools, resizes, adds, activations).

    python benchmarks/profile_layers.py [--threads 1] [--reps 3] [--rewrite] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict

import torch
from torch import nn


def level_of(h: int, size: int) -> int:
    return round(math.log2(size / h))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="spinenet49")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rewrite", action="store_true", help="profile optimize_for_inference(rewrite=True)")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchspine
    from torchspine.models.optimize import optimize_for_inference

    torch.manual_seed(0)
    model = optimize_for_inference(torchspine.create_model(args.model).eval(), rewrite=args.rewrite)
    groups: dict[str, dict[str, float]] = defaultdict(lambda: {"s": 0.0, "macs": 0.0, "n": 0})
    start: dict[int, float] = {}

    def group_of(name: str, conv: nn.Conv2d, out: torch.Tensor) -> str:
        lvl = level_of(out.shape[-2], args.size)
        k = conv.kernel_size[0]
        if name.startswith("stem"):
            return "stem (7x7/2 conv, L2 blocks)"
        if name.startswith("endpoints"):
            return "endpoints 1x1"
        if name.startswith("fused") or ".reduce." in name:
            return f"resample reduce 1x1 L{lvl}"
        if ".downsample." in name:
            return f"resample 3x3/2 L{lvl}"
        if ".project." in name:
            return f"resample project 1x1 L{lvl}"
        return f"block {k}x{k} L{lvl}"

    def pre(mod, inp):
        start[id(mod)] = time.thread_time()

    def post_factory(name):
        def post(mod, inp, out):
            dt = time.thread_time() - start[id(mod)]
            g = groups[group_of(name, mod, out)]
            g["s"] += dt
            g["macs"] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            g["n"] += 1
        return post

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post_factory(name))]
    x = torch.randn(1, 3, args.size, args.size).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)
        groups.clear()
        t0 = time.thread_time()
        for _ in range(args.reps):
            model(x)
        total = (time.thread_time() - t0) / args.reps
    for h in handles:
        h.remove()
    conv_s = sum(g["s"] for g in groups.values()) / args.reps
    conv_macs = sum(g["macs"] for g in groups.values()) / args.reps
    print(f"{args.model} {'rewritten ' if args.rewrite else ''}at {args.size}, {args.threads} thread(s), eager fp32 "
          f"BN folded channels_last: forward {total * 1e3:.0f} ms CPU, convs {conv_s * 1e3:.0f} ms "
          f"({conv_s / total:.0%}), {conv_macs / 1e9:.2f} GMACs, load {os.getloadavg()}")
    print("| group | convs | ms | share of conv time | share of MACs | GMAC/s |\n|---|---|---|---|---|---|")
    rows = []
    for k, g in sorted(groups.items(), key=lambda kv: -kv[1]["s"]):
        s, macs = g["s"] / args.reps, g["macs"] / args.reps
        rows.append({"group": k, "convs": g["n"] // args.reps, "ms": s * 1e3, "time_share": s / conv_s,
                     "mac_share": macs / conv_macs, "gmacs_per_s": macs / s / 1e9 if s else 0.0})
        r = rows[-1]
        print(f"| {k} | {r['convs']} | {r['ms']:.1f} | {r['time_share']:.1%} | {r['mac_share']:.1%} | "
              f"{r['gmacs_per_s']:.0f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"total_ms": total * 1e3, "conv_ms": conv_s * 1e3, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
