"""The ask/tell interface shared by every search strategy.

``ask()`` proposes an architecture (a decision list of a :class:`SearchSpace` and its spec)
under a new trial id; ``tell(trial_id, reward)`` reports its reward (``None`` or NaN for a
failed trial, which the strategy skips). Several asks may be outstanding at once (parallel
trials), and tells may come in any order.

``state_dict()`` / ``load_state_dict()`` capture everything (random state, learned
parameters, the outstanding proposals), so a restored strategy continues exactly where the
saved one stopped. :func:`save_strategy` / :func:`load_strategy` write it with ``torch.save``
(atomically) and read it back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from torchspine.search.space import SearchSpace
from torchspine.specs.spec import SpineNetSpec
from torchspine.utils import atomic_write

__all__ = ["STRATEGIES", "Proposal", "Strategy", "create_strategy", "is_failed", "load_strategy", "save_strategy"]


@dataclass(frozen=True)
class Proposal:
    """One proposed architecture."""

    trial_id: int
    decisions: tuple[int, ...]
    spec: SpineNetSpec


def is_failed(reward: float | None) -> bool:
    return reward is None or not math.isfinite(float(reward))


class Strategy(ABC):
    """Base class: trial ids, outstanding proposals, random state, save/restore."""

    name: str = "base"

    def __init__(self, space: SearchSpace, *, seed: int = 0) -> None:
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)
        self.next_trial_id = 0
        self.pending: dict[int, tuple[int, ...]] = {}
        self.num_told = 0

    # ---------------------------------------------------------------- ask/tell
    def ask(self) -> Proposal:
        decisions = tuple(int(d) for d in self._propose())
        tid = self.next_trial_id
        self.next_trial_id += 1
        self.pending[tid] = decisions
        return self.proposal(tid)

    def proposal(self, trial_id: int) -> Proposal:
        """The (still outstanding) proposal of ``trial_id``."""
        decisions = self.pending[trial_id]
        return Proposal(trial_id, decisions, self.space.decode(decisions, name=f"trial{trial_id}"))

    def tell(self, trial_id: int, reward: float | None) -> None:
        if trial_id not in self.pending:
            raise ValueError(f"{self.name}: trial {trial_id} is not outstanding (pending: {sorted(self.pending)})")
        decisions = self.pending.pop(trial_id)
        self.num_told += 1
        if not is_failed(reward):
            self._learn(trial_id, decisions, float(reward))

    @abstractmethod
    def _propose(self) -> list[int]:
        """A new decision list."""

    def _learn(self, trial_id: int, decisions: tuple[int, ...], reward: float) -> None:
        """Use one finished trial's reward (default: nothing to learn)."""

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.name,
            "space": self.space.name,
            "seed": self.seed,
            "rng": _rng_state(self.rng),
            "next_trial_id": self.next_trial_id,
            "pending": {int(k): list(v) for k, v in self.pending.items()},
            "num_told": self.num_told,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(f"strategy state is for {state.get('strategy')!r}, not {self.name!r}")
        if state.get("space") != self.space.name:
            raise ValueError(f"strategy state is for search space {state.get('space')!r}, not {self.space.name!r}")
        self.seed = state["seed"]
        self.rng.setstate(_rng_from(state["rng"]))
        self.next_trial_id = int(state["next_trial_id"])
        self.pending = {int(k): tuple(int(x) for x in v) for k, v in state["pending"].items()}
        self.num_told = int(state["num_told"])


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def save_strategy(strategy: Strategy, path: str | os.PathLike) -> None:
    """Write ``strategy.state_dict()`` atomically (``torch.save``; tensors and plain data only)."""
    state = strategy.state_dict()
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_strategy(strategy: Strategy, path: str | os.PathLike) -> Strategy:
    """Restore ``strategy`` from :func:`save_strategy`'s file (``weights_only=True``: no pickle)."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable strategy state ({e})") from e
    strategy.load_state_dict(state)
    return strategy


STRATEGIES = ("rl", "random", "evolution")


def create_strategy(name: str, space: SearchSpace, *, seed: int = 0, **options: Any) -> Strategy:
    """``"rl"`` (:class:`ControllerStrategy`), ``"random"``, or ``"evolution"`` with their options."""
    if name == "random":
        from torchspine.search.random_search import RandomSearch

        return RandomSearch(space, seed=seed, **options)
    if name == "evolution":
        from torchspine.search.evolution import RegularizedEvolution

        return RegularizedEvolution(space, seed=seed, **options)
    if name == "rl":
        from torchspine.search.controller import ControllerStrategy

        return ControllerStrategy(space, seed=seed, **options)
    raise ValueError(f"unknown search strategy {name!r}; expected one of {STRATEGIES}")
