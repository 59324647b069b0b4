"""Hitting a target compression ratio with the paper's form: calibrate γ on the certified optimum.

The paper's ``H`` has no size constraint; its γ trades the compression reward against the damage.
:func:`calibrate_gamma` finds (nearly) the smallest γ whose exact optimum reaches a target
*true* compression ratio (:meth:`Plan.compression_ratio`, which also counts the input channels
that pruning removes downstream — something the paper's ``R`` ignores, so the ratio of the
optimum is not perfectly monotone in γ; every returned plan is re-checked against the target).
"""

from __future__ import annotations

import math

from qubocompress.errors import ProblemError
from qubocompress.problem.paper import PaperFormulation
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec

# Bisection stops when the bracket [infeasible γ, feasible γ] is this narrow (relative).
GAMMA_RESOLUTION = 1e-9
MAX_BRACKET_STEPS = 200


def most_compressed_plan(spec: CompressionSpec) -> Plan:
    """The plan the paper form tends to as γ → ∞: every candidate pruned, lowest bit-width everywhere.

    Groups with no member layer earn no reward in ``R``, so they stay whole.
    """
    rewarded = {layer.out_group for layer in spec.layers if layer.out_group is not None}
    pruned = {
        group.name: tuple(int(i) for i in group.candidates()) if g in rewarded else ()
        for g, group in enumerate(spec.groups)
    }
    return Plan(pruned=pruned, bits={layer.name: spec.min_bits for layer in spec.layers})


def calibrate_gamma(
    spec: CompressionSpec, target_ratio: float, beta: float | None = None, tol: float = 1e-2
) -> PaperFormulation:
    """The paper formulation at (nearly) the smallest γ whose exact optimum compresses ≥ target.

    Brackets γ by doubling/halving (log scale), then bisects geometrically down to a relative
    width of 1e-9 around the smallest feasible γ found, γ_min. At γ_min two plans tie, so the
    returned γ is ``γ_min·(1 + tol)`` — at most ``tol`` above the smallest, and far enough from
    the tie for the optimum to be clear — unless its optimum misses the target (the ratio is not
    quite monotone in γ), in which case γ_min itself is returned. ``formulation.exact()`` then
    gives the calibrated plan, whose true ratio is guaranteed ≥ target. If γ = 0 (no reward: an
    uncompressed b_max-bit plan) already meets the target, γ = 0 is returned.

    Args:
        spec: the problem.
        target_ratio: wanted fp32-weight-bits / plan-weight-bits (> 1, e.g. 16.0).
        beta: β of the formulation (None = balanced).
        tol: relative margin above the smallest feasible γ (≥ 0).
    """
    if not (math.isfinite(target_ratio) and target_ratio > 1.0):
        raise ProblemError(f"target compression ratio must be a finite number > 1, got {target_ratio}")
    if not (math.isfinite(tol) and tol >= 0):
        raise ProblemError(f"tol must be a finite number >= 0, got {tol}")
    limit = most_compressed_plan(spec)
    best_ratio = limit.compression_ratio(spec)
    if best_ratio < target_ratio:
        share = max((g.max_pruned / g.size for g in spec.groups), default=0.0)
        raise ProblemError(
            f"target ratio {target_ratio:.1f}× is not reachable: the most this model can be compressed "
            f"with bits ≥ {spec.min_bits} and at most {100 * share:.0f}% of each layer's filters pruned "
            f"is {best_ratio:.1f}×"
        )
    base = PaperFormulation(spec, beta=beta, gamma=0.0)

    def at(gamma: float) -> tuple[PaperFormulation, bool]:
        formulation = PaperFormulation(spec, beta=base.beta, gamma=gamma)
        return formulation, formulation.exact()[0].compression_ratio(spec) >= target_ratio

    if base.exact()[0].compression_ratio(spec) >= target_ratio:
        return base
    # The natural scale of γ: the largest pruning loss (R lies in [0, 1]).
    gamma = sum(float(g.importance[g.candidates()].sum()) ** 2 for g in spec.groups) or 1.0
    feasible_form, feasible = at(gamma)
    if feasible:  # halve down to the first infeasible γ
        low = high = gamma
        for _ in range(MAX_BRACKET_STEPS):
            low = high / 2
            form, ok = at(low)
            if not ok:
                break
            feasible_form, high = form, low
        else:  # feasible for every γ > 0 tried: take the smallest
            return feasible_form
    else:  # double up to the first feasible γ
        low = high = gamma
        for _ in range(MAX_BRACKET_STEPS):
            high = 2 * low
            feasible_form, ok = at(high)
            if ok:
                break
            low = high
        else:
            raise ProblemError(
                f"target ratio {target_ratio:.1f}× was not reached by the exact optimum for any γ up to "
                f"{high:.3g}; the most this model can be compressed is {best_ratio:.1f}×"
            )
    while high / low > 1 + GAMMA_RESOLUTION:
        middle = math.sqrt(low * high)
        form, ok = at(middle)
        if ok:
            feasible_form, high = form, middle
        else:
            low = middle
    if tol > 0:
        margin_form, ok = at(high * (1 + tol))
        if ok:
            return margin_form
    return feasible_form
