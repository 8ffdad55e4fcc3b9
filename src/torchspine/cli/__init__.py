"""The ``torchspine`` command line: ``torchspine <command> [options]``.

Each command lives in ``torchspine.cli.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches. Arguments become typed config objects in
the command modules; library code never reads them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (name, module, one-line help). Modules are imported only when their command runs.
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "torchspine.cli.demo", "run the built-in end-to-end demo"),
    ("train", "torchspine.cli.train", "train a detector (recipes, DDP via torchrun, --resume)"),
    ("eval", "torchspine.cli.eval", "COCO AP of trained weights (pycocotools): table + JSON"),
    ("data", "torchspine.cli.data", "built-in synthetic dataset; check a COCO annotation file"),
    ("profile", "torchspine.cli.profile", "parameters and multiply-adds beside the published figures"),
    ("classify", "torchspine.cli.classify", "image classification: built-in data, train, top-1/top-5 eval"),
    ("predict", "torchspine.cli.predict", "detect objects in images: drawn images + COCO-format JSON"),
    ("weights", "torchspine.cli.weights", "official pretrained weights: list the catalogue, download + convert"),
    ("convert", "torchspine.cli.convert", "official TensorFlow checkpoint -> torchspine safetensors"),
    ("export", "torchspine.cli.export", "export a model to ONNX (checked with onnxruntime)"),
    ("draw", "torchspine.cli.draw", "draw an architecture like the paper's Figure 3 (.svg/.png)"),
    ("search", "torchspine.cli.search", "architecture search (RL controller / random / evolution) on Ray"),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, just that command's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(prog="torchspine", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if only is None or name == only:
            importlib.import_module(module).add_arguments(p)
    return parser


def _command_name(argv: list[str]) -> str | None:
    names = {name for name, _, _ in COMMANDS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the chosen command's module (each pulls in torch, Ray, ... on its own).
    parser = build_parser(only=_command_name(argv) or "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"torchspine {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
