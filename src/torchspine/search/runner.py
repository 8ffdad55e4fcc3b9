"""Run a search: a strategy proposes, trials run on Ray, rewards go back, everything is journaled.

Trials are Ray core tasks (``ray.remote`` with ``num_cpus`` / ``num_gpus`` per trial,
``max_retries=0``) driven by an ask/tell loop with ``ray.wait``. Ray core rather than Ray Tune
because the strategy, the journal and the resume logic are this project's own: Tune would
add a second experiment state (its own checkpoints and restore) that has to be kept in step
with the journal, while core tasks give exactly the scheduling and placement needed.
``ray.init()`` starts a local Ray (no dashboard, small object store, loopback only) unless
``address`` names a running cluster.

A trial that raises, whose worker dies, that runs past ``trial_timeout_s``, or whose reward
is NaN/inf is journaled as ``failed`` and told to the strategy as a failure; the search goes on.

Resume (after a kill): the journal (``journal.jsonl``) holds every finished trial and the
strategy state (``strategy.pt``) is saved atomically after every ask and every tell. On
restart, finished trials that the saved state still lists as outstanding are told from the
journal, outstanding trials with no result are run again under the same id and proposal,
and the search continues until ``trials`` trials have finished. No finished trial is redone.
"""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from torchspine.search.journal import Journal, TrialRecord
from torchspine.search.strategy import Proposal, Strategy, load_strategy, save_strategy
from torchspine.specs.spec import SpineNetSpec
from torchspine.utils import atomic_write, atomic_write_text

__all__ = ["RunnerConfig", "SearchResult", "evaluate_trial", "init_ray", "plot_rewards", "run_search"]

logger = logging.getLogger(__name__)

RewardFn = Callable[[SpineNetSpec], "float | dict[str, Any]"]


@dataclass(frozen=True)
class RunnerConfig:
    """How trials run.

    Attributes:
        out_dir: journal, strategy state, best spec, plot.
        trials: total number of trials (failed ones count).
        parallel: trials in flight at once.
        executor: ``"ray"`` (default) or ``"local"`` (in this process, one at a time; tests and
            benchmarks of the strategies).
        address: a running Ray cluster (``"auto"`` or ``"host:port"``); ``None`` starts a local one.
        cpus_per_trial, gpus_per_trial: Ray resources of one trial (fractions of a GPU allowed).
        object_store_memory: bytes for a local Ray's object store.
        trial_timeout_s: a trial running longer is cancelled and recorded as failed.
        top_k: how many best specs ``best_specs.json`` keeps.
    """

    out_dir: str
    trials: int
    parallel: int = 1
    executor: Literal["ray", "local"] = "ray"
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    object_store_memory: int = 256 * 1024 * 1024
    trial_timeout_s: float | None = None
    top_k: int = 5

    def validate(self) -> RunnerConfig:
        if self.trials < 1:
            raise ValueError(f"search: trials must be >= 1, got {self.trials}")
        if self.parallel < 1:
            raise ValueError(f"search: parallel must be >= 1, got {self.parallel}")
        if self.executor not in ("ray", "local"):
            raise ValueError(f"search: executor must be 'ray' or 'local', got {self.executor!r}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ValueError(f"search: cpus_per_trial must be > 0 and gpus_per_trial >= 0, got "
                             f"{self.cpus_per_trial}, {self.gpus_per_trial}")
        if self.trial_timeout_s is not None and self.trial_timeout_s <= 0:
            raise ValueError(f"search: trial_timeout_s must be positive, got {self.trial_timeout_s}")
        return self


@dataclass
class SearchResult:
    records: list[TrialRecord]
    best: list[TrialRecord]
    out_dir: str

    @property
    def num_failed(self) -> int:
        return sum(not r.ok for r in self.records)


def evaluate_trial(reward_fn: RewardFn, spec_dict: dict[str, Any]) -> dict[str, Any]:
    """Run one trial (inside a Ray worker or in-process). Never raises: failures are returned."""
    start = time.time()
    try:
        spec = SpineNetSpec.from_dict(spec_dict, source="trial spec")
        out = reward_fn(spec)
        metrics = dict(out) if isinstance(out, dict) else {"reward": out}
        if "reward" not in metrics:
            raise ValueError(f"reward function returned {sorted(metrics)} without a 'reward' key")
        reward = float(metrics.pop("reward"))
        metrics = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        if not math.isfinite(reward):
            return {"status": "failed", "reward": None, "metrics": metrics, "error": f"reward is {reward}",
                    "start_time": start, "end_time": time.time()}
        return {"status": "ok", "reward": reward, "metrics": metrics, "error": None,
                "start_time": start, "end_time": time.time()}
    except Exception as e:  # noqa: BLE001  (any crash of a trial is a failed trial, not a failed search)
        return {"status": "failed", "reward": None, "metrics": {}, "start_time": start, "end_time": time.time(),
                "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"}


def init_ray(*, address: str | None = None, object_store_memory: int = 256 * 1024 * 1024,
             num_cpus: int | None = None) -> None:
    """``ray.init`` for a search: a running cluster by address, else a local Ray on loopback.

    A local Ray binds to the machine's network address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (shared/reference/environment.md); Ray reads that variable when it is imported, so the
    constant is also set here in case ``ray`` was imported earlier.
    """
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # (private; read by services.py at node start)
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_memory,
             log_to_driver=False, configure_logging=False)


def _config_matches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose value differs from the journal's (compared as JSON: tuples read back as lists)."""
    import json

    return [k for k in ("strategy", "space", "seed", "reward", "proxy")
            if k in current and saved.get(k) != json.loads(json.dumps(current[k]))]


def run_search(strategy: Strategy, reward_fn: RewardFn, config: RunnerConfig, *,
               search_config: dict[str, Any] | None = None,
               callback: Callable[[TrialRecord], None] | None = None) -> SearchResult:
    """Run (or resume) a search in ``config.out_dir`` until ``config.trials`` trials have finished.

    Args:
        strategy: the ask/tell strategy (its saved state in ``out_dir`` is loaded if present).
        reward_fn: ``spec -> reward`` or ``spec -> {"reward": ..., other metrics}``; must be
            picklable for Ray (a module-level function or a dataclass such as ``ProxyTask``).
        search_config: settings written to the journal's first line; a resume with different
            ``strategy`` / ``space`` / ``seed`` / ``reward`` / ``proxy`` raises ``ValueError``.
        callback: called with each finished trial (the command's progress display).
    """
    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / "journal.jsonl")
    state_path = out / "strategy.pt"
    current = {"strategy": strategy.name, "space": strategy.space.name, "seed": strategy.seed,
               **(search_config or {})}
    finished = journal.finished()
    saved = journal.config()
    if saved is not None:
        bad = _config_matches(saved, current)
        if bad:
            raise ValueError(f"{journal.path}: the journal was written by a search with different "
                             + ", ".join(f"{k} ({saved.get(k)!r} there, {current[k]!r} now)" for k in bad)
                             + "; use another --out directory")
        if state_path.exists():
            load_strategy(strategy, state_path)
        elif finished:
            raise ValueError(f"{state_path} is missing but {journal.path} has {len(finished)} finished trials: "
                             f"cannot resume the strategy")
        logger.info("resuming the search in %s: %d trials finished", out, len(finished))
    else:
        journal.write_config({**current, "space_description": strategy.space.describe(),
                              "runner": asdict(config)})
    # Reconcile: results journaled after the last saved state.
    for tid in sorted(strategy.pending):
        if tid in finished:
            rec = finished[tid]
            strategy.tell(tid, rec.reward if rec.ok else None)
    save_strategy(strategy, state_path)
    rerun = [strategy.proposal(tid) for tid in sorted(strategy.pending)]
    if rerun:
        logger.info("re-running %d trial(s) that were in flight when the search stopped: %s",
                    len(rerun), [p.trial_id for p in rerun])

    records = dict(finished)

    def next_proposal() -> Proposal:
        if rerun:
            return rerun.pop(0)
        p = strategy.ask()
        save_strategy(strategy, state_path)
        return p

    def complete(p: Proposal, result: dict[str, Any]) -> None:
        rec = journal.finish(p.trial_id, status=result["status"], reward=result["reward"], genome=p.spec.to_genome(),
                             decisions=p.decisions, start_time=result["start_time"], end_time=result["end_time"],
                             metrics=result.get("metrics"), error=result.get("error"))
        strategy.tell(p.trial_id, rec.reward if rec.ok else None)
        save_strategy(strategy, state_path)
        records[p.trial_id] = rec
        if not rec.ok:
            logger.warning("trial %d failed: %s", p.trial_id, (rec.error or "").splitlines()[0] if rec.error else "")
        _write_best(out, records, strategy, config.top_k)
        if callback is not None:
            callback(rec)

    def launched() -> int:
        return len(records)

    if config.executor == "local":
        while launched() < config.trials:
            p = next_proposal()
            journal.start(p.trial_id, genome=p.spec.to_genome(), decisions=p.decisions)
            complete(p, evaluate_trial(reward_fn, p.spec.to_dict()))
    else:
        _run_on_ray(config, reward_fn, journal, next_proposal, complete, launched)

    result = _result(out, records, strategy, config.top_k)
    plot_rewards(result.records, out / "rewards.png", title=f"{strategy.name} search on {strategy.space.name}")
    return result


def _run_on_ray(config: RunnerConfig, reward_fn: RewardFn, journal: Journal,
                next_proposal: Callable[[], Proposal], complete: Callable[[Proposal, dict[str, Any]], None],
                launched: Callable[[], int]) -> None:
    import ray

    init_ray(address=config.address, object_store_memory=config.object_store_memory)
    task = ray.remote(evaluate_trial).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial,
                                              max_retries=0)
    fn_ref = ray.put(reward_fn)
    running: dict[Any, tuple[Proposal, float]] = {}
    while launched() < config.trials or running:
        while len(running) < config.parallel and launched() + len(running) < config.trials:
            p = next_proposal()
            journal.start(p.trial_id, genome=p.spec.to_genome(), decisions=p.decisions)
            running[task.remote(fn_ref, p.spec.to_dict())] = (p, time.time())
        done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for ref in done:
            p, start = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001  (the worker died: OOM, segfault; or it was cancelled)
                result = {"status": "failed", "reward": None, "metrics": {}, "start_time": start,
                          "end_time": time.time(), "error": f"{type(e).__name__}: {e}"}
            complete(p, result)
        if config.trial_timeout_s is not None:
            now = time.time()
            for ref, (p, start) in list(running.items()):
                if now - start > config.trial_timeout_s:
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    complete(p, {"status": "failed", "reward": None, "metrics": {}, "start_time": start,
                                 "end_time": now, "error": f"timeout after {config.trial_timeout_s} s"})


def _ranked(records: dict[int, TrialRecord]) -> list[TrialRecord]:
    ok = [r for r in records.values() if r.ok]
    return sorted(ok, key=lambda r: (-r.reward, r.trial_id))


def _write_best(out: Path, records: dict[int, TrialRecord], strategy: Strategy, top_k: int) -> None:
    ranked = _ranked(records)
    if not ranked:
        return
    best_spec = SpineNetSpec.from_genome(ranked[0].genome).replace(name=f"search_trial{ranked[0].trial_id}")
    best_spec.save(out / "best.json")
    rows = [{"trial_id": r.trial_id, "reward": r.reward, "genome": r.genome, "metrics": r.metrics}
            for r in ranked[:top_k]]
    import json

    atomic_write_text(out / "best_specs.json", json.dumps(rows, indent=2) + "\n")


def _result(out: Path, records: dict[int, TrialRecord], strategy: Strategy, top_k: int) -> SearchResult:
    _write_best(out, records, strategy, top_k)
    return SearchResult(records=[records[k] for k in sorted(records)], best=_ranked(records)[:top_k],
                        out_dir=str(out))


def plot_rewards(records: list[TrialRecord], path: str | os.PathLike, *, title: str = "") -> None:
    """Reward against trial number (failed trials as red crosses) with the running best."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if ok:
        ax.scatter([r.trial_id for r in ok], [r.reward for r in ok], s=12, label="reward")
        best, xs, ys = -math.inf, [], []
        for r in sorted(ok, key=lambda r: r.trial_id):
            best = max(best, r.reward)
            xs.append(r.trial_id)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far")
    if failed:
        y0 = min((r.reward for r in ok), default=0.0)
        ax.scatter([r.trial_id for r in failed], [y0] * len(failed), marker="x", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
