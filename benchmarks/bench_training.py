"""Training throughput (img/s) and peak memory: RetinaNet-SpineNet-49 vs torchvision's
RetinaNet-R50-FPN, same input size, batch, optimizer and device, measured in the same run.

Each model runs in its own subprocess so that peak memory (CUDA: max allocated; CPU: peak
RSS growth over the process's baseline after model construction) is its own.

    python benchmarks/bench_training.py --size 640 --batch 2 --steps 3 [--device cuda]
        [--channels-last] [--onednn-pointwise] [--amp bfloat16] [--activation-checkpointing] [--threads 1]
    python benchmarks/bench_training.py --matrix --size 640 --batch 2 --steps 2 --threads 1 --repeats 2

``--channels-last`` trains both models with channels_last weights and inputs (same math);
``--onednn-pointwise`` (with ``--channels-last``) runs SpineNet's 1x1 stride-1 convolutions through
oneDNN as a batch of image rows (torchspine's ``onednn_pointwise`` training option; same math);
``--amp bfloat16`` runs the forward under ``torch.autocast(dtype=torch.bfloat16)`` (both models).
``--activation-checkpointing`` recomputes SpineNet's scale-permuted blocks in the backward
(torchspine's training option; torchvision's model has no such option and runs plain).
``--matrix`` measures the engine's training options side by side in one run: default,
channels_last, channels_last + activation checkpointing, channels_last + oneDNN 1x1 convolutions
(alone and with checkpointing), bf16 autocast, each SpineNet row alternating with torchvision's
plain fp32 NCHW model (the peer the goal names) and repeated ``--repeats`` times; ratios are
medians over the repeats.
Besides wall time, ``cpu_s_per_step`` is the process CPU time per step (with ``--threads 1`` it
is robust to load from other processes; the speed ratio is then computed from it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(name: str, size: int, batch: int, steps: int, warmup: int, device: str, threads: int | None,
            channels_last: bool = False, amp: str | None = None, checkpointing: bool = False,
            checkpoint_max_level: int | None = None, onednn_pointwise: bool = False) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name == "retinanet_spinenet49":
        from torchspine.models.registry import create_model

        model = create_model("retinanet_spinenet49", num_classes=91, image_size=size)
        if checkpointing:
            from torchspine.models.backbone import set_activation_checkpointing

            set_activation_checkpointing(model, max_level=checkpoint_max_level)
        if onednn_pointwise:
            from torchspine.layers.conv import set_onednn_pointwise

            set_onednn_pointwise(model)
    else:
        from torchvision.models.detection import retinanet_resnet50_fpn

        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size,
                                       max_size=size)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
    import contextlib

    autocast = (torch.autocast(torch.device(device).type, dtype=getattr(torch, amp)) if amp
                else contextlib.nullcontext())
    targets = [{"boxes": torch.tensor([[40.0, 60.0, 300.0, 380.0], [350.0, 100.0, 500.0, 250.0]], device=device)
                * size / 640, "labels": torch.tensor([1, 18], device=device)} for _ in range(batch)]
    base_rss = _peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        with autocast:
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else _peak_rss_mb() - base_rss)
    return {"model": name, "img_per_s": batch * len(times) / sum(times), "sec_per_step": sum(times) / len(times),
            "cpu_s_per_step": sum(cpu) / len(cpu),
            "peak_memory_mb": peak, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--onednn-pointwise", action="store_true",
                    help="SpineNet's 1x1 convolutions through oneDNN (with --channels-last)")
    ap.add_argument("--amp", choices=("bfloat16", "float16"), default=None)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--checkpoint-max-level", type=int, default=None,
                    help="with --activation-checkpointing: only the blocks at this level or finer")
    ap.add_argument("--matrix", action="store_true", help="the engine's training options side by side")
    ap.add_argument("--repeats", type=int, default=2, help="--matrix: alternating repeats")
    ap.add_argument("--only", action="append", default=None, help="--matrix: only these rows (by label)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.size, a.batch, a.steps, a.warmup, a.device, a.threads,
                                 a.channels_last, a.amp, a.activation_checkpointing, a.checkpoint_max_level,
                                 a.onednn_pointwise)))
        return
    if a.matrix:
        matrix(a)
        return
    rows = []
    for name in ("retinanet_spinenet49", "retinanet_resnet50_fpn"):
        cmd = [sys.executable, __file__, "--one", name] + [f"--{k}={v}" for k, v in
                                                          (("size", a.size), ("batch", a.batch), ("steps", a.steps),
                                                           ("warmup", a.warmup), ("device", a.device))]
        if a.threads:
            cmd.append(f"--threads={a.threads}")
        if a.channels_last:
            cmd.append("--channels-last")
        if a.amp:
            cmd.append(f"--amp={a.amp}")
        if a.activation_checkpointing:
            cmd.append("--activation-checkpointing")
        if a.onednn_pointwise and name == "retinanet_spinenet49":
            cmd.append("--onednn-pointwise")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = rows[1]
    import os

    print(f"training step, {a.size}x{a.size}, batch {a.batch}, device {a.device}, {a.steps} timed steps, "
          f"channels_last {a.channels_last}, amp {a.amp}, load {os.getloadavg()}")
    print(f"{'model':24s} {'params M':>9s} {'img/s':>8s} {'s/step':>8s} {'cpu s/step':>10s} {'peak MB':>9s} "
          f"{'speed vs R50 (cpu)':>18s} {'mem vs R50':>11s}   (goal: speed >= 1.2, memory <= 1.0)")
    for r in rows:
        print(f"{r['model']:24s} {r['params_m']:9.2f} {r['img_per_s']:8.3f} {r['sec_per_step']:8.2f} "
              f"{r['cpu_s_per_step']:10.2f} {r['peak_memory_mb']:9.0f} "
              f"{ref['cpu_s_per_step'] / r['cpu_s_per_step']:18.2f} "
              f"{r['peak_memory_mb'] / max(ref['peak_memory_mb'], 1e-9):11.2f}")


def _run_one(a: argparse.Namespace, name: str, flags: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--one", name, f"--size={a.size}", f"--batch={a.batch}", f"--steps={a.steps}",
           f"--warmup={a.warmup}", f"--device={a.device}"] + ([f"--threads={a.threads}"] if a.threads else []) + flags
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


MATRIX = (("default", []), ("channels_last", ["--channels-last"]),
          ("channels_last + checkpointing", ["--channels-last", "--activation-checkpointing"]),
          ("channels_last + checkpointing L2-3", ["--channels-last", "--activation-checkpointing",
                                                  "--checkpoint-max-level=3"]),
          ("channels_last + onednn_pointwise", ["--channels-last", "--onednn-pointwise"]),
          ("channels_last + onednn_pointwise + checkpointing L2-3", ["--channels-last", "--onednn-pointwise",
                                                                     "--activation-checkpointing",
                                                                     "--checkpoint-max-level=3"]),
          ("channels_last + onednn_pointwise + checkpointing L2", ["--channels-last", "--onednn-pointwise",
                                                                   "--activation-checkpointing",
                                                                   "--checkpoint-max-level=2"]),
          ("bf16 autocast", ["--amp=bfloat16"]),
          ("channels_last + bf16 autocast", ["--channels-last", "--amp=bfloat16"]))


def matrix(a: argparse.Namespace) -> None:
    import os
    import statistics

    print(f"training step, {a.size}x{a.size}, batch {a.batch}, device {a.device}, threads {a.threads}, "
          f"{a.steps} timed steps after {a.warmup}, {a.repeats} alternating repeats, load at start {os.getloadavg()}")
    results: dict[str, list[tuple[dict, dict]]] = {label: [] for label, _ in MATRIX if not a.only or label in a.only}
    for _ in range(a.repeats):
        for label, flags in MATRIX:  # SpineNet with the option, then the peer, alternating
            if a.only and label not in a.only:
                continue
            ours = _run_one(a, "retinanet_spinenet49", flags)
            peer = _run_one(a, "retinanet_resnet50_fpn", [])
            results[label].append((ours, peer))
    print(f"{'SpineNet-49 option':54s} {'cpu s/step':>10s} {'R50 cpu s/step':>14s} {'speed vs R50':>12s} "
          f"{'peak MB':>8s} {'R50 MB':>7s} {'mem vs R50':>10s}   (goal: speed >= 1.2, memory <= 1.0)")
    for label, pairs in results.items():
        speed = statistics.median(p["cpu_s_per_step"] / o["cpu_s_per_step"] for o, p in pairs)
        mem = statistics.median(o["peak_memory_mb"] / max(p["peak_memory_mb"], 1e-9) for o, p in pairs)
        print(f"{label:54s} {statistics.median(o['cpu_s_per_step'] for o, _ in pairs):10.2f} "
              f"{statistics.median(p['cpu_s_per_step'] for _, p in pairs):14.2f} {speed:12.2f} "
              f"{statistics.median(o['peak_memory_mb'] for o, _ in pairs):8.0f} "
              f"{statistics.median(p['peak_memory_mb'] for _, p in pairs):7.0f} {mem:10.2f}")
    print(f"load at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
