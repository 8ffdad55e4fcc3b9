"""A compute budget in the reward (MnasNet form), hard limits, the Pareto front, the report and
the command's hand-off options."""

from __future__ import annotations

import json
import math

import pytest

from torchspine.search.fidelity import FidelitySchedule
from torchspine.search.journal import Journal
from torchspine.search.objective import Objective, measure_costs, pareto_front
from torchspine.search.runner import RunnerConfig, evaluate_trial, run_search
from torchspine.search.space import search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import FidelitySurrogate, SurrogateReward
from torchspine.specs import SpineNetSpec
from torchspine.specs.zoo import spinenet_spec


def test_costs_of_spinenet49_match_the_official_counts():
    # Backbone + endpoints at 640 px: 21,831,488 trainable parameters and 28.26B conv multiply-adds,
    # the figures of the official code (tensorflow/tpu models/official/detection/modeling/architecture/spinenet.py).
    c = measure_costs(spinenet_spec("49"), image_size=640)
    assert c["params"] == 21_831_488
    assert c["macs"] / 1e9 == pytest.approx(28.26, abs=0.005)


def test_latency_is_measured_on_this_machine():
    spec = spinenet_spec("49").replace(filter_size_scale=0.25)
    c = measure_costs(spec, image_size=64, latency=True, repeats=2)
    assert 0.0 < c["latency_ms"] < 60_000


def test_mnasnet_reward_by_hand():
    obj = Objective(cost="macs", target=1e9, w=-0.07).validate()
    # Twice the target: 0.4 * 2 ** -0.07 = 0.4 * 0.952638 = 0.381055; half: 0.4 * 2 ** 0.07 = 0.4 * 1.049717 = 0.419887.
    assert obj.reward(0.4, {"macs": 2e9, "params": 1.0}) == pytest.approx(0.381055, abs=1e-6)
    assert obj.reward(0.4, {"macs": 0.5e9, "params": 1.0}) == pytest.approx(0.419887, abs=1e-6)
    assert Objective(cost="params", target=10.0, w=0.0).reward(0.4, {"params": 99.0}) == 0.4
    lim = Objective(max_params=100.0, max_macs=5.0)
    assert lim.rejection({"params": 100.0, "macs": 5.0}) is None
    assert lim.rejection({"params": 101.0, "macs": 6.0}) == "over budget: macs 6 > limit 5, params 101 > limit 100"
    for bad, match in ((dict(cost="flops", target=1.0), "cost must be one of"),
                       (dict(cost="macs"), "needs a positive target"),
                       (dict(target=3.0), "without a cost metric"),
                       (dict(max_macs=-1.0), "max_macs must be positive")):
        with pytest.raises(ValueError, match=match):
            Objective(**bad).validate()


def test_evaluate_trial_applies_the_objective():
    spec = SpineNetSpec.from_genome(SurrogateReward().target)  # surrogate reward 1.0, SpineNet-49 blocks
    obj = Objective(cost="params", target=21_831_488 / 2, w=-0.1)
    out = evaluate_trial(SurrogateReward(), spec.to_dict(), objective=obj)
    assert out["status"] == "ok" and out["metrics"]["quality"] == pytest.approx(1.0)
    assert out["reward"] == pytest.approx(2 ** -0.1)  # (params / target) = 2
    rej = evaluate_trial(SurrogateReward(), spec.to_dict(), objective=Objective(max_params=2e7))
    assert rej["status"] == "rejected" and "params 2.183e+07 > limit 2e+07" in rej["error"]
    assert rej["metrics"]["params"] == 21_831_488


def test_pareto_front_by_hand():
    pts = [(1.0, 0.1, "a"), (2.0, 0.3, "b"), (2.0, 0.2, "c"), (3.0, 0.25, "d"), (4.0, 0.5, "e"), (0.5, 0.05, "f")]
    # f (cheapest), a, b (c same cost lower; d dearer and worse than b), e.
    assert [k for _, _, k in pareto_front(pts)] == ["f", "a", "b", "e"]


def test_hard_limits_reject_before_training_and_do_not_count(tmp_path):
    # Random samples of the spinenet49 space have 1.2e7-1.9e7 parameters (seed 0; SpineNet-49: 2.18e7).
    calls = []

    def reward(spec):
        calls.append(spec.name)
        return SurrogateReward()(spec)

    st = create_strategy("random", search_space("spinenet49"), seed=0)
    res = run_search(st, reward, RunnerConfig(out_dir=str(tmp_path), trials=6, executor="local",
                                              objective=Objective(max_params=1.6e7, image_size=64)))
    rejected = [r for r in res.records if r.status == "rejected"]
    trained = [r for r in res.records if r.status != "rejected"]
    assert len(trained) == 6 and rejected  # rejections do not count as trials
    assert all(r.metrics["params"] > 1.6e7 and "over budget" in r.error for r in rejected)
    assert all(r.metrics["params"] <= 1.6e7 for r in trained)
    assert len(calls) == len(trained)  # rejected ones were never trained
    assert res.num_failed == 0 and st.num_told == len(res.records)
    with pytest.raises(ValueError, match="proposals in a row were over the hard budget limits"):
        run_search(create_strategy("random", search_space("spinenet49"), seed=0), reward,
                   RunnerConfig(out_dir=str(tmp_path / "x"), trials=3, executor="local", max_rejections=5,
                                objective=Objective(max_macs=1e6, image_size=64)))


def _asha_search(out, **kw):
    st = create_strategy("evolution", search_space("spinenet49"), seed=1)
    return run_search(st, FidelitySurrogate(max_steps=270), RunnerConfig(
        out_dir=str(out), trials=kw.pop("trials", 15), executor="local", top_k=3,
        fidelity=kw.pop("fidelity", FidelitySchedule(10, 270, 3)),
        objective=kw.pop("objective", Objective(cost="macs", target=2.5e10, image_size=640))),
        search_config={"reward": "surrogate-noisy"})


def test_report_leaderboard_front_curve_rungs(tmp_path):
    from torchspine.search.report import format_report, summarize

    res = _asha_search(tmp_path)
    s = summarize(tmp_path, top=3)
    ok = [r for r in res.records if r.ok]
    assert s.counts == {"ok": len(ok), "stopped": res.count("stopped"), "failed": 0, "rejected": 0}
    # Compute by hand: steps reached / 270 summed over the trials.
    assert s.fte == pytest.approx(sum(r.steps for r in res.records) / 270)
    assert [r.trial_id for r in s.leaderboard] == [r.trial_id for r in sorted(ok, key=lambda r: -r.reward)[:3]]
    # The front: no full-budget trial is cheaper and at least as good as a front member (brute force).
    front_ids = {r.trial_id for _, _, r in s.front}
    for r in ok:
        dominated = any(o.metrics["macs"] <= r.metrics["macs"] and o.metrics["quality"] >= r.metrics["quality"]
                        and (o.metrics["macs"], o.metrics["quality"]) != (r.metrics["macs"], r.metrics["quality"])
                        for o in ok)
        assert (r.trial_id in front_ids) == (not dominated)
    # Rungs: reached at k+1 = went on at k; the last rung = the full-budget trials.
    ev = Journal(tmp_path / "journal.jsonl").events()
    for row in s.rungs[:-1]:
        at = [e for e in ev if e["event"] == "rung" and e["rung"] == row["rung"]]
        assert row["reached"] == len(at) and row["stopped"] == sum(e["decision"] == "stop" for e in at)
    assert s.rungs[0]["reached"] == 15 and s.rungs[-1]["reached"] == len(ok)
    assert s.curve[-1] == (pytest.approx(s.fte), max(r.reward for r in ok))
    text = format_report(s)
    for part in ("Leaderboard", "Pareto front (quality against macs", "Reward curve", "Rungs (ASHA)",
                 "reward = quality * (macs / 2.5e+10) ** -0.07"):
        assert part in text
    # The top-K spec files are the leaderboard's, ready for training.
    top = sorted((tmp_path / "top").glob("rank*_trial*.json"))
    assert [p.name for p in top] == [f"rank{i + 1:02d}_trial{r.trial_id}.json" for i, r in enumerate(s.leaderboard)]
    assert SpineNetSpec.load(str(top[0])).blocks == SpineNetSpec.from_genome(s.leaderboard[0].genome).blocks


def test_resume_refuses_changed_settings_by_name(tmp_path):
    _asha_search(tmp_path, trials=4)
    with pytest.raises(ValueError, match=r"fidelity setting min_steps \(10 there, 30 now\)"):
        _asha_search(tmp_path, trials=5, fidelity=FidelitySchedule(30, 270, 3))
    with pytest.raises(ValueError, match=r"objective setting target \(25000000000.0 there, 30000000000.0 now\)"):
        _asha_search(tmp_path, trials=5, objective=Objective(cost="macs", target=3e10, image_size=640))
    st = create_strategy("evolution", search_space("spinenet49", intermediate_window=3), seed=1)
    with pytest.raises(ValueError, match=r"space_description setting intermediate_window \(5 there, 3 now\)"):
        run_search(st, FidelitySurrogate(max_steps=270), RunnerConfig(
            out_dir=str(tmp_path), trials=5, executor="local", fidelity=FidelitySchedule(10, 270, 3),
            objective=Objective(cost="macs", target=2.5e10, image_size=640)),
            search_config={"reward": "surrogate-noisy"})
    assert len(Journal(tmp_path / "journal.jsonl").finished()) == 4
    _asha_search(tmp_path, trials=6)  # the same settings resume
    assert len(Journal(tmp_path / "journal.jsonl").finished()) == 6


def test_search_command_asha_budget_top_and_report(tmp_path, capsys):
    from torchspine.cli import main

    out = tmp_path / "s"
    argv = ["search", "--strategy", "random", "--trials", "12", "--reward", "surrogate-noisy", "--steps", "270",
            "--asha", "--grace-steps", "10", "--local", "--out", str(out), "--top", "3", "--cost", "params",
            "--target", "2e7", "--max-macs", "3.2e10"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "ASHA rungs [10, 30, 90, 270] steps" in text and "stopped early" in text
    assert len(list((out / "top").glob("rank*.json"))) == 3
    cfg = Journal(out / "journal.jsonl").config()
    assert cfg["objective"]["cost"] == "params" and cfg["objective"]["max_macs"] == 3.2e10
    assert main(["search", "report", str(out), "--top", "3"]) == 0
    rep = capsys.readouterr().out
    assert "Leaderboard" in rep and "Pareto front (quality against params" in rep and "Rungs (ASHA)" in rep
    assert "next step: torchspine train --spec" in rep
    assert (out / "pareto.png").stat().st_size > 1000 and (out / "curve.png").stat().st_size > 1000
    # Resuming with another --window is refused, naming the setting.
    assert main([*argv, "--window", "3"]) == 2
    assert "intermediate_window (5 there, 3 now)" in capsys.readouterr().err
    assert main(["search", "report", str(tmp_path / "nothing")]) == 2
    assert "no search journal here" in capsys.readouterr().err
    assert main(["search", "--reward", "surrogate", "--local", "--grace-steps", "5", "--out", str(tmp_path / "y")]) == 2
    assert "--grace-steps needs --asha" in capsys.readouterr().err
    assert main(["search", "--reward", "surrogate", "--local", "--asha", "--out", str(tmp_path / "z")]) == 2
    assert "--asha needs the trial length in steps" in capsys.readouterr().err
    assert math.isfinite(json.loads((out / "best_specs.json").read_text())[0]["reward"])
