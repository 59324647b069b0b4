"""Offline QPU fit: does a BQM minor-embed into D-Wave's published topologies, and at what cost?

No QPU is contacted and nothing here is a QPU result: the BQM is embedded into the *ideal*
Pegasus or Zephyr graph (``dwave.graphs``), and the QPU access time it would be charged is
estimated from D-Wave's published timing model. Real machines miss a few qubits and couplers
(Advantage_system6.4 works 5,612 of P16's 5,640 qubits, Advantage2_system1.7 4,592 of Z12's
4,800), so an embedding into the ideal graph can need a retry, and longer chains, on the machine.

Strategy (answers in seconds when it can; :func:`fit_bqm`):

1. Counting bounds, a proof: more variables than the graph has qubits, or more couplings than
   it has couplers (every logical coupling needs a coupler of its own), does not fit.
2. Dense problems (density ≥ :data:`DENSE_DENSITY`) up to the graph's largest clique: a clique
   embedding (``minorminer.busclique``, cached on disk), which fits every problem of that size.
   Dense problems beyond the largest clique are reported as not fitting without a search:
   minorminer does not embed them in practice; not a proof, and the reason says so.
3. Sparse problems: ``minorminer.find_embedding`` (seeded) within a timeout (wall clock: the
   search runs in a child process, ended at the timeout), keeping its first embedding; the
   clique embedding when that fails or uses more qubits and the clique fits. A search that finds
   nothing within the timeout is "no embedding found within N s": not a proof.

Estimated QPU access time (operation_timing.rst, "Estimating Access Time"): programming time +
reads × (anneal + readout + delay per read), with the default 20 µs anneal and the published
readout range per read (it grows with the qubits read), so a low–high range. It excludes the
uncharged access overhead (~10–20 ms), network and queue time.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import dimod

from qubocompress.errors import SolverError
from qubocompress.solvers.base import Requirement, require_all
from qubocompress.solvers.qpu import clique_embedding, minor_embedding

FIT_REQUIRES: tuple[Requirement, ...] = (("dwave.graphs", "qpu", "dwave-system"), ("minorminer", "qpu", "dwave-system"))
TIMING_SOURCE = (
    "D-Wave's per-QPU solver properties (dwavesystems/dwave-ocean-sdk, "
    "docs/quantum_research/solver_properties_specific.rst) and timing model (operation_timing.rst)"
)
DEFAULT_ANNEAL_US = 20.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_READS = (100, 1000)
# Density (couplings / possible pairs) from which a problem is embedded as a clique.
DENSE_DENSITY = 0.3
# minorminer settings that stop at its first embedding (the fit question, in seconds) instead of
# spending the whole timeout shortening chains.
FIRST_EMBEDDING = {"tries": 1, "max_no_improvement": 1, "chainlength_patience": 0}
# Seconds a minorminer child process gets beyond the timeout to start and answer.
STARTUP_SECONDS = 1.0
# Shapes beyond these are not machines (and their graphs would take minutes to build).
MAX_PEGASUS_M = 32
MAX_ZEPHYR_M = 32
MAX_ZEPHYR_T = 8


@dataclass(frozen=True)
class QpuTiming:
    """Published timing figures of one QPU (µs), and where they come from.

    Attributes:
        machine: the solver the figures are published for.
        programming_us: typical programming time per problem.
        readout_us: (lowest, highest) readout time per read.
        delay_us: QPU delay time per read.
        anneal_us: anneal time per read (the default annealing_time).
        working_qubits: qubits the machine works (fewer than its ideal graph's).
        source: the document the figures are read from.
    """

    machine: str
    programming_us: float
    readout_us: tuple[float, float]
    delay_us: float
    working_qubits: int
    anneal_us: float = DEFAULT_ANNEAL_US
    source: str = TIMING_SOURCE

    def access_seconds(self, reads: int) -> tuple[float, float]:
        """(low, high) estimated QPU access seconds for ``reads`` reads: programming + reads ×
        (anneal + readout + delay), at the lowest and highest published readout time."""
        low, high = (self.programming_us + reads * (self.anneal_us + r + self.delay_us) for r in self.readout_us)
        return low * 1e-6, high * 1e-6


ADVANTAGE_TIMING = QpuTiming("Advantage_system6.4", 14_200.0, (18.0, 173.0), 20.5, working_qubits=5_612)
ADVANTAGE2_TIMING = QpuTiming("Advantage2_system1.7", 33_600.0, (17.0, 101.0), 60.6, working_qubits=4_592)


@dataclass(frozen=True)
class Topology:
    """A QPU graph to fit into: ``family`` graph of ``shape`` and the timing figures used for it.

    Attributes:
        name: as given on the command line (``advantage``, ``zephyr:4,4``).
        family: ``"pegasus"`` or ``"zephyr"``.
        shape: (M,) of Pegasus P_M, (M, T) of Zephyr Z_M with tile T.
        timing: the published figures of the machine of this family.
    """

    name: str
    family: Literal["pegasus", "zephyr"]
    shape: tuple[int, ...]
    timing: QpuTiming

    @property
    def label(self) -> str:
        """``Pegasus P16`` or ``Zephyr Z12 (T=4)``."""
        if self.family == "pegasus":
            return f"Pegasus P{self.shape[0]}"
        return f"Zephyr Z{self.shape[0]} (T={self.shape[1]})"

    def graph(self) -> Any:
        """The ideal graph (networkx, every qubit and coupler of the family's shape)."""
        graphs, _ = require_all(FIT_REQUIRES, "qpu-fit")
        builder = graphs.pegasus_graph if self.family == "pegasus" else graphs.zephyr_graph
        return builder(*self.shape)


TOPOLOGIES: dict[str, Topology] = {
    "advantage": Topology("advantage", "pegasus", (16,), ADVANTAGE_TIMING),
    "advantage2": Topology("advantage2", "zephyr", (12, 4), ADVANTAGE2_TIMING),
}
TOPOLOGY_HELP = "advantage (Pegasus P16), advantage2 (Zephyr Z12), pegasus:M, zephyr:M,T"


def parse_topology(text: str) -> Topology:
    """The topology ``text`` names (see :data:`TOPOLOGY_HELP`); SolverError (one line) otherwise."""
    name = text.strip().lower()
    if name in TOPOLOGIES:
        return TOPOLOGIES[name]
    pegasus = re.fullmatch(r"pegasus:(\d+)", name)
    zephyr = re.fullmatch(r"zephyr:(\d+),(\d+)", name)
    if pegasus and 2 <= int(pegasus[1]) <= MAX_PEGASUS_M:
        return Topology(name, "pegasus", (int(pegasus[1]),), ADVANTAGE_TIMING)
    if zephyr and 1 <= int(zephyr[1]) <= MAX_ZEPHYR_M and 1 <= int(zephyr[2]) <= MAX_ZEPHYR_T:
        return Topology(name, "zephyr", (int(zephyr[1]), int(zephyr[2])), ADVANTAGE2_TIMING)
    raise SolverError(
        f"unknown topology {text!r}; choose from {TOPOLOGY_HELP} "
        f"(2 ≤ M ≤ {MAX_PEGASUS_M} for Pegasus; 1 ≤ M ≤ {MAX_ZEPHYR_M}, 1 ≤ T ≤ {MAX_ZEPHYR_T} for Zephyr)"
    )


def parse_topologies(items: Iterable[str]) -> tuple[Topology, ...]:
    """The topologies of ``items`` (each one name or a comma-separated list; ``zephyr:M,T`` keeps
    its comma), in order, without repeats."""
    names: list[str] = []
    for item in items:
        names += [part.strip() for part in re.split(r",(?![0-9])", item)]
    if not names or not all(names):
        raise SolverError(f"--topology: give names such as advantage,advantage2; choose from {TOPOLOGY_HELP}")
    topologies = {t.name: t for t in map(parse_topology, names)}
    return tuple(topologies.values())


@dataclass(frozen=True)
class AccessEstimate:
    """Estimated QPU access time of ``reads`` reads (seconds, low–high from the readout range)."""

    reads: int
    low_seconds: float
    high_seconds: float


@dataclass(frozen=True)
class QpuFit:
    """Whether one BQM fits one topology (see the module docstring).

    Attributes:
        topology, label: the topology's name and graph (``Pegasus P16``).
        graph_qubits, graph_couplers, largest_clique: of the ideal graph.
        variables, couplings: of the BQM; density = couplings / (variables choose 2).
        fits: an embedding was found.
        proven: the verdict is certain (an embedding found, or a counting bound); False when a
            heuristic gave up.
        reason: why, in words.
        method: ``"clique (busclique)"``, ``"minorminer"`` or None (no embedding).
        physical_qubits, max_chain, mean_chain: of the embedding (None without one).
        embedding_seconds: wall time of the embedding search.
        access: estimated QPU access time per read count (empty when it does not fit).
        machine: the machine whose timing figures the estimate uses.
        embedding: variable -> chain of qubits (not in :meth:`to_dict`).
    """

    topology: str
    label: str
    graph_qubits: int
    graph_couplers: int
    largest_clique: int
    variables: int
    couplings: int
    density: float
    fits: bool
    proven: bool
    reason: str
    method: str | None
    physical_qubits: int | None
    max_chain: int | None
    mean_chain: float | None
    embedding_seconds: float
    access: tuple[AccessEstimate, ...]
    machine: str
    embedding: dict[Any, list[Any]] | None = field(default=None, repr=False, compare=False)

    def access_for(self, reads: int) -> AccessEstimate | None:
        """The estimate for ``reads`` reads, if computed."""
        return next((a for a in self.access if a.reads == reads), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (without the embedding)."""
        record = asdict(self)
        del record["embedding"]
        return record


def _search(connection: Any, bqm: dimod.BinaryQuadraticModel, edges: list, seed: int, timeout: float) -> None:
    """The child process of :func:`timed_minor_embedding`: send the embedding found (or {})."""
    connection.send(minor_embedding(bqm, edges, seed, timeout, **FIRST_EMBEDDING))
    connection.close()


def timed_minor_embedding(
    bqm: dimod.BinaryQuadraticModel, edges: Iterable[tuple[Any, Any]], seed: int, timeout: float
) -> dict[Any, list[Any]]:
    """minorminer's first embedding of ``bqm`` into ``edges`` within ``timeout`` wall seconds, or {}.

    minorminer checks its own timeout only between its rounds (measured: 30–55 s for a 10 s
    timeout on the vgg QUBO and P16), so the search runs in a child process that is ended at
    the timeout (plus :data:`STARTUP_SECONDS` for the process to start).
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_search, args=(sender, bqm, list(edges), seed, timeout), daemon=True)
    child.start()
    sender.close()
    try:
        if receiver.poll(timeout + STARTUP_SECONDS):
            return receiver.recv()
        return {}
    except EOFError:  # the child died without an answer
        return {}
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        receiver.close()


def check_timeout(timeout: float) -> float:
    """``timeout`` if it is a number of seconds > 0; SolverError (one line) otherwise."""
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise SolverError(f"qpu-fit: the embedding timeout must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def density(variables: int, couplings: int) -> float:
    """couplings / (variables choose 2); 0 below two variables."""
    pairs = variables * (variables - 1) / 2
    return couplings / pairs if pairs else 0.0


def _chains(embedding: dict[Any, list[Any]]) -> tuple[int, int, float]:
    """(physical qubits, longest chain, mean chain length) of an embedding."""
    lengths = [len(chain) for chain in embedding.values()]
    return sum(lengths), max(lengths), sum(lengths) / len(lengths)


def fit_bqm(
    bqm: dimod.BinaryQuadraticModel,
    topology: Topology,
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 0,
    reads: Sequence[int] = DEFAULT_READS,
) -> QpuFit:
    """Fit ``bqm`` into ``topology``'s ideal graph (module docstring); ``timeout``: seconds of the
    minorminer search, ``seed`` its random seed (a search cut by its timeout can still differ
    between runs: minorminer's rounds are timed)."""
    check_timeout(timeout)
    graph = topology.graph()
    n, m = bqm.num_variables, bqm.num_interactions
    d = density(n, m)
    common = {
        "topology": topology.name,
        "label": topology.label,
        "graph_qubits": graph.number_of_nodes(),
        "graph_couplers": graph.number_of_edges(),
        "variables": n,
        "couplings": m,
        "density": d,
        "machine": topology.timing.machine,
    }
    start = time.perf_counter()

    def verdict(
        fits: bool, proven: bool, reason: str, method: str | None = None, embedding: dict | None = None
    ) -> QpuFit:
        seconds = time.perf_counter() - start
        qubits, longest, mean = _chains(embedding) if embedding else (None, None, None)
        access = tuple(AccessEstimate(r, *topology.timing.access_seconds(r)) for r in reads) if fits else ()
        return QpuFit(
            **common,  # type: ignore[arg-type]
            largest_clique=largest,
            fits=fits,
            proven=proven,
            reason=reason,
            method=method,
            physical_qubits=qubits,
            max_chain=longest,
            mean_chain=mean,
            embedding_seconds=seconds,
            access=access,
            embedding=embedding,
        )

    clique, largest = clique_embedding(bqm.variables, graph) if n else ({}, 0)
    if n == 0:
        return verdict(True, True, "an empty problem needs no qubits")
    if n > common["graph_qubits"]:
        return verdict(False, True, f"{n:,} variables > {common['graph_qubits']:,} qubits of the graph")
    if m > common["graph_couplers"]:
        return verdict(
            False, True, f"{m:,} couplings > {common['graph_couplers']:,} couplers of the graph (one each at least)"
        )
    if d >= DENSE_DENSITY:
        if clique:
            return verdict(True, True, f"clique embedding (density {d:.2f} ≥ {DENSE_DENSITY:g})", "clique", clique)
        return verdict(
            False,
            False,
            f"dense (density {d:.2f}) and {n:,} variables > the largest clique ({largest}); minorminer is not "
            "tried on dense problems beyond it (not a proof)",
        )
    found = timed_minor_embedding(bqm, graph.edges, seed, timeout)
    searched = time.perf_counter() - start
    if clique and (not found or _chains(clique)[0] < _chains(found)[0]):
        why = "minorminer found none" if not found else "fewer qubits than minorminer's"
        return verdict(True, True, f"clique embedding ({why} within {timeout:g} s)", "clique", clique)
    if found:
        return verdict(True, True, f"minorminer's first embedding (seed {seed})", "minorminer", found)
    return verdict(
        False,
        False,
        f"no embedding found within {timeout:g} s (minorminer stopped after {searched:.1f} s; a heuristic, not a "
        "proof: a longer --timeout may find one)",
    )
