"""Journal, resume after a kill, failed trials, and a real Ray run on local CPUs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import pytest

from torchspine.search.journal import Journal
from torchspine.search.runner import RunnerConfig, run_search
from torchspine.search.space import search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import SurrogateReward
from torchspine.specs import SpineNetSpec


def test_journal_tolerates_a_truncated_last_line(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.finish(0, status="ok", reward=0.5, genome="g", decisions=[1], start_time=1.0, end_time=2.0)
    with open(j.path, "a") as f:
        f.write('{"event": "finish", "trial_id": 1, "sta')  # a kill mid-write
    assert sorted(j.finished()) == [0]
    j.finish(2, status="failed", reward=float("nan"), genome="g", decisions=[1], start_time=1.0, end_time=3.0)
    assert sorted(j.finished()) == [0, 2]  # the cut line was dropped, the next one is whole
    assert len(j.path.read_text().splitlines()) == 2
    assert j.finished()[0].duration_s == pytest.approx(1.0)
    lines = j.path.read_text().splitlines()
    lines.insert(1, "garbage")
    j.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        j.events()


@dataclass(frozen=True)
class FlakyReward:
    """Surrogate reward that crashes on some trials and returns NaN on others."""

    def __call__(self, spec: SpineNetSpec) -> float:
        tid = int(spec.name.removeprefix("trial")) if spec.name.startswith("trial") else -1
        if tid % 5 == 1:
            raise RuntimeError("simulated trial crash")
        if tid % 5 == 2:
            return float("nan")
        return SurrogateReward()(spec)


def test_failed_trials_are_recorded_and_search_continues(tmp_path):
    st = create_strategy("evolution", search_space("spinenet49"), seed=0, population_size=4, sample_size=2)
    res = run_search(st, _NamedReward(FlakyReward()), RunnerConfig(out_dir=str(tmp_path), trials=10, executor="local"))
    status = {r.trial_id: r.status for r in res.records}
    assert len(status) == 10
    assert [t for t, s in status.items() if s == "failed"] == [1, 2, 6, 7]
    errors = {r.trial_id: r.error for r in res.records if not r.ok}
    assert "simulated trial crash" in errors[1] and "nan" in errors[2]
    best = SpineNetSpec.load(str(tmp_path / "best.json"))
    assert best.blocks == SpineNetSpec.from_genome(res.best[0].genome).blocks
    assert (tmp_path / "rewards.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "best_specs.json").read_text())
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)


@dataclass(frozen=True)
class _CrashFirstAttempts:
    """Crashes the first ``n`` attempts of trials 0 and 2 (counted in files), always crashes trial 3."""

    marks: str
    n: int

    def __call__(self, spec: SpineNetSpec) -> float:
        tid = int(spec.name.removeprefix("trial"))
        if tid == 3:
            raise MemoryError("simulated out of memory")
        if tid in (0, 2):
            mark = os.path.join(self.marks, f"{tid}.count")
            done = int(open(mark).read()) if os.path.exists(mark) else 0
            if done < self.n:
                with open(mark, "w") as f:
                    f.write(str(done + 1))
                raise RuntimeError(f"simulated crash {done + 1}")
        return SurrogateReward()(spec)


def test_crashed_trials_are_retried_then_failed(tmp_path):
    st = create_strategy("random", search_space("spinenet49"), seed=0)
    res = run_search(st, _CrashFirstAttempts(str(tmp_path), 2),
                     RunnerConfig(out_dir=str(tmp_path / "run"), trials=5, executor="local", max_retries=2))
    status = {r.trial_id: r.status for r in res.records}
    assert status == {0: "ok", 1: "ok", 2: "ok", 3: "failed", 4: "ok"}  # 2 crashes each, then a success
    assert "MemoryError: simulated out of memory" in res.records[3].error
    retries = [(e["trial_id"], e["attempt"], e["reason"]) for e in Journal(tmp_path / "run" / "journal.jsonl").events()
               if e["event"] == "retry"]
    assert retries == [(0, 1, "crash"), (0, 2, "crash"), (2, 1, "crash"), (2, 2, "crash"), (3, 1, "crash"),
                       (3, 2, "crash")]
    assert res.records[0].reward == pytest.approx(SurrogateReward()(SpineNetSpec.from_genome(res.records[0].genome)))
    # With max_retries=1 the second crash is final.
    (tmp_path / "0.count").unlink()
    (tmp_path / "2.count").unlink()
    res1 = run_search(create_strategy("random", search_space("spinenet49"), seed=0),
                      _CrashFirstAttempts(str(tmp_path), 2),
                      RunnerConfig(out_dir=str(tmp_path / "run1"), trials=3, executor="local", max_retries=1))
    assert [r.status for r in res1.records] == ["failed", "ok", "failed"]
    assert "simulated crash 2" in res1.records[0].error


@dataclass(frozen=True)
class _NamedReward:
    """Passes the trial name through (``evaluate_trial`` rebuilds the spec from its dict)."""

    inner: object

    def __call__(self, spec: SpineNetSpec) -> float:
        return self.inner(spec)


_KILL_SCRIPT = r"""
import sys, time
import torch
from dataclasses import asdict, dataclass
from torchspine.search.runner import RunnerConfig, run_search
from torchspine.search.space import search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import SurrogateReward

@dataclass(frozen=True)
class Slow:
    def __call__(self, spec):
        time.sleep(0.3)
        return SurrogateReward()(spec)

torch.set_num_threads(1)
st = create_strategy(sys.argv[2], search_space("r0_sp53_plus"), seed=1)
run_search(st, Slow(), RunnerConfig(out_dir=sys.argv[1], trials=12, executor="local"),
           search_config={"reward": "surrogate"})
"""


@pytest.mark.parametrize("name", ["rl", pytest.param("evolution", marks=pytest.mark.slow)])
def test_resume_after_kill_redoes_nothing_and_loses_nothing(tmp_path, name):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out), name], env=env)
    journal = Journal(out / "journal.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and len(journal.finished() if journal.path.exists() else {}) < 4:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = journal.finished()
    assert 4 <= len(before) < 12
    started_before = [e["trial_id"] for e in journal.events() if e["event"] == "start"]

    st = create_strategy(name, search_space("r0_sp53_plus"), seed=1)
    res = run_search(st, SurrogateReward(), RunnerConfig(out_dir=str(out), trials=12, executor="local"),
                     search_config={"reward": "surrogate"})
    after = journal.finished()
    assert sorted(after) == list(range(12)) and len(res.records) == 12
    for tid, rec in before.items():  # completed trials kept as they were
        assert after[tid].reward == rec.reward and after[tid].genome == rec.genome
    starts = [e["trial_id"] for e in journal.events() if e["event"] == "start"]
    for tid in before:  # and never started again
        assert starts.count(tid) == 1
    # Only a trial in flight at the kill may start twice, under the same id and genome.
    rerun = [t for t in set(starts) if starts.count(t) > 1]
    assert len(rerun) <= 1 and all(t in started_before and t not in before for t in rerun)
    finishes = [e["trial_id"] for e in journal.events() if e["event"] == "finish"]
    assert len(finishes) == len(set(finishes)) == 12
    # A different strategy in the same directory is refused.
    with pytest.raises(ValueError, match="different strategy"):
        run_search(create_strategy("random", search_space("r0_sp53_plus"), seed=1), SurrogateReward(),
                   RunnerConfig(out_dir=str(out), trials=12, executor="local"), search_config={"reward": "surrogate"})


@pytest.mark.slow
def test_ray_run_on_local_cpus(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # The reward classes of this test module travel by value (Ray workers cannot import tests/).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    st = create_strategy("rl", search_space("spinenet49"), seed=0, hidden_size=16)
    try:
        res = run_search(st, _NamedReward(FlakyReward()),
                         RunnerConfig(out_dir=str(tmp_path), trials=6, parallel=2, executor="ray",
                                      cpus_per_trial=1, object_store_memory=80 * 1024 * 1024))
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"  # loopback only
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    status = {r.trial_id: r.status for r in res.records}
    assert sorted(status) == list(range(6))
    assert [t for t, s in status.items() if s == "failed"] == [1, 2]
    ok = [r for r in res.records if r.ok]
    assert all(r.reward == pytest.approx(SurrogateReward()(SpineNetSpec.from_genome(r.genome))) for r in ok)


def test_split_annotations_holds_out_training_images(tmp_path):
    from torchspine.search.proxy import split_annotations

    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, 17)],
            "annotations": [{"id": 100 + i, "image_id": i, "bbox": [0, 0, 2, 2], "category_id": 1,
                             "area": 4, "iscrowd": 0} for i in range(1, 17)],
            "categories": [{"id": 1, "name": "a"}]}
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(data))
    tr, va = split_annotations(ann, tmp_path / "work", val_fraction=0.25, seed=0)
    t, v = json.loads(tr.read_text()), json.loads(va.read_text())
    # 16 images x 0.25 = 4 held out; the parts are disjoint and cover the file; annotations follow.
    ti, vi = {im["id"] for im in t["images"]}, {im["id"] for im in v["images"]}
    assert len(vi) == 4 and len(ti) == 12 and ti | vi == set(range(1, 17)) and not ti & vi
    assert {a["image_id"] for a in v["annotations"]} == vi
    assert split_annotations(ann, tmp_path / "work", val_fraction=0.25, seed=0) == (tr, va)  # reused
    with pytest.raises(ValueError, match="val_fraction"):
        split_annotations(ann, tmp_path / "work", val_fraction=1.0)


@dataclass(frozen=True)
class _CrashOnTrial:
    """The real proxy task, except that one trial always crashes and another kills its own Ray worker
    process on its first attempt (a lost worker, as when a node dies or the OOM killer strikes)."""

    inner: object
    crash_id: int
    kill_id: int
    marks: str

    def __call__(self, spec: SpineNetSpec, **rung) -> dict:
        if spec.name == f"trial{self.crash_id}":
            raise RuntimeError("simulated crash inside a Ray worker")
        if spec.name == f"trial{self.kill_id}":
            mark = os.path.join(self.marks, f"killed-{spec.name}")
            if not os.path.exists(mark):
                open(mark, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            # Rescheduled: a cheap reward with the rung's steps (the real task runs in trial 0).
            return {"reward": SurrogateReward()(spec), "AP": SurrogateReward()(spec)}
        return self.inner(spec, **rung)


def test_ray_run_of_the_real_proxy_task(tmp_path, monkeypatch):
    """A real proxy-task trial (train + pycocotools AP on a held-out split of the built-in dataset's
    training images) with early stopping (rungs of 1 and 2 steps), beside a crashing trial and one
    whose worker dies, two at a time on local CPUs, tiny settings."""
    ray = pytest.importorskip("ray")
    from torchspine.search.fidelity import FidelitySchedule
    from torchspine.search.proxy import ProxyTask

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    task = ProxyTask.quick(image_size=64, max_steps=2, batch_size=4, eval_max_images=4, num_threads=1,
                           work_dir=str(tmp_path / "proxy"))
    st = create_strategy("random", search_space("spinenet49"), seed=0)
    try:
        res = run_search(st, _CrashOnTrial(task, crash_id=1, kill_id=2, marks=str(tmp_path)),
                         RunnerConfig(out_dir=str(tmp_path / "run"), trials=3, parallel=2, executor="ray",
                                      cpus_per_trial=1, object_store_memory=80 * 1024 * 1024,
                                      trial_timeout_s=400, max_retries=1, fidelity=FidelitySchedule(1, 2, 2)))
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"  # loopback only
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert [r.trial_id for r in res.records] == [0, 1, 2]
    assert [r.status for r in res.records][1] == "failed"
    assert "simulated crash inside a Ray worker" in res.records[1].error
    events = Journal(tmp_path / "run" / "journal.jsonl").events()
    retries = [(e["trial_id"], e["rung"], e["reason"]) for e in events if e["event"] == "retry"]
    assert retries == [(1, 0, "crash"), (2, 0, "worker_lost")]  # the lost worker's trial was rescheduled
    for r in (res.records[0], res.records[2]):
        assert r.status in ("ok", "stopped")
        rung0 = next(e for e in events if e["event"] == "rung" and e["trial_id"] == r.trial_id and e["rung"] == 0)
        assert 0.0 <= rung0["reward"] <= 1.0 and rung0["reward"] == rung0["metrics"]["AP"]
        assert rung0["metrics"]["steps"] == 1
        if r.status == "ok":
            assert r.steps == 2 and r.reward == r.metrics["AP"]
    real = res.records[0]
    # ASHA's rule: the first trial to reach a rung always goes on. Which trial gets there first
    # depends on Ray's scheduling (the rescheduled trial 2 can overtake the real one), so the
    # check follows the journal's order.
    rung0 = [e for e in events if e["event"] == "rung" and e["rung"] == 0]
    first = rung0[0]
    assert next(r for r in res.records if r.trial_id == first["trial_id"]).status == "ok"
    if real.status == "stopped":  # only a better reward seen earlier at rung 0 can stop it
        mine = next(e for e in rung0 if e["trial_id"] == real.trial_id)
        earlier = rung0[:rung0.index(mine)]
        assert any(e["reward"] > mine["reward"] for e in earlier)
    assert real.metrics["train_seconds"] > 0 and {"AP50", "APs"} <= set(real.metrics)  # trained and evaluated
    assert SpineNetSpec.load(str(tmp_path / "run" / "best.json")).scaling.filter_size_scale == 1.0  # full scale
    assert not (tmp_path / "run" / "trials" / "trial0").exists()  # checkpoints removed when a trial ends


def test_search_command_writes_outputs_and_resumes(tmp_path, capsys):
    from torchspine.cli import main
    from torchspine.models.registry import create_model

    out = tmp_path / "s"
    argv = ["search", "--strategy", "evolution", "--trials", "6", "--reward", "surrogate", "--local",
            "--space", "r0_sp53_plus", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "6 trials, 0 failed" in text and "best spec:" in text
    for name in ("journal.jsonl", "strategy.pt", "best.json", "best_specs.json", "rewards.png"):
        assert (out / name).exists(), name
    best = json.loads((out / "best_specs.json").read_text())[0]
    # The printed best reward is the surrogate reward of the saved best spec, recomputed here.
    spec = SpineNetSpec.load(str(out / "best.json"))
    assert SurrogateReward()(spec) == pytest.approx(best["reward"])
    assert f"{best['reward']:8.4f}" in text
    model = create_model("spinenet", spec=str(out / "best.json"), filter_size_scale=0.25)
    assert set(model.out_channels) == {"p3", "p4", "p5", "p6", "p7"}
    # Rerun with more trials: resumes (the first six are not redone).
    assert main([*argv[:4], "9", *argv[5:]]) == 0
    starts = [e["trial_id"] for e in Journal(out / "journal.jsonl").events() if e["event"] == "start"]
    assert starts == list(range(9))
    # Bad input is a clear error.
    assert main(["search", "--trials", "0", "--reward", "surrogate", "--local", "--out", str(tmp_path / "x")]) == 2
    assert "trials must be >= 1" in capsys.readouterr().err


def test_resume_with_proxy_settings_compares_them_as_json(tmp_path):
    from torchspine.search.proxy import ProxyTask
    from torchspine.search.runner import _config_diff

    info = {"strategy": "rl", "reward": "proxy", "proxy": asdict(ProxyTask.quick())}
    saved = json.loads(json.dumps(info))  # as the journal reads it back (tuples become lists)
    assert _config_diff(saved, info) == []
    changed = {**info, "proxy": {**info["proxy"], "image_size": 256}}
    assert [k for k, _ in _config_diff(saved, changed)] == ["proxy"]
