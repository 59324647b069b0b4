"""``ga-acc``: a genetic algorithm that scores candidate plans by measuring the compressed model.

The GA baseline as the original methods run it (EMOMC-style evolutionary search over per-layer
prune ratio and bits; APQ's evolution finder), not on the QUBO's surrogate energy: every candidate
is pruned, quantized and evaluated by the ``evaluate(plan)`` the pipeline hands down.

Genome: the integer genes of :class:`~qubocompress.search.common.DecisionSpace` (a prune option per
channel group, a bit option per layer; genes with one option are left out). Operators: uniformly
random initial genomes, binary tournament selection, simulated binary crossover and polynomial
mutation on the option indices, rounded to integers (pymoo's integer recipe, η = 3), elimination of
duplicates, elitist survival of the ``population`` best. The action wall repairs every genome
before it is evaluated — pymoo's ``Repair`` step, so the population holds the repaired genomes —
hence every evaluated plan is within the budget, and the search never spends an evaluation on an
infeasible one. Identical plans are evaluated once (:class:`~qubocompress.search.common.PlanScorer`).
A generation's plans are scored together: with ``evaluate_many`` (e.g. Ray actors, each holding
the model and the validation split) in parallel, with the same plans, scores and result as one
``evaluate`` after the other for the same seed and no time limit. A time limit is then checked
once per generation, before its plans go out (never before the first generation's): a generation
under way is scored whole, so the search may overrun ``time_limit`` by one generation, where the
serial search stops before the next evaluation.

Single objective: maximise ``evaluate(plan)`` under the hard budget. EMOMC runs NSGA-II on (accuracy,
cost) to trace a Pareto front; at one fixed budget, every evaluation NSGA-II spends on the front
below the budget is lost to the comparison, which asks for the best plan *at* the budget (the
damage falls with the cost, so the best plan sits at the budget's edge). So the fair match for
"equal budget" is the single-objective GA with the budget as a hard constraint: the same operators
and the same evaluations, all spent where the answer lies.

Stops after ``generations`` generations or ``max_evaluations`` evaluations (``"evaluations"``),
after ``patience`` generations without a better score, or when no new offspring can be bred
(``"convergence"``), or when ``time_limit`` seconds have passed (``"time_limit"``). Defaults: a
population of 24, at most 300 evaluations: a few hundred evaluations on the built-in 8-layer VGG
(15 genes). The generations follow the evaluation cap (:func:`generations_for`: 15 for 300), so a
larger cap buys a longer search, not only a higher ceiling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from qubocompress.problem.choices import Metric
from qubocompress.problem.spec import CompressionSpec
from qubocompress.search.common import (
    DecisionSpace,
    Evaluate,
    EvaluateMany,
    PlanScorer,
    SearchResult,
    SearchStopped,
    StopReason,
    check_search_seed,
)
from qubocompress.solvers.base import positive_int, require, time_limit_seconds

METHOD = "ga-acc"
DEFAULT_POPULATION = 24
DEFAULT_GENERATIONS = 15
DEFAULT_MAX_EVALUATIONS = 300
# Offspring bred per evaluation allowed: some children were scored in an earlier generation and
# cost no evaluation, so the generations leave room for 20 % more children than evaluations.
OFFSPRING_PER_EVALUATION = 1.2
# Distribution index of the simulated binary crossover and the polynomial mutation (low = wide steps).
ETA = 3.0


def generations_for(population: int, max_evaluations: int | None) -> int:
    """Generations that breed ``OFFSPRING_PER_EVALUATION`` children per evaluation of the cap, and
    never fewer than ``DEFAULT_GENERATIONS`` (the count for no cap too)."""
    if max_evaluations is None:
        return DEFAULT_GENERATIONS
    return max(DEFAULT_GENERATIONS, math.ceil(OFFSPRING_PER_EVALUATION * max_evaluations / population))


def ga_acc_search(
    spec: CompressionSpec,
    evaluate: Evaluate,
    ratio: float,
    metric: Metric = "bits",
    bit_options: Sequence[int] | None = None,
    population: int = DEFAULT_POPULATION,
    generations: int | None = None,
    max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS,
    patience: int | None = None,
    time_limit: float | None = None,
    seed: int = 0,
    evaluate_many: EvaluateMany | None = None,
) -> SearchResult:
    """The best plan within ``ratio`` that a GA finds by calling ``evaluate`` (module docstring).

    Args:
        spec: the problem.
        evaluate: plan -> score, higher is better (e.g. validation top-1 before fine-tuning).
        ratio: the budget as a compression ratio vs fp32 in ``metric`` (> 1).
        metric: ``"bits"`` or ``"bops"``.
        bit_options: bit-widths on offer (default (2, 3, 4, 5, 6, 8) within the spec's range).
        population: genomes per generation.
        generations: at most this many generations, the initial one included (None:
            :func:`generations_for` the population and ``max_evaluations``).
        max_evaluations: at most this many calls of ``evaluate`` (None: no cap).
        patience: stop after this many generations without a better score (None: never).
        time_limit: seconds for the whole search (None: none); no evaluation starts after it
            (with ``evaluate_many``: no generation's batch; module docstring).
        seed: seeds pymoo (0..2^31 - 1); the same call twice gives the same result (with a
            deterministic ``evaluate`` and no time limit).
        evaluate_many: plans -> (score, seconds) of each, each generation's new plans evaluated
            together (:meth:`~qubocompress.search.common.PlanScorer.score_many`; None: one
            ``evaluate`` after the other). It must score a plan as ``evaluate`` does.
    """
    start = time.perf_counter()
    who = f"search {METHOD!r}"
    population = positive_int(population, "population", who)  # numpy integers as ints: JSON-ready parameters
    max_evaluations = None if max_evaluations is None else positive_int(max_evaluations, "max_evaluations", who)
    patience = None if patience is None else positive_int(patience, "patience", who)
    if generations is None:
        generations = generations_for(population, max_evaluations)
    generations = positive_int(generations, "generations", who)
    time_limit = time_limit_seconds(time_limit, who)
    seed = check_search_seed(seed, who)
    space = DecisionSpace(spec, ratio, metric, bit_options)
    scorer = PlanScorer(space, evaluate, max_evaluations, time_limit, start, evaluate_many)
    parameters = {
        "ratio": float(ratio),
        "metric": metric,
        "bit_options": list(space.bit_options),
        "population": population,
        "generations": generations,
        "max_evaluations": max_evaluations,
        "patience": patience,
        "time_limit": time_limit,
        "seed": seed,
    }
    free = space.free
    if free.size == 0:  # one plan on offer: nothing to search
        scorer.score(np.zeros(space.num_genes, dtype=np.int64))
        return scorer.result(METHOD, "convergence", parameters, {"generations": 0})
    require("pymoo", METHOD, "ga", "pymoo")
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair
    from pymoo.core.termination import NoTermination
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    def genome(row: np.ndarray) -> np.ndarray:
        full = np.zeros(space.num_genes, dtype=np.int64)
        full[free] = np.rint(row).astype(np.int64)
        return full

    class ActionWall(Repair):
        def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
            return np.array([space.repair(genome(row))[free] for row in X])

    class AccuracyProblem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=free.size, n_obj=1, xl=0, xu=space.counts[free] - 1, vtype=int)

        def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            out["F"] = -np.array(scorer.score_many([genome(row) for row in x]), dtype=np.float64)[:, None]

    algorithm = GA(
        pop_size=population,
        sampling=IntegerRandomSampling(),
        crossover=SBX(prob=1.0, eta=ETA, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, eta=ETA, vtype=float, repair=RoundingRepair()),
        repair=ActionWall(),
        eliminate_duplicates=True,
    )
    algorithm.setup(AccuracyProblem(), termination=NoTermination(), seed=seed, verbose=False)
    done, stale, best = 0, 0, -math.inf
    stopped_by: StopReason = "evaluations"
    try:
        while True:
            algorithm.next()
            if algorithm.termination.force_termination:  # no new offspring could be bred
                stopped_by = "convergence"
                break
            done += 1
            if scorer.best_score > best:
                best, stale = scorer.best_score, 0
            else:
                stale += 1
            if done >= generations:
                break
            if patience is not None and stale >= patience:
                stopped_by = "convergence"
                break
            if time_limit is not None and time.perf_counter() >= start + time_limit:
                stopped_by = "time_limit"
                break
    except SearchStopped as stop:
        stopped_by = stop.reason
    return scorer.result(METHOD, stopped_by, parameters, {"generations": done})
