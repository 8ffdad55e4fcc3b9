"""Architecture search (paper sections 3.1 and 5.1): space, strategies, proxy task, Ray runner, journal.

    from torchspine.search import search_space, create_strategy, ProxyTask, RunnerConfig, run_search

    space = search_space("spinenet49")                  # R0-SP53 allocation + level and type adjustments
    strategy = create_strategy("rl", space, seed=0)     # or "random", "evolution"
    result = run_search(strategy, ProxyTask.quick(), RunnerConfig(out_dir="runs/search", trials=20, parallel=2))

    # early stopping over training steps, a MACs budget in the reward, then the report
    config = RunnerConfig(out_dir="runs/asha", trials=200, parallel=2,
                          fidelity=FidelitySchedule(min_steps=6, max_steps=150, reduction_factor=3),
                          objective=Objective(cost="macs", target=25e9, w=-0.07, max_macs=35e9))
    print(format_report(summarize("runs/asha")))
"""

from torchspine.search.fidelity import AshaStopper, FidelitySchedule
from torchspine.search.journal import Journal, TrialRecord
from torchspine.search.objective import COST_METRICS, Objective, measure_costs, pareto_front
from torchspine.search.proxy import ProxyTask, split_annotations
from torchspine.search.runner import RunnerConfig, SearchResult, evaluate_trial, init_ray, plot_rewards, run_search
from torchspine.search.space import SPACE_PRESETS, TABLE1_ALLOCATIONS, Allocation, SearchSpace, Step, search_space
from torchspine.search.strategy import (
    STRATEGIES,
    Proposal,
    Strategy,
    create_strategy,
    load_strategy,
    save_strategy,
)
from torchspine.search.report import SearchSummary, format_report, plot_curve, plot_front, summarize
from torchspine.search.surrogate import FidelitySurrogate, SurrogateReward

__all__ = [
    "COST_METRICS",
    "AshaStopper",
    "FidelitySchedule",
    "FidelitySurrogate",
    "Objective",
    "SearchSummary",
    "format_report",
    "measure_costs",
    "pareto_front",
    "plot_curve",
    "plot_front",
    "summarize",
    "SPACE_PRESETS",
    "STRATEGIES",
    "TABLE1_ALLOCATIONS",
    "Allocation",
    "Journal",
    "Proposal",
    "ProxyTask",
    "RunnerConfig",
    "SearchResult",
    "SearchSpace",
    "Step",
    "Strategy",
    "SurrogateReward",
    "TrialRecord",
    "create_strategy",
    "evaluate_trial",
    "init_ray",
    "load_strategy",
    "plot_rewards",
    "run_search",
    "save_strategy",
    "search_space",
    "split_annotations",
]
