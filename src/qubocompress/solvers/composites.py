"""Post-processing around a child sampler, in dimod's composite style.

:class:`PolishingComposite` is the classical polish every route applies to a solver's reads (the
paper form's canonical channels, the budget form's repair and local search): the polished reads
come back, and the child's own stay in ``info["raw"]`` so that the solver's share is measured
apart from the polish.
"""

from __future__ import annotations

from typing import Any

import dimod

from qubocompress.problem.base import Formulation


class PolishingComposite(dimod.ComposedSampler):
    """The reads of ``child`` polished by ``formulation`` (:meth:`Formulation.polish`).

    ``sample(bqm, seed=..., **kwargs)`` passes ``kwargs`` (and ``seed`` where the child takes one)
    to the child and seeds the polish with ``seed``. The answer holds the polished reads; its
    ``info["raw"]`` is the child's sample set and ``info["timing"]["polish_seconds"]`` the polish's
    wall time (s). An empty answer of the child is returned as it is.
    """

    def __init__(self, child: dimod.Sampler, formulation: Formulation) -> None:
        self._children = [child]
        self.formulation = formulation

    @property
    def children(self) -> list[dimod.Sampler]:
        return self._children

    @property
    def parameters(self) -> dict[str, list[Any]]:
        return {**self.child.parameters, "seed": []}

    @property
    def properties(self) -> dict[str, Any]:
        return {"child_properties": self.child.properties}

    def sample(self, bqm: dimod.BinaryQuadraticModel, **kwargs: Any) -> dimod.SampleSet:
        seed = kwargs.get("seed") if "seed" in self.child.parameters else kwargs.pop("seed", None)
        raw = self.child.sample(bqm, **kwargs)
        if len(raw) == 0:
            return raw
        polished = self.formulation.polish(raw, seed=seed)
        polished.info["raw"] = raw
        return polished
