"""Multi-fidelity early stopping: asynchronous successive halving (ASHA) over training steps.

A trial trains in segments that end at the *rungs* ``min_steps * eta**k`` (below
``max_steps``) and then at ``max_steps``. At each rung the trial's reward is compared with
the rewards every earlier trial had at that rung: it goes on only if it is at least the
``1 - 1/eta`` quantile of them (the first trial at a rung always goes on). This is the
stopping form of ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning",
MLSys 2020), the rule of Ray Tune's ``AsyncHyperBandScheduler``
(ray-project/ray python/ray/tune/schedulers/async_hyperband.py: cutoff =
``percentile(recorded, (1 - 1/rf) * 100)``, stop when the reward is below it): each decision
is taken once, when the trial reaches the rung, so nothing waits for a synchronised bracket
and every decision is one journal line.

That rule lets a strategy that keeps improving (evolution, the controller) through nearly every
rung, since its new proposals beat what a rung remembers of its early ones. The ``"quota"`` rule
adds the budget of ASHA's promotion form (Li et al., MLSys 2020: at most ``floor(n/eta)`` of the
``n`` trials at a rung are promoted, the best): decided once, on arrival, a trial goes on only if
it is among the ``floor(n/eta)`` best at its rung (itself included) and fewer than
``floor(n/eta)`` went on before, so at most ``1/eta`` of the trials reaching a rung pass it
whatever the strategy does (docs/search.md measures both rules).

``min_steps`` is the grace period (no trial stops before it) and ``eta`` the reduction
factor: about ``1/eta`` of the trials pass each rung. A continued trial resumes from its
checkpoint (``ProxyTask`` keeps one per trial), so a trial stopped at rung ``k`` has cost
``rungs[k]`` training steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["ASHA_RULES", "AshaStopper", "FidelitySchedule"]

ASHA_RULES = ("quantile", "quota")


@dataclass(frozen=True)
class FidelitySchedule:
    """Rungs ``min_steps * eta**k < max_steps``, then ``max_steps`` (the full proxy budget).

    Attributes:
        min_steps: the grace period: training steps before the first stop decision.
        max_steps: the steps of a full trial.
        reduction_factor: ``eta``; about ``1/eta`` of the trials pass each rung.
        window: compare with the last ``window`` rewards recorded at a rung instead of all of
            them (``None``, ASHA's rule). A strategy that improves (evolution, the controller)
            proposes better trials than the early ones a rung remembers, so with all of them
            nearly every later trial passes; a window keeps the cut at ``1/eta`` of recent trials.
            With the quota rule the window limits the ranking, not the count of trials gone on.
        rule: ``"quantile"``: go on when the reward is at least the ``1 - 1/eta`` quantile of the
            rung's recorded rewards (Ray Tune's stopping rule). ``"quota"``: ASHA's promotion
            rule taken once, on arrival: with ``n`` trials at the rung (this one included), go
            on only if it is among the ``floor(n/eta)`` best of them and fewer than
            ``floor(n/eta)`` have gone on so far, so at most ``1/eta`` of the trials that reach a
            rung ever pass it, however much the strategy improves.
    """

    min_steps: int
    max_steps: int
    reduction_factor: float = 3.0
    window: int | None = None
    rule: str = "quantile"

    def validate(self) -> FidelitySchedule:
        for name in ("min_steps", "max_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"fidelity schedule: {name} must be a positive integer, got {v!r}")
        if self.min_steps >= self.max_steps:
            raise ValueError(f"fidelity schedule: the grace period min_steps={self.min_steps} must be below "
                             f"max_steps={self.max_steps} (otherwise no trial can stop early)")
        if not (math.isfinite(self.reduction_factor) and self.reduction_factor > 1):
            raise ValueError(f"fidelity schedule: reduction_factor must be > 1, got {self.reduction_factor!r}")
        if self.rule not in ASHA_RULES:
            raise ValueError(f"fidelity schedule: rule must be one of {ASHA_RULES}, got {self.rule!r}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"fidelity schedule: window must be a positive integer or None, got {self.window!r}")
        return self

    @property
    def rungs(self) -> tuple[int, ...]:
        """Steps at which a trial reports: the stop rungs, then ``max_steps`` (the last)."""
        out: list[int] = []
        k = 0
        while True:
            s = int(round(self.min_steps * self.reduction_factor ** k))
            if s >= self.max_steps:
                break
            if not out or s > out[-1]:
                out.append(s)
            k += 1
        return (*out, self.max_steps)

    def describe(self) -> dict[str, Any]:
        out = {**asdict(self), "rungs": list(self.rungs)}
        if self.rule == "quantile":  # journals written before the rule existed resume unchanged
            del out["rule"]
        return out


class AshaStopper:
    """The stop rule over the rewards recorded at each rung (its state is rebuilt from the journal).

    ``decide(trial_id, rung, reward)`` returns True (go on) or False (stop) and records the
    reward; a trial is decided at most once per rung.
    """

    def __init__(self, schedule: FidelitySchedule) -> None:
        self.schedule = schedule.validate()
        self.recorded: list[dict[int, float]] = [{} for _ in schedule.rungs[:-1]]
        self.went_on: list[set[int]] = [set() for _ in schedule.rungs[:-1]]

    def cutoff(self, rung: int) -> float | None:
        """The ``1 - 1/eta`` quantile (linear interpolation) of the rewards recorded at ``rung``."""
        values = list(self.recorded[rung].values())  # in decision order (dicts keep insertion order)
        if self.schedule.window is not None:
            values = values[-self.schedule.window:]
        if not values:
            return None
        return float(np.percentile(values, (1.0 - 1.0 / self.schedule.reduction_factor) * 100.0))

    def decide(self, trial_id: int, rung: int, reward: float) -> bool:
        if not 0 <= rung < len(self.recorded):
            raise ValueError(f"ASHA: rung {rung} is not a stop rung (0..{len(self.recorded) - 1}); "
                             f"rungs {self.schedule.rungs}")
        if trial_id in self.recorded[rung]:
            raise ValueError(f"ASHA: trial {trial_id} was already decided at rung {rung}")
        if self.schedule.rule == "quota":
            values = list(self.recorded[rung].values())
            if self.schedule.window is not None:
                values = values[-(self.schedule.window - 1):] if self.schedule.window > 1 else []
            quota = int((len(values) + 1) / self.schedule.reduction_factor + 1e-9)
            better = sum(v > reward for v in values)
            go_on = better < quota and len(self.went_on[rung]) < self._quota_total(rung)
        else:
            cut = self.cutoff(rung)
            go_on = cut is None or reward >= cut
        self.record(trial_id, rung, reward, go_on)
        return go_on

    def _quota_total(self, rung: int) -> int:
        """``floor(n/eta)`` over every trial decided at ``rung`` so far plus the one being decided."""
        return int((len(self.recorded[rung]) + 1) / self.schedule.reduction_factor + 1e-9)

    def record(self, trial_id: int, rung: int, reward: float, went_on: bool = False) -> None:
        """Record a decision (also: replay one read back from the journal on resume)."""
        self.recorded[rung][trial_id] = float(reward)
        if went_on:
            self.went_on[rung].add(trial_id)
