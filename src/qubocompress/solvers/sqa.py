"""``sqa``: simulated quantum annealing — path-integral Monte Carlo (OpenJij ``SQASampler``).

The classical emulation of adiabatic quantum computing: ``trotter`` replicas of the Ising model,
coupled along imaginary time, anneal ``H(s) = s·H_p + Γ(1−s)·Σσˣ`` from s = 0 to 1 at a fixed
inverse temperature β (OpenJij's default schedule: the Morita–Nishimori quartic in s, one sweep
per step, ``num_sweeps`` steps; or a custom ``schedule`` of ``(s, one_mc_step)`` /
``(s, beta, one_mc_step)`` tuples).

Scaling. β is absolute, so the BQM is first rescaled to its Ising form with max |bias| = 1
(``info["energy_scale"]`` is the divisor). The compression QUBOs span four to five decades of
bias (bit variables ~1, pruning couplings ~1e-5 after rescaling), and OpenJij's default β = 5
leaves the pruning variables at random (relative gaps 1e-2 to 2e-1 measured). The default β is
therefore set from the smallest bias δ of the rescaled model: ``β = ln(100·n) / (2δ)``, the
temperature at which a sweep over all n spins makes about 0.01 excitations against the weakest
term (the same reasoning as dwave's cold end of the SA β range).

Threads. OpenJij's OpenMP kernel runs on ``threads`` threads (default 1, set through threadpoolctl
for the call only): on a shared 2-core machine two threads made a 4-read run on 133 variables take
2.7–24 s against 0.9–1.1 s with one (spinning barriers under load), and one thread per solver
keeps the comparison with the single-threaded dwave samplers fair.

Seeds. OpenJij's ``seed=`` reuses one seed for every read and every replica's start, so all reads
come out identical. Each read here is a separate one-read call with its own 32-bit seed drawn from
``numpy.random.SeedSequence(seed)``: reads are independent, and the same seed gives the same
SampleSet.
"""

from __future__ import annotations

import math
import time
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import SolverError
from qubocompress.solvers.base import (
    Requirement,
    empty_sampleset,
    known_options,
    positive_int,
    read_seeds,
    require_all,
    timed_sampleset,
)

SQA_REQUIRES: tuple[Requirement, ...] = (("openjij", "sqa", "openjij"), ("threadpoolctl", "sqa", "threadpoolctl"))

# Smallest bias (relative to the largest, 1 after rescaling) that counts when setting the default β.
MIN_RELATIVE_BIAS = 1e-7


def default_beta(linear: np.ndarray, couplings: np.ndarray) -> float:
    """``ln(100·n) / (2δ)`` with δ the smallest nonzero |bias| of a rescaled Ising model (max |bias| = 1)."""
    biases = np.abs(np.concatenate([linear, couplings]))
    biases = biases[biases > MIN_RELATIVE_BIAS]
    smallest = float(biases.min()) if biases.size else 1.0
    return math.log(100.0 * max(linear.size, 1)) / (2.0 * smallest)


class SimulatedQuantumAnnealingSampler(dimod.Sampler):
    """OpenJij path-integral SQA on the rescaled Ising form, with independent seeded reads.

    Args:
        **defaults: overrides of :attr:`DEFAULTS`: ``num_reads``, ``trotter`` (replicas),
            ``num_sweeps``, ``gamma`` (transverse field Γ, in units of the largest bias),
            ``beta`` (None = :func:`default_beta`), ``schedule`` (None = quartic), ``threads``
            (OpenMP threads).
    """

    DEFAULTS: dict[str, Any] = {
        "num_reads": 20,
        "trotter": 8,
        "num_sweeps": 1000,
        "gamma": 1.0,
        "beta": None,
        "schedule": None,
        "threads": 1,
    }

    def __init__(self, **defaults: Any) -> None:
        self._openjij, self._threadpoolctl = require_all(SQA_REQUIRES, "sqa")
        self.defaults = self._checked({**self.DEFAULTS, **defaults})

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        known_options(params, self.parameters, "simulated quantum annealing")
        for key in ("num_reads", "trotter", "num_sweeps", "threads"):
            positive_int(params[key], key, "solver 'sqa'")
        for key in ("gamma", "beta"):
            value = params[key]
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SolverError(f"solver 'sqa': {key} must be a positive number, got {value!r}")
        return params

    @property
    def parameters(self) -> dict[str, list[str]]:
        """``num_reads``, ``seed``, ``trotter``, ``num_sweeps``, ``gamma``, ``beta``, ``schedule``."""
        return {key: [] for key in (*self.DEFAULTS, "seed")}

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults and the rescaling rule."""
        return {"defaults": dict(self.defaults), "rescaled_max_abs_bias": 1.0}

    def sample(self, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any) -> dimod.SampleSet:
        """Anneal ``bqm``; keyword arguments override the defaults."""
        params = self._checked({**self.defaults, **kwargs})
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"parameters": params})
        start = time.perf_counter()
        variables = list(bqm.variables)
        spin = bqm if bqm.vartype is dimod.SPIN else bqm.change_vartype(dimod.SPIN, inplace=False)
        linear, (rows, cols, couplings), _ = spin.to_numpy_vectors(variable_order=variables)
        scale = float(np.max(np.abs(np.concatenate([linear, couplings])), initial=0.0)) or 1.0
        linear, couplings = linear / scale, couplings / scale
        beta = params["beta"] if params["beta"] is not None else default_beta(linear, couplings)
        model = self._openjij.BinaryQuadraticModel(
            {i: float(h) for i, h in enumerate(linear)},
            {(int(i), int(j)): float(c) for i, j, c in zip(rows, cols, couplings)},
            0.0,
            dimod.SPIN,
        )
        sampler = self._openjij.SQASampler()
        options = {
            "beta": beta,
            "gamma": params["gamma"],
            "trotter": params["trotter"],
            "num_sweeps": params["num_sweeps"],
            "schedule": params["schedule"],
        }
        spins = np.empty((params["num_reads"], len(variables)), dtype=np.int8)
        try:
            with self._threadpoolctl.threadpool_limits(limits=params["threads"], user_api="openmp"):
                for read, read_seed in enumerate(read_seeds(seed, params["num_reads"])):
                    response = sampler.sample(model, num_reads=1, seed=int(read_seed), **options)
                    spins[read, np.asarray(response.variables, dtype=np.int64)] = response.record.sample[0]
        except (ValueError, TypeError, RuntimeError) as exc:
            raise SolverError(f"simulated quantum annealing rejected its parameters: {exc}") from exc
        seconds = time.perf_counter() - start
        samples = spins if bqm.vartype is dimod.SPIN else ((spins + 1) // 2).astype(np.int8)
        info = {
            "beta": float(beta),
            "energy_scale": scale,
            "parameters": {key: value for key, value in params.items() if key != "schedule"},
            "schedule": "custom" if params["schedule"] is not None else "quartic (Morita-Nishimori)",
        }
        return timed_sampleset(bqm, samples, variables, seconds, info)
