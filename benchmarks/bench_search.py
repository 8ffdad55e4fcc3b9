"""How many samples each search strategy needs on a cheap surrogate reward with a known best.

Not a test. The reward (``torchspine.search.surrogate.SurrogateReward``) is the similarity of
a proposed spec to a target spec, so the best architecture is known (reward 1.0):

* setting A: the ``spinenet49`` space of paper 3.1-3.4 (about 10^39 architectures), target the
  official SpineNet-49 blocks; we count samples until the best reward so far reaches
  0.7 / 0.8 / 0.9 (an exact hit is out of reach for every strategy at this budget);
* setting B: a small space (2 intermediate + 3 output blocks, 32,400 architectures), target
  a fixed random architecture; we count samples until the exact best (reward 1.0) is found.

Every strategy runs with several seeds through the same ask/tell interface; the table gives
the median samples needed (``>B`` when not reached within the budget B) and the ratio
random / strategy (higher is better for the strategy).

    python benchmarks/bench_search.py [--seeds 5] [--budget-a 1500] [--budget-b 4000] [--rl-entropy 1e-3] [--only A|B]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from torchspine.search.space import SearchSpace, search_space
from torchspine.search.strategy import create_strategy
from torchspine.search.surrogate import SurrogateReward
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget-a", type=int, default=1500)
    ap.add_argument("--budget-b", type=int, default=4000)
    ap.add_argument("--rl-lr", type=float, default=3e-3)
    ap.add_argument("--rl-entropy", type=float, default=1e-3, help="entropy bonus weight of the controller")
    ap.add_argument("--only", choices=("A", "B"), default=None, help="run one setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    STRATEGY_OPTIONS["rl"].update(learning_rate=args.rl_lr, entropy_weight=args.rl_entropy)

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
