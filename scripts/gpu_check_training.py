"""GPU check of the training engine, in one go (about 1-2 minutes on an H100).

    PYTHONPATH=src python scripts/gpu_check_training.py [--out DIR] [--json FILE]

What it runs on CUDA, each as the user would:

1. exact resume: a tiny RetinaNet run with every random feature of the recipes on
   (stochastic depth, DropBlock, scale jitter, flips, EMA), once uninterrupted and once
   SIGKILLed after its 2nd checkpoint then ``--resume``d (``torchspine train`` in
   subprocesses, deterministic algorithms on); the final weights are compared bit for bit;
2. AMP: 3 steps with float16 + GradScaler and 3 with bfloat16 (finite losses, the scale);
3. SyncBatchNorm and the global loss normaliser over a 1-process NCCL group (NCCL has no CPU
   backend: this is where a CPU count used to fail);
4. speed: SpineNet-49 RetinaNet at 640 px, eval latency (batch 1) in fp32 and bf16 and
   training images/s (batch 8, bf16), after warm-up, with CUDA events.

It prints a table with the card's name (and writes it as JSON with ``--json``). Without CUDA
it says so and exits 0. Needs pycocotools (COCO data and evaluation).

``--dry-run`` runs the same code on the CPU, so the script cannot rot between GPU sessions
(the test suite runs it): the resume check (gloo-free, one process), AMP in bfloat16 (CPU
autocast), and a latency/images/s measurement of a tiny model; the float16 GradScaler and
NCCL checks need CUDA and are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"filter_size_scale": 0.25, "endpoints_num_filters": 32, "head_num_filters": 32, "head_num_convs": 1}
DEVICE = "cuda"  # the resume check runs on the CPU too (a dry run of this script's logic)
RANDOM_FEATURES = {"stochastic_depth_rate": 0.2, "dropblock": True, "ema_decay": 0.9, "hflip_prob": 0.5,
                   "scale_jitter": [0.5, 2.0]}


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.pop("WORLD_SIZE", None)
    return env


def _recipe(work: Path, data: dict, name: str, **over) -> Path:
    cfg = {"model": "retinanet_spinenet49s", "model_overrides": TINY, "image_size": 128,
           "train_ann": str(data["train_ann"]), "train_images": str(data["train_images"]),
           "val_ann": str(data["val_ann"]), "val_images": str(data["val_images"]),
           "batch_size": 4, "max_steps": 6, "lr": 0.02, "lr_reference_batch": 4, "warmup_steps": 2,
           "schedule": "cosine", "device": DEVICE, "deterministic": True, "amp": False, "log_interval": 1,
           "checkpoint_interval": 0, "tensorboard": False, "progress": False, "seed": 5,
           "output_dir": str(work / name), **RANDOM_FEATURES}
    cfg.update(over)
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _ckpt_step(path: Path) -> int:
    import torch

    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["step"])
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def check_resume(work: Path, data: dict) -> dict:
    import torch
    from safetensors.torch import load_file

    train = [sys.executable, "-m", "torchspine", "train", "--config"]
    t0 = time.perf_counter()
    subprocess.run(train + [str(_recipe(work, data, "full"))], check=True, env=_env(), timeout=300)
    killed = _recipe(work, data, "killed", checkpoint_interval=1)
    proc = subprocess.Popen(train + [str(killed)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = work / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while _ckpt_step(ckpt) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped = _ckpt_step(ckpt)
    subprocess.run(train + [str(killed), "--resume"], check=True, env=_env(), timeout=300)
    a = load_file(work / "full" / "model.safetensors")
    b = load_file(work / "killed" / "model.safetensors")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    worst = max((float((a[k].float() - b[k].float()).abs().max()) for k in differ), default=0.0)
    return {"check": "SIGKILL + --resume, bit-exact", "ok": not differ and 0 < stopped < 6,
            "detail": f"killed after step {stopped}; {len(differ)}/{len(a)} tensors differ (max |diff| {worst:.3g})",
            "seconds": time.perf_counter() - t0}


def check_amp(work: Path, data: dict, dtype: str) -> dict:
    from torchspine.engine.config import TrainConfig
    from torchspine.engine.trainer import train

    t0 = time.perf_counter()
    losses: list[float] = []
    cfg = TrainConfig.from_dict(json.loads(_recipe(work, data, f"amp_{dtype}", amp=True, amp_dtype=dtype,
                                                   max_steps=3, deterministic=False).read_text()))
    try:
        train(cfg, on_step=lambda step, m: losses.append(m["loss"]))
        ok, detail = all(map(lambda v: v == v and abs(v) != float("inf"), losses)), f"losses {losses}"
    except Exception as e:  # noqa: BLE001 - reported in the table
        ok, detail = False, f"{type(e).__name__}: {e}"
    return {"check": f"AMP {dtype}" + (" + GradScaler" if dtype == "float16" else ""), "ok": ok, "detail": detail,
            "seconds": time.perf_counter() - t0}


def check_syncbn_and_normaliser() -> dict:
    import torch
    import torch.distributed as dist
    from torch import nn

    from torchspine import create_model
    from torchspine.engine.distributed import globalize_loss_normalizer

    t0 = time.perf_counter()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("TS_GPU_CHECK_PORT", "29533"),
                      RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_model("retinanet_spinenet49s", num_classes=4, image_size=128, **TINY).cuda()
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(create_model("retinanet_spinenet49s", num_classes=4,
                                                                    image_size=128, **TINY)).cuda()
        sync.load_state_dict(model.state_dict())
        n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
        # The normaliser's all-reduce on a real NCCL group (world size forced to 2 for the
        # wrapper; the group's one member answers): it must count on the GPU.
        real_ws = dist.get_world_size
        dist.get_world_size = lambda group=None: 2  # type: ignore[assignment]
        try:
            wrapped = globalize_loss_normalizer(sync)
        finally:
            dist.get_world_size = real_ws  # type: ignore[assignment]
        g = torch.Generator().manual_seed(1)
        images = [torch.rand(3, 128, 128, generator=g).cuda() for _ in range(2)]
        targets = [{"boxes": torch.tensor([[10.0, 12.0, 90.0, 100.0]]).cuda(), "labels": torch.tensor([1]).cuda()}
                   for _ in range(2)]
        model.train()
        sync.train()
        ref = sum(model(images, targets).values())
        got = sum(sync(images, targets).values())
        got.backward()
        # Forced world 2 with one member: scale = 2 * (p + 1) / (p + 1) = 2.
        ok = wrapped and n_sync > 0 and torch.allclose(got, 2 * ref, rtol=1e-3)
        detail = f"{n_sync} SyncBatchNorm layers; loss {float(got):.4f} = 2 x {float(ref):.4f} (normaliser on NCCL)"
    except Exception as e:  # noqa: BLE001 - reported in the table
        ok, detail = False, f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()
    return {"check": "SyncBatchNorm + loss normaliser (NCCL)", "ok": bool(ok), "detail": detail,
            "seconds": time.perf_counter() - t0}


def measure_speed(size: int = 640, batch: int = 8, **model_kw) -> list[dict]:
    import torch

    from torchspine import create_model

    rows = []
    torch.backends.cudnn.benchmark = True
    model = create_model("retinanet_spinenet49", num_classes=91, image_size=size, **model_kw).to(DEVICE)

    def timed(fn, warmup: int, iters: int) -> float:
        for _ in range(warmup):
            fn()
        if DEVICE != "cuda":
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t) * 1000 / iters  # ms
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters  # ms

    model.eval()
    image = [torch.rand(3, size, size, device=DEVICE)]
    iters, warm = (20, 5) if DEVICE == "cuda" else (2, 1)
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def infer():
            with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype or torch.float32, enabled=dtype is not None):
                model(image)
        ms = timed(infer, warm, iters)
        rows.append({"check": f"latency, RetinaNet SpineNet-49 {size} px, batch 1, {name}", "ok": ms > 0,
                     "detail": f"{ms:.1f} ms (mean of {iters} after {warm} warm-up)", "seconds": 0.0})
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    images = [torch.rand(3, size, size, device=DEVICE) for _ in range(batch)]
    box = [0.08 * size, 0.09 * size, 0.47 * size, 0.63 * size]
    targets = [{"boxes": torch.tensor([box], device=DEVICE), "labels": torch.tensor([1], device=DEVICE)}
               for _ in range(batch)]

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    iters, warm = (10, 3) if DEVICE == "cuda" else (1, 1)
    ms = timed(step, warm, iters)
    rows.append({"check": f"training, RetinaNet SpineNet-49 {size} px, batch {batch}, bf16", "ok": ms > 0,
                 "detail": f"{batch * 1000 / ms:.1f} images/s ({ms:.0f} ms/step, mean of {iters} after {warm} "
                           f"warm-up)", "seconds": 0.0})
    return rows


def _skipped(name: str) -> dict:
    return {"check": name, "ok": True, "detail": "skipped (--dry-run: needs CUDA)", "seconds": 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="work folder (default: a temporary one)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--dry-run", action="store_true",
                   help="run the script's logic on the CPU with a tiny speed model (checks the script itself)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    global DEVICE
    if args.dry_run:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check_training: no CUDA device; nothing checked (skipped)")
        return 0
    from torchspine.data.synth import SynthConfig, generate_synth

    card = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (--dry-run)"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ts-gpu-check-") as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = generate_synth(work / "data", SynthConfig(num_train=16, num_val=4, image_size=128, seed=3))
        if DEVICE == "cuda":
            rows = [check_resume(work, data), check_amp(work, data, "float16"), check_amp(work, data, "bfloat16"),
                    check_syncbn_and_normaliser(), *measure_speed()]
        else:
            rows = [check_resume(work, data), _skipped("AMP float16 + GradScaler"), check_amp(work, data, "bfloat16"),
                    _skipped("SyncBatchNorm + loss normaliser (NCCL)"),
                    *measure_speed(size=128, batch=2, **TINY)]
    total = time.perf_counter() - t0
    print(f"\ntorchspine training check on {card} (torch {torch.__version__}, {total:.0f} s in all)")
    width = max(len(r["check"]) for r in rows)
    for r in rows:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['check']:<{width}}  {r['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"card": card, "torch": torch.__version__, "seconds": total,
                                               "rows": rows}, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
