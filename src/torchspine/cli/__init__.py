"""The ``torchspine`` command line: ``torchspine <command> [options]``.

Each command lives in ``torchspine.cli.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches. Arguments become typed config objects in
the command modules (shared helpers: :mod:`torchspine.cli.common`); library code never
reads them.

Errors: no command ends in a Python traceback unless ``-v`` is given. Bad input (a
``ValueError``, a missing file, a full disk, an unwritable folder, weights that do not fit)
prints one message naming the thing and the problem and exits with status 2; ``-v`` adds
the traceback. A bad option value is refused by argparse (status 2) before anything runs.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import traceback

# (name, module, one-line help). Modules are imported only when their command runs.
COMMANDS: list[tuple[str, str, str]] = [
    ("demo", "torchspine.cli.demo", "run the built-in end-to-end demo"),
    ("train", "torchspine.cli.train", "train a detector (recipes, DDP via torchrun, --resume)"),
    ("eval", "torchspine.cli.eval", "COCO AP of trained weights (pycocotools): table + JSON"),
    ("data", "torchspine.cli.data", "built-in synthetic dataset; check COCO; import VOC/YOLO/CSV; tile large images"),
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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback of an error (also after the command name)")
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
    # -v / --verbose anywhere (``torchspine data check ANN -v`` too), not only before the command.
    cut = argv.index("--") if "--" in argv else len(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv[:cut])
    argv = [a for a in argv[:cut] if a not in ("-v", "--verbose")] + argv[cut:]
    # Import only the chosen command's module (each pulls in torch, Ray, ... on its own).
    parser = build_parser(only=_command_name(argv) or "")
    args = parser.parse_args(argv)
    args.verbose = verbose
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print(f"torchspine {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one message; -v shows the traceback
        if args.verbose:
            traceback.print_exc()
        print(f"torchspine {args.command}: error: {describe_error(e)}"
              + ("" if args.verbose or _is_bad_input(e) else " (run with -v for the traceback)"), file=sys.stderr)
        return 2


def _is_bad_input(e: BaseException) -> bool:
    return isinstance(e, (ValueError, OSError)) or _state_dict_mismatch(e)


def _state_dict_mismatch(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and str(e).startswith("Error(s) in loading state_dict")


def describe_error(e: BaseException) -> str:
    """The message of an error as the command line prints it."""
    if isinstance(e, OSError) and e.filename is not None:
        # an OSError of the system (open, mkdir, ...): "[Errno 13] Permission denied: 'out/x'" -> "out/x: permission denied"
        if e.errno == errno.ENOSPC:
            return f"no space left on device while writing {e.filename}"
        return f"{e.filename}: {(e.strerror or str(e)).lower()}"
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        # OSError(code, message) raised by torchspine itself: the message, without "[Errno N]"
        return e.strerror
    if _state_dict_mismatch(e):
        lines = str(e).splitlines()
        detail = " ".join(line.strip() for line in lines[1:3])
        return f"the weights do not fit this model ({lines[0].rstrip(':')}: {detail[:300]})"
    text = str(e) or type(e).__name__
    if text.startswith("Caught ") and "DataLoader worker" in text.splitlines()[0]:
        # torch re-raises a worker's error with the worker's whole traceback as its message:
        # keep the original error's last line ("ValueError: image x.jpg: cannot be decoded ...")
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        prefix = f"{type(e).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    if isinstance(e, (ValueError, OSError)):
        return text
    return f"{type(e).__name__}: {text.splitlines()[0][:500]}"


if __name__ == "__main__":
    sys.exit(main())
