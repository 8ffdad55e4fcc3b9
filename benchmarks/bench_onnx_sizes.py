"""ONNX at any size (goal 4): one dynamic export of SpineNet-49 (and a dense RetinaNet), run by
onnxruntime at sizes that are not multiples of 128, compared with PyTorch.

    python benchmarks/bench_onnx_sizes.py [--model spinenet49] [--sizes 200x300 97x130 640x640]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="spinenet49")
    ap.add_argument("--example", default="256x256", help="example size the graph is traced at")
    ap.add_argument("--sizes", nargs="+", default=["200x300", "97x130", "333x517", "640x640"])
    args = ap.parse_args()
    import torchspine
    from torchspine.interop.onnx import export_onnx, verify_onnx

    torch.manual_seed(0)
    model = torchspine.create_model(args.model).eval()
    eh, ew = (int(v) for v in args.example.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = export_onnx(model, os.path.join(tmp, "m.onnx"), image_size=(eh, ew), dynamic=True)
        print(f"{args.model}: dynamic export traced at {eh}x{ew} in {time.perf_counter() - t0:.0f} s")
        print("| size | onnxruntime vs PyTorch (max rel. diff) | goal |\n|---|---|---|")
        worst = 0.0
        for s in args.sizes:
            h, w = (int(v) for v in s.split("x"))
            try:
                err = verify_onnx(model, res, torch.randn(1, 3, h, w))
                worst = max(worst, err)
                print(f"| {h}x{w} | {err:.1e} | works (< 1e-4) |")
            except Exception as e:  # report, do not hide: this is what the goal is about
                print(f"| {h}x{w} | FAILED: {str(e).splitlines()[0][:120]} | works |")
                worst = float("inf")
    print(f"any size: {'yes' if worst < 1e-4 else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
