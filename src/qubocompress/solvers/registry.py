"""Solver names -> sampler factories. To add a solver, add one ``SolverEntry`` to ``SOLVERS``.

A factory takes the formulation (or None) and the user's options and returns a ``dimod.Sampler``;
solvers that do not use the formulation simply ignore it. Optional packages (openjij,
simulated-bifurcation, dwave-system, pymoo, stable-baselines3) are imported only when their
sampler is built, and a missing one is a SolverError naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dimod

from qubocompress.errors import SolverError
from qubocompress.solvers.exact import ExactSampler
from qubocompress.solvers.ga import GeneticAlgorithmSampler
from qubocompress.solvers.greedy import SteepestDescentSampler
from qubocompress.solvers.hybrid import HybridSampler
from qubocompress.solvers.qpu import QpuSampler
from qubocompress.solvers.rl import ReinforcementLearningSampler
from qubocompress.solvers.sa import SimulatedAnnealingSampler
from qubocompress.solvers.sb import SimulatedBifurcationSampler
from qubocompress.solvers.sqa import SimulatedQuantumAnnealingSampler
from qubocompress.solvers.tabu import TabuSearchSampler
from qubocompress.solvers.uniform import UniformRandomSampler


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
    "tabu": SolverEntry(
        lambda formulation, **options: TabuSearchSampler(**options),
        "multistart tabu search (dwave-samplers), 10 reads × 20 restarts, work-bounded so seeds reproduce",
    ),
    "greedy": SolverEntry(
        lambda formulation, **options: SteepestDescentSampler(**options),
        "steepest descent (dwave-samplers) from 1,000 seeded random states",
    ),
    "sqa": SolverEntry(
        lambda formulation, **options: SimulatedQuantumAnnealingSampler(**options),
        "simulated quantum annealing, path-integral Monte Carlo (openjij), 20 reads × 8 Trotter slices",
    ),
    "sb": SolverEntry(
        lambda formulation, **options: SimulatedBifurcationSampler(**options),
        "discrete simulated bifurcation (simulated-bifurcation, torch; CUDA when available), 128 agents",
    ),
    "qpu": SolverEntry(
        lambda formulation, **options: QpuSampler(**options),
        "D-Wave QPU with minor-embedding (dwave-system; needs a Leap token), 100 reads",
    ),
    "hybrid": SolverEntry(
        lambda formulation, **options: HybridSampler(**options),
        "D-Wave Leap hybrid BQM solver, for problems larger than a QPU (needs a Leap token)",
    ),
    "exact": SolverEntry(
        lambda formulation, **options: ExactSampler(formulation, **options),
        "certified optimum: the formulation's own enumeration, else components by enumeration / MILP",
    ),
    "random": SolverEntry(
        lambda formulation, **options: UniformRandomSampler(**options),
        "uniformly random states (dimod), 20 reads: the control; with the polish, what the polish alone finds",
    ),
    "ga": SolverEntry(
        lambda formulation, **options: GeneticAlgorithmSampler(**options),
        "genetic algorithm (pymoo) on the BQM energy, population 100, up to 1,000 generations",
    ),
    "rl": SolverEntry(
        lambda formulation, **options: ReinforcementLearningSampler(formulation, **options),
        "HAQ/AMC-style PPO agent (stable-baselines3) choosing prune ratio and bits per layer",
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
