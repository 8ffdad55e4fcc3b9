"""JSON and genome codecs of :class:`~torchspine.specs.spec.SpineNetSpec`, kept apart from the dataclasses.

Two serializations, both round-tripping exactly:

* JSON: the dataclass fields as an object; blocks as ``{"level", "block_type",
  "input_offsets", "is_output"}`` objects. Unknown keys (at the top, in a section or inside a
  block) are rejected, naming the file, the block and the key.
* the *genome*: one line, e.g. ``v1|2b0.1,4r0.1,...,6b12.14o|scaling.filter_size_scale=0.65``.
  Blocks are ``{level}{type code}{parent0}.{parent1}`` plus ``o`` for output blocks (codes in
  :data:`~torchspine.specs.spec.BLOCK_TYPE_CODES`); every other field that differs from its
  default follows as ``dotted.name=json``.

The checks themselves happen when the spec objects are made; this module only maps text
to objects and adds where the error came from (file, ``blocks[i]``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from torchspine.specs.spec import _NESTED, BLOCK_TYPE_CODES, BlockSpec, SpineNetSpec

__all__ = ["block_from_obj", "coerce_spec", "load_spec", "save_spec", "section_from_dict", "spec_from_dict",
           "spec_from_genome", "spec_from_json", "spec_to_dict", "spec_to_genome", "spec_to_json"]

_BLOCK_KEYS = ("level", "block_type", "input_offsets", "is_output")
_BLOCK_RE = re.compile(r"(?P<level>\d+)(?P<code>[a-z])(?P<parents>\d+(?:\.\d+)*)(?P<out>o?)")


def _prefixed(source: str, e: ValueError) -> ValueError:
    msg = str(e)
    return ValueError(msg if msg.startswith(source) else f"{source}: {msg}")


# ------------------------------------------------------------------------- objects
def block_from_obj(b: Any, *, source: str = "block") -> BlockSpec:
    """A block from a ``BlockSpec``, a dict with the four block keys, or a 4-item list."""
    if isinstance(b, BlockSpec):
        return b
    try:
        if isinstance(b, dict):
            unknown = sorted(set(b) - set(_BLOCK_KEYS), key=str)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown} in a block; expected {list(_BLOCK_KEYS)}")
            missing = [k for k in _BLOCK_KEYS[:3] if k not in b]
            if missing:
                raise ValueError(f"missing field {missing[0]!r}")
            return BlockSpec(b["level"], b["block_type"], b["input_offsets"], b.get("is_output", False))
        if isinstance(b, (tuple, list)) and len(b) == 4:
            return BlockSpec(*b)
    except ValueError as e:
        raise _prefixed(source, e) from None
    raise ValueError(f"{source}: cannot read a block from {b!r} (expected an object with keys {list(_BLOCK_KEYS)})")


def section_from_dict(name: str, v: Any, *, source: str = "spec") -> Any:
    """A ``scaling`` / ``stem`` / ``norm`` section from its JSON object."""
    cls = _NESTED[name]
    known = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(v, dict):
        raise ValueError(f"{source}: field {name!r} must be an object with keys from {known}, got {v!r}")
    unknown = sorted(set(v) - set(known), key=str)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} in {name!r}; expected keys from {known}")
    try:
        return cls(**v)
    except ValueError as e:
        raise _prefixed(source, e) from None


# ----------------------------------------------------------------------------- JSON
def spec_to_dict(spec: SpineNetSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["blocks"] = [{"level": b.level, "block_type": b.block_type, "input_offsets": list(b.input_offsets),
                    "is_output": b.is_output} for b in spec.blocks]
    d["stem"]["block_levels"] = list(spec.stem.block_levels)
    d["filter_size_map"] = [list(p) for p in spec.filter_size_map]
    d["block_options"] = [list(p) for p in spec.block_options]
    return d


def spec_from_dict(d: Any, *, source: str = "spec") -> SpineNetSpec:
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(SpineNetSpec)}
    unknown = sorted(set(d) - known, key=str)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}")
    if "blocks" not in d:
        raise ValueError(f"{source}: missing field 'blocks'")
    if not isinstance(d["blocks"], list):
        raise ValueError(f"{source}: field 'blocks' must be a list of block objects, got {d['blocks']!r:.80}")
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k == "blocks":
            kw[k] = tuple(block_from_obj(b, source=f"{source}: blocks[{i}]") for i, b in enumerate(v))
        elif k in _NESTED:
            kw[k] = section_from_dict(k, v, source=source)
        else:
            kw[k] = v
    try:
        return SpineNetSpec(**kw)
    except ValueError as e:
        raise _prefixed(source, e) from None


def spec_to_json(spec: SpineNetSpec, indent: int | None = 2) -> str:
    return json.dumps(spec_to_dict(spec), indent=indent)


def spec_from_json(text: str, *, source: str = "spec JSON") -> SpineNetSpec:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from e
    return spec_from_dict(data, source=source)


# --------------------------------------------------------------------------- genome
def _default_dict() -> dict[str, Any]:
    """The JSON form of every default field (no spec is built: defaults alone need not be valid)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(SpineNetSpec):
        if f.name == "blocks":
            continue
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        out[f.name] = json.loads(json.dumps(value))  # tuples -> lists, as in spec_to_dict
    return out


def spec_to_genome(spec: SpineNetSpec) -> str:
    blocks = ",".join(f"{b.level}{BLOCK_TYPE_CODES[b.block_type]}{'.'.join(str(p) for p in b.input_offsets)}"
                      + ("o" if b.is_output else "") for b in spec.blocks)
    parts = ["v1", blocks]
    mine, theirs = spec_to_dict(spec), _default_dict()
    for key in mine:
        if key == "blocks":
            continue
        if key in _NESTED:
            for sub, val in mine[key].items():
                if val != theirs[key][sub]:
                    parts.append(f"{key}.{sub}={json.dumps(val, separators=(',', ':'))}")
        elif mine[key] != theirs[key]:
            parts.append(f"{key}={json.dumps(mine[key], separators=(',', ':'))}")
    return "|".join(parts)


def spec_from_genome(genome: str) -> SpineNetSpec:
    if not isinstance(genome, str):
        raise ValueError(f"genome must be a string, got {type(genome).__name__}")
    parts = genome.strip().split("|")
    if len(parts) < 2 or parts[0] != "v1":
        raise ValueError(f"genome must start with 'v1|<blocks>', got {genome[:40]!r}")
    code_to_type = {v: k for k, v in BLOCK_TYPE_CODES.items()}
    blocks = []
    for i, tok in enumerate(parts[1].split(",")):
        m = _BLOCK_RE.fullmatch(tok)
        if not m:
            raise ValueError(f"genome block {i}: cannot parse {tok!r} (expected e.g. '4b5.10o')")
        if m["code"] not in code_to_type:
            raise ValueError(f"genome block {i}: unknown block type code {m['code']!r}")
        blocks.append({"level": int(m["level"]), "block_type": code_to_type[m["code"]],
                       "input_offsets": [int(p) for p in m["parents"].split(".")], "is_output": bool(m["out"])})
    d = {"blocks": blocks, **_default_dict()}
    for tok in parts[2:]:
        key, sep, raw = tok.partition("=")
        if not sep:
            raise ValueError(f"genome field {tok!r}: expected name=value")
        try:
            val = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"genome field {key!r}: bad value {raw!r} ({e})") from e
        if "." in key:
            sec, sub = key.split(".", 1)
            if sec not in _NESTED or sub not in d[sec]:
                raise ValueError(f"genome: unknown field {key!r}")
            d[sec][sub] = val
        else:
            if key not in d or key == "blocks":
                raise ValueError(f"genome: unknown field {key!r}")
            d[key] = val
    return spec_from_dict(d, source="genome")


# ---------------------------------------------------------------------------- files
def load_spec(path: str | os.PathLike) -> SpineNetSpec:
    """Read a spec from a JSON file (or a file holding a genome string); errors name the file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"spec {str(p)!r} is a folder; give a spec JSON file, a genome file or a genome string")
    if not p.is_file():
        raise FileNotFoundError(f"spec file {str(p)!r} not found (give a spec JSON file, a genome file, "
                                "or a genome string starting with 'v1|')")
    try:
        text = p.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"spec {str(p)!r}: not a text file ({e})") from e
    if text.startswith("v1|"):
        try:
            return spec_from_genome(text)
        except ValueError as e:
            raise _prefixed(str(p), e) from None
    return spec_from_json(text, source=str(p))


def save_spec(spec: SpineNetSpec, path: str | os.PathLike) -> None:
    from torchspine.utils import atomic_write_text

    atomic_write_text(path, spec_to_json(spec) + "\n")


def coerce_spec(spec: Any, *, source: str = "spec") -> SpineNetSpec:
    """A spec from a spec object, its dict, a genome string, or a JSON / genome file path."""
    if isinstance(spec, SpineNetSpec):
        return spec
    if isinstance(spec, dict):
        return spec_from_dict(spec, source=source)
    if isinstance(spec, str):
        return spec_from_genome(spec) if spec.startswith("v1|") else load_spec(spec)
    if hasattr(spec, "__fspath__"):
        return load_spec(spec)
    raise ValueError(f"{source}: expected a SpineNetSpec, a dict, a genome string or a JSON path, "
                     f"got {type(spec).__name__}")
