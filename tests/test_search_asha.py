"""Early stopping (ASHA over training steps): rungs, the stop rule, the runner, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from torchspine.search.fidelity import AshaStopper, FidelitySchedule
from torchspine.search.journal import Journal
from torchspine.search.runner import RunnerConfig, run_search
from torchspine.search.space import search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import FidelitySurrogate, SurrogateReward
from torchspine.specs import SpineNetSpec


def test_rungs_by_hand():
    # min_steps * eta**k below max_steps, then max_steps.
    assert FidelitySchedule(100, 2700, 3).rungs == (100, 300, 900, 2700)
    assert FidelitySchedule(10, 100, 3).rungs == (10, 30, 90, 100)
    assert FidelitySchedule(5, 40, 2).rungs == (5, 10, 20, 40)
    assert FidelitySchedule(1, 2, 4).rungs == (1, 2)
    with pytest.raises(ValueError, match="grace period min_steps=50 must be below max_steps=50"):
        FidelitySchedule(50, 50).validate()
    with pytest.raises(ValueError, match="reduction_factor must be > 1"):
        FidelitySchedule(1, 10, 1.0).validate()
    with pytest.raises(ValueError, match="window must be"):
        FidelitySchedule(1, 10, 2, window=0).validate()


def test_stop_rule_by_hand():
    # Ray Tune's AsyncHyperBandScheduler example (rf = 2): rewards 2 and 4 go on (the first has no
    # cutoff; 4 >= 2), the cutoff is then the median 3.0, so 1 stops; the cutoff of {2, 4, 1} is 2.0.
    st = AshaStopper(FidelitySchedule(1, 10, 2))
    assert st.decide(0, 0, 2.0) and st.decide(1, 0, 4.0)
    assert st.cutoff(0) == pytest.approx(3.0)
    assert not st.decide(2, 0, 1.0)
    assert st.cutoff(0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="already decided"):
        st.decide(2, 0, 5.0)
    with pytest.raises(ValueError, match="not a stop rung"):
        st.decide(3, 4, 5.0)  # rungs (1, 2, 4, 8, 10): stop rungs 0..3; 4 is the full budget
    # eta = 3: the 66.7th percentile of [0.1, 0.2, 0.3, 0.4] (linear interpolation): position
    # 3 * 2/3 = 2.0 -> 0.3; 0.29 stops, 0.3 goes on.
    st3 = AshaStopper(FidelitySchedule(1, 9, 3))
    for i, r in enumerate((0.1, 0.2, 0.3, 0.4)):
        st3.record(i, 0, r)
    assert st3.cutoff(0) == pytest.approx(0.3)
    assert not st3.decide(10, 0, 0.29) and st3.decide(11, 0, 0.3)
    # A window of 2 looks at the last two recorded only: [0.29, 0.3] -> 0.29 + 0.5 * 0.01.
    win = AshaStopper(FidelitySchedule(1, 9, 2, window=2))
    for i, r in enumerate((0.9, 0.8, 0.29, 0.3)):
        win.record(i, 0, r)
    assert win.cutoff(0) == pytest.approx(0.295)


def test_fidelity_surrogate_model_by_hand():
    spec = SpineNetSpec.from_genome(SurrogateReward().target)  # q = 1.0
    exact = FidelitySurrogate(max_steps=100, noise_at_max=0.0, lag_mean=0.3, lag_spread=0.0)
    assert exact(spec)["reward"] == pytest.approx(1.0)
    assert exact(spec, steps=50, max_steps=100)["reward"] == pytest.approx(1.0 - 0.3 * 0.5)
    assert exact(spec, steps=10)["reward"] == pytest.approx(1.0 - 0.3 * 0.9)
    noisy = FidelitySurrogate(max_steps=100)
    a, b = noisy(spec, steps=10)["reward"], noisy(spec, steps=10)["reward"]
    assert a == b  # deterministic
    # Noise sd 0.005 * sqrt(100 / s); over many architectures the spread at s = 1 is ~10x that at s = 100.
    space = search_space("spinenet49")
    import random
    import statistics

    rng = random.Random(0)
    specs = [space.decode(space.sample(rng)) for _ in range(200)]
    lagless = FidelitySurrogate(max_steps=100, lag_spread=0.0)
    dev = {s: [lagless(x, steps=s)["reward"] - x_q * (1 - 0.3 * (1 - s / 100))
               for x, x_q in ((x, SurrogateReward()(x)) for x in specs)] for s in (1, 100)}
    assert statistics.pstdev(dev[100]) == pytest.approx(0.005, rel=0.25)
    assert statistics.pstdev(dev[1]) == pytest.approx(0.05, rel=0.25)
    with pytest.raises(ValueError, match="max_steps=100, asked for max_steps=50"):
        noisy(spec, steps=10, max_steps=50)


def _run(out, name="random", trials=40, seed=0, **cfg):
    st = create_strategy(name, search_space("spinenet49"), seed=seed)
    config = RunnerConfig(out_dir=str(out), trials=trials, executor="local",
                          fidelity=cfg.pop("fidelity", FidelitySchedule(10, 270, 3)), **cfg)
    return st, run_search(st, FidelitySurrogate(max_steps=270), config, search_config={"reward": "surrogate-noisy"})


def _quantile(values, p):
    """Linear-interpolation percentile, written out (checks the stopper's numpy call)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * p
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def test_asha_run_journal_replays_every_decision(tmp_path):
    _, res = _run(tmp_path, trials=40)
    events = Journal(tmp_path / "journal.jsonl").events()
    rungs = (10, 30, 90, 270)
    seen: dict[int, list[float]] = {0: [], 1: [], 2: []}
    last_rung: dict[int, dict] = {}
    for e in events:
        if e["event"] == "rung":
            k = e["rung"]
            cut = _quantile(seen[k], 2 / 3) if seen[k] else None
            want = "continue" if cut is None or e["reward"] >= cut else "stop"
            assert e["decision"] == want, e
            assert e["steps"] == rungs[k]
            assert last_rung.get(e["trial_id"], {"rung": -1})["rung"] == k - 1  # rung by rung
            seen[k].append(e["reward"])
            last_rung[e["trial_id"]] = e
    by_id = {r.trial_id: r for r in res.records}
    assert sorted(by_id) == list(range(40))
    for tid, rec in by_id.items():
        ev = last_rung[tid]
        if rec.status == "stopped":
            assert ev["decision"] == "stop" and rec.reward == ev["reward"] and rec.steps == ev["steps"]
        else:
            assert rec.status == "ok" and ev["decision"] == "continue" and ev["rung"] == 2 and rec.steps == 270
            assert rec.reward == FidelitySurrogate(max_steps=270)(SpineNetSpec.from_genome(rec.genome))["reward"]
    n_stopped = res.count("stopped")
    assert n_stopped > 15 and res.count("ok") == 40 - n_stopped
    # Every continued trial reached the next rung: reached(k + 1) = went on(k).
    for k in (0, 1):
        went_on = sum(e["event"] == "rung" and e["rung"] == k and e["decision"] == "continue" for e in events)
        assert went_on == sum(e["event"] == "rung" and e["rung"] == k + 1 for e in events)
    # best.json is the best full-budget trial only.
    best = max((r for r in res.records if r.ok), key=lambda r: r.reward)
    assert SpineNetSpec.load(str(tmp_path / "best.json")).blocks == SpineNetSpec.from_genome(best.genome).blocks


def test_strategies_are_told_rung_rewards_or_only_full_ones(tmp_path):
    # Aging evolution keeps the last 20 rewards it was told (local runs finish in trial order).
    st, res = _run(tmp_path / "rung", name="evolution", trials=30)
    told = [r.reward for r in res.records if r.status in ("ok", "stopped")]
    assert res.count("stopped") > 0 and [r for _, r in st.population] == told[-20:]
    st2, res2 = _run(tmp_path / "full", name="evolution", trials=30, tell_stopped=False)
    assert [r for _, r in st2.population] == [r.reward for r in res2.records if r.ok][-20:]


@pytest.mark.parametrize("name", ["random", "evolution", "rl"])
def test_asha_works_with_every_strategy(tmp_path, name):
    st, res = _run(tmp_path, name=name, trials=12)
    assert len(res.records) == 12 and not st.pending and st.num_told == 12
    assert res.count("ok") >= 1 and res.count("ok") + res.count("stopped") == 12
    if name == "rl":  # the controller learned from every told reward (stopped ones included)
        assert st.baseline is not None and st.last_stats


_KILL_SCRIPT = r"""
import sys, time
import torch
from dataclasses import dataclass
from torchspine.search.fidelity import FidelitySchedule
from torchspine.search.runner import RunnerConfig, run_search
from torchspine.search.space import search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import FidelitySurrogate

@dataclass(frozen=True)
class Slow:
    delay: float
    def __call__(self, spec, **kw):
        time.sleep(self.delay)
        return FidelitySurrogate(max_steps=270)(spec, **kw)

torch.set_num_threads(1)
st = create_strategy("evolution", search_space("r0_sp53_plus"), seed=3, population_size=4, sample_size=2)
run_search(st, Slow(float(sys.argv[2])), RunnerConfig(out_dir=sys.argv[1], trials=14, executor="local",
           fidelity=FidelitySchedule(10, 270, 3)), search_config={"reward": "surrogate-noisy"})
"""


def _kill_script_run(out):
    """The search of _KILL_SCRIPT, in this process and without the delay."""
    st = create_strategy("evolution", search_space("r0_sp53_plus"), seed=3, population_size=4, sample_size=2)
    run_search(st, FidelitySurrogate(max_steps=270), RunnerConfig(out_dir=str(out), trials=14, executor="local",
               fidelity=FidelitySchedule(10, 270, 3)), search_config={"reward": "surrogate-noisy"})


def test_asha_resume_after_kill_is_exact(tmp_path):
    """A search killed mid-run and resumed ends with exactly the journal results of one never killed."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out), "0.15"], env=env)
    journal = Journal(out / "journal.jsonl")
    deadline = time.time() + 120
    # Kill once some trials have finished and another is between rungs.
    while time.time() < deadline:
        ev = journal.events() if journal.path.exists() else []
        if sum(e["event"] == "finish" for e in ev) >= 4 and ev[-1]["event"] == "rung" and \
                ev[-1]["decision"] == "continue":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = journal.events()
    assert 4 <= sum(e["event"] == "finish" for e in before) < 14
    _kill_script_run(out)  # resume
    after = journal.events()
    assert after[:len(before)] == before  # nothing rewritten

    def outcome(events):
        rung = sorted((e["trial_id"], e["rung"], e["reward"], e["decision"]) for e in events if e["event"] == "rung")
        fin = sorted((e["trial_id"], e["status"], e["reward"], e["genome"]) for e in events if e["event"] == "finish")
        return rung, fin

    _kill_script_run(tmp_path / "ref")  # never killed
    assert outcome(after) == outcome(Journal(tmp_path / "ref" / "journal.jsonl").events())
    # Each (trial, rung) decided once, each trial finished once.
    keys = [(e["trial_id"], e["rung"]) for e in after if e["event"] == "rung"]
    assert len(keys) == len(set(keys))
    fins = [e["trial_id"] for e in after if e["event"] == "finish"]
    assert sorted(fins) == list(range(14))


@dataclass(frozen=True)
class _ProxyCheck:
    """Checks the rung arguments the runner passes and returns a reward from them."""

    def __call__(self, spec, *, steps=None, max_steps=None, trial_dir=None):
        assert max_steps == 8 and steps in (2, 4, 8) and trial_dir.endswith(spec.name)
        os.makedirs(trial_dir, exist_ok=True)
        with open(os.path.join(trial_dir, "steps.txt"), "a") as f:
            f.write(f"{steps}\n")
        return {"reward": steps / 8 + SurrogateReward()(spec)}


def test_rungs_resume_in_the_trial_directory(tmp_path):
    st = create_strategy("random", search_space("spinenet49"), seed=0)
    res = run_search(st, _ProxyCheck(), RunnerConfig(out_dir=str(tmp_path), trials=6, executor="local",
                                                     fidelity=FidelitySchedule(2, 8, 2), keep_trial_dirs=True))
    for rec in res.records:
        done = (tmp_path / "trials" / f"trial{rec.trial_id}" / "steps.txt").read_text().split()
        assert [int(s) for s in done] == [2, 4, 8][:len(done)] and int(done[-1]) == rec.steps
    res2 = run_search(create_strategy("random", search_space("spinenet49"), seed=0), _ProxyCheck(),
                      RunnerConfig(out_dir=str(tmp_path / "b"), trials=3, executor="local",
                                   fidelity=FidelitySchedule(2, 8, 2)))
    assert len(res2.records) == 3 and not (tmp_path / "b" / "trials" / "trial0").exists()  # cleaned up


def test_proxy_rungs_continue_the_same_run(tmp_path):
    """Two rungs (2 then 6 steps of a 6-step run) give bit-identical weights to one 6-step run: the
    schedule spans the full run and the second rung resumes the first one's checkpoint."""
    from safetensors.torch import load_file

    from torchspine.search.proxy import ProxyTask
    from torchspine.specs.zoo import spinenet_spec

    task = ProxyTask.quick(image_size=64, max_steps=6, batch_size=4, eval_max_images=2, num_threads=1,
                           work_dir=str(tmp_path / "proxy"))
    spec = spinenet_spec("49")
    a = task(spec, steps=2, max_steps=6, trial_dir=str(tmp_path / "a"))
    assert a["steps"] == 2
    assert task(spec, steps=6, max_steps=6, trial_dir=str(tmp_path / "a"))["steps"] == 6
    task(spec, steps=6, max_steps=6, trial_dir=str(tmp_path / "b"))
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    hist = json.loads((tmp_path / "a" / "history.json").read_text())["history"]
    assert hist[0]["step"] == 2  # the first rung stopped at 2 (its lr is the 6-step schedule's)
    with pytest.raises(ValueError, match="max_steps=5 differs"):
        task(spec, steps=2, max_steps=5, trial_dir=str(tmp_path / "c"))


# ----------------------------------------------------------------- the quota rule (ASHA's promotion budget)
def test_quota_rule_by_hand():
    """eta 3: with n trials at a rung (this one included) a trial goes on only if it is among the
    floor(n/3) best and fewer than floor(n/3) went on before (worked out by hand below)."""
    st = AshaStopper(FidelitySchedule(1, 10, 3, rule="quota"))
    decisions = [st.decide(t, 0, r) for t, r in enumerate([5.0, 1.0, 3.0, 9.0, 8.0, 10.0, 11.0, 12.0, 13.0])]
    # n=1, 2: floor(n/3) = 0, nothing goes on; n=3: 3.0 is behind 5.0; n=4: 9.0 is the best, quota 1;
    # n=5: 8.0 is behind 9.0; n=6: 10.0 best, quota 2 (1 used); n=7, 8: best but quota 2 used;
    # n=9: quota 3, 13.0 is the best: goes on.
    assert decisions == [False, False, False, True, False, True, False, False, True]
    assert st.went_on[0] == {3, 5, 8}
    # A window limits the ranking to the last `window` rewards (this one included): 1.0 at n=4 ranks
    # first among (1, 1, 1) and goes on; ranked among all four it is behind 5.0.
    w = AshaStopper(FidelitySchedule(1, 10, 3, window=3, rule="quota"))
    assert [w.decide(t, 0, r) for t, r in enumerate([5.0, 1.0, 1.0, 1.0])] == [False, False, False, True]
    a = AshaStopper(FidelitySchedule(1, 10, 3, rule="quota"))
    assert [a.decide(t, 0, r) for t, r in enumerate([5.0, 1.0, 1.0, 1.0])] == [False, False, False, False]
    # The quantile rule (Ray Tune's) on the same rewards lets every new best through.
    q = AshaStopper(FidelitySchedule(1, 10, 3))
    assert [q.decide(t, 0, r) for t, r in enumerate([5.0, 1.0, 3.0, 9.0, 8.0, 10.0, 11.0, 12.0, 13.0])] == \
        [True, False, False, True, True, True, True, True, True]


def test_quota_rule_keeps_the_budget_on_an_improving_stream():
    """A strategy that keeps improving (every trial better than all before it): the quantile rule
    passes all of them after the first, the quota rule exactly floor(n/eta) of n at every step."""
    quota, quantile = (AshaStopper(FidelitySchedule(1, 10, 3, rule=r)) for r in ("quota", "quantile"))
    for t in range(60):
        quota.decide(t, 0, float(t))
        quantile.decide(t, 0, float(t))
        assert len(quota.went_on[0]) == (t + 1) // 3
    assert len(quantile.went_on[0]) == 60  # every one went on


def test_quota_rule_is_validated_and_described():
    with pytest.raises(ValueError, match="rule must be one of"):
        FidelitySchedule(10, 270, 3, rule="promote").validate()
    # The default rule is left out of the description, so journals written before the rule existed
    # still resume; another rule is a resume setting.
    assert "rule" not in FidelitySchedule(10, 270, 3).describe()
    assert FidelitySchedule(10, 270, 3, rule="quota").describe()["rule"] == "quota"


def test_quota_run_keeps_the_budget_and_resumes_exactly(tmp_path):
    """Evolution with the quota rule on the noisy surrogate: at every rung at most 1/3 of the
    trials that reached it went on; a search stopped midway and resumed decides exactly as one
    run straight through (the quota's counts are replayed from the journal's rung lines)."""
    sched = FidelitySchedule(10, 270, 3, rule="quota")
    _run(tmp_path / "one", name="evolution", trials=40, fidelity=sched)
    events = Journal(tmp_path / "one" / "journal.jsonl").events()
    for k in range(3):
        at = [e for e in events if e["event"] == "rung" and e["rung"] == k]
        assert sum(e["decision"] == "continue" for e in at) <= len(at) // 3
    assert sum(e["event"] == "rung" and e["rung"] == 0 for e in events) == 40

    def stop_after(n):
        seen = []

        def cb(rec):
            seen.append(rec)
            return len(seen) >= n
        return cb

    st = create_strategy("evolution", search_space("spinenet49"), seed=0)
    config = RunnerConfig(out_dir=str(tmp_path / "two"), trials=40, executor="local", fidelity=sched)
    run_search(st, FidelitySurrogate(max_steps=270), config, search_config={"reward": "surrogate-noisy"},
               callback=stop_after(17))
    _run(tmp_path / "two", name="evolution", trials=40, fidelity=sched)

    def outcome(evs):
        return (sorted((e["trial_id"], e["rung"], e["reward"], e["decision"]) for e in evs if e["event"] == "rung"),
                sorted((e["trial_id"], e["status"], e["reward"]) for e in evs if e["event"] == "finish"))

    assert outcome(Journal(tmp_path / "two" / "journal.jsonl").events()) == outcome(events)


def test_search_command_chooses_the_rule(tmp_path, capsys):
    from torchspine.cli import main

    for strategy, rule in (("evolution", "quota"), ("random", "quantile")):
        out = tmp_path / strategy
        # 90 trials: run one at a time, under the quota a trial reaches the full budget about once in 3^3.
        assert main(["search", "--strategy", strategy, "--trials", "90", "--reward", "surrogate-noisy",
                     "--steps", "270", "--asha", "--grace-steps", "10", "--local", "--out", str(out)]) == 0
        assert Journal(out / "journal.jsonl").config()["fidelity"].get("rule", "quantile") == rule
    capsys.readouterr()
    assert main(["search", "--strategy", "random", "--trials", "3", "--reward", "surrogate", "--local",
                 "--asha-rule", "quota", "--out", str(tmp_path / "x")]) == 2
    assert "--asha-rule needs --asha" in capsys.readouterr().err
