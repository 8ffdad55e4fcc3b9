"""The ablation architectures of paper section 5.5 (Tables 7 and 8) as spec data and transforms.

* Fixed block orderings (Table 7): the *Hourglass* and *Fish* shapes fix the scale
  permutation of R0-SP53's blocks and leave the cross-scale connections to the search
  (:class:`FixedOrdering`; :func:`ordering_spec` turns an ordering plus a choice of parents
  into a spec). Their learned connections were not published, and neither were those of
  R35-SP18 ... R0-SP53 (Table 1; their block allocations are search-space presets in
  :mod:`torchspine.search.space`), so no connections are made up here.
* Graph damage (Table 8), a transform of any spec (:func:`graph_damage`): for every block of
  the scale-permuted network,
  (1) ``"short"``: remove the short-range connection (keep the parent built earliest),
  (2) ``"long"``: remove the long-range connection (keep the parent built last),
  (3) ``"sequential"``: remove both and connect the block to the block built just before it.
  In all three cases each block has one parent (paper: "one block only connects to one other
  block"). The paper text and Table 8's rows name (1) = short-range removed, (2) = long-range
  removed; the copy's caption swaps the two, the rows are followed here.

"Short" and "long" range refer to the distance in build order between a block and its parent
(paper 5.2: adjacent intermediate blocks form deep pathways, output blocks prefer long-range
connections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from torchspine.specs.spec import BlockSpec, ScalingSpec, SpineNetSpec, StemSpec

__all__ = [
    "FixedOrdering",
    "HOURGLASS",
    "FISH",
    "FIXED_ORDERINGS",
    "DamageMode",
    "graph_damage",
    "ordering_spec",
]

DamageMode = Literal["short", "long", "sequential"]
_DAMAGE_MODES = ("short", "long", "sequential")


@dataclass(frozen=True)
class FixedOrdering:
    """A fixed block ordering of Table 7: stem levels, then the scale-permuted blocks' levels in
    build order. The last five blocks are the output blocks (one per level L3..L7), as in the
    search space of section 3.1 (intermediate blocks first, then output blocks)."""

    name: str
    stem_levels: tuple[int, ...]
    levels: tuple[int, ...]
    block_type: str = "bottleneck"
    num_outputs: int = 5

    @property
    def intermediate_levels(self) -> tuple[int, ...]:
        return self.levels[: len(self.levels) - self.num_outputs]

    @property
    def output_levels(self) -> tuple[int, ...]:
        return self.levels[len(self.levels) - self.num_outputs:]


def _expand(groups: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    return tuple(level for count, level in groups for _ in range(count))


# Table 7 (paper copy): Hourglass {3L2, 3L3, 5L4, 1L5, 1L7, 1L6, 1L5, 1L4, 1L3} and
# Fish {2L2, 2L3, 3L4, 1L5, 2L4, 1L3, 1L2, 1L3, 1L4, 1L5, 1L6, 1L7}. Both list 17 blocks with
# R0-SP53's allocation (Table 1: stem {2 L2}, permuted {1, 4, 6, 2, 1, 1} over L2..L7), so
# the first two L2 blocks are R0-SP53's stem and the remaining 15 are the permuted network.
HOURGLASS = FixedOrdering(
    "hourglass", stem_levels=(2, 2),
    levels=_expand([(1, 2), (3, 3), (5, 4), (1, 5), (1, 7), (1, 6), (1, 5), (1, 4), (1, 3)]),
)
FISH = FixedOrdering(
    "fish", stem_levels=(2, 2),
    levels=_expand([(2, 3), (3, 4), (1, 5), (2, 4), (1, 3), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7)]),
)
FIXED_ORDERINGS: dict[str, FixedOrdering] = {"hourglass": HOURGLASS, "fish": FISH}


def ordering_spec(
    ordering: FixedOrdering | str,
    input_offsets: Sequence[Sequence[int]],
    *,
    scaling: ScalingSpec | None = None,
    **overrides,
) -> SpineNetSpec:
    """The spec of ``ordering`` with the given parents (one tuple per permuted block, indices
    into ``feats`` with the stem first); the connections are the search's to choose."""
    if isinstance(ordering, str):
        if ordering.lower() not in FIXED_ORDERINGS:
            raise ValueError(f"unknown fixed ordering {ordering!r}; known: {sorted(FIXED_ORDERINGS)}")
        ordering = FIXED_ORDERINGS[ordering.lower()]
    if len(input_offsets) != len(ordering.levels):
        raise ValueError(f"ordering {ordering.name}: {len(ordering.levels)} blocks need as many parent tuples, "
                         f"got {len(input_offsets)}")
    first_output = len(ordering.levels) - ordering.num_outputs
    blocks = tuple(
        BlockSpec(level, ordering.block_type, tuple(int(p) for p in parents), i >= first_output)
        for i, (level, parents) in enumerate(zip(ordering.levels, input_offsets))
    )
    spec = SpineNetSpec(
        blocks=blocks,
        scaling=scaling or ScalingSpec(),
        stem=StemSpec(block_levels=ordering.stem_levels, block_type=ordering.block_type),
        name=ordering.name,
    )
    return spec.replace(**overrides) if overrides else spec


def graph_damage(spec: SpineNetSpec, mode: DamageMode) -> SpineNetSpec:
    """``spec`` with every permuted block reduced to one parent (paper Table 8, see module doc).

    The zero-out-degree rule of the spec still applies, so intermediate blocks left without a
    consumer feed the output block of their level as in the undamaged model (paper 3.3).
    """
    if mode not in _DAMAGE_MODES:
        raise ValueError(f"graph_damage: unknown mode {mode!r}; expected one of {_DAMAGE_MODES}")
    n_stem = spec.num_stem_blocks
    blocks = []
    for i, b in enumerate(spec.blocks):
        if mode == "short":  # keep the long-range parent: the one built earliest
            parents: tuple[int, ...] = (min(b.input_offsets),)
        elif mode == "long":  # keep the short-range parent: the one built last
            parents = (max(b.input_offsets),)
        else:  # sequential: the block built just before this one (the last stem block for i = 0)
            parents = (i + n_stem - 1,)
        blocks.append(BlockSpec(b.level, b.block_type, parents, b.is_output))
    label = {"short": "no_short", "long": "no_long", "sequential": "sequential"}[mode]
    return spec.replace(blocks=tuple(blocks), name=f"{spec.name or 'spinenet'}_damage_{label}")
