"""What a search found, read back from its journal: leaderboard, Pareto front, reward curve, rungs.

``summarize(out_dir)`` gathers it (no training; costs missing from the journal are counted
on the ``meta`` device), ``format_report`` makes the text the ``torchspine search report``
command prints, and ``plot_front`` / ``plot_curve`` draw ``pareto.png`` and ``curve.png``.

Compute is counted in *full-trial equivalents* (FTE): training steps of all trials divided by
the steps of one full trial (with early stopping, a trial stopped at a rung of ``s`` steps
costs ``s / max_steps``; without it, every trained trial costs 1). Evaluation time and the
partial rung of a failed attempt are not counted.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchspine.search.journal import Journal, TrialRecord
from torchspine.search.objective import pareto_front
from torchspine.utils import atomic_write

__all__ = ["SearchSummary", "format_report", "plot_curve", "plot_front", "summarize"]

logger = logging.getLogger(__name__)


@dataclass
class SearchSummary:
    out_dir: str
    config: dict[str, Any]
    records: list[TrialRecord]  # in finish order
    counts: dict[str, int]
    fte: float
    leaderboard: list[TrialRecord]
    cost_key: str
    front: list[tuple[float, float, TrialRecord]]
    curve: list[tuple[float, float]]  # (cumulative FTE, best full-budget reward so far), one per finished trial
    rungs: list[dict[str, Any]] = field(default_factory=list)
    retries: dict[str, int] = field(default_factory=dict)


def _trial_cost(rec: TrialRecord, max_steps: int | None) -> float:
    """Full-trial equivalents of one finished trial."""
    if rec.status == "rejected":
        return 0.0
    if max_steps is None:
        return 1.0
    return (rec.steps or 0.0) / max_steps


def summarize(out_dir: str | os.PathLike, *, top: int = 10) -> SearchSummary:
    """Read ``out_dir/journal.jsonl`` (``FileNotFoundError`` / ``ValueError`` when it is not a search)."""
    out = Path(out_dir)
    journal = Journal(out / "journal.jsonl")
    if not journal.exists():
        raise FileNotFoundError(f"{journal.path}: no search journal here (is {out} a search --out directory?)")
    events = journal.events()
    config = journal.config()
    if config is None:
        raise ValueError(f"{journal.path}: no config line; not a search journal")
    finished = journal.finished()
    order = [int(e["trial_id"]) for e in events if e["event"] == "finish"]
    seen: set[int] = set()
    records = []
    for tid in order:
        if tid not in seen:
            seen.add(tid)
            records.append(finished[tid])
    fidelity = config.get("fidelity") or None
    max_steps = int(fidelity["max_steps"]) if fidelity else None
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "stopped", "failed", "rejected")}
    fte, best, curve = 0.0, -math.inf, []
    for r in records:
        fte += _trial_cost(r, max_steps)
        if r.ok:
            best = max(best, r.reward)
        curve.append((fte, best))
    ok = sorted((r for r in records if r.ok), key=lambda r: (-r.reward, r.trial_id))
    objective = config.get("objective") or {}
    cost_key = objective.get("cost") or "macs"
    _fill_costs(ok, objective)
    points = [(float(r.metrics[cost_key]), float(r.metrics.get("quality", r.reward)), r) for r in ok
              if cost_key in r.metrics]
    rungs: list[dict[str, Any]] = []
    if fidelity:
        rung_events = [e for e in events if e["event"] == "rung"]
        for k, steps in enumerate(fidelity["rungs"][:-1]):
            at = [e for e in rung_events if int(e["rung"]) == k]
            rungs.append({"rung": k, "steps": steps, "reached": len(at),
                          "stopped": sum(e["decision"] == "stop" for e in at),
                          "continued": sum(e["decision"] == "continue" for e in at)})
        rungs.append({"rung": len(fidelity["rungs"]) - 1, "steps": fidelity["rungs"][-1], "reached": counts["ok"],
                      "stopped": 0, "continued": 0})
    retries: dict[str, int] = {}
    for e in events:
        if e["event"] == "retry":
            retries[e["reason"]] = retries.get(e["reason"], 0) + 1
    return SearchSummary(str(out), config, records, counts, fte, ok[:top], cost_key, pareto_front(points), curve,
                         rungs, retries)


def _fill_costs(records: list[TrialRecord], objective: dict[str, Any]) -> None:
    """Count multiply-adds and parameters (meta device) of trials whose journal line has none."""
    from torchspine.search.objective import measure_costs
    from torchspine.specs.spec import SpineNetSpec

    missing = [r for r in records if "macs" not in r.metrics]
    if missing:
        logger.info("counting multiply-adds and parameters of %d trial(s) on the meta device", len(missing))
    for r in missing:
        r.metrics.update(measure_costs(SpineNetSpec.from_genome(r.genome), image_size=objective.get("image_size", 640)))


def _fmt_cost(key: str, v: float) -> str:
    if key == "macs":
        return f"{v / 1e9:.2f}B"
    if key == "params":
        return f"{v / 1e6:.2f}M"
    return f"{v:.1f}ms"


def format_report(s: SearchSummary, *, curve_points: int = 10) -> str:
    cfg = s.config
    lines = [f"search in {s.out_dir}: {cfg.get('strategy')} on {cfg.get('space')}, reward {cfg.get('reward')}, "
             f"seed {cfg.get('seed')}"]
    fid, obj = cfg.get("fidelity"), cfg.get("objective")
    if fid:
        lines.append(f"early stopping (ASHA): rungs {fid['rungs']} steps, reduction factor "
                     f"{fid['reduction_factor']:g}, rule {fid.get('rule', 'quantile')}, "
                     f"strategy told {'rung rewards' if cfg.get('tell_stopped', True) else 'full-budget rewards only'}")
    if obj and obj.get("cost"):
        lines.append(f"reward = quality * ({obj['cost']} / {obj['target']:g}) ** {obj['w']:g}")
    limits = [f"{k[4:]} <= {obj[k]:g}" for k in ("max_macs", "max_params", "max_latency_ms") if obj and obj.get(k)]
    if limits:
        lines.append("hard limits: " + ", ".join(limits))
    c = s.counts
    lines.append(f"trials: {len(s.records)} finished: {c['ok']} full budget, {c['stopped']} stopped early, "
                 f"{c['failed']} failed, {c['rejected']} rejected; compute {s.fte:.1f} full-trial equivalents"
                 + ("; retries: " + ", ".join(f"{n} {k}" for k, n in sorted(s.retries.items())) if s.retries else ""))

    lines += ["", f"Leaderboard (full-budget trials, top {len(s.leaderboard)})"]
    has_q = any("quality" in r.metrics for r in s.leaderboard)
    head = f"  {'rank':>4s} {'trial':>5s} {'reward':>8s}" + (f" {'quality':>8s}" if has_q else "") + \
        f" {'MACs':>8s} {'params':>8s}  spec"
    lines.append(head)
    top_dir = Path(s.out_dir) / "top"
    for i, r in enumerate(s.leaderboard):
        spec_file = top_dir / f"rank{i + 1:02d}_trial{r.trial_id}.json"
        where = str(spec_file) if spec_file.exists() else r.genome
        lines.append(f"  {i + 1:4d} {r.trial_id:5d} {r.reward:8.4f}" + (f" {r.metrics.get('quality', r.reward):8.4f}"
                                                                         if has_q else "")
                     + f" {_fmt_cost('macs', r.metrics['macs']):>8s} {_fmt_cost('params', r.metrics['params']):>8s}  "
                     + where)
    if not s.leaderboard:
        lines.append("  (no trial reached the full budget)")

    lines += ["", f"Pareto front (quality against {s.cost_key}; {len(s.front)} of {c['ok']} full-budget trials)",
              f"  {s.cost_key:>10s} {'quality':>8s} {'trial':>5s}"]
    for cost, q, r in s.front:
        lines.append(f"  {_fmt_cost(s.cost_key, cost):>10s} {q:8.4f} {r.trial_id:5d}")

    lines += ["", "Reward curve (best full-budget reward against compute)",
              f"  {'finished':>8s} {'FTE':>8s} {'best':>8s}"]
    n = len(s.curve)
    marks = sorted({max(1, round(n * (i + 1) / curve_points)) for i in range(curve_points)}) if n else []
    for m in marks:
        fte, best = s.curve[m - 1]
        lines.append(f"  {m:8d} {fte:8.2f} " + (f"{best:8.4f}" if math.isfinite(best) else f"{'-':>8s}"))

    if s.rungs:
        lines += ["", "Rungs (ASHA)", f"  {'rung':>4s} {'steps':>7s} {'reached':>7s} {'stopped':>7s} {'went on':>7s}"]
        for row in s.rungs:
            lines.append(f"  {row['rung']:4d} {row['steps']:7d} {row['reached']:7d} {row['stopped']:7d} "
                         f"{row['continued']:7d}")
    return "\n".join(lines)


def plot_front(s: SearchSummary, path: str | os.PathLike) -> None:
    """Quality against cost of every full-budget trial, the Pareto front as a step line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scale = {"macs": 1e9, "params": 1e6}.get(s.cost_key, 1.0)
    unit = {"macs": "multiply-adds (billions)", "params": "parameters (millions)",
            "latency_ms": "latency (ms)"}[s.cost_key]
    pts = [(float(r.metrics[s.cost_key]) / scale, float(r.metrics.get("quality", r.reward)))
           for r in s.records if r.ok and s.cost_key in r.metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if pts:
        ax.scatter(*zip(*pts), s=12, color="C0", alpha=0.6, label="full-budget trials")
    if s.front:
        ax.step([c / scale for c, _, _ in s.front], [q for _, q, _ in s.front], where="post", color="C3",
                marker="o", ms=4, label="Pareto front")
    ax.set_xlabel(unit)
    ax.set_ylabel("quality (AP)" if s.config.get("reward") == "proxy" else "quality")
    ax.set_title(f"{s.config.get('strategy')} search: quality against cost")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def plot_curve(s: SearchSummary, path: str | os.PathLike) -> None:
    """Best full-budget reward so far against cumulative full-trial equivalents."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [f for f, b in s.curve if math.isfinite(b)]
    ys = [b for b in (b for _, b in s.curve) if math.isfinite(b)]
    if xs:
        ax.step(xs, ys, where="post", color="C1", label="best full-budget reward")
    ax.set_xlabel("compute (full-trial equivalents)")
    ax.set_ylabel("reward")
    ax.set_title("reward curve")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
