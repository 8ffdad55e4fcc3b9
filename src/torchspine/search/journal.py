"""The search journal: one JSON line per event, appended and fsynced.

Events:

* ``{"event": "config", ...}``: the first line, the search settings (strategy, space, seed,
  reward); a resumed search checks that they agree;
* ``{"event": "start", "trial_id", "genome", "decisions", "time"}``: a trial was launched;
* ``{"event": "rung", "trial_id", "rung", "steps", "reward", "metrics", "decision": "continue" | "stop"}``:
  early stopping (ASHA) decided on a trial that reached a rung below the full budget;
* ``{"event": "retry", "trial_id", "rung", "attempt", "reason": "crash" | "worker_lost", "error"}``:
  an attempt failed and the trial (its current rung) is run again;
* ``{"event": "finish", "trial_id", "status", "reward", "metrics", "error", "genome", "decisions",
  "start_time", "end_time", "duration_s"}`` with ``status`` one of ``ok`` (reached the full
  budget), ``stopped`` (early stopping: ``reward`` is the reward at the rung it stopped at),
  ``failed`` (crashed past its retries, NaN reward, timeout) or ``rejected`` (over a hard budget
  limit, never trained).

A line is written with a single ``write`` of the whole line, then ``fsync``, so a kill
leaves at most a truncated last line: :meth:`Journal.events` ignores it, the next append
cuts it off, and damage anywhere else raises ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Journal", "TrialRecord"]


@dataclass
class TrialRecord:
    """A finished trial as read back from the journal."""

    trial_id: int
    status: str
    reward: float | None
    genome: str
    decisions: tuple[int, ...]
    duration_s: float
    end_time: float
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Finished at the full budget with a reward (the trials ranked for ``best.json``)."""
        return self.status == "ok"

    @property
    def steps(self) -> float | None:
        """Training steps the trial reached (``metrics["steps"]``), when known."""
        v = self.metrics.get("steps")
        return float(v) if isinstance(v, (int, float)) else None


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the line stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Journal:
    """Append-only JSONL file of search events (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(_clean(event), allow_nan=False, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_line()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_partial_line(self) -> None:
        """A kill mid-write leaves a last line without its newline: cut it off before appending."""
        if not self.exists():
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())

    def events(self) -> list[dict[str, Any]]:
        """All complete events, in order."""
        if not self.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        out = []
        last_content = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                ev = json.loads(ln)
            except json.JSONDecodeError as e:
                if i == last_content and not ln.endswith("}"):
                    continue  # truncated by a kill mid-write
                raise ValueError(f"{self.path}: line {i + 1} is not valid JSON ({e})") from e
            if not isinstance(ev, dict) or "event" not in ev:
                raise ValueError(f"{self.path}: line {i + 1} is not a journal event: {ln[:80]!r}")
            out.append(ev)
        return out

    def config(self) -> dict[str, Any] | None:
        for ev in self.events():
            if ev["event"] == "config":
                return ev
        return None

    def write_config(self, config: dict[str, Any]) -> None:
        self.append({"event": "config", **config, "time": time.time()})

    def start(self, trial_id: int, *, genome: str, decisions: tuple[int, ...] | list[int]) -> None:
        self.append({"event": "start", "trial_id": trial_id, "genome": genome,
                     "decisions": list(decisions), "time": time.time()})

    def finish(self, trial_id: int, *, status: str, reward: float | None, genome: str,
               decisions: tuple[int, ...] | list[int], start_time: float, end_time: float | None = None,
               metrics: dict[str, Any] | None = None, error: str | None = None) -> TrialRecord:
        end = time.time() if end_time is None else end_time
        ev = {"event": "finish", "trial_id": trial_id, "status": status, "reward": reward, "genome": genome,
              "decisions": list(decisions), "start_time": start_time, "end_time": end,
              "duration_s": end - start_time, "metrics": metrics or {}, "error": error}
        self.append(ev)
        return _record(ev)

    def rung(self, trial_id: int, *, rung: int, steps: int, reward: float, metrics: dict[str, Any],
             decision: str) -> None:
        self.append({"event": "rung", "trial_id": trial_id, "rung": rung, "steps": steps, "reward": reward,
                     "metrics": metrics, "decision": decision, "time": time.time()})

    def retry(self, trial_id: int, *, rung: int, attempt: int, reason: str, error: str) -> None:
        self.append({"event": "retry", "trial_id": trial_id, "rung": rung, "attempt": attempt, "reason": reason,
                     "error": error, "time": time.time()})

    def finished(self) -> dict[int, TrialRecord]:
        """Finished trials by id (the first finish of an id wins; a resumed search never repeats one)."""
        out: dict[int, TrialRecord] = {}
        for ev in self.events():
            if ev["event"] == "finish" and int(ev["trial_id"]) not in out:
                out[int(ev["trial_id"])] = _record(ev)
        return out

    def records(self) -> list[TrialRecord]:
        """Finished trials sorted by trial id."""
        return [r for _, r in sorted(self.finished().items())]


def _record(ev: dict[str, Any]) -> TrialRecord:
    reward = ev.get("reward")
    if isinstance(reward, str):
        reward = float(reward)
    return TrialRecord(
        trial_id=int(ev["trial_id"]), status=str(ev["status"]), reward=reward, genome=str(ev["genome"]),
        decisions=tuple(int(d) for d in ev.get("decisions", ())), duration_s=float(ev.get("duration_s", 0.0)),
        end_time=float(ev.get("end_time", 0.0)), metrics=dict(ev.get("metrics") or {}), error=ev.get("error"),
    )
