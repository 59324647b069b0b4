"""``random``: uniformly random states (dimod's ``RandomSampler``), seeded.

No optimisation at all: the control of a benchmark. Scored raw it is the floor; with the
formulation's polish (``bench --polish``, ``compress --solver random``) it measures what the
polish makes of noise, so what an annealer adds before the polish is the difference to it.
"""

from __future__ import annotations

from typing import Any

import dimod

from qubocompress.solvers.base import WrappedSampler


class UniformRandomSampler(WrappedSampler):
    """``num_reads`` seeded uniformly random states (default :attr:`DEFAULTS`).

    Args:
        **defaults: overrides of :attr:`DEFAULTS` (``num_reads``, ``seed``).
    """

    title = "random states"
    DEFAULTS: dict[str, Any] = {"num_reads": 20}

    def _make_sampler(self) -> dimod.Sampler:
        return dimod.RandomSampler()

    @property
    def parameters(self) -> dict[str, list[str]]:
        """``num_reads`` and ``seed`` (dimod's RandomSampler takes a seed but does not list it)."""
        return {**self._sampler.parameters, "seed": []}
