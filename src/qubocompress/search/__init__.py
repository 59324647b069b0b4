"""Policy searches that score plans with an ``evaluate(plan)`` callable: GA, RL and the uniform baseline.

Unlike :mod:`qubocompress.solvers`, these are not dimod samplers: they never see a BQM. They search
the same option grid as the ``budget`` QUBO under the same hard budget, as the original GA (EMOMC,
APQ) and RL (HAQ, AMC) methods do, by measuring each candidate plan. No torch at import time and no
model code: the pipeline hands down ``evaluate``.
"""

from qubocompress.search.common import DecisionSpace, Evaluation, PlanScorer, SearchResult, grid_prune_options
from qubocompress.search.ga_acc import ga_acc_search
from qubocompress.search.rl_acc import rl_acc_search
from qubocompress.search.uniform import uniform_search

SEARCHES = {"ga-acc": ga_acc_search, "rl-acc": rl_acc_search, "uniform": uniform_search}

__all__ = [
    "SEARCHES",
    "DecisionSpace",
    "Evaluation",
    "PlanScorer",
    "SearchResult",
    "ga_acc_search",
    "grid_prune_options",
    "rl_acc_search",
    "uniform_search",
]
