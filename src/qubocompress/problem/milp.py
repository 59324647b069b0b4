"""Exact optimum of an option-grid problem under a cost budget: a MILP solved by HiGHS.

The lifted linear model of a :class:`~qubocompress.problem.choices.ChoiceModel`:

* ``x[c, o] ∈ {0, 1}``, one-hot per free choice c (``Σ_o x[c, o] = 1``);
* ``w[k, s] ∈ [0, 1]`` per cell k and joint state s, tied to the choices by the marginals
  ``Σ_{s: s_c = o} w[k, s] = x[c, o]`` for every axis c of the cell. With one-hot ``x`` the
  marginals leave ``w`` no freedom: it is the indicator of the state ``x`` picks, so it need not
  be declared integer, and the layer costs are linear: ``Σ_k Σ_s size[k, s] w[k, s] ≤ budget``;
* ``z[(a, b), i, j] ∈ [0, 1]`` per interaction table, with ``Σ_j z[i, j] = x[a, i]`` and
  ``Σ_i z[i, j] = x[b, j]`` (the tight linearisation of a product of two one-hot vectors: again
  exact for integral ``x``).

Minimise ``Σ unary[c][o] x[c, o] + Σ table[i, j] z[i, j]``. The cost row is divided by the budget
(coefficients ≤ 1) and the objective scaled so its largest coefficient is 1e6, which keeps
HiGHS's absolute tolerances negligible; a plan that its feasibility tolerance lets slip over the
budget is caught by the caller, which re-checks the true cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from qubocompress.problem.choices import ChoiceModel

# The objective's largest coefficient after scaling (HiGHS's absolute gap tolerance is 1e-6).
OBJECTIVE_SCALE = 1e6


@dataclass(frozen=True)
class MilpOutcome:
    """What HiGHS returned: the best choice vector (None if none found), a proven lower bound of
    the damage, and whether optimality was proven."""

    index: np.ndarray | None
    bound: float
    proven: bool


def solve_budget_milp(
    model: ChoiceModel, budget: int | None, time_limit: float, cost_weight: float = 0.0
) -> MilpOutcome:
    """Minimise the damage of ``model`` plus ``cost_weight`` (nats per unit of cost) × its total cost,
    with total cost ≤ ``budget`` (None: no budget) within ``time_limit`` seconds."""
    free = model.free
    columns = 0
    x_first: dict[int, int] = {}
    for c in free:
        x_first[c] = columns
        columns += int(model.counts[c])
    w_first = []
    for cell in model.cells:
        w_first.append(columns)
        columns += cell.size.size
    z_first: dict[tuple[int, int], int] = {}
    for key, table in model.pairs.items():
        z_first[key] = columns
        columns += table.size
    objective = np.zeros(columns)
    for c in free:
        objective[x_first[c] : x_first[c] + model.counts[c]] = model.unary[c]
    for key, table in model.pairs.items():
        objective[z_first[key] : z_first[key] + table.size] = table.ravel()
    for cell, first in zip(model.cells, w_first):
        objective[first : first + cell.size.size] += cost_weight * cell.size.ravel()

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    values: list[np.ndarray] = []

    def add_row(indices: np.ndarray, coefficients: np.ndarray) -> None:
        rows.append(np.full(indices.size, len(rows)))
        cols.append(indices)
        values.append(coefficients)

    def marginal(members: np.ndarray, x_column: int) -> None:
        add_row(np.append(members, x_column), np.append(np.ones(members.size), -1.0))

    for c in free:
        add_row(x_first[c] + np.arange(model.counts[c]), np.ones(model.counts[c]))
    one_hot_rows = len(rows)
    for cell, first in zip(model.cells, w_first):
        states = cell.states
        for axis, c in enumerate(cell.axes):
            for o in range(model.counts[c]):
                marginal(first + np.flatnonzero(states[:, axis] == o), x_first[c] + o)
    for (a, b), table in model.pairs.items():
        grid = z_first[(a, b)] + np.arange(table.size).reshape(table.shape)
        for i in range(table.shape[0]):
            marginal(grid[i, :], x_first[a] + i)
        for j in range(table.shape[1]):
            marginal(grid[:, j], x_first[b] + j)
    equalities = len(rows)
    scale_cost = float(max(budget or 1, 1))
    if model.cells and budget is not None:
        add_row(
            np.concatenate([first + np.arange(cell.size.size) for cell, first in zip(model.cells, w_first)]),
            np.concatenate([cell.size.ravel() for cell in model.cells]).astype(np.float64) / scale_cost,
        )
    count = len(rows)
    matrix = (
        scipy.sparse.csr_array(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(count, columns)
        )
        if rows
        else None
    )
    lower = np.zeros(count)
    upper = np.zeros(count)
    lower[:one_hot_rows] = upper[:one_hot_rows] = 1.0
    if count > equalities:
        lower[equalities:] = -np.inf
        upper[equalities:] = (budget - model.constant_cost) / scale_cost
    integrality = np.zeros(columns)
    for c in free:
        integrality[x_first[c] : x_first[c] + model.counts[c]] = 1
    largest = float(np.max(np.abs(objective), initial=0.0))
    scale = OBJECTIVE_SCALE / largest if largest > 0 else 1.0
    if not math.isfinite(scale):  # every damage below ~1e-302: no finite scale lifts them, they count as 0
        scale = 1.0
    if columns == 0:
        return MilpOutcome(np.zeros(len(model.choices), dtype=np.int64), model.constant, True)
    result = milp(
        objective * scale,
        integrality=integrality,
        bounds=Bounds(0.0, 1.0),
        constraints=[LinearConstraint(matrix, lower, upper)] if matrix is not None else None,
        options={"mip_rel_gap": 0.0, "disp": False, "time_limit": max(time_limit, 1e-3)},
    )
    dual = getattr(result, "mip_dual_bound", None)
    bound = float(dual) / scale + model.constant if dual is not None and math.isfinite(dual) else -math.inf
    if result.x is None:
        return MilpOutcome(None, bound, False)
    index = np.zeros(len(model.choices), dtype=np.int64)
    for c in free:
        index[c] = int(np.argmax(result.x[x_first[c] : x_first[c] + model.counts[c]]))
    return MilpOutcome(index, bound, result.status == 0)
