"""One short GPU run: RetinaNet-SpineNet-49 at 640 latency end to end, and training images/s
against torchvision's RetinaNet-R50-FPN, printed as a table with ``torch.cuda.get_device_name()``.

Latency (batch 1, one 640x640 image already on the GPU, median of ``--reps`` after warm-up,
``torch.cuda.synchronize()`` around each call):

* ``e2e``: ``model([image])``: resize/normalise/pad, backbone, head, anchors, decoding, NMS;
* ``dense``: backbone + head on the normalised batch (``forward_dense``), the part the paper's
  15.3 ms V100 TensorRT figure (Table 3) times.

Settings: fp32 (TF32 off), fp32 with TF32 matmul/conv, bf16 and fp16 autocast, bf16 weights
(``prepare_for_inference(dtype=torch.bfloat16)``, BN folded, channels_last), the same with
``torch.compile`` of backbone and head (Inductor), and with ``mode="reduce-overhead"`` (CUDA
graphs, static input shape). Training: images/s and peak memory of one SGD step at 640, batch
``--batch``, fp32 and bf16 autocast, SpineNet-49 vs R50-FPN timed alternately in the same process.

Skips cleanly (exit 0, one line) without CUDA. Runs in under 4 minutes on an H100:

    python benchmarks/gpu_bench.py [--size 640] [--reps 30] [--batch 8] [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback

import torch


DEVICE = "cuda"
MODEL_KW: dict = {}  # --smoke: a tiny SpineNet, to check this script on a machine without a GPU


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _time(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _autocast(dtype: torch.dtype | None):
    return torch.autocast(DEVICE, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def latency_rows(size: int, reps: int, compile_: bool) -> list[dict]:
    import torchspine
    from torchspine.models.optimize import prepare_for_inference

    torch.manual_seed(0)
    base = torchspine.create_model("retinanet_spinenet49", num_classes=91, image_size=size, **MODEL_KW).eval()
    base = base.to(DEVICE)
    image = torch.rand(3, size, size, device=DEVICE)
    with torch.no_grad():
        batch = base.transform([image])[0].tensors
    rows = []

    def measure(name: str, model, autocast_dtype=None, tf32: bool = False, warmup: int = 5) -> None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            t0 = time.perf_counter()
            with torch.inference_mode(), _autocast(autocast_dtype):
                xb = batch.to(next(model.parameters()).dtype)
                if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
                    xb = xb.contiguous(memory_format=torch.channels_last)
                e2e = _time(lambda: model([image]), reps, warmup)
                dense = _time(lambda: model.forward_dense(xb), reps, warmup)
            rows.append({"setting": name, "e2e_ms": e2e, "dense_ms": dense, "setup_s": time.perf_counter() - t0})
        except Exception as e:  # one failing setting must not lose the others
            rows.append({"setting": name, "error": f"{type(e).__name__}: {e}".splitlines()[0][:160]})
            traceback.print_exc(limit=3)
        print(f"  {rows[-1]}", flush=True)

    measure("fp32", base)
    measure("fp32 tf32", base, tf32=True)
    measure("bf16 autocast", base, torch.bfloat16)
    measure("fp16 autocast", base, torch.float16)
    bf16 = prepare_for_inference(base, dtype=torch.bfloat16, pad_to_square=True)
    measure("bf16 weights (folded, channels_last)", bf16)
    if compile_:
        comp = prepare_for_inference(base, dtype=torch.bfloat16, pad_to_square=True)
        comp.backbone = torch.compile(comp.backbone, dynamic=False)
        comp.head = torch.compile(comp.head, dynamic=False)
        measure("bf16 + torch.compile", comp, warmup=3)
        graphs = prepare_for_inference(base, dtype=torch.bfloat16, pad_to_square=True)
        graphs.backbone = torch.compile(graphs.backbone, mode="reduce-overhead", dynamic=False)
        graphs.head = torch.compile(graphs.head, mode="reduce-overhead", dynamic=False)
        measure("bf16 + compile + CUDA graphs", graphs, warmup=5)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return rows


def training_rows(size: int, batch: int, steps: int, warmup: int) -> list[dict]:
    import torchspine
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(0)
    models = {
        "retinanet_spinenet49": torchspine.create_model("retinanet_spinenet49", num_classes=91, image_size=size,
                                                        **MODEL_KW),
        "retinanet_resnet50_fpn (torchvision)": retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                                       num_classes=91, min_size=size, max_size=size),
    }
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g).to(DEVICE) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[40.0, 60.0, 300.0, 380.0], [350.0, 100.0, 500.0, 250.0]]).to(DEVICE)
                * size / 640, "labels": torch.tensor([1, 18]).to(DEVICE)} for _ in range(batch)]
    rows = []
    for amp in (None, torch.bfloat16):
        times: dict[str, list[float]] = {k: [] for k in models}
        peaks: dict[str, float] = {}
        opts = {}
        for k, m in models.items():
            m.to(DEVICE).train()
            opts[k] = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)

        def step(k: str) -> None:
            with _autocast(amp):
                loss = sum(models[k](images, targets).values())
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()

        try:
            for k in models:
                if DEVICE == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(warmup):
                    step(k)
                _sync()
                peaks[k] = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else float("nan")
            for _ in range(steps):  # alternating: both models see the same GPU state
                for k in models:
                    _sync()
                    t = time.perf_counter()
                    step(k)
                    _sync()
                    times[k].append(time.perf_counter() - t)
            for k in models:
                rows.append({"model": k, "precision": "bf16 autocast" if amp else "fp32",
                             "img_per_s": batch / statistics.median(times[k]), "peak_mb": peaks[k]})
        except Exception as e:
            rows.append({"model": "both", "precision": str(amp), "error": f"{type(e).__name__}: {e}"[:160]})
            traceback.print_exc(limit=3)
        for r in rows[-2:]:
            print(f"  {r}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--no-training", dest="training", action="store_false")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="check the script on the CPU: tiny SpineNet, 128 px, no compile (numbers mean nothing)")
    args = ap.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        MODEL_KW.update(filter_size_scale=0.25, endpoints_num_filters=32, head_num_filters=32)
        args.size, args.reps, args.batch, args.steps, args.warmup_steps, args.compile = 128, 2, 2, 1, 1, False
    elif not torch.cuda.is_available():
        print("gpu_bench: no CUDA device, skipped")
        return 0
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke test)"
    print(f"device {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version() if DEVICE == 'cuda' else '-'}", flush=True)
    t0 = time.perf_counter()
    lat = latency_rows(args.size, args.reps, args.compile)
    train = training_rows(args.size, args.batch, args.steps, args.warmup_steps) if args.training else []

    print(f"\nRetinaNet-SpineNet-49, {args.size}x{args.size}, batch 1, median of {args.reps}, on {name}")
    print("(goal: end to end under 8 ms on an H100; paper Table 3: 15.3 ms on a V100 with TensorRT)")
    print(f"| setting | end to end ms | backbone + head ms |\n|---|---|---|")
    for r in lat:
        if "error" in r:
            print(f"| {r['setting']} | failed: {r['error']} | |")
        else:
            print(f"| {r['setting']} | {r['e2e_ms']:.2f} | {r['dense_ms']:.2f} |")
    if train:
        print(f"\nTraining step, {args.size}x{args.size}, batch {args.batch}, SGD, median of {args.steps} "
              f"alternating steps, on {name}")
        print("| model | precision | img/s | peak MB | speed vs R50-FPN | memory vs R50-FPN |\n|---|---|---|---|---|---|")
        ref = {r["precision"]: r for r in train if r["model"].startswith("retinanet_resnet50") and "error" not in r}
        for r in train:
            if "error" in r:
                print(f"| {r['model']} | {r['precision']} | failed: {r['error']} | | | |")
                continue
            p = ref.get(r["precision"])
            sp = f"{r['img_per_s'] / p['img_per_s']:.2f}" if p else "-"
            mem = f"{r['peak_mb'] / p['peak_mb']:.2f}" if p else "-"
            print(f"| {r['model']} | {r['precision']} | {r['img_per_s']:.1f} | {r['peak_mb']:.0f} | {sp} | {mem} |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "latency": lat, "training": train}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
