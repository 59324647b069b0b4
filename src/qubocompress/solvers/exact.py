"""``exact``: certified optimum of a BQM.

With a formulation that can certify its own optimum (``.bqm``, ``.exact()``, ``.encode()``, such as
:class:`~qubocompress.problem.paper.PaperFormulation`), its BQM is answered from ``exact()``.
Any other BQM is split into connected components; components of at most
:data:`MAX_ENUMERATION_VARIABLES` variables are enumerated (vectorised numpy, in chunks), larger
ones solved as a MILP with HiGHS (``scipy.optimize.milp``): each product ``x_i x_j`` becomes a
continuous ``y_ij ∈ [0, 1]`` with the one-sided inequalities the objective makes tight
(``y ≤ x_i, y ≤ x_j`` when its bias is negative, ``y ≥ x_i + x_j − 1`` when positive).
``info["certified"]`` is True only when every component was solved to proven optimality;
otherwise ``info["gap"]`` is the proven relative gap ``(E − bound) / |E|``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import dimod
import numpy as np
import scipy.sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse.csgraph import connected_components

from qubocompress.errors import SolverError
from qubocompress.solvers.base import timed_sampleset

MAX_ENUMERATION_VARIABLES = 20
# Energies evaluated per vectorised chunk of the enumeration (bounds memory to ~10 MB).
ENUMERATION_CHUNK = 2**20
# The MILP objective is scaled so its largest coefficient is this big, which makes HiGHS's fixed
# absolute gap tolerance (1e-6) negligible next to the problem's own scale.
MILP_OBJECTIVE_SCALE = 1e6


def _bit_rows(count: int, width: int, start: int = 0) -> np.ndarray:
    """Rows ``start..start+count-1`` of the binary counting table over ``width`` bits (bit j = 2^j)."""
    states = np.arange(start, start + count, dtype=np.int64)
    return ((states[:, None] >> np.arange(width)) & 1).astype(np.float64)


def _enumerate(linear: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimise ``x·linear + xᵀ upper x`` (``upper`` strictly upper triangular) by full enumeration.

    The variables split into a low block (all its states kept as a table) and a high block walked
    in chunks, so memory stays at about ENUMERATION_CHUNK energies.
    """
    size = linear.size
    low = min(size, 14)
    high = size - low
    low_states = _bit_rows(2**low, low)
    low_energy = low_states @ linear[:low] + np.einsum("si,ij,sj->s", low_states, upper[:low, :low], low_states)
    cross = upper[:low, low:].T  # (high, low): couplings of high variables to low ones
    best_energy, best_state = math.inf, np.zeros(size)
    chunk = max(1, ENUMERATION_CHUNK // 2**low)
    for start in range(0, 2**high, chunk):
        high_states = _bit_rows(min(chunk, 2**high - start), high, start)
        high_energy = high_states @ linear[low:] + np.einsum("si,ij,sj->s", high_states, upper[low:, low:], high_states)
        energies = high_energy[:, None] + low_energy[None, :] + (high_states @ cross) @ low_states.T
        flat = int(np.argmin(energies))
        if energies.flat[flat] < best_energy:
            h, l = divmod(flat, 2**low)
            best_energy = float(energies.flat[flat])
            best_state = np.concatenate([low_states[l], high_states[h]])
    return best_state, best_energy


def _milp(
    linear: np.ndarray, rows: np.ndarray, cols: np.ndarray, biases: np.ndarray, time_limit: float | None
) -> tuple[np.ndarray, float, bool]:
    """Minimise a QUBO component as a linearised MILP: (state, proven lower bound, proven optimal)."""
    size, pairs = linear.size, biases.size
    largest = max(float(np.max(np.abs(linear), initial=0.0)), float(np.max(np.abs(biases), initial=0.0)))
    scale = MILP_OBJECTIVE_SCALE / largest if largest > 0 else 1.0
    cost = np.concatenate([linear, biases]) * scale
    negative = np.flatnonzero(biases < 0)
    positive = np.flatnonzero(biases > 0)
    # y - x_i <= 0 and y - x_j <= 0 for negative biases; x_i + x_j - y <= 1 for positive ones.
    constraint_rows = np.concatenate([np.arange(negative.size), negative.size + np.arange(negative.size)])
    entries = [
        (constraint_rows, size + np.tile(negative, 2), np.ones(2 * negative.size)),
        (constraint_rows, np.concatenate([rows[negative], cols[negative]]), -np.ones(2 * negative.size)),
    ]
    offset = 2 * negative.size
    positive_rows = offset + np.arange(positive.size)
    entries += [
        (positive_rows, rows[positive], np.ones(positive.size)),
        (positive_rows, cols[positive], np.ones(positive.size)),
        (positive_rows, size + positive, -np.ones(positive.size)),
    ]
    r, c, v = (np.concatenate(parts) for parts in zip(*entries))
    matrix = scipy.sparse.csr_array((v, (r, c)), shape=(offset + positive.size, size + pairs))
    upper = np.concatenate([np.zeros(offset), np.ones(positive.size)])
    options: dict[str, Any] = {"mip_rel_gap": 0.0, "disp": False}
    if time_limit is not None:
        options["time_limit"] = max(time_limit, 0.0)
    result = milp(
        cost,
        integrality=np.concatenate([np.ones(size), np.zeros(pairs)]),
        bounds=Bounds(0.0, 1.0),
        constraints=[LinearConstraint(matrix, -np.inf, upper)] if matrix.shape[0] else None,
        options=options,
    )
    bound = getattr(result, "mip_dual_bound", None)
    lower = float(bound) / scale if bound is not None and np.isfinite(bound) else -math.inf
    if result.x is None:  # no incumbent within the time limit: any state is feasible for a QUBO
        return np.zeros(size), lower, False
    return np.round(result.x[:size]), lower, result.status == 0


def solve_exactly(
    bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None
) -> tuple[dict[Any, int], dict[str, Any]]:
    """The minimum-energy sample of any BQM (in its vartype) and facts about the proof.

    Returns ``(sample, info)`` with ``info`` keys ``certified``, ``gap``, ``lower_bound``,
    ``components``, ``enumerated``, ``milp``.
    """
    binary = bqm if bqm.vartype is dimod.BINARY else bqm.change_vartype(dimod.BINARY, inplace=False)
    order = list(binary.variables)
    linear, (rows, cols, biases), offset = binary.to_numpy_vectors(variable_order=order)
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    size = len(order)
    graph = scipy.sparse.coo_array((np.ones(rows.size), (rows, cols)), shape=(size, size))
    count, component_of = connected_components(graph, directed=False) if size else (0, np.zeros(0, int))
    state = np.zeros(size)
    lower_bound = float(offset)
    certified = True
    enumerated = solved_by_milp = 0
    deadline = None if time_limit is None else time.perf_counter() + time_limit
    order_of_components = np.argsort(component_of, kind="stable")
    boundaries = np.searchsorted(component_of[order_of_components], np.arange(count + 1))
    pair_component = component_of[rows] if rows.size else np.zeros(0, int)
    pair_order = np.argsort(pair_component, kind="stable")
    pair_bounds = np.searchsorted(pair_component[pair_order], np.arange(count + 1))
    local = np.empty(size, dtype=np.int64)
    for comp in range(count):
        members = order_of_components[boundaries[comp] : boundaries[comp + 1]]
        local[members] = np.arange(members.size)
        pairs = pair_order[pair_bounds[comp] : pair_bounds[comp + 1]]
        r, c, b = local[rows[pairs]], local[cols[pairs]], biases[pairs]
        h = linear[members]
        if members.size <= MAX_ENUMERATION_VARIABLES:
            upper = np.zeros((members.size, members.size))
            np.add.at(upper, (np.minimum(r, c), np.maximum(r, c)), b)
            sub_state, energy = _enumerate(h, upper)
            lower_bound += energy
            enumerated += 1
        else:
            remaining = None if deadline is None else deadline - time.perf_counter()
            sub_state, bound, proven = _milp(h, r, c, b, remaining)
            lower_bound += bound
            certified &= proven
            solved_by_milp += 1
        state[members] = sub_state
    energy = float(binary.energy(dict(zip(order, state.astype(int)))))
    if certified:
        gap = 0.0
    else:
        gap = (energy - lower_bound) / abs(energy) if energy != 0 else math.inf
    values = state.astype(int) if bqm.vartype is dimod.BINARY else 2 * state.astype(int) - 1
    info = {
        "certified": certified,
        "gap": float(gap),
        "lower_bound": energy if certified else float(lower_bound),
        "components": int(count),
        "enumerated": enumerated,
        "milp": solved_by_milp,
    }
    return dict(zip(order, values.tolist())), info


class ExactSampler(dimod.Sampler):
    """Certified optimum: one sample, ``info["certified"]`` says whether optimality is proven.

    Args:
        formulation: optional object with ``.bqm``, ``.exact() -> (plan, energy)`` and
            ``.encode(plan)``; its BQM is then answered from its own certified optimum. When it
            also has ``.exact_result()`` (with ``certified``, ``gap``, ``method``), those facts go
            into ``info`` (a time-limited MILP may end uncertified).
        time_limit: default wall-clock limit (seconds) for the MILP components; None = no limit.
    """

    def __init__(self, formulation: Any | None = None, time_limit: float | None = None) -> None:
        if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0):
            raise SolverError(f"exact solver: time_limit must be a positive number of seconds, got {time_limit!r}")
        self.formulation = formulation
        self.time_limit = time_limit

    @property
    def parameters(self) -> dict[str, list[str]]:
        """``time_limit`` (seconds, MILP components only)."""
        return {"time_limit": []}

    @property
    def properties(self) -> dict[str, Any]:
        """Limits of the methods used."""
        return {
            "max_enumeration_variables": MAX_ENUMERATION_VARIABLES,
            "bound_formulation": type(self.formulation).__name__ if self.formulation is not None else None,
        }

    def _is_formulation_bqm(self, bqm: dimod.BinaryQuadraticModel) -> bool:
        return self.formulation is not None and (bqm is self.formulation.bqm or bqm == self.formulation.bqm)

    def sample(self, bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None) -> dimod.SampleSet:
        """The optimum of ``bqm`` as a one-sample SampleSet, with proof facts in ``info``."""
        limit = self.time_limit if time_limit is None else time_limit
        start = time.perf_counter()
        if self._is_formulation_bqm(bqm):
            plan, energy = self.formulation.exact()
            sample = self.formulation.encode(plan)
            info: dict[str, Any] = {
                "certified": True,
                "gap": 0.0,
                "method": "per-component enumeration",
                "certified_energy": float(energy),
            }
            if hasattr(self.formulation, "exact_result"):  # formulations whose proof can stop short
                result = self.formulation.exact_result()
                info.update(certified=bool(result.certified), gap=float(result.gap), method=result.method)
        else:
            sample, info = solve_exactly(bqm, limit)
            info["method"] = "connected components: enumeration and MILP (HiGHS)"
        seconds = time.perf_counter() - start
        variables = list(bqm.variables)
        return timed_sampleset(bqm, np.array([[sample[v] for v in variables]], dtype=np.int8), variables, seconds, info)
