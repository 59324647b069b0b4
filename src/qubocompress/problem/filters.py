"""The ``filters`` formulation: which filters to prune, not only how many, with a quadratic damage.

Problem. Removing a set S of channels changes the calibration loss by about ``½ E_s[(Σ_{c∈S}
u_sc)²] = ½ Σ_{c,c'∈S} G[c, c']`` (nats), with ``u_sc`` the channel's contribution ``a·∂L_s/∂a``
and ``G`` its empirical Fisher (Gram) matrix (``spec.filter_gram``). That is non-separable: two
redundant filters are cheap to prune alone and dear together, two complementary ones the other
way round, which no rank order sees.

Two stages. How many filters each group loses (``k_g``) and each layer's bits come from the exact
optimum of the :mod:`~qubocompress.problem.budget` formulation at the same target (its MILP); the
QUBO then chooses *which* ``k_g`` filters of each group, over the whole model at once. Bits and
counts are fixed rather than chosen jointly because the cost of a plan (weight bits, BOPs, file
bytes) depends on the counts and bits alone: every plan of this QUBO costs exactly what the budget
optimum costs, so it is within the budget by construction and the only constraints are the
counts, ``Σ_i p_gi = k_g``, quadratic penalties with no slack. A joint form would tie every filter
variable to the budget form's one-hot count cells and carry its stiff budget penalty, which
freezes simulated annealing (see the budget module). The price: the counts are optimal for the
rank-order damage, not for the Gram damage (their interplay is the budget stage's).

BQM (BINARY), one variable ``p[<group>][<channel>]`` per channel of each group with ``k_g > 0``
(every channel is a candidate; ``max_pruned`` caps how many, and ``k_g ≤ max_pruned`` already; a
group split into ``blocks`` by a grouped convolution has one count per block, ``k_g / blocks``,
so that each of the conv's groups keeps as many channels: "group" below means such a block)::

    E(p) = ½ pᵀ G p + A Σ_g (Σ_i p_gi − k_g)² + Q

``G`` restricted to the variables (within and across groups), ``Q`` the quantization damage of
the fixed bits (Σ ``quant_damage``, a constant, kept as the offset so that a feasible plan's energy
is its whole estimated damage, comparable with the budget form's). The spec's pairwise
``interactions`` only steer the budget stage.

Penalty (:attr:`FiltersFormulation.penalty`). Let ``B = max_i max(½G_ii + Σ_{j≠i} max(G_ij, 0),
−½G_ii + Σ_{j≠i} max(−G_ij, 0))`` over the variables. A sample whose group g holds ``s ≠ k_g``
pruned channels has a single flip in g that moves s toward ``k_g`` (a 1 → 0 when ``s > k_g``, a
0 → 1 when ``s < k_g ≤`` the group's size): it lowers the penalty by ``A(2|s − k_g| − 1) ≥ A`` and
changes ``½pᵀGp`` by ``−Σ_{j≠i} G_ij p_j − ½G_ii`` (removal) or ``Σ_{j≠i} G_ij p_j + ½G_ii``
(addition), at most ``B`` either way. So with ``A > B`` every state that breaks a count has a
strictly better neighbour: every minimiser, and every single-flip local minimum, keeps the counts.
The automatic ``A`` is ``B`` plus 5 % (1 where ``B = 0``: G vanishes on the variables).

Reference (:meth:`FiltersFormulation.exact_result`). The incumbent: the rank-prefix plan (each
group's ``k_g`` least important filters, the budget form's plan and the baseline; its energy is
in :meth:`~FiltersFormulation.describe`) improved by a seeded iterated swap search. Then, within
``time_limit`` seconds (the budget stage's MILP had as many), a convex MIQP with SCIP
(``pyscipopt``, the ``miqp`` extra; ``G`` is a Gram matrix, so PSD) started from it, or, without
SCIP, a MILP with HiGHS on the linearisation (``y_ij`` per pair, McCormick bounds, the counts and
the counts times each ``x_i``, the RLT cuts). Certified when the solver proves its optimum (a plan
that keeps the counts) or the proven bound (``Q`` at least, ``G`` being PSD) reaches the best plan's
energy, else the best plan known with the proven gap ``(E − bound) / |E|`` (``E`` includes ``Q``).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import time
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import dimod
import numpy as np
import scipy.sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from qubocompress.errors import ProblemError, SolverError
from qubocompress.problem.base import Formulation, Reference, Target
from qubocompress.problem.budget import (
    DEFAULT_TIME_LIMIT,
    DENSE_ROWS,
    PENALTY_MARGIN,
    BudgetFormulation,
    ExactResult,
    bqm_from_dense,
)
from qubocompress.problem.local_search import BLOCK_ENTRIES
from qubocompress.problem.milp import OBJECTIVE_SCALE
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec

REFERENCE_SOLVERS = ("auto", "highs", "scip")
MIQP_EXTRA = "pip install 'qubocompress[miqp]' (pyscipopt)"
# A swap must lower the energy by more than this share of the Gram matrix's scale.
IMPROVEMENT_TOLERANCE = 1e-12
# Simulated annealing for this formulation's dense BQMs (see recommended_sampler_options).
SA_OPTIONS = {"num_reads": 50, "num_sweeps": 1000}
# The reference's incumbent: an iterated local search from the rank-prefix plan, this many chains
# and rounds, each kick swapping a tenth of the pruned filters (at least MIN_KICK) at random.
SEARCH_CHAINS = 8
SEARCH_ROUNDS = 40
MIN_KICK = 2
# An incumbent counts as the reference's final plan within this share of |E*| (the benchmark's
# success tolerance, solvers.metrics.REL_TOL).
OPTIMUM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ReferenceTimeline:
    """When the reference solve (:meth:`FiltersFormulation.exact_result`) got where, in wall
    seconds from its start.

    Attributes:
        search_seconds: the iterated swap search that gives the solver its starting incumbent.
        search_best_seconds: when that search first held its best plan.
        solver: ``"scip"`` (convex MIQP) or ``"highs"`` (MILP).
        solver_seconds: the solver's own wall time (model building included).
        best_seconds: when an incumbent first came within the benchmark's success tolerance of the
            final plan (search or solver): the time to the first optimal incumbent when the result
            is certified. None when HiGHS improved on the search (it reports no incumbent times).
        best_found_by: ``"search"`` or ``"solver"``: who found that incumbent.
        proof_seconds: the whole solve's time when it proved its optimum, else None.
        gap: the proven relative gap at the end (0 when certified).
    """

    search_seconds: float
    search_best_seconds: float
    solver: str
    solver_seconds: float
    best_seconds: float | None
    best_found_by: str
    proof_seconds: float | None
    gap: float

    def figures(self) -> dict[str, Any]:
        """The fields as a dict (for metrics.json and the benchmark's runs)."""
        return asdict(self)


def _check_spec(spec: CompressionSpec) -> None:
    """ProblemError unless ``spec`` has a prunable group (one that may lose a filter) and a filter Gram matrix."""
    if not any(group.max_pruned > 0 for group in spec.groups):
        why = " (every group's max_pruned is 0)" if spec.groups else ""
        raise ProblemError(
            f"model {spec.model!r} has no prunable channel group{why}: the filters formulation has no filter to "
            "choose (use --formulation budget to choose bits only)"
        )
    if spec.filter_gram is None:
        raise ProblemError(
            "the spec holds no filter Gram matrix: analyse with filter_gram=True (compress --formulation filters does)"
        )


def _positive(value: Any) -> bool:
    """True for a finite real number > 0 (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


class FiltersFormulation(Formulation):
    """Choose which filters each group prunes under a quadratic (Gram) damage (module docstring).

    Args:
        spec: the problem, with ``filter_gram``.
        counts: group name -> how many of its filters to prune (missing: 0; at most ``max_pruned``).
        bits: layer name -> bit-width, for every layer (fixed; only their damage enters the energy).
        penalty: the count penalty ``A``; None = the proven sufficient bound plus 5 %.
        time_limit: seconds the reference solve may take (> 0).
        reference_solver: ``"scip"`` (convex MIQP, the ``miqp`` extra), ``"highs"`` (MILP, scipy),
            or ``"auto"``: SCIP where it is installed, else HiGHS. SCIP's bounds are far tighter:
            on the VGG-style net at 32x (256 variables, 30 s) SCIP's lower bound on ½pᵀGp was 91 %
            of the best plan's, HiGHS's stayed below zero.
        stage: what the counts and bits came from (the budget stage's figures, for :meth:`describe`).
    """

    name = "filters"
    constrained = True
    free_counts = False

    def __init__(
        self,
        spec: CompressionSpec,
        counts: Mapping[str, int],
        bits: Mapping[str, int],
        penalty: float | None = None,
        time_limit: float = DEFAULT_TIME_LIMIT,
        reference_solver: str = "auto",
        stage: Mapping[str, Any] | None = None,
    ) -> None:
        _check_spec(spec)
        if not _positive(time_limit):
            raise ProblemError(f"time_limit must be a positive number of seconds, got {time_limit}")
        if penalty is not None and not _positive(penalty):
            raise ProblemError(f"penalty must be a finite number > 0, got {penalty}")
        if reference_solver not in REFERENCE_SOLVERS:
            raise ProblemError(f"unknown reference solver {reference_solver!r}; choose one of auto, highs, scip")
        if reference_solver == "scip" and importlib.util.find_spec("pyscipopt") is None:
            raise SolverError(f"the MIQP reference needs SCIP, which is not installed: {MIQP_EXTRA}")
        names = {group.name for group in spec.groups}
        unknown = sorted(set(counts) - names)
        if unknown:
            raise ProblemError(f"counts name unknown channel groups {unknown}")
        for name, k in counts.items():
            if isinstance(k, bool) or not isinstance(k, numbers.Integral):
                raise ProblemError(f"channel group {name!r}: the count must be a whole number of filters, got {k!r}")
        self.counts = {group.name: int(counts.get(group.name, 0)) for group in spec.groups}
        for group in spec.groups:
            k = self.counts[group.name]
            if not 0 <= k <= group.max_pruned or k % group.blocks:
                raise ProblemError(
                    f"channel group {group.name!r}: cannot prune {k} of its {group.size} filters "
                    f"(0..{group.max_pruned} allowed, in multiples of its blocks={group.blocks})"
                )
        Plan(pruned={}, bits=bits).validate(spec)
        self.bits = {layer.name: int(bits[layer.name]) for layer in spec.layers}
        self.spec = spec
        self.time_limit = float(time_limit)
        self.reference_solver = reference_solver
        self.stage = dict(stage or {})
        self._penalty = None if penalty is None else float(penalty)
        # the variables: every channel of each group that loses some, groups in order, channels in index order
        starts = np.cumsum([0] + [group.size for group in spec.groups])
        self._active = [g for g, group in enumerate(spec.groups) if self.counts[group.name] > 0]
        if not self._active:
            raise ProblemError(
                "the budget optimum at this target prunes no filter: there is nothing to choose "
                "(use --formulation budget, or a higher target)"
            )
        self._channels = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in self._active])
        # one count constraint per active group, or per block of a group split by a grouped conv
        # (each block loses k_g / blocks): the constraint of each variable, and its count
        sizes, blocks = ([getattr(spec.groups[g], key) for g in self._active] for key in ("size", "blocks"))
        first_unit = np.cumsum([0] + blocks)
        self._group_of = np.concatenate(
            [first_unit[a] + np.arange(size) * b // size for a, (size, b) in enumerate(zip(sizes, blocks))]
        )
        counts_per_unit = [self.counts[spec.groups[g].name] // b for g, b in zip(self._active, blocks)]
        self._k = np.repeat(counts_per_unit, blocks).astype(np.int64)
        self.gram = spec.filter_gram[np.ix_(self._channels, self._channels)]  # type: ignore[index]
        self.labels = [f"p[{spec.groups[g].name}][{i}]" for g in self._active for i in range(spec.groups[g].size)]
        self.quant_damage = float(
            sum(layer.quant_damage[self.bits[layer.name] - 1] for layer in spec.layers if layer.quant_damage.size)
        )

    # --- building it -----------------------------------------------------------------------------

    @classmethod
    def for_target(cls, spec: CompressionSpec, target: Target) -> FiltersFormulation:
        """Counts and bits from the budget formulation's reference optimum at ``target``."""
        if target.beta is not None:
            raise ProblemError("--beta weighs the paper's energy; the filters formulation has no beta")
        _check_spec(spec)
        if not any(option > 0 for group in spec.groups for option in group.prune_options):
            raise ProblemError(
                f"model {spec.model!r} has no prunable channel group: no group offers a prune option, so the budget "
                "stage can prune no filter (analyse with prune options, or use --formulation budget)"
            )
        budget = BudgetFormulation.for_target(spec, target)
        optimum = budget.reference()
        stage = {
            "budget": budget.budget,
            "metric": budget.metric,
            "damage": optimum.energy,
            "certified": optimum.certified,
            "gap": optimum.gap,
            "seconds": optimum.seconds,
        }
        counts = {name: len(channels) for name, channels in optimum.plan.pruned.items()}
        return cls(spec, counts, optimum.plan.bits, time_limit=target.time_limit, stage=stage)

    @classmethod
    def from_parameters(cls, spec: CompressionSpec, params: Mapping[str, Any]) -> FiltersFormulation:
        return cls(
            spec,
            counts={str(k): int(v) for k, v in params["counts"].items()},
            bits={str(k): int(v) for k, v in params["bits"].items()},
            penalty=float(params["penalty"]),
            time_limit=float(params["time_limit"]),
            reference_solver=str(params.get("reference_solver", "auto")),
            stage=params.get("stage"),
        )

    def parameters(self) -> dict[str, Any]:
        """Counts, bits and the resolved penalty: the rebuilt BQM does not depend on any MILP."""
        return {
            "name": self.name,
            "counts": dict(self.counts),
            "bits": dict(self.bits),
            "penalty": self.penalty,
            "time_limit": self.time_limit,
            "reference_solver": self.reference_solver,
            "stage": dict(self.stage),
        }

    def describe(self) -> dict[str, Any]:
        """The penalty and its bound, the counts, the constant quantization damage, the budget
        stage, the rank-prefix plan's energy (what the budget form prunes) to compare with, and
        the reference's timeline (:attr:`reference_timeline`: solves the reference if not yet done)."""
        return {
            "penalty": self.penalty,
            "penalty_bound": self.penalty_bound,
            "counts": {name: k for name, k in self.counts.items() if k},
            "quant_damage": self.quant_damage,
            "rank_prefix_energy": self.energy(self.rank_prefix_plan()),
            "budget_stage": dict(self.stage),
            "reference_timeline": self.reference_timeline.figures(),
        }

    @cached_property
    def penalty_bound(self) -> float:
        """``B`` of the module docstring (nats): the most one flip can change ``½pᵀGp``."""
        gram = self.gram
        diagonal = np.diag(gram)
        off = gram - np.diag(diagonal)
        adding = diagonal / 2 + np.clip(off, 0, None).sum(axis=1)
        removing = -diagonal / 2 + np.clip(-off, 0, None).sum(axis=1)
        return float(max(adding.max(), removing.max(), 0.0))

    @cached_property
    def penalty(self) -> float:
        """The count penalty ``A``: proven sufficient when ``A > B`` (:attr:`penalty_bound`)."""
        if self._penalty is not None:
            return self._penalty
        bound = self.penalty_bound
        return bound * (1 + PENALTY_MARGIN) if bound > 0 else 1.0

    @cached_property
    def bqm(self) -> dimod.BinaryQuadraticModel:
        """``½pᵀGp + A Σ_g (Σ_i p_gi − k_g)² + Q`` as a BINARY BQM (module docstring). Dense (``G``
        couples every pair): built a block of rows at a time, about 24·n² bytes at its peak."""
        penalty = self.penalty
        linear = np.diag(self.gram) / 2 + penalty * (1 - 2 * self._k[self._group_of])
        n = len(self.labels)
        quadratic = np.empty((n, n))
        for first in range(0, n, DENSE_ROWS):
            rows = slice(first, min(first + DENSE_ROWS, n))
            same = self._group_of[rows, None] == self._group_of[None, :]
            quadratic[rows] = np.triu(self.gram[rows] + 2 * penalty * same, first + 1)
        offset = penalty * float(np.sum(self._k**2)) + self.quant_damage
        return bqm_from_dense(linear, quadratic, offset, self.labels)

    # --- plans <-> samples -------------------------------------------------------------------------

    def rank_prefix_plan(self) -> Plan:
        """Each group prunes its ``k_g`` least important filters: what the budget formulation does."""
        pruned = {group.name: tuple(group.prune_order()[: self.counts[group.name]]) for group in self.spec.groups}
        return Plan(pruned=pruned, bits=self.bits)

    def _plan_of(self, row: np.ndarray) -> Plan:
        pruned = {group.name: () for group in self.spec.groups}
        first = np.cumsum([0] + [self.spec.groups[g].size for g in self._active])
        for a, g in enumerate(self._active):
            pruned[self.spec.groups[g].name] = tuple(np.flatnonzero(row[first[a] : first[a + 1]]).tolist())
        return Plan(pruned=pruned, bits=self.bits)

    def _row_of(self, plan: Plan) -> np.ndarray:
        if dict(plan.bits) != self.bits:
            raise ProblemError("the plan's bits differ from the formulation's fixed bits (the budget optimum's)")
        plan.validate(self.spec)
        row = np.zeros(len(self.labels), dtype=np.int8)
        first = np.cumsum([0] + [self.spec.groups[g].size for g in self._active])
        for group in self.spec.groups:
            channels = plan.pruned.get(group.name, ())
            if not channels:
                continue
            g = self.spec.group_index(group.name)
            if g not in self._active:
                raise ProblemError(f"the plan prunes channels of group {group.name!r}, which prunes none here")
            row[first[self._active.index(g)] + np.array(channels)] = 1
        return row

    def _sample_matrix(self, samples: dimod.SampleSet | Mapping[str, int]) -> np.ndarray:
        """0/1 rows in the BQM's variable order, from a SampleSet or one sample."""
        try:
            if isinstance(samples, dimod.SampleSet):
                position = {v: i for i, v in enumerate(samples.variables)}
                return np.asarray(samples.record.sample[:, [position[v] for v in self.labels]], dtype=np.int8)
            return np.array([[int(samples[v]) for v in self.labels]], dtype=np.int8)
        except KeyError as exc:
            raise ProblemError(f"the sample lacks variable {exc.args[0]!r} of the filters formulation") from exc

    def decode(self, sample: Mapping[str, int]) -> Plan:
        """The plan of a sample: the channels whose variable is 1, the fixed bits (counts unchecked)."""
        return self._plan_of(self._sample_matrix(sample)[0])

    def encode(self, plan: Plan) -> dict[str, int]:
        """The sample of a plan with the fixed bits (ProblemError for other bits, or a pruned
        channel of a group that prunes none here)."""
        return dict(zip(self.labels, self._row_of(plan).tolist()))

    def energy(self, plan: Plan) -> float:
        """BQM energy of :meth:`encode` (plan): :meth:`objective` when the counts hold."""
        return float(self.bqm.energy(self.encode(plan)))

    def objective(self, plan: Plan) -> float:
        """``½ pᵀ G p + Q`` (nats) from the spec's Gram matrix, independently of the BQM."""
        row = self._row_of(plan).astype(np.float64)
        return float(row @ self.gram @ row) / 2 + self.quant_damage

    def _feasible_rows(self, values: np.ndarray) -> np.ndarray:
        return np.all(self._counts_of(values) == self._k[None, :], axis=1)

    def _counts_of(self, values: np.ndarray) -> np.ndarray:
        """Pruned channels per active group of each row."""
        membership = np.eye(len(self._k), dtype=np.int64)[self._group_of]
        return values.astype(np.int64) @ membership

    def feasible_reads(self, sampleset: dimod.SampleSet) -> np.ndarray:
        """Per record row: True when every group prunes exactly its count."""
        return self._feasible_rows(self._sample_matrix(sampleset))

    def best_plan(self, sampleset: dimod.SampleSet) -> tuple[Plan | None, float | None, float]:
        """(the lowest-energy read that keeps the counts, its energy, the share of such reads)."""
        if len(sampleset) == 0:
            return None, None, 0.0
        feasible = self.feasible_reads(sampleset)
        if not feasible.any():
            return None, None, 0.0
        occurrences = np.asarray(sampleset.record.num_occurrences, dtype=np.float64)
        energies = np.where(feasible, sampleset.record.energy, np.inf)
        best = int(np.argmin(energies))
        rate = float(occurrences[feasible].sum() / occurrences.sum())
        return self._plan_of(self._sample_matrix(sampleset)[best]), float(energies[best]), rate

    def recommended_sampler_options(self, solver: str) -> dict[str, Any]:
        """``sa``: 50 reads × 1,000 sweeps (the BQM is dense: a sweep costs O(variables²), and the
        default 300 × 10,000 took minutes on the built-in nets); none for other solvers."""
        return dict(SA_OPTIONS) if solver == "sa" else {}

    # --- polish: repair the counts, then swaps within groups --------------------------------------

    def _repair(self, x: np.ndarray) -> np.ndarray:
        """Rows made to keep every count: repeatedly the flip toward a count of least energy change."""
        x = x.astype(np.float64)
        field = x @ self.gram
        half = np.diag(self.gram) / 2
        while True:
            surplus = self._counts_of(x) - self._k[None, :]
            off = np.any(surplus != 0, axis=1)
            if not off.any():
                return x.astype(np.int8)
            rows = np.flatnonzero(off)
            extra = surplus[rows][:, self._group_of]
            change = np.where(
                (x[rows] == 1) & (extra > 0),
                half - field[rows],
                np.where((x[rows] == 0) & (extra < 0), half + field[rows], np.inf),
            )
            flip = np.argmin(change, axis=1)
            sign = 1 - 2 * x[rows, flip]
            x[rows, flip] += sign
            field[rows] += sign[:, None] * self.gram[flip]

    def _descend(self, x: np.ndarray) -> np.ndarray:
        """Steepest descent over swaps (one pruned and one kept channel of the same group) of rows
        that keep the counts; each result has no improving swap."""
        gram, half = self.gram, np.diag(self.gram) / 2
        tolerance = IMPROVEMENT_TOLERANCE * max(float(np.abs(gram).max(initial=0.0)), 1e-300)
        members = [np.flatnonzero(self._group_of == a) for a in range(len(self._k))]
        blocks = [gram[np.ix_(m, m)] for m in members]
        x = x.astype(np.float64)
        step = max(1, BLOCK_ENTRIES // max(sum(m.size**2 for m in members), 1))
        for start in range(0, len(x), step):
            part = x[start : start + step]
            field = part @ gram
            active = np.arange(len(part))
            while active.size:
                best = np.zeros(active.size)
                moves = np.zeros((active.size, 2), dtype=np.int64)
                for m, block in zip(members, blocks):
                    on, f = part[active][:, m], field[active][:, m]
                    # Δ of pruning j instead of i: −f_i + ½G_ii + f_j + ½G_jj − G_ij
                    delta = (half[m] - f)[:, :, None] + (half[m] + f)[:, None, :] - block[None]
                    delta[~((on[:, :, None] == 1) & (on[:, None, :] == 0))] = np.inf
                    flat = delta.reshape(active.size, -1)
                    pick = np.argmin(flat, axis=1)
                    value = flat[np.arange(active.size), pick]
                    better = value < best
                    out, into = np.unravel_index(pick[better], (m.size, m.size))
                    best[better], moves[better, 0], moves[better, 1] = value[better], m[out], m[into]
                moving = best < -tolerance
                rows, out, into = active[moving], moves[moving, 0], moves[moving, 1]
                part[rows, out], part[rows, into] = 0, 1
                field[rows] += gram[into] - gram[out]
                active = rows
            x[start : start + step] = part
        return x.astype(np.int8)

    def local_optimum(self, plan: Plan) -> Plan:
        """``plan`` with its counts repaired and improved by swaps until none helps."""
        return self._plan_of(self._descend(self._repair(self._row_of(plan)[None, :]))[0])

    def polish(self, sampleset: dimod.SampleSet, seed: int | None = None) -> dimod.SampleSet:
        """Every read repaired to the counts (flips of least energy change) and descended by swaps
        within groups (steepest descent, deterministic), over the same BQM.

        ``info["polish"]``: the feasibility rate before, the distinct reads and local optima, and
        ``seed`` (None: derived from the reads; the descent itself draws nothing).
        """
        start = time.perf_counter()
        values = self._sample_matrix(sampleset)
        occurrences = np.asarray(sampleset.record.num_occurrences)
        feasible_before = float(occurrences[self._feasible_rows(values)].sum() / max(occurrences.sum(), 1))
        starts, start_of_read = np.unique(values, axis=0, return_inverse=True)
        if seed is None:
            seed = zlib.crc32(np.ascontiguousarray(starts).tobytes())
        optima = self._descend(self._repair(starts))
        info = dict(sampleset.info)
        info["timing"] = {**info.get("timing", {}), "polish_seconds": time.perf_counter() - start}
        info["polish"] = {
            "feasible_before": feasible_before,
            "distinct_starts": int(starts.shape[0]),
            "distinct_local_optima": int(np.unique(optima, axis=0).shape[0]),
            "seed": int(seed),
        }
        return dimod.SampleSet.from_samples_bqm(
            (optima[np.ravel(start_of_read)], self.labels), self.bqm, info=info, num_occurrences=occurrences
        )

    # --- the reference optimum -----------------------------------------------------------------------

    def reference(self) -> Reference:
        """The MILP's (or MIQP's) optimum, certified or with its proven gap (:meth:`exact_result`)."""
        result = self.exact_result()
        plan, energy = self.exact()
        return Reference(plan, energy, result.certified, result.gap, result.method, result.seconds)

    def exact(self) -> tuple[Plan, float]:
        """The reference plan and its BQM energy (its :meth:`objective` up to float rounding)."""
        plan = self.exact_result().plan
        return plan, self.energy(plan)

    def exact_result(self) -> ExactResult:
        """The reference solve (module docstring), cached."""
        return self._solved[0]

    @property
    def reference_timeline(self) -> ReferenceTimeline:
        """When the reference solve reached its best plan and its proof (solves it if not yet done)."""
        return self._solved[1]

    @cached_property
    def _solved(self) -> tuple[ExactResult, ReferenceTimeline]:
        start = time.perf_counter()
        incumbent, history = self._search(self._row_of(self.rank_prefix_plan()), start=start)
        search_seconds = time.perf_counter() - start
        remaining = max(self.time_limit - search_seconds, 1e-3)
        scip = self.reference_solver == "scip" or (
            self.reference_solver == "auto" and importlib.util.find_spec("pyscipopt") is not None
        )
        convex = self._positive_semidefinite  # else SCIP's factorised MIQP would solve another problem
        solve = _solve_scip if scip and convex else _solve_milp
        outcome = solve(self.gram, self._group_of, self._k, remaining, incumbent)
        method = outcome.method
        if scip and not convex:
            method += " (the Gram matrix is not positive semidefinite, so not SCIP's convex MIQP)"
        row = outcome.row
        feasible = row is not None and bool(self._feasible_rows(row[None, :])[0])
        # the solver's proof is of its own x: it certifies nothing when x rounds to a row off the counts
        proven = outcome.proven and feasible
        if row is None or not feasible or _halves(self.gram, row) > _halves(self.gram, incumbent):
            row = incumbent
            method += "; best plan: the rank-prefix plan after an iterated swap search"
        plan = self._plan_of(row)
        objective = self.objective(plan)
        bound = outcome.bound + self.quant_damage
        if self._positive_semidefinite:  # ½pᵀGp ≥ 0 for every p
            bound = max(bound, self.quant_damage)
        # certified: the solver proved its optimum; the incumbent is never worse than it
        result = ExactResult.of(plan, objective, proven, bound, start, method)
        # incumbents count as the final plan within the benchmark's success tolerance (relative to E*)
        tolerance = OPTIMUM_TOLERANCE * max(abs(objective), 1e-300)
        final = float(_halves(self.gram, row))
        found = [(seconds, value, "search") for seconds, value in history]
        if outcome.history is not None and row is not incumbent:  # the solver's incumbents, on one clock
            found += [(outcome.started - start + seconds, value, "solver") for seconds, value in outcome.history]
        # None: the solver's plan beat the search's, and it reports no incumbent times (HiGHS)
        first = min((item for item in found if item[1] <= final + tolerance), default=None)
        timeline = ReferenceTimeline(
            search_seconds=search_seconds,
            search_best_seconds=min(t for t, v in history if v <= history[-1][1] + tolerance),
            solver="scip" if solve is _solve_scip else "highs",
            solver_seconds=outcome.seconds,
            best_seconds=None if first is None else first[0],
            best_found_by="solver" if first is None else first[2],
            proof_seconds=result.seconds if result.certified else None,
            gap=result.gap,
        )
        return result, timeline

    def _search(
        self, row: np.ndarray, seed: int = 0, start: float | None = None
    ) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The best plan an iterated local search finds from ``row`` (one that keeps the counts):
        :data:`SEARCH_CHAINS` chains of :data:`SEARCH_ROUNDS` rounds, each a kick (random swaps in
        random groups) and a swap descent, kept when no worse. Deterministic given ``seed``.

        Also returns its history: (seconds since ``start`` (default: now), the best ``½pᵀGp`` held)
        after the first descent and after each round that improved it."""
        start = time.perf_counter() if start is None else start
        rng = np.random.default_rng(seed)
        best = np.repeat(self._descend(row[None, :]), SEARCH_CHAINS, axis=0)
        best_value = _halves(self.gram, best)
        history = [(time.perf_counter() - start, float(best_value.min()))]
        members = [np.flatnonzero(self._group_of == a) for a in range(len(self._k))]
        movable = [a for a, m in enumerate(members) if 0 < self._k[a] < m.size]
        if not movable:
            return best[0], history
        kick = max(MIN_KICK, int(self._k.sum()) // 10)
        for _ in range(SEARCH_ROUNDS):
            trial = best.copy()
            for chain in trial:
                for a in rng.choice(movable, size=kick):
                    m = members[a]
                    out = rng.choice(m[chain[m] == 1])
                    into = rng.choice(m[chain[m] == 0])
                    chain[out], chain[into] = 0, 1
            trial = self._descend(trial)
            value = _halves(self.gram, trial)
            keep = value <= best_value
            best[keep], best_value[keep] = trial[keep], value[keep]
            if best_value.min() < history[-1][1]:
                history.append((time.perf_counter() - start, float(best_value.min())))
        return best[int(np.argmin(best_value))], history

    @cached_property
    def _positive_semidefinite(self) -> bool:
        eigenvalues = np.linalg.eigvalsh(self.gram)
        return bool(eigenvalues[0] >= -1e-9 * max(float(eigenvalues[-1]), 0.0))


@dataclass(frozen=True)
class _Solve:
    """What a reference solver returned: its best x (None: none), a proven lower bound on
    ``½xᵀGx``, whether it proved its x optimal, how, when it started (``time.perf_counter()``),
    its wall seconds, and its incumbents as (seconds since it started, ``½xᵀGx``), None when the
    solver does not report them."""

    row: np.ndarray | None
    bound: float
    proven: bool
    method: str
    started: float
    seconds: float
    history: list[tuple[float, float]] | None


def _halves(gram: np.ndarray, rows: np.ndarray) -> np.ndarray | float:
    """``½ xᵀ G x`` of each row of ``rows`` (a float for one row)."""
    x = rows.astype(np.float64)
    return (x @ gram * x).sum(axis=-1) / 2


def _solve_milp(
    gram: np.ndarray, group_of: np.ndarray, counts: np.ndarray, time_limit: float, incumbent: np.ndarray
) -> _Solve:
    """Minimise ``½xᵀGx`` with ``Σ_{i∈g} x_i = k_g`` by HiGHS on the RLT linearisation:
    ``y_ij ∈ [0, 1]`` per pair with ``y ≤ x_i``, ``y ≤ x_j``, ``y ≥ x_i + x_j − 1``, and every count
    equation multiplied by each ``x_i`` (``Σ_{j∈h, j≠i} y_ij = (k_h − [h = g(i)])·x_i``): exact for
    binary ``x``, and a much tighter LP than McCormick alone. scipy's HiGHS takes no starting
    solution, so ``incumbent`` is unused; nor does it report when it found its incumbents."""
    started = time.perf_counter()
    n = len(group_of)
    first, second = np.triu_indices(n, 1)
    pairs = first.size
    y = n + np.arange(pairs)
    objective = np.concatenate([np.diag(gram) / 2, gram[first, second]])
    groups = len(counts)
    rows, cols, values = [], [], []

    def add(row: np.ndarray, col: np.ndarray, value: np.ndarray | float) -> None:
        rows.append(row)
        cols.append(col)
        values.append(np.broadcast_to(np.asarray(value, dtype=np.float64), row.shape))

    # counts: Σ_{i∈h} x_i = k_h
    add(group_of.astype(np.int64), np.arange(n), 1.0)
    # McCormick: y − x_i ≤ 0, y − x_j ≤ 0, x_i + x_j − y ≤ 1
    base = groups
    for offset, partner in ((0, first), (pairs, second)):
        add(base + offset + np.arange(pairs), y, 1.0)
        add(base + offset + np.arange(pairs), partner, -1.0)
    lower_row = base + 2 * pairs + np.arange(pairs)
    add(lower_row, first, 1.0)
    add(lower_row, second, 1.0)
    add(lower_row, y, -1.0)
    # RLT: row (i, h): Σ_{j∈h, j≠i} y_ij − (k_h − [h = g(i)]) x_i = 0
    rlt = base + 3 * pairs
    add(rlt + first * groups + group_of[second], y, 1.0)
    add(rlt + second * groups + group_of[first], y, 1.0)
    cells = np.arange(n * groups)
    owner, h = cells // groups, cells % groups
    add(rlt + cells, owner, -(counts[h] - (group_of[owner] == h)).astype(np.float64))
    total = rlt + n * groups
    matrix = scipy.sparse.csr_array(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(total, n + pairs)
    )
    lower = np.full(total, -np.inf)
    upper = np.zeros(total)
    lower[:groups] = upper[:groups] = counts
    upper[base + 2 * pairs : rlt] = 1.0
    lower[rlt:] = 0.0
    largest = float(np.abs(objective).max(initial=0.0))
    scale = OBJECTIVE_SCALE / largest if largest > 0 else 1.0
    result = milp(
        objective * scale,
        integrality=np.concatenate([np.ones(n), np.zeros(pairs)]),
        bounds=Bounds(0.0, 1.0),
        constraints=[LinearConstraint(matrix, lower, upper)],
        options={"mip_rel_gap": 0.0, "disp": False, "time_limit": time_limit},
    )
    dual = getattr(result, "mip_dual_bound", None)
    bound = float(dual) / scale if dual is not None and math.isfinite(dual) else -math.inf
    row = None if result.x is None else (result.x[:n] > 0.5).astype(np.int8)
    method = "MILP (HiGHS): x binary, y_ij per pair (McCormick), counts as equalities and RLT cuts"
    proven = bool(result.status == 0 and row is not None)
    return _Solve(row, bound, proven, method, started, time.perf_counter() - started, None)


def _solve_scip(
    gram: np.ndarray, group_of: np.ndarray, counts: np.ndarray, time_limit: float, incumbent: np.ndarray
) -> _Solve:
    """Minimise ``½xᵀGx`` with ``Σ_{i∈g} x_i = k_g`` as a convex MIQP with SCIP, factorised so that
    SCIP sees the convexity: ``G = L Lᵀ`` (eigenvectors of the positive eigenvalues), ``z = Lᵀx``,
    ``min t`` s.t. ``Σ z_r² ≤ 2t``, started from ``incumbent``; ``G`` scaled to a largest diagonal
    entry of 1, so that SCIP's absolute tolerances stay small next to it. The history: every
    solution SCIP kept (at most its ``limits/maxsol``, 100), at SCIP's time of finding it."""
    import pyscipopt

    started = time.perf_counter()
    largest = float(np.diag(gram).max(initial=0.0))
    scale = 1.0 / largest if largest > 0 else 1.0
    values, vectors = np.linalg.eigh(gram * scale)
    keep = values > 1e-12 * max(float(values[-1]), 0.0)
    factor = vectors[:, keep] * np.sqrt(values[keep])
    model = pyscipopt.Model()
    model.hideOutput()
    model.setParam("limits/time", time_limit)
    model.setParam("limits/gap", 0.0)
    n = len(group_of)
    x = [model.addVar(vtype="B", name=f"x{i}") for i in range(n)]
    z = [model.addVar(lb=None, name=f"z{r}") for r in range(factor.shape[1])]
    t = model.addVar(lb=0.0, name="t")
    for h, k in enumerate(counts):
        model.addCons(pyscipopt.quicksum(x[i] for i in np.flatnonzero(group_of == h)) == int(k))
    for r, column in enumerate(factor.T):
        model.addCons(pyscipopt.quicksum(float(column[i]) * x[i] for i in np.flatnonzero(column)) == z[r])
    model.addCons(pyscipopt.quicksum(v * v for v in z) <= 2 * t)
    model.setObjective(t, "minimize")
    start = model.createPartialSol()
    for variable, value in zip(x, incumbent.tolist()):
        model.setSolVal(start, variable, float(value))
    model.addSol(start)
    solving = time.perf_counter()  # SCIP's clock starts with optimize()
    model.optimize()
    row = None
    if model.getNSols() > 0:
        best = model.getBestSol()
        row = np.array([model.getSolVal(best, v) > 0.5 for v in x], dtype=np.int8)
    history = []
    for solution in model.getSols():
        values = np.array([model.getSolVal(solution, v) > 0.5 for v in x], dtype=np.int8)
        history.append((solving - started + float(model.getSolTime(solution)), float(_halves(gram, values))))
    bound = float(model.getDualbound()) / scale
    method = "convex MIQP (SCIP): x binary, G = LLᵀ, t ≥ ½‖Lᵀx‖², counts as equalities"
    proven = model.getStatus() == "optimal"
    seconds = time.perf_counter() - started
    return _Solve(row, bound if math.isfinite(bound) else -math.inf, proven, method, started, seconds, history)
