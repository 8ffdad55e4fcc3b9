"""How many samples each search strategy needs on a cheap surrogate reward with a known best.

Not a test. The reward (``torchspine.search.surrogate.SurrogateReward``) is the similarity of
a proposed spec to a target spec, so the best architecture is known (reward 1.0):

* setting A: the ``spinenet49`` space of paper 3.1-3.4 (about 10^39 architectures), target the
  official SpineNet-49 blocks; we count samples until the best reward so far reaches
  0.7 / 0.8 / 0.9 (an exact hit is out of reach for every strategy at this budget);
* setting B: a small space (2 intermediate + 3 output blocks, 32,400 architectures), target
  a fixed random architecture; we count samples until the exact best (reward 1.0) is found.

* setting C (``--only C``): early stopping. The reward is ``FidelitySurrogate`` (setting A's
  reward seen through a training run of ``s`` of ``R = 2700`` steps: a per-architecture lag and
  a noise that shrink with ``s``; see its docstring). For each strategy and seed, the plain
  search trains ``--budget-c`` trials in full; ASHA (rungs 100, 300, 900, 2700 steps, factor 3)
  runs through the same runner (``run_search``, local executor) until its best full-budget
  reward reaches the plain search's best, or it has spent the plain search's compute. Compute
  is in full-trial equivalents (FTE: training steps / R). Reported per seed and as median and
  range over the seeds: the FTE ASHA needed, against the plain search's whole budget and against
  the FTE the plain search needed to first reach its best.
* setting D (``--only D``): the MnasNet reward ``q * (MACs / 25e9) ** -0.07`` with evolution
  and ASHA, and with plain random search; the Pareto fronts (noise-free surrogate quality
  against backbone multiply-adds at 640 px).

Every strategy runs with several seeds through the same ask/tell interface; the tables of A
and B give the median samples needed (``>B`` when not reached within the budget B) and the
ratio random / strategy (higher is better for the strategy).

    python benchmarks/bench_search.py [--seeds 5] [--budget-a 1500] [--budget-b 4000] [--budget-c 100]
                                      [--rl-entropy 1e-3] [--only A|B|C|D] [--strategies random,evolution,rl]
                                      [--rule quantile|quota] [--first-seed 0]   (setting C's ASHA rule, seeds)
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time

import torch

from torchspine.search.fidelity import FidelitySchedule
from torchspine.search.objective import Objective
from torchspine.search.runner import RunnerConfig, run_search
from torchspine.search.space import SearchSpace, search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import FidelitySurrogate, SurrogateReward
from torchspine.specs import StemSpec

STRATEGY_OPTIONS = {"random": {}, "evolution": {"population_size": 20, "sample_size": 5},
                    "rl": {"learning_rate": 3e-3, "entropy_weight": 1e-3, "baseline_decay": 0.95}}


def run(strategy_name: str, space: SearchSpace, reward: SurrogateReward, *, seed: int, budget: int,
        thresholds: tuple[float, ...]) -> tuple[dict[float, int | None], float]:
    st = create_strategy(strategy_name, space, seed=seed, **STRATEGY_OPTIONS[strategy_name])
    reached: dict[float, int | None] = {t: None for t in thresholds}
    best = float("-inf")
    for n in range(1, budget + 1):
        p = st.ask()
        r = reward(p.spec)
        st.tell(p.trial_id, r)
        best = max(best, r)
        for t in thresholds:
            if reached[t] is None and best >= t - 1e-9:
                reached[t] = n
        if all(v is not None for v in reached.values()):
            break
    return reached, best


def table(title: str, space: SearchSpace, reward: SurrogateReward, *, seeds: int, budget: int,
          thresholds: tuple[float, ...]) -> None:
    print(f"\n## {title}\nspace {space.name}: {space.size():.3g} architectures, {space.num_decisions} decisions; "
          f"budget {budget} samples, seeds 0..{seeds - 1}")
    medians: dict[str, dict[float, float]] = {}
    for name in ("random", "evolution", "rl"):
        t0 = time.perf_counter()
        runs = [run(name, space, reward, seed=s, budget=budget, thresholds=thresholds) for s in range(seeds)]
        # Not reached counts as budget + 1 (so the median is a lower bound when it shows ">B").
        medians[name] = {t: statistics.median([r[0][t] or budget + 1 for r in runs]) for t in thresholds}
        best = [r[1] for r in runs]
        cells = "  ".join(
            f">={t:g}: " + (f">{budget}" if medians[name][t] > budget else f"{medians[name][t]:.0f}")
            + f" ({sum(r[0][t] is not None for r in runs)}/{seeds})"
            for t in thresholds)
        print(f"{name:10s} {cells}  best@budget median {statistics.median(best):.3f}  "
              f"[{time.perf_counter() - t0:.0f} s]")
    for name in ("evolution", "rl"):
        cells = []
        for t in thresholds:
            r, s = medians["random"][t], medians[name][t]
            if s > budget:  # the strategy's median did not reach it: no ratio
                cells.append(f">={t:g}: n/a")
            elif r > budget:  # random's median did not reach it: a lower bound
                cells.append(f">={t:g}: >{r / s:.2f}x")
            else:
                cells.append(f">={t:g}: {r / s:.2f}x")
        print(f"random/{name}: {'  '.join(cells)}  (samples random needs / samples {name} needs; >1 = fewer)")


def _search(name: str, seed: int, reward, *, trials: int, fidelity: FidelitySchedule | None = None,
            tell_stopped: bool = True, objective: Objective | None = None, stop=None) -> list:
    """Run ``run_search`` (local executor, in a temporary directory) and return the records in finish order."""
    order = []

    def on_trial(rec):
        order.append(rec)
        return stop(order) if stop is not None else False

    with tempfile.TemporaryDirectory(prefix="bench-search-", dir=_tmp_root()) as d:
        st = create_strategy(name, search_space("spinenet49"), seed=seed, **STRATEGY_OPTIONS[name])
        run_search(st, reward, RunnerConfig(out_dir=d, trials=trials, executor="local", fidelity=fidelity,
                                            tell_stopped=tell_stopped, objective=objective), callback=on_trial)
    return order


def _tmp_root() -> str | None:
    import os

    return "/dev/shm" if os.path.isdir("/dev/shm") else None  # the journal fsyncs every line


def _fte(records, max_steps: int) -> list[float]:
    out, total = [], 0.0
    for r in records:
        total += (r.steps or max_steps) / max_steps if r.status != "rejected" else 0.0
        out.append(total)
    return out


def _spread(xs: list[float]) -> str:
    def f(x: float) -> str:
        return ">1" if x == float("inf") else f"{x:.3g}"

    return f"{f(statistics.median(xs))} [{f(min(xs))}, {f(max(xs))}]"


def asha_table(strategies: list[str], *, seeds: int, budget: int, tells: tuple[bool, ...],
               window: int | None = None, rule: str = "quantile", first_seed: int = 0) -> None:
    reward = FidelitySurrogate()
    R = reward.max_steps
    schedule = FidelitySchedule(min_steps=100, max_steps=R, reduction_factor=3.0, window=window,
                                rule=rule)
    print(f"\n## C: ASHA vs plain search, FidelitySurrogate(max_steps={R}, noise_at_max={reward.noise_at_max}, "
          f"lag {reward.lag_mean} +- {reward.lag_spread}); rungs {list(schedule.rungs)}; plain budget {budget} "
          f"full trials; rung window {window}; rule {rule}; seeds {first_seed}..{first_seed + seeds - 1}")
    for name in strategies:
        for tell in (tells if name != "random" else (True,)):
            t0 = time.perf_counter()
            rows = []
            for seed in range(first_seed, first_seed + seeds):
                plain = _search(name, seed, reward, trials=budget)
                rewards = [r.reward for r in plain if r.ok]
                best = max(rewards)
                n_best = rewards.index(best) + 1
                true_plain = max(plain, key=lambda r: r.reward if r.ok else -1).metrics["true_reward"]

                def reached(order, best=best):
                    return any(r.ok and r.reward >= best for r in order) or _fte(order, R)[-1] >= budget

                asha = _search(name, seed, reward, trials=50 * budget, fidelity=schedule, tell_stopped=tell,
                               stop=reached)
                fte = _fte(asha, R)
                hit = next((i for i, r in enumerate(asha) if r.ok and r.reward >= best), None)
                ok = [r for r in asha if r.ok]
                true_asha = max(ok, key=lambda r: r.reward).metrics["true_reward"] if ok else float("nan")
                rows.append({"seed": seed, "best": best, "n_best": n_best, "fte": fte[hit] if hit is not None else None,
                             "trials": len(asha), "true_plain": true_plain, "true_asha": true_asha})
            label = f"{name}" + ("" if name == "random" else f", told {'rung' if tell else 'full-budget'} rewards")
            print(f"\n{label}  [{time.perf_counter() - t0:.0f} s]")
            print("  seed  plain best  (at trial)  ASHA FTE to reach  ASHA trials  FTE/budget  FTE/plain-FTE-to-best"
                  "  true q plain / ASHA")
            for r in rows:
                f = r["fte"]
                print(f"  {r['seed']:4d}  {r['best']:10.4f}  ({r['n_best']:8d})  "
                      + (f"{f:17.1f}  {r['trials']:11d}  {f / budget:10.3f}  {f / r['n_best']:21.3f}" if f is not None
                         else f"{'>' + str(budget):>17s}  {r['trials']:11d}  {'>1':>10s}  {'-':>21s}")
                      + f"  {r['true_plain']:.3f} / {r['true_asha']:.3f}")
            # A seed that did not reach the plain best within the budget counts as infinite (so a
            # median shown as ">1" means at least half the seeds did not reach it).
            ratio_b = [r["fte"] / budget if r["fte"] is not None else float("inf") for r in rows]
            ratio_n = [r["fte"] / r["n_best"] if r["fte"] is not None else float("inf") for r in rows]
            n_reached = sum(r["fte"] is not None for r in rows)
            print(f"  reached in {n_reached}/{seeds} seeds; FTE/budget median [range] {_spread(ratio_b)}; "
                  f"FTE/plain-FTE-to-best {_spread(ratio_n)}")


def front_table(*, seed: int, budget: int) -> None:
    from torchspine.search.objective import pareto_front

    reward = FidelitySurrogate()
    objective = Objective(cost="macs", target=25e9, w=-0.07)
    schedule = FidelitySchedule(min_steps=100, max_steps=reward.max_steps, reduction_factor=3.0)
    no_cost = Objective(record_costs=True)
    for name, fidelity, obj in (("evolution", schedule, objective), ("evolution", schedule, no_cost),
                                ("random", None, objective)):
        t0 = time.perf_counter()
        order = _search(name, seed, reward, trials=budget, fidelity=fidelity, objective=obj)
        ok = [r for r in order if r.ok]
        # q is a sum of fifteenths: round off float noise so equal values compare equal.
        front = pareto_front([(r.metrics["macs"], round(r.metrics["true_reward"], 9), r) for r in ok])
        macs = sorted(r.metrics["macs"] for r in ok)
        late = [r.metrics["macs"] / 1e9 for r in ok if r.trial_id >= 2 * budget // 3]
        what = "q * (MACs / 25e9) ** -0.07" if obj.cost else "q (no cost term)"
        print(f"\n## D: {name}{' + ASHA' if fidelity else ''}, reward {what}, seed {seed}, "
              f"{budget} trials ({len(ok)} full budget, MACs {macs[0] / 1e9:.2f}B-{macs[-1] / 1e9:.2f}B; "
              f"median of the last third's full-budget trials {statistics.median(late):.2f}B)  "
              f"[{time.perf_counter() - t0:.0f} s]")
        print("  Pareto front of the full-budget trials (noise-free q against backbone MACs at 640 px):")
        print(f"  {'MACs':>8s} {'q':>7s} {'reward':>7s} {'trial':>5s}")
        for m, q, r in front:
            print(f"  {m / 1e9:7.2f}B {q:7.4f} {r.reward:7.4f} {r.trial_id:5d}")
        best = max(ok, key=lambda r: r.reward)
        print(f"  highest reward: trial {best.trial_id}, {best.metrics['macs'] / 1e9:.2f}B MACs, "
              f"q {best.metrics['true_reward']:.4f}; SpineNet-49 (q = 1.0) has 28.26B")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget-a", type=int, default=1500)
    ap.add_argument("--budget-b", type=int, default=4000)
    ap.add_argument("--rl-lr", type=float, default=3e-3)
    ap.add_argument("--rl-entropy", type=float, default=1e-3, help="entropy bonus weight of the controller")
    ap.add_argument("--budget-c", type=int, default=100, help="full trials of the plain search in setting C")
    ap.add_argument("--budget-d", type=int, default=300, help="trials of setting D")
    ap.add_argument("--strategies", default="random,evolution,rl", help="setting C's strategies")
    ap.add_argument("--tell", choices=("rung", "full", "both"), default="rung",
                    help="setting C: what strategies are told of early-stopped trials")
    ap.add_argument("--window", type=int, default=None, help="setting C: ASHA rung window (default: all)")
    ap.add_argument("--first-seed", type=int, default=0, help="setting C: seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--rule", choices=("quantile", "quota"), default="quantile", help="setting C: ASHA's rule")
    ap.add_argument("--only", choices=("A", "B", "C", "D"), default=None, help="run one setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.ERROR)
    STRATEGY_OPTIONS["rl"].update(learning_rate=args.rl_lr, entropy_weight=args.rl_entropy)
    if args.only == "C":
        tells = {"rung": (True,), "full": (False,), "both": (True, False)}[args.tell]
        asha_table(args.strategies.split(","), seeds=args.seeds, budget=args.budget_c, tells=tells, window=args.window,
                   rule=args.rule, first_seed=args.first_seed)
        return
    if args.only == "D":
        front_table(seed=0, budget=args.budget_d)
        return

    space_a = search_space("spinenet49")
    if args.only != "B":
        table("A: SpineNet-49 space, target = official SpineNet-49", space_a, SurrogateReward(),
              seeds=args.seeds, budget=args.budget_a, thresholds=(0.7, 0.8, 0.9))
    if args.only == "A":
        return

    space_b = SearchSpace(intermediate_levels=(2, 4), output_levels=(3, 4, 5), stem=StemSpec(block_levels=(2, 2)),
                          intermediate_window=None, name="small")
    target = space_b.decode(space_b.sample(random.Random(2024)))
    table("B: small space, target = a fixed random architecture", space_b,
          SurrogateReward(target=target.to_genome()), seeds=args.seeds, budget=args.budget_b, thresholds=(1.0,))


if __name__ == "__main__":
    main()
