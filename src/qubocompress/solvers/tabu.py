"""``tabu``: multistart tabu search (dwave-samplers ``TabuSampler``), work-bounded so seeds reproduce.

dwave's default stops each read after ``timeout`` = 20 ms, which is too short for the compression
QUBOs beyond a few hundred variables and makes results depend on the machine's speed (the same
seed gives different reads under load). Our defaults (``TabuSearchSampler.DEFAULTS``) bound the
work instead: ``timeout=None`` and ``num_restarts`` restarts per read, each simple tabu search
limited to ``max(n·z, 500,000)`` variable updates (dwave's ``coefficient_z_*``/``lower_bound_z``),
so the effort grows with the number of variables n by itself and the same seed gives the same
SampleSet. Pass ``timeout`` (milliseconds per read; keep ``num_restarts`` large) for an
equal-time comparison instead — then reads are no longer reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dimod
from dwave.samplers import TabuSampler

from qubocompress.errors import SolverError
from qubocompress.solvers.base import WrappedSampler


class TabuSearchSampler(WrappedSampler):
    """dwave-samplers tabu search with work-bounded defaults; same seed, same SampleSet.

    Args:
        **defaults: overrides of :attr:`DEFAULTS` (any parameter of dwave's ``TabuSampler``:
            ``num_reads``, ``num_restarts``, ``timeout`` in ms per read, ``tenure``, ...).
    """

    title = "tabu search"
    DEFAULTS: dict[str, Any] = {"num_reads": 10, "num_restarts": 20, "timeout": None}

    def _make_sampler(self) -> dimod.Sampler:
        return TabuSampler()

    def _check(self, options: Mapping[str, Any]) -> None:
        super()._check(options)
        restarts = options.get("num_restarts", 0)
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise SolverError(f"tabu search: num_restarts must be an integer >= 0, got {restarts!r}")
        timeout = options.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise SolverError(
                f"tabu search: timeout must be None or a positive number of milliseconds, got {timeout!r}"
            )
