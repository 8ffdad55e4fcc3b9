"""Training throughput (img/s) and peak memory: RetinaNet-SpineNet-49 vs torchvision's
RetinaNet-R50-FPN, same input size, batch, optimizer and device, measured in the same run.

Each model runs in its own subprocess so that peak memory (CUDA: max allocated; CPU: peak
RSS growth over the process's baseline after model construction) is its own.

    python benchmarks/bench_training.py --size 640 --batch 2 --steps 3 [--device cuda]
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


def measure(name: str, size: int, batch: int, steps: int, warmup: int, device: str, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if name == "retinanet_spinenet49":
        from torchspine.models.registry import create_model

        model = create_model("retinanet_spinenet49", num_classes=91, image_size=size)
    else:
        from torchvision.models.detection import retinanet_resnet50_fpn

        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=size,
                                       max_size=size)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[40.0, 60.0, 300.0, 380.0], [350.0, 100.0, 500.0, 250.0]], device=device)
                * size / 640, "labels": torch.tensor([1, 18], device=device)} for _ in range(batch)]
    base_rss = _peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else _peak_rss_mb() - base_rss)
    return {"model": name, "img_per_s": batch * len(times) / sum(times), "sec_per_step": sum(times) / len(times),
            "peak_memory_mb": peak, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.size, a.batch, a.steps, a.warmup, a.device, a.threads)))
        return
    rows = []
    for name in ("retinanet_spinenet49", "retinanet_resnet50_fpn"):
        cmd = [sys.executable, __file__, "--one", name] + [f"--{k}={v}" for k, v in
                                                          (("size", a.size), ("batch", a.batch), ("steps", a.steps),
                                                           ("warmup", a.warmup), ("device", a.device))]
        if a.threads:
            cmd.append(f"--threads={a.threads}")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = rows[1]
    print(f"training step, {a.size}x{a.size}, batch {a.batch}, device {a.device}, {a.steps} timed steps")
    print(f"{'model':24s} {'params M':>9s} {'img/s':>8s} {'s/step':>8s} {'peak MB':>9s} {'speed vs R50':>13s} "
          f"{'mem vs R50':>11s}")
    for r in rows:
        print(f"{r['model']:24s} {r['params_m']:9.2f} {r['img_per_s']:8.3f} {r['sec_per_step']:8.2f} "
              f"{r['peak_memory_mb']:9.0f} {r['img_per_s'] / ref['img_per_s']:13.2f} "
              f"{r['peak_memory_mb'] / max(ref['peak_memory_mb'], 1e-9):11.2f}")


if __name__ == "__main__":
    main()
