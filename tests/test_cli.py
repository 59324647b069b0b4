"""The command line as scripts use it: --version, --quiet, --json."""

from __future__ import annotations

import json

import pytest

from test_pipeline import compress_args, data_dir, run  # noqa: F401


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("--version")
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "qubocompress 0.1.0"


def test_quiet_json_compress_prints_only_the_metrics(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(*compress_args(data_dir, out, "--finetune-epochs", "0", "--no-baseline", "--quiet", "--json")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    metrics = json.loads(captured.out)
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["compressed"]["ratio"] >= 16


def test_progress_lines_go_to_stderr_without_quiet(data_dir, tmp_path, capsys):
    assert run(*compress_args(data_dir, tmp_path / "out", "--finetune-epochs", "0", "--no-baseline")) == 0
    captured = capsys.readouterr()
    assert "analysing the model" in captured.err and "top-1 %" in captured.out
