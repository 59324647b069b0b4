"""The light name lists the parser shows hold exactly the heavy registries' names, in their order."""

from __future__ import annotations

from typing import get_args

from qubocompress import bench_parser, names
from qubocompress.analysis.importance import IMPORTANCE_METHODS
from qubocompress.analysis.sensitivity import LAYER_SENSITIVITY_METHODS
from qubocompress.bench import instances, runner
from qubocompress.models.zoo import MODELS
from qubocompress.problem import FORMULATIONS
from qubocompress.problem.choices import Metric
from qubocompress.search import SEARCHES
from qubocompress.solvers.registry import SOLVER_NAMES


def test_the_names_are_the_registries_names() -> None:
    assert names.MODELS == tuple(MODELS)
    assert names.SOLVERS == SOLVER_NAMES
    assert names.CLOUD_SOLVERS == runner.CLOUD_SOLVERS
    assert names.OFFLINE_SOLVERS == runner.offline_solvers()
    assert names.FORMULATIONS == tuple(FORMULATIONS)
    assert names.IMPORTANCES == IMPORTANCE_METHODS
    assert names.LAYER_SENSITIVITIES == LAYER_SENSITIVITY_METHODS
    assert names.METRICS == get_args(Metric)
    assert names.SEARCH_METHODS == ("qubo", *SEARCHES)
    assert names.BENCH_MODELS == instances.BUILTIN_MODELS


def test_the_bench_help_shows_the_benchmarks_own_defaults() -> None:
    assert bench_parser.SIZE_SERIES == instances.SIZE_SERIES
    assert bench_parser.DEFAULT_TARGET_RATIO == instances.DEFAULT_TARGET_RATIO
    assert bench_parser.BUDGET_TARGET_RATIOS == instances.BUDGET_TARGET_RATIOS
    assert bench_parser.DEFAULT_EXACT_TIME_LIMIT == runner.DEFAULT_EXACT_TIME_LIMIT
