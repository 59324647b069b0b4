"""Solvers: one ``dimod.Sampler`` per method, each returning a SampleSet with timings in ``info``."""

from qubocompress.solvers.base import solve
from qubocompress.solvers.decomposed import DecomposedQpuSampler
from qubocompress.solvers.exact import ExactSampler, solve_exactly
from qubocompress.solvers.ga import GeneticAlgorithmSampler
from qubocompress.solvers.greedy import SteepestDescentSampler
from qubocompress.solvers.hybrid import HybridSampler
from qubocompress.solvers.qpu import QpuSampler
from qubocompress.solvers.registry import SOLVER_NAMES, SOLVERS, make_sampler
from qubocompress.solvers.rl import ReinforcementLearningSampler
from qubocompress.solvers.sa import SimulatedAnnealingSampler
from qubocompress.solvers.sb import SimulatedBifurcationSampler
from qubocompress.solvers.sqa import SimulatedQuantumAnnealingSampler
from qubocompress.solvers.tabu import TabuSearchSampler

__all__ = [
    "SOLVERS",
    "SOLVER_NAMES",
    "DecomposedQpuSampler",
    "ExactSampler",
    "GeneticAlgorithmSampler",
    "HybridSampler",
    "QpuSampler",
    "ReinforcementLearningSampler",
    "SimulatedAnnealingSampler",
    "SimulatedBifurcationSampler",
    "SimulatedQuantumAnnealingSampler",
    "SteepestDescentSampler",
    "TabuSearchSampler",
    "make_sampler",
    "solve",
    "solve_exactly",
]
