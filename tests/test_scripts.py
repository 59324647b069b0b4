"""The benchmark scripts under scripts/ (small runs; their figures are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.problem.target import calibrate_gamma
from qubocompress.report import markdown_table

from test_pipeline import data_dir  # noqa: F401  (a fixture)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.append(str(SCRIPTS))  # the scripts import their shared helpers (_timing) as siblings


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a script's dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_polish_settings_prints_one_row_per_setting(capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("polish_settings")
    assert script.main(["--model", "lenet5", "--ratio", "16", "--settings", "2:5:auto,1:0:3", "--seeds", "0-1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "lenet5-budget-16x, 9 free choices, seeds 0-1"
    rows = [line.split(" | ") for line in lines[3:]]
    assert [(row[0].strip("| "), row[1]) for row in rows] == [("2:5:auto", "5"), ("1:0:3", "3")]
    for row in rows:
        at_optimum, total = (int(v) for v in row[2].split(" / "))
        assert total == 40 and 0 <= at_optimum <= total and float(row[3]) == pytest.approx(at_optimum / total, abs=1e-3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--settings", "2:40"], "a setting is chains:rounds:kick"),
        (["--settings", "2:x:5"], "a setting is chains:rounds:kick"),
        (["--seeds", "5-2"], "--seeds takes A-B with 0 <= A <= B"),
        (["--model", "nope"], "no packaged measured spec for 'nope'"),
    ],
)
def test_polish_settings_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert load_script("polish_settings").main(["--model", "lenet5", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row() -> None:
    assert markdown_table(("a", "b"), [("1", "2"), ("3", "4")]).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
        "| 3 | 4 |",
    ]


def test_demo_seeds_checks_a_paper_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = synthetic_spec(channels=(4, 6), seed=0)
    formulation = calibrate_gamma(spec, 8.0)
    (tmp_path / "spec.json").write_text(spec.to_json())
    qubo = {"formulation": "paper", "beta": formulation.beta, "gamma": formulation.gamma}
    (tmp_path / "metrics.json").write_text(json.dumps({"qubo": qubo}))
    script = load_script("demo_seeds")
    assert script.main([str(tmp_path), "--seeds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"certified optimum {formulation.exact()[1]:.10g}")
    assert [line.split()[:3:2] for line in lines[2:4]] == [["0", "0.00e+00"], ["1", "0.00e+00"]]
    assert lines[-1] == "every seed reached the certified optimum (after polishing)"
    (tmp_path / "metrics.json").write_text(json.dumps({"qubo": {"formulation": "budget"}}))
    assert script.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "demo_seeds: error: the run did not use the paper formulation"


def test_sweep_timing_prints_both_wall_times_and_their_ratio(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("sweep_timing")
    assert script.main(["--model", "lenet5", "--data", str(data_dir), "--ratios", "4,8", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "lenet5, 2 ratios (4, 8), qubo route with sa, no fine-tuning"
    assert lines[3].startswith("ratio (compress processes / sweep): ") and lines[3].endswith("x")
    assert sorted(p.name for p in (tmp_path / "sweep" / "cases").iterdir() if not p.name.startswith(".")) == [
        "4x-qubo-sa-seed0",
        "8x-qubo-sa-seed0",
    ]


def test_rl_batch_quality_prints_one_row_per_batch_and_reuses_finished_runs(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("rl_batch_quality")
    argv = ["--model", "lenet5", "--data", str(data_dir), "--ratio", "8", "--evaluations", "6"]
    argv += ["--batches", "1,2", "--seeds", "0", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rl-acc on lenet5 at 8x, 6 evaluations, seeds 0, against --search-batch 1"
    rows = [line.strip("| ").split(" | ") for line in lines[3:]]
    assert [row[0] for row in rows] == ["1", "2"] and rows[0][3] == "+0.00 points"
    batched = json.loads((tmp_path / "b2-seed0" / "metrics.json").read_text())["search"]
    assert batched["parameters"]["episodes_per_batch"] == 2 and batched["evaluations"] == 6
    assert f"{batched['score']:.2%}" == rows[1][1]
    (tmp_path / "b2-seed0" / "metrics.json").write_text(json.dumps({"search": {**batched, "score": 0.5}}))
    assert script.main(argv) == 0  # the finished runs are read back, not run again
    assert "| 2 | 50.00% |" in capsys.readouterr().out


@pytest.mark.slow
def test_filters_vs_rank_writes_one_row_per_case_and_skips_done_ones(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_script("filters_vs_rank")
    table = tmp_path / "rows.csv"
    argv = ["--models", "lenet5", "--data", str(data_dir), "--ratios", "8,24", "--seeds", "0"]
    argv += ["--finetune-epochs", "0", "--exact-time-limit", "5", "--csv", str(table)]
    assert script.main(argv) == 0
    captured = capsys.readouterr()
    assert "lenet5 8x seed 0: skipped: the budget optimum at this target prunes no filter" in captured.err
    rows = script.read_rows(table)
    assert [(row["model"], row["ratio"], row["seed"]) for row in rows] == [("lenet5", "24", "0")]
    row = rows[0]
    assert row["counts"] and int(row["weight_bits"]) > 0 and int(row["filters_moved"]) >= 0
    assert float(row["filters_reference_damage"]) <= float(row["rank_est_damage"])  # the reference starts there
    for plan in ("rank", "filters"):  # no fine-tuning: after is before
        assert row[f"{plan}_top1_after"] == row[f"{plan}_top1_before"]
        assert float(row[f"{plan}_loss_before"]) >= 0
    summary = captured.out.splitlines()
    assert summary[0].startswith("| model | target | seeds |") and summary[2].startswith("| lenet5 | 24x | 1 |")
    assert script.main(argv) == 0  # the done case is not run again
    assert "lenet5 24x seed 0: done" not in capsys.readouterr().err
    assert script.read_rows(table) == rows


@pytest.mark.slow
def test_ray_sweep_timing_runs_every_case_once_on_ray_with_a_worker_killed(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    script = load_script("ray_sweep_timing")
    argv = ["--data", str(data_dir), "--ratios", "4,8", "--seeds", "0,1", "--kill", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "serial: 8 cases (8 distinct), 8 ok, 0 failed"
    assert lines[1] == "ray: 8 cases (8 distinct), 8 ok, 0 failed"
    assert lines[2].startswith("killed Ray worker(s) mid-case: [") and lines[-1].startswith("ratio (serial / Ray): ")
