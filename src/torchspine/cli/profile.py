"""``torchspine profile``: parameters and multiply-adds beside the published figures."""

from __future__ import annotations

import argparse
import json

import torch

from torchspine.cli.common import image_size
from torchspine.models.registry import create_model, list_models, model_info
from torchspine.analysis.profile import PUBLISHED, profile_model

DEFAULT_MODELS = ("spinenet49s", "spinenet49", "spinenet96", "spinenet143", "spinenet143l", "spinenet190")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help=f"model names (default: the family {', '.join(DEFAULT_MODELS)})")
    p.add_argument("--size", type=image_size, default=None,
                   help="square input size (default: each model's published size, e.g. 640 for 49)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the rows as JSON to this file")
    p.add_argument("--detectors", action="store_true",
                   help="profile the RetinaNet and Mask R-CNN detectors (49S..190) beside their published figures")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.4f}" if a is not None and b else "-"


def _fmt_b(x: float | None) -> str:
    return f"{x:.2f}B" if x is not None else "-"


def _fmt_m(x: int | None) -> str:
    return f"{x:,}" if x is not None else "-"


def run(args: argparse.Namespace) -> int:
    names = list(args.models) or ([] if getattr(args, "detectors", False) else list(DEFAULT_MODELS))
    if getattr(args, "detectors", False):
        names += [f"{kind}_spinenet{i}" for kind in ("retinanet", "maskrcnn") for i in ("49s", "49", "96", "143", "190")]
    rows = []
    known = set(list_models())
    for name in names:
        if name not in known:
            raise ValueError(f"unknown model {name!r}; see `torchspine profile --help` and torchspine.list_models()")
        pub = PUBLISHED.get(name)
        size = args.size if args.size is not None else (pub.size if pub else 640)
        with torch.device("meta"):
            model = create_model(name)
        prof = profile_model(model, name, size)
        row = {
            "model": name, "size": size, "params": prof.params, "macs_b": prof.macs / 1e9,
            "backbone_params": prof.backbone_params,
            "backbone_macs_b": prof.backbone_macs / 1e9 if prof.backbone_macs is not None else None,
            "official_params": pub.params if pub else None,
            "official_macs_conv_b": pub.macs_conv if pub and size == pub.size else None,
            "official_macs_profiler_b": pub.macs_official if pub and size == pub.size else None,
            "paper_params_m": pub.paper_params if pub else None,
            "paper_macs_b": pub.paper_macs if pub and size == pub.size else None,
        }
        rows.append(row)
        print(f"\n{name} @ {size}x{size}")
        print(f"  {'':28s} {'measured':>16s} {'official':>16s} {'ratio':>8s}")
        if prof.backbone_params is not None:
            print(f"  {'params, backbone':28s} {_fmt_m(prof.backbone_params):>16s}")
            print(f"  {'MACs, backbone':28s} {_fmt_b(row['backbone_macs_b']):>16s}")
        print(f"  {'params (trainable)':28s} {_fmt_m(prof.params):>16s} {_fmt_m(row['official_params']):>16s} "
              f"{_ratio(prof.params, row['official_params']):>8s}")
        print(f"  {'MACs, conv+linear':28s} {_fmt_b(row['macs_b']):>16s} {_fmt_b(row['official_macs_conv_b']):>16s} "
              f"{_ratio(row['macs_b'], row['official_macs_conv_b']):>8s}")
        if row["official_macs_profiler_b"] is not None:
            print(f"  {'MACs, official tf.profiler':28s} {'':>16s} {_fmt_b(row['official_macs_profiler_b']):>16s} "
                  f"{_ratio(row['macs_b'], row['official_macs_profiler_b']):>8s}")
            if prof.macs_elementwise is not None:
                row["macs_elementwise_b"] = prof.macs_elementwise / 1e9
                print(f"  {'MACs, + BN/act elementwise':28s} {_fmt_b(row['macs_elementwise_b']):>16s} "
                      f"{_fmt_b(row['official_macs_profiler_b']):>16s} "
                      f"{_ratio(row['macs_elementwise_b'], row['official_macs_profiler_b']):>8s}")
        if row["paper_params_m"] is not None or row["paper_macs_b"] is not None:
            pp = f"{row['paper_params_m']}M" if row["paper_params_m"] is not None else "-"
            print(f"  {'paper copy (params / MACs)':28s} {'':>16s} {pp + ' / ' + _fmt_b(row['paper_macs_b']):>16s}")
        if pub is not None and pub.source and model_info(name).task in ("detector", "instance_segmentation"):
            print(f"  source: {pub.source}")
    if args.json_out:
        from torchspine.utils import atomic_write_text

        atomic_write_text(args.json_out, json.dumps(rows, indent=2) + "\n")
    return 0
