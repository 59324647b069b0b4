"""The benchmark's results store: one SQLite file (stdlib ``sqlite3``) that a sweep resumes from.

Tables:

* ``instances``: one row per instance (name, sha256 of its ``.bqm``, size, E*, certified, source).
* ``runs``: one row per (instance, instance sha256, solver, seed, options hash) — the key a sweep
  checks before running, so an interrupted sweep redoes only what is missing. ``status`` is
  ``"ok"`` or ``"error"`` (a solver that refused the instance; ``info.error`` says why).
* ``reads``: every read's energy and occurrence count of a run (float64 / int64 blobs), for the
  success probabilities against the final E* and the energy histograms.

Each run is written in its own transaction together with its reads, so a crash loses at most the
run in progress. One process at a time has a store open (:func:`qubocompress.io.exclusive_lock`):
two sweeps on one store would run the same missing runs and both record them. Every SQLite
failure (a full disk, a read-only file, a file that is not a database) is an
:class:`~qubocompress.errors.ArtifactError` with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qubocompress.errors import ArtifactError
from qubocompress.io import exclusive_lock, os_reason, sqlite_reason

PREVIOUS_SUFFIX = ".previous"
# SQLite's rollback journal beside the store (present after a crash mid-transaction): it belongs to
# the store's file and moves with it, never to a new store at the same path.
JOURNAL_SUFFIX = "-journal"
SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    num_variables INTEGER NOT NULL,
    num_interactions INTEGER NOT NULL,
    e_star REAL,
    certified INTEGER NOT NULL,
    source TEXT NOT NULL,
    build_seconds REAL NOT NULL,
    PRIMARY KEY (name, sha256)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    instance TEXT NOT NULL,
    instance_sha256 TEXT NOT NULL,
    solver TEXT NOT NULL,
    seed INTEGER NOT NULL,
    options_hash TEXT NOT NULL,
    options_json TEXT NOT NULL,
    status TEXT NOT NULL,
    e_best REAL,
    reads INTEGER NOT NULL,
    successes INTEGER NOT NULL,
    solve_seconds REAL NOT NULL,
    embed_seconds REAL NOT NULL,
    build_seconds REAL NOT NULL,
    evaluations INTEGER,
    stopped_by TEXT,
    info_json TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (instance, instance_sha256, solver, seed, options_hash)
);
CREATE TABLE IF NOT EXISTS reads (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
    energies BLOB NOT NULL,
    occurrences BLOB NOT NULL
);
"""


def options_hash(options: dict[str, Any]) -> str:
    """A short, stable digest of a run's options (canonical JSON, sorted keys)."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunKey:
    """What identifies a run: the same key is never run twice."""

    instance: str
    instance_sha256: str
    solver: str
    seed: int
    options_hash: str


@dataclass
class RunRecord:
    """One solver run on one instance with one seed.

    Attributes:
        key: the run's identity.
        options: the options that made it (constructor and sample keywords, budget).
        status: ``"ok"`` or ``"error"``.
        e_best: lowest energy of its reads (None when it failed).
        reads: total reads (sum of occurrences).
        successes: reads at E* as known when the run was recorded.
        solve_seconds: the solver's own wall time for the sample call.
        embed_seconds: minor-embedding time (QPU), else 0.
        build_seconds: wall time to build the instance's BQM.
        evaluations: energy evaluations the solver reports (GA/RL), else None.
        stopped_by: why it stopped, as the solver reports (``"time_limit"``, ``"convergence"`` ...).
        info: everything else worth keeping (JSON-ready).
        energies, occurrences: every distinct read's energy and its count.
    """

    key: RunKey
    options: dict[str, Any]
    status: str
    e_best: float | None
    reads: int
    successes: int
    solve_seconds: float
    embed_seconds: float = 0.0
    build_seconds: float = 0.0
    evaluations: int | None = None
    stopped_by: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    energies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    occurrences: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    created: float = 0.0


class ResultStore:
    """The SQLite results file of a sweep, open in one process at a time.

    Args:
        path: the ``.sqlite`` file (created with its folder if missing).
        fresh: start an empty store: an earlier one is moved to ``<path>.previous`` (replacing an
            older one) once the lock is held; :attr:`previous` says where it went.

    Raises:
        ArtifactError: another process has the store open, or it cannot be opened or created.
    """

    def __init__(self, path: str | Path, fresh: bool = False) -> None:
        self.path = Path(path)
        self.previous: Path | None = None
        with ExitStack() as held:  # the lock, then the connection; closed in reverse order
            held.enter_context(exclusive_lock(self.path, "the results store"))
            if fresh:
                self.previous = self._set_aside()
            with self._reported("open"):
                self._db = held.enter_context(closing(sqlite3.connect(self.path)))
                self._db.execute("PRAGMA foreign_keys = ON")
                self._db.executescript(SCHEMA)
            self._held = held.pop_all()

    def _set_aside(self) -> Path | None:
        """Move the store at :attr:`path` (with its journal) to ``<path>.previous``; that path, or
        None when there was no store."""
        if not self.path.exists():
            return None
        previous = self.path.with_name(self.path.name + PREVIOUS_SUFFIX)
        try:
            os.replace(self.path, previous)
            journal = Path(f"{self.path}{JOURNAL_SUFFIX}")
            previous_journal = Path(f"{previous}{JOURNAL_SUFFIX}")
            if journal.exists():
                os.replace(journal, previous_journal)
            else:
                previous_journal.unlink(missing_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot move results store {self.path} to {previous}: {os_reason(exc)}") from None
        return previous

    def close(self) -> None:
        """Close the database connection and let other processes open the store."""
        self._held.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _reported(self, action: str) -> Iterator[None]:
        """The block's SQLite errors as one-line ArtifactErrors (``action``: what it does to the store)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"cannot {action} results store {self.path}: {sqlite_reason(exc)}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole or rolled back; errors as ArtifactErrors."""
        with self._reported("write"), self._db:
            yield self._db

    def add_instance(
        self,
        name: str,
        sha256: str,
        num_variables: int,
        num_interactions: int,
        e_star: float | None,
        certified: bool,
        source: str,
        build_seconds: float,
    ) -> None:
        """Record (or update) an instance's facts."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, sha256) DO UPDATE SET "
                "e_star = excluded.e_star, certified = excluded.certified, source = excluded.source",
                (name, sha256, num_variables, num_interactions, e_star, int(certified), source, build_seconds),
            )

    def instances(self) -> list[dict[str, Any]]:
        """Every recorded instance as a dict (in insertion order)."""
        with self._reported("read"):
            cursor = self._db.execute(
                "SELECT name, sha256, num_variables, num_interactions, e_star, certified, source, build_seconds "
                "FROM instances ORDER BY rowid"
            )
            rows = cursor.fetchall()
        columns = [c[0] for c in cursor.description]
        return [{**dict(zip(columns, row)), "certified": bool(row[5])} for row in rows]

    def has_run(self, key: RunKey) -> bool:
        """Whether the run ``key`` is already recorded."""
        with self._reported("read"):
            row = self._db.execute(
                "SELECT 1 FROM runs WHERE instance = ? AND instance_sha256 = ? AND solver = ? AND seed = ? "
                "AND options_hash = ?",
                (key.instance, key.instance_sha256, key.solver, key.seed, key.options_hash),
            ).fetchone()
        return row is not None

    def add_run(self, record: RunRecord) -> None:
        """Record one run and its reads in one transaction (an existing key is an error: check first)."""
        key = record.key
        energies = np.ascontiguousarray(record.energies, dtype="<f8")
        occurrences = np.ascontiguousarray(record.occurrences, dtype="<i8")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (instance, instance_sha256, solver, seed, options_hash, options_json, status, "
                "e_best, reads, successes, solve_seconds, embed_seconds, build_seconds, evaluations, stopped_by, "
                "info_json, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.instance,
                    key.instance_sha256,
                    key.solver,
                    key.seed,
                    key.options_hash,
                    json.dumps(record.options, sort_keys=True, default=str),
                    record.status,
                    record.e_best,
                    record.reads,
                    record.successes,
                    record.solve_seconds,
                    record.embed_seconds,
                    record.build_seconds,
                    record.evaluations,
                    record.stopped_by,
                    json.dumps(record.info, sort_keys=True, default=_json_default),
                    record.created or time.time(),
                ),
            )
            db.execute(
                "INSERT INTO reads VALUES (?, ?, ?)", (cursor.lastrowid, energies.tobytes(), occurrences.tobytes())
            )

    def runs(self, instance: str | None = None, solver: str | None = None) -> list[RunRecord]:
        """Recorded runs (optionally of one instance and/or solver), in the order they were run."""
        clauses, params = [], []
        for column, value in (("instance", instance), ("solver", solver)):
            if value is not None:
                clauses.append(f"runs.{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._reported("read"):
            rows = self._db.execute(
                "SELECT runs.instance, runs.instance_sha256, runs.solver, runs.seed, runs.options_hash, "
                "runs.options_json, runs.status, runs.e_best, runs.reads, runs.successes, runs.solve_seconds, "
                "runs.embed_seconds, runs.build_seconds, runs.evaluations, runs.stopped_by, runs.info_json, "
                "runs.created, reads.energies, reads.occurrences FROM runs LEFT JOIN reads ON reads.run_id = runs.id "
                f"{where} ORDER BY runs.id",
                params,
            ).fetchall()
        records = []
        for row in rows:
            records.append(
                RunRecord(
                    key=RunKey(row[0], row[1], row[2], int(row[3]), row[4]),
                    options=json.loads(row[5]),
                    status=row[6],
                    e_best=row[7],
                    reads=int(row[8]),
                    successes=int(row[9]),
                    solve_seconds=float(row[10]),
                    embed_seconds=float(row[11]),
                    build_seconds=float(row[12]),
                    evaluations=None if row[13] is None else int(row[13]),
                    stopped_by=row[14],
                    info=json.loads(row[15]),
                    created=float(row[16]),
                    energies=np.frombuffer(row[17] or b"", dtype="<f8").copy(),
                    occurrences=np.frombuffer(row[18] or b"", dtype="<i8").copy(),
                )
            )
        return records


def _json_default(value: Any) -> Any:
    """numpy values in ``info`` as plain numbers/lists, anything else as its text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
