"""``greedy``: steepest descent (dwave-samplers ``SteepestDescentSolver``) from seeded random states.

Each read starts from a uniformly random state and flips the variable that lowers the energy
most until no single flip helps: a local minimum, in milliseconds. ``num_reads`` random starts
(default :attr:`SteepestDescentSampler.DEFAULTS`), seeded, so the same seed gives the same
SampleSet. Useful as a floor for the other solvers and as a polish step.
"""

from __future__ import annotations

from typing import Any

import dimod
from dwave.samplers import SteepestDescentSolver

from qubocompress.solvers.base import WrappedSampler


class SteepestDescentSampler(WrappedSampler):
    """Steepest descent from ``num_reads`` seeded random initial states.

    Args:
        **defaults: overrides of :attr:`DEFAULTS` (any parameter of dwave's ``SteepestDescentSolver``).
    """

    title = "steepest descent"
    DEFAULTS: dict[str, Any] = {"num_reads": 1000}

    def _make_sampler(self) -> dimod.Sampler:
        return SteepestDescentSolver()
