"""Random search: every proposal drawn uniformly over the search space (the baseline of NAS papers)."""

from __future__ import annotations

from torchspine.search.space import SearchSpace
from torchspine.search.strategy import Strategy

__all__ = ["RandomSearch"]


class RandomSearch(Strategy):
    """Uniform samples of :meth:`SearchSpace.sample`; rewards are not used."""

    name = "random"

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        super().__init__(space, seed=seed)

    def _propose(self) -> list[int]:
        return self.space.sample(self.rng)
