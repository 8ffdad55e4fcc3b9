"""A cheap surrogate reward with a known best architecture, for trying and benchmarking strategies.

Not a measure of quality: the reward is the similarity of a proposed spec to a *target* spec
(by default the official SpineNet-49 blocks, which lie in the ``spinenet49`` space), so the
best spec is known (the target, reward 1.0) and a strategy's sample efficiency can be measured
in milliseconds per trial instead of minutes.

reward = mean over blocks ``k`` of ``(w_level [level_k == target level_k]
+ w_type [type_k == target type_k] + w_parents |parents_k & target parents_k| / 2)``,
with weights summing to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchspine.specs.spec import SpineNetSpec
from torchspine.specs.zoo import SPINENET_BLOCKS

__all__ = ["SurrogateReward"]


@dataclass(frozen=True)
class SurrogateReward:
    """Similarity to ``target`` (a genome string; SpineNet-49's blocks by default)."""

    target: str = SpineNetSpec(blocks=SPINENET_BLOCKS).to_genome()
    w_level: float = 0.4
    w_type: float = 0.2
    w_parents: float = 0.4

    def __call__(self, spec: SpineNetSpec) -> float:
        target = SpineNetSpec.from_genome(self.target)
        if len(spec.blocks) != len(target.blocks):
            raise ValueError(f"surrogate reward: spec has {len(spec.blocks)} blocks, the target "
                             f"{len(target.blocks)}")
        total = 0.0
        for b, t in zip(spec.blocks, target.blocks):
            shared = len(set(b.input_offsets) & set(t.input_offsets))
            total += (self.w_level * (b.level == t.level) + self.w_type * (b.block_type == t.block_type)
                      + self.w_parents * shared / 2)
        return total / len(target.blocks) / (self.w_level + self.w_type + self.w_parents)
