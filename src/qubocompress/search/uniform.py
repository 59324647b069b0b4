"""The uniform baseline as a search: one bit-width and one L1-style prune ratio for every layer.

For every bit-width on offer, the smallest prune ratio (in steps of 1/``PRUNE_RATIO_STEPS``) whose
plan reaches the target; each such candidate is scored by ``evaluate`` and the best one wins (of
equal scores, the one closest to the target: the largest). Scoring the candidates makes the
baseline as strong as a careful user would make it; it is what ``compress`` compares its plan with
and the ``uniform`` route of a sweep.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from qubocompress.errors import ProblemError
from qubocompress.problem.choices import Metric, fp32_cost, plan_cost
from qubocompress.problem.plan import uniform_plan
from qubocompress.problem.spec import CompressionSpec
from qubocompress.search.common import Evaluate, Evaluation, SearchResult, check_evaluate

PRUNE_RATIO_STEPS = 64


def uniform_search(
    spec: CompressionSpec,
    evaluate: Evaluate,
    ratio: float,
    metric: Metric = "bits",
    bit_options: Sequence[int] | None = None,
    max_evaluations: int | None = None,
    seed: int = 0,
) -> SearchResult:
    """The best uniform plan at least ``ratio`` times smaller than fp32 in ``metric`` (module docstring).

    ``max_evaluations`` and ``seed`` are accepted as every search takes them; the candidates (one per
    bit-width, at most ``b_max - min_bits + 1``) are all scored and nothing is random.
    """
    evaluate = check_evaluate(evaluate)
    start = time.perf_counter()
    full = fp32_cost(spec, metric)
    candidates = []
    for bits in bit_options or range(spec.min_bits, spec.b_max + 1):
        for step in range(PRUNE_RATIO_STEPS):
            plan = uniform_plan(spec, bits, step / PRUNE_RATIO_STEPS)
            cost = plan_cost(spec, plan, metric)
            if full / max(cost, 1) >= ratio:
                candidates.append(((bits, step), plan, cost))
                break
    if not candidates:
        raise ProblemError(f"no uniform plan reaches {ratio:g}x within the allowed pruning")
    scored: dict[tuple[int, ...], Evaluation] = {}
    for key, plan, cost in candidates:
        began = time.perf_counter()
        score = float(evaluate(plan))
        scored[key] = Evaluation(plan, score, cost, time.perf_counter() - began)
    best_key = max(scored, key=lambda key: (scored[key].score, scored[key].cost))
    best = scored[best_key]
    table = [
        {"bit_width": bits, "prune_ratio": step / PRUNE_RATIO_STEPS, "val_acc_before_finetune": e.score}
        for (bits, step), e in scored.items()
    ]
    return SearchResult(
        method="uniform",
        plan=best.plan,
        score=best.score,
        ratio=full / max(best.cost, 1),
        evaluations=len(scored),
        seconds=time.perf_counter() - start,
        evaluate_seconds=sum(e.seconds for e in scored.values()),
        stopped_by="evaluations",
        history=tuple(e.score for e in scored.values()),
        cache=scored,
        parameters={"seed": seed},
        details={
            "bit_width": best_key[0],
            "prune_ratio": best_key[1] / PRUNE_RATIO_STEPS,
            "candidates": table,
        },
    )
