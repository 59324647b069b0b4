"""Feasibility-preserving local search on an option grid (the budget formulation's polish step).

Moves change one choice, or two choices at once (what a budget needs: one layer gets more bits
while another gives some up). :func:`repair` makes a plan fit the budget; :func:`descend` then
takes the best improving move that stays within the budget until none is left (steepest descent
over the 1- and 2-move neighbourhood, restricted to feasible plans); :func:`iterated_local_search`
kicks a local optimum (a few random choices changed), repairs and descends again, keeping what is
no worse.

Each descent step evaluates every 1- and 2-move at once: ``Δdamage[m1, m2] = d[m1] + d[m2] +
e[m1, m2]`` and ``Δcost[m1, m2] = k[m1] + k[m2] + f[m1, m2]``, where ``d``/``k`` are the changes
of single moves and ``e``/``f`` the corrections where the two choices share an interaction table
or a cell (:class:`MoveTables`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.choices import ChoiceModel

# A move must lower the damage by more than this share of the model's damage scale.
IMPROVEMENT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class _CellSlices:
    """Stacked 1-D lines or 2-D planes of cell cost tables, the cells' other axes at a given vector.

    Entry n runs over the options of ``choices[n]`` (one choice: a line; two: a plane); its flat
    index into the concatenated cost tables is ``base[n] + Σ stride[n, i]·x[fixed[n, i]]``.
    Padding (options beyond a choice's count) points at a trailing zero.
    """

    choices: np.ndarray  # (n, r)
    fixed: np.ndarray  # (n, 2): the cell's remaining axes (a pseudo choice always at 0 if none)
    stride: np.ndarray  # (n, 2)
    base: np.ndarray  # (n, width) or (n, width, width)
    valid: np.ndarray  # same shape as base

    def gather(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        shift = (self.stride * x[self.fixed]).sum(axis=1).reshape((-1,) + (1,) * (self.base.ndim - 1))
        return flat[np.where(self.valid, self.base + shift, flat.size - 1)]


class MoveTables:
    """Changes of damage and cost of every 1- and 2-move around a choice vector (vectorised).

    Moves are numbered choice by choice: every option of every free choice, the current one
    included (the null move). Interaction tables and cell cost tables are stacked and padded to
    the largest option count, so a step is a handful of numpy gathers.
    """

    def __init__(self, model: ChoiceModel) -> None:
        self.model = model
        counts = model.counts
        free = np.array(model.free, dtype=np.int64)
        width = int(counts[free].max()) if free.size else 1
        self._width = width
        option = np.arange(width)
        self._first = np.zeros(len(counts) + 1, dtype=np.int64)  # first move of each choice
        self._first[free] = np.cumsum(np.concatenate([[0], counts[free]]))[:-1]
        self.move_choice = np.repeat(free, counts[free])
        self.move_option = np.concatenate([np.arange(counts[c]) for c in free] + [np.zeros(0, dtype=np.int64)])
        self.size = int(self.move_choice.size)
        self._counts = np.append(counts, 1)  # with the pseudo choice
        self._free = free
        self._unary = np.zeros((free.size, width))
        for i, c in enumerate(free):
            self._unary[i, : counts[c]] = model.unary[c]
        self._unary_valid = option[None, :] < counts[free][:, None]
        pairs = list(model.pairs)
        self._pair_choices = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self._tables = np.zeros((len(pairs), width, width))
        for n, key in enumerate(pairs):
            table = model.pairs[key]
            self._tables[n, : table.shape[0], : table.shape[1]] = table
        self._flat_cost = np.concatenate([cell.size.ravel() for cell in model.cells] + [np.zeros(1, dtype=np.int64)])
        self._lines, self._planes = self._cell_slices(model, width)
        scale = sum(float(np.abs(u).max()) for u in model.unary)
        scale += sum(float(np.abs(t).max()) for t in model.pairs.values())
        self.tolerance = IMPROVEMENT_TOLERANCE * max(scale, 1.0)

    def _cell_slices(self, model: ChoiceModel, width: int) -> tuple[_CellSlices, _CellSlices]:
        """The lines (one per cell and axis) and planes (one per cell and pair of axes) of the costs."""
        pseudo = len(model.counts)
        option = np.arange(width)
        offsets = np.cumsum([0] + [cell.size.size for cell in model.cells])
        entries: dict[int, list[tuple[list[int], list[int], list[int], int, list[int]]]] = {1: [], 2: []}
        for k, cell in enumerate(model.cells):
            strides = [int(np.prod(cell.size.shape[i + 1 :], dtype=np.int64)) for i in range(len(cell.axes))]
            for r in (1, 2):
                for spanned in _combinations(len(cell.axes), r):
                    rest = [i for i in range(len(cell.axes)) if i not in spanned]
                    fixed = [cell.axes[i] for i in rest] + [pseudo] * (2 - len(rest))
                    fixed_stride = [strides[i] for i in rest] + [0] * (2 - len(rest))
                    spanned_axes = [cell.axes[i] for i in spanned]
                    spanned_strides = [strides[i] for i in spanned]
                    entries[r].append((spanned_axes, fixed, fixed_stride, int(offsets[k]), spanned_strides))
        slices = []
        for r, grid in ((1, (option,)), (2, (option[:, None], option[None, :]))):
            rows = entries[r]
            choices = np.array([e[0] for e in rows], dtype=np.int64).reshape(-1, r)
            spanned_stride = np.array([e[4] for e in rows], dtype=np.int64).reshape(-1, r)
            base = np.array([e[3] for e in rows], dtype=np.int64).reshape((-1,) + (1,) * r)
            valid = np.ones((len(rows),) + (width,) * r, dtype=bool)
            for i in range(r):
                base = base + spanned_stride[:, i].reshape((-1,) + (1,) * r) * grid[i]
                valid &= grid[i] < self._counts[choices[:, i]].reshape((-1,) + (1,) * r)
            slices.append(
                _CellSlices(
                    choices=choices,
                    fixed=np.array([e[1] for e in rows], dtype=np.int64).reshape(-1, 2),
                    stride=np.array([e[2] for e in rows], dtype=np.int64).reshape(-1, 2),
                    base=base,
                    valid=valid,
                )
            )
        return slices[0], slices[1]

    def _moves(self, choice: np.ndarray, ndim: int, axis: int) -> np.ndarray:
        """Move numbers of each option of ``choice`` (stacked), shaped to broadcast along ``axis``."""
        shape = [1] * ndim
        shape[axis] = -1
        return self._first[choice].reshape((-1,) + (1,) * (ndim - 1)) + np.arange(self._width).reshape(shape)

    def single(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Damage and cost change of setting each (choice, option) alone."""
        x = np.append(x, 0)  # the pseudo choice
        damage = (self._unary - self._unary[np.arange(self._free.size), x[self._free]][:, None])[self._unary_valid]
        if len(self._tables):
            n = np.arange(len(self._tables))
            a, b = self._pair_choices[:, 0], self._pair_choices[:, 1]
            centre = self._tables[n, x[a], x[b]][:, None]
            for choice, values in ((a, self._tables[n, :, x[b]] - centre), (b, self._tables[n, x[a], :] - centre)):
                moves = self._moves(choice, 2, 1)
                valid = np.arange(values.shape[1])[None, :] < self._counts[choice][:, None]
                np.add.at(damage, moves[valid], values[valid])
        cost = np.zeros(self.size, dtype=np.int64)
        lines = self._lines.gather(self._flat_cost, x)
        choice = self._lines.choices[:, 0]
        current = lines[np.arange(len(lines)), x[choice]][:, None]
        valid = self._lines.valid
        np.add.at(cost, self._moves(choice, 2, 1)[valid], (lines - current)[valid])
        return damage, cost

    def pair_corrections(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corrections ``e``, ``f`` of 2-moves whose choices share a table or a cell (0 elsewhere)."""
        x = np.append(x, 0)
        damage = np.zeros((self.size, self.size))
        if len(self._tables):
            a, b = self._pair_choices[:, 0], self._pair_choices[:, 1]
            valid = (np.arange(self._tables.shape[1])[None, :, None] < self._counts[a][:, None, None]) & (
                np.arange(self._tables.shape[2])[None, None, :] < self._counts[b][:, None, None]
            )
            self._scatter(damage, _double_centre(self._tables, x[a], x[b]), a, b, valid)
        cost = np.zeros((self.size, self.size), dtype=np.int64)
        if len(self._planes.base):
            a, b = self._planes.choices[:, 0], self._planes.choices[:, 1]
            planes = self._planes.gather(self._flat_cost, x)
            self._scatter(cost, _double_centre(planes, x[a], x[b]), a, b, self._planes.valid)
        return damage, cost

    def _scatter(
        self, matrix: np.ndarray, blocks: np.ndarray, a: np.ndarray, b: np.ndarray, valid: np.ndarray
    ) -> None:
        """Add each block at (moves of a) × (moves of b) and its transpose at (moves of b) × (moves of a)."""
        rows = np.broadcast_to(self._moves(a, 3, 1), blocks.shape)[valid]
        cols = np.broadcast_to(self._moves(b, 3, 2), blocks.shape)[valid]
        np.add.at(matrix, (rows, cols), blocks[valid])
        np.add.at(matrix, (cols, rows), blocks[valid])


def _combinations(count: int, r: int) -> list[tuple[int, ...]]:
    return [(i,) for i in range(count)] if r == 1 else [(i, j) for i in range(count) for j in range(i + 1, count)]


def _double_centre(blocks: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """``B[i, j] − B[i, xb] − B[xa, j] + B[xa, xb]`` for a stack of blocks."""
    n = np.arange(blocks.shape[0])
    return blocks - blocks[n, :, xb][:, :, None] - blocks[n, xa, :][:, None, :] + blocks[n, xa, xb][:, None, None]


def repair(model: ChoiceModel, x: np.ndarray, budget: int, tables: MoveTables | None = None) -> np.ndarray:
    """``x`` made to fit the budget: repeatedly the single move that saves cost at the least damage
    per unit of cost saved (a move that saves cost and damage both comes first).

    The budget must hold the model's cheapest plan (the move always exists until it is reached).
    """
    tables = tables or MoveTables(model)
    x = x.copy()
    cost = int(model.costs(x)[0])
    while cost > budget:
        damage_change, cost_change = tables.single(x)
        saving = cost_change < 0
        if not saving.any():
            raise ProblemError(f"no plan on the grid fits the budget of {budget} (cheapest: {cost})")
        rate = np.where(saving, damage_change / np.where(saving, -cost_change, 1), np.inf)
        best = int(np.argmin(rate))
        x[tables.move_choice[best]] = tables.move_option[best]
        cost += int(cost_change[best])
    return x


def descend(model: ChoiceModel, x: np.ndarray, budget: int, tables: MoveTables | None = None) -> np.ndarray:
    """Steepest descent of the damage over 1- and 2-moves that keep the cost within ``budget``.

    ``x`` must fit the budget; the result does, and no single or double change of it that fits
    lowers the damage (by more than the tolerance).
    """
    tables = tables or MoveTables(model)
    x = x.copy()
    if tables.size == 0:
        return x
    cost = int(model.costs(x)[0])
    same_choice = tables.move_choice[:, None] == tables.move_choice[None, :]
    while True:
        d, k = tables.single(x)
        e, f = tables.pair_corrections(x)
        damage = d[:, None] + d[None, :] + e
        new_cost = cost + k[:, None] + k[None, :] + f
        damage[same_choice] = np.inf  # two options of one choice: not a move ...
        np.fill_diagonal(damage, d)  # ... except a move paired with itself: the single move
        np.fill_diagonal(new_cost, cost + k)
        damage[new_cost > budget] = np.inf
        best = int(np.argmin(damage))
        if not damage.flat[best] < -tables.tolerance:
            return x
        m1, m2 = divmod(best, tables.size)
        x[tables.move_choice[m1]] = tables.move_option[m1]
        x[tables.move_choice[m2]] = tables.move_option[m2]
        cost = int(new_cost.flat[best])


def iterated_local_search(
    model: ChoiceModel,
    x: np.ndarray,
    budget: int,
    iterations: int,
    kick: int,
    rng: np.random.Generator,
    tables: MoveTables | None = None,
) -> np.ndarray:
    """Escape local optima: ``iterations`` times, set ``kick`` random free choices of the best
    plan so far to random options, :func:`repair` and :func:`descend`; keep it when no worse.

    ``x`` must fit the budget; so does the result, which is never worse than ``descend(x)``.
    """
    tables = tables or MoveTables(model)
    free = np.array(model.free, dtype=np.int64)
    best = descend(model, x, budget, tables)
    if free.size == 0:
        return best
    best_damage = float(model.damages(best)[0])
    for _ in range(iterations):
        trial = best.copy()
        for c in rng.choice(free, size=min(kick, free.size), replace=False):
            trial[c] = rng.integers(model.counts[c])
        trial = descend(model, repair(model, trial, budget, tables), budget, tables)
        damage = float(model.damages(trial)[0])
        if damage <= best_damage:
            best, best_damage = trial, damage
    return best
