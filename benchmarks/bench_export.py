"""onnxruntime vs PyTorch CPU latency of SpineNet-49 (backbone + endpoints) at 640x640, batch 1.

Both run in this process on the same threads; the ratio is what to read (the machine may be
shared). The ONNX file comes from ``torchspine.interop.onnx.export_onnx`` (legacy exporter,
fixed size, ``--dynamic`` for the torch.export one). Usage:

    python benchmarks/bench_export.py [--model spinenet49] [--size 640] [--threads 2] [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def timeit_interleaved(fns: list, *, warmup: int, repeat: int) -> list[list[float]]:
    """Time several functions in alternation, so a busy shared machine slows them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="spinenet49")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dynamic", action="store_true", help="export with dynamic batch and size (torch.export)")
    args = p.parse_args()

    import onnxruntime as ort

    from torchspine import create_model
    from torchspine.interop.onnx import export_onnx

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = create_model(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        t = time.perf_counter()
        export_onnx(model, path, image_size=(args.size, args.size), dynamic=args.dynamic)
        export_s = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        # No busy-waiting between runs: spinning ORT threads would steal the cores from PyTorch.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        ort_out = sess.run(None, feed)
        with torch.inference_mode():
            ref = [t.numpy() for t in model(x).values()]
        rel = max(float(np.abs(a - b).max()) for a, b in zip(ort_out, ref)) / max(float(np.abs(b).max()) for b in ref)

        def torch_fwd() -> None:
            with torch.inference_mode():
                model(x)

        torch_t, ort_t = timeit_interleaved([torch_fwd, lambda: sess.run(None, feed)], warmup=args.warmup,
                                            repeat=args.repeat)
    t_ms, o_ms = statistics.median(torch_t) * 1e3, statistics.median(ort_t) * 1e3
    print(f"{args.model} @ {args.size}x{args.size}, batch 1, {args.threads} threads, median of {args.repeat} "
          "(runs interleaved)")
    print(f"  export ({'dynamic, torch.export' if args.dynamic else 'fixed size, legacy exporter'}): {export_s:.1f} s; "
          f"onnxruntime vs PyTorch max relative difference {rel:.1e}")
    print(f"  PyTorch eager (inference_mode): {t_ms:8.1f} ms  (min {min(torch_t) * 1e3:.1f})")
    print(f"  onnxruntime CPU:                {o_ms:8.1f} ms  (min {min(ort_t) * 1e3:.1f})")
    print(f"  onnxruntime / PyTorch latency:  {o_ms / t_ms:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
