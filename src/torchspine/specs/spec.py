"""SpineNet architecture as data (paper section 3; official ``SPINENET_BLOCK_SPECS`` / ``SCALING_MAP``).

A :class:`SpineNetSpec` fully describes a backbone: the stem, the ordered list of
scale-permuted blocks, the scaling preset and the norm/activation settings. The
backbone builder (:class:`torchspine.models.backbone.SpineNet`) reads nothing else.

Every spec object is checked when it is made (``__post_init__``): a field of the wrong type
(``input_offsets=5``, ``momentum="x"``, ``min_level="3"``, ``is_output="false"``), a value out
of range or an inconsistent graph raises ``ValueError`` naming the block and the field, so an
invalid spec cannot exist. :meth:`SpineNetSpec.validate` is kept as a no-op returning ``self``.

Index convention (as in the official code): ``feats`` is the running list of block
outputs. The stem block groups come first (``feats[0]``, ``feats[1]`` for SpineNet),
then block ``i`` of ``blocks`` is appended at ``feats[i + num_stem_blocks]``.
``BlockSpec.input_offsets`` are indices into that list, so they must point to an
earlier entry.

The JSON and genome serializations live in :mod:`torchspine.specs.codec`; the methods
``to_json`` / ``from_json`` / ``to_genome`` / ``from_genome`` / ``load`` / ``save`` here call it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args

from numpy import bool_ as np_bool

__all__ = [
    "BLOCK_TYPE_CODES",
    "CODEBASE_FLAVORS",
    "Activation",
    "BlockSpec",
    "Codebase",
    "NormSpec",
    "Padding",
    "ScalingSpec",
    "SpineNetSpec",
    "StemSpec",
    "MIN_SUPPORTED_LEVEL",
    "MAX_SUPPORTED_LEVEL",
    "codebase_overrides",
    "register_block_type",
]

# Levels the builder supports: L1 (stride 2, mobile stem) to L8 (stride 256).
MIN_SUPPORTED_LEVEL = 1
MAX_SUPPORTED_LEVEL = 8

# Block types a spec may name, with the one-letter code used in genomes. Open: a block family
# registers its type here (torchspine.layers.blocks.register_block(..., code=...) does it for
# the layer side), like the layer registry BLOCK_REGISTRY.
BLOCK_TYPE_CODES: dict[str, str] = {}


def register_block_type(name: str, code: str) -> None:
    """Let specs name block type ``name``, written ``code`` (one lower-case letter) in genomes."""
    if not (isinstance(name, str) and name):
        raise ValueError(f"block type name must be a non-empty string, got {name!r}")
    if not (isinstance(code, str) and len(code) == 1 and "a" <= code <= "z" and code != "o"):
        raise ValueError(f"block type {name!r}: genome code must be one lower-case letter other than 'o', got {code!r}")
    if BLOCK_TYPE_CODES.get(name, code) != code:
        raise ValueError(f"block type {name!r} is already registered with code {BLOCK_TYPE_CODES[name]!r}")
    for other, c in BLOCK_TYPE_CODES.items():
        if c == code and other != name:
            raise ValueError(f"genome code {code!r} is already used by block type {other!r}")
    BLOCK_TYPE_CODES[name] = code


for _name, _code in (("bottleneck", "b"), ("residual", "r"), ("mbconv", "m"), ("resnext", "x")):
    register_block_type(_name, _code)

Activation = Literal["relu", "swish", "hard_swish"]
Padding = Literal["symmetric", "same"]
Resample = Literal["alpha", "sepconv"]
StemKind = Literal["resnet", "mobile"]
Codebase = Literal["tpu", "mg"]

# The two official codebases' conventions, in one table (read by the specs, the mobile
# presets, the TF checkpoint converter and the Mask R-CNN presets):
# * "tpu": tensorflow/tpu models/official/detection (the code the paper links): BN momentum
#   0.997, epsilon 1e-4, fixed symmetric padding for strided convs;
# * "mg": Model Garden tensorflow/models official/vision: BN momentum 0.99, epsilon 1e-3,
#   TF 'SAME' padding everywhere.
CODEBASE_FLAVORS: dict[str, dict[str, Any]] = {
    "tpu": {"padding": "symmetric", "momentum": 0.997, "epsilon": 1e-4},
    "mg": {"padding": "same", "momentum": 0.99, "epsilon": 1e-3},
}


def codebase_overrides(codebase: str) -> dict[str, Any]:
    """The spec overrides (``padding``, ``momentum``, ``epsilon``) of an official codebase."""
    if codebase not in CODEBASE_FLAVORS:
        raise ValueError(f"unknown codebase {codebase!r}; expected one of {tuple(CODEBASE_FLAVORS)}")
    return dict(CODEBASE_FLAVORS[codebase])


# --------------------------------------------------------------------- field checks
def _fail(where: str, msg: str) -> None:
    raise ValueError(f"{where}: {msg}" if where else msg)


def _is_int(v: Any) -> bool:
    # numbers.Integral also admits numpy integers (normalised to int by _check_int).
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np_bool))


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np_bool)) and math.isfinite(v)


def _check_int(where: str, name: str, v: Any, obj: Any = None) -> None:
    """Fail unless ``v`` is an integer; with ``obj``, store it back on ``obj`` as a plain ``int``."""
    if not _is_int(v):
        _fail(where, f"field {name!r} must be an integer, got {v!r} ({type(v).__name__})")
    if obj is not None and type(v) is not int:
        _set(obj, name, int(v))


def _check_number(where: str, name: str, v: Any, obj: Any = None) -> None:
    if not _is_number(v):
        _fail(where, f"field {name!r} must be a finite number, got {v!r} ({type(v).__name__})")
    if obj is not None and type(v) not in (int, float):
        _set(obj, name, float(v))


def _check_bool(where: str, name: str, v: Any, obj: Any = None) -> None:
    if not isinstance(v, (bool, np_bool)):
        _fail(where, f"field {name!r} must be true or false, got {v!r} ({type(v).__name__})")
    if obj is not None and type(v) is not bool:
        _set(obj, name, bool(v))


def _check_choice(where: str, name: str, v: Any, choices: tuple) -> None:
    if not isinstance(v, str) or v not in choices:
        _fail(where, f"unknown {name} {v!r}; expected one of {choices}")


def _int_tuple(where: str, name: str, v: Any) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(_is_int(x) for x in v):
        _fail(where, f"field {name!r} must be a list of integers, got {v!r}")
    return tuple(int(x) for x in v)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass in __post_init__


@dataclass(frozen=True)
class BlockSpec:
    """One scale-permuted block: a row of the official block-spec table.

    Attributes:
        level: feature level; the block's output has stride ``2**level``.
        block_type: ``"bottleneck"`` (output ``4*filters`` channels), ``"residual"``
            (``filters`` channels), or a registered type (``"mbconv"``, ``"resnext"``;
            see :func:`register_block_type`).
        input_offsets: indices into ``feats`` of the parents (see module docstring); two in
            every published model, one in the graph-damage ablations (paper Table 8).
        is_output: whether this block feeds the endpoint of its level.

    Types are checked here; the range of ``level`` and the offsets are checked by the
    :class:`SpineNetSpec` holding the block, whose errors name the block's index.
    """

    level: int
    block_type: str
    input_offsets: tuple[int, ...]
    is_output: bool = False

    def __post_init__(self) -> None:
        where = f"block (level {self.level!r})"
        _check_int(where, "level", self.level, self)
        if not isinstance(self.block_type, str) or self.block_type not in BLOCK_TYPE_CODES:
            _fail(where, f"unknown block type {self.block_type!r}; expected one of {tuple(BLOCK_TYPE_CODES)}")
        _set(self, "input_offsets", _int_tuple(where, "input_offsets", self.input_offsets))
        _check_bool(where, "is_output", self.is_output, self)


@dataclass(frozen=True)
class ScalingSpec:
    """The scaling preset of a model id (official ``SCALING_MAP``)."""

    endpoints_num_filters: int = 256
    filter_size_scale: float = 1.0
    resample_alpha: float = 0.5
    block_repeats: int = 1

    def __post_init__(self) -> None:
        for name in ("endpoints_num_filters", "block_repeats"):
            _check_int("scaling", name, getattr(self, name), self)
            if getattr(self, name) < 1:
                _fail("", f"scaling.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("filter_size_scale", "resample_alpha"):
            _check_number("scaling", name, getattr(self, name), self)
            if not getattr(self, name) > 0:
                _fail("", f"scaling.{name} must be positive, got {getattr(self, name)!r}")


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

    kind: StemKind = "resnet"
    conv_filters: int = 64
    block_levels: tuple[int, ...] = (2, 2)
    block_type: str = "bottleneck"

    def __post_init__(self) -> None:
        _check_choice("", "stem.kind", self.kind, get_args(StemKind))
        _check_int("stem", "conv_filters", self.conv_filters, self)
        if self.conv_filters < 1:
            _fail("", f"stem.conv_filters must be positive, got {self.conv_filters!r}")
        levels = _int_tuple("stem", "block_levels", self.block_levels)
        _set(self, "block_levels", levels)
        if not levels:
            _fail("", "stem.block_levels is empty: the stem needs at least one block group")
        if not isinstance(self.block_type, str) or self.block_type not in BLOCK_TYPE_CODES:
            _fail("", f"stem.block_type {self.block_type!r} is unknown; expected one of {tuple(BLOCK_TYPE_CODES)}")
        prev = 0
        for j, lvl in enumerate(levels):
            if not MIN_SUPPORTED_LEVEL <= lvl <= MAX_SUPPORTED_LEVEL:
                _fail("", f"stem block {j} level {lvl} outside the supported range "
                          f"[{MIN_SUPPORTED_LEVEL}, {MAX_SUPPORTED_LEVEL}]")
            if lvl < prev:
                _fail("", f"stem block {j} level {lvl} is below the previous stem level {prev}: "
                          "the stem is scale-decreasing")
            prev = lvl


@dataclass(frozen=True)
class NormSpec:
    """Batch-norm settings in TensorFlow's convention (``momentum`` is the moving-average decay).

    The PyTorch ``BatchNorm2d(momentum=...)`` is ``1 - momentum``. Defaults are the
    tensorflow/tpu values of :data:`CODEBASE_FLAVORS` (0.997 / 1e-4); Model Garden uses 0.99 / 1e-3.
    """

    momentum: float = CODEBASE_FLAVORS["tpu"]["momentum"]
    epsilon: float = CODEBASE_FLAVORS["tpu"]["epsilon"]

    def __post_init__(self) -> None:
        _check_number("norm", "momentum", self.momentum, self)
        _check_number("norm", "epsilon", self.epsilon, self)
        if not 0.0 <= self.momentum < 1.0:
            _fail("", f"norm.momentum must be in [0, 1), got {self.momentum!r}")
        if not self.epsilon > 0:
            _fail("", f"norm.epsilon must be positive, got {self.epsilon!r}")


# Base filters per level (official FILTER_SIZE_MAP); a block's filters are
# int(base * filter_size_scale), truncating like the reference.
SPINENET_FILTER_SIZE_MAP: tuple[tuple[int, int], ...] = (
    (1, 32), (2, 64), (3, 128), (4, 256), (5, 256), (6, 256), (7, 256),
)


@dataclass(frozen=True)
class SpineNetSpec:
    """A whole SpineNet backbone, checked when made (see the module docstring).

    Attributes:
        blocks: the scale-permuted blocks in build order.
        scaling: the scaling preset.
        stem: the stem network.
        min_level, max_level: the endpoint levels (P3 to P7 by default); exactly one
            output block per level in this range is required, and none outside it.
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
            ResNeXt ``groups``, ``width_per_group``); a dict is accepted and sorted.
        name: a label (model id or search-trial id); does not change the network.
    """

    blocks: tuple[BlockSpec, ...]
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    stem: StemSpec = field(default_factory=StemSpec)
    min_level: int = 3
    max_level: int = 7
    activation: Activation = "relu"
    norm: NormSpec = field(default_factory=NormSpec)
    padding: Padding = CODEBASE_FLAVORS["tpu"]["padding"]
    resample: Resample = "alpha"
    filter_size_map: tuple[tuple[int, int], ...] = SPINENET_FILTER_SIZE_MAP
    stochastic_depth_rate: float = 0.0
    stochastic_depth_denominator: int = 0
    zero_outdegree_connections: bool = True
    block_options: tuple[tuple[str, Any], ...] = ()
    name: str = ""

    # --------------------------------------------------------------- validation
    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            _fail("spec", f"field 'name' must be a string, got {self.name!r}")
        where = f"spec {self.name or '<unnamed>'}"

        def fail(msg: str) -> None:
            raise ValueError(f"{where}: {msg}")

        # Types first, so that the range checks below compare numbers.
        if not isinstance(self.blocks, (tuple, list)) or not all(isinstance(b, BlockSpec) for b in self.blocks):
            fail(f"field 'blocks' must be a list of BlockSpec, got {self.blocks!r:.80}")
        _set(self, "blocks", tuple(self.blocks))
        for name, cls in _NESTED.items():
            if not isinstance(getattr(self, name), cls):
                fail(f"field {name!r} must be a {cls.__name__}, got {getattr(self, name)!r}")
        for name in ("min_level", "max_level", "stochastic_depth_denominator"):
            _check_int(where, name, getattr(self, name), self)
        _check_number(where, "stochastic_depth_rate", self.stochastic_depth_rate, self)
        _check_bool(where, "zero_outdegree_connections", self.zero_outdegree_connections, self)
        _check_choice(where, "activation", self.activation, get_args(Activation))
        _check_choice(where, "padding", self.padding, get_args(Padding))
        _check_choice(where, "resample", self.resample, get_args(Resample))
        fmap = self.filter_size_map
        if not (isinstance(fmap, (tuple, list)) and all(
                isinstance(p, (tuple, list)) and len(p) == 2 and _is_int(p[0]) and _is_int(p[1]) for p in fmap)):
            fail(f"field 'filter_size_map' must be a list of [level, filters] integer pairs, got {fmap!r}")
        _set(self, "filter_size_map", tuple((int(a), int(b)) for a, b in fmap))
        _set(self, "block_options", _normalize_options(self.block_options, where))

        if not self.blocks:
            fail("has no blocks")
        sc = self.scaling
        if not 0.0 <= self.stochastic_depth_rate < 1.0:
            fail(f"stochastic_depth_rate must be in [0, 1), got {self.stochastic_depth_rate!r}")
        if self.stochastic_depth_denominator < 0:
            fail(f"stochastic_depth_denominator must be >= 0, got {self.stochastic_depth_denominator!r}")
        if not MIN_SUPPORTED_LEVEL <= self.min_level <= self.max_level <= MAX_SUPPORTED_LEVEL:
            fail(f"min_level {self.min_level} / max_level {self.max_level} must satisfy "
                 f"{MIN_SUPPORTED_LEVEL} <= min_level <= max_level <= {MAX_SUPPORTED_LEVEL}")
        base = dict(self.filter_size_map)
        # Out-of-range block levels are reported below, naming the block.
        levels_used = set(self.stem.block_levels) | {
            b.level for b in self.blocks if MIN_SUPPORTED_LEVEL <= b.level <= MAX_SUPPORTED_LEVEL
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
            at = f"block {i} (feats index {i + n_stem}, level {b.level})"
            if not MIN_SUPPORTED_LEVEL <= b.level <= MAX_SUPPORTED_LEVEL:
                fail(f"{at}: level {b.level!r} outside the supported range "
                     f"[{MIN_SUPPORTED_LEVEL}, {MAX_SUPPORTED_LEVEL}]")
            if len(b.input_offsets) < 1:
                fail(f"{at}: needs at least one input offset, got {b.input_offsets!r}")
            for p in b.input_offsets:
                if p < 0 or p >= i + n_stem:
                    fail(f"{at}: parent offset {p!r} is not an earlier block (valid: 0 to {i + n_stem - 1})")
            if b.is_output:
                if not self.min_level <= b.level <= self.max_level:
                    fail(f"{at}: output block at level {b.level} outside [min_level={self.min_level}, "
                         f"max_level={self.max_level}] (set is_output false or widen the level range)")
                if b.level in outputs:
                    fail(f"{at}: second output at level {b.level} (block {outputs[b.level]} is already the output)")
                outputs[b.level] = i
        missing = [lvl for lvl in range(self.min_level, self.max_level + 1) if lvl not in outputs]
        if missing:
            fail(f"no output block for level(s) {missing}; every level in "
                 f"[min_level={self.min_level}, max_level={self.max_level}] needs one")

    def validate(self) -> "SpineNetSpec":
        """A no-op returning ``self``: every spec is checked when it is made."""
        return self

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

    def drop_path_rate(self, index: int) -> float:
        """The official per-block stochastic-depth rate for block ``index`` (0-based)."""
        rate = self.stochastic_depth_rate
        if not 0.0 < rate < 1.0:
            return 0.0
        denominator = self.stochastic_depth_denominator or len(self.blocks)
        return rate * (index + 1) / denominator

    # ---------------------------------------------------------------- overrides
    def replace(self, **overrides: Any) -> "SpineNetSpec":
        """Return a new (checked) spec with fields replaced.

        Keys may name a top-level field (``activation="swish"``), a field of a nested
        section (``filter_size_scale=0.25`` goes to ``scaling``; ``momentum`` to ``norm``),
        or a dotted path (``"stem.conv_filters"``). Unknown keys raise ``ValueError``.
        """
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        top_names = {f.name for f in fields(self)}
        for key, value in overrides.items():
            if "." in key:
                sec, sub = key.split(".", 1)
                if sec not in _NESTED or sub not in {f.name for f in fields(_NESTED[sec])}:
                    raise ValueError(f"unknown spec field {key!r}")
                nested.setdefault(sec, {})[sub] = value
            elif key in top_names:
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
        label = f"spec {top.get('name', self.name) or '<unnamed>'}"
        try:
            for sec, vals in nested.items():
                top[sec] = replace(top.get(sec, getattr(self, sec)), **vals)
            for sec in _NESTED:
                if isinstance(top.get(sec), dict):
                    from torchspine.specs.codec import section_from_dict

                    top[sec] = section_from_dict(sec, top[sec], source=label)
            if "blocks" in top:
                from torchspine.specs.codec import block_from_obj

                top["blocks"] = tuple(block_from_obj(b, source=f"{label}: blocks[{i}]")
                                      for i, b in enumerate(top["blocks"]))
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("spec ") else f"{label}: {msg}") from None
        return replace(self, **top)

    # ------------------------------------------------- serialization (specs.codec)
    def to_dict(self) -> dict[str, Any]:
        from torchspine.specs.codec import spec_to_dict

        return spec_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "spec") -> "SpineNetSpec":
        from torchspine.specs.codec import spec_from_dict

        return spec_from_dict(d, source=source)

    def to_json(self, indent: int | None = 2) -> str:
        from torchspine.specs.codec import spec_to_json

        return spec_to_json(self, indent=indent)

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec JSON") -> "SpineNetSpec":
        from torchspine.specs.codec import spec_from_json

        return spec_from_json(text, source=source)

    @classmethod
    def coerce(cls, spec: Any, *, source: str = "spec") -> "SpineNetSpec":
        """A spec from a spec object, its dict, a genome string, or a JSON / genome file path."""
        from torchspine.specs.codec import coerce_spec

        return coerce_spec(spec, source=source)

    @classmethod
    def load(cls, path: Any) -> "SpineNetSpec":
        """Read a spec from a JSON file (or a file holding a genome string)."""
        from torchspine.specs.codec import load_spec

        return load_spec(path)

    def save(self, path: Any) -> None:
        from torchspine.specs.codec import save_spec

        save_spec(self, path)

    def to_genome(self) -> str:
        """A compact one-line string that round-trips exactly (see :mod:`torchspine.specs.codec`)."""
        from torchspine.specs.codec import spec_to_genome

        return spec_to_genome(self)

    @classmethod
    def from_genome(cls, genome: str) -> "SpineNetSpec":
        from torchspine.specs.codec import spec_from_genome

        return spec_from_genome(genome)


_NESTED: dict[str, type] = {"scaling": ScalingSpec, "stem": StemSpec, "norm": NormSpec}


def _normalize_options(opts: Any, where: str = "spec") -> tuple[tuple[str, Any], ...]:
    if isinstance(opts, dict):
        items = list(opts.items())
    elif isinstance(opts, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in opts):
        items = [tuple(p) for p in opts]
    else:
        raise ValueError(f"{where}: field 'block_options' must be an object or a list of [name, value] pairs, "
                         f"got {opts!r}")
    for k, _ in items:
        if not isinstance(k, str):
            raise ValueError(f"{where}: block_options name {k!r} must be a string")
    return tuple(sorted(items))
