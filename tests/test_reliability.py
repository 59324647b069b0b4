"""Issue 15: a run folder is never half old and half new, errors come before the work, and every
file-system failure is one line. Each test feeds one case of docs/reliability.md."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from qubocompress.errors import ProblemError
from qubocompress.io import exclusive_lock, run_folder, write_text_atomic
from qubocompress.pipeline import CompressConfig, parse_budget

from test_pipeline import assert_one_line_error, compress_args, data_dir, paper_run, run, user_module  # noqa: F401


def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading data fail the test: a check that must come before any work did not."""
    pipeline = sys.modules["qubocompress.pipeline"]
    monkeypatch.setattr(pipeline, "load_dataset", lambda *a, **k: pytest.fail("work started before the check"))


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("seed", ["-5", "99999999999999999999", "1.5"])
@pytest.mark.parametrize("command", ["compress", "train"])
def test_a_seed_out_of_range_is_refused_by_the_parser(command, seed, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(
            command,
            "--seed",
            seed,
            "--out" if command == "compress" else "--model",
            tmp_path / "o" if command == "compress" else "lenet5",
        )
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--seed" in last and ("from 0 to 2,147,483,647" in last or "whole number" in last), last


def test_a_seed_out_of_range_is_refused_by_the_python_config():
    for seed in (-5, 2**31, 10**20, True):
        with pytest.raises(ProblemError, match="--seed must be a whole number from 0 to 2,147,483,647"):
            CompressConfig(seed=seed).validate()


def test_a_factory_without_weights_is_refused_before_any_work(user_module, data_dir, monkeypatch, capsys):
    no_work(monkeypatch)
    assert run(*compress_args(data_dir, user_module / "out"), "--model", "usernet:make") == 2
    assert_one_line_error(capsys, "--model usernet:make without --weights would compress", "--untrained")
    assert not (user_module / "out").exists()


def test_an_untrained_model_near_chance_is_named_in_a_warning(user_module, data_dir, capsys):
    out = user_module / "out"
    assert (
        run(
            *compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline"),
            "--model",
            "usernet:make",
            "--untrained",
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: the uncompressed model's test top-1" in err and "near chance (25.00%)" in err
    assert json.loads((out / "metrics.json").read_text())["model"]["fp32_near_chance"] is True


def test_a_trained_model_gets_no_near_chance_warning(paper_run):
    assert json.loads((paper_run / "metrics.json").read_text())["model"]["fp32_near_chance"] is False


def test_an_interrupted_run_leaves_the_previous_folder_as_it_was(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert run(*compress_args(data_dir, out, "--target-ratio", "8", "--finetune-epochs", "0")) == 0
    before = files_of(out)
    pipeline = sys.modules["qubocompress.pipeline"]

    def interrupt(*args, **kwargs):  # the baseline runs after the model file was made
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "choose_uniform_plan", interrupt)
    assert run(*compress_args(data_dir, out, "--target-ratio", "4", "--finetune-epochs", "0")) == 130
    assert files_of(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]  # no partial folder left


def test_a_second_run_on_the_same_folder_is_refused_at_once(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    no_work(monkeypatch)
    with exclusive_lock(out, "the results folder"):
        assert run(*compress_args(data_dir, out)) == 2
    assert_one_line_error(capsys, f"another qubocompress run is writing the results folder {out}")
    assert not out.exists()


def test_a_killed_runs_leftovers_are_removed_by_the_next(tmp_path):
    target = tmp_path / "run"
    (tmp_path / ".run.partial-abc").mkdir()
    (tmp_path / ".run.partial-abc" / "model.safetensors").write_bytes(b"half")
    with run_folder(target) as folder:
        write_text_atomic(folder / "metrics.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]
    assert files_of(target) == {"metrics.json": b"{}"}


def test_a_full_disk_during_compress_is_one_line_and_leaves_no_partial_folder(data_dir, tiny_tmpfs, capsys):
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (60 * 1024))
    out = tiny_tmpfs / "out"
    assert run(*compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline")) == 2
    assert_one_line_error(capsys, "no space left on the device")
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == [".out.lock", "filler"]


@pytest.mark.parametrize("where", ["existing folder", "under a file", "read-only"])
def test_train_save_to_a_bad_place_is_refused_before_training(where, tmp_path, read_only_dir, monkeypatch, capsys):
    train_module = sys.modules["qubocompress.models.train"]
    monkeypatch.setattr(train_module, "load_or_train", lambda *a, **k: pytest.fail("trained before checking --save"))
    (tmp_path / "file").write_text("x")
    target, needle = {
        "existing folder": (tmp_path, f"cannot write --save {tmp_path}: it is an existing folder"),
        "under a file": (tmp_path / "file" / "m.pt", "file is a file, not a folder"),
        "read-only": (
            read_only_dir / "m.pt",
            f"cannot write --save {read_only_dir / 'm.pt'}: the file system is read-only",
        ),
    }[where]
    assert run("train", "--model", "lenet5", "--save", target) == 2
    assert_one_line_error(capsys, needle)


def test_train_save_to_a_full_disk_is_one_line(data_dir, paper_run, tiny_tmpfs, capsys):
    target = tiny_tmpfs / "lenet5.pt"  # the cached LeNet-5 checkpoint (~250 KB) does not fit in 64 KiB
    assert run("train", "--model", "lenet5", "--data", data_dir, "--save", target) == 2
    assert_one_line_error(capsys, f"cannot write {target}: no space left on the device")
    assert list(tiny_tmpfs.iterdir()) == []


def test_outputs_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with run_folder(tmp_path / "run") as folder:
            write_text_atomic(folder / "summary.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "run" / "summary.txt").stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("2GiB", 16 * 2**30),
        ("2gib", 16 * 2**30),
        ("1.5MB", 12e6),
        ("64KB", 512e3),
        ("64kB", 512e3),
        ("3GB", 24e9),
        ("320kbit", 320e3),
        ("1Mbit", 1e6),
        ("100bytes", 800),
    ],
)
def test_budget_accepts_decimal_and_binary_units(text, bits):
    assert parse_budget(text, "bits") == pytest.approx(bits)


@pytest.mark.parametrize("solver", ["qpu", "hybrid"])
def test_a_qpu_solver_without_a_token_is_refused_before_any_work(solver, data_dir, tmp_path, monkeypatch, capsys):
    for name in [key for key in os.environ if key.startswith("DWAVE_")]:
        monkeypatch.delenv(name)
    (tmp_path / "dwave.conf").write_text("")
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(tmp_path / "dwave.conf"))
    no_work(monkeypatch)
    assert run(*compress_args(data_dir, tmp_path / "out"), "--solver", solver) == 2
    assert_one_line_error(capsys, f"solver {solver!r} has no D-Wave API token")


def test_normalize_is_checked_first_and_recorded_in_metrics_and_the_model_file(data_dir, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        no_work(patch)
        assert run(*compress_args(data_dir, tmp_path / "bad"), "--normalize", "0.5") == 2
    assert_one_line_error(capsys, "--normalize must be mean-std, none, or MEAN,STD")
    out = tmp_path / "out"
    assert run(*compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline"), "--normalize", "none") == 0
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["normalize"] == "none" and data["mean"] == [0.0] and data["std"] == [1.0]
    from qubocompress.apply.model_file import load_model_file

    _, stored = load_model_file(out / "model.safetensors")
    assert (stored["normalize"], stored["mean"], stored["std"]) == ("none", [0.0], [1.0])


def test_an_interrupted_ablation_leaves_the_previous_folder_as_it_was(tmp_path, monkeypatch):
    from qubocompress import ablation

    out = tmp_path / "ablation"
    out.mkdir()
    (out / "ablation.json").write_text("[]")
    calls = []

    def fake_compress(config, log, into):  # the first combination writes its run, the second is interrupted
        calls.append(config.sensitivity)
        if len(calls) == 2:
            raise KeyboardInterrupt
        into.mkdir()
        (into / "metrics.json").write_text("{}")
        return {
            "compressed": {
                "test_acc_before_finetune": 0.5,
                "test_acc": 0.5,
                "finetune_epochs": 0,
                "ratio": 8.0,
                "cost_ratio": 8.0,
            },
            "qubo": {"energy": 1.0, "exact": {"certified": True}},
            "timing": {"analysis": 1.0},
            "model": {"fp32_test_acc": 0.9},
        }

    monkeypatch.setattr(ablation, "compress", fake_compress)
    base = CompressConfig(formulation="budget", out=out)
    with pytest.raises(KeyboardInterrupt):
        ablation.ablate(base, ["l1"], ["fisher", "mse"], (False,))
    assert calls == ["fisher", "mse"]
    assert files_of(out) == {"ablation.json": b"[]"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ablation.lock", "ablation"]
