"""``qubocompress qpu-fit``: the offline QPU fit (:mod:`qubocompress.solvers.qpu_fit`) of a user's
QUBO, beside the time the exact method takes on the same problem.

PATH is a compress run folder (its ``qubo.bqm``; the exact reference's time from its
``metrics.json``), a bench instance (``<name>.bqm`` with its ``<name>.json`` sidecar: the
formulation is rebuilt and its reference timed now) or a bare ``.bqm`` file (no exact time). Also
the bench's ``--qpu-fit`` table. No QPU is run: every figure is an embedding into an ideal graph
and an estimate from published timing figures.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qubocompress.bench.instances import load_instance
from qubocompress.errors import DataError
from qubocompress.problem.bqm_file import read_bqm
from qubocompress.solvers.qpu_fit import (
    DEFAULT_READS,
    DEFAULT_TIMEOUT,
    QpuFit,
    Topology,
    check_timeout,
    density,
    fit_bqm,
)

RUN_BQM = "qubo.bqm"
RUN_METRICS = "metrics.json"
# Words every qpu-fit table ends with: what its figures are and are not.
CAVEAT = (
    "offline: embedded into the ideal graphs (real machines miss a few qubits), access time estimated "
    "from D-Wave's published figures = programming + reads × (20 µs anneal + readout + delay), low–high "
    "over the published readout range, without the ~10–20 ms uncharged overhead, network or queue; no QPU was run"
)


@dataclass(frozen=True)
class ExactTime:
    """The exact method's time to its reference optimum on the same problem.

    Attributes:
        seconds: wall seconds.
        method: what ran (e.g. ``"enumeration"``, ``"milp"``).
        certified: the optimum is proven (else the bound's gap was left open).
        where: ``"metrics.json"`` (recorded by the run) or ``"timed now"``.
    """

    seconds: float
    method: str
    certified: bool
    where: str


@dataclass(frozen=True)
class QpuFitReport:
    """The fit of one QUBO into each topology, and the exact method's time on it (None: unknown)."""

    path: str
    variables: int
    couplings: int
    density: float
    exact: ExactTime | None
    fits: tuple[QpuFit, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "path": self.path,
            "variables": self.variables,
            "couplings": self.couplings,
            "density": self.density,
            "exact": None if self.exact is None else asdict(self.exact),
            "fits": [fit.to_dict() for fit in self.fits],
            "note": CAVEAT,
        }

    def text(self) -> str:
        """A plain-text table: one line per topology, then the exact time and the caveat."""
        lines = [
            f"{self.path}: {self.variables:,} variables, {self.couplings:,} couplings, density {self.density:.3f}",
            fit_table(self.fits),
        ]
        if self.exact is None:
            lines.append("exact method: no time recorded for this file")
        else:
            e = self.exact
            lines.append(
                f"exact method ({e.method}, {'certified optimum' if e.certified else 'bound with a gap'}): "
                f"{e.seconds:.3g} s ({e.where})"
            )
        lines.append(CAVEAT)
        return "\n".join(lines) + "\n"


def _seconds_range(fit: QpuFit, reads: int) -> str:
    access = fit.access_for(reads)
    if access is None:
        return "-"
    return f"{access.low_seconds:.3f}–{access.high_seconds:.3f}"


def fit_table(fits: Sequence[QpuFit], reads: Sequence[int] = DEFAULT_READS) -> str:
    """Plain-text table of fits: topology, qubits, chains, method, search time, access-time estimates."""
    headers = ["topology", "graph", "fits", "qubits", "chain max/mean", "method", "embed s"]
    headers += [f"QPU s, {r:,} reads" for r in reads]
    rows = [headers]
    for fit in fits:
        chains = "-" if fit.max_chain is None else f"{fit.max_chain}/{fit.mean_chain:.1f}"
        verdict = "yes" if fit.fits else ("no" if fit.proven else "not found")
        row = [
            fit.topology,
            fit.label,
            verdict,
            "-" if fit.physical_qubits is None else f"{fit.physical_qubits:,}",
            chains,
            fit.method or "-",
            f"{fit.embedding_seconds:.1f}",
        ]
        rows.append(row + [_seconds_range(fit, r) for r in reads])
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    text += [f"  {fit.topology}: {fit.reason}" for fit in fits]
    return "\n".join(text)


def _read_bqm_file(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return read_bqm(data)
    except Exception as exc:  # dimod raises many types on a damaged file; all mean the same here
        raise DataError(f"{path} is corrupt: not a readable dimod BQM file ({exc})") from exc


def _recorded_exact(metrics_path: Path) -> ExactTime | None:
    """The exact reference's time a run's metrics.json records (None when it records none)."""
    if not metrics_path.is_file():
        return None
    try:
        exact = json.loads(metrics_path.read_text(encoding="utf-8"))["qubo"]["exact"]
        seconds = float(exact["seconds"])
        if not math.isfinite(seconds):
            raise ValueError(f"seconds is {seconds}")
        return ExactTime(seconds, str(exact["method"]), bool(exact["certified"]), RUN_METRICS)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{metrics_path} is corrupt: no exact reference time in it ({exc})") from exc


def _load(path: Path) -> tuple[Any, ExactTime | None]:
    """(BQM, exact time) of a run folder, a bench instance (with its sidecar) or a bare .bqm file."""
    if path.is_dir():
        bqm_path = path / RUN_BQM
        if not bqm_path.is_file():
            raise DataError(f"{path} holds no {RUN_BQM}: give a compress run folder (--search qubo) or a .bqm file")
        return _read_bqm_file(bqm_path), _recorded_exact(path / RUN_METRICS)
    stem = path.name.removesuffix(".xz").removesuffix(".bqm").removesuffix(".json")
    if (path.parent / f"{stem}.json").is_file():
        instance = load_instance(path)
        fresh = instance.fresh_formulation()
        if fresh is None:
            return instance.bqm, None
        start = time.perf_counter()
        reference = fresh.reference()
        return instance.bqm, ExactTime(time.perf_counter() - start, reference.method, reference.certified, "timed now")
    if path.suffix != ".bqm":
        raise DataError(f"{path}: give a compress run folder or a .bqm file")
    return _read_bqm_file(path), None


def qpu_fit_path(
    path: str | Path,
    topologies: Sequence[Topology],
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> QpuFitReport:
    """The fit of the QUBO at ``path`` (module docstring) into each of ``topologies``."""
    check_timeout(timeout)
    path = Path(path)
    bqm, exact = _load(path)
    fits = []
    for topology in topologies:
        if log is not None:
            log(f"embedding {bqm.num_variables:,} variables into {topology.name}: {topology.label}")
        fits.append(fit_bqm(bqm, topology, timeout=timeout, seed=seed))
    n, m = bqm.num_variables, bqm.num_interactions
    return QpuFitReport(str(path), n, m, density(n, m), exact, tuple(fits))


@dataclass(frozen=True)
class InstanceFit:
    """The fits of one bench instance, and the exact method's seconds on it (None: not run)."""

    instance: str
    variables: int
    couplings: int
    density: float
    exact_seconds: float | None
    fits: tuple[QpuFit, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**asdict(self), "fits": [fit.to_dict() for fit in self.fits]}


def fit_instances(
    instances: Sequence[Any],
    exact_seconds: dict[str, float],
    topologies: Sequence[Topology],
    timeout: float = DEFAULT_TIMEOUT,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[InstanceFit]:
    """The fit of each bench instance (``.name``, ``.bqm``) into each topology, with the exact
    method's seconds from ``exact_seconds`` (by instance name)."""
    check_timeout(timeout)
    results = []
    for instance in instances:
        bqm = instance.bqm
        if log is not None:
            log(f"qpu-fit: {instance.name} ({bqm.num_variables:,} variables)")
        fits = tuple(fit_bqm(bqm, topology, timeout=timeout, seed=seed) for topology in topologies)
        n, m = bqm.num_variables, bqm.num_interactions
        results.append(InstanceFit(instance.name, n, m, density(n, m), exact_seconds.get(instance.name), fits))
    return results


def _verdict(fit: QpuFit) -> str:
    return "yes" if fit.fits else ("no" if fit.proven else "not found")


def fits_cells(
    results: Sequence[InstanceFit], reads: Sequence[int] = DEFAULT_READS
) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the per-instance fit table: instance, size, then per topology qubits /
    longest chain / fits / estimated QPU seconds per read count / embedding seconds, then the exact
    method's seconds."""
    topologies = [fit.topology for fit in results[0].fits] if results else []
    headers = ["instance", "variables", "couplings", "density"]
    for name in topologies:
        headers += [f"{name} qubits", f"{name} max chain", f"{name} fits"]
        headers += [f"{name} QPU s ({r} reads)" for r in reads] + [f"{name} embed s"]
    headers.append("exact s")
    rows = []
    for result in results:
        row = [result.instance, str(result.variables), str(result.couplings), f"{result.density:.3f}"]
        for fit in result.fits:
            row += [
                "-" if fit.physical_qubits is None else str(fit.physical_qubits),
                "-" if fit.max_chain is None else str(fit.max_chain),
                _verdict(fit),
            ]
            row += [_seconds_range(fit, r) for r in reads] + [f"{fit.embedding_seconds:.1f}"]
        row.append("-" if result.exact_seconds is None else f"{result.exact_seconds:.3g}")
        rows.append(row)
    return headers, rows


def not_fit_reasons(results: Sequence[InstanceFit]) -> list[str]:
    """One line per (instance, topology) that does not fit: why, or how long the search tried."""
    return [f"{r.instance} on {f.topology}: {f.reason}" for r in results for f in r.fits if not f.fits]


def fits_csv(results: Sequence[InstanceFit]) -> str:
    """The fit table as CSV text."""
    import csv
    import io

    headers, rows = fits_cells(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return buffer.getvalue()


def fits_table(results: Sequence[InstanceFit]) -> Any:
    """The fit table as a rich Table (the bench's ``--qpu-fit`` output)."""
    from rich.table import Table

    headers, rows = fits_cells(results)
    table = Table(
        title="QPU fit (offline, ideal graphs; QPU s: estimated access time, low–high; no QPU was run)",
        caption="\n".join(not_fit_reasons(results)) or None,
        caption_justify="left",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "instance" else "right")
    for row in rows:
        table.add_row(*row)
    return table
