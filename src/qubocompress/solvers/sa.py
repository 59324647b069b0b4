"""``sa``: simulated annealing (dwave-samplers), with defaults tuned on the compression QUBOs.

Defaults (``SimulatedAnnealingSampler.DEFAULTS``): a *linear* β schedule over dwave's default β
range, 10,000 sweeps, 300 reads. Measured on synthetic specs calibrated to a 16× target
(133–1813 variables): the paper form is glassy — swapping a pruned channel for a kept one of
near-equal importance costs two flips through a higher energy, so many reads end one swap away
from the optimum (relative gap ~1e-5). dwave's default geometric schedule spends most sweeps far
above the pruning variables' energy scale (its hot end is set by the bit variables' much larger
biases), and its hot sweeps are expensive on the dense groups: at 10,000 sweeps it was 12–38×
slower per read for at most 4.6× the success rate, a 5–10× longer time-to-solution. With the
linear schedule the success rate per read rose from ~0.003
(1,000 sweeps) to ~0.1 (10,000) on the 1813-variable spec, and it stayed between 0.05 and 0.77
on every instance tried; longer or colder schedules did not raise it further, so reliability
comes from reads: at a success rate of 0.05 per read, 300 reads all miss with probability
0.95^300 ≈ 2e-7 (reads are independent; blocks of 100 reads ranged 0.01–0.13 on the hardest spec).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dimod
import numpy as np
from dwave.samplers import SimulatedAnnealingSampler as DwaveSimulatedAnnealing

from qubocompress.solvers.base import WrappedSampler, positive_int


# dwave-samplers' default: at most a 1 % chance per sweep that the final temperature excites a spin
FINAL_EXCITATION_RATE = 0.01


def ising_beta_range(bqm: dimod.BinaryQuadraticModel) -> tuple[float, float]:
    """(hot β, cold β) of dwave-samplers' default schedule (``default_beta_range``), vectorised.

    On the Ising form (h, J) of ``bqm``: hot β = ln 2 / (2 max_i (|h_i| + Σ_j |J_ij|)), so that the
    largest possible flip is accepted half the time; cold β = ln(m / 0.01) / (2 e_min), e_min the
    smallest non-zero |h_i| or |J_ij| and m the number of spins whose smallest non-zero bias equals
    it. dwave computes the same with a Python loop over the couplings: 0.9 s of a 1.2 s solve of
    a 460,000-coupling budget QUBO (measured), ~0.01 s here.
    """
    ising = (
        bqm if bqm.vartype is dimod.SPIN else bqm.change_vartype(dimod.SPIN, inplace=False)
    )  # (.spin is a slow view)
    h, (rows, cols, j), _ = ising.to_numpy_vectors()
    n = len(h)
    magnitudes = np.abs(np.asarray(j, dtype=np.float64))
    both_ends = np.concatenate([rows, cols])
    doubled = np.concatenate([magnitudes, magnitudes])
    effective = np.abs(h) + np.bincount(both_ends, weights=doubled, minlength=n)
    smallest = np.where(h != 0, np.abs(h), np.inf)
    nonzero = doubled > 0
    np.minimum.at(smallest, both_ends[nonzero], doubled[nonzero])
    smallest = smallest[np.isfinite(smallest)]
    if smallest.size == 0:  # every bias 0: dwave's arbitrary range (it warns)
        return 0.1, 1.0
    hot = float(np.log(2) / (2 * effective.max()))
    minimum = float(smallest.min())
    cold = float(np.log(np.count_nonzero(smallest == minimum) / FINAL_EXCITATION_RATE) / (2 * minimum))
    return hot, cold


class SimulatedAnnealingSampler(WrappedSampler):
    """dwave-samplers simulated annealing with our defaults; same seed, same SampleSet.

    Args:
        **defaults: overrides of :attr:`DEFAULTS` (any parameter of dwave's sampler).
    """

    title = "simulated annealing"
    DEFAULTS: dict[str, Any] = {"num_reads": 300, "num_sweeps": 10_000, "beta_schedule_type": "linear"}

    def _make_sampler(self) -> dimod.Sampler:
        return DwaveSimulatedAnnealing()

    def _check(self, options: Mapping[str, Any]) -> None:
        for key in ("num_reads", "num_sweeps"):
            if key in options:
                positive_int(options[key], key, self.title)

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
        """Sample ``bqm``; without a ``beta_range`` or custom schedule, dwave's default range is
        computed here (:func:`ising_beta_range`), which is the same range, faster."""
        if all(kwargs.get(key) is None and self.defaults.get(key) is None for key in ("beta_range", "beta_schedule")):
            kwargs = {**kwargs, "beta_range": ising_beta_range(bqm)}
        return super().sample(bqm, **kwargs)

    def _parameters(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(self.defaults)
        if overrides.get("beta_schedule") is not None:  # a custom schedule sets its own length and shape
            params.pop("num_sweeps", None)
            params["beta_schedule_type"] = "custom"
        params.update(overrides)
        return params
