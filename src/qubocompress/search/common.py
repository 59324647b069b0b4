"""What the accuracy-in-the-loop searches share: the decision space, the action wall, the scorer.

Decision space. One gene per channel group — the index of its prune option: how many of its least
important channels (``group.prune_order()``) go — then one gene per layer — the index of its
bit-width in ``bit_options``. A group's options are its ``prune_options`` when the spec has them
(the same grid as the ``budget`` QUBO, so both search the same plans), else
``round(i/4 · max_pruned)``, i = 0..4, to a multiple of the group's ``blocks`` (at the default
``max_prune_fraction`` of 0.5 that is about 0, 12.5, 25, 37.5 and 50 % of the channels, the
analysis's ``DEFAULT_PRUNE_FRACTIONS``; the ``budget`` QUBO never prunes such a group). Bit options default to
(2, 3, 4, 5, 6, 8) within ``spec.min_bits..spec.b_max`` (:func:`~qubocompress.problem.budget.
check_bit_options`). Options are ordered (more pruning, more bits), so integer operators make sense.

Budget. The plan's true cost — weight bits or BOPs per sample, :func:`~qubocompress.problem.
choices.layer_cost` summed over layers, equal to :func:`~qubocompress.problem.choices.plan_cost`
— must not exceed ``floor(fp32 cost / ratio)``: the same budget as ``BudgetFormulation(spec,
ratio=ratio, metric=metric)``.

Action wall (HAQ's ``_final_action_wall``, AMC's ``_action_wall``): any genome is made feasible
before it is evaluated, deterministically. While the plan is over budget: (1) the layer with the
largest current cost that is not at its lowest bit option loses one bit option (ties: the earlier
layer) — the bits go where the cost is, as HAQ's wall acts on bits, and dropping a bit is the
cheapest saving for accuracy down to ~4 bits; (2) once every layer is at its lowest bit-width, the
group whose next prune option saves the most cost prunes one option more (ties: the earlier
group). Everything the genome asked for beyond that is kept. When even the smallest plan (every
group at its largest prune option, every layer at its lowest bit-width) is over budget, building
the space is a :class:`ProblemError` that names the most the space can compress (rounded down to
0.1, so that the ratio named is one the space can be built for).

Scorer. The pipeline hands down ``evaluate(plan) -> float`` (higher is better, e.g. validation
top-1 of the pruned and quantized model before fine-tuning); the searches never see a model.
:class:`PlanScorer` repairs, memoises on the repaired genome (one plan per genome, so identical
plans are evaluated and counted once), keeps the history and the best plan, and stops the search
when the evaluation budget or the clock runs out (checked before every new evaluation after the
first: a running evaluation is never cut short, so a run may overshoot ``time_limit`` by one).
:meth:`PlanScorer.score_many` scores many genomes at once (a GA's generation): with an
``evaluate_many`` (plans -> their scores and seconds, e.g. on Ray actors) their new plans are
evaluated together, and the cache, history, cache hits and stop are those of scoring the genomes
one after the other; the clock is then checked once, before the batch (never before the first: the
first batch always runs whole, and a batch under way is not cut short, so a batched search may
overshoot ``time_limit`` by one batch).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qubocompress.errors import ProblemError, SolverError
from qubocompress.limits import MAX_SEED
from qubocompress.problem.budget import check_bit_options
from qubocompress.problem.choices import Metric, fp32_cost, layer_cost
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec

Evaluate = Callable[[Plan], float]
# Plans -> (score, seconds of its evaluation) of each, in order: the plans evaluated together.
EvaluateMany = Callable[[Sequence[Plan]], Sequence[tuple[float, float]]]
StopReason = Literal["evaluations", "time_limit", "convergence"]
MANY_SIGNATURE = "plans -> (score, seconds) each"

# Prune options of a group without measured ones: i/PRUNE_GRID_STEPS of its max_pruned, i = 0..steps.
PRUNE_GRID_STEPS = 4


def grid_prune_options(max_pruned: int, steps: int = PRUNE_GRID_STEPS, blocks: int = 1) -> tuple[int, ...]:
    """``round(i/steps · max_pruned)`` (half up) to a multiple of ``blocks`` (a group's, which
    divides ``max_pruned``), i = 0..steps, deduplicated and ascending."""
    units = max_pruned // blocks
    return tuple(sorted({blocks * int(math.floor(i * units / steps + 0.5)) for i in range(steps + 1)}))


class DecisionSpace:
    """Genomes (option indices per group, then per layer), their plans and costs, and the action wall.

    Args:
        spec: the problem (importance ranks and sizes; no measured damage needed).
        ratio: the budget as a compression ratio vs fp32 (> 1): cost ≤ floor(fp32 cost / ratio).
        metric: ``"bits"`` (weight memory) or ``"bops"`` (bit operations per sample).
        bit_options: bit-widths on offer (default (2, 3, 4, 5, 6, 8) within the spec's range).
    """

    def __init__(
        self, spec: CompressionSpec, ratio: float, metric: Metric = "bits", bit_options: Sequence[int] | None = None
    ) -> None:
        if metric not in ("bits", "bops"):
            raise ProblemError(f"budget metric must be 'bits' or 'bops', got {metric!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not (math.isfinite(ratio) and ratio > 1):
            raise ProblemError(f"budget ratio must be a finite number > 1 (e.g. 16 for 16x smaller), got {ratio}")
        names = [group.name for group in spec.groups]
        if len(set(names)) != len(names):
            raise ProblemError(f"channel group names in the spec of {spec.model!r} must be unique")
        self.spec = spec
        self.metric: Metric = metric
        self.ratio = float(ratio)
        self.bit_options = check_bit_options(spec, bit_options)
        self.prune_options = [
            group.prune_options or grid_prune_options(group.max_pruned, blocks=group.blocks) for group in spec.groups
        ]
        self.num_groups = len(spec.groups)
        self.counts = np.array(
            [len(options) for options in self.prune_options] + [len(self.bit_options)] * len(spec.layers),
            dtype=np.int64,
        )
        self.fp32_cost = fp32_cost(spec, metric)
        self.budget = int(math.floor(self.fp32_cost / self.ratio))
        # the layers whose cost each group gene changes (its output and input layers)
        self.layers_of_group = [
            [n for n, layer in enumerate(spec.layers) if g in (layer.out_group, *layer.in_groups)]
            for g in range(self.num_groups)
        ]
        self._check_reachable()

    @property
    def num_genes(self) -> int:
        """Groups plus layers."""
        return int(self.counts.size)

    @property
    def free(self) -> np.ndarray:
        """Indices of the genes with more than one option (the others are always 0)."""
        return np.flatnonzero(self.counts > 1)

    def smallest(self) -> np.ndarray:
        """The cheapest genome: every group at its largest prune option, every layer at the fewest bits."""
        genome = np.zeros(self.num_genes, dtype=np.int64)
        genome[: self.num_groups] = self.counts[: self.num_groups] - 1
        return genome

    def _check_reachable(self) -> None:
        cost = self.cost(self.smallest())
        if cost <= self.budget:
            return
        spec = self.spec
        shares = {round(100 * options[-1] / group.size) for options, group in zip(self.prune_options, spec.groups)}
        if shares <= {0}:
            pruning = "no filters pruned (no group may be pruned)"
        elif len(shares) == 1:
            pruning = f"{shares.pop()}% of filters pruned"
        else:
            pruning = f"up to {max(shares)}% of each group's filters pruned"
        smaller = "smaller than fp32" if self.metric == "bits" else "fewer BOPs than fp32"
        reachable = math.floor(10 * self.fp32_cost / max(cost, 1)) / 10  # down: a ratio that can be asked for
        raise ProblemError(
            f"budget {self.ratio:g}x is not reachable: the smallest plan on offer is "
            f"{reachable:.1f}x {smaller} (all layers at {self.bit_options[0]} bits, {pruning})"
        )

    def check(self, genome: Sequence[int] | np.ndarray) -> np.ndarray:
        """``genome`` as an int64 vector; a wrong length or an option out of range is a :class:`ProblemError`."""
        x = np.asarray(genome)
        if x.shape != (self.num_genes,) or not np.issubdtype(x.dtype, np.integer):
            raise ProblemError(f"a genome is a vector of {self.num_genes} integers, got shape {x.shape} of {x.dtype}")
        if np.any(x < 0) or np.any(x >= self.counts):
            raise ProblemError(f"genome {x.tolist()} has an option outside 0..count-1 (counts {self.counts.tolist()})")
        return x.astype(np.int64)

    def _kept(self, x: np.ndarray, group: int | None, total: int) -> int:
        return total if group is None else total - self.prune_options[group][x[group]]

    def _layer_cost(self, x: np.ndarray, n: int) -> int:
        layer = self.spec.layers[n]
        kept_out = self._kept(x, layer.out_group, layer.out_channels)
        kept_in = layer.in_channels - sum(self.prune_options[g][x[g]] for g in layer.in_groups)
        bits = self.bit_options[x[self.num_groups + n]]
        return layer_cost(self.spec, n, kept_out, kept_in, bits, self.metric)

    def layer_costs(self, genome: Sequence[int] | np.ndarray) -> np.ndarray:
        """Cost of each layer (weight bits or BOPs) under ``genome``."""
        x = self.check(genome)
        return np.array([self._layer_cost(x, n) for n in range(len(self.spec.layers))], dtype=np.int64)

    def cost(self, genome: Sequence[int] | np.ndarray) -> int:
        """True cost of the genome's plan: equal to ``plan_cost(spec, decode(genome), metric)``."""
        return int(self.layer_costs(genome).sum())

    def feasible(self, genome: Sequence[int] | np.ndarray) -> bool:
        """True when the genome's plan is within the budget."""
        return self.cost(genome) <= self.budget

    def decode(self, genome: Sequence[int] | np.ndarray) -> Plan:
        """The plan of a genome: each group prunes its least important channels, each layer its bits."""
        x = self.check(genome)
        spec = self.spec
        pruned = {
            group.name: tuple(int(i) for i in group.prune_order()[: self.prune_options[g][x[g]]])
            for g, group in enumerate(spec.groups)
        }
        bits = {layer.name: self.bit_options[x[self.num_groups + n]] for n, layer in enumerate(spec.layers)}
        return Plan(pruned=pruned, bits=bits)

    def repair(self, genome: Sequence[int] | np.ndarray) -> np.ndarray:
        """The action wall (module docstring): ``genome`` made to fit the budget; unchanged if it fits."""
        x = self.check(genome).copy()
        costs = self.layer_costs(x)
        g_count = self.num_groups
        while costs.sum() > self.budget:
            lowerable = np.flatnonzero(x[g_count:] > 0)
            if lowerable.size:
                n = int(lowerable[np.argmax(costs[lowerable])])  # argmax: the first of ties
                x[g_count + n] -= 1
                costs[n] = self._layer_cost(x, n)
                continue
            best_group, best_saving = -1, -1
            for g in np.flatnonzero(x[:g_count] < self.counts[:g_count] - 1):
                touched = self.layers_of_group[g]
                trial = x.copy()
                trial[g] += 1
                saving = int(costs[touched].sum()) - sum(self._layer_cost(trial, n) for n in touched)
                if saving > best_saving:
                    best_group, best_saving = int(g), saving
            x[best_group] += 1
            for n in self.layers_of_group[best_group]:
                costs[n] = self._layer_cost(x, n)
        return x

    def random_genome(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly random genome (not repaired)."""
        return rng.integers(self.counts)


@dataclass(frozen=True)
class Evaluation:
    """One evaluated plan.

    Attributes:
        plan: the (feasible) plan.
        score: what ``evaluate(plan)`` returned.
        cost: its true cost (weight bits or BOPs).
        seconds: wall time of the ``evaluate`` call.
    """

    plan: Plan
    score: float
    cost: int
    seconds: float


@dataclass(frozen=True)
class SearchResult:
    """The outcome of an accuracy-in-the-loop search.

    Attributes:
        method: ``"ga-acc"`` or ``"rl-acc"``.
        plan: the best-scoring plan evaluated (always within the budget).
        score: its score.
        ratio: its compression vs fp32 in the search's metric (fp32 cost / plan cost).
        evaluations: calls of ``evaluate`` (distinct plans).
        seconds: wall time of the whole search, evaluations included.
        evaluate_seconds: the seconds of the evaluations, summed over the plans: the part of
            ``seconds`` spent inside ``evaluate``, or more than it when they ran in parallel.
        stopped_by: ``"evaluations"`` (the evaluation / generation / episode budget),
            ``"time_limit"`` or ``"convergence"``.
        history: the score of each evaluation, in order.
        cache: repaired genome -> its :class:`Evaluation`, in evaluation order.
        parameters: the search's settings, seed included.
        details: method-specific counts (generations or episodes; ``cache_hits``: plans proposed
            again, answered from the cache without an evaluation).
    """

    method: str
    plan: Plan
    score: float
    ratio: float
    evaluations: int
    seconds: float
    evaluate_seconds: float
    stopped_by: StopReason
    history: tuple[float, ...]
    cache: Mapping[tuple[int, ...], Evaluation]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def best_so_far(self) -> np.ndarray:
        """The best score after each evaluation (a non-decreasing curve)."""
        return np.maximum.accumulate(np.asarray(self.history, dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: everything but the cache's plans (history kept)."""
        return {
            "method": self.method,
            "plan": self.plan.to_dict(),
            "score": self.score,
            "ratio": self.ratio,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "evaluate_seconds": self.evaluate_seconds,
            "stopped_by": self.stopped_by,
            "history": list(self.history),
            "parameters": dict(self.parameters),
            "details": dict(self.details),
        }


class SearchStopped(Exception):
    """Raised inside a search when its evaluation budget or clock runs out (never escapes it)."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason)
        self.reason: StopReason = reason


def check_evaluate(evaluate: Any, name: str = "evaluate", signature: str = "plan -> score") -> Any:
    """``evaluate`` if callable, else a :class:`SolverError` naming it (``name``, ``signature``)."""
    if not callable(evaluate):
        raise SolverError(f"{name} must be a callable {signature}, got {type(evaluate).__name__}")
    return evaluate


def check_search_seed(seed: Any, who: str) -> int:
    """``seed`` as an int in 0..MAX_SEED-1 (numpy integers too), else a one-line :class:`SolverError`."""
    if isinstance(seed, np.integer):
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise SolverError(f"{who}: seed must be a whole number from 0 to {MAX_SEED - 1:,}, got {seed!r}")
    return seed


def _score_and_seconds(outcome: Any) -> tuple[Any, float]:
    """One ``evaluate_many`` outcome as (score, seconds); not a pair, or bad seconds, is a
    :class:`SolverError` (the score is checked where it is recorded)."""
    try:
        value, seconds = outcome
    except (TypeError, ValueError):
        raise SolverError(f"evaluate_many must return a (score, seconds) pair per plan, got {outcome!r}") from None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, numbers.Real)
        or not (math.isfinite(seconds) and seconds >= 0)
    ):
        raise SolverError(f"evaluate_many returned {seconds!r} seconds for a plan; it must be a number >= 0")
    return value, float(seconds)


class PlanScorer:
    """``evaluate`` behind the action wall, memoised, budgeted and timed (module docstring).

    Args:
        space: the decision space (repair, decode, cost).
        evaluate: plan -> score, higher is better.
        max_evaluations: stop before the evaluation after this many (None: no cap).
        time_limit: seconds from ``start``; no new evaluation starts after it (the first always runs).
        start: ``time.perf_counter()`` at the start of the search.
        evaluate_many: plans -> (score, seconds) of each, the plans evaluated together (by
            :meth:`score_many`; None: one ``evaluate`` call after the other).
    """

    def __init__(
        self,
        space: DecisionSpace,
        evaluate: Evaluate,
        max_evaluations: int | None,
        time_limit: float | None,
        start: float,
        evaluate_many: EvaluateMany | None = None,
    ) -> None:
        self.space = space
        self.evaluate: Evaluate = check_evaluate(evaluate)
        self.evaluate_many: EvaluateMany | None = (
            None if evaluate_many is None else check_evaluate(evaluate_many, "evaluate_many", MANY_SIGNATURE)
        )
        self.max_evaluations = max_evaluations
        self.deadline = None if time_limit is None else start + time_limit
        self.start = start
        self.cache: dict[tuple[int, ...], Evaluation] = {}
        self.history: list[float] = []
        self.hits = 0
        self.best_key: tuple[int, ...] | None = None

    @property
    def best_score(self) -> float:
        """The best score so far (-inf before the first evaluation)."""
        return -math.inf if self.best_key is None else self.cache[self.best_key].score

    def score(self, genome: Sequence[int] | np.ndarray) -> float:
        """The score of the repaired genome's plan: from the cache, else by calling ``evaluate``.

        Raises :class:`SearchStopped` instead of starting an evaluation beyond the budget or the clock.
        """
        key = self._key(genome)
        known = self.cache.get(key)
        if known is not None:
            self.hits += 1
            return known.score
        self._check_budget(len(self.cache))
        plan = self.space.decode(key)
        began = time.perf_counter()
        value = self.evaluate(plan)
        return self._record(key, plan, value, time.perf_counter() - began)

    def score_many(self, genomes: Sequence[Sequence[int] | np.ndarray]) -> list[float]:
        """The scores of ``genomes``, as :meth:`score` on each in order would give them (the same
        cache, history, hits and :class:`SearchStopped`), the new plans evaluated together by
        ``evaluate_many`` (module docstring); without it, :meth:`score` on each in order."""
        if self.evaluate_many is None:
            return [self.score(genome) for genome in genomes]
        keys = [self._key(genome) for genome in genomes]
        new: dict[tuple[int, ...], Plan] = {}
        stop: SearchStopped | None = None
        for key in keys:
            if key in self.cache or key in new:
                self.hits += 1
                continue
            try:
                self._check_budget(len(self.cache) + len(new), clock=not new)
            except SearchStopped as stopped:
                stop = stopped
                break
            new[key] = self.space.decode(key)
        if new:
            returned = self.evaluate_many(list(new.values()))
            if not isinstance(returned, Iterable):
                raise SolverError(f"evaluate_many must return a (score, seconds) pair per plan, got {returned!r}")
            outcomes = list(returned)
            if len(outcomes) != len(new):
                raise SolverError(f"evaluate_many returned {len(outcomes)} scores for {len(new)} plans")
            for (key, plan), outcome in zip(new.items(), outcomes):
                self._record(key, plan, *_score_and_seconds(outcome))
        if stop is not None:
            raise stop
        return [self.cache[key].score for key in keys]

    def _key(self, genome: Sequence[int] | np.ndarray) -> tuple[int, ...]:
        """The repaired genome as the cache's key."""
        return tuple(int(v) for v in self.space.repair(genome))

    def _check_budget(self, evaluated: int, clock: bool = True) -> None:
        """:class:`SearchStopped` instead of a new evaluation after ``evaluated`` ones: the cap, or
        (``clock``, and after the first evaluation) the clock."""
        if self.max_evaluations is not None and evaluated >= self.max_evaluations:
            raise SearchStopped("evaluations")
        if clock and evaluated and self.deadline is not None and time.perf_counter() >= self.deadline:
            raise SearchStopped("time_limit")

    def _record(self, key: tuple[int, ...], plan: Plan, value: Any, seconds: float) -> float:
        """Keep one evaluation (``value`` must be a finite number); returns its score."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise SolverError(f"evaluate returned {value!r}; it must return a finite number (higher = better)")
        score = float(value)
        self.cache[key] = Evaluation(plan, score, self.space.cost(key), float(seconds))
        self.history.append(score)
        if score > self.best_score:
            self.best_key = key
        return score

    def result(
        self, method: str, stopped_by: StopReason, parameters: Mapping[str, Any], details: Mapping[str, Any]
    ) -> SearchResult:
        """The :class:`SearchResult` of the search so far (at least one plan must have been evaluated)."""
        assert self.best_key is not None, "a search always evaluates at least one plan"
        best = self.cache[self.best_key]
        return SearchResult(
            method=method,
            plan=best.plan,
            score=best.score,
            ratio=self.space.fp32_cost / max(best.cost, 1),
            evaluations=len(self.cache),
            seconds=time.perf_counter() - self.start,
            evaluate_seconds=sum(e.seconds for e in self.cache.values()),
            stopped_by=stopped_by,
            history=tuple(self.history),
            cache=dict(self.cache),
            parameters=dict(parameters),
            details={**details, "cache_hits": self.hits},
        )
