"""``torchspine demo``: the built-in end-to-end demo (for now: the family's profile table)."""

from __future__ import annotations

import argparse

from torchspine.commands import profile


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder")


def run(args: argparse.Namespace) -> int:
    return profile.run(argparse.Namespace(models=[], size=None, json_out=None))
