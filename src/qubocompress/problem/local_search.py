"""Feasibility-preserving local search on an option grid (the budget formulation's polish step).

Moves change one choice, or two choices at once (what a budget needs: one layer gets more bits
while another gives some up). :func:`repair_all` makes plans fit the budget; :func:`descend_all`
then takes the best improving move that stays within the budget until none is left (steepest
descent over the 1- and 2-move neighbourhood, restricted to feasible plans);
:func:`iterated_local_search_all` kicks local optima (a few random choices changed), repairs and
descends again, keeping what is no worse. Each works on many plans (rows) at once, in step, so
that a polish of dozens of chains costs a few numpy calls per step rather than a few per chain
and step (one plan is a single row).

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
# Descents run side by side in blocks of rows whose move × move matrices hold about this many
# entries together (4 MiB per float64 matrix): vectorised across rows, and bounded in memory.
PAIR_MATRIX_ENTRIES = 1 << 19


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
        """The lines or planes at each choice vector (rows of ``x``, pseudo choice appended):
        shape ``(rows, n, width[, width])``."""
        shift = (self.stride * x[:, self.fixed]).sum(axis=2)
        shift = shift.reshape(shift.shape + (1,) * (self.base.ndim - 1))
        return flat[np.where(self.valid, self.base + shift, flat.size - 1)]


@dataclass(frozen=True)
class _Scatter:
    """Adds stacked blocks into a vector or matrix of moves at fixed places: the places depend on
    the problem's structure only, so they are worked out once and each call is one bincount."""

    index: np.ndarray  # flat target of each valid block entry (twice for a symmetric matrix)
    valid: np.ndarray  # which block entries are real options
    length: int  # size of the flat target
    symmetric: bool

    @classmethod
    def of(cls, rows: np.ndarray, cols: np.ndarray | None, valid: np.ndarray, size: int) -> _Scatter:
        """Entries go to ``rows`` (a vector of ``size``), or to ``(rows, cols)`` and ``(cols, rows)``
        of a ``size × size`` matrix; ``rows``/``cols`` broadcast to ``valid``'s shape."""
        row = np.broadcast_to(rows, valid.shape)[valid]
        if cols is None:
            return cls(row, valid, size, False)
        col = np.broadcast_to(cols, valid.shape)[valid]
        return cls(np.concatenate([row * size + col, col * size + row]), valid, size * size, True)

    def add(self, blocks: np.ndarray) -> np.ndarray:
        """The sums for each row of ``blocks`` (shape ``(rows, *valid.shape)``): ``(rows, length)``."""
        rows = blocks.shape[0]
        values = blocks[:, self.valid].astype(np.float64)
        if self.symmetric:
            values = np.concatenate([values, values], axis=1)
        index = (np.arange(rows)[:, None] * self.length + self.index[None, :]).ravel()
        return np.bincount(index, weights=values.ravel(), minlength=rows * self.length).reshape(rows, self.length)


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
        self._scatters()
        # added to a pair of moves' damage: +inf for two options of one choice (the null pair aside)
        self.blocked = np.where(self.move_choice[:, None] == self.move_choice[None, :], np.inf, 0.0)
        np.fill_diagonal(self.blocked, 0.0)
        scale = sum(float(np.abs(u).max()) for u in model.unary)
        scale += sum(float(np.abs(t).max()) for t in model.pairs.values())
        self.tolerance = IMPROVEMENT_TOLERANCE * max(scale, 1.0)

    @property
    def has_interactions(self) -> bool:
        """True when some pair of choices has an interaction table (else ``e`` is all zero)."""
        return len(self._tables) > 0

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

    def _scatters(self) -> None:
        """Where each entry of the interaction tables and cost lines/planes lands among the moves."""
        size, width = self.size, self._width
        option = np.arange(width)
        a, b = self._pair_choices[:, 0], self._pair_choices[:, 1]
        valid_a = option[None, :] < self._counts[a][:, None]
        valid_b = option[None, :] < self._counts[b][:, None]
        # single moves: a table's row (choice a moves) and column (choice b moves) through x
        self._table_rows = _Scatter.of(self._moves(a, 2, 1), None, valid_a, size)
        self._table_cols = _Scatter.of(self._moves(b, 2, 1), None, valid_b, size)
        self._line_moves = _Scatter.of(self._moves(self._lines.choices[:, 0], 2, 1), None, self._lines.valid, size)
        # pairs of moves: a table's whole block, a cost plane's whole block
        valid = valid_a[:, :, None] & valid_b[:, None, :]
        self._table_pairs = _Scatter.of(self._moves(a, 3, 1), self._moves(b, 3, 2), valid, size)
        pa, pb = self._planes.choices[:, 0], self._planes.choices[:, 1]
        self._plane_pairs = _Scatter.of(self._moves(pa, 3, 1), self._moves(pb, 3, 2), self._planes.valid, size)

    def single(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Damage and cost change of setting each (choice, option) alone, for each choice vector
        (rows of ``x``): two ``(rows, moves)`` arrays."""
        x = _with_pseudo(x)
        current = self._unary[np.arange(self._free.size)[None, :], x[:, self._free]]
        damage = (self._unary[None] - current[:, :, None])[:, self._unary_valid]
        if len(self._tables):
            n = np.arange(len(self._tables))[None, :]
            xa, xb = x[:, self._pair_choices[:, 0]], x[:, self._pair_choices[:, 1]]
            centre = self._tables[n, xa, xb][:, :, None]
            damage += self._table_rows.add(self._tables[n, :, xb] - centre)
            damage += self._table_cols.add(self._tables[n, xa, :] - centre)
        lines = self._lines.gather(self._flat_cost, x)
        current_cost = np.take_along_axis(lines, x[:, self._lines.choices[:, 0]][:, :, None], axis=2)
        cost = np.rint(self._line_moves.add(lines - current_cost)).astype(np.int64)
        return damage, cost

    def pair_corrections(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corrections ``e``, ``f`` of 2-moves whose choices share a table or a cell (0 elsewhere),
        for each choice vector (rows of ``x``): two ``(rows, moves, moves)`` float64 arrays (``f``
        holds whole cost units, exact in float64, which spares a conversion of the largest array)."""
        x = _with_pseudo(x)
        shape = (len(x), self.size, self.size)
        damage = np.zeros(shape)
        if len(self._tables):
            a, b = self._pair_choices[:, 0], self._pair_choices[:, 1]
            tables = np.broadcast_to(self._tables, (len(x), *self._tables.shape))
            damage = self._table_pairs.add(_double_centre(tables, x[:, a], x[:, b])).reshape(shape)
        cost = np.zeros(shape)
        if len(self._planes.base):
            a, b = self._planes.choices[:, 0], self._planes.choices[:, 1]
            planes = self._planes.gather(self._flat_cost, x)
            cost = self._plane_pairs.add(_double_centre(planes, x[:, a], x[:, b])).reshape(shape)
        return damage, cost


def _with_pseudo(x: np.ndarray) -> np.ndarray:
    """Rows of choice vectors with the pseudo choice (always option 0) appended."""
    x = np.atleast_2d(x)
    return np.concatenate([x, np.zeros((len(x), 1), dtype=x.dtype)], axis=1)


def _combinations(count: int, r: int) -> list[tuple[int, ...]]:
    return [(i,) for i in range(count)] if r == 1 else [(i, j) for i in range(count) for j in range(i + 1, count)]


def _double_centre(blocks: np.ndarray, xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """``B[i, j] − B[i, xb] − B[xa, j] + B[xa, xb]`` for rows of stacked blocks ``(rows, n, w, w)``
    at the options ``xa``, ``xb`` ``(rows, n)``."""
    at_a, at_b = xa[:, :, None, None], xb[:, :, None, None]
    column = np.take_along_axis(blocks, at_b, axis=3)
    row = np.take_along_axis(blocks, at_a, axis=2)
    return blocks - column - row + np.take_along_axis(column, at_a, axis=2)


def repair_all(model: ChoiceModel, x: np.ndarray, budget: int, tables: MoveTables | None = None) -> np.ndarray:
    """Each choice vector (rows of ``x``) made to fit the budget: repeatedly the single move that
    saves cost at the least damage per unit of cost saved (a move that saves cost and damage both
    comes first).

    The budget must hold the model's cheapest plan (the move always exists until it is reached).
    """
    tables = tables or MoveTables(model)
    x = np.array(x, copy=True)
    cost = model.costs(x)
    while True:
        over = np.flatnonzero(cost > budget)
        if over.size == 0:
            return x
        damage_change, cost_change = tables.single(x[over])
        saving = cost_change < 0
        if not saving.any(axis=1).all():
            cheapest = int(cost[over][~saving.any(axis=1)].min())
            raise ProblemError(f"no plan on the grid fits the budget of {budget} (cheapest: {cheapest})")
        rate = np.where(saving, damage_change / np.where(saving, -cost_change, 1), np.inf)
        best = np.argmin(rate, axis=1)
        x[over, tables.move_choice[best]] = tables.move_option[best]
        cost[over] += cost_change[np.arange(over.size), best]


def descend_all(model: ChoiceModel, x: np.ndarray, budget: int, tables: MoveTables | None = None) -> np.ndarray:
    """Steepest descent of the damage over 1- and 2-moves that keep the cost within ``budget``,
    for each choice vector (rows of ``x``) at once.

    Every row must fit the budget; the results do, and no single or double change of one that
    fits lowers its damage (by more than the tolerance).
    """
    tables = tables or MoveTables(model)
    x = np.array(x, copy=True)
    if tables.size == 0:
        return x
    block = max(1, PAIR_MATRIX_ENTRIES // tables.size**2)
    for start in range(0, len(x), block):
        x[start : start + block] = _descend_block(model, x[start : start + block], budget, tables)
    return x


def _descend_block(model: ChoiceModel, x: np.ndarray, budget: int, tables: MoveTables) -> np.ndarray:
    """:func:`descend_all` of a few rows, their move × move matrices side by side."""
    slack = (budget - model.costs(x)).astype(np.float64)  # whole units, exact
    active = np.arange(len(x))
    diagonal = slice(None, None, tables.size + 1)  # of each flattened move × move matrix
    while active.size:
        d, k = tables.single(x[active])
        e, f = tables.pair_corrections(x[active])
        damage = d[:, :, None] + d[:, None, :]
        if tables.has_interactions:
            damage += e
        damage += tables.blocked  # two options of one choice: not a move ...
        damage.reshape(active.size, -1)[:, diagonal] = d  # ... except a move paired with itself: the single move
        k = k.astype(np.float64)
        added = k[:, :, None] + k[:, None, :]
        added += f
        added.reshape(active.size, -1)[:, diagonal] = k
        damage[added > slack[active, None, None]] = np.inf
        flat = damage.reshape(active.size, -1)
        best = np.argmin(flat, axis=1)
        moving = flat[np.arange(active.size), best] < -tables.tolerance
        best, rows = best[moving], active[moving]
        m1, m2 = np.divmod(best, tables.size)
        x[rows, tables.move_choice[m1]] = tables.move_option[m1]
        x[rows, tables.move_choice[m2]] = tables.move_option[m2]
        slack[rows] -= added.reshape(active.size, -1)[np.flatnonzero(moving), best]
        active = rows
    return x


def iterated_local_search_all(
    model: ChoiceModel,
    x: np.ndarray,
    budget: int,
    iterations: int,
    kick: int,
    rngs: list[np.random.Generator],
    tables: MoveTables | None = None,
) -> np.ndarray:
    """Escape local optima, one chain per row of ``x`` (with its own generator in ``rngs``), all
    chains in step: ``iterations`` times, set ``kick`` random free choices of each chain's best
    plan so far to random options, :func:`repair_all` and :func:`descend_all`; keep it when no worse.

    Every row must fit the budget; so do the results, each never worse than its own descent.
    """
    tables = tables or MoveTables(model)
    free = np.array(model.free, dtype=np.int64)
    best = descend_all(model, x, budget, tables)
    if free.size == 0:
        return best
    best_damage = model.damages(best)
    for _ in range(iterations):
        trial = best.copy()
        for row, rng in zip(trial, rngs, strict=True):
            for c in rng.choice(free, size=min(kick, free.size), replace=False):
                row[c] = rng.integers(model.counts[c])
        trial = descend_all(model, repair_all(model, trial, budget, tables), budget, tables)
        damage = model.damages(trial)
        keep = damage <= best_damage
        best[keep], best_damage[keep] = trial[keep], damage[keep]
    return best
