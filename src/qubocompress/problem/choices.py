"""Option-based compression problems in numpy: one discrete choice per group and per layer.

A plan on the option grid is a vector of option indices, one per :class:`Choice` (how many of a
group's least important channels to prune, how many bits a layer keeps). Its damage is a sum of
per-choice measured terms plus pairwise interaction tables; its true cost (weight bits or BOPs)
is a sum over layers, where layer n's cost depends on up to three choices — its output group's,
its input group's (several after a concatenation) and its own bit-width — through the product
``kept_out·kept_in·bits``. A
:class:`Cell` tabulates one layer's cost over the joint options of the choices it depends on, so
that the cost is linear in the cells' states: the lifted form the exact MILP and the budget BQM
are built on.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import FP32_BITS, CompressionSpec, FileLayout

Metric = Literal["bits", "bops", "file"]


@dataclass(frozen=True)
class Choice:
    """One decision: how many channels a group prunes, or how many bits a layer keeps.

    Attributes:
        kind: ``"prune"`` or ``"bits"``.
        owner: index of the group or layer in the spec.
        family: the spec's interaction family (``"prune:<group>"`` or ``"bits:<layer>"``).
        options: pruned-channel counts (ascending, from 0) or bit-widths (ascending).
        damage: measured damage of each option (nats).
    """

    kind: Literal["prune", "bits"]
    owner: int
    family: str
    options: tuple[int, ...]
    damage: np.ndarray

    @property
    def uncompressed(self) -> int:
        """Index of the option that leaves its layer or group untouched (no pruning, most bits)."""
        return 0 if self.kind == "prune" else len(self.options) - 1


@dataclass(frozen=True)
class Cell:
    """One layer's cost as a table over the joint options of the free choices it depends on.

    Attributes:
        name: the layer's name, or the group's for a group that no layer reads or writes.
        layer: index of the layer (None for such a lone group).
        axes: indices of the free choices the cost depends on (at least one).
        size: shape ``tuple(len(options) of each axis)``: cost (bits or BOPs) at each joint option.
    """

    name: str
    layer: int | None
    axes: tuple[int, ...]
    size: np.ndarray

    @cached_property
    def states(self) -> np.ndarray:
        """Option index of every axis in each state, shape ``(num_states, len(axes))`` (C order)."""
        return np.array(list(itertools.product(*(range(n) for n in self.size.shape))), dtype=np.int64).reshape(
            -1, len(self.axes)
        )

    def state_of(self, index: np.ndarray) -> np.ndarray:
        """Flat state (row of :attr:`states`) of each choice vector (rows of ``index``)."""
        return np.ravel_multi_index(tuple(index[:, a] for a in self.axes), self.size.shape)


def file_layout(spec: CompressionSpec) -> FileLayout:
    """The spec's file layout; ProblemError when it has none (``--metric file`` needs one)."""
    if spec.file_layout is None:
        raise ProblemError("--metric file needs the model file's layout, which this spec does not hold")
    return spec.file_layout


def layer_cost(spec: CompressionSpec, n: int, kept_out: int, kept_in: int, bits: int, metric: Metric) -> int:
    """Cost of layer n with the given kept channels and bit-width: weight bits, BOPs, or the bits
    its tensors take in the model file (packed codes, then scale, bias and norm per kept filter)."""
    layer = spec.layers[n]
    weights = layer.num_weights(kept_out=kept_out, kept_in=kept_in)
    if metric == "bits":
        return weights * bits
    if metric == "file":
        return 8 * (-(-weights * bits // 8) + file_layout(spec).filter_bytes[n] * kept_out)
    return weights * layer.out_positions * bits * spec.activation_bits


def fixed_cost(spec: CompressionSpec, metric: Metric) -> int:
    """The part of every plan's cost that no choice changes: the model file's fixed bytes (in bits)."""
    return 8 * file_layout(spec).fixed_bytes if metric == "file" else 0


def plan_cost(spec: CompressionSpec, plan: Plan, metric: Metric) -> int:
    """True cost of a plan: :meth:`Plan.weight_bits`, :meth:`Plan.bops`, or its model file's bits."""
    if metric == "bits":
        return plan.weight_bits(spec)
    if metric == "bops":
        return plan.bops(spec)
    return fixed_cost(spec, metric) + sum(
        layer_cost(
            spec,
            n,
            plan.kept_channels(spec, layer.out_group, layer.out_channels),
            plan.kept_inputs(spec, layer),
            plan.bits[layer.name],
            metric,
        )
        for n, layer in enumerate(spec.layers)
    )


def fp32_cost(spec: CompressionSpec, metric: Metric) -> int:
    """Cost of the uncompressed model: fp32 weight bits, MACs × 32 × activation bits, or the bits of
    its fp32 ``torch.save(state_dict)``."""
    if metric == "file":
        return 8 * file_layout(spec).fp32_bytes
    return spec.fp32_weight_bits() if metric == "bits" else spec.fp32_macs() * FP32_BITS * spec.activation_bits


def prune_options(spec: CompressionSpec, group: int) -> tuple[int, ...]:
    """The group's prune options, or (0,) when it offers none (it is then never pruned)."""
    return spec.groups[group].prune_options or (0,)


class ChoiceModel:
    """The damage and cost of every plan on an option grid, as numpy tables.

    Damage of a choice vector ``x``: ``constant + Σ_c unary[c][x_c] + Σ_(a,b) pairs[a,b][x_a, x_b]``
    (interaction tables with a fixed choice are folded into the other's ``unary``). Cost:
    ``constant_cost + Σ_cells cell.size[x restricted to cell.axes]``.

    Args:
        spec: the problem; groups with ``prune_options`` need ``prune_damage``; layers need
            ``quant_damage`` unless only one bit-width is on offer.
        bit_options: the bit-widths on offer, ascending, within ``spec.min_bits..spec.b_max``.
        metric: ``"bits"`` or ``"bops"``.
    """

    def __init__(self, spec: CompressionSpec, bit_options: Sequence[int], metric: Metric) -> None:
        self.spec = spec
        self.metric: Metric = metric
        self.bit_options = tuple(bit_options)
        self.choices: list[Choice] = []
        self.choice_of: dict[str, int] = {}
        for g, group in enumerate(spec.groups):
            if group.prune_options and group.prune_damage.size == 0:
                raise ProblemError(
                    f"channel group {group.name!r} offers prune options but no measured prune_damage "
                    "(run the pruning analysis first)"
                )
            damage = group.prune_damage if group.prune_options else np.zeros(1)
            if not np.all(np.isfinite(damage)):
                raise ProblemError(f"channel group {group.name!r}: prune_damage contains NaN or infinite values")
            self._add(Choice("prune", g, f"prune:{group.name}", prune_options(spec, g), damage.copy()))
        for n, layer in enumerate(spec.layers):
            if layer.quant_damage.size == 0:
                if len(self.bit_options) > 1:
                    raise ProblemError(
                        f"layer {layer.name!r} has no measured quantization damage; the budget formulation "
                        "needs quant_damage for every layer (run the sensitivity analysis first)"
                    )
                damage = np.zeros(1)
            else:
                if not np.all(np.isfinite(layer.quant_damage)):
                    raise ProblemError(f"layer {layer.name!r}: quant_damage contains NaN or infinite values")
                damage = layer.quant_damage[np.array(self.bit_options) - 1]
            self._add(Choice("bits", n, f"bits:{layer.name}", self.bit_options, damage))
        self.counts = np.array([len(c.options) for c in self.choices], dtype=np.int64)
        self.free = [c for c in range(len(self.choices)) if self.counts[c] > 1]
        self._fold_damage()
        self._tabulate_costs()

    def _add(self, choice: Choice) -> None:
        self.choice_of[choice.family] = len(self.choices)
        self.choices.append(choice)

    def _table_index(self, c: int) -> np.ndarray:
        """Row/column of each option of choice ``c`` in an interaction table over its family."""
        choice = self.choices[c]
        return np.array(choice.options) - 1 if choice.kind == "bits" else np.arange(len(choice.options))

    def _fold_damage(self) -> None:
        self.unary = [choice.damage.astype(np.float64) for choice in self.choices]
        self.pairs: dict[tuple[int, int], np.ndarray] = {}
        for term in self.spec.interactions:
            if term.table.size == 0:
                continue
            if not np.all(np.isfinite(term.table)):
                raise ProblemError(f"interaction {term.first} x {term.second} contains NaN or infinite values")
            a, b = self.choice_of[term.first], self.choice_of[term.second]
            table = term.table[np.ix_(self._table_index(a), self._table_index(b))]
            if a == b:
                self.unary[a] = self.unary[a] + np.diag(table)
            elif self.counts[b] == 1:
                self.unary[a] = self.unary[a] + table[:, 0]
            elif self.counts[a] == 1:
                self.unary[b] = self.unary[b] + table[0, :]
            else:
                key, value = ((a, b), table) if a < b else ((b, a), table.T)
                self.pairs[key] = self.pairs.get(key, np.zeros_like(value)) + value
        self.constant = float(sum(self.unary[c][0] for c in range(len(self.choices)) if self.counts[c] == 1))

    def _tabulate_costs(self) -> None:
        spec = self.spec
        self.cells: list[Cell] = []
        self.constant_cost = fixed_cost(spec, self.metric)
        touched: set[int] = set()
        for n, layer in enumerate(spec.layers):
            out_c = None if layer.out_group is None else self.choice_of[f"prune:{spec.groups[layer.out_group].name}"]
            in_cs = [self.choice_of[f"prune:{spec.groups[g].name}"] for g in layer.in_groups]
            bits_c = self.choice_of[f"bits:{layer.name}"]
            axes = tuple(dict.fromkeys(c for c in (out_c, bits_c, *in_cs) if c is not None and self.counts[c] > 1))
            touched.update(axes)
            size = np.zeros(tuple(int(self.counts[a]) for a in axes), dtype=np.int64)
            for state in itertools.product(*(range(int(self.counts[a])) for a in axes)):
                picked = dict(zip(axes, state))

                def value(c: int | None, default: int, picked: dict[int, int] = picked) -> int:
                    if c is None:
                        return default
                    return self.choices[c].options[picked.get(c, 0)]

                kept_out = layer.out_channels - value(out_c, 0)
                kept_in = layer.in_channels - sum(value(c, 0) for c in in_cs)
                size[state] = layer_cost(spec, n, kept_out, kept_in, value(bits_c, 0), self.metric)
            if axes:
                self.cells.append(Cell(layer.name, n, axes, size))
            else:
                self.constant_cost += int(size[()])
        for c in self.free:
            if c not in touched:
                name = spec.groups[self.choices[c].owner].name
                self.cells.append(Cell(name, None, (c,), np.zeros(int(self.counts[c]), dtype=np.int64)))
        self.cells_of: dict[int, list[int]] = {c: [] for c in self.free}
        for k, cell in enumerate(self.cells):
            for a in cell.axes:
                self.cells_of[a].append(k)

    # --- evaluation -------------------------------------------------------------------------------

    def damages(self, index: np.ndarray) -> np.ndarray:
        """Damage of each choice vector (rows of ``index``), from the folded tables."""
        index = np.atleast_2d(index)
        total = np.full(index.shape[0], self.constant)
        for c in self.free:
            total += self.unary[c][index[:, c]]
        for (a, b), table in self.pairs.items():
            total += table[index[:, a], index[:, b]]
        return total

    @cached_property
    def _cost_lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every cell's cost table flattened into one array, and per cell its offset there, its
        axes (padded with a pseudo choice, always at option 0) and their C-order strides."""
        width = max((len(cell.axes) for cell in self.cells), default=1)
        pseudo = len(self.counts)
        axes = np.full((len(self.cells), width), pseudo, dtype=np.int64)
        strides = np.zeros((len(self.cells), width), dtype=np.int64)
        for k, cell in enumerate(self.cells):
            axes[k, : len(cell.axes)] = cell.axes
            strides[k, : len(cell.axes)] = [int(np.prod(cell.size.shape[i + 1 :])) for i in range(len(cell.axes))]
        flat = np.concatenate([cell.size.ravel() for cell in self.cells] + [np.zeros(0, dtype=np.int64)])
        offsets = np.cumsum([0] + [cell.size.size for cell in self.cells[:-1]], dtype=np.int64)[: len(self.cells)]
        return flat, offsets, axes, strides

    def costs(self, index: np.ndarray) -> np.ndarray:
        """True cost of each choice vector (rows of ``index``)."""
        index = np.atleast_2d(index)
        flat, offsets, axes, strides = self._cost_lookup
        padded = np.concatenate([index, np.zeros((index.shape[0], 1), dtype=index.dtype)], axis=1)
        states = (padded[:, axes] * strides).sum(axis=2)  # (rows, cells)
        return self.constant_cost + flat[offsets + states].sum(axis=1, dtype=np.int64)

    def in_units(self, unit: int) -> ChoiceModel:
        """The same model with every cell cost (and the constant cost) rounded up to whole ``unit`` s.

        A plan within ``budget // unit`` of the rounded model is within ``budget`` of this one.
        """
        rounded = copy.copy(self)
        rounded.__dict__.pop("_cost_lookup", None)  # the copy's tables differ
        rounded.cells = [replace(cell, size=-(-cell.size // unit)) for cell in self.cells]
        rounded.constant_cost = -(-self.constant_cost // unit)
        return rounded

    def smallest(self) -> np.ndarray:
        """The choice vector of least cost: most pruning, fewest bits everywhere."""
        return np.array([len(c.options) - 1 if c.kind == "prune" else 0 for c in self.choices], dtype=np.int64)

    def uncompressed(self) -> np.ndarray:
        """The choice vector that compresses nothing the options let go."""
        return np.array([c.uncompressed for c in self.choices], dtype=np.int64)

    # --- plans --------------------------------------------------------------------------------------

    def plan_of(self, index: Sequence[int]) -> Plan:
        """The plan of a choice vector: each group prunes its least important channels."""
        pruned: dict[str, tuple[int, ...]] = {}
        bits: dict[str, int] = {}
        for c, choice in enumerate(self.choices):
            value = choice.options[int(index[c])]
            if choice.kind == "bits":
                bits[self.spec.layers[choice.owner].name] = value
            else:
                group = self.spec.groups[choice.owner]
                pruned[group.name] = tuple(int(i) for i in group.prune_order()[:value])
        return Plan(pruned=pruned, bits={layer.name: bits[layer.name] for layer in self.spec.layers})

    def index_of(self, plan: Plan) -> np.ndarray:
        """The choice vector of a plan; a plan off the option grid is a :class:`ProblemError`."""
        plan.validate(self.spec)
        index = np.zeros(len(self.choices), dtype=np.int64)
        for c, choice in enumerate(self.choices):
            if choice.kind == "bits":
                name = self.spec.layers[choice.owner].name
                value = plan.bits[name]
                if value not in choice.options:
                    raise ProblemError(
                        f"plan gives layer {name!r} {value} bits; the options are {list(choice.options)}"
                    )
            else:
                group = self.spec.groups[choice.owner]
                pruned = plan.pruned.get(group.name, ())
                value = len(pruned)
                if value not in choice.options:
                    raise ProblemError(
                        f"plan prunes {value} channels of group {group.name!r}; the options are {list(choice.options)}"
                    )
                if set(pruned) != {int(i) for i in group.prune_order()[:value]}:
                    raise ProblemError(
                        f"plan prunes channels of group {group.name!r} other than its {value} least important ones"
                    )
            index[c] = choice.options.index(value)
        return index

    def damage_of_plan(self, plan: Plan) -> float:
        """The damage of a plan straight from the spec's measurements (no folded tables)."""
        self.index_of(plan)
        spec = self.spec
        position: dict[str, int] = {}
        total = 0.0
        for layer in spec.layers:
            b = plan.bits[layer.name]
            position[f"bits:{layer.name}"] = b - 1
            if layer.quant_damage.size:
                total += float(layer.quant_damage[b - 1])
        for group in spec.groups:
            if group.prune_options:
                j = group.prune_options.index(len(plan.pruned.get(group.name, ())))
                position[f"prune:{group.name}"] = j
                total += float(group.prune_damage[j])
        for term in spec.interactions:
            if term.first in position and term.second in position and term.table.size:
                total += float(term.table[position[term.first], position[term.second]])
        return total
