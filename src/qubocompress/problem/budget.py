"""The ``budget`` formulation: least damage (estimated or measured) under a hard budget on weight bits or BOPs.

Problem. One choice per channel group (prune 0 or one of its ``prune_options`` of least important
channels) and per layer (a bit-width from ``bit_options``); minimise the measured damage — Σ
``prune_damage`` + Σ ``quant_damage`` + Σ pairwise ``interactions`` (nats of calibration loss) —
subject to the plan's true cost (:meth:`Plan.weight_bits` or :meth:`Plan.bops`) ≤ the budget,
given as a ratio vs fp32 or as an absolute cost.

Why a lifted encoding. Layer n's cost is ``unit·bits·kept_out·kept_in``: the product of three
choices (its own bits, its output group's and its input group's pruning — pruning layer n removes
input channels of n+1). With one-hot choices the cost is cubic, and the squared slack penalty of
a hard budget would be of degree six. So every layer gets a *cell*: a one-hot block over the
joint states (out-pruning, bits, in-pruning) of the free choices its cost depends on
(:class:`~qubocompress.problem.choices.Cell`; a depthwise layer or one without an output group has
fewer axes, a layer with none is a constant). The cost is then linear in the state variables.

BQM (BINARY), with one penalty weight ``P`` (:attr:`BudgetFormulation.penalty`):

* variables ``w[<cell>|out_pruned=…,bits=…,in_pruned=…]`` (a group that no layer reads or writes
  gets a cell of its own, ``w[<group>|pruned=…]``) and binary slack bits ``slack[i]`` (worth 2^i
  units; binary, so every plan has exactly one encoding);
* damage: a choice's damage is linear on the smallest cell deciding it; an interaction table is
  linear on a cell deciding both choices (a layer's bits × its own groups, its input × output
  group), else quadratic between the two cells;
* one-hot: ``P·(Σ_s w[c, s] − 1)²`` per cell;
* consistency: cells deciding the same choice (a residual group is decided by every layer it
  touches) agree, ``(P/2)·Σ_o (A_o − B_o)²`` for consecutive such cells, ``A_o`` the sum of one
  cell's states that pick option o;
* budget: ``P·(Σ a_s w_s + Σ 2^i slack_i − spare)²``, ``a_s`` the state's cost in :attr:`unit` s
  (rounded up) above its cell's cheapest state, ``spare`` the budget in units (rounded down) left
  after every cell's cheapest state. Rounding makes the BQM's budget conservative (within it ⇒
  truly within the budget); the unit is the coarsest ``budget // k`` with which the certified
  optimum still fits, so the BQM's ground state is the true optimum.

``P`` is proven sufficient: the damage part's biases are shifted to be ≥ 0 (cell by cell, block by
block; no change for one-hot states), so its offset ``LB`` bounds it below over all binary states;
any broken constraint costs ≥ P; so with ``P > UB − LB`` (UB the optimum's damage) every
infeasible or inconsistent state lies above the optimum. The encoded feasible plans have energy
= damage (:meth:`BudgetFormulation.energy`, up to ~1e-10 relative float rounding of the penalty
terms).

Exact reference: a MILP on the same lifted linear model (:mod:`~qubocompress.problem.milp`),
solved by HiGHS with a time limit; :meth:`BudgetFormulation.exact_result` says whether it was
certified and the proven gap.

What simulated annealing makes of it (measured; see the issue report): nothing feasible. The budget
penalty is stiff: a move that changes a layer's cost by Δ units passes through a state paying about
``P·Δ²``, and because the optimum packs the budget tightly (its unused budget was 16–1300 bits of
0.3–0.5 Mbit on the synthetic VGG/ResNet specs), the exact unit is fine and Δ is tens to
thousands of units. SA freezes in the penalty landscape long before it sees the damage, whatever
the schedule (linear or geometric, 100–10,000 sweeps, β ranges from 1e-4/P to 1e4/E*: 0 feasible
reads out of 20 in every setting). :meth:`BudgetFormulation.polish` therefore turns reads into
plans: decode, repair into the budget, feasible steepest descent over 1- and 2-choice moves, and
an iterated local search from the best read (:mod:`~qubocompress.problem.local_search`).

Slack-free encodings (``encoding="unbalanced"`` or ``"lagrangian"``,
:mod:`~qubocompress.problem.encodings`) replace the slack bits and the squared budget by a
linear(-plus-quadratic) term in the unused budget; their ground state is not guaranteed to be the
optimum, so :meth:`BudgetFormulation.energy` and :meth:`BudgetFormulation.read_objectives` then
measure a plan by its damage (E* stays the MILP's), and the polish still guarantees the answer.
:meth:`BudgetFormulation.to_cqm` gives the problem as a constrained model (``hybrid-cqm``).
"""

from __future__ import annotations

import math
import numbers
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import dimod
import numpy as np

from qubocompress.errors import ProblemError
from qubocompress.problem.base import Formulation, Reference, Target
from qubocompress.problem.choices import ChoiceModel, Metric, fp32_cost, plan_cost, prune_options
from qubocompress.problem.encodings import (
    Encoding,
    Multiplier,
    budget_term_minimum,
    check_encoding,
    choice_cqm,
    lagrange_multiplier,
    unbalanced_weights,
)
from qubocompress.problem.local_search import MoveTables, descend_all, iterated_local_search_all, repair_all
from qubocompress.problem.milp import solve_budget_milp
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec

DEFAULT_BIT_OPTIONS = (2, 3, 4, 5, 6, 8)
DEFAULT_TIME_LIMIT = 60.0
# The automatic penalty is the proven sufficient weight (UB − LB) times 1 + this margin.
PENALTY_MARGIN = 0.05
# Rounds of "tighten the budget by what slipped over and solve again" against HiGHS's tolerance.
MAX_MILP_ROUNDS = 4
# Iterated local search of :meth:`BudgetFormulation.polish`: chains per free choice and rounds per
# chain (measured on the synthetic VGG/ResNet budget instances; a third chain per choice put the
# built-in ResNet-20's hardest budget instance at 0.99 per read on its weakest seeds, was 0.97:
# docs/benchmarks.md §3.2.7); a kick changes this share of the free choices, at least MIN_KICK
# of them (measured on that instance: §3.2.6).
DEFAULT_CHAINS_PER_CHOICE = 3
DEFAULT_CHAIN_LENGTH = 40
KICK_SHARE = 0.25
MIN_KICK = 5
# Simulated annealing options for this formulation (see recommended_sampler_options).
SA_OPTIONS = {"num_reads": 20, "num_sweeps": 100}
# ... and for the slack-free encodings: sweeps (the Lagrangian BQM is sparse, so a sweep is cheap),
# on a geometric schedule from β = HOT_BETA / P to the β at which a rise of COLD_SHARE of E* is
# accepted with probability 1 / 100 (measured on the built-in instances: .drafts/encodings.md).
SLACK_FREE_SWEEPS = {"unbalanced": 100, "lagrangian": 1000}
HOT_BETA = 1e-3
COLD_SHARE = 0.01
# Rows of the dense budget coupling matrix (slack, unbalanced) computed at a time: bounds the temporaries.
DENSE_ROWS = 1024


@dataclass(frozen=True)
class Variable:
    """What one BQM variable means.

    Attributes:
        kind: ``"state"`` (cell ``cell`` is in joint state ``state``) or ``"slack"``.
        cell: index into :attr:`BudgetFormulation.cells` (-1 for slack).
        state: row of the cell's ``states`` (the slack bit's position for slack).
        weight: units of budget the slack bit stands for (0 for states).
    """

    kind: Literal["state", "slack"]
    cell: int
    state: int
    weight: int = 0


@dataclass(frozen=True)
class ExactResult:
    """The reference optimum of a budget problem.

    Attributes:
        plan: the best plan found; truly within the budget.
        objective: its damage (nats), equal to its BQM energy.
        certified: True when it is proven optimal: the solver proved it, or its proven lower bound
            reaches the objective.
        gap: proven relative gap ``(objective − bound) / |objective|`` (0 when certified).
        bound: proven lower bound of the optimal damage.
        seconds: wall time of the solve.
        method: how it was found.
    """

    plan: Plan
    objective: float
    certified: bool
    gap: float
    bound: float
    seconds: float
    method: str

    @classmethod
    def of(cls, plan: Plan, objective: float, certified: bool, bound: float, start: float, method: str) -> ExactResult:
        """The result of a solve begun at ``time.perf_counter()`` = ``start``: the bound is the
        objective when certified, else at most the objective; the gap follows from both. A bound
        that reaches the objective proves it optimal (certified, gap 0; also at objective 0)."""
        certified = certified or bound >= objective
        bound = objective if certified else bound
        gap = 0.0 if certified else ((objective - bound) / abs(objective) if objective else math.inf)
        return cls(plan, objective, certified, float(gap), float(bound), time.perf_counter() - start, method)


def default_bit_options(spec: CompressionSpec) -> tuple[int, ...]:
    """(2, 3, 4, 5, 6, 8) within the spec's ``min_bits..b_max``, plus ``b_max`` itself."""
    return tuple(sorted({b for b in DEFAULT_BIT_OPTIONS if spec.min_bits <= b <= spec.b_max} | {spec.b_max}))


def check_bit_options(spec: CompressionSpec, bit_options: Sequence[int] | None) -> tuple[int, ...]:
    """The bit options sorted and deduplicated (default :func:`default_bit_options`); bad ones are an error."""
    if bit_options is None:
        return default_bit_options(spec)
    try:
        values = list(bit_options)
    except TypeError as exc:
        raise ProblemError(f"bit options must be integers, got {bit_options!r}") from exc
    if any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in values):
        raise ProblemError(f"bit options must be integers, got {bit_options!r}")
    options = tuple(sorted({int(b) for b in values}))
    if not options:
        raise ProblemError("bit options must not be empty")
    if options[0] < spec.min_bits or options[-1] > spec.b_max:
        raise ProblemError(
            f"bit options {list(options)} must lie in {spec.min_bits}..{spec.b_max} (the spec's min_bits..b_max)"
        )
    return options


def smallest_plan(spec: CompressionSpec, bit_options: Sequence[int] | None = None) -> Plan:
    """The smallest plan on offer: every group at its largest prune option, every layer at the fewest bits."""
    bits = check_bit_options(spec, bit_options)[0]
    pruned = {
        group.name: tuple(int(i) for i in group.prune_order()[: prune_options(spec, g)[-1]])
        for g, group in enumerate(spec.groups)
    }
    return Plan(pruned=pruned, bits={layer.name: bits for layer in spec.layers})


def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -(-a // b)


def bqm_from_dense(
    linear: np.ndarray, upper: np.ndarray, offset: float, labels: Sequence[str]
) -> dimod.BinaryQuadraticModel:
    """A BINARY BQM from linear biases and a dense strictly upper triangular coupling matrix (its
    zero entries are no couplings), labelled ``labels`` in order: no index arrays, so its peak is the
    matrix plus the BQM (dimod keeps each coupling twice, 16 bytes each)."""
    bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(linear, ([], [], []), offset, dimod.BINARY)
    bqm.add_quadratic_from_dense(upper)
    bqm.relabel_variables(dict(enumerate(labels)))
    return bqm


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)


class BudgetFormulation(Formulation):
    """Minimise the measured damage subject to a hard budget (see the module docstring).

    Args:
        spec: the problem; groups offer ``prune_options`` with ``prune_damage`` (a group without
            options is never pruned); layers carry ``quant_damage``; ``interactions`` add pairwise terms.
        ratio: the budget as a compression ratio vs fp32 (> 1): cost ≤ fp32 cost / ratio.
        absolute: the budget as an absolute cost (weight bits, or BOPs per sample; > 0).
        metric: ``"bits"`` (weight memory) or ``"bops"`` (bit operations per sample).
        bit_options: the bit-widths on offer (default :func:`default_bit_options`).
        penalty: weight of every constraint penalty of the BQM; None = the proven sufficient
            weight plus 5 %. A smaller one may make infeasible samples the ground state.
        time_limit: seconds the exact MILP may take (:meth:`exact_result` says if it was certified).
        encoding: how the BQM encodes the budget (:mod:`~qubocompress.problem.encodings`):
            ``"slack"`` (exact), ``"unbalanced"`` or ``"lagrangian"`` (no slack bits; heuristic).
        budget_weights: ``(quadratic, linear)`` weights of the budget term of a slack-free encoding
            (nats per unit², per unit); None = :attr:`budget_weights`' rule.
    """

    name = "budget"
    constrained = True
    free_counts = False

    def __init__(
        self,
        spec: CompressionSpec,
        ratio: float | None = None,
        absolute: float | None = None,
        metric: Metric = "bits",
        bit_options: Sequence[int] | None = None,
        penalty: float | None = None,
        time_limit: float = DEFAULT_TIME_LIMIT,
        encoding: str = "slack",
        budget_weights: Sequence[float] | None = None,
    ) -> None:
        self.encoding: Encoding = check_encoding(encoding)
        if budget_weights is not None:
            weights = [_finite(w) for w in budget_weights]
            if encoding == "slack" or len(weights) != 2 or any(w is None or w < 0 for w in weights):
                raise ProblemError(
                    f"budget weights are (quadratic, linear) >= 0 of a slack-free encoding, got {budget_weights!r}"
                )
            self._budget_weights: tuple[float, float] | None = (float(weights[0]), float(weights[1]))  # type: ignore[arg-type]
        else:
            self._budget_weights = None
        if metric not in ("bits", "bops", "file"):
            raise ProblemError(f"budget metric must be 'bits', 'bops' or 'file', got {metric!r}")
        if (ratio is None) == (absolute is None):
            raise ProblemError("give the budget either as a ratio vs fp32 or as an absolute cost, not both or neither")
        if penalty is not None and not (_finite(penalty) or 0) > 0:
            raise ProblemError(f"penalty must be a finite number > 0, got {penalty}")
        if not (_finite(time_limit) or 0) > 0:
            raise ProblemError(f"time_limit must be a positive number of seconds, got {time_limit}")
        names = [g.name for g in spec.groups]
        if len(set(names)) != len(names):
            raise ProblemError(f"channel group names in the spec of {spec.model!r} must be unique")
        self.spec = spec
        self.metric: Metric = metric
        self.bit_options = check_bit_options(spec, bit_options)
        self.fp32_cost = fp32_cost(spec, metric)
        if ratio is not None:
            if not (_finite(ratio) or 0) > 1.0:
                raise ProblemError(f"budget ratio must be a finite number > 1 (e.g. 16 for 16x smaller), got {ratio}")
            self.budget = int(math.floor(self.fp32_cost / float(ratio)))
        else:
            if not (_finite(absolute) or 0) > 0:
                raise ProblemError(f"absolute budget must be a finite number > 0 ({metric}), got {absolute}")
            self.budget = int(math.floor(float(absolute)))
        self.ratio = None if ratio is None else float(ratio)
        self.absolute = None if absolute is None else float(absolute)
        self._penalty = None if penalty is None else float(penalty)
        self.time_limit = float(time_limit)
        self.model = ChoiceModel(spec, self.bit_options, metric)
        self.cells = self.model.cells
        self._check_reachable()

    def _check_reachable(self) -> None:
        cost = int(self.model.costs(self.model.smallest())[0])
        if cost <= self.budget:
            return
        spec = self.spec
        shares = {round(100 * prune_options(spec, g)[-1] / group.size) for g, group in enumerate(spec.groups)}
        if shares <= {0}:
            pruning = "no filters pruned (no prune options on offer)"
        elif len(shares) == 1:
            pruning = f"{shares.pop()}% of filters pruned"
        else:
            pruning = f"up to {max(shares)}% of each group's filters pruned"
        what = f"all layers at {self.bit_options[0]} bits, {pruning}"
        smaller = "fewer BOPs than fp32" if self.metric == "bops" else "smaller than fp32"
        best = math.floor(10 * self.fp32_cost / max(cost, 1)) / 10  # down: a ratio that can be asked for
        if self.ratio is not None:
            raise ProblemError(
                f"budget {self.ratio:g}x is not reachable: the smallest plan on offer is {best:.1f}x {smaller} ({what})"
            )
        unit = {"bits": "bits", "bops": "BOPs", "file": "bits of file"}[self.metric]
        raise ProblemError(
            f"budget of {self.absolute:g} {unit} is not reachable: the smallest plan on offer needs {cost} {unit}, "
            f"{best:.1f}x {smaller} ({what})"
        )

    # --- plans: damage, cost, feasibility ---------------------------------------------------------

    def objective(self, plan: Plan) -> float:
        """The damage of a plan (nats): Σ quant_damage + Σ prune_damage + Σ interaction terms.

        Evaluated straight from the spec's measurements, independently of the BQM; a plan off the
        option grid is a :class:`ProblemError`.
        """
        return self.model.damage_of_plan(plan)

    def cost(self, plan: Plan) -> int:
        """True cost of a plan in the formulation's metric (weight bits or BOPs per sample)."""
        return plan_cost(self.spec, plan, self.metric)

    def within_rounded_budget(self, plan: Plan) -> bool:
        """True when the plan fits the BQM's budget (costs rounded up to :attr:`unit`).

        Such a plan is :meth:`feasible`, and its :meth:`energy` is its damage; a feasible plan
        that the rounding pushes over pays the budget penalty in the BQM.
        """
        index = self.model.index_of(plan)[None, :]
        return bool(self.model.in_units(self.unit).costs(index)[0] <= self.budget // self.unit)

    def feasible(self, plan: Plan) -> bool:
        """True when the plan is on the option grid and its true cost is within the budget."""
        try:
            self.model.index_of(plan)
        except ProblemError:
            return False
        return self.cost(plan) <= self.budget

    # --- exact reference ------------------------------------------------------------------------

    @classmethod
    def for_target(cls, spec: CompressionSpec, target: Target) -> BudgetFormulation:
        """A hard budget of ``target.absolute``, else of fp32 cost / ``target.ratio``."""
        if target.beta is not None:
            raise ProblemError("--beta weighs the paper's energy; the budget formulation has no beta")
        ratio = target.ratio if target.absolute is None else None
        return cls(
            spec,
            ratio=ratio,
            absolute=target.absolute,
            metric=target.metric,
            time_limit=target.time_limit,
            encoding=target.budget_encoding,
        )

    @classmethod
    def from_parameters(cls, spec: CompressionSpec, params: Mapping[str, Any]) -> BudgetFormulation:
        return cls(
            spec,
            ratio=None if params["ratio"] is None else float(params["ratio"]),
            absolute=None if params["absolute"] is None else float(params["absolute"]),
            metric=params["metric"],
            bit_options=[int(b) for b in params["bit_options"]],
            penalty=float(params["penalty"]),
            time_limit=float(params["time_limit"]),
            encoding=params.get("encoding", "slack"),
            budget_weights=params.get("budget_weights"),
        )

    def parameters(self) -> dict[str, Any]:
        """The budget's settings, its resolved penalty and (slack-free encodings) budget weights
        included (so the rebuilt BQM does not depend on the MILP's bounds)."""
        params = {
            "name": self.name,
            "ratio": self.ratio,
            "absolute": self.absolute,
            "metric": self.metric,
            "bit_options": list(self.bit_options),
            "penalty": self.penalty,
            "time_limit": self.time_limit,
            "encoding": self.encoding,
        }
        if self.encoding != "slack":
            params["budget_weights"] = list(self.budget_weights)
        return params

    def describe(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"budget": self.budget, "penalty": self.penalty, "encoding": self.encoding}
        if self.encoding != "slack":
            quadratic, linear = self.budget_weights
            figures.update(budget_quadratic_weight=quadratic, budget_linear_weight=linear, unit=self.unit)
        return figures

    def reference(self) -> Reference:
        """HiGHS's MILP optimum (:meth:`exact_result`), certified or with its proven gap."""
        result = self.exact_result()
        plan, energy = self.exact()
        return Reference(plan, energy, result.certified, result.gap, result.method, result.seconds)

    def best_plan(self, sampleset: dimod.SampleSet) -> tuple[Plan | None, float | None, float]:
        """:meth:`best_feasible`: an infeasible read is never returned."""
        return self.best_feasible(sampleset)

    def exact(self) -> tuple[Plan, float]:
        """The reference optimum as ``(plan, energy)``, its :meth:`energy`.

        With the slack encoding that is the BQM energy of its encoding: its damage
        (:attr:`ExactResult.objective`) up to float rounding of the penalty terms (~1e-10
        relative), computed from the BQM so that a solver's read of the same plan (one encoding per
        plan: the slack is binary) has exactly the same energy. Slack-free: its damage.
        """
        result = self.exact_result()
        return result.plan, self.energy(result.plan)

    def exact_result(self) -> ExactResult:
        """The optimum of the constrained problem by MILP (:mod:`~qubocompress.problem.milp`), cached."""
        return self._exact

    @cached_property
    def _exact(self) -> ExactResult:
        start = time.perf_counter()
        budget = self.budget
        first_bound = None
        method = "MILP (HiGHS): one-hot choices, per-layer joint cost states, linearised interaction tables"
        for _ in range(MAX_MILP_ROUNDS):
            remaining = self.time_limit - (time.perf_counter() - start)
            outcome = solve_budget_milp(self.model, budget, remaining)
            first_bound = outcome.bound if first_bound is None else first_bound
            index = outcome.index
            if index is None:  # no incumbent in time: the best plan local search finds, uncertified
                index = self._searched_optimum()
                method += f"; no plan within {self.time_limit:g} s, so the incumbent is from local search"
                break
            excess = int(self.model.costs(index)[0]) - self.budget
            if excess <= 0:
                break
            budget -= excess  # HiGHS's feasibility tolerance let the plan slip over: tighten, solve again
        else:
            index = self._searched_optimum()
            method += "; its plans kept slipping over the budget, so the incumbent is from local search"
        plan = self.model.plan_of(index)
        objective = self.objective(plan)
        # Only the first round's bound holds for the true budget (later rounds solved tighter ones).
        certified = outcome.index is not None and outcome.proven and budget == self.budget
        return ExactResult.of(plan, objective, certified, first_bound, start, method)

    def _searched_optimum(self) -> np.ndarray:
        """A good plan within the budget from local search alone (true costs, seed 0)."""
        tables = MoveTables(self.model)
        start = repair_all(self.model, self.model.uncompressed()[None, :], self.budget, tables)
        rounds = self.chain_count() * DEFAULT_CHAIN_LENGTH
        rng = np.random.default_rng(0)
        return iterated_local_search_all(self.model, start, self.budget, rounds, self.default_kick, [rng], tables)[0]

    # --- the BQM ----------------------------------------------------------------------------------

    @cached_property
    def unit(self) -> int:
        """Cost unit of the BQM's budget (bits or BOPs): coarse, yet the optimum still fits.

        Every joint state's cost is rounded up to whole units and the budget down, so a sample
        within the BQM's budget is truly within the budget. The unit is the first ``budget // k``,
        for k = 1, 2, … (k grows by 1 % per step beyond 100), with which the reference optimum
        (:meth:`exact_result`) still fits after rounding, so the BQM's ground state is the true
        optimum; unit 1 always qualifies (costs are integers).
        """
        index = self.model.index_of(self.exact_result().plan)[None, :]
        sizes = np.array([int(cell.size.ravel()[cell.state_of(index)][0]) for cell in self.cells], dtype=np.int64)
        k = 1
        while True:
            unit = max(self.budget // k, 1)
            rounded = int(_ceil_div(sizes, unit).sum()) + _ceil_div(self.model.constant_cost, unit)
            if rounded <= self.budget // unit or unit == 1:
                return unit
            k = max(k + 1, int(k * 1.01))

    @cached_property
    def _layout(self) -> tuple[np.ndarray, list[int], int]:
        """(first variable of each cell, slack weights in units, capacity in units)."""
        starts = np.cumsum([0] + [cell.size.size for cell in self.cells])
        units = [_ceil_div(cell.size.ravel(), self.unit) for cell in self.cells]
        capacity = self.budget // self.unit - _ceil_div(self.model.constant_cost, self.unit)
        spare = int(capacity - sum(int(u.min()) for u in units))
        slack = [2**i for i in range(spare.bit_length())] if self.encoding == "slack" else []
        return starts, slack, int(capacity)

    @cached_property
    def _spare(self) -> int:
        """Units of budget left after every cell's cheapest state (the ``spare`` of the BQM's budget)."""
        capacity = self._layout[2]
        return int(capacity - sum(int(_ceil_div(cell.size.ravel(), self.unit).min()) for cell in self.cells))

    @cached_property
    def variables(self) -> dict[str, Variable]:
        """BQM label -> what it means, in the BQM's variable order (cell states, then slack bits)."""
        spec = self.spec
        result: dict[str, Variable] = {}
        for k, cell in enumerate(self.cells):
            layer = spec.layers[cell.layer] if cell.layer is not None else None
            for s, row in enumerate(cell.states):
                parts = []
                for c, o in zip(cell.axes, row):
                    choice = self.model.choices[c]
                    value = choice.options[o]
                    if choice.kind == "bits":
                        parts.append(f"bits={value}")
                    elif layer is None:
                        parts.append(f"pruned={value}")
                    elif layer.out_group == choice.owner:
                        parts.append(f"out_pruned={value}")
                    else:
                        parts.append(f"in_pruned={value}")
                result[f"w[{cell.name}|{','.join(parts)}]"] = Variable("state", k, s)
        for i, weight in enumerate(self._layout[1]):
            result[f"slack[{i}]"] = Variable("slack", -1, i, weight)
        return result

    @property
    def num_variables(self) -> int:
        """Number of BQM variables."""
        return len(self.variables)

    @property
    def num_interactions(self) -> int:
        """Number of nonzero quadratic terms of the BQM."""
        return self.bqm.num_interactions

    @cached_property
    def _objective_terms(self) -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray], float]:
        """The damage over the state variables: (linear biases, cross-cell blocks, offset).

        A choice's damage sits on the smallest cell that decides it (its home); an interaction
        table on the smallest cell deciding both choices when there is one (it is linear there),
        else on the block between the two home cells. Every cell's linear biases and every block
        are shifted so that their minimum is 0, the shifts going into the offset: with exactly one
        state on per cell that changes nothing, and it makes the offset a lower bound of the damage
        part over *all* binary states (see :attr:`penalty`).
        """
        model = self.model
        starts = self._layout[0]
        linear = np.zeros(int(starts[-1]))
        blocks: dict[tuple[int, int], np.ndarray] = {}

        def smallest(cells: list[int]) -> int:
            return min(cells, key=lambda k: self.cells[k].size.size)

        def column(k: int, c: int) -> np.ndarray:
            cell = self.cells[k]
            return cell.states[:, cell.axes.index(c)]

        home = {c: smallest(model.cells_of[c]) for c in model.free}
        for c in model.free:
            k = home[c]
            linear[starts[k] : starts[k + 1]] += model.unary[c][column(k, c)]
        for (a, b), table in model.pairs.items():
            shared = [k for k in model.cells_of[a] if b in self.cells[k].axes]
            if shared:
                k = smallest(shared)
                linear[starts[k] : starts[k + 1]] += table[column(k, a), column(k, b)]
                continue
            ka, kb = home[a], home[b]
            block = table[np.ix_(column(ka, a), column(kb, b))]
            if ka > kb:
                ka, kb, block = kb, ka, block.T
            blocks[(ka, kb)] = blocks.get((ka, kb), 0.0) + block
        offset = model.constant
        for k in range(len(self.cells)):
            lowest = float(linear[starts[k] : starts[k + 1]].min())
            linear[starts[k] : starts[k + 1]] -= lowest
            offset += lowest
        for key, block in blocks.items():
            lowest = float(block.min())
            blocks[key] = block - lowest
            offset += lowest
        return linear, blocks, offset

    @cached_property
    def penalty(self) -> float:
        """Weight ``P`` of every constraint penalty (one-hot, consistency, budget).

        Proven sufficient when ``P > UB − LB``: ``UB`` is the damage of the reference optimum and
        ``LB`` the offset of the damage part, which lower-bounds it over all binary states (all
        its biases are ≥ 0, see :attr:`_objective_terms`). A sample that breaks any constraint pays
        at least ``P``: a cell without exactly one state on ``P·(m − 1)² ≥ P``, two disagreeing
        cells ``(P/2)·2``, a mismatch of the budget equation ``P·m² ≥ P`` (m a whole number of
        units); so its energy is ``≥ LB + P > UB ≥`` the optimum, and the ground state is a
        consistent plan within the budget: the optimum. The automatic value is ``(UB − LB)``
        plus 5 %. A slack-free encoding's budget term ``q·m² + l·m`` adds its value at the optimum
        to ``UB`` and its least value (:func:`~qubocompress.problem.encodings.budget_term_minimum`)
        to ``LB``: then every broken one-hot or consistency constraint still lies above the
        encoded optimum (the budget itself is no longer enforced).
        """
        if self._penalty is not None:
            return self._penalty
        upper = self.exact_result().objective
        lower = self._objective_terms[2]
        if self.encoding != "slack":
            quadratic, linear = self.budget_weights
            index = self.model.index_of(self.exact_result().plan)[None, :]
            m = float(self.model.in_units(self.unit).costs(index)[0] - self.budget // self.unit)
            upper += quadratic * m * m + linear * m
            lower += budget_term_minimum(quadratic, linear, self._spare)
        spread = max(upper - lower, 0.0)
        return spread * (1 + PENALTY_MARGIN) + 1e-9 * max(1.0, abs(upper))

    @cached_property
    def multiplier(self) -> Multiplier:
        """The budget's Lagrange multiplier on the cost-rounded model, by bisection
        (:func:`~qubocompress.problem.encodings.lagrange_multiplier`; γ in nats per :attr:`unit`)."""
        return lagrange_multiplier(self.model.in_units(self.unit), self.budget // self.unit, self.time_limit)

    @cached_property
    def budget_weights(self) -> tuple[float, float]:
        """``(q, l)`` of the budget term ``q·m² + l·m``, ``m = Σ a·w − spare`` in units
        (:mod:`~qubocompress.problem.encodings`): slack ``(P, 0)``; unbalanced ``(λ₂, λ₁)`` from
        :func:`~qubocompress.problem.encodings.unbalanced_weights` of γ; lagrangian ``(0, γ)``."""
        if self._budget_weights is not None:
            return self._budget_weights
        if self.encoding == "slack":
            return self.penalty, 0.0
        gamma = self.multiplier.gamma
        if self.encoding == "lagrangian":
            return 0.0, gamma
        linear, quadratic = unbalanced_weights(gamma, self._spare)
        return quadratic, linear

    @cached_property
    def bqm(self) -> dimod.BinaryQuadraticModel:
        """The budget problem as a BINARY BQM (module docstring); its ground state is the optimum.

        Built from arrays: the damage's cross-cell blocks and the one-hot and consistency penalties
        are sparse (:meth:`_sparse_couplings`); the slack and unbalanced budget terms couple every
        pair of states that cost more than their cell's cheapest, so those BQMs are dense
        (``n(n − 1)/2`` couplings, about 24·n² bytes to build; a lagrangian one stays sparse).
        """
        starts, weights, _ = self._layout
        count = int(starts[-1])
        total = count + len(weights)
        penalty = self.penalty
        quadratic_weight, linear_weight = self.budget_weights
        damage_linear, _, offset = self._objective_terms
        linear = np.zeros(total)
        linear[:count] = damage_linear
        # budget: q·m² + l·m, m = Σ a·v − spare, a = a cell state's cost in units above the cell's
        # cheapest state (with one state per cell this is the cost in units minus a constant), or a
        # slack weight; slack: q = P, l = 0
        units = [_ceil_div(cell.size.ravel(), self.unit) for cell in self.cells]
        spare = float(self._spare)
        a = np.concatenate([u - u.min() for u in units] + [np.array(weights, dtype=np.int64)]).astype(np.float64)
        linear += quadratic_weight * (a * a - 2.0 * spare * a) + linear_weight * a
        offset += quadratic_weight * spare**2 - linear_weight * spare
        for k in range(len(self.cells)):  # one-hot: P·(Σ w − 1)²
            linear[starts[k] : starts[k + 1]] -= penalty
            offset += penalty
        for c in self.model.free:  # consistency: (P/2)·Σ_o (A_o − B_o)², linear part
            for pair in zip(self.model.cells_of[c], self.model.cells_of[c][1:]):
                for k in pair:
                    linear[starts[k] : starts[k + 1]] += penalty / 2.0
        rows, cols, values = self._sparse_couplings()
        labels = list(self.variables)
        if not quadratic_weight:
            return dimod.BinaryQuadraticModel.from_numpy_vectors(
                linear, (rows, cols, values), offset, dimod.BINARY, variable_order=labels
            )
        dense = np.empty((total, total))
        for first in range(0, total, DENSE_ROWS):  # 2q·a_i·a_j for i < j, a block of rows at a time
            band = slice(first, min(first + DENSE_ROWS, total))
            dense[band] = 2.0 * quadratic_weight * np.triu(np.outer(a[band], a), first + 1)
        dense[rows, cols] += values
        return bqm_from_dense(linear, dense, offset, labels)

    def _sparse_couplings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The BQM's couplings but the budget term's, as ``(rows, cols, values)`` (zeros dropped):
        the damage's cross-cell blocks, the one-hot penalties ``2P`` within each cell and the
        consistency penalties ``±P``, summed block by block of cells (a cell's block with itself
        upper triangular; cells deciding a choice are in ascending order, so every block lies above
        the diagonal). Blocks come in (row cell, column cell) order, so that each coupling lands at
        the end of both variables' neighbourhoods in dimod."""
        starts = self._layout[0]
        penalty = self.penalty
        blocks = {(k, k): 2.0 * penalty * np.triu(np.ones((n, n)), 1) for k, n in enumerate(np.diff(starts))}
        blocks.update((key, block.copy()) for key, block in self._objective_terms[1].items())
        for c in self.model.free:
            for k1, k2 in zip(self.model.cells_of[c], self.model.cells_of[c][1:]):
                o1 = self.cells[k1].states[:, self.cells[k1].axes.index(c)]
                o2 = self.cells[k2].states[:, self.cells[k2].axes.index(c)]
                for k, o in ((k1, o1), (k2, o2)):
                    blocks[(k, k)] += penalty * np.triu(o[:, None] == o[None, :], 1)
                cross = -penalty * (o1[:, None] == o2[None, :])
                blocks[(k1, k2)] = blocks[(k1, k2)] + cross if (k1, k2) in blocks else cross
        rows, cols, values = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)], [np.zeros(0)]
        for ka, kb in sorted(blocks):
            block = blocks[(ka, kb)]
            i, j = np.nonzero(block)
            rows.append((starts[ka] + i).astype(np.int32))
            cols.append((starts[kb] + j).astype(np.int32))
            values.append(block[i, j])
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)

    # --- samples <-> plans --------------------------------------------------------------------------

    def _sample_matrix(self, samples: Any) -> np.ndarray:
        """Rows of 0/1 values in the BQM's variable order, from a SampleSet, a mapping or a list of them."""
        labels = list(self.variables)
        if isinstance(samples, dimod.SampleSet):
            try:
                positions = [samples.variables.index(v) for v in labels]
            except ValueError as exc:
                raise ProblemError(f"the sample set lacks variables of the budget formulation: {exc}") from exc
            return np.asarray(samples.record.sample[:, positions], dtype=np.int64)
        try:
            if isinstance(samples, Mapping):
                return np.array([[int(samples[v]) for v in labels]], dtype=np.int64)
            return np.array([[int(s[v]) for v in labels] for s in samples], dtype=np.int64)
        except KeyError as exc:
            raise ProblemError(f"sample lacks variable {exc.args[0]!r} of the budget formulation") from exc

    def _decode_rows(self, values: np.ndarray) -> np.ndarray:
        """Choice vectors voted for by the cells of each sample row.

        Every cell state that is on votes for its option of each choice it decides; a choice
        takes its most voted option, a tie the least compressing of the tied ones, and no vote at
        all the uncompressed option. A consistent sample (one state per cell, cells agreeing)
        decodes to exactly the plan it encodes.
        """
        model = self.model
        starts = self._layout[0]
        rows = values.shape[0]
        index = np.tile(model.uncompressed(), (rows, 1))
        votes = {c: np.zeros((rows, model.counts[c])) for c in model.free}
        for k, cell in enumerate(self.cells):
            on = values[:, starts[k] : starts[k + 1]].astype(np.float64)
            for axis, c in enumerate(cell.axes):
                one_hot = np.eye(model.counts[c])[cell.states[:, axis]]
                votes[c] += on @ one_hot
        for c in model.free:
            order = np.arange(model.counts[c])
            if model.choices[c].kind == "bits":  # prefer more bits on ties: scan from the top
                order = order[::-1]
            tally = votes[c][:, order]
            best = order[np.argmax(tally, axis=1)]
            index[:, c] = np.where(tally.max(axis=1) > 0, best, model.choices[c].uncompressed)
        return index

    def decode(self, sample: Mapping[str, int]) -> Plan:
        """The plan a sample stands for (always some plan on the grid; see :meth:`is_feasible`)."""
        return self.model.plan_of(self._decode_rows(self._sample_matrix(sample))[0])

    def _encode_rows(self, index: np.ndarray) -> np.ndarray:
        """0/1 rows in the BQM's variable order for choice vectors, slack set to the spare units."""
        starts = self._layout[0]
        values = np.zeros((index.shape[0], len(self.variables)), dtype=np.int8)
        for k, cell in enumerate(self.cells):
            values[np.arange(index.shape[0]), starts[k] + cell.state_of(index)] = 1
        return self._fill_slack(values)

    def _fill_slack(self, values: np.ndarray) -> np.ndarray:
        """``values`` (rows in the BQM's order) with the slack bits set to the spare units of their states."""
        starts, weights, capacity = self._layout
        if weights:
            units = np.concatenate([_ceil_div(cell.size.ravel(), self.unit) for cell in self.cells])
            used = values[:, : starts[-1]].astype(np.int64) @ units
            spare = np.clip(capacity - used, 0, sum(weights))
            for i in range(len(weights)):
                values[:, starts[-1] + i] = (spare >> i) & 1
        return values

    # --- the constrained model ----------------------------------------------------------------------

    def to_cqm(self) -> dimod.ConstrainedQuadraticModel:
        """The budget problem as a CQM over the BQM's cell-state variables (no slack, no penalties).

        Objective: the damage (the BQM's damage part); one discrete constraint per cell; cells
        deciding the same choice agree (equalities); the true cost ≤ the budget (an inequality,
        unrounded): its feasible optimum is :meth:`exact_result`'s
        (:func:`~qubocompress.problem.encodings.choice_cqm`).
        """
        starts = self._layout[0]
        names = list(self.variables)
        labels = [names[starts[k] : starts[k + 1]] for k in range(len(self.cells))]
        linear, blocks, offset = self._objective_terms
        return choice_cqm(self.model, labels, linear, blocks, offset, self.budget)

    def samples_from_states(self, sampleset: dimod.SampleSet) -> dimod.SampleSet:
        """Reads over the cell states (a CQM solver's answer) as reads of :attr:`bqm`: the states as
        they are, the slack bits (slack encoding) set to the spare units; energies from the BQM."""
        starts = self._layout[0]
        names = list(self.variables)
        try:
            positions = [sampleset.variables.index(v) for v in names[: starts[-1]]]
        except ValueError as exc:
            raise ProblemError(f"the reads lack cell states of the budget formulation: {exc}") from exc
        values = np.zeros((len(sampleset.record), len(names)), dtype=np.int8)
        values[:, : starts[-1]] = sampleset.record.sample[:, positions]
        return dimod.SampleSet.from_samples_bqm(
            (self._fill_slack(values), names),
            self.bqm,
            info=dict(sampleset.info),
            num_occurrences=sampleset.record.num_occurrences,
        )

    def encode(self, plan: Plan) -> dict[str, int]:
        """The sample of a plan on the grid: its cells' states, slack = spare budget units (clipped)."""
        row = self._encode_rows(self.model.index_of(plan)[None, :])[0]
        return dict(zip(self.variables, row.tolist()))

    def energy(self, plan: Plan) -> float:
        """The energy a plan is measured by (what :meth:`reference` and :meth:`read_objectives` give).

        Slack encoding: the BQM energy of :meth:`encode` (plan), its damage when it fits the BQM's
        rounded budget. Slack-free encodings: its damage (nats), plus :attr:`penalty` when it is
        over the budget; its BQM energy adds the budget term, which depends on the plan's cost, so
        plans are ranked by their damage, not by their BQM energy.
        """
        if self.encoding == "slack":
            return float(self.bqm.energy(self.encode(plan)))
        return self.objective(plan) + (0.0 if self.feasible(plan) else self.penalty)

    def read_objectives(self, sampleset: dimod.SampleSet) -> np.ndarray:
        """Per record row, the value compared with :meth:`reference`'s energy.

        Slack encoding: the BQM energies (exact: within the budget they are the damage, and any
        read below ``E*`` would break the proof of :attr:`penalty`). Slack-free encodings: a
        feasible read's damage, ``inf`` for an infeasible one.
        """
        if self.encoding == "slack":
            return np.asarray(sampleset.record.energy, dtype=np.float64)
        values = self._sample_matrix(sampleset)
        damages = self.model.damages(self._decode_rows(values))
        return np.where(self._feasible_rows(values), damages, np.inf)

    def is_feasible(self, sample: Mapping[str, int]) -> bool:
        """True when the sample encodes a plan consistently and that plan is truly within the budget."""
        return bool(self._feasible_rows(self._sample_matrix(sample))[0])

    def feasible_reads(self, sampleset: dimod.SampleSet) -> np.ndarray:
        """Per record row of ``sampleset``: True when it encodes a plan consistently within the budget."""
        return self._feasible_rows(self._sample_matrix(sampleset))

    def _feasible_rows(self, values: np.ndarray) -> np.ndarray:
        index = self._decode_rows(values)
        count = int(self._layout[0][-1])
        consistent = np.all(values[:, :count] == self._encode_rows(index)[:, :count], axis=1)
        return consistent & (self.model.costs(index) <= self.budget)

    def recommended_sampler_options(self, solver: str) -> dict[str, Any]:
        """Options that suit this formulation's BQM for ``solver`` (merge the user's on top).

        ``sa``: 20 reads × 100 sweeps. Every pair of state variables is coupled by the budget
        penalty, so a sweep costs O(variables²), and longer anneals did not help: the budget
        penalty's barriers (module docstring) freeze simulated annealing long before it sees the
        damage, whatever the schedule, so its reads serve as starting points for :meth:`polish`.
        Slack-free encodings: 20 reads on a geometric schedule from ``β = 10⁻³/P`` to
        ``ln(100) / (1 % of |E*|)`` (dwave's default cold end follows the smallest bias, ~1e-9
        nats here, and freezes at once), 100 sweeps (unbalanced: dense) or 1,000 (Lagrangian: sparse).
        Other solvers: no recommendation (``{}``).
        """
        if solver != "sa":
            return {}
        if self.encoding == "slack":
            return dict(SA_OPTIONS)
        scale = abs(self.exact_result().objective) or self.penalty
        return {
            "num_reads": SA_OPTIONS["num_reads"],
            "num_sweeps": SLACK_FREE_SWEEPS[self.encoding],
            "beta_schedule_type": "geometric",
            "beta_range": (HOT_BETA / self.penalty, math.log(100) / (COLD_SHARE * scale)),
        }

    # --- reading a solver's answer --------------------------------------------------------------

    def best_feasible(self, sampleset: dimod.SampleSet) -> tuple[Plan | None, float | None, float]:
        """The best truly feasible read: ``(plan, damage, feasibility rate)``.

        The rate is the share of reads (counting ``num_occurrences``) that :meth:`is_feasible`
        accepts; an infeasible read is never returned. With no feasible read the answer is
        ``(None, None, 0.0)``: the caller should say so (more reads, or :meth:`polish`).
        """
        values = self._sample_matrix(sampleset)
        occurrences = np.asarray(sampleset.record.num_occurrences, dtype=np.float64)
        feasible = self._feasible_rows(values)
        if not feasible.any():
            return None, None, 0.0
        rate = float(occurrences[feasible].sum() / occurrences.sum())
        index = self._decode_rows(values[feasible])
        plan = self.model.plan_of(index[int(np.argmin(self.model.damages(index)))])
        return plan, self.objective(plan), rate

    @property
    def default_kick(self) -> int:
        """Choices a kick of the polish changes by default: a quarter of the free ones, at least
        :data:`MIN_KICK` (5 on the built-in LeNet-5 and VGG, 8 on ResNet-20's 34)."""
        return max(MIN_KICK, int(KICK_SHARE * len(self.model.free)))

    def chain_count(self, per_choice: int = DEFAULT_CHAINS_PER_CHOICE) -> int:
        """Chains of the polish's iterated local search: ``per_choice`` per free choice (at least one
        choice counted; 102 by default on ResNet-20's 34)."""
        return per_choice * max(len(self.model.free), 1)

    def polish(
        self,
        sampleset: dimod.SampleSet,
        chains: int | None = None,
        chain_length: int = DEFAULT_CHAIN_LENGTH,
        kick: int | None = None,
        seed: int | None = None,
    ) -> dimod.SampleSet:
        """The reads made feasible and locally optimal, the best ones improved further.

        Every read is decoded, repaired into the budget and improved by feasible steepest descent
        (:func:`~qubocompress.problem.local_search.descend_all`). Then ``chains`` (default: three per
        free choice) iterated local searches of ``chain_length`` rounds each (``kick`` random
        choices changed, default :attr:`default_kick`; repair, descent, kept if no worse) start
        from the distinct local optima, best first, cycling through them when there are fewer;
        each read takes the best result grown from its own local optimum. The search runs on the
        BQM's rounded costs (:attr:`unit`), so every polished read is within the BQM's budget — its
        energy is its damage — and truly within the budget.

        Returns a SampleSet over the same BQM and reads (energies from the BQM), with
        ``info["timing"]["polish_seconds"]`` and ``info["polish"]`` (feasibility rate before,
        distinct starting plans and local optima, the search's parameters and seed). ``seed`` None
        derives one from the reads, so the same reads always polish the same way.
        """
        if chains is None:
            chains = self.chain_count()
        if kick is None:
            kick = self.default_kick
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (chains, chain_length, kick)) or not (
            chains >= 1 and chain_length >= 0 and kick >= 1
        ):
            raise ProblemError(
                f"polish needs chains >= 1, chain_length >= 0 and kick >= 1, got {chains}, {chain_length} and {kick}"
            )
        start = time.perf_counter()
        values = self._sample_matrix(sampleset)
        occurrences = np.asarray(sampleset.record.num_occurrences)
        feasible_before = float(occurrences[self._feasible_rows(values)].sum() / max(occurrences.sum(), 1))
        starts, start_of_read = np.unique(self._decode_rows(values), axis=0, return_inverse=True)
        if seed is None:
            seed = zlib.crc32(np.ascontiguousarray(starts).tobytes())
        model, capacity = self.model.in_units(self.unit), self.budget // self.unit
        tables = MoveTables(model)
        descended = descend_all(model, repair_all(model, starts, capacity, tables), capacity, tables)
        optima, optimum_of_start = np.unique(descended, axis=0, return_inverse=True)
        improved = optima.copy()
        ranking = np.argsort(model.damages(optima), kind="stable")
        origin = ranking[np.arange(chains) % len(ranking)]  # the local optimum each chain grows from
        rngs = np.random.default_rng(seed).spawn(chains)
        found = iterated_local_search_all(model, optima[origin], capacity, chain_length, kick, rngs, tables)
        for k, plan, damage in zip(origin, found, model.damages(found), strict=True):
            if damage < model.damages(improved[k])[0]:
                improved[k] = plan
        rows = self._encode_rows(improved[np.ravel(optimum_of_start)[np.ravel(start_of_read)]])
        seconds = time.perf_counter() - start
        info = dict(sampleset.info)
        info["timing"] = {**info.get("timing", {}), "polish_seconds": seconds}
        info["polish"] = {
            "feasible_before": feasible_before,
            "distinct_starts": int(starts.shape[0]),
            "distinct_local_optima": int(optima.shape[0]),
            "chains": chains,
            "chain_length": chain_length,
            "kick": kick,
            "seed": int(seed),
        }
        return dimod.SampleSet.from_samples_bqm(
            (rows, list(self.variables)), self.bqm, info=info, num_occurrences=occurrences
        )
