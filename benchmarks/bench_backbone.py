"""SpineNet-49 backbone+endpoints vs torchvision ResNet-50 + FPN (P3-P7): CPU forward latency.

Both models run at the same input size (640x640, batch 1) on all CPU threads, under the same
settings, interleaved (one forward of each per repetition) so that load from other processes
hits both alike; the median of the repetitions is reported. Settings, cumulative:

  eager           no_grad, contiguous (NCHW), BN as trained
  inference_mode  + torch.inference_mode
  channels_last   + channels_last weights and input
  fold_bn         + BN folded into the convs (torchspine.models.optimize)
  rewrite         fold_bn + SpineNetForInference (SpineNet only; a no-op for the peer)
  compile         + torch.compile (Inductor, freezing: prepacked oneDNN weights, fused conv+act/add)
  compile_rewrite compile + SpineNetForInference
  bf16            fold_bn settings in bfloat16 (eager)
  bf16_compile    compile settings in bfloat16

Prints milliseconds, achieved multiply-adds per second (conv + linear MACs counted by
torchspine.analysis.profile.count_macs), the ratio SpineNet / peer per setting, the ratio of
every SpineNet setting to the peer's channels_last eager latency, timed in the same loop (the
issue's goal: <= 0.65 in fp32), and the max relative error of the outputs against fp32 eager.

    python benchmarks/bench_backbone.py [--size 640] [--reps 7] [--no-compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import torchspine
from torchspine.models.optimize import optimize_for_inference
from torchspine.analysis.profile import count_macs


def build_peer() -> nn.Module:
    """torchvision ResNet-50 + FPN with P6/P7 from P5 (RetinaNet's backbone), P3-P7 outputs."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    return resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5,
                               returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))


def macs_of(model: nn.Module, size: int) -> int:
    import copy

    meta = copy.deepcopy(model).to("meta").eval()
    return count_macs(meta, torch.empty(1, 3, size, size, device="meta"))


def outputs_of(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model(x)
    return {str(k): v for k, v in out.items()}


class Setting:
    def __init__(self, name: str, prepare: Callable[[nn.Module], nn.Module], *, channels_last: bool,
                 dtype: torch.dtype = torch.float32, inference: bool = True) -> None:
        self.name, self.prepare, self.channels_last, self.dtype, self.inference = (
            name, prepare, channels_last, dtype, inference)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.to(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def context(self) -> contextlib.AbstractContextManager:
        return torch.inference_mode() if self.inference else torch.no_grad()


def settings(compile_: bool) -> list[Setting]:
    s = [
        Setting("eager", lambda m: m, channels_last=False, inference=False),
        Setting("inference_mode", lambda m: m, channels_last=False),
        Setting("channels_last", lambda m: optimize_for_inference(m, fold_bn=False), channels_last=True),
        Setting("fold_bn", lambda m: optimize_for_inference(m), channels_last=True),
    ]
    s.append(Setting("rewrite", lambda m: optimize_for_inference(m, rewrite=True), channels_last=True))
    if compile_:
        s.append(Setting("compile", lambda m: optimize_for_inference(m, compile=True),
                         channels_last=True))
        s.append(Setting("compile_rewrite", lambda m: optimize_for_inference(m, compile=True, rewrite=True),
                         channels_last=True))
    s.append(Setting("bf16", lambda m: optimize_for_inference(m, dtype=torch.bfloat16), channels_last=True,
                     dtype=torch.bfloat16))
    if compile_:
        s.append(Setting("bf16_compile",
                         lambda m: optimize_for_inference(m, dtype=torch.bfloat16, compile=True),
                         channels_last=True, dtype=torch.bfloat16))
    return s


def max_rel_err(out: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(((out[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item() for k in ref)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions per setting (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--model", default="spinenet49")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--only", nargs="*", default=None, help="run only these settings")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spine = torchspine.create_model(args.model).eval()
    peer = build_peer().eval()
    models = {args.model: spine, "r50_fpn": peer}
    macs = {k: macs_of(m, args.size) for k, m in models.items()}
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        ref = {k: outputs_of(m, x) for k, m in models.items()}

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"input 1x3x{args.size}x{args.size}, reps {args.reps} (median), loadavg {os.getloadavg()}")
    for k in models:
        print(f"  {k}: {macs[k] / 1e9:.2f} GMACs (conv+linear), outputs "
              f"{ {n: tuple(v.shape[1:]) for n, v in ref[k].items()} }")
    rows = []
    # The goal compares every setting with the peer's channels_last eager latency, so that
    # reference is timed inside every setting's loop too (same load), not once.
    peer_cl_model = optimize_for_inference(peer, fold_bn=False)
    x_cl = x.to(memory_format=torch.channels_last)
    for st in settings(args.compile):
        if args.only and st.name not in args.only:
            continue
        prepared, xin, times, errs = {}, st.input(x), {}, {}
        for k, m in models.items():
            t0 = time.perf_counter()
            prepared[k] = st.prepare(m)
            with st.context():
                for _ in range(args.warmup):
                    out = outputs_of(prepared[k], xin)
            errs[k] = max_rel_err(out, ref[k])
            times[k] = []
            setup = time.perf_counter() - t0
            if setup > 5:
                print(f"  ({st.name}: {k} prepared and warmed up in {setup:.0f} s)")
        times["peer_cl"] = []
        with st.context():
            for _ in range(args.reps):
                for k, m in prepared.items():  # interleaved: both models see the same load
                    t = time.perf_counter()
                    m(xin)
                    times[k].append(time.perf_counter() - t)
                if st.name == "channels_last":
                    times["peer_cl"].append(times["r50_fpn"][-1])
                else:
                    with torch.inference_mode():
                        t = time.perf_counter()
                        peer_cl_model(x_cl)
                        times["peer_cl"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        peer_cl = med["peer_cl"]
        row = {"setting": st.name, "loadavg_1m": os.getloadavg()[0]}
        for k in models:
            row[f"{k}_ms"] = med[k]
            row[f"{k}_gmacs_per_s"] = macs[k] / (med[k] / 1e3) / 1e9
            row[f"{k}_max_rel_err"] = errs[k]
        row["ratio"] = med[args.model] / med["r50_fpn"]
        row["peer_channels_last_ms"] = peer_cl
        row["ratio_to_peer_channels_last"] = med[args.model] / peer_cl
        rows.append(row)
        print(f"{st.name:15s} {args.model} {med[args.model]:7.1f} ms {row[f'{args.model}_gmacs_per_s']:6.1f} GMAC/s"
              f" | r50_fpn {med['r50_fpn']:7.1f} ms {row['r50_fpn_gmacs_per_s']:6.1f} GMAC/s"
              f" | ratio {row['ratio']:.3f}"
              + f" | vs peer channels_last ({peer_cl:.1f} ms, same loop) {row['ratio_to_peer_channels_last']:.3f}"
              + f" | max rel err vs fp32 eager {errs[args.model]:.1e} / {errs['r50_fpn']:.1e}"
              + f" | load {row['loadavg_1m']:.2f}")
        del prepared
    print(f"loadavg at end {os.getloadavg()}")
    if args.json_out:
        from torchspine.utils import atomic_write_text

        atomic_write_text(args.json_out, json.dumps({"size": args.size, "threads": args.threads,
                                                     "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
