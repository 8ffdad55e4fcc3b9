"""SpineNet architecture as data (paper section 3; official ``SPINENET_BLOCK_SPECS`` / ``SCALING_MAP``).

A :class:`SpineNetSpec` fully describes a backbone: the stem, the ordered list of
scale-permuted blocks, the scaling preset and the norm/activation settings. The
backbone builder (:class:`torchspine.models.backbone.SpineNet`) reads nothing else.

Index convention (as in the official code): ``feats`` is the running list of block
outputs. The stem block groups come first (``feats[0]``, ``feats[1]`` for SpineNet),
then block ``i`` of ``blocks`` is appended at ``feats[i + num_stem_blocks]``.
``BlockSpec.input_offsets`` are indices into that list, so they must point to an
earlier entry.

Two serializations are provided and both round-trip exactly:

* JSON (:meth:`SpineNetSpec.to_json` / :meth:`SpineNetSpec.from_json`);
* a compact one-line *genome* (:meth:`SpineNetSpec.to_genome` /
  :meth:`SpineNetSpec.from_genome`), e.g.
  ``v1|2b0.1,4r0.1,...,6b12.14o|scaling.filter_size_scale=0.65``. Blocks are written as
  ``{level}{type code}{parent0}.{parent1}`` plus ``o`` for output blocks; every other
  field that differs from its default follows as ``dotted.name=json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

__all__ = [
    "BLOCK_TYPE_CODES",
    "BlockSpec",
    "NormSpec",
    "ScalingSpec",
    "SpineNetSpec",
    "StemSpec",
    "MIN_SUPPORTED_LEVEL",
    "MAX_SUPPORTED_LEVEL",
]

# Levels the builder supports: L1 (stride 2, mobile stem) to L8 (stride 256).
MIN_SUPPORTED_LEVEL = 1
MAX_SUPPORTED_LEVEL = 8

# Block types known to the builder, with the one-letter code used in genomes.
# (torchspine.layers.blocks keeps the matching module classes.)
BLOCK_TYPE_CODES: dict[str, str] = {
    "bottleneck": "b",
    "residual": "r",
    "mbconv": "m",
    "resnext": "x",
}
_CODE_TO_BLOCK_TYPE = {v: k for k, v in BLOCK_TYPE_CODES.items()}

Activation = Literal["relu", "swish", "hard_swish"]
Padding = Literal["symmetric", "same"]
_ACTIVATIONS = ("relu", "swish", "hard_swish")
_PADDINGS = ("symmetric", "same")
_STEM_KINDS = ("resnet", "mobile")
_RESAMPLE_KINDS = ("alpha", "sepconv")


@dataclass(frozen=True)
class BlockSpec:
    """One scale-permuted block: a row of the official block-spec table.

    Attributes:
        level: feature level; the block's output has stride ``2**level``.
        block_type: ``"bottleneck"`` (output ``4*filters`` channels), ``"residual"``
            (``filters`` channels), or a type added by a family (``"mbconv"``, ``"resnext"``).
        input_offsets: indices into ``feats`` of the parents (see module docstring); two in
            every published model, one in the graph-damage ablations (paper Table 8).
        is_output: whether this block feeds the endpoint of its level.
    """

    level: int
    block_type: str
    input_offsets: tuple[int, ...]
    is_output: bool = False


@dataclass(frozen=True)
class ScalingSpec:
    """The scaling preset of a model id (official ``SCALING_MAP``)."""

    endpoints_num_filters: int = 256
    filter_size_scale: float = 1.0
    resample_alpha: float = 0.5
    block_repeats: int = 1


@dataclass(frozen=True)
class StemSpec:
    """The fixed, scale-decreased stem network.

    ``kind="resnet"``: 7x7/2 conv with ``conv_filters`` filters (never scaled), BN,
    activation, 3x3/2 max pool, then one block group per entry of ``block_levels``
    (SpineNet: two L2 bottleneck groups). A group at a higher level than the previous one
    downsamples with stride 2 (used by the R[N]-SP[M] ablation stems).

    ``kind="mobile"``: 3x3/2 conv with ``int(conv_filters * scale)`` filters, then MBConv
    groups at ``block_levels`` (SpineNet-Mobile: L1 then L2).
    """

    kind: str = "resnet"
    conv_filters: int = 64
    block_levels: tuple[int, ...] = (2, 2)
    block_type: str = "bottleneck"


@dataclass(frozen=True)
class NormSpec:
    """Batch-norm settings in TensorFlow's convention (``momentum`` is the moving-average decay).

    The PyTorch ``BatchNorm2d(momentum=...)`` is ``1 - momentum``. Defaults are the
    tensorflow/tpu RetinaNet values (0.997 / 1e-4); Model Garden uses 0.99 / 1e-3.
    """

    momentum: float = 0.997
    epsilon: float = 1e-4


# Base filters per level (official FILTER_SIZE_MAP); a block's filters are
# int(base * filter_size_scale), truncating like the reference.
SPINENET_FILTER_SIZE_MAP: tuple[tuple[int, int], ...] = (
    (1, 32), (2, 64), (3, 128), (4, 256), (5, 256), (6, 256), (7, 256),
)


@dataclass(frozen=True)
class SpineNetSpec:
    """A whole SpineNet backbone.

    Attributes:
        blocks: the scale-permuted blocks in build order.
        scaling: the scaling preset.
        stem: the stem network.
        min_level, max_level: the endpoint levels (P3 to P7 by default); exactly one
            output block per level in this range is required.
        activation: ``relu``, ``swish`` or ``hard_swish``; drives every activation.
        norm: batch-norm settings.
        padding: ``"symmetric"`` (tensorflow/tpu: fixed symmetric conv padding, TF 'SAME'
            max pools, one k5 max pool for large downsampling) or ``"same"`` (Model Garden:
            TF 'SAME' padding for every strided conv, chained 3x3/2 'SAME' max pools).
        resample: ``"alpha"`` (SpineNet: 1x1 alpha reduction, 3x3/2 conv, pools, 1x1 project)
            or ``"sepconv"`` (SpineNet-Mobile: depthwise 3x3/2 convs, 1x1 project, no alpha).
        filter_size_map: ``(level, base_filters)`` pairs.
        stochastic_depth_rate: rate of the last block; block ``i`` gets
            ``rate * (i + 1) / stochastic_depth_denominator`` (official per-block rate).
        stochastic_depth_denominator: ``0`` means ``len(blocks)`` (tensorflow/tpu);
            Model Garden's 16-spec version divides by 16.
        zero_outdegree_connections: connect intermediate blocks that nothing consumes to
            the output block of their level (paper 3.3, official code); off for ablations.
        block_options: extra keyword settings for the block family, as sorted
            ``(name, value)`` pairs (for example MBConv ``expand_ratio``, ``se_ratio``;
            ResNeXt ``groups``, ``width_per_group``).
        name: a label (model id or search-trial id); does not change the network.
    """

    blocks: tuple[BlockSpec, ...]
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    stem: StemSpec = field(default_factory=StemSpec)
    min_level: int = 3
    max_level: int = 7
    activation: str = "relu"
    norm: NormSpec = field(default_factory=NormSpec)
    padding: str = "symmetric"
    resample: str = "alpha"
    filter_size_map: tuple[tuple[int, int], ...] = SPINENET_FILTER_SIZE_MAP
    stochastic_depth_rate: float = 0.0
    stochastic_depth_denominator: int = 0
    zero_outdegree_connections: bool = True
    block_options: tuple[tuple[str, Any], ...] = ()
    name: str = ""

    # ------------------------------------------------------------------ derived
    @property
    def num_stem_blocks(self) -> int:
        return len(self.stem.block_levels)

    def filters(self, level: int) -> int:
        """Filters of a block at ``level``: ``int(base * filter_size_scale)`` (truncating)."""
        base = dict(self.filter_size_map)
        if level not in base:
            raise ValueError(
                f"spec {self.name or '<unnamed>'}: no base filter size for level {level} "
                f"in filter_size_map {self.filter_size_map}"
            )
        return int(base[level] * self.scaling.filter_size_scale)

    def block_option(self, name: str, default: Any = None) -> Any:
        return dict(self.block_options).get(name, default)

    def drop_path_rate(self, index: int) -> float:
        """The official per-block stochastic-depth rate for block ``index`` (0-based)."""
        rate = self.stochastic_depth_rate
        if not 0.0 < rate < 1.0:
            return 0.0
        denominator = self.stochastic_depth_denominator or len(self.blocks)
        return rate * (index + 1) / denominator

    # --------------------------------------------------------------- validation
    def validate(self) -> "SpineNetSpec":
        """Check the spec; raise ``ValueError`` naming the block and the problem. Returns self."""
        label = self.name or "<unnamed>"

        def fail(msg: str) -> None:
            raise ValueError(f"spec {label}: {msg}")

        if not self.blocks:
            fail("has no blocks")
        sc = self.scaling
        if not (isinstance(sc.filter_size_scale, (int, float)) and sc.filter_size_scale > 0
                and math.isfinite(sc.filter_size_scale)):
            fail(f"scaling.filter_size_scale must be positive, got {sc.filter_size_scale!r}")
        if not (isinstance(sc.resample_alpha, (int, float)) and sc.resample_alpha > 0
                and math.isfinite(sc.resample_alpha)):
            fail(f"scaling.resample_alpha must be positive, got {sc.resample_alpha!r}")
        if not (isinstance(sc.block_repeats, int) and sc.block_repeats >= 1):
            fail(f"scaling.block_repeats must be a positive integer, got {sc.block_repeats!r}")
        if not (isinstance(sc.endpoints_num_filters, int) and sc.endpoints_num_filters >= 1):
            fail(f"scaling.endpoints_num_filters must be a positive integer, got {sc.endpoints_num_filters!r}")
        if self.activation not in _ACTIVATIONS:
            fail(f"unknown activation {self.activation!r}; expected one of {_ACTIVATIONS}")
        if self.padding not in _PADDINGS:
            fail(f"unknown padding {self.padding!r}; expected one of {_PADDINGS}")
        if self.resample not in _RESAMPLE_KINDS:
            fail(f"unknown resample {self.resample!r}; expected one of {_RESAMPLE_KINDS}")
        if not 0.0 <= self.norm.momentum < 1.0:
            fail(f"norm.momentum must be in [0, 1), got {self.norm.momentum!r}")
        if not self.norm.epsilon > 0:
            fail(f"norm.epsilon must be positive, got {self.norm.epsilon!r}")
        if not 0.0 <= self.stochastic_depth_rate < 1.0:
            fail(f"stochastic_depth_rate must be in [0, 1), got {self.stochastic_depth_rate!r}")
        if self.stochastic_depth_denominator < 0:
            fail(f"stochastic_depth_denominator must be >= 0, got {self.stochastic_depth_denominator!r}")
        if self.stem.kind not in _STEM_KINDS:
            fail(f"unknown stem.kind {self.stem.kind!r}; expected one of {_STEM_KINDS}")
        if not self.stem.block_levels:
            fail("stem.block_levels is empty: the stem needs at least one block group")
        if self.stem.conv_filters < 1:
            fail(f"stem.conv_filters must be positive, got {self.stem.conv_filters!r}")
        if self.stem.block_type not in BLOCK_TYPE_CODES:
            fail(f"stem.block_type {self.stem.block_type!r} is unknown; expected one of {tuple(BLOCK_TYPE_CODES)}")
        prev = 0
        for j, lvl in enumerate(self.stem.block_levels):
            if not MIN_SUPPORTED_LEVEL <= lvl <= MAX_SUPPORTED_LEVEL:
                fail(f"stem block {j} level {lvl} outside the supported range "
                     f"[{MIN_SUPPORTED_LEVEL}, {MAX_SUPPORTED_LEVEL}]")
            if lvl < prev:
                fail(f"stem block {j} level {lvl} is below the previous stem level {prev}: the stem is scale-decreasing")
            prev = lvl
        if not MIN_SUPPORTED_LEVEL <= self.min_level <= self.max_level <= MAX_SUPPORTED_LEVEL:
            fail(f"min_level {self.min_level} / max_level {self.max_level} must satisfy "
                 f"{MIN_SUPPORTED_LEVEL} <= min_level <= max_level <= {MAX_SUPPORTED_LEVEL}")
        base = dict(self.filter_size_map)
        # Out-of-range block levels are reported below, naming the block.
        levels_used = set(self.stem.block_levels) | {
            b.level for b in self.blocks
            if isinstance(b.level, int) and MIN_SUPPORTED_LEVEL <= b.level <= MAX_SUPPORTED_LEVEL
        }
        for lvl in sorted(levels_used):
            if lvl not in base:
                users = [i for i, b in enumerate(self.blocks) if b.level == lvl]
                who = f"block {users[0]} (level {lvl})" if users else f"stem level {lvl}"
                fail(f"{who}: filter_size_map has no entry for level {lvl}")
            if int(base[lvl] * sc.filter_size_scale) < 1:
                fail(f"level {lvl}: filter_size_scale {sc.filter_size_scale} leaves "
                     f"int({base[lvl]} * {sc.filter_size_scale}) = 0 filters")

        n_stem = self.num_stem_blocks
        outputs: dict[int, int] = {}
        for i, b in enumerate(self.blocks):
            where = f"block {i} (feats index {i + n_stem}, level {b.level})"
            if b.block_type not in BLOCK_TYPE_CODES:
                fail(f"{where}: unknown block type {b.block_type!r}; expected one of {tuple(BLOCK_TYPE_CODES)}")
            if not isinstance(b.level, int) or not MIN_SUPPORTED_LEVEL <= b.level <= MAX_SUPPORTED_LEVEL:
                fail(f"{where}: level {b.level!r} outside the supported range "
                     f"[{MIN_SUPPORTED_LEVEL}, {MAX_SUPPORTED_LEVEL}]")
            if len(b.input_offsets) < 1:
                fail(f"{where}: needs at least one input offset, got {b.input_offsets!r}")
            for p in b.input_offsets:
                if not isinstance(p, int) or p < 0 or p >= i + n_stem:
                    fail(f"{where}: parent offset {p!r} is not an earlier block "
                         f"(valid: 0 to {i + n_stem - 1})")
            if b.is_output:
                if b.level in outputs:
                    fail(f"{where}: second output at level {b.level} (block {outputs[b.level]} is already the output)")
                outputs[b.level] = i
        missing = [lvl for lvl in range(self.min_level, self.max_level + 1) if lvl not in outputs]
        if missing:
            fail(f"no output block for level(s) {missing}; every level in "
                 f"[min_level={self.min_level}, max_level={self.max_level}] needs one")
        return self

    # ---------------------------------------------------------------- overrides
    def replace(self, **overrides: Any) -> "SpineNetSpec":
        """Return a new, validated spec with fields replaced.

        Keys may name a top-level field (``activation="swish"``), a field of a nested
        section (``filter_size_scale=0.25`` goes to ``scaling``; ``momentum`` to ``norm``),
        or a dotted path (``"stem.conv_filters"``). Unknown keys raise ``ValueError``.
        """
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        sections = {f.name: f for f in fields(self) if f.name in _NESTED}
        for key, value in overrides.items():
            if "." in key:
                sec, sub = key.split(".", 1)
                if sec not in sections or sub not in {f.name for f in fields(_NESTED[sec])}:
                    raise ValueError(f"unknown spec field {key!r}")
                nested.setdefault(sec, {})[sub] = value
            elif key in {f.name for f in fields(self)}:
                top[key] = value
            else:
                owners = [s for s, cls in _NESTED.items() if key in {f.name for f in fields(cls)}]
                if len(owners) != 1:
                    raise ValueError(
                        f"unknown spec field {key!r}; top-level fields: "
                        f"{[f.name for f in fields(self)]}, nested: "
                        f"{ {s: [f.name for f in fields(c)] for s, c in _NESTED.items()} }"
                    )
                nested.setdefault(owners[0], {})[key] = value
        for sec, vals in nested.items():
            top[sec] = replace(top.get(sec, getattr(self, sec)), **vals)
        if "blocks" in top:
            top["blocks"] = tuple(b if isinstance(b, BlockSpec) else _block_from_obj(b) for b in top["blocks"])
        if "block_options" in top:
            top["block_options"] = _normalize_options(top["block_options"])
        return replace(self, **top).validate()

    # ------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = [
            {"level": b.level, "block_type": b.block_type,
             "input_offsets": list(b.input_offsets), "is_output": b.is_output}
            for b in self.blocks
        ]
        d["stem"]["block_levels"] = list(self.stem.block_levels)
        d["filter_size_map"] = [list(p) for p in self.filter_size_map]
        d["block_options"] = [list(p) for p in self.block_options]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "spec") -> "SpineNetSpec":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}")
        if "blocks" not in d:
            raise ValueError(f"{source}: missing field 'blocks'")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k == "blocks":
                kw[k] = tuple(_block_from_obj(b, source=f"{source}: blocks[{i}]") for i, b in enumerate(v))
            elif k in _NESTED:
                sub_known = {f.name for f in fields(_NESTED[k])}
                if not isinstance(v, dict) or set(v) - sub_known:
                    raise ValueError(f"{source}: field {k!r} must be an object with keys from {sorted(sub_known)}, got {v!r}")
                if k == "stem" and "block_levels" in v:
                    v = {**v, "block_levels": tuple(v["block_levels"])}
                kw[k] = _NESTED[k](**v)
            elif k == "filter_size_map":
                kw[k] = tuple((int(a), int(b)) for a, b in v)
            elif k == "block_options":
                kw[k] = _normalize_options(v)
            else:
                kw[k] = v
        return cls(**kw).validate()

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec JSON") -> "SpineNetSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from e
        return cls.from_dict(data, source=source)

    @classmethod
    def coerce(cls, spec: Any, *, source: str = "spec") -> "SpineNetSpec":
        """A validated spec from a spec object, its dict, a genome string, or a JSON / genome file path."""
        if isinstance(spec, SpineNetSpec):
            return spec.validate()
        if isinstance(spec, dict):
            return cls.from_dict(spec, source=source)
        if isinstance(spec, str):
            return cls.from_genome(spec) if spec.startswith("v1|") else cls.load(spec)
        if hasattr(spec, "__fspath__"):
            return cls.load(spec)
        raise ValueError(f"{source}: expected a SpineNetSpec, a dict, a genome string or a JSON path, "
                         f"got {type(spec).__name__}")

    @classmethod
    def load(cls, path: str) -> "SpineNetSpec":
        """Read a spec from a JSON file (or a file holding a genome string)."""
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        if text.startswith("v1|"):
            return cls.from_genome(text)
        return cls.from_json(text, source=str(path))

    def save(self, path: str) -> None:
        from torchspine.utils import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    # ----------------------------------------------------------------- genome
    def to_genome(self) -> str:
        """A compact one-line string that round-trips exactly (see module docstring)."""
        blocks = ",".join(
            f"{b.level}{BLOCK_TYPE_CODES[b.block_type]}{'.'.join(str(p) for p in b.input_offsets)}"
            + ("o" if b.is_output else "")
            for b in self.blocks
        )
        parts = ["v1", blocks]
        default = SpineNetSpec(blocks=self.blocks)
        mine, theirs = self.to_dict(), default.to_dict()
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

    @classmethod
    def from_genome(cls, genome: str) -> "SpineNetSpec":
        parts = genome.strip().split("|")
        if len(parts) < 2 or parts[0] != "v1":
            raise ValueError(f"genome must start with 'v1|<blocks>', got {genome[:40]!r}")
        blocks = []
        for i, tok in enumerate(parts[1].split(",")):
            m = _BLOCK_RE.fullmatch(tok)
            if not m:
                raise ValueError(f"genome block {i}: cannot parse {tok!r} (expected e.g. '4b5.10o')")
            if m["code"] not in _CODE_TO_BLOCK_TYPE:
                raise ValueError(f"genome block {i}: unknown block type code {m['code']!r}")
            blocks.append(BlockSpec(int(m["level"]), _CODE_TO_BLOCK_TYPE[m["code"]],
                                    tuple(int(p) for p in m["parents"].split(".")), bool(m["out"])))
        d = SpineNetSpec(blocks=tuple(blocks)).to_dict()
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
        return cls.from_dict(d, source="genome")


_NESTED = {"scaling": ScalingSpec, "stem": StemSpec, "norm": NormSpec}
_BLOCK_RE = re.compile(r"(?P<level>\d+)(?P<code>[a-z])(?P<parents>\d+(?:\.\d+)*)(?P<out>o?)")


def _normalize_options(opts: Any) -> tuple[tuple[str, Any], ...]:
    items = opts.items() if isinstance(opts, dict) else opts
    return tuple(sorted((str(k), v) for k, v in items))


def _block_from_obj(b: Any, *, source: str = "block") -> BlockSpec:
    if isinstance(b, BlockSpec):
        return b
    if isinstance(b, dict):
        try:
            return BlockSpec(level=b["level"], block_type=b["block_type"],
                             input_offsets=tuple(b["input_offsets"]), is_output=bool(b.get("is_output", False)))
        except KeyError as e:
            raise ValueError(f"{source}: missing field {e.args[0]!r}") from e
    if isinstance(b, (tuple, list)) and len(b) == 4:
        level, block_type, offsets, is_output = b
        return BlockSpec(level, block_type, tuple(offsets), bool(is_output))
    raise ValueError(f"{source}: cannot read a block from {b!r}")
