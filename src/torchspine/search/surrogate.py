"""A cheap surrogate reward with a known best architecture, for trying and benchmarking strategies.

Not a measure of quality: the reward is the similarity of a proposed spec to a *target* spec
(by default the official SpineNet-49 blocks, which lie in the ``spinenet49`` space), so the
best spec is known (the target, reward 1.0) and a strategy's sample efficiency can be measured
in milliseconds per trial instead of minutes.

reward = mean over blocks ``k`` of ``(w_level [level_k == target level_k]
+ w_type [type_k == target type_k] + w_parents |parents_k & target parents_k| / 2)``,
with weights summing to 1.

:class:`FidelitySurrogate` makes it depend on the training steps (for early stopping).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from torchspine.specs.spec import SpineNetSpec
from torchspine.specs.zoo import SPINENET_BLOCKS

__all__ = ["FidelitySurrogate", "SurrogateReward"]


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


def _unit_hash(*parts: object) -> random.Random:
    """A generator seeded by a stable hash of ``parts`` (the same in every process and run)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class FidelitySurrogate:
    """:class:`SurrogateReward` observed through a short training run: a reward whose bias and
    noise shrink with the training steps, for measuring early stopping (ASHA) without training.

    With ``q`` the noise-free surrogate reward of a spec, ``s`` the steps trained and ``R =
    max_steps``, the observed reward is

        r(s) = q * (1 - lag * (1 - s / R)) + noise_at_max * sqrt(R / s) * z

    * ``lag = lag_mean + lag_spread * u`` with ``u`` uniform in [-1, 1] drawn from a hash of the
      architecture: every architecture is behind its final reward early in training, some
      more than others, so low-fidelity rankings can cross (learning-curve crossings);
    * ``z`` is standard normal, drawn from a hash of (architecture, ``s``, ``seed``): the noise of
      an evaluation after ``s`` steps, its variance falling as ``1/s`` (an average over more
      steps); it is independent between rungs, which is pessimistic for early stopping (real
      curves of one run are correlated);
    * at ``s = R`` the bias is zero and the noise ``noise_at_max``.

    Deterministic: the same (spec, steps, seed) gives the same reward in every process. The
    result carries ``true_reward`` (``q``) as a metric.
    """

    base: SurrogateReward = SurrogateReward()
    max_steps: int = 2700
    noise_at_max: float = 0.005
    lag_mean: float = 0.3
    lag_spread: float = 0.05
    seed: int = 0

    def __call__(self, spec: SpineNetSpec, *, steps: int | None = None, max_steps: int | None = None,
                 **_: object) -> dict[str, float]:
        if max_steps is not None and max_steps != self.max_steps:
            raise ValueError(f"fidelity surrogate: built for max_steps={self.max_steps}, asked for "
                             f"max_steps={max_steps}")
        s = self.max_steps if steps is None else int(steps)
        if not 1 <= s <= self.max_steps:
            raise ValueError(f"fidelity surrogate: steps must be in [1, {self.max_steps}], got {steps}")
        q = self.base(spec)
        genome = "/".join(f"{b.level}{b.block_type}{b.input_offsets}" for b in spec.blocks)
        lag = self.lag_mean + self.lag_spread * _unit_hash("lag", genome).uniform(-1.0, 1.0)
        z = _unit_hash("noise", genome, s, self.seed).gauss(0.0, 1.0)
        r = q * (1.0 - lag * (1.0 - s / self.max_steps)) + self.noise_at_max * math.sqrt(self.max_steps / s) * z
        return {"reward": r, "true_reward": q, "steps": float(s)}
