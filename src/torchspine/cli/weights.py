"""``torchspine weights``: the official pretrained weights (``list``) and fetching them (``get``).

``torchspine weights list [--model NAME]`` prints the catalogue: name, model, task, input size,
published result, tarball size, and what this project verified about it. ``torchspine weights
get NAME`` downloads (progress bar, resumable), verifies, converts once and prints the cached
file, which ``torchspine.load_model`` and ``--weights`` of predict / export read.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help="the catalogue of official weights")
    ls.add_argument("--model", default=None, help="only the weights of this registered model")
    ls.add_argument("--json", action="store_true", help="the entries as JSON (every setting)")
    get = sub.add_parser("get", help="download, verify, convert and cache weights")
    get.add_argument("name", help="catalogue name, e.g. retinanet_spinenet49.coco (see `torchspine weights list`)")
    get.add_argument("--offline", action="store_true", help="use only the cache (as TORCHSPINE_OFFLINE=1)")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")


def _result(published: dict) -> str:
    if "top1" in published:
        return f"top-1 {published['top1']}"
    if "mask_AP" in published:
        return f"AP {published['AP']} / mask {published['mask_AP']}"
    return f"AP {published['AP']}" if "AP" in published else "-"


def run(args: argparse.Namespace) -> int:
    from torchspine.weights import get_weights, list_weights

    if args.weights_command == "list":
        entries = list_weights(args.model)
        if args.json:
            print(json.dumps([e.to_dict() for e in entries], indent=1))
            return 0
        rows = [("name", "model", "task", "input", "published", "file", "verified")]
        for e in entries:
            size = f"{e.size / 2**20:.0f} MiB" if e.size else "unknown"
            rows.append((e.name, e.model, e.task, str(e.input_size), _result(e.published), size, e.verified))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        print(f"{len(entries)} entries; `torchspine weights get NAME` downloads one (needs internet once)")
        return 0
    if args.weights_command == "get":
        from torchspine.weights.hub import fetch

        entry = get_weights(args.name)
        try:
            path = fetch(entry, offline=True if args.offline else None, progress=not args.no_progress)
        except ConnectionError as e:
            print(f"torchspine weights: error: {e}", file=sys.stderr)
            return 2
        print(f"{entry.name}: {path}")
        print(f"use it with torchspine.create_model({entry.model!r}, weights={entry.tag!r}) or "
              f"torchspine.load_model({str(path)!r})")
        return 0
    raise ValueError("weights: choose a subcommand: list or get (see `torchspine weights --help`)")
