"""What every solver shares: a timed SampleSet whose energies are the BQM's own, and a seeded solve call."""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

import dimod
import numpy as np
import scipy.sparse

from qubocompress.errors import SolverError


def timed_sampleset(
    bqm: dimod.BinaryQuadraticModel,
    samples: np.ndarray,
    variables: list[Any],
    solve_seconds: float,
    info: dict[str, Any] | None = None,
    num_occurrences: np.ndarray | None = None,
    vectors: Mapping[str, np.ndarray] | None = None,
) -> dimod.SampleSet:
    """A SampleSet of ``samples`` (rows over ``variables``, in ``bqm``'s vartype) with energies from ``bqm``.

    ``info["timing"]["solve_seconds"]`` holds the wall time of the solve (seconds); any
    ``info["timing"]`` entries given are kept next to it. ``vectors`` adds per-read data fields
    (e.g. ``chain_break_fraction``, ``run``).
    """
    info = dict(info or {})
    info["timing"] = {"solve_seconds": float(solve_seconds), **info.get("timing", {})}
    extra = dict(vectors or {})
    if num_occurrences is not None:
        extra["num_occurrences"] = num_occurrences
    return dimod.SampleSet.from_samples_bqm((samples, variables), bqm, info=info, **extra)


def solve(
    sampler: dimod.Sampler, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any
) -> dimod.SampleSet:
    """``sampler.sample(bqm, **kwargs)``, passing ``seed`` only to samplers that take one."""
    if seed is not None and "seed" in sampler.parameters:
        kwargs["seed"] = seed
    return sampler.sample(bqm, **kwargs)


# An optional module a solver imports: (module, extra that installs it, package name), as for ``require``.
Requirement = tuple[str, str, str]


def _missing(solver: str, extra: str, package: str) -> SolverError:
    """The one-line SolverError for an optional package that is not installed."""
    return SolverError(f"solver {solver!r} needs {package}: pip install 'qubocompress[{extra}]'")


def require(module: str, solver: str, extra: str, package: str) -> ModuleType:
    """Import the optional ``module`` a solver needs, or say which extra installs it (SolverError)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(solver, extra, package) from exc


def require_all(requirements: Sequence[Requirement], solver: str) -> list[ModuleType]:
    """:func:`require` for each (module, extra, package) of ``requirements``: the modules, in order."""
    return [require(module, solver, extra, package) for module, extra, package in requirements]


def require_installed(module: str, solver: str, extra: str, package: str) -> None:
    """:func:`require`'s check without the import: SolverError (the same one-line message) unless
    ``module`` can be found. Cheap: finds the module without running it (its parent packages are
    imported, e.g. the ``dwave`` namespace for ``dwave.system``), so nothing heavy such as torch loads."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a stale module has no spec
        found = False
    if not found:
        raise _missing(solver, extra, package)


def known_options(options: Iterable[str], valid: Iterable[str], who: str) -> None:
    """SolverError naming the valid options if ``options`` has a name not in ``valid``."""
    valid = sorted(valid)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SolverError(f"{who} has no option {', '.join(unknown)}; valid options: {', '.join(valid)}")


def positive_int(value: Any, name: str, who: str) -> int:
    """``value`` if it is an integer >= 1, else a SolverError ``"<who>: <name> must be ..."``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SolverError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


def positive_number(value: Any, name: str, who: str, unit: str) -> float:
    """``value`` as a float if it is a finite real number > 0 (not a bool), else a SolverError
    ``"<who>: <name> must be a positive number of <unit>, got ..."``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not (math.isfinite(value) and value > 0)
    ):
        raise SolverError(f"{who}: {name} must be a positive number of {unit}, got {value!r}")
    return float(value)


def time_limit_seconds(value: Any, who: str) -> float | None:
    """A wall-clock limit in seconds (> 0, finite) or None, else a SolverError ``"<who>: time_limit ..."``."""
    return None if value is None else positive_number(value, "time_limit", who, "seconds")


def combined_stop_reason(reasons: Sequence[str]) -> str:
    """Why several runs stopped, as one reason: ``time_limit`` if any ran out of time, else
    ``convergence`` if all converged, else ``evaluations``."""
    if "time_limit" in reasons:
        return "time_limit"
    if all(reason == "convergence" for reason in reasons):
        return "convergence"
    return "evaluations"


def read_seeds(seed: int | None, count: int) -> np.ndarray:
    """``count`` independent 32-bit seeds derived from ``seed`` (fresh entropy when None)."""
    return np.random.SeedSequence(seed).generate_state(count, dtype=np.uint32)


def empty_sampleset(bqm: dimod.BinaryQuadraticModel, info: dict[str, Any] | None = None) -> dimod.SampleSet:
    """The answer to a BQM without variables: one empty sample whose energy is the offset."""
    return timed_sampleset(bqm, np.zeros((1, 0), dtype=np.int8), [], 0.0, info)


class BinaryQuadratic:
    """A BQM as BINARY numpy arrays: ``E(x) = offset + x·linear + Σ_(i<j) upper[i, j] x_i x_j``.

    Attributes:
        variables: the BQM's variables, in the column order of every state matrix.
        vartype: the BQM's own vartype (samples go back to it with :meth:`to_vartype`).
        linear: shape ``(n,)``; upper: ``(n, n)`` sparse CSR, strictly upper triangular.
    """

    def __init__(self, bqm: dimod.BinaryQuadraticModel) -> None:
        self.variables = list(bqm.variables)
        self.vartype = bqm.vartype
        binary = bqm if bqm.vartype is dimod.BINARY else bqm.change_vartype(dimod.BINARY, inplace=False)
        linear, (rows, cols, biases), offset = binary.to_numpy_vectors(variable_order=self.variables)
        size = len(self.variables)
        low, high = np.minimum(rows, cols), np.maximum(rows, cols)
        self.linear = np.asarray(linear, dtype=np.float64)
        self.upper = scipy.sparse.csr_array((np.asarray(biases, dtype=np.float64), (low, high)), shape=(size, size))
        self.offset = float(offset)

    @property
    def num_variables(self) -> int:
        """Number of variables."""
        return len(self.variables)

    def energies(self, states: np.ndarray) -> np.ndarray:
        """Energies of the 0/1 rows of ``states`` (shape ``(m, n)``)."""
        x = np.asarray(states, dtype=np.float64)
        return self.offset + x @ self.linear + np.einsum("ij,ij->i", (self.upper.T @ x.T).T, x)

    def dense_upper(self, dtype: Any = np.float64) -> np.ndarray:
        """The couplings as a dense ``(n, n)`` upper-triangular matrix (n² entries of ``dtype``)."""
        dense = np.zeros((self.num_variables,) * 2, dtype=dtype)
        coo = self.upper.tocoo()
        dense[coo.row, coo.col] = coo.data
        return dense

    def to_vartype(self, states: np.ndarray) -> np.ndarray:
        """0/1 rows as int8 samples in the BQM's vartype (±1 for SPIN)."""
        binary = np.asarray(states, dtype=np.int8)
        return binary if self.vartype is dimod.BINARY else (2 * binary - 1).astype(np.int8)


class WrappedSampler(dimod.Sampler):
    """A dimod sampler from another library behind our defaults, option checks and timing.

    Subclasses set :attr:`title` (for messages), :attr:`DEFAULTS` and :meth:`_make_sampler`;
    :meth:`_check` may validate option values. ``sample()`` keyword arguments override the
    defaults; the wrapped sampler's own timing info lands in ``info["timing"]`` as ``sampler_*``.
    """

    title = "sampler"
    DEFAULTS: dict[str, Any] = {}

    def __init__(self, **defaults: Any) -> None:
        self._sampler = self._make_sampler()
        known_options(defaults, self._sampler.parameters, self.title)
        self._check(defaults)
        self.defaults = {**self.DEFAULTS, **defaults}

    def _make_sampler(self) -> dimod.Sampler:
        raise NotImplementedError

    def _check(self, options: Mapping[str, Any]) -> None:
        """Raise SolverError for a bad option value (``num_reads`` is checked here)."""
        if "num_reads" in options:
            positive_int(options["num_reads"], "num_reads", self.title)

    def _parameters(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """What the wrapped sampler gets: the defaults with ``sample()``'s keyword arguments on top."""
        return {**self.defaults, **overrides}

    @property
    def parameters(self) -> dict[str, list[str]]:
        """The keyword arguments :meth:`sample` accepts (the wrapped sampler's)."""
        return dict(self._sampler.parameters)

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults in use and the wrapped sampler's own properties."""
        return {**self._sampler.properties, "defaults": dict(self.defaults)}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
        """Sample ``bqm``; keyword arguments override the defaults (e.g. ``seed``, ``num_reads``)."""
        self._check(kwargs)
        params = self._parameters(kwargs)
        start = time.perf_counter()
        try:
            result = self._sampler.sample(bqm, **params)
        except (ValueError, TypeError) as exc:
            raise SolverError(f"{self.title} rejected its parameters: {exc}") from exc
        seconds = time.perf_counter() - start
        info = {key: value for key, value in result.info.items() if key != "timing"}
        info["timing"] = {f"sampler_{key}": value for key, value in result.info.get("timing", {}).items()}
        info["parameters"] = {
            key: value for key, value in params.items() if isinstance(value, (bool, int, float, str, type(None)))
        }
        vectors = {
            name: result.record[name]
            for name in result.record.dtype.names
            if name not in ("sample", "energy", "num_occurrences")
        }
        return timed_sampleset(
            bqm,
            result.record.sample,
            list(result.variables),
            seconds,
            info=info,
            num_occurrences=result.record.num_occurrences,
            vectors=vectors,
        )
