"""``torchspine search``: the architecture search of paper sections 3.1 and 5.1 on Ray.

    torchspine search --strategy rl|random|evolution --trials N --parallel P [--data ANN --images DIR] [--out DIR]

Writes ``journal.jsonl`` (every trial), ``strategy.pt`` (resumable state), ``best.json`` (the
best spec at full scale: ``create_model("spinenet", spec="best.json")``), ``best_specs.json``
(top rewards) and ``rewards.png`` into ``--out``. Rerunning the same command in the same
``--out`` resumes the search.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from torchspine.search.space import SPACE_PRESETS
from torchspine.search.strategy import STRATEGIES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=STRATEGIES, default="rl", help="search strategy (default: rl)")
    p.add_argument("--trials", type=int, default=20, help="number of trials, failed ones included (default: 20)")
    p.add_argument("--parallel", type=int, default=1, help="trials running at once (default: 1)")
    p.add_argument("--out", default="runs/search", help="output directory; reused to resume (default: runs/search)")
    p.add_argument("--space", choices=sorted(SPACE_PRESETS), default="spinenet49",
                   help="search space preset: Table 1 allocation + adjustments (default: spinenet49)")
    p.add_argument("--window", type=int, default=5,
                   help="intermediate blocks pick parents among the stem and the last WINDOW blocks (paper: 5; 0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", choices=("proxy", "surrogate"), default="proxy",
                   help="proxy: train and evaluate (paper 5.1); surrogate: similarity to SpineNet-49, "
                        "a cheap stand-in for trying the machinery (not a quality measure)")
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
    r.add_argument("--local", action="store_true", help="run trials in this process, one at a time, without Ray")
    p.add_argument("--top", type=int, default=5, help="best specs to print (default: 5)")


def _reward(args: argparse.Namespace):
    if args.reward == "surrogate":
        from torchspine.search.surrogate import SurrogateReward

        return SurrogateReward(), {"reward": "surrogate"}
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


def run(args: argparse.Namespace) -> int:
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
                          trial_timeout_s=args.trial_timeout, top_k=args.top).validate()
    print(f"search: {args.strategy} on space {space.name} (10^{space.describe()['log10_size']:.1f} architectures, "
          f"{space.num_decisions} decisions), reward {info['reward']}, {args.trials} trials, {args.parallel} in "
          f"parallel -> {args.out}")
    bar = tqdm(total=args.trials, desc="trials", dynamic_ncols=True)
    best = [float("-inf")]

    def on_trial(rec) -> None:
        if rec.ok:
            best[0] = max(best[0], rec.reward)
        bar.update(1)
        bar.set_postfix(last=f"{rec.reward:.4f}" if rec.ok else "failed",
                        best=f"{best[0]:.4f}" if best[0] > float("-inf") else "-")

    from torchspine.search.journal import Journal

    already = len(Journal(f"{args.out}/journal.jsonl").finished())
    bar.update(min(already, args.trials))
    try:
        result = run_search(strategy, reward_fn, config, search_config=info, callback=on_trial)
    finally:
        bar.close()
    print(f"\n{len(result.records)} trials, {result.num_failed} failed. Best:")
    print(f"  {'trial':>5s} {'reward':>8s}  genome")
    for rec in result.best[: args.top]:
        print(f"  {rec.trial_id:5d} {rec.reward:8.4f}  {rec.genome}")
    if result.best:
        print(f"\nbest spec: {args.out}/best.json   (create_model('spinenet', spec='{args.out}/best.json'))")
    print(f"journal: {args.out}/journal.jsonl   plot: {args.out}/rewards.png")
    if not result.best:
        print("no trial succeeded; see the errors in the journal")
        return 1
    return 0
