"""How the budget formulation's BQM encodes its budget, and its constrained model for a CQM solver.

The budget ``Σ a·w ≤ spare`` (``a`` a cell state's cost in units above its cell's cheapest state,
``spare`` the units the budget leaves over every cell's cheapest state; see
:mod:`~qubocompress.problem.budget`) enters the BQM as ``q·m² + l·m`` with ``m = Σ a·w − spare``
(``m ≤ 0`` within the budget; ``h = −m`` is the unused budget):

* ``slack``: ``q = P``, ``l = 0``, and ``m`` includes binary slack bits ``Σ 2^i s_i``: exact (the
  ground state is the optimum), but stiff (module docstring of :mod:`~qubocompress.problem.budget`).
* ``unbalanced`` (Montañez-Barrera et al., arXiv 2211.13914): no slack; ``−λ₁h + λ₂h²`` with
  ``λ₁ = 2γ`` and ``λ₂ = λ₁ / (2s)`` — the shape of the second-order Taylor expansion of
  ``exp(−h/s)`` that the paper starts from, its minimum at ``h = s``. ``γ`` is the budget's
  Lagrange multiplier (:func:`lagrange_multiplier`, nats per unit): a unit of budget spent saves at
  most about γ nats of damage at the optimum, and the penalty's slope at ``h = 0`` is twice that,
  so plans over the budget are pushed back; ``s`` is :data:`UNBALANCED_SCALE_SHARE` of ``spare``
  (at least one unit). Heuristic: the BQM's ground state is *not* guaranteed feasible or optimal.
* ``lagrangian``: no slack and no quadratic budget term; ``γ·(Σ a·w − spare)`` with ``γ`` bisected
  so that the optimum of damage + γ·cost is within the budget (:func:`lagrange_multiplier`). The
  ground state is then feasible, and optimal when that Lagrangian optimum meets the budget tightly
  (no duality gap); :attr:`Multiplier.damage` measures the gap. Sparse: the budget couples nothing.

The polish (:meth:`~qubocompress.problem.budget.BudgetFormulation.polish`: repair into the budget,
feasible descent, iterated local search) guarantees a feasible answer whichever encoding is
sampled; the exact reference (the MILP) does not depend on the encoding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import dimod
import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.names import BUDGET_ENCODINGS
from qubocompress.problem.choices import ChoiceModel
from qubocompress.problem.milp import solve_budget_milp

Encoding = Literal["slack", "unbalanced", "lagrangian"]
ENCODINGS: tuple[Encoding, ...] = BUDGET_ENCODINGS  # type: ignore[assignment]
# The unbalanced penalty's scale s (units of unused budget at its minimum) as a share of spare.
UNBALANCED_SCALE_SHARE = 0.1
# The unbalanced penalty's slope at h = 0 over the Lagrange multiplier γ.
UNBALANCED_SLOPE = 2.0
# The bisection of γ stops when its bracket is this narrow (hi / lo) or after MAX_BISECTIONS solves.
MULTIPLIER_TOLERANCE = 1.001
MAX_BISECTIONS = 40
# The bracket's low end starts this far below its high end.
MULTIPLIER_RANGE = 1e-9


def check_encoding(encoding: str) -> Encoding:
    """``encoding`` if it is one of :data:`ENCODINGS`, else a one-line ProblemError."""
    if encoding not in ENCODINGS:
        raise ProblemError(f"budget encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    return encoding  # type: ignore[return-value]


@dataclass(frozen=True)
class Multiplier:
    """The budget's Lagrange multiplier, found by bisection.

    Attributes:
        gamma: the smallest γ found (nats per cost unit) with which the optimum of damage + γ·cost
            is within the budget (0 when the least damaging plan already is).
        index: that optimum's choice vector.
        damage: its damage (nats); minus the constrained optimum's, the Lagrangian's gap.
        solves: MILPs solved.
        seconds: wall time.
    """

    gamma: float
    index: np.ndarray
    damage: float
    solves: int
    seconds: float


def lagrange_multiplier(model: ChoiceModel, capacity: int, time_limit: float) -> Multiplier:
    """Bisect γ (geometrically) for the smallest one whose damage + γ·cost optimum fits ``capacity``.

    ``model`` is the cost-rounded model (:meth:`ChoiceModel.in_units`) and ``capacity`` its budget
    in the same units. Each step solves the unbudgeted MILP (:func:`solve_budget_milp` with a cost
    weight) within what is left of ``time_limit``; a step without a plan counts as over the budget.
    The high end starts at the damage's whole spread + 1 nats per unit, where only cheapest plans
    are optimal (they fit: the budget is reachable).
    """
    start = time.perf_counter()
    solves = 0

    def optimum(gamma: float) -> np.ndarray | None:
        nonlocal solves
        solves += 1
        remaining = max(time_limit - (time.perf_counter() - start), 1e-3)
        index = solve_budget_milp(model, None, remaining, cost_weight=gamma).index
        return index if index is not None and int(model.costs(index)[0]) <= capacity else None

    def result(gamma: float, index: np.ndarray) -> Multiplier:
        damage = float(model.damages(index)[0])
        return Multiplier(gamma, index, damage, solves, time.perf_counter() - start)

    free = optimum(0.0)
    if free is not None:
        return result(0.0, free)
    spread = sum(float(np.ptp(model.unary[c])) for c in model.free)
    spread += sum(float(np.ptp(table)) for table in model.pairs.values())
    high = spread + 1.0
    best = optimum(high)
    if best is None:
        best = model.smallest()  # a cheapest plan (the budget is reachable): what any larger γ picks
    low = high * MULTIPLIER_RANGE
    while high / low > MULTIPLIER_TOLERANCE and solves < MAX_BISECTIONS:
        middle = math.sqrt(low * high)
        found = optimum(middle)
        if found is None:
            low = middle
        else:
            high, best = middle, found
    return result(high, best)


def unbalanced_weights(gamma: float, spare: int) -> tuple[float, float]:
    """``(λ₁, λ₂)`` of the unbalanced penalty ``−λ₁h + λ₂h²`` (nats per unit, per unit²; module
    docstring): ``λ₁ = 2γ``, ``λ₂ = λ₁ / (2s)``, ``s = max(1, 10 % of spare)``; γ = 0 (the budget
    does not bind) still gets a small slope, 1e-9 nats per unit."""
    scale = max(1.0, UNBALANCED_SCALE_SHARE * spare)
    slope = UNBALANCED_SLOPE * gamma if gamma > 0 else 1e-9
    return slope, slope / (2.0 * scale)


def budget_term_minimum(quadratic: float, linear: float, spare: int) -> float:
    """The least value of ``quadratic·m² + linear·m`` over ``m ≥ −spare`` (``Σ a·w ≥ 0``): what the
    budget term can lower the energy by at most, for the proven penalty weight."""
    if quadratic > 0:
        vertex = -linear / (2.0 * quadratic)
        m = max(vertex, -float(spare))
        return quadratic * m * m + linear * m
    return -linear * float(spare) if linear > 0 else 0.0


def choice_cqm(
    model: ChoiceModel,
    labels: list[list[str]],
    linear: np.ndarray,
    blocks: dict[tuple[int, int], np.ndarray],
    offset: float,
    budget: int,
) -> dimod.ConstrainedQuadraticModel:
    """The lifted budget problem as a CQM over the cell states (labels per cell, in state order).

    Objective: the damage (``linear`` biases over all states in cell order, the cross-cell
    ``blocks``, ``offset``); one discrete (one-hot) constraint per cell; the cells deciding the same
    choice agree (for consecutive ones, an equality per option: the states picking it sum alike);
    the true cost ``Σ size·w ≤ budget − constant cost``, unrounded, so its feasible optimum is the
    MILP's.
    """
    flat = [label for cell in labels for label in cell]
    starts = np.cumsum([0] + [len(cell) for cell in labels])
    rows, cols, values = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    for (ka, kb), block in blocks.items():
        i, j = np.nonzero(block)
        rows.append(starts[ka] + i)
        cols.append(starts[kb] + j)
        values.append(block[i, j])
    objective = dimod.BinaryQuadraticModel.from_numpy_vectors(
        linear,
        (np.concatenate(rows), np.concatenate(cols), np.concatenate(values)),
        offset,
        dimod.BINARY,
        variable_order=flat,
    )
    cqm = dimod.ConstrainedQuadraticModel()
    cqm.set_objective(objective)
    for k, cell in enumerate(model.cells):
        # the cells' states are disjoint: dimod's overlap check (quadratic in the cells) is moot
        cqm.add_discrete_from_iterable(labels[k], label=f"one-hot[{cell.name}]", check_overlaps=False)
    for c in model.free:
        for k1, k2 in zip(model.cells_of[c], model.cells_of[c][1:]):
            o1 = model.cells[k1].states[:, model.cells[k1].axes.index(c)]
            o2 = model.cells[k2].states[:, model.cells[k2].axes.index(c)]
            for o in range(int(model.counts[c])):
                terms = [(labels[k1][s], 1) for s in np.flatnonzero(o1 == o)]
                terms += [(labels[k2][s], -1) for s in np.flatnonzero(o2 == o)]
                cqm.add_constraint_from_iterable(
                    terms, "==", 0, label=f"agree[{model.choices[c].family}={o}:{model.cells[k1].name}]"
                )
    sizes = [
        (label, int(size)) for k, cell in enumerate(model.cells) for label, size in zip(labels[k], cell.size.ravel())
    ]
    cqm.add_constraint_from_iterable(sizes, "<=", budget - model.constant_cost, label="budget")
    return cqm
