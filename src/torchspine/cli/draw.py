"""``torchspine draw``: an architecture diagram like the paper's Figure 3."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC_OR_NAME",
                   help="a registered model name (spinenet49), a spec JSON / genome file, or a genome string 'v1|...'")
    p.add_argument("--out", required=True, help="output file: .svg, .png or .pdf")
    p.add_argument("--title", default=None, help="title (default: the spec's name)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of a PNG")


def run(args: argparse.Namespace) -> int:
    from torchspine.analysis.draw import draw_spec, resolve_spec

    spec = resolve_spec(args.spec)
    draw_spec(spec, args.out, title=args.title, dpi=args.dpi)
    print(f"drew {spec.name or args.spec}: {len(spec.blocks)} blocks -> {args.out}")
    return 0
