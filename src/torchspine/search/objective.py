"""A compute budget in the reward: the MnasNet objective and hard limits.

MnasNet (Tan et al., CVPR 2019, equation 2) rewards ``ACC(m) * (COST(m) / TARGET) ** w``:
with ``w < 0`` an architecture cheaper than the target gains and a dearer one loses
(``w = -0.07`` is MnasNet's soft setting: twice the cost costs about 5% of reward). Here the
accuracy is the proxy task's reward (AP) and the cost one of

* ``macs``: multiply-adds of one forward pass of the backbone (with its endpoints) at
  ``image_size``, counted by ``torchspine.analysis.profile.count_macs`` on the ``meta`` device
  (nothing is allocated, about 0.5 s for SpineNet-49 at 640);
* ``params``: its trainable parameters (same count as the official TF trainable variables);
* ``latency_ms``: the median wall time of its forward pass at ``image_size`` measured on the
  machine that runs the trial (its GPU if it has one), after warm-up.

Costs are those of the architecture at the search space's scale (SpineNet-49's: what
``best.json`` builds), not of the down-scaled proxy network, so the budget speaks about the
network that will be trained in full.

Hard limits (``max_macs``, ``max_params``, ``max_latency_ms``) reject an architecture before it
is trained: the trial is journaled as ``rejected`` (not ``failed``) with the measured costs.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from torchspine.specs.spec import SpineNetSpec

__all__ = ["COST_METRICS", "Objective", "measure_costs", "pareto_front"]

COST_METRICS = ("macs", "params", "latency_ms")


def measure_costs(spec: SpineNetSpec, *, image_size: int = 640, latency: bool = False, repeats: int = 5,
                  device: str | None = None) -> dict[str, float]:
    """``{"macs", "params"}`` of ``spec``'s backbone (meta device), plus ``latency_ms`` if asked."""
    from torchspine.analysis.profile import count_macs, count_params
    from torchspine.models.backbone import SpineNet

    with torch.device("meta"):
        meta = SpineNet(spec)
    meta.eval()
    x = torch.empty(1, 3, image_size, image_size, device="meta")
    out = {"macs": float(count_macs(meta, x)), "params": float(count_params(meta))}
    if latency:
        out["latency_ms"] = _latency_ms(spec, image_size, repeats, device)
    return out


@torch.no_grad()
def _latency_ms(spec: SpineNetSpec, image_size: int, repeats: int, device: str | None) -> float:
    from torchspine.models.backbone import SpineNet

    from torchspine.utils import resolve_device

    dev = resolve_device(device)
    model = SpineNet(spec).to(dev).eval()
    x = torch.randn(1, 3, image_size, image_size, device=dev)
    times = []
    for i in range(2 + repeats):  # two warm-up passes (allocator, cuDNN autotuning)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        model(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


@dataclass(frozen=True)
class Objective:
    """``reward = quality * (cost / target) ** w`` and hard limits (see the module docstring).

    Attributes:
        cost: ``"macs"``, ``"params"``, ``"latency_ms"``, or ``None`` (reward = quality; the hard
            limits still apply).
        target: the cost at which the factor is 1 (needed with ``cost``).
        w: the exponent (MnasNet soft constraint: -0.07; ``w = 0`` ignores the cost).
        max_macs, max_params, max_latency_ms: hard limits; an architecture over any is rejected.
        image_size: input size for ``macs`` and ``latency_ms``.
        latency_repeats: timed forward passes (their median is the latency).
        record_costs: measure and journal the costs even when neither the reward nor a limit
            needs them (for the Pareto front of a search without a budget).
    """

    cost: str | None = None
    target: float | None = None
    w: float = -0.07
    max_macs: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None
    image_size: int = 640
    latency_repeats: int = 5
    record_costs: bool = False

    def validate(self) -> Objective:
        if self.cost is not None and self.cost not in COST_METRICS:
            raise ValueError(f"objective: cost must be one of {COST_METRICS} or None, got {self.cost!r}")
        if self.cost is not None and not (self.target is not None and math.isfinite(self.target) and self.target > 0):
            raise ValueError(f"objective: cost {self.cost!r} needs a positive target, got {self.target!r}")
        if self.cost is None and self.target is not None:
            raise ValueError(f"objective: target={self.target} given without a cost metric")
        if not math.isfinite(self.w):
            raise ValueError(f"objective: w must be finite, got {self.w!r}")
        for name in ("max_macs", "max_params", "max_latency_ms"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"objective: {name} must be positive, got {v!r}")
        if not (isinstance(self.image_size, int) and self.image_size >= 32):
            raise ValueError(f"objective: image_size must be an integer >= 32, got {self.image_size!r}")
        if not (isinstance(self.latency_repeats, int) and self.latency_repeats >= 1):
            raise ValueError(f"objective: latency_repeats must be a positive integer, got {self.latency_repeats!r}")
        return self

    @property
    def active(self) -> bool:
        """Whether trials measure costs at all."""
        return self.cost is not None or self.needs_limits or self.record_costs

    @property
    def needs_limits(self) -> bool:
        return any(v is not None for v in (self.max_macs, self.max_params, self.max_latency_ms))

    @property
    def needs_latency(self) -> bool:
        return self.cost == "latency_ms" or self.max_latency_ms is not None

    def measure(self, spec: SpineNetSpec) -> dict[str, float]:
        return measure_costs(spec, image_size=self.image_size, latency=self.needs_latency,
                             repeats=self.latency_repeats)

    def rejection(self, costs: dict[str, float]) -> str | None:
        """Why ``costs`` break a hard limit (``None``: within budget)."""
        over = [f"{name} {costs[name]:.4g} > limit {limit:.4g}"
                for name, limit in (("macs", self.max_macs), ("params", self.max_params),
                                    ("latency_ms", self.max_latency_ms))
                if limit is not None and costs[name] > limit]
        return "over budget: " + ", ".join(over) if over else None

    def reward(self, quality: float, costs: dict[str, float]) -> float:
        if self.cost is None or self.w == 0:
            return float(quality)
        return float(quality) * (costs[self.cost] / float(self.target)) ** self.w

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The non-dominated ``(cost, quality, key)`` points (lower cost, higher quality), by cost.

    A point is dominated when another has cost <= and quality >= with one of them strict.
    """
    front: list[tuple[float, float, Any]] = []
    best_q = -math.inf
    for cost, quality, key in sorted(points, key=lambda p: (p[0], -p[1])):
        if quality > best_q:
            front.append((cost, quality, key))
            best_q = quality
    return front
