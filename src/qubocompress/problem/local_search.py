"""Feasibility-preserving local search on an option grid (the budget formulation's polish step).

Moves change one choice, or two choices at once (what a budget needs: one layer gets more bits
while another gives some up). :func:`repair_all` makes plans fit the budget; :func:`descend_all`
then takes the best improving move that stays within the budget until none is left (steepest
descent over the 1- and 2-move neighbourhood, restricted to feasible plans);
:func:`iterated_local_search_all` kicks local optima (a few random choices changed), repairs and
descends again, keeping what is no worse. Each works on many plans (rows) at once, in step, so
that a polish of dozens of chains costs a few numpy calls per step rather than a few per chain
and step (one plan is a single row).

Each descent step finds the best 1- or 2-move exactly, without enumerating all pairs of moves.
Two choices are *related* when they share an interaction table or a cell (their joint change is
not the sum of their single changes); there are few such pairs, each evaluated over its whole
block of options: ``Δdamage = d[m1] + d[m2] + e[m1, m2]``, ``Δcost = k[m1] + k[m2] + f[m1, m2]``
(:class:`MoveTables`). For an unrelated pair the changes simply add up, so with the moves sorted
by cost change the best partner of a move ``m1`` is, among the allowed choices, the least damage
change in the prefix of moves with ``k ≤ slack − k[m1]``: a running minimum per choice, O(moves ×
choices) per step instead of O(moves²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.choices import ChoiceModel

# A move must lower the damage by more than this share of the model's damage scale.
IMPROVEMENT_TOLERANCE = 1e-12
# Descents run side by side in blocks of rows whose per-step work arrays (moves × choices and
# the related pairs' blocks) hold about this many entries together (8 MiB of float64).
BLOCK_ENTRIES = 1 << 20


@dataclass(frozen=True)
class _CellSlices:
    """Stacked 1-D lines or 2-D planes of cell cost tables, the cells' other axes at a given vector.

    Entry n runs over the options of ``choices[n]`` (one choice: a line; two: a plane); its flat
    index into the concatenated cost tables is ``base[n] + Σ stride[n, i]·x[fixed[n, i]]``.
    Padding (options beyond a choice's count) points at a trailing zero.
    """

    choices: np.ndarray  # (n, r)
    fixed: np.ndarray  # (n, slots): the cell's remaining axes (padded with a pseudo choice always at 0)
    stride: np.ndarray  # (n, slots)
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
    """Adds stacked blocks into a flat vector at fixed places: the places depend on the problem's
    structure only, so they are worked out once and each call is one bincount."""

    index: np.ndarray  # flat target of each valid block entry
    valid: np.ndarray  # which block entries are real options
    length: int  # size of the flat target

    @classmethod
    def of(cls, places: np.ndarray, valid: np.ndarray, length: int) -> _Scatter:
        """Entry ``i`` of a block goes to ``places[i]`` of a vector of ``length`` (``places``
        broadcasts to ``valid``'s shape)."""
        return cls(np.broadcast_to(places, valid.shape)[valid], valid, length)

    def add(self, blocks: np.ndarray) -> np.ndarray:
        """The sums for each row of ``blocks`` (shape ``(rows, *valid.shape)``): ``(rows, length)``."""
        rows = blocks.shape[0]
        values = blocks[:, self.valid].astype(np.float64)
        index = (np.arange(rows)[:, None] * self.length + self.index[None, :]).ravel()
        return np.bincount(index, weights=values.ravel(), minlength=rows * self.length).reshape(rows, self.length)


class MoveTables:
    """Changes of damage and cost of every 1- and 2-move around a choice vector (vectorised), and
    the best move within a cost slack.

    Moves are numbered choice by choice: every option of every free choice, the current one
    included (the null move). Interaction tables and cell cost tables are stacked and padded to
    the largest option count, so a step is a handful of numpy gathers. :attr:`related` lists the
    pairs of free choices whose joint change is not additive (they share a table or a cell).
    """

    def __init__(self, model: ChoiceModel) -> None:
        self.model = model
        counts = model.counts
        free = np.array(model.free, dtype=np.int64)
        width = int(counts[free].max()) if free.size else 1
        self._width = width
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
        self._unary_valid = self._valid(free)
        pairs = list(model.pairs)
        self._pair_choices = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        self._tables = np.zeros((len(pairs), width, width))
        for n, key in enumerate(pairs):
            table = model.pairs[key]
            self._tables[n, : table.shape[0], : table.shape[1]] = table
        self._flat_cost = np.concatenate([cell.size.ravel() for cell in model.cells] + [np.zeros(1, dtype=np.int64)])
        self._lines, self._planes = self._cell_slices(model, width)
        self.related = np.array(
            sorted({tuple(sorted(p)) for p in self._pair_choices.tolist() + self._planes.choices.tolist()}),
            dtype=np.int64,
        ).reshape(-1, 2)
        self._scatters()
        position = np.full(len(counts) + 1, -1, dtype=np.int64)
        position[free] = np.arange(free.size)
        self._move_free = position[self.move_choice]  # each move's choice among the free ones
        # partners[i, j]: may free choices i and j change together as an unrelated pair?
        self._partners = ~np.eye(free.size, dtype=bool)
        self._partners[position[self.related[:, 0]], position[self.related[:, 1]]] = False
        self._partners[position[self.related[:, 1]], position[self.related[:, 0]]] = False
        self._option_moves = self._moves(free)
        scale = sum(float(np.abs(u).max()) for u in model.unary)
        scale += sum(float(np.abs(t).max()) for t in model.pairs.values())
        self.tolerance = IMPROVEMENT_TOLERANCE * max(scale, 1.0)

    def _cell_slices(self, model: ChoiceModel, width: int) -> tuple[_CellSlices, _CellSlices]:
        """The lines (one per cell and axis) and planes (one per cell and pair of axes) of the costs."""
        pseudo = len(model.counts)
        option = np.arange(width)
        offsets = np.cumsum([0] + [cell.size.size for cell in model.cells])
        # a line fixes all axes of its cell but one (a consumer of several concatenated groups has more than 3)
        slots = max([2] + [len(cell.axes) - 1 for cell in model.cells])
        entries: dict[int, list[tuple[list[int], list[int], list[int], int, list[int]]]] = {1: [], 2: []}
        for k, cell in enumerate(model.cells):
            strides = [int(np.prod(cell.size.shape[i + 1 :], dtype=np.int64)) for i in range(len(cell.axes))]
            for r in (1, 2):
                for spanned in _combinations(len(cell.axes), r):
                    rest = [i for i in range(len(cell.axes)) if i not in spanned]
                    fixed = [cell.axes[i] for i in rest] + [pseudo] * (slots - len(rest))
                    fixed_stride = [strides[i] for i in rest] + [0] * (slots - len(rest))
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
                    fixed=np.array([e[1] for e in rows], dtype=np.int64).reshape(-1, slots),
                    stride=np.array([e[2] for e in rows], dtype=np.int64).reshape(-1, slots),
                    base=base,
                    valid=valid,
                )
            )
        return slices[0], slices[1]

    def _moves(self, choice: np.ndarray) -> np.ndarray:
        """``(n, width)``: the move of each option of each of the ``n`` choices (padding, beyond a
        choice's option count, at its last option)."""
        return self._first[choice][:, None] + np.minimum(np.arange(self._width), self._counts[choice][:, None] - 1)

    def _valid(self, choice: np.ndarray) -> np.ndarray:
        """``(n, width)``: which padded options each of the ``n`` choices really has."""
        return np.arange(self._width)[None, :] < self._counts[choice][:, None]

    def _scatters(self) -> None:
        """Where each entry of the interaction tables and cost lines/planes lands: among the
        single moves, or in the block of its related pair."""
        size = self.size
        a, b = self._pair_choices[:, 0], self._pair_choices[:, 1]
        valid_a, valid_b = self._valid(a), self._valid(b)
        # single moves: a table's row (choice a moves) and column (choice b moves) through x
        self._table_rows = _Scatter.of(self._moves(a), valid_a, size)
        self._table_cols = _Scatter.of(self._moves(b), valid_b, size)
        self._line_moves = _Scatter.of(self._moves(self._lines.choices[:, 0]), self._lines.valid, size)
        # pairs of moves: a table's or a cost plane's whole block, into its related pair's block
        blocks = len(self.related) * self._width**2
        pair_valid = valid_a[:, :, None] & valid_b[:, None, :]
        self._table_blocks = _Scatter.of(self._block_places(self._pair_choices), pair_valid, blocks)
        self._plane_blocks = _Scatter.of(self._block_places(self._planes.choices), self._planes.valid, blocks)
        first, second = self.related[:, 0], self.related[:, 1]
        self._related_valid = self._valid(first)[:, :, None] & self._valid(second)[:, None, :]
        self._related_moves = [self._moves(first), self._moves(second)]

    def _block_places(self, choices: np.ndarray) -> np.ndarray:
        """Flat places in the stacked related blocks of each entry of blocks over the choice pairs
        ``choices`` ``(n, 2)``: ``(n, width, width)``, transposed where a pair is stored reversed."""
        width = self._width
        index = {pair: u for u, pair in enumerate(map(tuple, self.related.tolist()))}
        u = np.array([index[tuple(sorted(pair))] for pair in choices.tolist()], dtype=np.int64).reshape(-1, 1, 1)
        i, j = np.arange(width)[:, None], np.arange(width)[None, :]
        swapped = (choices[:, 0] > choices[:, 1]).reshape(-1, 1, 1)
        return u * width**2 + np.where(swapped, j * width + i, i * width + j)

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

    def related_corrections(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corrections ``e``, ``f`` of changing both choices of each related pair, for each choice
        vector (rows of ``x``): two ``(rows, related, width, width)`` float64 arrays, entry
        ``[r, u, i, j]`` for options ``i``, ``j`` of ``related[u]``'s choices (``f`` holds whole
        cost units, exact in float64). Unrelated pairs have none: their changes add up."""
        x = _with_pseudo(x)
        shape = (len(x), len(self.related), self._width, self._width)
        damage = np.zeros(shape)
        if len(self._tables):
            a, b = self._pair_choices[:, 0], self._pair_choices[:, 1]
            tables = np.broadcast_to(self._tables, (len(x), *self._tables.shape))
            damage = self._table_blocks.add(_double_centre(tables, x[:, a], x[:, b])).reshape(shape)
        cost = np.zeros(shape)
        if len(self._planes.base):
            a, b = self._planes.choices[:, 0], self._planes.choices[:, 1]
            planes = self._planes.gather(self._flat_cost, x)
            cost = self._plane_blocks.add(_double_centre(planes, x[:, a], x[:, b])).reshape(shape)
        return damage, cost

    @property
    def row_entries(self) -> int:
        """Entries of the per-row work arrays of :meth:`best_moves` (to size blocks of rows)."""
        return self.size * max(len(self._free), 1) + len(self.related) * self._width**2

    def best_moves(self, x: np.ndarray, slack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The 1- or 2-move of least damage change whose cost change is at most ``slack``, for each
        choice vector (rows of ``x``; ``slack`` one whole number of cost units per row).

        Returns ``(first, second, damage, cost)``: the two moves (equal for a 1-move) and the
        changes; a row with no improving move gets a null move and a damage change of 0.
        """
        rows = np.arange(len(x))
        slack = np.asarray(slack, dtype=np.int64)
        d, k = self.single(x)
        # 1-moves (the null moves among them: damage change 0 at cost change 0)
        alone = np.where(k <= slack[:, None], d, np.inf)
        first = np.argmin(alone, axis=1)
        best = alone[rows, first]
        second = first.copy()
        cost = k[rows, first]
        # 2-moves of unrelated choices: the partner's cost change is at most slack − k[m1]
        order = np.argsort(k, axis=1, kind="stable")
        sorted_k = np.take_along_axis(k, order, axis=1)
        running = np.full((len(x), self.size + 1, len(self._free)), np.inf)
        running[rows[:, None], np.arange(1, self.size + 1)[None, :], self._move_free[order]] = np.take_along_axis(
            d, order, axis=1
        )
        np.minimum.accumulate(running, axis=1, out=running)  # [r, p, c]: least d of choice c among the p cheapest
        reach = _count_at_most(sorted_k, slack[:, None] - k)  # (rows, moves): how many partners fit
        partner = np.where(self._partners[self._move_free], running[rows[:, None], reach], np.inf)
        partner_choice = np.argmin(partner, axis=2)
        paired = d + np.take_along_axis(partner, partner_choice[:, :, None], axis=2)[:, :, 0]
        m1 = np.argmin(paired, axis=1)
        better = paired[rows, m1] < best
        if better.any():
            r, m1 = rows[better], m1[better]
            options = self._option_moves[partner_choice[r, m1]]  # (n, width)
            fits = self._unary_valid[partner_choice[r, m1]] & (k[r[:, None], options] <= (slack[r] - k[r, m1])[:, None])
            m2 = options[np.arange(r.size), np.argmin(np.where(fits, d[r[:, None], options], np.inf), axis=1)]
            first[r], second[r], best[r], cost[r] = m1, m2, paired[r, m1], k[r, m1] + k[r, m2]
        # 2-moves of related choices: their whole blocks, corrections included
        if len(self.related):
            e, f = self.related_corrections(x)
            ma, mb = self._related_moves
            damage = d[:, ma][:, :, :, None] + d[:, mb][:, :, None, :] + e
            added = k[:, ma][:, :, :, None] + k[:, mb][:, :, None, :] + f
            damage[~(self._related_valid & (added <= slack[:, None, None, None]))] = np.inf
            flat = np.argmin(damage.reshape(len(x), -1), axis=1)
            value = damage.reshape(len(x), -1)[rows, flat]
            better = value < best
            u, i, j = np.unravel_index(flat[better], damage.shape[1:])
            first[better], second[better] = ma[u, i], mb[u, j]
            best[better] = value[better]
            cost[better] = np.rint(added.reshape(len(x), -1)[rows[better], flat[better]]).astype(np.int64)
        return first, second, best, cost


def _count_at_most(sorted_values: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """For each row, how many of its ascending integer ``sorted_values`` are ``<=`` each of its
    ``limits`` (a searchsorted per row, done as one search over rows laid end to end)."""
    low, high = sorted_values[:, :1], sorted_values[:, -1:]
    span = high - low + 2
    offset = np.cumsum(np.concatenate([[0], span[:-1, 0]]))[:, None]
    keys = (sorted_values - low + offset).ravel()
    queries = np.clip(limits, low - 1, high) - low + offset
    found = np.searchsorted(keys, queries.ravel(), side="right").reshape(limits.shape)
    return found - np.arange(len(sorted_values))[:, None] * sorted_values.shape[1]


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
    comes first). A row that no single move makes cheaper (costs rounded up to whole units can
    need two choices to change at once) starts again from the model's smallest plan.

    The budget must hold the model's smallest plan.
    """
    tables = tables or MoveTables(model)
    x = np.array(x, copy=True)
    cost = model.costs(x)
    smallest = model.smallest()
    least = int(model.costs(smallest)[0])
    while True:
        over = np.flatnonzero(cost > budget)
        if over.size == 0:
            return x
        damage_change, cost_change = tables.single(x[over])
        saving = cost_change < 0
        stuck = ~saving.any(axis=1)
        if stuck.any():
            if least > budget:
                raise ProblemError(f"no plan on the grid fits the budget of {budget} (cheapest: {least})")
            x[over[stuck]], cost[over[stuck]] = smallest, least
        rate = np.where(saving, damage_change / np.where(saving, -cost_change, 1), np.inf)
        best = np.argmin(rate[~stuck], axis=1)
        moved = over[~stuck]
        x[moved, tables.move_choice[best]] = tables.move_option[best]
        cost[moved] += cost_change[~stuck][np.arange(moved.size), best]


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
    block = max(1, BLOCK_ENTRIES // tables.row_entries)
    for start in range(0, len(x), block):
        x[start : start + block] = _descend_block(model, x[start : start + block], budget, tables)
    return x


def _descend_block(model: ChoiceModel, x: np.ndarray, budget: int, tables: MoveTables) -> np.ndarray:
    """:func:`descend_all` of a few rows, side by side."""
    slack = budget - model.costs(x)
    active = np.arange(len(x))
    while active.size:
        first, second, damage, cost = tables.best_moves(x[active], slack[active])
        moving = damage < -tables.tolerance
        rows, first, second = active[moving], first[moving], second[moving]
        x[rows, tables.move_choice[first]] = tables.move_option[first]
        x[rows, tables.move_choice[second]] = tables.move_option[second]
        slack[rows] -= cost[moving]
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
