"""What every solver shares: a timed SampleSet whose energies are the BQM's own, and a seeded solve call."""

from __future__ import annotations

from typing import Any

import dimod
import numpy as np


def timed_sampleset(
    bqm: dimod.BinaryQuadraticModel,
    samples: np.ndarray,
    variables: list[Any],
    solve_seconds: float,
    info: dict[str, Any] | None = None,
    num_occurrences: np.ndarray | None = None,
) -> dimod.SampleSet:
    """A SampleSet of ``samples`` (rows over ``variables``, in ``bqm``'s vartype) with energies from ``bqm``.

    ``info["timing"]["solve_seconds"]`` holds the wall time of the solve (seconds); any
    ``info["timing"]`` entries given are kept next to it.
    """
    info = dict(info or {})
    info["timing"] = {"solve_seconds": float(solve_seconds), **info.get("timing", {})}
    extra = {} if num_occurrences is None else {"num_occurrences": num_occurrences}
    return dimod.SampleSet.from_samples_bqm((samples, variables), bqm, info=info, **extra)


def solve(
    sampler: dimod.Sampler, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any
) -> dimod.SampleSet:
    """``sampler.sample(bqm, **kwargs)``, passing ``seed`` only to samplers that take one."""
    if seed is not None and "seed" in sampler.parameters:
        kwargs["seed"] = seed
    return sampler.sample(bqm, **kwargs)
