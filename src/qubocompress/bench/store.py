"""The benchmark's results store: one SQLite file (stdlib ``sqlite3``) that a sweep resumes from.

Tables:

* ``instances``: one row per instance (name, sha256 of its ``.bqm``, size, E*, certified, source).
* ``runs``: one row per (instance, instance sha256, solver, seed, options hash) — the key a sweep
  checks before running, so an interrupted sweep redoes only what is missing. ``status`` is
  ``"ok"`` or ``"error"`` (a solver that refused the instance; ``info.error`` says why).
* ``reads``: every read's energy and occurrence count of a run (float64 / int64 blobs), for the
  success probabilities against the final E* and the energy histograms.

Each run is written in its own transaction together with its reads, so a crash loses at most the
run in progress.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qubocompress.errors import ArtifactError

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
    """The SQLite results file of a sweep.

    Args:
        path: the ``.sqlite`` file (created with its folder if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(
                f"results store {self.path} is not a usable SQLite file ({exc}); delete it or run with --fresh"
            ) from exc
        except OSError as exc:
            raise ArtifactError(f"cannot open results store {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._db:
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
        cursor = self._db.execute(
            "SELECT name, sha256, num_variables, num_interactions, e_star, certified, source, build_seconds "
            "FROM instances ORDER BY rowid"
        )
        columns = [c[0] for c in cursor.description]
        return [{**dict(zip(columns, row)), "certified": bool(row[5])} for row in cursor]

    def has_run(self, key: RunKey) -> bool:
        """Whether the run ``key`` is already recorded."""
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
        cursor = self._db.execute(
            "SELECT runs.instance, runs.instance_sha256, runs.solver, runs.seed, runs.options_hash, "
            "runs.options_json, runs.status, runs.e_best, runs.reads, runs.successes, runs.solve_seconds, "
            "runs.embed_seconds, runs.build_seconds, runs.evaluations, runs.stopped_by, runs.info_json, "
            f"runs.created, reads.energies, reads.occurrences FROM runs LEFT JOIN reads ON reads.run_id = runs.id "
            f"{where} ORDER BY runs.id",
            params,
        )
        records = []
        for row in cursor:
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
