"""Solvers: one ``dimod.Sampler`` per method, each returning a SampleSet with timings in ``info``."""

from qubocompress.solvers.base import solve
from qubocompress.solvers.exact import ExactSampler, solve_exactly
from qubocompress.solvers.registry import SOLVER_NAMES, SOLVERS, make_sampler
from qubocompress.solvers.sa import SimulatedAnnealingSampler

__all__ = [
    "SOLVERS",
    "SOLVER_NAMES",
    "ExactSampler",
    "SimulatedAnnealingSampler",
    "make_sampler",
    "solve",
    "solve_exactly",
]
