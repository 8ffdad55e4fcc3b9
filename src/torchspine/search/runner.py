"""Run a search: a strategy proposes, trials run on Ray, rewards go back, everything is journaled.

Trials are Ray core tasks (``ray.remote`` with ``num_cpus`` / ``num_gpus`` per trial,
``max_retries=0``) driven by an ask/tell loop with ``ray.wait``. Ray core rather than Ray Tune
because the strategy, the journal and the resume logic are this project's own: Tune would
add a second experiment state (its own checkpoints and restore) that has to be kept in step
with the journal, while core tasks give exactly the scheduling and placement needed.
``ray.init()`` starts a local Ray (no dashboard, small object store, loopback only) unless
``address`` names a running cluster.

A trial that raises (out of memory included) or whose Ray worker is lost (killed, its node
gone) is run again up to ``max_retries`` times (a ``retry`` journal line each), then journaled
as ``failed`` with its error; one that runs past ``trial_timeout_s`` or whose reward is NaN/inf
fails at once. Failures are told to the strategy as failures and the search goes on. An
architecture over a hard budget limit (``objective``) is ``rejected`` before training.

Early stopping (``fidelity``, see ``fidelity.py``): a trial runs rung by rung, each rung a
task of its own that resumes the trial's checkpoint in ``trials/trialN``; after each rung
below the full budget the ASHA decision is journaled (``rung`` line) and a continued trial's
next rung is queued ahead of new proposals. A trial is told to the strategy once, when it
finishes: the full-budget reward, or the reward of the rung it stopped at (``tell_stopped``;
docs/search.md says why).

Resume (after a kill): the journal (``journal.jsonl``) holds every finished trial and the
strategy state (``strategy.pt``) is saved atomically after every ask and every tell. On
restart, finished trials that the saved state still lists as outstanding are told from the
journal, the ASHA records are replayed from the ``rung`` lines, outstanding trials with no
result are run again under the same id and proposal from the rung they were at (with the
retries they had used), and the search continues until ``trials`` trials have finished. No
finished trial or rung is redone.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from torchspine.search.fidelity import AshaStopper, FidelitySchedule
from torchspine.search.journal import Journal, TrialRecord
from torchspine.search.objective import COST_METRICS, Objective
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
        trials: number of trials to finish (failed and early-stopped ones count, rejected ones
            do not: a rejection costs no training).
        parallel: trials in flight at once.
        executor: ``"ray"`` (default) or ``"local"`` (in this process, one at a time; tests and
            benchmarks of the strategies).
        address: a running Ray cluster (``"auto"`` or ``"host:port"``); ``None`` starts a local one.
        cpus_per_trial, gpus_per_trial: Ray resources of one trial (fractions of a GPU allowed).
        object_store_memory: bytes for a local Ray's object store.
        trial_timeout_s: a trial segment running longer is cancelled and recorded as failed.
        top_k: how many best specs ``best_specs.json`` and ``top/`` keep.
        max_retries: a trial whose attempt crashes (an exception, out of memory) or whose Ray
            worker is lost is run again up to this many times, then recorded as failed.
        fidelity: early stopping (ASHA) over training steps; ``None`` trains every trial in full.
        tell_stopped: tell strategies the reward an early-stopped trial had at its last rung
            (``False``: only full-budget rewards; stopped trials are told as failures).
        objective: cost-aware reward and hard budget limits; ``None``: the reward as it comes.
        max_rejections: this many rejections in a row stop the search with an error (the
            limits leave nothing to train).
        keep_trial_dirs: keep ``trials/trialN`` (checkpoints of early-stopping runs) after a
            trial finishes.
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
    max_retries: int = 2
    fidelity: FidelitySchedule | None = None
    tell_stopped: bool = True
    objective: Objective | None = None
    max_rejections: int = 1000
    keep_trial_dirs: bool = False

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
        if self.top_k < 1:
            raise ValueError(f"search: top_k must be >= 1, got {self.top_k}")
        if self.max_retries < 0 or self.max_rejections < 1:
            raise ValueError(f"search: need max_retries >= 0 and max_rejections >= 1, got {self.max_retries}, "
                             f"{self.max_rejections}")
        if self.fidelity is not None:
            self.fidelity.validate()
        if self.objective is not None:
            self.objective.validate()
        return self


@dataclass
class SearchResult:
    records: list[TrialRecord]
    best: list[TrialRecord]
    out_dir: str

    @property
    def num_failed(self) -> int:
        return sum(r.status == "failed" for r in self.records)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)


def evaluate_trial(reward_fn: RewardFn, spec_dict: dict[str, Any], *, steps: int | None = None,
                   max_steps: int | None = None, trial_dir: str | None = None, objective: Objective | None = None,
                   costs: dict[str, float] | None = None) -> dict[str, Any]:
    """Run one trial, or one rung of it (inside a Ray worker or in-process). Never raises.

    With ``steps`` (early stopping) the reward function is called as ``reward_fn(spec,
    steps=..., max_steps=..., trial_dir=...)`` and trains up to ``steps`` of a ``max_steps`` run,
    resuming from ``trial_dir``. With an ``objective`` the costs are measured first (once per
    trial: later rungs get ``costs``) and an architecture over a hard limit comes back
    ``rejected`` untrained; the returned reward is the objective's, the raw one is ``quality``.
    A crash comes back ``failed`` with ``retryable=True``; a NaN/inf reward ``failed`` without.
    """
    start = time.time()
    metrics: dict[str, Any] = {}
    try:
        spec = SpineNetSpec.from_dict(spec_dict, source="trial spec")
        if objective is not None and objective.active:
            if costs is None:
                costs = objective.measure(spec)
                metrics.update(costs)
                reason = objective.rejection(costs)
                if reason is not None:
                    return {"status": "rejected", "reward": None, "metrics": metrics, "error": reason,
                            "retryable": False, "start_time": start, "end_time": time.time()}
            else:
                metrics.update(costs)
        out = reward_fn(spec) if steps is None else reward_fn(spec, steps=steps, max_steps=max_steps,
                                                               trial_dir=trial_dir)
        got = dict(out) if isinstance(out, dict) else {"reward": out}
        if "reward" not in got:
            raise ValueError(f"reward function returned {sorted(got)} without a 'reward' key")
        quality = float(got.pop("reward"))
        metrics.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in got.items()})
        if steps is not None:
            metrics["steps"] = float(steps)
        if not math.isfinite(quality):
            return {"status": "failed", "reward": None, "metrics": metrics, "error": f"reward is {quality}",
                    "retryable": False, "start_time": start, "end_time": time.time()}
        reward = quality
        if objective is not None and objective.cost is not None:
            metrics["quality"] = quality
            reward = objective.reward(quality, costs or {})
        return {"status": "ok", "reward": reward, "metrics": metrics, "error": None, "retryable": False,
                "start_time": start, "end_time": time.time()}
    except Exception as e:  # noqa: BLE001  (any crash of a trial is a failed attempt, not a failed search)
        return {"status": "failed", "reward": None, "metrics": metrics, "start_time": start, "end_time": time.time(),
                "retryable": True, "reason": "crash",
                "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"}


def init_ray(*, address: str | None = None, object_store_memory: int = 256 * 1024 * 1024,
             num_cpus: int | None = None) -> None:
    """``ray.init`` for a search: a running cluster by address, else a local Ray on loopback.

    A local Ray binds to the machine's network address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``;
    Ray reads that variable when it is imported, so the constant is also set here in case
    ``ray`` was imported earlier.
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


# Settings a resumed search must share with the journal (a changed one is refused by name).
_RESUME_KEYS = ("strategy", "space", "space_description", "seed", "reward", "proxy", "objective", "fidelity",
                "tell_stopped")


def _config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, description)`` of every resume setting that differs from the journal's (compared as
    JSON: tuples read back as lists); a differing dict names its differing entries."""
    import json

    out = []
    for k in _RESUME_KEYS:
        if k not in current:
            continue
        now, then = json.loads(json.dumps(current[k])), saved.get(k)
        if then == now:
            continue
        if isinstance(now, dict) and isinstance(then, dict):
            subs = sorted(s for s in set(now) | set(then) if now.get(s) != then.get(s))
            out.append((k, ", ".join(f"{k} setting {s} ({then.get(s)!r} there, {now.get(s)!r} now)" for s in subs)))
        else:
            out.append((k, f"{k} ({then!r} there, {now!r} now)"))
    return out


@dataclass(frozen=True)
class _Job:
    """One attempt at one rung of one trial."""

    proposal: Proposal
    rung: int
    attempt: int
    costs: dict[str, float] | None
    start_time: float


class _Driver:
    """The ask/tell loop's state: the queue of runnable jobs, ASHA, retries, journal and strategy."""

    def __init__(self, strategy: Strategy, config: RunnerConfig, journal: Journal, state_path: Path, out: Path,
                 callback: Callable[[TrialRecord], None] | None) -> None:
        self.strategy, self.config, self.journal, self.state_path, self.out = strategy, config, journal, state_path, out
        self.callback = callback
        self.rungs: tuple[int | None, ...] = config.fidelity.rungs if config.fidelity else (None,)
        self.stopper = AshaStopper(config.fidelity) if config.fidelity else None
        self.records: dict[int, TrialRecord] = {}
        self.queue: list[_Job] = []
        self.active: set[int] = set()
        self.rejections_in_a_row = 0
        self.stop_requested = False

    # ------------------------------------------------------------ resume
    def restore(self) -> None:
        """Rebuild ASHA, the finished trials and the jobs in flight at the kill from the journal."""
        events = self.journal.events()
        self.records = self.journal.finished()
        for rec in self.records.values():
            self.rejections_in_a_row = self.rejections_in_a_row + 1 if rec.status == "rejected" else 0
        # Results journaled after the last saved strategy state.
        for tid in sorted(self.strategy.pending):
            if tid in self.records:
                self.strategy.tell(tid, self._tell_value(self.records[tid]))
        save_strategy(self.strategy, self.state_path)
        rung_events = [e for e in events if e["event"] == "rung"]
        if self.stopper is not None:
            for e in rung_events:
                self.stopper.record(int(e["trial_id"]), int(e["rung"]), float(e["reward"]),
                                    e["decision"] == "continue")
        starts = {int(e["trial_id"]): float(e["time"]) for e in events if e["event"] == "start"}
        for tid in sorted(self.strategy.pending):
            p = self.strategy.proposal(tid)
            if tid not in starts:  # killed between the ask and its start line
                self.journal.start(tid, genome=p.spec.to_genome(), decisions=p.decisions)
            mine = sorted((e for e in rung_events if int(e["trial_id"]) == tid), key=lambda e: int(e["rung"]))
            rung, costs = 0, None
            if mine:
                last = mine[-1]
                costs = {k: float(v) for k, v in mine[0]["metrics"].items() if k in COST_METRICS}
                if last["decision"] == "stop":  # killed between the rung line and the finish line
                    self._finish(p, "stopped", float(last["reward"]), dict(last["metrics"]), None,
                                 starts.get(tid, time.time()), time.time())
                    continue
                rung = int(last["rung"]) + 1
            attempt = sum(1 for e in events if e["event"] == "retry" and int(e["trial_id"]) == tid
                          and int(e["rung"]) == rung)
            self.queue.append(_Job(p, rung, attempt, costs or None, starts.get(tid, time.time())))
            self.active.add(tid)
        if self.queue:
            logger.info("re-running %d trial(s) that were in flight when the search stopped: %s",
                        len(self.queue), [(j.proposal.trial_id, f"rung {j.rung}") for j in self.queue])

    # ------------------------------------------------------------ jobs
    def counted(self) -> int:
        return sum(r.status != "rejected" for r in self.records.values())

    def next_job(self) -> _Job | None:
        if self.stop_requested:
            return None
        if self.queue:
            return self.queue.pop(0)
        if self.counted() + len(self.active) >= self.config.trials:
            return None
        p = self.strategy.ask()
        save_strategy(self.strategy, self.state_path)
        self.journal.start(p.trial_id, genome=p.spec.to_genome(), decisions=p.decisions)
        self.active.add(p.trial_id)
        return _Job(p, 0, 0, None, time.time())

    def trial_dir(self, trial_id: int) -> Path:
        return self.out.resolve() / "trials" / f"trial{trial_id}"

    def kwargs(self, job: _Job) -> dict[str, Any]:
        kw: dict[str, Any] = {"objective": self.config.objective, "costs": job.costs}
        if self.config.fidelity is not None:
            kw.update(steps=self.rungs[job.rung], max_steps=self.config.fidelity.max_steps,
                      trial_dir=str(self.trial_dir(job.proposal.trial_id)))
        return kw

    def on_result(self, job: _Job, result: dict[str, Any]) -> None:
        p, tid = job.proposal, job.proposal.trial_id
        status, metrics = result["status"], dict(result.get("metrics") or {})
        if status == "failed" and result.get("retryable") and job.attempt < self.config.max_retries:
            reason = result.get("reason", "crash")
            first = (result.get("error") or "").splitlines()[0] if result.get("error") else ""
            logger.warning("trial %d (rung %d, attempt %d) failed (%s): %s; running it again", tid, job.rung,
                           job.attempt + 1, reason, first)
            self.journal.retry(tid, rung=job.rung, attempt=job.attempt + 1, reason=reason,
                               error=result.get("error") or "")
            self.queue.insert(0, replace(job, attempt=job.attempt + 1))
            return
        if status != "ok":
            if job.rung > 0 and self.rungs[job.rung - 1] is not None:
                metrics["steps"] = float(self.rungs[job.rung - 1])  # the last rung it completed
            self._finish(p, status, None, metrics, result.get("error"), job.start_time, result["end_time"])
            return
        reward = float(result["reward"])
        costs = job.costs or ({k: float(metrics[k]) for k in COST_METRICS if k in metrics} or None)
        if self.stopper is not None and job.rung < len(self.rungs) - 1:
            go_on = self.stopper.decide(tid, job.rung, reward)
            self.journal.rung(tid, rung=job.rung, steps=int(self.rungs[job.rung]), reward=reward, metrics=metrics,
                              decision="continue" if go_on else "stop")
            if go_on:
                self.queue.insert(0, _Job(p, job.rung + 1, 0, costs, job.start_time))
                return
            self._finish(p, "stopped", reward, metrics, None, job.start_time, result["end_time"])
            return
        self._finish(p, "ok", reward, metrics, None, job.start_time, result["end_time"])

    def _tell_value(self, rec: TrialRecord) -> float | None:
        if rec.status == "ok" or (rec.status == "stopped" and self.config.tell_stopped):
            return rec.reward
        return None

    def _finish(self, p: Proposal, status: str, reward: float | None, metrics: dict[str, Any], error: str | None,
                start: float, end: float) -> None:
        rec = self.journal.finish(p.trial_id, status=status, reward=reward, genome=p.spec.to_genome(),
                                  decisions=p.decisions, start_time=start, end_time=end, metrics=metrics, error=error)
        self.strategy.tell(p.trial_id, self._tell_value(rec))
        save_strategy(self.strategy, self.state_path)
        self.records[p.trial_id] = rec
        self.active.discard(p.trial_id)
        if self.config.fidelity is not None and not self.config.keep_trial_dirs:
            shutil.rmtree(self.trial_dir(p.trial_id), ignore_errors=True)
        if status == "failed":
            logger.warning("trial %d failed: %s", p.trial_id, (error or "").splitlines()[0] if error else "")
        if status == "ok":
            _write_best(self.out, self.records, self.strategy, self.config.top_k)
        if self.callback is not None and self.callback(rec) is True:
            self.stop_requested = True
        if status == "rejected":
            self.rejections_in_a_row += 1
            if self.rejections_in_a_row >= self.config.max_rejections:
                raise ValueError(f"search: {self.rejections_in_a_row} proposals in a row were over the hard budget "
                                 f"limits ({error}); raise the limits or use a smaller search space")
        else:
            self.rejections_in_a_row = 0


def run_search(strategy: Strategy, reward_fn: RewardFn, config: RunnerConfig, *,
               search_config: dict[str, Any] | None = None,
               callback: Callable[[TrialRecord], None] | None = None) -> SearchResult:
    """Run (or resume) a search in ``config.out_dir`` until ``config.trials`` trials have finished.

    Args:
        strategy: the ask/tell strategy (its saved state in ``out_dir`` is loaded if present).
        reward_fn: ``spec -> reward`` or ``spec -> {"reward": ..., other metrics}``; with
            ``config.fidelity`` it is called ``reward_fn(spec, steps=, max_steps=, trial_dir=)``.
            Must be picklable for Ray (a module-level function or a dataclass such as ``ProxyTask``).
        search_config: settings written to the journal's first line; a resume with a different
            strategy, space (any setting of it), seed, reward, proxy task, objective or
            fidelity schedule raises ``ValueError`` naming the setting.
        callback: called with each finished trial (the command's progress display); when it
            returns True no new trial or rung is started and the search returns (trials still
            running on Ray are left to finish and are re-run on a resume, like after a kill).
    """
    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / "journal.jsonl")
    state_path = out / "strategy.pt"
    current = {"strategy": strategy.name, "space": strategy.space.name, "seed": strategy.seed,
               "space_description": strategy.space.describe(),
               "objective": config.objective.describe() if config.objective is not None else None,
               "fidelity": config.fidelity.describe() if config.fidelity is not None else None,
               "tell_stopped": config.tell_stopped if config.fidelity is not None else None,
               **(search_config or {})}
    saved = journal.config()
    finished = journal.finished()
    if saved is not None:
        bad = _config_diff(saved, current)
        if bad:
            raise ValueError(f"{journal.path}: the journal was written by a search with a different "
                             + "; ".join(d for _, d in bad) + "; use another --out directory")
        if state_path.exists():
            load_strategy(strategy, state_path)
        elif finished:
            raise ValueError(f"{state_path} is missing but {journal.path} has {len(finished)} finished trials: "
                             f"cannot resume the strategy")
        logger.info("resuming the search in %s: %d trials finished", out, len(finished))
    else:
        journal.write_config({**current, "runner": asdict(config)})
    driver = _Driver(strategy, config, journal, state_path, out, callback)
    driver.restore()

    if config.executor == "local":
        while (job := driver.next_job()) is not None:
            driver.on_result(job, evaluate_trial(reward_fn, job.proposal.spec.to_dict(), **driver.kwargs(job)))
    else:
        _run_on_ray(config, reward_fn, driver)

    result = _result(out, driver.records, strategy, config.top_k)
    plot_rewards(result.records, out / "rewards.png", title=f"{strategy.name} search on {strategy.space.name}")
    return result


def _run_on_ray(config: RunnerConfig, reward_fn: RewardFn, driver: _Driver) -> None:
    import ray

    init_ray(address=config.address, object_store_memory=config.object_store_memory)
    task = ray.remote(evaluate_trial).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial,
                                              max_retries=0)
    fn_ref = ray.put(reward_fn)
    running: dict[Any, tuple[_Job, float]] = {}
    while True:
        while len(running) < config.parallel and (job := driver.next_job()) is not None:
            running[task.remote(fn_ref, job.proposal.spec.to_dict(), **driver.kwargs(job))] = (job, time.time())
        if not running or driver.stop_requested:
            break
        done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for ref in done:
            job, start = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001  (the worker or its node died: killed, host OOM, segfault)
                result = {"status": "failed", "reward": None, "metrics": {}, "start_time": start,
                          "end_time": time.time(), "retryable": True, "reason": "worker_lost",
                          "error": f"{type(e).__name__}: {e}"}
            driver.on_result(job, result)
        if config.trial_timeout_s is not None:
            now = time.time()
            for ref, (job, start) in list(running.items()):
                if now - start > config.trial_timeout_s:
                    ray.cancel(ref, force=True)
                    running.pop(ref)
                    driver.on_result(job, {"status": "failed", "reward": None, "metrics": {}, "start_time": start,
                                           "end_time": now, "retryable": False,
                                           "error": f"timeout after {config.trial_timeout_s} s"})


def _ranked(records: dict[int, TrialRecord]) -> list[TrialRecord]:
    ok = [r for r in records.values() if r.ok]
    return sorted(ok, key=lambda r: (-r.reward, r.trial_id))


def _write_best(out: Path, records: dict[int, TrialRecord], strategy: Strategy, top_k: int) -> None:
    """``best.json``, ``best_specs.json`` (top rewards) and ``top/rankNN_trialM.json`` (the top K specs,
    each ready for ``torchspine train --spec``), among the trials that reached the full budget."""
    import json

    ranked = _ranked(records)
    if not ranked:
        return
    best_spec = SpineNetSpec.from_genome(ranked[0].genome).replace(name=f"search_trial{ranked[0].trial_id}")
    best_spec.save(out / "best.json")
    rows = [{"rank": i + 1, "trial_id": r.trial_id, "reward": r.reward, "genome": r.genome, "metrics": r.metrics}
            for i, r in enumerate(ranked[:top_k])]
    atomic_write_text(out / "best_specs.json", json.dumps(rows, indent=2) + "\n")
    top = out / "top"
    top.mkdir(exist_ok=True)
    keep = set()
    for i, r in enumerate(ranked[:top_k]):
        name = f"rank{i + 1:02d}_trial{r.trial_id}.json"
        keep.add(name)
        if not (top / name).exists():
            SpineNetSpec.from_genome(r.genome).replace(name=f"search_trial{r.trial_id}").save(top / name)
    for old in top.glob("rank*_trial*.json"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def _result(out: Path, records: dict[int, TrialRecord], strategy: Strategy, top_k: int) -> SearchResult:
    _write_best(out, records, strategy, top_k)
    return SearchResult(records=[records[k] for k in sorted(records)], best=_ranked(records)[:top_k],
                        out_dir=str(out))


def plot_rewards(records: list[TrialRecord], path: str | os.PathLike, *, title: str = "") -> None:
    """Reward against trial number: full-budget trials, early-stopped ones (their last rung's
    reward, grey), failed ones (red crosses), and the running best of the full-budget trials."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.ok]
    stopped = [r for r in records if r.status == "stopped" and r.reward is not None]
    failed = [r for r in records if r.status == "failed"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if stopped:
        ax.scatter([r.trial_id for r in stopped], [r.reward for r in stopped], s=6, color="0.6",
                   label="stopped early (rung reward)")
    if ok:
        ax.scatter([r.trial_id for r in ok], [r.reward for r in ok], s=12, label="reward")
        best, xs, ys = -math.inf, [], []
        for r in sorted(ok, key=lambda r: r.trial_id):
            best = max(best, r.reward)
            xs.append(r.trial_id)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C1", label="best so far")
    if failed:
        y0 = min((r.reward for r in ok + stopped), default=0.0)
        ax.scatter([r.trial_id for r in failed], [y0] * len(failed), marker="x", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
