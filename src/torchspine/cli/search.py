"""``torchspine search``: the architecture search of paper sections 3.1 and 5.1 on Ray.

    torchspine search --strategy rl|random|evolution --trials N --parallel P [--data ANN --images DIR] [--out DIR]
                      [--asha --grace-steps S --reduction-factor 3 --asha-rule auto] [--cost macs --target T --w -0.07]
                      [--max-macs M] [--top K]
    torchspine search report DIR

Writes ``journal.jsonl`` (every trial), ``strategy.pt`` (resumable state), ``best.json`` (the
best spec at full scale: ``create_model("spinenet", spec="best.json")``), ``best_specs.json``
(top rewards), ``top/rankNN_trialM.json`` (the ``--top`` best specs, for ``torchspine train
--spec``) and ``rewards.png`` into ``--out``. Rerunning the same command in the same ``--out``
resumes the search. ``report DIR`` prints the leaderboard, the Pareto front, the reward curve
and the trials stopped per rung, and draws ``pareto.png`` and ``curve.png`` there.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from torchspine.search.space import SPACE_PRESETS
from torchspine.search.strategy import STRATEGIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("run", "report"), default="run",
                   help="run (default) a search, or report on the search in DIR")
    p.add_argument("dir", nargs="?", default=None, help="with report: a search --out directory")
    p.add_argument("--strategy", choices=STRATEGIES, default="rl", help="search strategy (default: rl)")
    p.add_argument("--trials", type=int, default=20, help="number of trials, failed ones included (default: 20)")
    p.add_argument("--parallel", type=int, default=1, help="trials running at once (default: 1)")
    p.add_argument("--out", default="runs/search", help="output directory; reused to resume (default: runs/search)")
    p.add_argument("--space", choices=sorted(SPACE_PRESETS), default="spinenet49",
                   help="search space preset: Table 1 allocation + adjustments (default: spinenet49)")
    p.add_argument("--window", type=int, default=5,
                   help="intermediate blocks pick parents among the stem and the last WINDOW blocks (paper: 5; 0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", choices=("proxy", "surrogate", "surrogate-noisy"), default="proxy",
                   help="proxy: train and evaluate (paper 5.1); surrogate: similarity to SpineNet-49, "
                        "a cheap stand-in for trying the machinery (not a quality measure); surrogate-noisy: "
                        "the same seen through a short training run (bias and noise shrink with the steps)")
    a = p.add_argument_group("early stopping (ASHA over training steps)")
    a.add_argument("--asha", action="store_true", help="stop poor trials at rungs of --grace-steps x factor^k steps")
    a.add_argument("--grace-steps", type=int, default=None,
                   help="steps before the first stop decision (default: the full steps / factor^3)")
    a.add_argument("--reduction-factor", type=float, default=3.0, help="about 1/factor of the trials pass each rung")
    a.add_argument("--rung-window", type=int, default=None,
                   help="compare a trial with the last N rewards of its rung only (default: all, ASHA's rule)")
    a.add_argument("--asha-rule", choices=("auto", "quantile", "quota"), default="auto",
                   help="quantile: go on when at least the 1-1/factor quantile of the rung's rewards (Ray Tune's "
                        "rule); quota: also at most 1/factor of the trials reaching a rung go on (ASHA's promotion "
                        "budget), which keeps the saving when the strategy improves; auto (default): quota for "
                        "evolution and rl, quantile for random")
    a.add_argument("--tell", choices=("rung", "full"), default="rung",
                   help="strategies hear an early-stopped trial's last rung reward (rung, default) or only "
                        "full-budget rewards (full)")
    o = p.add_argument_group("compute budget (MnasNet reward: quality * (cost / target) ** w; hard limits)")
    o.add_argument("--cost", choices=("macs", "params", "latency"), default=None,
                   help="cost in the reward: backbone multiply-adds or parameters at full scale, or its measured "
                        "latency on the trial's device")
    o.add_argument("--target", type=float, default=None, help="the cost where the factor is 1 (e.g. 3e10 MACs)")
    o.add_argument("--w", type=float, default=-0.07, help="exponent (MnasNet soft constraint: -0.07)")
    o.add_argument("--max-macs", type=float, default=None, help="reject (untrained) architectures above this")
    o.add_argument("--max-params", type=float, default=None, help="reject architectures above this")
    o.add_argument("--max-latency-ms", type=float, default=None, help="reject architectures slower than this")
    o.add_argument("--cost-size", type=int, default=640, help="input size for MACs and latency (default: 640)")
    g = p.add_argument_group("proxy task (paper 5.1 defaults; --quick for a CPU-sized trial)")
    g.add_argument("--quick", action="store_true",
                   help="CPU settings: 128 px, 150 steps, 1/8 held out, 32 images evaluated (about 2 min a trial)")
    g.add_argument("--data", default=None, help="COCO annotation JSON to search on (default: the built-in dataset)")
    g.add_argument("--images", default=None, help="image directory of --data")
    g.add_argument("--image-size", type=int, default=None, help="paper: 512")
    g.add_argument("--epochs", type=float, default=None, help="paper: 5")
    g.add_argument("--steps", type=int, default=None, help="training steps per trial (overrides --epochs)")
    g.add_argument("--filter-size-scale", type=float, default=None, help="paper: 0.25")
    g.add_argument("--alpha", type=float, default=None, help="resample alpha, paper: 0.25")
    g.add_argument("--head-filters", type=int, default=None, help="box/class net width, paper: 64")
    g.add_argument("--val-fraction", type=float, default=None, help="held-out share of --data (paper: 7392/118287)")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--eval-max-images", type=int, default=None)
    r = p.add_argument_group("Ray")
    r.add_argument("--address", default=None, help="a running Ray cluster ('auto' or host:port); default: local Ray")
    r.add_argument("--cpus-per-trial", type=float, default=1.0)
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.25")
    r.add_argument("--trial-timeout", type=float, default=None, help="seconds; a longer trial is recorded as failed")
    r.add_argument("--retries", type=int, default=2,
                   help="run a crashed / out-of-memory trial or one whose worker was lost again this many times "
                        "before recording it as failed (default: 2)")
    r.add_argument("--local", action="store_true", help="run trials in this process, one at a time, without Ray")
    p.add_argument("--top", type=int, default=5, help="best specs to print and write to --out/top/ (default: 5)")


def _reward(args: argparse.Namespace):
    if args.reward == "surrogate":
        from torchspine.search.surrogate import SurrogateReward

        return SurrogateReward(), {"reward": "surrogate"}
    if args.reward == "surrogate-noisy":
        from torchspine.search.surrogate import FidelitySurrogate

        fn = FidelitySurrogate(max_steps=args.steps or FidelitySurrogate.max_steps)
        return fn, {"reward": "surrogate-noisy", "proxy": asdict(fn)}
    from torchspine.search.proxy import ProxyTask

    kw = {}
    for arg, field in (("image_size", "image_size"), ("epochs", "epochs"), ("steps", "max_steps"),
                       ("filter_size_scale", "filter_size_scale"), ("alpha", "resample_alpha"),
                       ("head_filters", "head_num_filters"), ("val_fraction", "val_fraction"),
                       ("batch_size", "batch_size"), ("eval_max_images", "eval_max_images"),
                       ("data", "train_ann"), ("images", "train_images")):
        if getattr(args, arg) is not None:
            kw[field] = getattr(args, arg)
    if args.filter_size_scale is not None:  # endpoints follow the backbone scale (256 x scale)
        kw["endpoints_num_filters"] = max(1, int(256 * args.filter_size_scale))
    if (args.data is None) != (args.images is None):
        raise ValueError("--data and --images must be given together")
    kw["num_threads"] = max(1, int(args.cpus_per_trial))
    kw["work_dir"] = str(Path(args.out) / "proxy")
    task = (ProxyTask.quick(**kw) if args.quick else ProxyTask(**kw)).validate()
    return task, {"reward": "proxy", "proxy": asdict(task)}


def _fidelity(args: argparse.Namespace, reward_fn):
    if not args.asha:
        if args.grace_steps is not None:
            raise ValueError("--grace-steps needs --asha")
        if args.asha_rule != "auto":
            raise ValueError("--asha-rule needs --asha")
        return None
    from torchspine.search.fidelity import FidelitySchedule

    full = getattr(reward_fn, "max_steps", None)
    if full is None:
        raise ValueError("--asha needs the trial length in steps: give --steps (or --quick)")
    grace = args.grace_steps if args.grace_steps is not None else max(1, round(full / args.reduction_factor ** 3))
    rule = args.asha_rule if args.asha_rule != "auto" else ("quantile" if args.strategy == "random" else "quota")
    return FidelitySchedule(min_steps=grace, max_steps=int(full), reduction_factor=args.reduction_factor,
                            window=args.rung_window, rule=rule).validate()


def _objective(args: argparse.Namespace):
    from torchspine.search.objective import Objective

    if args.cost is None and args.target is not None:
        raise ValueError("--target needs --cost")
    # The proxy reward always records the costs (for the Pareto front): cheap beside a training run.
    limits = (args.max_macs, args.max_params, args.max_latency_ms)
    if args.cost is None and all(v is None for v in limits) and args.reward != "proxy":
        return None
    return Objective(cost={"latency": "latency_ms"}.get(args.cost, args.cost), target=args.target, w=args.w,
                     max_macs=args.max_macs, max_params=args.max_params, max_latency_ms=args.max_latency_ms,
                     image_size=args.cost_size, record_costs=True).validate()


def report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchspine.search.report import format_report, plot_curve, plot_front, summarize

    if not args.dir:
        raise ValueError("search report needs the search directory: torchspine search report DIR")
    s = summarize(args.dir, top=args.top)
    print(format_report(s))
    plot_front(s, Path(args.dir) / "pareto.png")
    plot_curve(s, Path(args.dir) / "curve.png")
    print(f"\nplots: {args.dir}/pareto.png, {args.dir}/curve.png")
    if s.leaderboard:
        print(f"next step: torchspine train --spec {args.dir}/top/rank01_trial{s.leaderboard[0].trial_id}.json ...")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "report":
        return report(args)
    if args.dir is not None:
        raise ValueError(f"unexpected argument {args.dir!r} (only 'search report DIR' takes a directory)")
    import torch
    from tqdm.auto import tqdm

    from torchspine.search.runner import RunnerConfig, run_search
    from torchspine.search.space import search_space
    from torchspine.search.strategy import create_strategy

    torch.set_num_threads(1)  # the driver only runs the controller; trials get their own CPUs
    space = search_space(args.space, intermediate_window=args.window or None)
    strategy = create_strategy(args.strategy, space, seed=args.seed)
    reward_fn, info = _reward(args)
    config = RunnerConfig(out_dir=args.out, trials=args.trials, parallel=args.parallel,
                          executor="local" if args.local else "ray", address=args.address,
                          cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                          trial_timeout_s=args.trial_timeout, top_k=args.top, max_retries=args.retries,
                          fidelity=_fidelity(args, reward_fn), tell_stopped=args.tell == "rung",
                          objective=_objective(args)).validate()
    extra = ""
    if config.fidelity is not None:
        extra += f", ASHA rungs {list(config.fidelity.rungs)} steps"
    if config.objective is not None and config.objective.cost is not None:
        extra += f", reward x ({config.objective.cost}/{config.objective.target:g})^{config.objective.w:g}"
    print(f"search: {args.strategy} on space {space.name} (10^{space.describe()['log10_size']:.1f} architectures, "
          f"{space.num_decisions} decisions), reward {info['reward']}{extra}, {args.trials} trials, "
          f"{args.parallel} in parallel -> {args.out}")
    bar = tqdm(total=args.trials, desc="trials", dynamic_ncols=True)
    best = [float("-inf")]

    def on_trial(rec) -> None:
        if rec.ok:
            best[0] = max(best[0], rec.reward)
        if rec.status != "rejected":
            bar.update(1)
        bar.set_postfix(last=f"{rec.reward:.4f}" if rec.ok else rec.status,
                        best=f"{best[0]:.4f}" if best[0] > float("-inf") else "-")

    from torchspine.search.journal import Journal

    already = sum(r.status != "rejected" for r in Journal(f"{args.out}/journal.jsonl").finished().values())
    bar.update(min(already, args.trials))
    try:
        result = run_search(strategy, reward_fn, config, search_config=info, callback=on_trial)
    finally:
        bar.close()
    print(f"\n{len(result.records)} trials, {result.num_failed} failed"
          + (f", {result.count('stopped')} stopped early" if config.fidelity is not None else "")
          + (f", {result.count('rejected')} rejected over budget" if result.count("rejected") else "") + ". Best:")
    print(f"  {'trial':>5s} {'reward':>8s}  genome")
    for rec in result.best[: args.top]:
        print(f"  {rec.trial_id:5d} {rec.reward:8.4f}  {rec.genome}")
    if result.best:
        print(f"\nbest spec: {args.out}/best.json   (create_model('spinenet', spec='{args.out}/best.json'))")
        print(f"top {min(args.top, len(result.best))} specs: {args.out}/top/   next: torchspine train --spec "
              f"{args.out}/top/rank01_trial{result.best[0].trial_id}.json ...")
    print(f"journal: {args.out}/journal.jsonl   plot: {args.out}/rewards.png   report: torchspine search report "
          f"{args.out}")
    if not result.best:
        print("no trial succeeded; see the errors in the journal")
        return 1
    return 0
