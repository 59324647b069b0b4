"""The sweep: cases, run folders, the resumable store (killed mid-sweep), the Python API, bad input."""

from __future__ import annotations

import csv
from collections.abc import Callable
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import qubocompress as qc
from qubocompress import sweeps as sweep_module
from qubocompress.cli import build_parser
from qubocompress.config import CompressConfig
from qubocompress.errors import ArtifactError, ProblemError
from qubocompress.sweeps import STORE_FILE, SweepCase, SweepRow, read_sweep, sweep_cases

from test_pipeline import assert_one_line_error, data_dir, run  # noqa: F401  (data_dir is a fixture)

FAST = ("--finetune-epochs", "0", "--no-report", "--quiet")


def sweep_args(data_dir: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["sweep", "--model", "lenet5", "--data", data_dir, "--out", out, *FAST, *extra]


def recorded(out: Path) -> list[tuple[str, str, float]]:
    """(case, status, created) of every row of the store, in the order recorded."""
    with sqlite3.connect(out / STORE_FILE) as db:
        return db.execute("SELECT name, status, created FROM cases ORDER BY rowid").fetchall()


def test_cases_are_every_target_route_solver_and_seed() -> None:
    cases = sweep_cases([4.0, "32KiB"], ["qubo", "uniform"], ["sa", "exact"], [0, 1])
    names = [case.name for case in cases]
    assert names[:6] == [
        "4x-qubo-sa-seed0",
        "4x-qubo-sa-seed1",
        "4x-qubo-exact-seed0",
        "4x-qubo-exact-seed1",
        "4x-uniform-seed0",
        "4x-uniform-seed1",
    ]
    assert names[6] == "32KiB-qubo-sa-seed0" and len(names) == len(set(names)) == 12
    config = SweepCase("32KiB", "uniform", None, 3).config(CompressConfig(solver="tabu"))
    assert (config.budget, config.search, config.solver, config.seed, config.baseline) == (
        "32KiB",
        "uniform",
        "tabu",
        3,
        False,
    )


def test_a_sweep_writes_a_run_folder_and_a_row_per_case_and_a_rerun_runs_nothing(data_dir: Path, tmp_path: Path):
    out = tmp_path / "sweep"
    args = sweep_args(data_dir, out, "--target-ratio", "4,8,64", "--routes", "qubo,uniform,ga-acc")
    assert run(*args, "--search-evaluations", "6") == 0
    table = read_sweep(out)
    rows = {row.case: row for row in table.rows}
    assert list(rows) == [f"{r}x-{route}-seed0" for r in (4, 8, 64) for route in ("qubo-sa", "uniform", "ga-acc")]
    # ga-acc's grid cannot reach 64x on LeNet-5: recorded as failed with the reason, the sweep went on
    assert rows["64x-ga-acc-seed0"].status == "failed" and "not reachable" in rows["64x-ga-acc-seed0"].reason
    for name, row in rows.items():
        if row.ok:
            folder = out / "cases" / name
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics == row.metrics and (folder / "model.safetensors").stat().st_size == row.model_file_bytes
            assert row.ratio >= float(row.target.rstrip("x")) and "baseline_uniform" not in metrics
    assert rows["8x-uniform-seed0"].metrics["search"]["method"] == "uniform"
    assert table.command is not None and table.command.startswith("qubocompress sweep --model lenet5")
    lines = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert [line["case"] for line in lines] == list(rows) and lines[0]["status"] == "ok"
    # the same command again runs no case; one more seed runs only its cases
    before = recorded(out)
    assert run(*args, "--search-evaluations", "6") == 0
    assert recorded(out) == before
    assert run(*args, "--search-evaluations", "6", "--seeds", "0,1") == 0
    after = recorded(out)
    assert after[: len(before)] == before and {name for name, _, _ in after[len(before) :]} == {
        name.replace("seed0", "seed1") for name in rows
    }


def test_a_sweep_killed_mid_case_resumes_and_runs_each_case_once(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = [str(a) for a in sweep_args(data_dir, out, "--target-ratio", "4,6,8,10", "--finetune-epochs", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "qubocompress.cli", *args]

    def mid_case() -> bool:  # a case being written, after at least one case was recorded
        partial = list((out / "cases").glob(".*.partial-*")) if (out / "cases").is_dir() else []
        return bool(partial) and (out / STORE_FILE).exists() and bool(recorded(out))

    kill_when(command, env, mid_case, seconds=300, poll=0.02)
    done_before = recorded(out)
    assert 1 <= len(done_before) < 8
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    after = recorded(out)
    names = [name for name, _, _ in after]
    assert len(names) == len(set(names)) == 8  # every case, none twice
    assert after[: len(done_before)] == done_before  # the finished ones were not run again
    assert not list((out / "cases").glob(".*.partial-*"))  # the killed case's half-written folder is gone
    assert sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith(".")) == sorted(names)


def test_a_case_published_but_not_recorded_is_recorded_from_its_folder(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sweep"
    args = sweep_args(data_dir, out, "--target-ratio", "4,8", "--routes", "uniform")
    real_add = sweep_module.SweepStore.add

    def die_after_the_first(self, row):  # the process dies between publishing a case and recording it
        if row.case == "8x-uniform-seed0":
            raise KeyboardInterrupt
        real_add(self, row)

    monkeypatch.setattr(sweep_module.SweepStore, "add", die_after_the_first)
    assert run(*args) == 130
    assert (out / "cases" / "8x-uniform-seed0" / "metrics.json").is_file()
    monkeypatch.setattr(sweep_module.SweepStore, "add", real_add)

    def no_run(*args, **kwargs):
        raise AssertionError("a published case was run again")

    monkeypatch.setattr(sweep_module, "run_compression", no_run)
    assert run(*args) == 0
    assert [name for name, status, _ in recorded(out)] == ["4x-uniform-seed0", "8x-uniform-seed0"]


def test_fresh_sets_the_store_and_the_cases_aside(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert run(*sweep_args(data_dir, out, "--target-ratio", "4", "--routes", "uniform")) == 0
    assert run(*sweep_args(data_dir, out, "--target-ratio", "4", "--routes", "uniform", "--finetune-epochs", "1")) == 2
    assert run(*sweep_args(data_dir, out, "--target-ratio", "4", "--routes", "uniform", "--fresh")) == 0
    assert (out / "sweep.sqlite.previous").is_file() and (out / "cases.previous" / "4x-uniform-seed0").is_dir()
    assert len(recorded(out)) == 1


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("--target-ratio", ""), "--target-ratio: give a comma-separated list"),
        (("--target-ratio", "4,,8"), "--target-ratio: give a comma-separated list"),
        (("--target-ratio", "4,abc"), "'abc' is not a number"),
        (("--target-ratio", "0.5"), "a target ratio must be a number > 1"),
        (("--target-ratio", "4", "--budget", "32KiB"), "either target ratios or budgets"),
        (("--budget", "32 parsecs"), "--budget '32 parsecs'"),
        (("--routes", "qubo,magic"), "unknown route 'magic'"),
        (("--solvers", "sa,nope"), "unknown --solver 'nope'"),
        (("--seeds", "0,-1"), "seed"),
        (("--seeds", "x"), "'x' is not a whole number"),
    ],
)
def test_bad_sweep_input_is_one_line_before_any_work(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], needle: str
) -> None:
    out = tmp_path / "sweep"
    assert run(*sweep_args(data_dir, out, *extra)) == 2
    assert_one_line_error(capsys, needle)
    assert not out.exists()


def test_a_store_of_another_version_or_other_settings_is_refused(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    args = sweep_args(data_dir, out, "--target-ratio", "4", "--routes", "uniform")
    assert run(*args) == 0
    capsys.readouterr()
    assert run(*args, "--max-prune", "0.25") == 2
    assert_one_line_error(capsys, "was run with other settings (max_prune_fraction: 0.5 there, 0.25 now)")
    with sqlite3.connect(out / STORE_FILE) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'store_version'")
    assert run(*args) == 2
    assert_one_line_error(capsys, "is of version 99", "--fresh")
    (out / STORE_FILE).write_bytes(b"not a database at all" * 100)
    assert run(*args) == 2
    assert_one_line_error(capsys, "not a usable SQLite file")
    with pytest.raises(ArtifactError, match="holds no sweep"):
        read_sweep(tmp_path)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_qc_sweep_returns_typed_rows_and_writes_nothing_without_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(120, 1, 8, 8, generator=generator), torch.randint(0, 3, (120,), generator=generator)
    table = qc.sweep(
        TinyNet(), (x, y), target_ratios=[4, 8], routes=["qubo", "uniform"], seeds=[0, 1], finetune_epochs=0
    )
    assert isinstance(table, qc.SweepTable) and all(isinstance(row, SweepRow) for row in table.rows)
    assert [row.case for row in table.rows] == [
        f"{r}x-{route}-seed{s}" for r in (4, 8) for route in ("qubo-sa", "uniform") for s in (0, 1)
    ]
    assert all(row.ok and row.ratio >= float(row.target[:-1]) for row in table.rows)
    lines = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert len(lines) == 8 and float(lines[0]["test_acc"]) == table.rows[0].test_acc
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ProblemError, match="sets 'target_ratio' per case"):
        qc.sweep(TinyNet(), (x, y), target_ratios=[4], target_ratio=8)
    with pytest.raises(ProblemError, match="at least one target"):
        qc.sweep(TinyNet(), (x, y))


def test_the_uniform_route_is_a_compress_search(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "uniform"
    assert run("compress", "--model", "lenet5", "--data", data_dir, "--out", out, "--search", "uniform", *FAST[:3]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    search = metrics["search"]
    assert search["method"] == "uniform" and search["details"]["bit_width"] in range(2, 9)
    assert search["evaluations"] == len(search["details"]["candidates"]) and metrics["compressed"]["ratio"] >= 16


@pytest.mark.parametrize(
    "config",
    [
        CompressConfig(),
        CompressConfig(
            model="resnet20",
            target_ratio=24.5,
            formulation="budget",
            metric="bops",
            interactions=True,
            baseline=False,
            analysis_cache=False,
            export_onnx=True,
            out=Path("runs/x y"),
            calibration_samples=256,
            search_evaluations=50,
            device="auto",
        ),
        CompressConfig(budget="32KiB", metric="file", formulation="budget", seed=7, untrained=True),
    ],
)
def test_a_config_command_line_parses_back_to_the_same_config(config: CompressConfig) -> None:
    import shlex

    words = shlex.split(config.command_line())
    assert words[:2] == ["qubocompress", "compress"]
    args = build_parser().parse_args(words[1:])
    from qubocompress.cli import _compress_config

    assert _compress_config(args) == config


def test_a_field_no_flag_sets_is_named_in_the_command_line() -> None:
    assert CompressConfig(b_max=6).command_line() == "qubocompress compress  # from Python: b_max=6"


def kill_when(command: list[str], env: dict[str, str], ready: Callable[[], bool], seconds: float, poll: float) -> None:
    """Run ``command`` and SIGKILL it once ``ready()`` holds (within ``seconds``); it must still be running then."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and process.poll() is None and not ready():
            time.sleep(poll)
        assert process.poll() is None, "the sweep ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
