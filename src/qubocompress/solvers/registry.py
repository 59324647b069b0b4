"""Solver names -> sampler factories. To add a solver, add one ``SolverEntry`` to ``SOLVERS``.

A factory takes the formulation (or None) and the user's options and returns a ``dimod.Sampler``;
solvers that do not use the formulation simply ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dimod

from qubocompress.errors import SolverError
from qubocompress.solvers.exact import ExactSampler
from qubocompress.solvers.sa import SimulatedAnnealingSampler


@dataclass(frozen=True)
class SolverEntry:
    """How to build one solver, and a one-line description for listings."""

    factory: Callable[..., dimod.Sampler]
    description: str


SOLVERS: dict[str, SolverEntry] = {
    "sa": SolverEntry(
        lambda formulation, **options: SimulatedAnnealingSampler(**options),
        "simulated annealing (dwave-samplers), linear β schedule, 300 reads × 10,000 sweeps",
    ),
    "exact": SolverEntry(
        lambda formulation, **options: ExactSampler(formulation, **options),
        "certified optimum: the formulation's own enumeration, else components by enumeration / MILP",
    ),
}
SOLVER_NAMES: tuple[str, ...] = tuple(SOLVERS)


def make_sampler(name: str, formulation: Any | None = None, **options: Any) -> dimod.Sampler:
    """The sampler called ``name``, built for ``formulation`` with ``options``."""
    entry = SOLVERS.get(name)
    if entry is None:
        raise SolverError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVER_NAMES)}")
    try:
        return entry.factory(formulation, **options)
    except TypeError as exc:
        raise SolverError(f"solver {name!r} does not accept these options ({', '.join(options)}): {exc}") from exc
