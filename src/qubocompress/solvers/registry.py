"""Solver names -> sampler factories. To add a solver, add one ``SolverEntry`` to ``SOLVERS``.

A factory takes the formulation (or None) and the user's options and returns a ``dimod.Sampler``;
solvers that do not use the formulation simply ignore it. Optional packages (openjij,
simulated-bifurcation, dwave-system, dwave-hybrid, pymoo, stable-baselines3) are imported only when their
sampler is built, and a missing one is a SolverError naming the extra to install.

:func:`preflight` is the cheap check to run before any other work: the name is known, the optional
packages its sampler imports are installed (``SolverEntry.requires``, found without importing
them), and any further check of the entry (``SolverEntry.check``: for ``qpu``, ``hybrid``,
``hybrid-cqm`` and ``qpu-decomposed`` unless ``qpu=mock``, that a D-Wave API token is configured; read locally, no
network call). It builds no sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dimod

from qubocompress.errors import SolverError
from qubocompress.solvers.base import Requirement, require_installed
from qubocompress.solvers.decomposed import DECOMPOSED_REQUIRES, DecomposedQpuSampler, check_decomposed
from qubocompress.solvers.exact import ExactSampler
from qubocompress.solvers.ga import GA_REQUIRES, GeneticAlgorithmSampler
from qubocompress.solvers.greedy import SteepestDescentSampler
from qubocompress.solvers.hybrid import HYBRID_REQUIRES, HybridCQMSampler, HybridSampler
from qubocompress.solvers.qpu import QPU_REQUIRES, QpuSampler, check_token
from qubocompress.solvers.rl import RL_REQUIRES, ReinforcementLearningSampler
from qubocompress.solvers.sa import SimulatedAnnealingSampler
from qubocompress.solvers.sb import SB_REQUIRES, SimulatedBifurcationSampler
from qubocompress.solvers.sqa import SQA_REQUIRES, SimulatedQuantumAnnealingSampler
from qubocompress.solvers.tabu import TabuSearchSampler
from qubocompress.solvers.uniform import UniformRandomSampler


@dataclass(frozen=True)
class SolverEntry:
    """How to build one solver, and a one-line description for listings.

    ``requires``: the optional modules its sampler imports, as (module, extra, package) — what
    :func:`preflight` checks are installed (the sampler module's own list, which its constructor requires).
    ``check``: a further cheap check ``check(name, options)`` for :func:`preflight`, raising SolverError.
    """

    factory: Callable[..., dimod.Sampler]
    description: str
    requires: tuple[Requirement, ...] = ()
    check: Callable[[str, Mapping[str, Any]], None] | None = None


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
        requires=SQA_REQUIRES,
    ),
    "sb": SolverEntry(
        lambda formulation, **options: SimulatedBifurcationSampler(**options),
        "discrete simulated bifurcation (simulated-bifurcation, torch; CUDA when available), 128 agents",
        requires=SB_REQUIRES,
    ),
    "qpu": SolverEntry(
        lambda formulation, **options: QpuSampler(**options),
        "D-Wave QPU with minor-embedding (dwave-system; needs a Leap token), 100 reads",
        requires=QPU_REQUIRES,
        check=check_token,
    ),
    "qpu-decomposed": SolverEntry(
        lambda formulation, **options: DecomposedQpuSampler(**options),
        "dwave-hybrid decomposition (Kerberos-like): 50-variable sub-problems embedded on the QPU, racing tabu; "
        "needs a Leap token, or qpu=mock for MockDWaveSampler (classical, not a QPU)",
        requires=DECOMPOSED_REQUIRES,
        check=check_decomposed,
    ),
    "hybrid": SolverEntry(
        lambda formulation, **options: HybridSampler(**options),
        "D-Wave Leap hybrid BQM solver, for problems larger than a QPU (needs a Leap token)",
        requires=HYBRID_REQUIRES,
        check=check_token,
    ),
    "hybrid-cqm": SolverEntry(
        lambda formulation, **options: HybridCQMSampler(formulation, **options),
        "D-Wave Leap hybrid CQM solver on the budget formulation's constrained model (needs a Leap token)",
        requires=HYBRID_REQUIRES,
        check=check_token,
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
        requires=GA_REQUIRES,
    ),
    "rl": SolverEntry(
        lambda formulation, **options: ReinforcementLearningSampler(formulation, **options),
        "HAQ/AMC-style PPO agent (stable-baselines3) choosing prune ratio and bits per layer",
        requires=RL_REQUIRES,
    ),
}
SOLVER_NAMES: tuple[str, ...] = tuple(SOLVERS)


def solver_entry(name: str) -> SolverEntry:
    """The registry entry of solver ``name``; SolverError naming the valid ones if there is none."""
    entry = SOLVERS.get(name)
    if entry is None:
        raise SolverError(f"unknown solver {name!r}; choose one of: {', '.join(SOLVER_NAMES)}")
    return entry


def preflight(solver_name: str, options: Mapping[str, Any] | None = None) -> None:
    """Cheap check that solver ``solver_name`` can be built with ``options``; run it before any work.

    SolverError (the same one-line message :func:`make_sampler` would give later) if the name is
    unknown, an optional package its sampler imports is not installed, or — for ``qpu`` and
    ``hybrid`` — no D-Wave API token is configured (``client_config``'s, ``DWAVE_API_TOKEN``, or the
    config file of ``dwave setup --auth``). Builds no sampler and makes no network call; the optional
    packages are found, not imported (torch stays unloaded) — only ``dwave.cloud.config`` is imported,
    for ``qpu`` and ``hybrid``, to read the token. ``options`` are the sampler's keyword arguments
    (``CompressConfig.solver_options``): ``client_config`` and ``child_sampler`` matter to the token
    check; the other values are checked when the sampler is built.
    """
    entry = solver_entry(solver_name)
    for module, extra, package in entry.requires:
        require_installed(module, solver_name, extra, package)
    if entry.check is not None:
        entry.check(solver_name, dict(options or {}))


def make_sampler(name: str, formulation: Any | None = None, **options: Any) -> dimod.Sampler:
    """The sampler called ``name``, built for ``formulation`` with ``options``."""
    entry = solver_entry(name)
    try:
        return entry.factory(formulation, **options)
    except TypeError as exc:
        raise SolverError(f"solver {name!r} does not accept these options ({', '.join(options)}): {exc}") from exc
