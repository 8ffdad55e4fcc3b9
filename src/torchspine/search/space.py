"""The scale-permuted search space of paper section 3.1, as data.

A :class:`SearchSpace` turns a flat list of integer *decisions* into a valid
:class:`~torchspine.specs.SpineNetSpec` and back. The decisions are taken in this order
(paper 3.1: "the scale permutations are first determined before searching for the rest"):

1. ``perm_intermediate`` (N-5 steps): which remaining intermediate *slot* of the block
   allocation is built next (already used slots are masked), giving (N-5)! orderings;
2. ``perm_output`` (5 steps): the order of the output blocks (levels 3..7), 5! orderings;
3. for every block in build order: ``parent_a`` then ``parent_b`` (two distinct parents,
   ``parent_a < parent_b`` so every unordered pair has exactly one decision sequence,
   C(c, 2) pairs for c candidates). Intermediate blocks choose among the stem blocks and
   the last ``intermediate_window`` built blocks (paper 5.1 uses 5); output blocks among
   all built blocks (and the stem);
4. ``level_adjust`` for every intermediate block: an offset from ``level_adjustments``
   ({-1, 0, 1, 2} in the paper, 4^(N-5) choices); offsets that leave
   ``[min_block_level, max_block_level]`` are masked;
5. ``block_type`` for every block: one of ``block_types`` ({bottleneck, residual}, 2^N).

A step with a single option is not a decision and is skipped. Every complete decision list
decodes to a spec that passes :meth:`SpineNetSpec.validate`.

The allocations of Table 1 are in :data:`TABLE1_ALLOCATIONS`; :data:`SPACE_PRESETS` are the
searches of section 3.3-3.4 (R[N]-SP[M] with permutations and connections only; R0-SP53+
with level adjustments; SpineNet-49 with level and block-type adjustments) and the fixed
Hourglass / Fish orderings of Table 7 (connections only).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from torchspine.specs.spec import (
    BLOCK_TYPE_CODES,
    MAX_SUPPORTED_LEVEL,
    MIN_SUPPORTED_LEVEL,
    BlockSpec,
    ScalingSpec,
    SpineNetSpec,
    StemSpec,
)

__all__ = [
    "SPACE_PRESETS",
    "TABLE1_ALLOCATIONS",
    "Allocation",
    "SearchSpace",
    "Step",
    "search_space",
]

_LEVELS = (2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class Allocation:
    """A row of Table 1: blocks per level in the stem and in the scale-permuted network.

    Attributes:
        stem_counts: blocks per level L2..L5 in the scale-decreased stem.
        permuted_counts: blocks per level L2..L7 in the scale-permuted network (output
            blocks included: one each at L3..L7).
    """

    stem_counts: tuple[int, int, int, int]
    permuted_counts: tuple[int, int, int, int, int, int]

    @property
    def stem_levels(self) -> tuple[int, ...]:
        """``StemSpec.block_levels``: one stem block per entry, scale-decreasing."""
        return tuple(lvl for lvl, n in zip((2, 3, 4, 5), self.stem_counts) for _ in range(n))

    @property
    def permuted_levels(self) -> tuple[int, ...]:
        return tuple(lvl for lvl, n in zip(_LEVELS, self.permuted_counts) for _ in range(n))

    def split(self, output_levels: Sequence[int] = (3, 4, 5, 6, 7)) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(intermediate levels, output levels): one block of each output level is an output block."""
        rest = list(self.permuted_levels)
        for lvl in output_levels:
            if lvl not in rest:
                raise ValueError(f"allocation {self.permuted_counts} has no L{lvl} block for the output level {lvl}")
            rest.remove(lvl)
        return tuple(rest), tuple(output_levels)


# Table 1 of the paper. Blocks are ResNet-50's 16 plus one L5 replaced by an L6 and an L7
# (section 3.3), so every row totals 17 blocks per level {L2:3, L3:4, L4:6, L5:2, L6:1, L7:1}
# except SpineNet-49 (the learned, level-adjusted result). The paper copy prints R35-SP18's
# permuted network as five 1s; the row only reaches 17 blocks and "SP18" (6 blocks x 3 layers)
# with six, {1, 1, 1, 1, 1, 1} over L2..L7, which is what is used here.
TABLE1_ALLOCATIONS: dict[str, Allocation] = {
    "r35_sp18": Allocation((2, 3, 5, 1), (1, 1, 1, 1, 1, 1)),
    "r23_sp30": Allocation((2, 2, 2, 1), (1, 2, 4, 1, 1, 1)),
    "r14_sp39": Allocation((1, 1, 1, 1), (2, 3, 5, 1, 1, 1)),
    "r0_sp53": Allocation((2, 0, 0, 0), (1, 4, 6, 2, 1, 1)),
    "spinenet49": Allocation((2, 0, 0, 0), (1, 2, 4, 4, 2, 2)),
}


@dataclass(frozen=True)
class Step:
    """One decision: its kind, the block (or permutation position) it is about, its option count."""

    kind: str  # perm_intermediate | perm_output | parent_a | parent_b | level_adjust | block_type
    index: int
    num_options: int


STEP_KINDS = ("perm_intermediate", "perm_output", "parent_a", "parent_b", "level_adjust", "block_type")


@dataclass(frozen=True)
class SearchSpace:
    """The section 3.1 search space over one block allocation.

    Attributes:
        intermediate_levels: base levels of the intermediate-block slots (permuted).
        output_levels: levels of the output blocks (3..7; permuted).
        stem: the fixed stem; all its blocks are candidate parents (m = its block count).
        intermediate_window: intermediate blocks pick parents among the stem and the last
            this-many built blocks (paper 5.1: 5); ``None`` means all built blocks.
        level_adjustments: offsets an intermediate block may add to its level.
        block_types: the block types every block chooses from.
        min_block_level, max_block_level: adjusted levels must stay in this range.
        scaling: the scaling preset of the decoded specs (SpineNet-49's by default; the
            proxy task scales it down itself).
        fixed_order: build the blocks in the given order (no permutation decisions): the
            Hourglass / Fish ablations of Table 7 learn connections only.
        name: a label, written into the journal.
    """

    intermediate_levels: tuple[int, ...]
    output_levels: tuple[int, ...] = (3, 4, 5, 6, 7)
    stem: StemSpec = field(default_factory=StemSpec)
    intermediate_window: int | None = 5
    level_adjustments: tuple[int, ...] = (0,)
    block_types: tuple[str, ...] = ("bottleneck",)
    min_block_level: int = 1
    max_block_level: int = 7
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    fixed_order: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        label = f"search space {self.name!r}"
        if not self.intermediate_levels:
            raise ValueError(f"{label}: intermediate_levels is empty")
        if sorted(self.output_levels) != list(range(min(self.output_levels), max(self.output_levels) + 1)):
            raise ValueError(f"{label}: output_levels {self.output_levels} must be consecutive levels")
        if self.intermediate_window is not None and self.intermediate_window < 1:
            raise ValueError(f"{label}: intermediate_window must be >= 1 or None, got {self.intermediate_window}")
        if not self.level_adjustments or len(set(self.level_adjustments)) != len(self.level_adjustments):
            raise ValueError(f"{label}: level_adjustments {self.level_adjustments} must be distinct and non-empty")
        if not self.block_types or len(set(self.block_types)) != len(self.block_types):
            raise ValueError(f"{label}: block_types {self.block_types} must be distinct and non-empty")
        for t in self.block_types:
            if t not in BLOCK_TYPE_CODES:
                raise ValueError(f"{label}: unknown block type {t!r}; expected one of {tuple(BLOCK_TYPE_CODES)}")
        if not MIN_SUPPORTED_LEVEL <= self.min_block_level <= self.max_block_level <= MAX_SUPPORTED_LEVEL:
            raise ValueError(f"{label}: block level range [{self.min_block_level}, {self.max_block_level}] "
                             f"outside [{MIN_SUPPORTED_LEVEL}, {MAX_SUPPORTED_LEVEL}]")
        for lvl in self.intermediate_levels:
            if not any(self.min_block_level <= lvl + a <= self.max_block_level for a in self.level_adjustments):
                raise ValueError(f"{label}: intermediate level {lvl} has no adjustment in {self.level_adjustments} "
                                 f"inside [{self.min_block_level}, {self.max_block_level}]")
        for k in range(self.num_blocks):
            if len(self.parent_candidates(k)) < 2:
                raise ValueError(f"{label}: block {k} has fewer than two candidate parents "
                                 f"{self.parent_candidates(k)} (a stem of {self.num_stem_blocks} block(s))")
        self.template()  # building the spec checks it

    # ------------------------------------------------------------- structure
    @property
    def num_stem_blocks(self) -> int:
        return len(self.stem.block_levels)

    @property
    def num_intermediate(self) -> int:
        return len(self.intermediate_levels)

    @property
    def num_blocks(self) -> int:
        return len(self.intermediate_levels) + len(self.output_levels)

    def parent_candidates(self, k: int) -> tuple[int, ...]:
        """``feats`` indices block ``k`` (build order) may take as parents."""
        m = self.num_stem_blocks
        first = m
        if k < self.num_intermediate and self.intermediate_window is not None:
            first = max(m, m + k - self.intermediate_window)
        return tuple(range(m)) + tuple(range(first, m + k))

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        """The decision steps, in order (single-option steps are left out)."""
        n_int, n_out, n = self.num_intermediate, len(self.output_levels), self.num_blocks
        max_parent = self.num_stem_blocks + n - 1
        steps: list[Step] = []
        if not self.fixed_order:
            steps += [Step("perm_intermediate", j, n_int) for j in range(n_int - 1)]  # the last slot is forced
            steps += [Step("perm_output", j, n_out) for j in range(n_out - 1)]
        for k in range(n):
            steps += [Step("parent_a", k, max_parent), Step("parent_b", k, max_parent)]
        if len(self.level_adjustments) > 1:
            steps += [Step("level_adjust", k, len(self.level_adjustments)) for k in range(n_int)]
        if len(self.block_types) > 1:
            steps += [Step("block_type", k, len(self.block_types)) for k in range(n)]
        return tuple(steps)

    @property
    def num_decisions(self) -> int:
        return len(self.steps)

    def valid_options(self, prefix: Sequence[int]) -> list[int]:
        """The valid options of step ``len(prefix)`` given the earlier decisions."""
        i = len(prefix)
        step = self.steps[i]
        if step.kind in ("perm_intermediate", "perm_output"):
            start = i - step.index  # first step of this permutation
            used = set(prefix[start:i])
            return [o for o in range(step.num_options) if o not in used]
        if step.kind == "parent_a":
            return list(self.parent_candidates(step.index)[:-1])
        if step.kind == "parent_b":
            return [c for c in self.parent_candidates(step.index) if c > prefix[i - 1]]
        if step.kind == "level_adjust":
            base = self.intermediate_levels[self._slot_order(prefix)[step.index]]
            return [o for o, a in enumerate(self.level_adjustments)
                    if self.min_block_level <= base + a <= self.max_block_level]
        return list(range(step.num_options))

    def _slot_order(self, prefix: Sequence[int]) -> list[int]:
        """The intermediate slots in build order (needs the whole intermediate permutation)."""
        n = self.num_intermediate
        if self.fixed_order:
            return list(range(n))
        order = list(prefix[: n - 1])
        order.append(next(s for s in range(n) if s not in order))
        return order

    # ------------------------------------------------------------- codec
    def decode(self, decisions: Sequence[int], *, name: str = "") -> SpineNetSpec:
        """The spec of a complete decision list (raises ``ValueError`` on an invalid one)."""
        decisions = [int(d) for d in decisions]
        if len(decisions) != self.num_decisions:
            raise ValueError(f"search space {self.name!r}: expected {self.num_decisions} decisions, "
                             f"got {len(decisions)}")
        for i, d in enumerate(decisions):
            if d not in self.valid_options(decisions[:i]):
                s = self.steps[i]
                raise ValueError(f"search space {self.name!r}: decision {i} ({s.kind} {s.index}) = {d} is not "
                                 f"one of the valid options {self.valid_options(decisions[:i])}")
        by_kind: dict[str, list[int]] = {k: [] for k in STEP_KINDS}
        for s, d in zip(self.steps, decisions):
            by_kind[s.kind].append(d)
        n_int, n_out = self.num_intermediate, len(self.output_levels)
        slots = self._slot_order(decisions)
        outs = (list(range(n_out)) if self.fixed_order else
                by_kind["perm_output"] + [next(s for s in range(n_out) if s not in by_kind["perm_output"])])
        adjust = by_kind["level_adjust"] or [0] * n_int
        types = by_kind["block_type"] or [0] * self.num_blocks
        blocks = []
        for k in range(self.num_blocks):
            if k < n_int:
                level = self.intermediate_levels[slots[k]] + self.level_adjustments[adjust[k]]
            else:
                level = self.output_levels[outs[k - n_int]]
            blocks.append(BlockSpec(level, self.block_types[types[k]],
                                    (by_kind["parent_a"][k], by_kind["parent_b"][k]), k >= n_int))
        return self.template(name=name).replace(blocks=tuple(blocks))

    def template(self, *, name: str = "") -> SpineNetSpec:
        """A spec with this space's stem and scaling, with placeholder blocks replaced by ``decode``."""
        blocks = tuple(BlockSpec(lvl, self.block_types[0], (0, 0), True) for lvl in self.output_levels)
        return SpineNetSpec(blocks=blocks, stem=self.stem, scaling=self.scaling, name=name,
                            min_level=min(self.output_levels), max_level=max(self.output_levels))

    def encode(self, spec: SpineNetSpec) -> list[int]:
        """Decisions that decode to ``spec``'s blocks; ``ValueError`` when the spec is not in the space."""
        label = f"spec {spec.name or '<unnamed>'} in search space {self.name!r}"
        n_int, n = self.num_intermediate, self.num_blocks
        if spec.stem != self.stem:
            raise ValueError(f"{label}: stem {spec.stem} differs from the space's {self.stem}")
        if len(spec.blocks) != n:
            raise ValueError(f"{label}: {len(spec.blocks)} blocks, the space has {n}")
        for k, b in enumerate(spec.blocks):
            if b.is_output != (k >= n_int):
                raise ValueError(f"{label}: block {k} is_output={b.is_output}; the space builds "
                                 f"{n_int} intermediate blocks then {n - n_int} output blocks")
            if len(b.input_offsets) != 2 or b.input_offsets[0] == b.input_offsets[1]:
                raise ValueError(f"{label}: block {k} has parents {b.input_offsets}; the space gives every "
                                 f"block two distinct parents")
            if b.block_type not in self.block_types:
                raise ValueError(f"{label}: block {k} type {b.block_type!r} not in {self.block_types}")
        levels = [b.level for b in spec.blocks[:n_int]]
        if self.fixed_order:
            ok = all(lvl - base in self.level_adjustments for lvl, base in zip(levels, self.intermediate_levels))
            slots = list(range(n_int)) if ok else None
        else:
            slots = self._match_slots(levels)
        if slots is None:
            raise ValueError(f"{label}: intermediate levels {[b.level for b in spec.blocks[:n_int]]} cannot be "
                             f"reached from the allocation {self.intermediate_levels} with adjustments "
                             f"{self.level_adjustments}")
        out_levels = [b.level for b in spec.blocks[n_int:]]
        if sorted(out_levels) != sorted(self.output_levels) or (self.fixed_order and
                                                                 tuple(out_levels) != self.output_levels):
            raise ValueError(f"{label}: output levels {out_levels} are not a permutation of {self.output_levels}")
        outs = [self.output_levels.index(lvl) for lvl in out_levels]
        decisions: list[int] = []
        for s in self.steps:
            if s.kind == "perm_intermediate":
                decisions.append(slots[s.index])
            elif s.kind == "perm_output":
                decisions.append(outs[s.index])
            elif s.kind in ("parent_a", "parent_b"):
                a, b = sorted(spec.blocks[s.index].input_offsets)
                decisions.append(a if s.kind == "parent_a" else b)
            elif s.kind == "level_adjust":
                k = s.index
                decisions.append(self.level_adjustments.index(spec.blocks[k].level - self.intermediate_levels[slots[k]]))
            else:
                decisions.append(self.block_types.index(spec.blocks[s.index].block_type))
        self.decode(decisions)  # raises if a parent is outside the window or a pair repeats
        return decisions

    def _match_slots(self, levels: list[int]) -> list[int] | None:
        """Assign each intermediate block a distinct slot whose base level + an allowed offset is its level."""
        free: dict[int, list[int]] = {}
        for s, lvl in enumerate(self.intermediate_levels):
            free.setdefault(lvl, []).append(s)
        adjust = sorted(self.level_adjustments, key=abs)
        failed: set[tuple] = set()

        def solve(k: int) -> list[int] | None:
            if k == len(levels):
                return []
            key = (k, tuple(sorted((lvl, len(v)) for lvl, v in free.items())))
            if key in failed:
                return None
            for a in adjust:
                base = levels[k] - a
                if free.get(base) and self.min_block_level <= levels[k] <= self.max_block_level:
                    slot = free[base].pop(0)
                    rest = solve(k + 1)
                    free[base].insert(0, slot)
                    if rest is not None:
                        return [slot] + rest
            failed.add(key)
            return None

        return solve(0)

    # ------------------------------------------------------------- sampling
    def sample(self, rng: random.Random) -> list[int]:
        """Decisions drawn uniformly over the space (every distinct decision list equally likely)."""
        decisions: list[int] = []
        for i, s in enumerate(self.steps):
            options = self.valid_options(decisions)
            if s.kind == "parent_a":
                # P(a) proportional to the number of b > a keeps the (a, b) pair uniform.
                cands = self.parent_candidates(s.index)
                weights = [len(cands) - 1 - j for j in range(len(cands) - 1)]
                decisions.append(rng.choices(options, weights=weights)[0])
            else:
                decisions.append(rng.choice(options))
        return decisions

    # ------------------------------------------------------------- sizes
    def size_terms(self) -> dict[str, int]:
        """Sizes of the four parts of the space, as section 3.1 counts them.

        ``permutations`` = (N-5)! 5!; ``connections`` = product over blocks of C(candidates, 2)
        (= prod_{i=m}^{N+m-1} C(i, 2) with no window); ``level_adjustments`` = 4^(N-5) when no
        adjustment is masked; ``block_types`` = 2^N.
        """
        n_int, n = self.num_intermediate, self.num_blocks
        perm = 1 if self.fixed_order else math.factorial(n_int) * math.factorial(len(self.output_levels))
        conn = math.prod(math.comb(len(self.parent_candidates(k)), 2) for k in range(n))
        adj = math.prod(
            sum(self.min_block_level <= lvl + a <= self.max_block_level for a in self.level_adjustments)
            for lvl in self.intermediate_levels
        )
        types = len(self.block_types) ** n
        return {"permutations": perm, "connections": conn, "level_adjustments": adj, "block_types": types}

    def size(self) -> int:
        """Number of distinct decision lists (the product of :meth:`size_terms`)."""
        return math.prod(self.size_terms().values())

    def describe(self) -> dict:
        """A JSON-able summary, written into the search journal."""
        return {
            "name": self.name,
            "intermediate_levels": list(self.intermediate_levels),
            "output_levels": list(self.output_levels),
            "stem_levels": list(self.stem.block_levels),
            "intermediate_window": self.intermediate_window,
            "level_adjustments": list(self.level_adjustments),
            "block_types": list(self.block_types),
            "fixed_order": self.fixed_order,
            "num_decisions": self.num_decisions,
            "log10_size": math.log10(self.size()),
        }


def _preset(alloc: str, **kw) -> SearchSpace:
    a = TABLE1_ALLOCATIONS[alloc]
    intermediate, outputs = a.split()
    return SearchSpace(intermediate_levels=intermediate, output_levels=outputs,
                       stem=StemSpec(block_levels=a.stem_levels), **kw)


# Section 3.3: R[N]-SP[M] search permutations and connections only (ResNet bottlenecks);
# section 3.4 / Table 3: R0-SP53+ adds level adjustments, SpineNet-49 adds block types too.
SPACE_PRESETS: dict[str, dict] = {
    "r35_sp18": {"alloc": "r35_sp18"},
    "r23_sp30": {"alloc": "r23_sp30"},
    "r14_sp39": {"alloc": "r14_sp39"},
    "r0_sp53": {"alloc": "r0_sp53"},
    "r0_sp53_plus": {"alloc": "r0_sp53", "level_adjustments": (-1, 0, 1, 2)},
    "spinenet49": {"alloc": "r0_sp53", "level_adjustments": (-1, 0, 1, 2),
                   "block_types": ("bottleneck", "residual")},
    # Table 7: fixed Hourglass / Fish orderings of R0-SP53's blocks, connections searched
    # (the orderings are data of torchspine.specs.ablations).
    "hourglass": {"ordering": "hourglass"},
    "fish": {"ordering": "fish"},
}


def search_space(name: str, **overrides) -> SearchSpace:
    """A preset of :data:`SPACE_PRESETS` with optional field overrides (``intermediate_window=3``)."""
    key = name.lower()
    if key not in SPACE_PRESETS:
        raise ValueError(f"unknown search space {name!r}; known: {sorted(SPACE_PRESETS)}")
    kw = dict(SPACE_PRESETS[key])
    if "ordering" in kw:
        from torchspine.specs.ablations import FIXED_ORDERINGS

        o = FIXED_ORDERINGS[kw.pop("ordering")]
        kw.update(intermediate_levels=o.intermediate_levels, output_levels=o.output_levels,
                  stem=StemSpec(block_levels=o.stem_levels, block_type=o.block_type),
                  block_types=(o.block_type,), fixed_order=True)
        kw.update(overrides)
        kw.setdefault("name", key)
        return SearchSpace(**kw)
    alloc = kw.pop("alloc")
    kw.update(overrides)
    kw.setdefault("name", key)
    return _preset(alloc, **kw)
