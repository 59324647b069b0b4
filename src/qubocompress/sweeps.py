"""A sweep: one model compressed at every (target, route, solver, seed), each case a run folder.

A case is one ``compress`` run: a target (a ratio, or an absolute budget), a route (``qubo`` with
one of the solvers, or a search that scores plans itself: ``uniform``, ``ga-acc``, ``rl-acc``) and a
seed (of the solver, the search and the fine-tuning; the model is loaded or trained once, with the
base settings' seed). The data and the model are loaded once for all cases and the analysis comes
from its cache (measured once per model and analysis options; on Ray, by each worker that starts a
case before any has cached it, and once per node of a cluster whose nodes do not share the cache
folder). No case has a uniform baseline of its own: ``uniform`` is a route like the others.

With an output folder the sweep is resumable. Each case is published whole as
``<out>/cases/<case>/`` (the files of ``compress``, :func:`qubocompress.io.run_folder`) and then
recorded in ``<out>/sweep.sqlite``; rerun with the same command, a sweep runs only the cases the
store lacks. A case killed mid-run leaves only a ``.partial`` folder, never taken as done (the next
run removes it); a case whose folder was published but not recorded (killed in between) is
recorded from its folder, not run again. A case that cannot be done (a target the route cannot
reach, a solver that refuses the instance) is recorded as failed with its reason and the sweep goes
on; any other error (the data, the model, the disk) stops it.
"""

from __future__ import annotations

import copy
import csv
import importlib.metadata
import io
import json
import math
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from qubocompress.cluster import Cluster, Crashed, Session, connect
from qubocompress.config import CompressConfig
from qubocompress.data.datasets import Dataset, load_dataset
from qubocompress.errors import ArtifactError, ClusterError, ProblemError, SolverError
from qubocompress.io import (
    exclusive_lock,
    jsonable,
    os_reason,
    prepare_output_dir,
    run_folder,
    sqlite_reason,
    write_bytes_atomic,
    write_text_atomic,
)
from qubocompress.models.train import resolve_device
from qubocompress.names import SEARCH_METHODS
from qubocompress.pipeline import Log, load_model, log_line, run_compression

# The version that wrote a store, for the message that refuses one of another store version.
VERSION = importlib.metadata.version("qubocompress")
STORE_FILE = "sweep.sqlite"
PREVIOUS_SUFFIX = ".previous"
TABLE_FILE = "sweep.csv"
CASES_FOLDER = "cases"
# Bumped whenever the store's tables change meaning; a store of another version is refused.
STORE_VERSION = 1
QUBO_ROUTE = "qubo"
# The base settings a sweep's cases share; a rerun into the same store must have the same ones.
# (The per-case fields, the output folder, the baseline and the device, which says where the cases
# run and not what they compute, are not among them.)
PER_CASE_FIELDS = ("target_ratio", "budget", "search", "solver", "seed", "out", "baseline", "device")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    route TEXT NOT NULL,
    solver TEXT,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    metrics_json TEXT,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SweepCase:
    """One case of a sweep.

    Attributes:
        target: a compression ratio (> 1), or an absolute budget as ``--budget`` takes it (``"32KiB"``).
        route: ``"qubo"`` or a search (``"uniform"``, ``"ga-acc"``, ``"rl-acc"``).
        solver: the QUBO solver (``qubo`` route only, else None).
        seed: the solver's, search's and fine-tuning's seed.
    """

    target: float | str
    route: str
    solver: str | None
    seed: int

    @property
    def target_label(self) -> str:
        """``16x`` for a ratio, the budget as given for a budget."""
        return f"{self.target:g}x" if isinstance(self.target, float) else self.target

    @property
    def name(self) -> str:
        """The case's folder name and key, e.g. ``16x-qubo-sa-seed0``, ``32KiB-uniform-seed1``."""
        solver = f"-{self.solver}" if self.solver else ""
        return f"{self.target_label}-{self.route}{solver}-seed{self.seed}"

    def config(self, base: CompressConfig) -> CompressConfig:
        """The case's run settings: ``base`` with the case's target, route, solver and seed, no baseline."""
        target = (
            {"target_ratio": self.target, "budget": None} if isinstance(self.target, float) else {"budget": self.target}
        )
        return replace(
            base, **target, search=self.route, solver=self.solver or base.solver, seed=self.seed, baseline=False
        )


@dataclass(frozen=True)
class SweepRow:
    """One case's outcome: a row of the sweep's table.

    Attributes:
        case: the case's name (its folder under ``cases/``).
        target, route, solver, seed: the case (:class:`SweepCase`; the target as its label).
        status: ``"ok"`` or ``"failed"`` (``reason`` says why).
        seconds: the case's wall time (0 for one recorded from its folder).
        fp32_test_acc, test_acc, test_acc_before_finetune: top-1, 0..1 (None when failed).
        ratio: fp32 weight bits over the plan's; cost_ratio: the same in the sweep's metric.
        model_file_bytes: bytes of the case's ``model.safetensors``.
        route_seconds: the search route's time (analysis + build + solve, or + search, + one evaluation).
        metrics: the case's whole ``metrics.json`` ({} when failed).
    """

    case: str
    target: str
    route: str
    solver: str | None
    seed: int
    status: str
    reason: str = ""
    seconds: float = 0.0
    fp32_test_acc: float | None = None
    test_acc: float | None = None
    test_acc_before_finetune: float | None = None
    ratio: float | None = None
    cost_ratio: float | None = None
    model_file_bytes: int | None = None
    route_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, case: SweepCase, seconds: float, metrics: dict[str, Any]) -> SweepRow:
        """The row of a finished case from its metrics."""
        compressed = metrics["compressed"]
        route = metrics.get("qubo") or metrics["search"]
        return cls(
            case=case.name,
            target=case.target_label,
            route=case.route,
            solver=case.solver,
            seed=case.seed,
            status="ok",
            seconds=seconds,
            fp32_test_acc=metrics["model"]["fp32_test_acc"],
            test_acc=compressed["test_acc"],
            test_acc_before_finetune=compressed["test_acc_before_finetune"],
            ratio=compressed["ratio"],
            cost_ratio=compressed["cost_ratio"],
            model_file_bytes=compressed["model_file_bytes"],
            route_seconds=route["route_seconds"],
            metrics=metrics,
        )

    @classmethod
    def failed(cls, case: SweepCase, seconds: float, reason: str) -> SweepRow:
        """The row of a case that could not be done."""
        return cls(case.name, case.target_label, case.route, case.solver, case.seed, "failed", reason, seconds)

    @property
    def ok(self) -> bool:
        """Whether the case finished."""
        return self.status == "ok"


CSV_COLUMNS = tuple(f for f in SweepRow.__dataclass_fields__ if f != "metrics")


@dataclass(frozen=True)
class SweepTable:
    """A sweep's rows, in case order.

    Attributes:
        rows: one :class:`SweepRow` per case.
        folder: the sweep's folder (None for a sweep run without one).
        command: the command lines that ran it, one per line (None: from Python).
    """

    rows: tuple[SweepRow, ...]
    folder: Path | None = None
    command: str | None = None

    def to_csv(self) -> str:
        """The table as CSV (one line per case; every column of :class:`SweepRow` but ``metrics``)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            writer.writerow(["" if getattr(row, c) is None else getattr(row, c) for c in CSV_COLUMNS])
        return buffer.getvalue()

    def stage_seconds(self) -> dict[str, float]:
        """Seconds summed over the finished cases: the whole cases, and inside them the analysis,
        the search (QUBO build + solve + polish, or the search's plan scoring, and the chosen plan's
        one evaluation) and the fine-tuning."""
        totals = {"cases": 0.0, "analysis": 0.0, "search": 0.0, "finetune": 0.0}
        for row in self.rows:
            totals["cases"] += row.seconds
            if not row.ok:
                continue
            timing = row.metrics["timing"]
            totals["analysis"] += timing.get("analysis", 0.0)
            totals["search"] += sum(timing.get(stage, 0.0) for stage in ("build", "solve", "search", "evaluate"))
            totals["finetune"] += row.metrics["compressed"].get("finetune_seconds", 0.0)
        return totals

    def text(self) -> str:
        """A plain-text table of the cases and the time shares."""
        lines = [("case", "status", "top-1 %", "before fine-tune", "ratio", "model file (B)", "route s", "case s")]
        for row in self.rows:
            if row.ok:
                assert row.test_acc is not None and row.test_acc_before_finetune is not None
                lines.append(
                    (
                        row.case,
                        "ok",
                        f"{100 * row.test_acc:.2f}",
                        f"{100 * row.test_acc_before_finetune:.2f}",
                        f"{row.ratio:.1f}x",
                        f"{row.model_file_bytes:,}",
                        f"{row.route_seconds:.1f}",
                        f"{row.seconds:.1f}",
                    )
                )
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        out += [f"{row.case.ljust(widths[0])}  failed: {row.reason}" for row in self.rows if not row.ok]
        totals = self.stage_seconds()
        if totals["cases"] > 0:
            shares = ", ".join(
                f"{name} {totals[name]:.1f} s ({100 * totals[name] / totals['cases']:.0f}%)"
                for name in ("analysis", "search", "finetune")
            )
            out.append(f"cases took {totals['cases']:.1f} s: {shares}")
        return "\n".join(out) + "\n"


def sweep_cases(
    targets: Sequence[float | str], routes: Sequence[str], solvers: Sequence[str], seeds: Sequence[int]
) -> list[SweepCase]:
    """Every case, target by target, then route (QUBO: each solver), then seed; a ProblemError for an
    empty or unknown list (one line, before any work)."""
    for what, values in (("target", targets), ("route", routes), ("seed", seeds)):
        if not values:
            raise ProblemError(f"the sweep needs at least one {what}")
    unknown = [route for route in routes if route not in SEARCH_METHODS]
    if unknown:
        raise ProblemError(f"unknown route {unknown[0]!r}; choose among: {', '.join(SEARCH_METHODS)}")
    if QUBO_ROUTE in routes and not solvers:
        raise ProblemError("the qubo route needs at least one solver")
    cases = []
    for target in targets:
        for route in dict.fromkeys(routes):
            for solver in dict.fromkeys(solvers) if route == QUBO_ROUTE else (None,):
                cases.extend(SweepCase(target, route, solver, seed) for seed in dict.fromkeys(seeds))
    return cases


def parse_targets(ratios: Sequence[float] = (), budgets: Sequence[str] = ()) -> list[float | str]:
    """Ratios (each a finite number > 1) or budgets (as ``--budget`` takes them), not both."""
    if ratios and budgets:
        raise ProblemError("give either target ratios or budgets, not both")
    targets: list[float | str] = []
    for ratio in ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (math.isfinite(ratio) and ratio > 1):
            raise ProblemError(f"a target ratio must be a number > 1 (e.g. 16 for 16x smaller), got {ratio!r}")
        targets.append(float(ratio))
    for budget in budgets:
        if not isinstance(budget, str) or not budget.strip():
            raise ProblemError(f"a budget is an amount such as 32KiB, got {budget!r}")
        targets.append(budget.strip())
    return list(dict.fromkeys(targets))


def check_cases(base: CompressConfig, cases: Sequence[SweepCase], model_given: bool = False) -> None:
    """Every case's settings, checked before the first case runs (``model_given``: as for
    :meth:`CompressConfig.validate`)."""
    for case in cases:
        case.config(base).validate(model_given)


def _set_aside(path: Path) -> None:
    """Move ``path`` (if there) to ``<path>.previous``, replacing an older one."""
    if not path.exists():
        return
    previous = path.with_name(path.name + PREVIOUS_SUFFIX)
    try:
        if previous.is_dir():
            shutil.rmtree(previous)
        path.replace(previous)
    except OSError as exc:
        raise ArtifactError(f"cannot set {path} aside as {previous}: {os_reason(exc)}") from None


class SweepStore:
    """A sweep's SQLite store (``<folder>/sweep.sqlite``), open in one process at a time.

    Args:
        path: the store's file.
        settings: the sweep's base settings (JSON-ready); a store made with others is refused.
            None: open an existing store to read it.
        fresh: set an existing store aside as ``<path>.previous`` and start an empty one.
        command: the command line that runs the sweep, kept for the report (every distinct one, in order).

    Raises:
        ArtifactError: another process holds the store; it is of another version; it cannot be
            opened or written.
        ProblemError: it was made with other base settings.
    """

    def __init__(
        self, path: Path, settings: dict[str, Any] | None = None, fresh: bool = False, command: str | None = None
    ) -> None:
        self.path = path
        with ExitStack() as held:
            held.enter_context(exclusive_lock(path, "the sweep store"))
            if fresh:
                _set_aside(path)
            if settings is None and not path.exists():
                raise ArtifactError(f"{path.parent} holds no sweep ({STORE_FILE} is missing)")
            with self._reported("open"):
                self._db = held.enter_context(closing(sqlite3.connect(path)))
                self._db.executescript(SCHEMA)
                self._check_meta(settings)
                if command is not None and command not in (self.command or "").splitlines():
                    commands = "\n".join(filter(None, (self.command, command)))
                    with self._db:
                        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('command', ?)", (commands,))
            self._held = held.pop_all()

    def _check_meta(self, settings: dict[str, Any] | None) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            if settings is None:
                raise ArtifactError(f"{self.path} holds no sweep (its tables are empty)")
            with self._db:
                self._db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("store_version", str(STORE_VERSION)),
                        ("qubocompress_version", VERSION),
                        ("settings", json.dumps(settings, sort_keys=True, default=jsonable)),
                    ],
                )
            return
        version = meta.get("store_version", "?")
        if version != str(STORE_VERSION):
            raise ArtifactError(
                f"the sweep store {self.path} is of version {version} (qubocompress "
                f"{meta.get('qubocompress_version', '?')}); this qubocompress {VERSION} reads version "
                f"{STORE_VERSION}: sweep into another folder, or pass --fresh to start this one over"
            )
        if settings is None:
            return
        # a setting added since the store was written counts as its default there
        defaults = json.loads(json.dumps(settings_of(CompressConfig()), default=jsonable))
        theirs = {**{k: v for k, v in defaults.items() if k in settings}, **json.loads(meta["settings"])}
        ours = json.loads(json.dumps(settings, sort_keys=True, default=jsonable))
        differing = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if differing:
            name = differing[0]
            raise ProblemError(
                f"the sweep in {self.path.parent} was run with other settings ({name}: {theirs.get(name)!r} there, "
                f"{ours.get(name)!r} now): sweep into another folder, or pass --fresh to start it over"
            )

    @property
    def settings(self) -> dict[str, Any]:
        """The base settings the sweep was made with."""
        with self._reported("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        return json.loads(row[0])

    @property
    def command(self) -> str | None:
        """The command lines that ran the sweep, one per line, in order (None: it ran from Python)."""
        with self._reported("read"):
            row = self._db.execute("SELECT value FROM meta WHERE key = 'command'").fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _reported(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"cannot {action} the sweep store {self.path}: {sqlite_reason(exc)}") from None

    def close(self) -> None:
        """Close the store and let other processes open it."""
        self._held.close()

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, case: SweepCase) -> bool:
        """Whether the case is recorded (finished or failed)."""
        with self._reported("read"):
            return self._db.execute("SELECT 1 FROM cases WHERE name = ?", (case.name,)).fetchone() is not None

    def add(self, row: SweepRow) -> None:
        """Record one case (its key must not be recorded yet)."""
        metrics = json.dumps(row.metrics, default=jsonable) if row.ok else None
        with self._reported("write"), self._db:
            self._db.execute(
                "INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.case, row.target, row.route, row.solver, row.seed, row.status, row.reason, row.seconds, metrics,
                 time.time()),
            )  # fmt: skip

    def rows(self) -> list[SweepRow]:
        """Every recorded case, in the order recorded."""
        with self._reported("read"):
            records = self._db.execute(
                "SELECT name, target, route, solver, seed, status, reason, seconds, metrics_json FROM cases "
                "ORDER BY rowid"
            ).fetchall()
        rows = []
        for name, target, route, solver, seed, status, reason, seconds, metrics in records:
            if status != "ok":
                rows.append(SweepRow(name, target, route, solver, int(seed), status, reason, seconds))
                continue
            case = SweepCase(target, route, solver, int(seed))
            rows.append(replace(SweepRow.of(case, seconds, json.loads(metrics)), case=name, target=target))
        return rows


def settings_of(base: CompressConfig) -> dict[str, Any]:
    """The base settings that every case shares (JSON-ready), the store's check on a rerun."""
    return {k: v for k, v in asdict(base).items() if k not in PER_CASE_FIELDS}


def check_cluster(cluster: Cluster, device: str) -> None:
    """ClusterError (one line) for cluster settings a sweep cannot use: those :meth:`Cluster.check`
    refuses, an address that does not answer (:meth:`Cluster.reach`, a few seconds) and a ``device``
    cuda:N (one GPU of this machine, where each case gets one of the cluster's); before the store
    or any case."""
    cluster.check()
    if cluster.enabled and device.startswith("cuda:"):
        raise ClusterError(
            f"--device {device} names one GPU of this machine; on Ray each case gets one of the cluster's GPUs: "
            "give --device cuda"
        )
    cluster.reach()


def cluster_device(device: str, session: Session, log: Log) -> str:
    """Where the cases run on ``session``'s cluster: "cuda" (each task holding one GPU) for
    ``device`` cuda or auto when the cluster has a GPU; else "cpu", with one warning line for cuda."""
    if device == "cpu":
        return "cpu"
    if session.gpus >= 1:
        return "cuda"
    if device != "auto":
        log(f"warning: --device {device}: {session.cluster.describe()} has no GPUs; the cases run on its CPUs")
    return "cpu"


def run_sweep(
    base: CompressConfig,
    cases: Sequence[SweepCase],
    out: Path | None = None,
    *,
    fresh: bool = False,
    command: str | None = None,
    log: Log = log_line,
    model: nn.Module | None = None,
    dataset: Dataset | None = None,
    test_accuracy: Callable[[nn.Module], float] | None = None,
    tune: Callable[[nn.Module], None] | None = None,
    cluster: Cluster | None = None,
) -> SweepTable:
    """Run the cases (module docstring) and return the table; with ``out``, resumable, the store and
    ``sweep.csv`` in it. ``command``: the command line, kept in the store for the report. ``model`` /
    ``dataset``: use these instead of loading ``base``'s; ``test_accuracy`` and ``tune`` as for
    :func:`~qubocompress.pipeline.run_compression`. ``cluster``: run the cases as Ray tasks there
    (:mod:`qubocompress.cluster`); a case whose worker died on every retry is a failed row."""
    check_cases(base, cases, model is not None)
    if cluster is not None:
        check_cluster(cluster, base.device)
    with ExitStack() as held:
        store = None
        if out is not None:
            folder = prepare_output_dir(out)
            store = held.enter_context(SweepStore(folder / STORE_FILE, settings_of(base), fresh, command))
            if fresh:  # the old cases' folders go with the old store
                _set_aside(folder / CASES_FOLDER)
        missing = [case for case in cases if store is None or not store.has(case)]
        if store is not None and len(missing) < len(cases):
            log(f"{len(cases) - len(missing)} of {len(cases)} cases are done already; running the other {len(missing)}")
        rows: dict[str, SweepRow] = {}
        if missing:
            session = held.enter_context(connect(cluster)) if cluster is not None and cluster.enabled else None
            # resolved once here (one fallback warning at most): every case runs there. On Ray the model
            # loads (or trains) on this machine's GPU if it has one, else its CPU, and goes to the workers
            # from the CPU, each case moving it to its own device.
            if session is None:
                base = replace(base, device=str(resolve_device(base.device, log)))
                here = base.device
            else:
                base = replace(base, device=cluster_device(base.device, session, log))
                here = str(resolve_device("auto" if base.device == "cuda" else "cpu"))
            if dataset is None:
                dataset = load_dataset(base.data, base.normalize)
                if dataset.note:
                    log(dataset.note)
            model_info = None
            if model is None:
                log(f"loading {base.model} once for every case")
                model, model_info = load_model(replace(base, device=here), dataset, log)
            if session is not None and any(t.device.type != "cpu" for t in model.state_dict().values()):
                model = copy.deepcopy(model).cpu()  # what the workers get: a copy, the caller's model stays
            shared = CaseInputs(base, dataset, model, model_info, test_accuracy, tune)
            if session is None:
                outcomes = _run_here(missing, shared, out, log)
            else:
                outcomes = _run_on(session, missing, shared, out, log)
            for row in outcomes:
                if store is not None:
                    store.add(row)
                rows[row.case] = row
                if not row.ok:
                    log(f"  {row.case} failed: {row.reason}")
        if store is None:
            return SweepTable(tuple(rows[case.name] for case in cases))
        recorded = {row.case: row for row in store.rows()}
        table = SweepTable(tuple(recorded[case.name] for case in cases), out, command)
        write_text_atomic(out / TABLE_FILE, table.to_csv())
        return table


@dataclass(frozen=True)
class CaseInputs:
    """What every case of a sweep shares: the base settings, the data, the model and the callbacks
    of :func:`~qubocompress.pipeline.run_compression`."""

    base: CompressConfig
    dataset: Dataset
    model: nn.Module
    model_info: dict[str, Any] | None
    test_accuracy: Callable[[nn.Module], float] | None
    tune: Callable[[nn.Module], None] | None


@dataclass(frozen=True)
class CaseOutput:
    """A case run on a Ray worker: its row and, when it finished, its folder's files (name -> bytes)."""

    row: SweepRow
    files: dict[str, bytes]


def _compressed(case: SweepCase, inputs: CaseInputs, log: Log, into: Path | None) -> dict[str, Any]:
    """Run one case, and write its files into ``into`` when given; returns its metrics."""
    result = run_compression(
        case.config(inputs.base),
        log,
        model=inputs.model,
        dataset=inputs.dataset,
        test_accuracy=inputs.test_accuracy,
        tune=inputs.tune,
        model_info=inputs.model_info,
    )
    if into is not None:
        result.write_into(into)
    return result.metrics.to_dict()


def _outcome(case: SweepCase, run: Callable[[], dict[str, Any]]) -> SweepRow:
    """The row of ``run()`` (the case's metrics); a case that cannot be done is a failed row."""
    start = time.perf_counter()
    try:
        metrics = run()
    except (ProblemError, SolverError) as exc:  # this case cannot be done; the others can
        return SweepRow.failed(case, time.perf_counter() - start, str(exc))
    return SweepRow.of(case, time.perf_counter() - start, metrics)


def _recorded_folder(case: SweepCase, out: Path | None, log: Log) -> SweepRow | None:
    """The row of a case whose folder was published but not recorded (killed in between), else None."""
    folder = None if out is None else out / CASES_FOLDER / case.name
    if folder is None or not (folder / "metrics.json").is_file():
        return None
    log(f"  {case.name} was finished but not recorded: recording its folder")
    return SweepRow.of(case, 0.0, json.loads((folder / "metrics.json").read_text()))


def _run_case(case: SweepCase, inputs: CaseInputs, out: Path | None, log: Log) -> SweepRow:
    """Run one case in this process, into its folder with ``out``."""
    recorded = _recorded_folder(case, out, log)
    if recorded is not None:
        return recorded
    prefixed: Log = lambda line: log(f"  {line}")  # noqa: E731
    if out is None:
        return _outcome(case, lambda: _compressed(case, inputs, prefixed, None))
    prepare_output_dir(out / CASES_FOLDER)

    def published() -> dict[str, Any]:
        with run_folder(out / CASES_FOLDER / case.name) as partial:
            return _compressed(case, inputs, prefixed, partial)

    return _outcome(case, published)


def _run_here(cases: Sequence[SweepCase], inputs: CaseInputs, out: Path | None, log: Log) -> Iterator[SweepRow]:
    """Run the cases one after the other in this process."""
    for number, case in enumerate(cases, 1):
        log(f"[{number}/{len(cases)}] {case.name}")
        yield _run_case(case, inputs, out, log)


def run_case_task(case: SweepCase, inputs: CaseInputs) -> CaseOutput:
    """One case on a Ray worker: its row, and its files for the driver to publish (module-level, so
    that the workers import it by name)."""
    files: dict[str, bytes] = {}

    def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as scratch:
            metrics = _compressed(case, inputs, lambda line: None, Path(scratch))
            files.update({path.name: path.read_bytes() for path in Path(scratch).iterdir() if path.is_file()})
        return metrics

    return CaseOutput(_outcome(case, run), files)


def _run_on(
    session: Session, cases: Sequence[SweepCase], inputs: CaseInputs, out: Path | None, log: Log
) -> Iterator[SweepRow]:
    """Run the cases as Ray tasks; this process alone publishes their folders, as each comes back."""
    todo = []
    for case in cases:
        recorded = _recorded_folder(case, out, log)
        if recorded is not None:
            yield recorded
        else:
            todo.append(case)
    if not todo:
        return
    gpus = int(inputs.base.device == "cuda")  # cluster_device: "cuda" only where the cluster has a GPU
    where = f"{session.cpus} CPUs" + (f", a GPU each of {session.gpus}" if gpus else "")
    log(f"running {len(todo)} cases on {session.cluster.describe()} ({where})")
    shared = {"inputs": session.put(inputs)}
    tasks = session.run_unordered(run_case_task, [(c,) for c in todo], shared, gpus=gpus)
    for number, (index, output) in enumerate(tasks, 1):
        case = todo[index]
        if isinstance(output, Crashed):
            row = SweepRow.failed(case, 0.0, output.reason)
        else:
            row = output.row
            if row.ok and out is not None:
                prepare_output_dir(out / CASES_FOLDER)
                with run_folder(out / CASES_FOLDER / case.name) as partial:
                    for name, data in output.files.items():
                        write_bytes_atomic(partial / name, data)
        log(f"[{number}/{len(todo)}] {case.name}: {row.status} ({row.seconds:.1f} s)")
        yield row


def read_sweep(folder: str | Path) -> SweepTable:
    """The table of the sweep in ``folder`` (an ArtifactError when it holds none)."""
    folder = Path(folder)
    with SweepStore(folder / STORE_FILE) as store:
        return SweepTable(tuple(store.rows()), folder, store.command)
