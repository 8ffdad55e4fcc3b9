"""Architecture search (paper sections 3.1 and 5.1): space, strategies, proxy task, Ray runner, journal."""

from torchspine.search.space import SPACE_PRESETS, TABLE1_ALLOCATIONS, Allocation, SearchSpace, Step, search_space

__all__ = ["SPACE_PRESETS", "TABLE1_ALLOCATIONS", "Allocation", "SearchSpace", "Step", "search_space"]
