"""The formulation interface: what the pipeline, the benchmark and the solvers ask of a QUBO.

A formulation turns a :class:`~qubocompress.problem.spec.CompressionSpec` and a target into a
dimod BQM, decodes samples into plans, polishes reads, and knows its reference optimum. Adding one
is one module with a :class:`Formulation` subclass and one line in
:data:`qubocompress.problem.FORMULATIONS`; nothing outside the problem layer checks its class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dimod
import numpy as np

from qubocompress.problem.choices import Metric
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec


@dataclass(frozen=True)
class Target:
    """What a formulation is built for.

    Attributes:
        ratio: fp32 cost over the target cost (> 1).
        absolute: the target as an absolute cost (weight bits or BOPs per sample), or None; a
            formulation with a hard budget uses it instead of ``ratio``.
        metric: what the cost counts: ``"bits"`` (weight memory) or ``"bops"``.
        beta: the paper form's weight of the quantization damage (None: balanced).
        time_limit: seconds the reference optimum may take where it is a search (the MILP).
        budget_encoding: how the budget formulation's BQM encodes the budget (``slack``,
            ``unbalanced`` or ``lagrangian``: problem/encodings.py).
    """

    ratio: float
    absolute: float | None = None
    metric: Metric = "bits"
    beta: float | None = None
    time_limit: float = 60.0
    budget_encoding: str = "slack"


@dataclass(frozen=True)
class Reference:
    """A formulation's reference optimum: every solver's gap is measured against ``energy``.

    Attributes:
        plan: the best plan known.
        energy: its energy.
        certified: True when it is proven optimal.
        gap: proven relative gap to the optimum (0 when certified).
        method: how it was found.
        seconds: wall time it took.
    """

    plan: Plan
    energy: float
    certified: bool
    gap: float
    method: str
    seconds: float

    def figures(self) -> dict[str, Any]:
        """The reference without its plan, for metrics.json."""
        return {
            "energy": self.energy,
            "certified": self.certified,
            "gap": self.gap,
            "method": self.method,
            "seconds": self.seconds,
        }


class Formulation(ABC):
    """A QUBO of one compression problem (see the module docstring).

    Class attributes:
        name: the ``--formulation`` name.
        constrained: True when some samples break a constraint (a penalty in the BQM), so reads
            have a feasibility rate; False when every sample is a valid plan.
        free_counts: True when every prune count and bit-width per layer is a plan of the BQM
            (what the ``rl`` solver's layer walk needs); False for a grid of options.
    """

    name: ClassVar[str]
    constrained: ClassVar[bool] = False
    free_counts: ClassVar[bool] = True
    spec: CompressionSpec

    @classmethod
    @abstractmethod
    def for_target(cls, spec: CompressionSpec, target: Target) -> Formulation:
        """The formulation of ``spec`` at ``target``; ProblemError when it cannot be reached or
        the formulation does not offer what ``target`` asks (a metric, a setting)."""

    @classmethod
    @abstractmethod
    def from_parameters(cls, spec: CompressionSpec, params: Mapping[str, Any]) -> Formulation:
        """The formulation :meth:`parameters` describes (its ``name`` key already matched)."""

    @abstractmethod
    def parameters(self) -> dict[str, Any]:
        """What rebuilds this formulation from its spec, JSON-safe, with ``"name"``."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Its own figures for metrics.json (the paper's beta and gamma, the budget and penalty)."""

    @property
    @abstractmethod
    def bqm(self) -> dimod.BinaryQuadraticModel:
        """The QUBO."""

    @abstractmethod
    def decode(self, sample: Mapping[str, int]) -> Plan:
        """The plan a sample stands for."""

    @abstractmethod
    def encode(self, plan: Plan) -> dict[str, int]:
        """A sample that decodes to ``plan``."""

    @abstractmethod
    def energy(self, plan: Plan) -> float:
        """The BQM energy of ``plan``."""

    @abstractmethod
    def polish(self, sampleset: dimod.SampleSet, seed: int | None = None) -> dimod.SampleSet:
        """The reads improved classically (a post-processing step of the route), over the same BQM."""

    @abstractmethod
    def reference(self) -> Reference:
        """The reference optimum (certified, or with its proven gap)."""

    def feasible_reads(self, sampleset: dimod.SampleSet) -> np.ndarray:
        """Which rows of ``sampleset.record`` are valid plans (all of them, without constraints)."""
        return np.ones(len(sampleset.record), dtype=bool)

    def read_objectives(self, sampleset: dimod.SampleSet) -> np.ndarray:
        """Per row of ``sampleset.record``, the value compared with :meth:`reference`'s energy (a
        read at the optimum has it ≤ E*): the BQM energies by default."""
        return np.asarray(sampleset.record.energy, dtype=np.float64)

    def best_plan(self, sampleset: dimod.SampleSet) -> tuple[Plan | None, float | None, float]:
        """(the best valid plan of the reads, its energy, the share of reads that are valid);
        without constraints: the lowest-energy read."""
        if len(sampleset) == 0:
            return None, None, 0.0
        best = sampleset.first
        return self.decode(best.sample), float(best.energy), 1.0

    def recommended_sampler_options(self, solver: str) -> dict[str, Any]:
        """Sampler options this formulation's BQMs want for ``solver`` (none by default)."""
        return {}
