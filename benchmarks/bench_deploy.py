"""Deployment paths on the CPU: bf16 end to end (PyTorch) and INT8 ONNX (onnxruntime, OpenVINO).

Accuracy, on the demo's validation set (``torchspine.data.synth``, 64 images) with the demo's
trained RetinaNet-SpineNet-49S (``--weights``: the ``model.safetensors`` that ``torchspine demo``
writes under ``OUT/train``), COCO AP by pycocotools:

* fp32: ``prepare_for_inference(model)``; bf16: ``prepare_for_inference(model, dtype=torch.bfloat16)``,
  fed the same float32 images (goal: within 0.5 AP of fp32);
* ONNX fp32 and INT8: the detector's dense graph (backbone + head, ``postprocess=False``) at the
  model's input size, INT8 by ``quantize_onnx_int8`` calibrated on ``--calib-count`` *training*
  images (goal: at most 1.0 AP below fp32), run by onnxruntime; the transform, anchors, box
  decoding and NMS around it are the PyTorch model's.

Latency, RetinaNet-SpineNet-49 at 640 (the paper's detector; random weights, which do not change
the work of the dense part), batch 1, alternating one call of each, median of ``--reps``, with
the process CPU time per call (``--threads 1``, default: robust on a shared machine) and wall time:

* PyTorch end to end (``model([image])``, 480x640 image) fp32 vs bf16 (goal: bf16 <= 0.35x fp32),
  eager (``prepare_for_inference``) and compiled (``rewrite=True, compile=True, pad_to_square=True``);
* the dense graph (backbone + head, ``postprocess=False``, 640x640) in onnxruntime fp32 vs INT8
  (goal: INT8 <= 0.5x), and the same two files in OpenVINO (``openvino`` package, optional).

    python benchmarks/bench_deploy.py --weights demo_out/train/model.safetensors [--data demo_out/data]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def alternate(fns: dict, reps: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    for _ in range(warmup):
        for f in fns.values():
            f()
    t: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            w, c = time.perf_counter(), time.process_time()
            f()
            t[k]["wall"].append(time.perf_counter() - w)
            t[k]["cpu"].append(time.process_time() - c)
    return {k: {c: statistics.median(v[c]) * 1e3 for c in v} for k, v in t.items()}


class _OrtDense(nn.Module):
    """Stands in for a detector's backbone: runs an exported dense graph (backbone + head) with
    onnxruntime on the normalised batch, keeps its outputs for :class:`_Stashed`, and returns
    empty feature maps of the right sizes (the anchor generator reads only their shapes)."""

    def __init__(self, path: str, threads: int, levels: range) -> None:
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.levels = levels
        self.out: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor):
        from collections import OrderedDict

        from torchspine.layers.resample import level_size

        cls, box = self.sess.run(None, {self.sess.get_inputs()[0].name: x.float().contiguous().numpy()})
        self.out = {"cls_logits": torch.from_numpy(cls), "bbox_regression": torch.from_numpy(box)}
        n, _, h, w = x.shape
        return OrderedDict((f"p{lvl}", x.new_empty((n, 0, *level_size(h, w, lvl)))) for lvl in self.levels)


class _Stashed(nn.Module):
    def __init__(self, dense: _OrtDense) -> None:
        super().__init__()
        self.dense = [dense]  # a list: not a registered submodule

    def forward(self, features):
        return self.dense[0].out


def onnx_detector(model: nn.Module, path: str, threads: int) -> nn.Module:
    """``model`` (a RetinaNet) with backbone + head replaced by the exported dense graph at
    ``path``: torchvision's transform, anchors, decoding and NMS around onnxruntime."""
    import copy

    det = copy.deepcopy(model).eval()
    spec = model.backbone.spec
    dense = _OrtDense(path, threads, range(spec.min_level, spec.max_level + 1))
    det.backbone, det.head = dense, _Stashed(dense)
    return det


def accuracy(args: argparse.Namespace) -> list[dict]:
    from torchspine.data.coco import CocoDetection
    from torchspine.data.synth import ensure_synth
    from torchspine.engine.evaluate import evaluate_coco
    from torchspine.interop.onnx import calibration_inputs, export_onnx, quantize_onnx_int8
    from torchspine.models.optimize import prepare_for_inference
    from torchspine.models.saved import load_model

    paths = ensure_synth(args.data)
    val = CocoDetection(paths["val_ann"], paths["val_images"])
    try:
        model = load_model(args.weights).eval()
    except ValueError:  # a training run's weights without model metadata: rebuild from the run's config.json
        from torchspine.engine.build import build_model
        from torchspine.models.saved import load_weights

        cfg = json.loads((Path(args.weights).parent / "config.json").read_text())
        model = build_model(cfg["model"], num_classes=val.num_classes, image_size=cfg["image_size"],
                            overrides=cfg.get("model_overrides") or {})
        load_weights(model, args.weights)
        model.eval()
    rows = []

    def score(name: str, m: nn.Module) -> None:
        with torch.inference_mode():
            r = evaluate_coco(m, val)
        rows.append({"what": name, "AP": 100 * r["AP"], "AP50": 100 * r["AP50"]})
        print(f"  {name}: AP {rows[-1]['AP']:.2f} AP50 {rows[-1]['AP50']:.2f}", flush=True)

    score("PyTorch fp32 (prepare_for_inference)", prepare_for_inference(model))
    score("PyTorch bf16 (prepare_for_inference(dtype=bfloat16))", prepare_for_inference(model, dtype=torch.bfloat16))
    size = model.transform.image_size  # the demo's transform pads every image to this square
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "dense.onnx")
        res = export_onnx(model, fp32, image_size=(size, size), postprocess=False, dynamic=False)
        score(f"onnxruntime fp32 (dense graph {size}x{size}; decode + NMS in PyTorch)",
              onnx_detector(model, fp32, args.threads))
        calib = calibration_inputs(paths["train_images"], res, count=args.calib_count)
        for method in args.calib_methods:
            int8 = os.path.join(tmp, f"dense_int8_{method}.onnx")
            quantize_onnx_int8(fp32, int8, calib, calibrate_method=method)
            score(f"onnxruntime INT8 ({method}, {len(calib)} training images)", onnx_detector(model, int8, args.threads))
    return rows


def latency(args: argparse.Namespace) -> list[dict]:
    import torchspine
    from torchspine.interop.onnx import calibration_inputs, export_onnx, quantize_onnx_int8
    from torchspine.models.optimize import prepare_for_inference

    torch.manual_seed(0)
    det = torchspine.create_model("retinanet_spinenet49", num_classes=91, image_size=640).eval()
    rows = []
    image = torch.rand(3, 480, 640)
    fp32 = prepare_for_inference(det)
    bf16 = prepare_for_inference(det, dtype=torch.bfloat16)
    with torch.inference_mode():
        t = alternate({"fp32": lambda: fp32([image]), "bf16": lambda: bf16([image])}, args.reps)
    rows.append({"what": "PyTorch end to end, 480x640 image", "fp32_ms": t["fp32"], "lowp_ms": t["bf16"],
                 "lowp": "bf16", "goal": 0.35})
    print(f"  {rows[-1]}", flush=True)
    if args.compile:  # compiled (Inductor, freezing) and rewritten, one shape: square padding
        opts = dict(pad_to_square=True, rewrite=True, compile=True)
        c32 = prepare_for_inference(det, **opts)
        c16 = prepare_for_inference(det, dtype=torch.bfloat16, **opts)
        with torch.inference_mode():
            t = alternate({"fp32": lambda: c32([image]), "bf16": lambda: c16([image])}, args.reps)
        rows.append({"what": "PyTorch end to end, 480x640 image, compiled + rewrite (pad to square)",
                     "fp32_ms": t["fp32"], "lowp_ms": t["bf16"], "lowp": "bf16", "goal": 0.35})
        print(f"  {rows[-1]}", flush=True)
        del c32, c16
    if args.skip_onnx:
        return rows

    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "dense.onnx")
        res = export_onnx(det, f32, image_size=(640, 640), postprocess=False, dynamic=False)
        i8 = os.path.join(tmp, "dense_int8.onnx")
        calib_dir = args.calib_dir or ensure_train_images(args)
        quantize_onnx_int8(f32, i8, calibration_inputs(calib_dir, res, count=args.calib_count_640))
        x = np.random.default_rng(0).normal(size=(1, 3, 640, 640)).astype(np.float32)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        s32 = ort.InferenceSession(f32, so, providers=["CPUExecutionProvider"])
        s8 = ort.InferenceSession(i8, so, providers=["CPUExecutionProvider"])
        fns = {"ort_fp32": lambda: s32.run(None, {"images": x}), "ort_int8": lambda: s8.run(None, {"images": x})}
        try:
            import openvino as ov

            core = ov.Core()
            cfg = {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"}
            c32 = core.compile_model(f32, "CPU", cfg)
            c8 = core.compile_model(i8, "CPU", cfg)
            fns["ov_fp32"] = lambda: c32({0: x})
            fns["ov_int8"] = lambda: c8({0: x})
        except ImportError:
            print("  openvino is not installed (pip install 'torchspine[openvino]'): OpenVINO rows skipped")
        t = alternate(fns, args.reps)
    rows.append({"what": "onnxruntime, RetinaNet-SpineNet-49 dense graph 640x640", "fp32_ms": t["ort_fp32"],
                 "lowp_ms": t["ort_int8"], "lowp": "int8", "goal": 0.5})
    print(f"  {rows[-1]}", flush=True)
    if "ov_fp32" in t:
        rows.append({"what": "OpenVINO, the same two files", "fp32_ms": t["ov_fp32"], "lowp_ms": t["ov_int8"],
                     "lowp": "int8", "goal": 0.5})
        rows.append({"what": "OpenVINO vs onnxruntime (fp32 / fp32, int8 / int8)", "fp32_ms": t["ort_fp32"],
                     "lowp_ms": t["ov_fp32"], "lowp": "ov fp32 / ort fp32", "goal": None,
                     "int8_ov_over_ort": t["ov_int8"]["cpu"] / t["ort_int8"]["cpu"]})
        print(f"  {rows[-2]}\n  {rows[-1]}", flush=True)
    return rows


def ensure_train_images(args: argparse.Namespace) -> str:
    from torchspine.data.synth import ensure_synth

    return str(ensure_synth(args.data)["train_images"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="demo_out/train/model.safetensors",
                    help="the demo's trained detector (torchspine demo writes OUT/train/model.safetensors)")
    ap.add_argument("--data", default="demo_out/data", help="the demo's data folder (made if missing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--calib-count-640", type=int, default=8)
    ap.add_argument("--calib-dir", default=None)
    ap.add_argument("--calib-methods", nargs="+", default=["minmax", "percentile"])
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true", help="latency: PyTorch rows only")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="latency: skip the compiled PyTorch rows")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, load {os.getloadavg()}", flush=True)
    acc = []
    if not args.skip_accuracy:
        if not Path(args.weights).is_file():
            print(f"no trained demo model at {args.weights}: run `torchspine demo` first (accuracy rows skipped)")
        else:
            print("accuracy on the demo's validation set:")
            acc = accuracy(args)
    lat = [] if args.skip_latency else (print("latency:") or latency(args))
    if acc:
        ref = acc[0]["AP"]
        onnx_ref = next((r["AP"] for r in acc if r["what"].startswith("onnxruntime fp32")), ref)
        print("\n| model | AP | AP50 | AP - fp32 AP | goal |\n|---|---|---|---|---|")
        for r in acc:
            base = onnx_ref if "INT8" in r["what"] else ref
            goal = "within 0.5" if "bf16" in r["what"] else ("drop <= 1.0" if "INT8" in r["what"] else "")
            print(f"| {r['what']} | {r['AP']:.2f} | {r['AP50']:.2f} | {r['AP'] - base:+.2f} | {goal} |")
    if lat:
        print("\n| path | fp32 CPU ms (wall) | low precision CPU ms (wall) | ratio (CPU) | goal |\n|---|---|---|---|---|")
        for r in lat:
            ratio = r["lowp_ms"]["cpu"] / r["fp32_ms"]["cpu"]
            goal = f"<= {r['goal']}" if r["goal"] else ""
            print(f"| {r['what']} ({r['lowp']}) | {r['fp32_ms']['cpu']:.0f} ({r['fp32_ms']['wall']:.0f}) | "
                  f"{r['lowp_ms']['cpu']:.0f} ({r['lowp_ms']['wall']:.0f}) | {ratio:.2f} | {goal} |")
    print(f"load at end {os.getloadavg()}")
    if args.json_out:
        from torchspine.utils import atomic_write_text

        atomic_write_text(args.json_out, json.dumps({"accuracy": acc, "latency": lat}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
