"""Regularized (aging) evolution, Real et al., AAAI 2019 ("Regularized Evolution for Image
Classifier Architecture Search", Algorithm 1).

The population is a queue of the last ``population_size`` successful trials. Until it is full,
proposals are uniform random samples. Afterwards each proposal is a mutation of the best of
``sample_size`` individuals drawn uniformly from the population; a new result pushes the oldest
individual out (aging), whatever its reward.

A mutation changes one decision of the parent and repairs what follows (paper 3.1 space):
a permutation step swaps two blocks of the ordering, a parent step picks another valid parent,
a level step another offset, a type step the other block type. The mutation kind
(ordering / connection / level / type) is drawn uniformly among the kinds the space has.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from torchspine.search.space import SearchSpace
from torchspine.search.strategy import Strategy

__all__ = ["RegularizedEvolution", "mutate"]

_GROUPS = {
    "perm_intermediate": "ordering", "perm_output": "ordering",
    "parent_a": "connection", "parent_b": "connection",
    "level_adjust": "level", "block_type": "type",
}


def mutate(space: SearchSpace, decisions: list[int] | tuple[int, ...], rng) -> list[int]:
    """A child differing from ``decisions`` in one choice (plus the repairs that choice forces)."""
    parent = [int(d) for d in decisions]
    candidates: dict[str, list[tuple[int, list[int]]]] = {}
    for i, step in enumerate(space.steps):
        others = [o for o in space.valid_options(parent[:i]) if o != parent[i]]
        if step.kind == "perm_intermediate":
            # Swapping two slots of the same base level would rebuild the same network.
            base = space.intermediate_levels
            others = [o for o in others if base[o] != base[parent[i]]]
        if others:
            candidates.setdefault(_GROUPS[step.kind], []).append((i, others))
    if not candidates:
        raise ValueError(f"search space {space.name!r} has a single architecture: nothing to mutate")
    for _ in range(100):
        child = _mutate_once(space, parent, candidates, rng)
        if space.decode(child).blocks != space.decode(parent).blocks:
            return child
    raise ValueError(f"search space {space.name!r}: no mutation of {parent} changes the network")


def _mutate_once(space: SearchSpace, parent: list[int], candidates: dict[str, list[tuple[int, list[int]]]],
                 rng) -> list[int]:
    group = rng.choice(sorted(candidates))
    i, others = rng.choice(candidates[group])
    child = list(parent)
    old, new = child[i], rng.choice(others)
    child[i] = new
    kind = space.steps[i].kind
    if kind.startswith("perm_"):
        # Swap: the later step of the same permutation that used `new` now takes `old`.
        for j in range(i + 1, len(child)):
            if space.steps[j].kind != kind:
                break
            if child[j] == new:
                child[j] = old
                break
    for j in range(i + 1, len(child)):
        valid = space.valid_options(child[:j])
        if child[j] not in valid:
            child[j] = rng.choice(valid)
    return child


class RegularizedEvolution(Strategy):
    """Aging evolution with ``population_size`` (P) and ``sample_size`` (S)."""

    name = "evolution"

    def __init__(self, space: SearchSpace, *, seed: int = 0, population_size: int = 20,
                 sample_size: int = 5) -> None:
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise ValueError(f"evolution: need population_size >= 2 and 1 <= sample_size <= population_size, "
                             f"got population_size={population_size}, sample_size={sample_size}")
        super().__init__(space, seed=seed)
        self.population_size = population_size
        self.sample_size = sample_size
        self.population: deque[tuple[tuple[int, ...], float]] = deque()
        self.num_results = 0

    def _propose(self) -> list[int]:
        if self.num_results < self.population_size:
            return self.space.sample(self.rng)
        contestants = [self.rng.choice(self.population) for _ in range(self.sample_size)]
        parent = max(contestants, key=lambda ind: ind[1])
        return mutate(self.space, parent[0], self.rng)

    def _learn(self, trial_id: int, decisions: tuple[int, ...], reward: float) -> None:
        self.population.append((decisions, reward))
        self.num_results += 1
        while len(self.population) > self.population_size:
            self.population.popleft()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "population_size": self.population_size, "sample_size": self.sample_size,
                "population": [[list(d), r] for d, r in self.population], "num_results": self.num_results}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population_size = int(state["population_size"])
        self.sample_size = int(state["sample_size"])
        self.population = deque((tuple(int(x) for x in d), float(r)) for d, r in state["population"])
        self.num_results = int(state["num_results"])
