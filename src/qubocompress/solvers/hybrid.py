"""``hybrid``: D-Wave's Leap hybrid BQM solver (``LeapHybridSampler``), for problems too large for a QPU;
``hybrid-cqm``: its constrained-model solver (``LeapHybridCQMSampler``) on the formulation's CQM.

The cloud solver runs classical heuristics together with QPU calls for ``time_limit`` seconds
(None = the solver's minimum for the problem size) and returns one or a few samples. Its timing
(µs) is reported in ``info["hybrid_timing_us"]`` and, in seconds, in ``info["timing"]``
(``run_seconds``, ``qpu_access_seconds``, ``charge_seconds``). The token and every failure are
handled as for ``qpu`` (see :mod:`qubocompress.solvers.qpu`; ``check_token`` there is the cheap
check ``preflight("hybrid")`` runs). Not seedable.

``hybrid-cqm`` sends the formulation's :meth:`to_cqm` (the budget formulation's: one-hot choices
as discrete constraints, the budget as an inequality, no penalties or slack) instead of the BQM,
and returns its reads as reads of the BQM (the formulation's ``samples_from_states``), so the
route decodes and polishes them as any other solver's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import dimod

from qubocompress.errors import SolverError
from qubocompress.solvers.base import Requirement, empty_sampleset, require_all, time_limit_seconds, timed_sampleset
from qubocompress.solvers.qpu import call_cloud

# The optional modules ``hybrid`` imports, as (module, extra, package) for ``require``.
HYBRID_REQUIRES: tuple[Requirement, ...] = (("dwave.system", "qpu", "dwave-system"),)

# Timing fields of a hybrid answer (µs) -> their name in seconds under info["timing"].
TIMING_FIELDS = {"run_time": "run_seconds", "qpu_access_time": "qpu_access_seconds", "charge_time": "charge_seconds"}


class LeapSampler(dimod.Sampler):
    """What Leap's hybrid samplers share: a cloud child (``child``) and a default ``time_limit`` (s)."""

    child: Any
    time_limit: float | None

    @staticmethod
    def connect(
        child_sampler: Any,
        solver: dict[str, Any] | str | None,
        client_config: dict[str, Any] | None,
        make: Any,
        name: str,
    ) -> Any:
        """``child_sampler``, else ``make(solver=solver, **client_config)`` (which connects at once)."""
        if child_sampler is not None:
            return child_sampler
        config = dict(client_config or {})
        if solver is not None:
            config["solver"] = solver
        return call_cloud(lambda: make(**config), name)

    @property
    def parameters(self) -> dict[str, list[str]]:
        """``time_limit`` (seconds)."""
        return {"time_limit": []}

    @property
    def properties(self) -> dict[str, Any]:
        """The default time limit and the cloud solver's own properties."""
        return {"time_limit": self.time_limit, "solver_properties": dict(self.child.properties)}


class HybridSampler(LeapSampler):
    """Leap's hybrid BQM solver; every failure is a one-line SolverError.

    Args:
        child_sampler: a sampler with LeapHybridSampler's interface (default:
            ``LeapHybridSampler(solver=solver, **client_config)``, which connects at once).
        solver: dwave-cloud-client solver filter or name.
        client_config: further dwave-cloud-client keyword arguments.
        time_limit: default run time in seconds (> 0; None = the solver's minimum).
    """

    def __init__(
        self,
        child_sampler: dimod.Sampler | None = None,
        solver: dict[str, Any] | str | None = None,
        client_config: dict[str, Any] | None = None,
        time_limit: float | None = None,
    ) -> None:
        (system,) = require_all(HYBRID_REQUIRES, "hybrid")
        self.time_limit = time_limit_seconds(time_limit, "solver 'hybrid'")
        self.child = self.connect(child_sampler, solver, client_config, system.LeapHybridSampler, "hybrid")

    def sample(self, bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None) -> dimod.SampleSet:
        """Solve ``bqm`` in the cloud for ``time_limit`` seconds (default: the constructor's)."""
        limit = time_limit_seconds(time_limit, "solver 'hybrid'")
        limit = self.time_limit if limit is None else limit
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"time_limit": limit})
        result, seconds, info = run_in_cloud(
            "hybrid",
            limit,
            lambda: self.child.min_time_limit(bqm),
            lambda seconds: self.child.sample(bqm, time_limit=seconds),
            bqm.num_variables,
        )
        return timed_sampleset(
            bqm,
            result.record.sample,
            list(result.variables),
            seconds,
            info,
            num_occurrences=result.record.num_occurrences,
        )


def run_in_cloud(
    solver: str,
    limit: float | None,
    minimum: Callable[[], float],
    run: Callable[[float], dimod.SampleSet],
    variables: int,
) -> tuple[dimod.SampleSet, float, dict[str, Any]]:
    """One hybrid solve: ``run(seconds)`` for ``limit`` seconds (None: the solver's ``minimum()``),
    resolved; every failure a one-line SolverError. Returns (answer, wall seconds, info: the time
    limit, problem id, timing in µs and, under ``"timing"``, in seconds)."""
    least = call_cloud(minimum, solver)
    if limit is not None and limit < least:
        raise SolverError(
            f"solver {solver!r}: time_limit {limit:g} s is below the solver's minimum of {least:g} s "
            f"for {variables} variables"
        )
    start = time.perf_counter()

    def resolved() -> dimod.SampleSet:
        result = run(limit if limit is not None else least)
        result.resolve()
        return result

    result = call_cloud(resolved, solver)
    seconds = time.perf_counter() - start
    raw = {key: value for key, value in result.info.items() if key in TIMING_FIELDS}
    info = {
        "time_limit": limit if limit is not None else least,
        "problem_id": result.info.get("problem_id"),
        "hybrid_timing_us": raw,
        "timing": {TIMING_FIELDS[key]: float(value) * 1e-6 for key, value in raw.items()},
    }
    return result, seconds, info


class HybridCQMSampler(LeapSampler):
    """Leap's hybrid CQM solver on ``formulation.to_cqm()``; every failure is a one-line SolverError.

    Args:
        formulation: what the BQM to be sampled came from; it needs ``to_cqm()`` and
            ``samples_from_states(sampleset)`` (the budget formulation has both).
        child_sampler: a sampler with LeapHybridCQMSampler's interface (``sample_cqm``,
            ``min_time_limit``; default: ``LeapHybridCQMSampler(solver=solver, **client_config)``,
            which connects at once).
        solver: dwave-cloud-client solver filter or name.
        client_config: further dwave-cloud-client keyword arguments.
        time_limit: default run time in seconds (> 0; None = the solver's minimum).
    """

    def __init__(
        self,
        formulation: Any,
        child_sampler: Any | None = None,
        solver: dict[str, Any] | str | None = None,
        client_config: dict[str, Any] | None = None,
        time_limit: float | None = None,
    ) -> None:
        (system,) = require_all(HYBRID_REQUIRES, "hybrid-cqm")
        if not (hasattr(formulation, "to_cqm") and hasattr(formulation, "samples_from_states")):
            name = getattr(formulation, "name", None)
            raise SolverError(
                f"solver 'hybrid-cqm' needs a formulation with a constrained model (budget); "
                f"{'none was given' if name is None else f'{name!r} has none'}"
            )
        self.formulation = formulation
        self.time_limit = time_limit_seconds(time_limit, "solver 'hybrid-cqm'")
        self.child = self.connect(child_sampler, solver, client_config, system.LeapHybridCQMSampler, "hybrid-cqm")

    def sample(self, bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None) -> dimod.SampleSet:
        """Solve the formulation's CQM in the cloud for ``time_limit`` seconds (default: the
        constructor's); the reads come back over ``bqm`` (the formulation's), energies from it, the
        CQM's own feasibility per read in ``info["cqm_feasible"]``."""
        limit = time_limit_seconds(time_limit, "solver 'hybrid-cqm'")
        limit = self.time_limit if limit is None else limit
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"time_limit": limit})
        cqm = self.formulation.to_cqm()
        result, seconds, info = run_in_cloud(
            "hybrid-cqm",
            limit,
            lambda: self.child.min_time_limit(cqm),
            lambda seconds: self.child.sample_cqm(cqm, time_limit=seconds),
            len(cqm.variables),
        )
        if "is_feasible" in result.record.dtype.names:
            info["cqm_feasible"] = [bool(v) for v in result.record.is_feasible]
        states = self.formulation.samples_from_states(result)
        return timed_sampleset(
            bqm,
            states.record.sample,
            list(states.variables),
            seconds,
            info,
            num_occurrences=states.record.num_occurrences,
        )
