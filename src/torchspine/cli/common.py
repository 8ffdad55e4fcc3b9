"""Argument helpers shared by every command: ONE ``--set key=value`` parser, ``--device``,
checked sizes and counts, and the run-folder / weights arguments.

The typing rule of ``--set`` (the same in every command): the value is read as JSON
(``true`` -> ``True``, ``0.25`` -> ``0.25``, ``null`` -> ``None``, ``[1, 2]``, ``{"a": 1}``,
``"text"``); Python's spellings ``True`` / ``False`` / ``None`` are read as the same three
values; anything else is a plain string (``activation=swish``). A value that cannot be
honoured is an error (checked by the code that uses it, naming the key).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Callable

__all__ = ["add_device_argument", "add_set_argument", "check_device", "fraction", "int_at_least", "parse_set",
           "parse_set_value", "image_size", "is_saved_model", "load_saved_model", "run_folder_weights"]

_PYTHON_SPELLINGS = {"True": True, "False": False, "None": None}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# The smallest image side a detector or classifier is run at from the command line: the stem
# alone divides by 4, and SpineNet's P7 has stride 128 (smaller images are padded up).
MIN_IMAGE_SIZE = 32


def parse_set_value(raw: str) -> Any:
    """One ``--set`` value by the module's typing rule."""
    text = raw.strip()
    if text in _PYTHON_SPELLINGS:
        return _PYTHON_SPELLINGS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return raw  # a bare string such as swish


def parse_set(items: list[str] | None, *, option: str = "--set") -> dict[str, Any]:
    """``["a=1", "b.c=true", "act=swish"]`` -> ``{"a": 1, "b.c": True, "act": "swish"}``.

    Raises ``ValueError`` naming the item for a missing ``=``, an empty or malformed key, or a
    key given twice.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE (e.g. {option} filter_size_scale=0.25)")
        if not _KEY.fullmatch(key):
            raise ValueError(f"{option} {item!r}: {key!r} is not a field name (letters, digits, _ and dots)")
        if key in out:
            raise ValueError(f"{option} {item!r}: {key!r} is set twice")
        out[key] = parse_set_value(raw)
    return out


def add_set_argument(p: argparse.ArgumentParser, *, dest: str = "sets", help: str | None = None) -> None:
    """The ``--set KEY=VALUE`` option (repeatable); parse it with :func:`parse_set`."""
    p.add_argument("--set", dest=dest, action="append", default=[], metavar="KEY=VALUE",
                   help=help or "a setting, repeatable; the value is JSON (true, 0.25, [1, 2], null) or a plain "
                                "string: --set filter_size_scale=0.25 --set activation=swish")


def int_at_least(minimum: int, what: str = "value") -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum`` (the error names the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


image_size = int_at_least(MIN_IMAGE_SIZE, "image size (pixels)")


def fraction(what: str) -> Callable[[str], float]:
    """An argparse ``type`` accepting a number in [0, 1] (a score or IoU threshold); NaN and
    values outside are refused naming the value (a NaN threshold kept nothing, silently)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number in [0, 1], got {text!r}") from None
        if not 0.0 <= value <= 1.0:  # False for NaN too
            raise argparse.ArgumentTypeError(f"{what} must be a number in [0, 1], got {text!r}")
        return value

    parse.__name__ = what
    return parse


def check_device(name: str) -> str:
    """An argparse ``type`` for ``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", name):
        return name
    raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def add_device_argument(p: argparse.ArgumentParser, *, default: str | None = "auto") -> None:
    p.add_argument("--device", type=check_device, default=default,
                   help="auto (CUDA when available), cpu, cuda, cuda:N or mps" +
                        (f" (default {default})" if default else ""))


def run_folder_weights(run: str | None, weights: str | None) -> Path:
    """The model file of a command: ``--weights`` (a file or run folder) when given, else the run
    folder's (:func:`torchspine.engine.runs.find_model_file`); errors name the path."""
    from torchspine.engine.runs import find_model_file

    if not (weights or run):
        raise ValueError("give a training output folder or --weights FILE")
    return find_model_file(weights or run)[0]


def is_saved_model(weights: str) -> bool:
    """A run folder or a file in the saved-model format (as opposed to bare tensors or a
    catalogue tag)."""
    from torchspine.models.saved import NoModelMetadata, read_model_metadata

    p = Path(weights)
    if p.is_dir():
        return True
    if p.suffix != ".safetensors" or not p.is_file():
        return False
    try:
        read_model_metadata(p)
        return True
    except NoModelMetadata:
        return (p.parent / "config.json").is_file()  # a run's model file from before the info dict
    except ValueError:
        return True  # damaged metadata or an unreadable file: loading it as one names the problem


def load_saved_model(weights: str, model: str | None, overrides: dict[str, Any]):
    """The :class:`~torchspine.engine.runs.TrainedModel` of a run folder or saved model, rebuilt
    with its own settings (``overrides`` change only what does not change the weights); a
    ``--model`` that names another model is an error."""
    from torchspine.engine.runs import load_trained

    trained = load_trained(weights, **overrides)
    if model and model != trained.name:
        raise ValueError(f"--model {model} differs from the model of {trained.path} ({trained.name}); "
                         f"leave --model out")
    return trained
