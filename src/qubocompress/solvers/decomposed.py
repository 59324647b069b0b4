"""``qpu-decomposed``: a problem larger than the QPU, solved by dwave-hybrid's decomposition workflow.

A Kerberos-like workflow from dwave-hybrid parts: each iteration races a classical tabu search
(``InterruptableTabuSampler``) against the decomposed branch — ``EnergyImpactDecomposer`` picks
the ``sub_size`` variables whose flips change the energy most (rolling over the problem, grown
breadth-first), ``QPUSubproblemAutoEmbeddingSampler`` minor-embeds that sub-problem and samples it
on the QPU, ``SplatComposer`` writes the best sub-sample back — and ``ArgMin`` keeps the better
state. The loop stops after ``max_iter`` iterations, ``convergence`` iterations without a better
energy, or ``time_limit`` seconds (checked after each iteration, so one iteration may run past it).

``qpu="dwave"`` (the default) samples sub-problems on a D-Wave QPU (``DWaveSampler``; the token is
checked first, as for ``qpu``). ``qpu="mock"`` runs the same workflow offline on Ocean's
``MockDWaveSampler`` (a Pegasus P16 graph): it embeds like a QPU but answers by *classical steepest
descent* — its energies say nothing of a QPU's, its time is not QPU time, and ``info["on_qpu"]``
is False. Reported: sub-problems solved, their size, physical qubits per sub-problem (mean / max,
from the embeddings), the longest chain, iterations, the iterations the decomposed branch won, the
seconds spent embedding and sampling sub-problems, and, on a QPU only, the charged QPU access time.
``seed`` fixes the initial state, the embedding search and the mock's descent; the race and tabu's
time-sliced search are wall-clock, so runs do not reproduce exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import SolverError
from qubocompress.solvers.base import (
    Requirement,
    empty_sampleset,
    known_options,
    positive_int,
    positive_number,
    read_seeds,
    require_all,
    time_limit_seconds,
    timed_sampleset,
)
from qubocompress.solvers.qpu import QPU_REQUIRES, call_cloud, check_token, clique_embedding

NAME = "qpu-decomposed"
QPU_KINDS = ("dwave", "mock")
MOCK_SHAPE = 16  # Pegasus P16: the Advantage graph, fully yielded
# The optional modules ``qpu-decomposed`` imports, as (module, extra, package) for ``require``.
DECOMPOSED_REQUIRES: tuple[Requirement, ...] = (*QPU_REQUIRES, ("hybrid", "qpu", "dwave-hybrid"))
OFFLINE_HINT = (
    "or pass qpu=mock (compress: --solver-option qpu=mock; bench: --solver-option qpu-decomposed:qpu=mock) "
    "to run the workflow offline on MockDWaveSampler, a classical stand-in that is not a QPU"
)
WHO = f"solver {NAME!r}"


def check_decomposed(solver: str, options: Mapping[str, Any]) -> None:
    """SolverError unless ``options["qpu"]`` is known and, for ``"dwave"``, a D-Wave token is configured
    (read locally, no network call; see :func:`qubocompress.solvers.qpu.check_token`)."""
    kind = options.get("qpu", "dwave")
    if kind not in QPU_KINDS:
        raise SolverError(f"solver {solver!r}: qpu must be one of {', '.join(QPU_KINDS)}, got {kind!r}")
    if kind == "dwave":
        try:
            check_token(solver, options)
        except SolverError as exc:
            raise SolverError(f"{exc}; {OFFLINE_HINT}") from exc


@dataclass
class _Tally:
    """What one workflow run did, filled in by the workflow's own steps (one iteration at a time)."""

    clique: bool
    embedding_seed: int
    embedding_timeout: float
    graph: Any = None  # the QPU graph (networkx), for clique embeddings
    logical: list[int] = field(default_factory=list)  # variables per sub-problem
    physical: list[int] = field(default_factory=list)  # qubits per sub-problem
    longest_chain: int = 0
    chain_breaks: list[float] = field(default_factory=list)  # mean chain-break fraction per sub-problem
    embedding_seconds: float = 0.0
    qpu_access_us: float = 0.0
    iterations: int = 0
    decomposed_wins: int = 0
    _input_energy: float = math.inf
    _decomposed_energy: float = math.inf

    def find_embedding(self, source: list[tuple[Any, Any]], target: list[tuple[Any, Any]], **_: Any) -> Any:
        """``AutoEmbeddingComposite``'s ``find_embedding``: minorminer's (seeded, time-bounded) or a
        cached clique embedding (busclique); its time is added to :attr:`embedding_seconds`."""
        start = time.perf_counter()
        if self.clique:
            embedding, _ = clique_embedding(dict.fromkeys(v for edge in source for v in edge), self.graph)
        else:
            import minorminer

            embedding = minorminer.find_embedding(
                source, target, random_seed=self.embedding_seed, timeout=self.embedding_timeout
            )
        self.embedding_seconds += time.perf_counter() - start
        return embedding

    def iteration_start(self, state: Any) -> Any:
        self._input_energy = float(state.samples.first.energy)
        self._decomposed_energy = math.inf
        return state

    def subproblem_sampled(self, state: Any) -> Any:
        subsamples = state.subsamples
        embedding = subsamples.info.get("embedding_context", {}).get("embedding")
        chains = [len(chain) for chain in embedding.values()] if embedding else [1] * state.subproblem.num_variables
        self.logical.append(state.subproblem.num_variables)
        self.physical.append(sum(chains))
        self.longest_chain = max(self.longest_chain, *chains, 1)
        if "chain_break_fraction" in subsamples.record.dtype.names:
            self.chain_breaks.append(float(np.mean(subsamples.record.chain_break_fraction)))
        self.qpu_access_us += float(subsamples.info.get("timing", {}).get("qpu_access_time", 0.0))
        return state

    def decomposed_done(self, state: Any) -> Any:
        self._decomposed_energy = float(state.samples.first.energy)
        return state

    def iteration_done(self, state: Any) -> Any:
        self.iterations += 1
        best = float(state.samples.first.energy)
        if best < self._input_energy and self._decomposed_energy <= best:
            self.decomposed_wins += 1
        return state


def _step(hybrid: Any, action: Any) -> Any:
    """A dwave-hybrid step that calls ``action(state)`` and passes its state on."""
    return hybrid.Lambda(lambda _runnable, state, **_runopts: action(state))


class DecomposedQpuSampler(dimod.Sampler):
    """dwave-hybrid's QPU decomposition workflow (Kerberos-like, tabu racing the sub-problems).

    Args:
        qpu: ``"dwave"`` (a D-Wave QPU; needs a token) or ``"mock"`` (MockDWaveSampler, Pegasus P16:
            classical steepest descent on the QPU graph, not a QPU).
        child_sampler: the structured sampler sub-problems are embedded into (default: by ``qpu``).
        clique: embed each sub-problem as a clique (busclique cache) instead of minorminer's search.
        solver: dwave-cloud-client solver filter or name (``qpu="dwave"``).
        client_config: further ``DWaveSampler`` / dwave-cloud-client keyword arguments.
        **defaults: overrides of :attr:`DEFAULTS`: ``sub_size`` (variables per sub-problem),
            ``qpu_reads`` (reads per sub-problem), ``max_iter``, ``convergence`` (iterations without
            improvement), ``time_limit`` (s, None = none), ``tabu_timeout`` (ms per uninterruptible
            tabu slice), ``embedding_timeout`` (s per minorminer search).
    """

    DEFAULTS: dict[str, Any] = {
        "sub_size": 50,
        "qpu_reads": 100,
        "max_iter": 100,
        "convergence": 3,
        "time_limit": None,
        "tabu_timeout": 500,
        "embedding_timeout": 20.0,
    }

    def __init__(
        self,
        qpu: str = "dwave",
        child_sampler: dimod.Sampler | None = None,
        clique: bool = False,
        solver: dict[str, Any] | str | None = None,
        client_config: dict[str, Any] | None = None,
        **defaults: Any,
    ) -> None:
        system, _, self._hybrid = require_all(DECOMPOSED_REQUIRES, NAME)
        check_decomposed(NAME, {"qpu": qpu, "child_sampler": child_sampler, "client_config": client_config})
        self.qpu = qpu
        self.clique = bool(clique)
        self.defaults = self._checked({**self.DEFAULTS, **defaults})
        self._own_mock = child_sampler is None and qpu == "mock"
        if child_sampler is None and qpu == "mock":
            from dwave.system.testing import MockDWaveSampler

            child_sampler = MockDWaveSampler(topology_type="pegasus", topology_shape=[MOCK_SHAPE])
        elif child_sampler is None:
            config = dict(client_config or {})
            if solver is not None:
                config["solver"] = solver
            child_sampler = call_cloud(lambda: system.DWaveSampler(**config), NAME)
        self.child = child_sampler
        self.on_qpu = isinstance(child_sampler, system.DWaveSampler)
        self._graph = child_sampler.to_networkx_graph() if self.clique else None

    def _checked(self, params: dict[str, Any]) -> dict[str, Any]:
        known_options(params, self.DEFAULTS, WHO)
        for key in ("sub_size", "qpu_reads", "max_iter", "convergence"):
            positive_int(params[key], key, WHO)
        time_limit_seconds(params["time_limit"], WHO)
        positive_number(params["tabu_timeout"], "tabu_timeout", WHO, "milliseconds")
        positive_number(params["embedding_timeout"], "embedding_timeout", WHO, "seconds")
        return params

    @property
    def parameters(self) -> dict[str, list[str]]:
        """:attr:`DEFAULTS` keys and ``seed``."""
        return {key: [] for key in (*self.DEFAULTS, "seed")}

    @property
    def properties(self) -> dict[str, Any]:
        """The defaults, the QPU kind, the embedding method and the child's topology."""
        topology = self.child.properties.get("topology", {})
        return {"defaults": dict(self.defaults), "qpu": self.qpu, "clique": self.clique, "topology": dict(topology)}

    def _describe_child(self) -> str:
        topology = self.child.properties.get("topology", {})
        graph = f"{topology.get('type', '?')} {topology.get('shape', '?')}"
        if self.on_qpu:
            return f"D-Wave QPU {self.child.properties.get('chip_id', '?')} ({graph})"
        return f"{type(self.child).__name__} ({graph}): a classical stand-in, not a QPU"

    def _workflow(self, params: dict[str, Any], tally: _Tally, size: int) -> tuple[Any, Any]:
        """(the loop, its QPU step)."""
        hybrid = self._hybrid
        from dwave.system import AutoEmbeddingComposite

        qpu_step = hybrid.QPUSubproblemAutoEmbeddingSampler(
            num_reads=params["qpu_reads"], qpu_sampler=self.child, sampling_params={"return_embedding": True}
        )
        qpu_step.sampler = AutoEmbeddingComposite(self.child, find_embedding=tally.find_embedding)
        decomposed = (
            hybrid.EnergyImpactDecomposer(size=size, rolling=True, rolling_history=0.3, traversal="bfs")
            | qpu_step
            | _step(hybrid, tally.subproblem_sampled)
            | hybrid.SplatComposer()
            | _step(hybrid, tally.decomposed_done)
        )
        iteration = (
            _step(hybrid, tally.iteration_start)
            | hybrid.Race(
                hybrid.BlockingIdentity(), hybrid.InterruptableTabuSampler(timeout=params["tabu_timeout"]), decomposed
            )
            | hybrid.ArgMin()
            | _step(hybrid, tally.iteration_done)
        )
        loop = hybrid.Loop(
            iteration, max_iter=params["max_iter"], max_time=params["time_limit"], convergence=params["convergence"]
        )
        return loop, qpu_step

    def sample(self, bqm: dimod.BinaryQuadraticModel, seed: int | None = None, **kwargs: Any) -> dimod.SampleSet:
        """Run the workflow on ``bqm`` from a random state (seeded); keyword arguments override the defaults."""
        params = self._checked({**self.defaults, **kwargs})
        if bqm.num_variables == 0:
            return empty_sampleset(bqm, {"parameters": params})
        state_seed, embedding_seed, mock_seed = (int(s) for s in read_seeds(seed, 3))
        if self._own_mock:
            self.child.substitute_kwargs["seed"] = mock_seed
        tally = _Tally(self.clique, embedding_seed, params["embedding_timeout"], self._graph)
        size = min(params["sub_size"], bqm.num_variables)
        workflow, qpu_step = self._workflow(params, tally, size)
        rng = np.random.default_rng(state_seed)
        values = (
            rng.integers(0, 2, bqm.num_variables)
            if bqm.vartype is dimod.BINARY
            else rng.choice([-1, 1], bqm.num_variables)
        )
        # dwave-hybrid needs dimod's own BQM class (it indexes ``bqm.variables``)
        problem = dimod.BinaryQuadraticModel(bqm.linear, bqm.quadratic, bqm.offset, bqm.vartype)
        initial = self._hybrid.State.from_sample(dict(zip(problem.variables, values.tolist())), problem)
        start = time.perf_counter()
        try:
            final = call_cloud(lambda: workflow.run(initial).result(), NAME)
        except ValueError as exc:
            if "no embedding found" not in str(exc):
                raise
            how = "as a clique" if self.clique else f"within {params['embedding_timeout']:g} s"
            raise SolverError(
                f"{WHO} found no minor embedding of a {size}-variable sub-problem {how}; try a smaller sub_size"
                + ("" if self.clique else ", clique=True or a longer embedding_timeout")
            ) from exc
        seconds = time.perf_counter() - start
        if tally.iterations >= params["max_iter"]:
            stopped_by = "evaluations"
        elif params["time_limit"] is not None and seconds >= params["time_limit"]:
            stopped_by = "time_limit"
        else:
            stopped_by = "convergence"
        # wall seconds of the QPU step (embedding, sampling, unembedding), per dwave-hybrid's own timers
        subproblem_seconds = float(sum(qpu_step.timers.get("dispatch.next", ())))
        timing = {"embedding_seconds": tally.embedding_seconds, "subproblem_seconds": subproblem_seconds}
        if self.on_qpu:
            timing["qpu_access_seconds"] = tally.qpu_access_us * 1e-6
        info = {
            "parameters": dict(params),
            "qpu": self.qpu,
            "on_qpu": self.on_qpu,
            "sub_sampler": self._describe_child(),
            "embedding": "clique (busclique)" if self.clique else "minorminer.find_embedding",
            "subproblems": len(tally.logical),
            "subproblem_variables": {"mean": _mean(tally.logical), "max": max(tally.logical, default=0)},
            "physical_qubits": {"mean": _mean(tally.physical), "max": max(tally.physical, default=0)},
            "max_chain_length": tally.longest_chain,
            "chain_break_fraction": _mean(tally.chain_breaks),
            "iterations": tally.iterations,
            "decomposed_wins": tally.decomposed_wins,
            "stopped_by": stopped_by,
            "timing": timing,
        }
        samples = final.samples
        return timed_sampleset(
            bqm,
            samples.record.sample,
            list(samples.variables),
            seconds,
            info,
            num_occurrences=samples.record.num_occurrences,
        )


def _mean(values: list[int] | list[float]) -> float:
    """The mean of ``values``; NaN for none."""
    return float(np.mean(values)) if values else math.nan
