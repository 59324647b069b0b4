"""``hybrid``: D-Wave's Leap hybrid BQM solver (``LeapHybridSampler``), for problems too large for a QPU.

The cloud solver runs classical heuristics together with QPU calls for ``time_limit`` seconds
(None = the solver's minimum for the problem size) and returns one or a few samples. Its timing
(µs) is reported in ``info["hybrid_timing_us"]`` and, in seconds, in ``info["timing"]``
(``run_seconds``, ``qpu_access_seconds``, ``charge_seconds``). The token and every failure are
handled as for ``qpu`` (see :mod:`qubocompress.solvers.qpu`; ``check_token`` there is the cheap
check ``preflight("hybrid")`` runs). Not seedable.
"""

from __future__ import annotations

import time
from typing import Any

import dimod

from qubocompress.errors import SolverError
from qubocompress.solvers.base import Requirement, empty_sampleset, require_all, time_limit_seconds, timed_sampleset
from qubocompress.solvers.qpu import call_cloud

# The optional modules ``hybrid`` imports, as (module, extra, package) for ``require``.
HYBRID_REQUIRES: tuple[Requirement, ...] = (("dwave.system", "qpu", "dwave-system"),)

# Timing fields of a hybrid answer (µs) -> their name in seconds under info["timing"].
TIMING_FIELDS = {"run_time": "run_seconds", "qpu_access_time": "qpu_access_seconds", "charge_time": "charge_seconds"}


class HybridSampler(dimod.Sampler):
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
        if child_sampler is None:
            config = dict(client_config or {})
            if solver is not None:
                config["solver"] = solver
            child_sampler = call_cloud(lambda: system.LeapHybridSampler(**config), "hybrid")
        self.child = child_sampler

    @property
    def parameters(self) -> dict[str, list[str]]:
        """``time_limit`` (seconds)."""
        return {"time_limit": []}

    @property
    def properties(self) -> dict[str, Any]:
        """The default time limit and the cloud solver's own properties."""
        return {"time_limit": self.time_limit, "solver_properties": dict(self.child.properties)}

    def sample(self, bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None) -> dimod.SampleSet:
        """Solve ``bqm`` in the cloud for ``time_limit`` seconds (default: the constructor's)."""
        limit = time_limit_seconds(time_limit, "solver 'hybrid'")
        limit = self.time_limit if limit is None else limit
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"time_limit": limit})
        minimum = call_cloud(lambda: self.child.min_time_limit(bqm), "hybrid")
        if limit is not None and limit < minimum:
            raise SolverError(
                f"solver 'hybrid': time_limit {limit:g} s is below the solver's minimum of {minimum:g} s "
                f"for {bqm.num_variables} variables"
            )
        start = time.perf_counter()

        def run() -> dimod.SampleSet:
            result = self.child.sample(bqm, time_limit=limit if limit is not None else minimum)
            result.resolve()
            return result

        result = call_cloud(run, "hybrid")
        seconds = time.perf_counter() - start
        raw = {key: value for key, value in result.info.items() if key in TIMING_FIELDS}
        info = {
            "time_limit": limit if limit is not None else minimum,
            "problem_id": result.info.get("problem_id"),
            "hybrid_timing_us": raw,
            "timing": {TIMING_FIELDS[key]: float(value) * 1e-6 for key, value in raw.items()},
        }
        return timed_sampleset(
            bqm,
            result.record.sample,
            list(result.variables),
            seconds,
            info,
            num_occurrences=result.record.num_occurrences,
        )
