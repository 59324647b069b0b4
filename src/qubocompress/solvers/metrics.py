"""The benchmark's metrics, defined once (DESIGN.md §4).

Vocabulary:

* a **read** is one sample a solver returns (one anneal of SA, one restart of tabu, one agent
  of SB, one member of GA's final population, one rollout of RL);
* a **run** is one call of ``sampler.sample(bqm)`` with one seed and the solver's reads;
  its result is the best of its reads.

Metrics:

* ``E*``: the certified optimum energy where one can be had (the formulation's own exact
  optimum, or the generic exact solver when it proves optimality); otherwise the best energy
  known from every run of every solver on the instance, and marked as not certified.
* success of a read: ``E ≤ E* + tol`` with ``tol = rel_tol·|E*|`` (``rel_tol`` = 1e-9) and an
  absolute floor of ``abs_tol`` (1e-12) so that ``E* = 0`` still has a tolerance.
* ``p_s_read``: share of reads that succeed (counting ``num_occurrences``), pooled over runs.
* ``p_s_run``: share of runs (seeds) whose best read succeeds.
* ``TTS99``: expected time to see the optimum at least once with 99 % confidence by repeating
  independent trials of duration ``t`` that each succeed with probability ``p``:
  ``t · ln(0.01) / ln(1 − p)`` repetitions' worth, never less than one trial (so ``TTS99 = t``
  for ``p ≥ 0.99``, and ``p = 1`` gives ``t``); ``∞`` for ``p = 0``.
  Per read: ``t`` = solve time per read (a run's solve seconds / its reads), ``p = p_s_read``.
  Per run: ``t`` = mean solve seconds of a run, ``p = p_s_run``.
* residual gap: ``(E_best − E*) / |E*|``, exactly 0 within the success tolerance of ``E*``
  (either side, so rounding never shows as a gap); for ``E* = 0`` it is 0 or ±∞.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qubocompress.errors import ProblemError

REL_TOL = 1e-9
ABS_TOL = 1e-12
TARGET_CONFIDENCE = 0.99


def success_tolerance(e_star: float, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> float:
    """Energy margin above ``E*`` that still counts as optimal: ``max(rel_tol·|E*|, abs_tol)``."""
    return max(rel_tol * abs(float(e_star)), abs_tol)


def success_mask(
    energies: Sequence[float] | np.ndarray, e_star: float, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL
) -> np.ndarray:
    """Boolean mask of the energies at the optimum: ``E ≤ E* + max(rel_tol·|E*|, abs_tol)``."""
    if not math.isfinite(e_star):
        raise ProblemError(f"E* must be a finite energy, got {e_star}")
    values = np.asarray(energies, dtype=np.float64)
    return values <= e_star + success_tolerance(e_star, rel_tol, abs_tol)


def success_probability(
    energies: Sequence[float] | np.ndarray,
    e_star: float,
    num_occurrences: Sequence[int] | np.ndarray | None = None,
    rel_tol: float = REL_TOL,
) -> float:
    """Share of reads at ``E*`` (each read weighted by its ``num_occurrences``); 0 for no reads."""
    mask = success_mask(energies, e_star, rel_tol)
    weights = np.ones(mask.size) if num_occurrences is None else np.asarray(num_occurrences, dtype=np.float64)
    if weights.shape != mask.shape:
        raise ProblemError(f"{weights.size} occurrence counts for {mask.size} energies")
    total = float(weights.sum())
    return float(weights[mask].sum()) / total if total > 0 else 0.0


def tts99(t_run: float, p_s: float, confidence: float = TARGET_CONFIDENCE) -> float:
    """Time to solution at ``confidence`` (seconds, like ``t_run``).

    ``t_run · ln(1 − confidence) / ln(1 − p_s)``, at least ``t_run`` (one trial is the least one
    can run), ``t_run`` for ``p_s = 1`` and ``∞`` for ``p_s = 0``.
    """
    if not (math.isfinite(t_run) and t_run >= 0):
        raise ProblemError(f"time per trial must be a finite number of seconds >= 0, got {t_run}")
    if not 0.0 <= p_s <= 1.0:
        raise ProblemError(f"success probability must be in [0, 1], got {p_s}")
    if not 0.0 < confidence < 1.0:
        raise ProblemError(f"confidence must be in (0, 1), got {confidence}")
    if p_s == 0.0:
        return math.inf
    if p_s == 1.0:
        return t_run
    repetitions = math.log(1.0 - confidence) / math.log1p(-p_s)
    return t_run * max(1.0, repetitions)


def residual_gaps(energies: Sequence[float] | np.ndarray, e_star: float, rel_tol: float = REL_TOL) -> np.ndarray:
    """``(E − E*) / |E*|`` of every energy; exactly 0 within the success tolerance of ``E*``.

    Energies within the tolerance (either side: rounding) count as the optimum, gap 0. An energy
    further below ``E*`` (possible only when ``E*`` is best known, not certified) has a negative
    gap. For ``E* = 0`` any energy outside the tolerance has gap ±∞.
    """
    if not math.isfinite(e_star):
        raise ProblemError(f"E* must be a finite energy, got {e_star}")
    values = np.asarray(energies, dtype=np.float64)
    difference = values - e_star
    at_optimum = np.abs(difference) <= success_tolerance(e_star, rel_tol)
    if e_star == 0.0:
        gaps = np.where(difference > 0, math.inf, -math.inf)
    else:
        gaps = difference / abs(e_star)
    return np.where(at_optimum, 0.0, gaps)


def residual_gap(e_best: float, e_star: float, rel_tol: float = REL_TOL) -> float:
    """``(E_best − E*) / |E*|`` (0 within the success tolerance; see :func:`residual_gaps`)."""
    return float(residual_gaps([e_best], e_star, rel_tol)[0])
