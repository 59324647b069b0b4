"""bench: the results store survives bad input, a second run and a full disk (issue #15)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qubocompress.bench import cli as bench_cli
from qubocompress.bench import runner
from qubocompress.bench.instances import Instance, instance_from_spec, save_instance
from qubocompress.bench.store import ResultStore, RunKey, RunRecord
from qubocompress.cli import main
from qubocompress.errors import ArtifactError
from qubocompress.problem.synthetic import synthetic_spec

LOCKED = "another qubocompress run is writing the results store"


def tiny_instance() -> Instance:
    return instance_from_spec("tiny", synthetic_spec(channels=(4, 8, 8), seed=2), "synthetic (test)", 10.0)


def record(seed: int = 0, reads: int = 1) -> RunRecord:
    """A run of ``reads`` distinct reads (8 + 8 bytes each in the store)."""
    return RunRecord(
        key=RunKey("tiny", "abc", "sa", seed, "opts"),
        options={},
        status="ok",
        e_best=-1.0,
        reads=reads,
        successes=1,
        solve_seconds=0.1,
        energies=np.linspace(-1.0, 0.0, reads),
        occurrences=np.ones(reads, dtype=np.int64),
    )


def store_with_a_marker(path: Path) -> None:
    """A results store at ``path`` holding one instance named ``earlier``."""
    with ResultStore(path) as store:
        store.add_instance("earlier", "abc", 3, 2, -1.0, True, "test", 0.0)


def instance_names(path: Path) -> list[str]:
    with ResultStore(path) as store:
        return [row["name"] for row in store.instances()]


def bench(out: Path, *argv: str) -> list[str]:
    return ["bench", "--solvers", "sa", "--seeds", "1", "--num-reads", "5", "--out", str(out), *argv]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The run's only stderr line, the CLI's error (no traceback, no log line before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qubocompress: error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- --fresh


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--instances", "lenet55"], "unknown instance 'lenet55'"),
        (["--instances", "lenet5,lenet5"], "instance 'lenet5' is asked for twice"),
        (["--instances", "n100", "--sizes", "100"], "instance 'n100' is asked for twice"),
        (["--instances", "missing.bqm"], "missing.bqm not found"),
        (["--instances", "empty-folder"], "no .bqm instance files in"),
        (["--target-ratio", "16,x"], "--target-ratio takes numbers > 1"),
        (["--solvers", "sa,nope"], "unknown solver 'nope'"),
    ],
)
def test_fresh_with_bad_input_leaves_the_store_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-folder").mkdir()
    out = tmp_path / "o"
    store_with_a_marker(out / "results.sqlite")
    assert main(bench(out, "--fresh", *argv)) == 2
    assert message in one_error_line(capsys)
    assert instance_names(out / "results.sqlite") == ["earlier"]
    assert not (out / "results.sqlite.previous").exists()


def test_fresh_moves_the_earlier_store_aside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_instance(tiny_instance(), tmp_path / "inst")
    out = tmp_path / "o"
    store_with_a_marker(out / "results.sqlite")
    assert main(bench(out, "--instances", str(path), "--fresh")) == 0
    assert f"--fresh: the earlier results are moved to {out / 'results.sqlite.previous'}" in capsys.readouterr().err
    assert instance_names(out / "results.sqlite.previous") == ["earlier"]
    assert instance_names(out / "results.sqlite") == ["tiny"]
    assert main(bench(out, "--instances", str(path), "--fresh")) == 0  # replaces the older .previous
    assert instance_names(out / "results.sqlite.previous") == ["tiny"]


def test_fresh_store_takes_the_journal_along(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    store_with_a_marker(path)
    Path(f"{path}.previous-journal").write_bytes(b"an older store's journal")
    with ResultStore(path, fresh=True) as store:
        assert store.previous == tmp_path / "r.sqlite.previous" and store.instances() == []
    assert not Path(f"{path}.previous-journal").exists()  # it would belong to the wrong store
    Path(f"{path}-journal").write_bytes(b"journal of the store being set aside")
    with ResultStore(path, fresh=True):
        pass
    assert Path(f"{path}.previous-journal").read_bytes() == b"journal of the store being set aside"
    assert not Path(f"{path}-journal").exists()
    with ResultStore(tmp_path / "new.sqlite", fresh=True) as store:
        assert store.previous is None


# --------------------------------------------------------------------------- one run at a time


def test_a_second_open_store_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as first:
        with pytest.raises(ArtifactError, match=LOCKED):
            ResultStore(path)
        with pytest.raises(ArtifactError, match=LOCKED):
            ResultStore(path, fresh=True)
        first.add_run(record())
    assert not (tmp_path / "r.sqlite.previous").exists()  # the refused --fresh moved nothing
    with ResultStore(path) as again:
        assert len(again.runs()) == 1


def test_a_store_that_fails_to_open_lets_go_of_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    path.write_text("not a database" * 100)
    with pytest.raises(ArtifactError, match="is not a usable SQLite file"):
        ResultStore(path)
    with ResultStore(path, fresh=True) as store:
        assert store.instances() == []


def test_cli_bench_refuses_a_store_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_instance(tiny_instance(), tmp_path / "inst")
    out = tmp_path / "o"
    with ResultStore(out / "results.sqlite") as running:
        running.add_instance("earlier", "abc", 3, 2, -1.0, True, "test", 0.0)
        for fresh in ([], ["--fresh"]):
            assert main(bench(out, "--instances", str(path), *fresh)) == 2
            assert LOCKED in one_error_line(capsys)
    assert instance_names(out / "results.sqlite") == ["earlier"]
    assert not (out / "instances").exists()  # refused before any instance was built


def test_a_run_recorded_twice_is_an_artifact_error(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_run(record())
        with pytest.raises(ArtifactError, match="cannot write results store .*UNIQUE constraint failed"):
            store.add_run(record())
        assert len(store.runs()) == 1


# --------------------------------------------------------------------------- full or read-only disk


def test_full_disk_while_recording_a_run(tiny_tmpfs: Path) -> None:
    with ResultStore(tiny_tmpfs / "r.sqlite") as store:
        store.add_run(record(seed=0))
        with pytest.raises(ArtifactError, match="cannot write results store .*: no space left on the device$"):
            store.add_run(record(seed=1, reads=100_000))  # 1.6 MB of reads on 64 KiB
        assert [run.key.seed for run in store.runs()] == [0]  # the failed run was rolled back whole
        store.add_run(record(seed=2))


def fill(folder: Path) -> None:
    """Write a file in ``folder`` until its file system is full."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_cli_bench_on_a_disk_that_fills_up(
    tiny_tmpfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def sweep_on_a_full_disk(*args: Any, **kwargs: Any) -> runner.SweepOutcome:
        fill(tiny_tmpfs)
        return runner.run_sweep(*args, **kwargs)

    monkeypatch.setattr(bench_cli, "run_sweep", sweep_on_a_full_disk)
    path = save_instance(tiny_instance(), tmp_path / "inst")
    out = tiny_tmpfs / "o"
    assert main(bench(out, "--instances", str(path))) == 2
    error = one_error_line(capsys)
    assert error.endswith("no space left on the device") and "results store" in error, error


def test_store_on_a_read_only_file_system(read_only_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="the file system is read-only"):
        ResultStore(read_only_dir / "r.sqlite")
