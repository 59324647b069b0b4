"""The end-to-end job through the CLI: a learnable IDX data set, LeNet-5, both formulations, errors."""

from __future__ import annotations

import math

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qubocompress.ablation import ablate
from qubocompress.analysis.analyse import analyse_model
from qubocompress.apply.model_file import load_model_file
from qubocompress.apply.quantize import fake_quantize
from qubocompress.cli import main
from qubocompress.data.datasets import load_dataset, synthetic_dataset
from qubocompress.errors import ProblemError
from qubocompress.models.train import evaluate
from qubocompress.pipeline import (
    CompressConfig,
    absolute_budget,
    choose_uniform_plan,
    cost_ratio,
    frozen_lines,
    model_source,
    parse_budget,
    solve_formulation,
    with_budget_as_ratio,
)
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.choices import fp32_cost, plan_cost
from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import CompressionSpec
from qubocompress.problem.synthetic import synthetic_spec, with_synthetic_measurements

from test_data import write_idx

RESULT_FILES = ("metrics.json", "plan.json", "spec.json", "qubo.bqm", "model.safetensors", "summary.txt")


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    pixels = x[:, 0].numpy()
    low, high = float(pixels.min()), float(pixels.max())
    return np.clip(np.round((pixels - low) / (high - low) * 255), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 4-class IDX data set (600 train, 200 test images of 28x28)."""
    source = synthetic_dataset(num_classes=4, n_train=600, n_val=1, n_test=200, seed=3)
    directory = tmp_path_factory.mktemp("idx")
    write_idx(directory / "train-images-idx3-ubyte.gz", _as_uint8(source.train.x))
    write_idx(directory / "train-labels-idx1-ubyte.gz", source.train.y.numpy().astype(np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte.gz", _as_uint8(source.test.x))
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", source.test.y.numpy().astype(np.uint8))
    return directory


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def compress_args(data_dir: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["compress", "--model", "lenet5", "--data", data_dir, "--out", out, "--finetune-epochs", "1", *extra]


@pytest.fixture(scope="session")
def paper_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "paper"
    assert run(*compress_args(data_dir, out, "--target-ratio", "8")) == 0
    return out


@pytest.fixture(scope="session")
def budget_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "budget"
    assert run(*compress_args(data_dir, out, "--target-ratio", "10", "--formulation", "budget")) == 0
    return out


def test_paper_run_writes_every_result_and_reaches_the_certified_optimum(paper_run: Path) -> None:
    names = {p.name for p in paper_run.iterdir()}
    assert set(RESULT_FILES) <= names and all(name.startswith("report") for name in names - set(RESULT_FILES))
    assert "report.html" in names
    metrics = json.loads((paper_run / "metrics.json").read_text())
    qubo, compressed = metrics["qubo"], metrics["compressed"]
    assert qubo["formulation"] == "paper" and qubo["exact"]["certified"]
    assert qubo["variables"] > 0 and qubo["interactions"] > 0
    assert qubo["energy"] == pytest.approx(qubo["exact_energy"], rel=1e-9, abs=1e-12)
    assert 0.0 < qubo["success_probability"] <= 1.0
    assert qubo["success_probability"] >= qubo["success_probability_raw"]
    assert qubo["exact_plan_matches"]
    assert qubo["route_seconds"] >= metrics["timing"]["analysis"] + metrics["timing"]["solve"]
    assert compressed["ratio"] >= 8.0
    assert metrics["model"]["fp32_test_acc"] > 0.6  # learnable data, trained model
    assert compressed["test_acc"] > 0.5
    assert len(compressed["finetune_history"]) == 1
    # the artifact is really smaller on disk and gives the reported accuracy back
    assert compressed["model_file_bytes"] * 4 < metrics["model"]["fp32_state_dict_bytes"]
    assert compressed["reloaded_test_acc"] == pytest.approx(compressed["test_acc"], abs=1e-9)
    base = metrics["baseline_uniform"]
    assert base["ratio"] >= 8.0 and base["bit_width"] in {c["bit_width"] for c in base["candidates"]}
    assert metrics["config"]["sensitivity"] == "measured"  # the paper formulation's default damage
    summary = (paper_run / "summary.txt").read_text()
    assert "QUBO paper (sa)" in summary and "certified optimum" in summary and "uniform" in summary


def test_plan_file_matches_the_artifact_and_the_spec(paper_run: Path, data_dir: Path) -> None:
    plan = Plan.from_dict(json.loads((paper_run / "plan.json").read_text()))
    spec = CompressionSpec.from_json((paper_run / "spec.json").read_text())
    plan.validate(spec)
    model, info = load_model_file(paper_run / "model.safetensors")
    assert info["plan"] == plan.to_dict()
    dataset = load_dataset(str(data_dir))
    metrics = json.loads((paper_run / "metrics.json").read_text())
    assert evaluate(model, dataset.test) == pytest.approx(metrics["compressed"]["test_acc"], abs=1e-9)


def test_budget_run_is_within_the_hard_budget(budget_run: Path) -> None:
    metrics = json.loads((budget_run / "metrics.json").read_text())
    qubo = metrics["qubo"]
    spec = CompressionSpec.from_json((budget_run / "spec.json").read_text())
    plan = Plan.from_dict(json.loads((budget_run / "plan.json").read_text()))
    assert qubo["formulation"] == "budget"
    assert plan_cost(spec, plan, "bits") <= qubo["budget"] == fp32_cost(spec, "bits") // 10
    assert metrics["compressed"]["ratio"] >= 10.0
    assert qubo["feasible_rate"] == 1.0  # polished reads are always repaired into the budget
    assert qubo["energy"] >= qubo["exact"]["energy"] - 1e-9 * abs(qubo["exact"]["energy"])
    # the budget formulation's default damage: fisher, every damage estimated in one backward pass
    assert metrics["config"]["sensitivity"] == "fisher" and qubo["exact_plan_matches"]
    assert all(layer.quant_damage[0] > layer.quant_damage[-1] >= 0 for layer in spec.layers)  # falls with the bits
    assert all(group.prune_options and group.prune_damage[0] == 0 < group.prune_damage[-1] for group in spec.groups)


def test_the_progress_line_names_where_the_model_comes_from() -> None:
    # a checkpoint fixes the architecture: the line must not name the default --model
    assert model_source(CompressConfig(checkpoint="r20.pt")) == "loading the checkpoint r20.pt"
    assert model_source(CompressConfig(model="resnet20")) == "loading or training resnet20"
    assert model_source(CompressConfig(model="pkg.nets:make", weights="w.pt")) == "loading pkg.nets:make with w.pt"
    assert model_source(CompressConfig(model="net.pt")) == "loading net.pt"


def test_the_default_sensitivity_follows_the_formulation_and_an_explicit_one_wins() -> None:
    assert CompressConfig(formulation="budget").layer_sensitivity() == "fisher"
    assert CompressConfig(formulation="paper").layer_sensitivity() == "measured"
    assert CompressConfig(formulation="budget", sensitivity="measured").layer_sensitivity() == "measured"
    assert CompressConfig(formulation="paper", sensitivity="hessian").layer_sensitivity() == "hessian"


@pytest.mark.parametrize("method", ["ga-acc", "rl-acc"])
def test_accuracy_in_the_loop_searches_compress_within_the_budget(data_dir: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    extra = ("--target-ratio", "10", "--search", method, "--search-evaluations", "12", "--finetune-epochs", "0")
    assert run(*compress_args(data_dir, out, *extra), "--no-baseline") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    search = metrics["search"]
    assert "qubo" not in metrics and not (out / "qubo.bqm").exists()
    assert search["method"] == method and 1 <= search["evaluations"] <= 12
    assert metrics["compressed"]["ratio"] >= 10.0
    assert search["val_acc_before_finetune"] == pytest.approx(search["score"])  # the best plan, scored again
    assert method in (out / "summary.txt").read_text()
    # the search scores plans itself: no damage measured, and its analysis counts in its route time
    spec = CompressionSpec.from_json((out / "spec.json").read_text())
    assert all(layer.quant_damage.size == 0 for layer in spec.layers)
    assert all(group.prune_damage.size == 0 for group in spec.groups) and any(g.prune_options for g in spec.groups)
    timing = metrics["timing"]
    assert search["route_seconds"] == pytest.approx(timing["analysis"] + timing["search"] + timing["evaluate"])


def test_a_repeated_analysis_comes_from_the_cache_unless_refused(
    budget_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    extra = ("--target-ratio", "12", "--formulation", "budget", "--finetune-epochs", "0", "--no-baseline")
    assert run(*compress_args(data_dir, tmp_path / "again", *extra)) == 0
    first = json.loads((budget_run / "metrics.json").read_text())["qubo"]
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["qubo"]
    assert again["analysis"]["cached"]
    assert again["analysis"]["measured_seconds"] == pytest.approx(first["analysis"]["measured_seconds"])
    assert again["route_seconds_uncached"] > again["route_seconds"]
    assert (tmp_path / "again" / "spec.json").read_text() == (budget_run / "spec.json").read_text()
    assert "the analysis came from the cache" in (tmp_path / "again" / "summary.txt").read_text()
    assert run(*compress_args(data_dir, tmp_path / "fresh", *extra, "--no-analysis-cache")) == 0
    fresh = json.loads((tmp_path / "fresh" / "metrics.json").read_text())["qubo"]
    assert not fresh["analysis"]["cached"] and fresh["route_seconds_uncached"] == fresh["route_seconds"]
    compressed = json.loads((tmp_path / "fresh" / "metrics.json").read_text())["compressed"]
    assert compressed["finetune_epochs"] == 0 and compressed["test_acc"] == compressed["test_acc_before_finetune"]
    assert (tmp_path / "fresh" / "spec.json").read_text() == (budget_run / "spec.json").read_text()


def test_fewer_calibration_samples_are_a_fixed_draw_and_a_separate_analysis(
    budget_run: Path, data_dir: Path, tmp_path: Path
) -> None:
    extra = ("--target-ratio", "10", "--formulation", "budget", "--finetune-epochs", "0", "--no-baseline")
    for out in ("few", "few-again"):
        assert run(*compress_args(data_dir, tmp_path / out, *extra, "--calibration-samples", "16")) == 0
    few, again = (json.loads((tmp_path / out / "metrics.json").read_text())["qubo"] for out in ("few", "few-again"))
    full = json.loads((budget_run / "metrics.json").read_text())["qubo"]
    assert few["analysis"]["calibration_samples"] == 16 < full["analysis"]["calibration_samples"]
    assert not few["analysis"]["cached"] and again["analysis"]["cached"]  # not the full split's analysis
    assert (tmp_path / "few" / "spec.json").read_text() != (budget_run / "spec.json").read_text()
    assert few["feasible_rate"] == 1.0 and few["exact_plan_matches"]


def test_an_absolute_budget_is_the_hard_budget(data_dir: Path, tmp_path: Path) -> None:
    extra = ("--formulation", "budget", "--budget", "12KiB", "--finetune-epochs", "0")
    assert run(*compress_args(data_dir, tmp_path / "abs", *extra)) == 0
    metrics = json.loads((tmp_path / "abs" / "metrics.json").read_text())
    spec = CompressionSpec.from_json((tmp_path / "abs" / "spec.json").read_text())
    plan = Plan.from_dict(json.loads((tmp_path / "abs" / "plan.json").read_text()))
    assert metrics["qubo"]["budget"] == 12 * 1024 * 8 >= plan_cost(spec, plan, "bits")
    assert metrics["config"]["budget"] == "12KiB"
    assert metrics["config"]["target_ratio"] == pytest.approx(fp32_cost(spec, "bits") / (12 * 1024 * 8))
    assert metrics["baseline_uniform"]["ratio"] >= metrics["config"]["target_ratio"]


@pytest.mark.parametrize(
    "text, metric, value",
    [
        ("64KiB", "bits", 64 * 1024 * 8),
        ("50kB", "bits", 400_000),
        ("1.5 MiB", "bits", 1.5 * 8 * 1024**2),
        ("320000bit", "bits", 320_000),
        ("40000B", "bits", 320_000),
        ("2.5G", "bops", 2.5e9),
        ("3e6", "bops", 3e6),
    ],
)
def test_budget_amounts_are_read_in_the_metric_unit(text: str, metric: str, value: float) -> None:
    assert parse_budget(text, metric) == pytest.approx(value)


def test_budget_formulation_takes_weight_mse_in_nats(data_dir: Path, tmp_path: Path) -> None:
    extra = ("--target-ratio", "10", "--formulation", "budget", "--sensitivity", "mse", "--finetune-epochs", "0")
    assert run(*compress_args(data_dir, tmp_path / "mse", *extra), "--no-baseline") == 0
    metrics = json.loads((tmp_path / "mse" / "metrics.json").read_text())
    spec = CompressionSpec.from_json((tmp_path / "mse" / "spec.json").read_text())
    assert metrics["compressed"]["ratio"] >= 10.0 and metrics["qubo"]["feasible_rate"] == 1.0
    assert all(np.all(np.diff(layer.quant_damage) <= 0) for layer in spec.layers)  # falls with the bits
    assert 0 < sum(layer.quant_damage[3] for layer in spec.layers) < 10  # nats, not weight^2


def test_ablation_runs_every_combination_at_the_same_budget(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ablation"
    code = run(
        "ablate",
        "--model",
        "lenet5",
        "--data",
        data_dir,
        "--out",
        out,
        "--target-ratio",
        "10",
        "--importances",
        "l1,taylor",
        "--sensitivities",
        "hessian",
        "--pairs",
        "both",
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "ablation.json").read_text())
    assert [(r["importance"], r["pairs"]) for r in rows] == [
        ("l1", False),
        ("l1", True),
        ("taylor", False),
        ("taylor", True),
    ]
    assert all(r["ratio"] >= 10.0 and r["sensitivity"] == "hessian" and r["finetune_epochs"] == 0 for r in rows)
    for row in rows:
        spec = CompressionSpec.from_json((out / row["name"] / "spec.json").read_text())
        assert bool(spec.interactions) == row["pairs"]
    assert "taylor" in capsys.readouterr().out


def test_ablation_of_the_paper_formulation_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProblemError, match="--formulation budget"):
        ablate(CompressConfig(formulation="paper", out=tmp_path), ["l1"], ["fisher"])


@pytest.mark.parametrize(
    "option",
    [
        ("--formulation", "paper"),
        ("--sensitivity", "fisher"),
        ("--interactions",),
        ("--search", "ga-acc"),
        ("--beta", "1"),
        ("--no-baseline",),
    ],
)
def test_ablation_takes_no_option_it_would_override(
    option: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ablate sets these per run (or they do not apply to it): a given one would be silently ignored
    # (--importance is argparse's abbreviation of --importances, and means it)
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--out", str(tmp_path / "a"), *option])
    assert exit_info.value.code == 2 and not (tmp_path / "a").exists()
    assert_one_line_error(capsys, "unrecognized arguments", option[0])


def test_layers_not_pruned_for_one_reason_share_a_line() -> None:
    reasons = {"a": "traced by nobody", "fc": "feeds the model output", "b": "traced by nobody"}
    assert frozen_lines(reasons) == [
        "  not pruned: a, b (traced by nobody)",
        "  not pruned: fc (feeds the model output)",
    ]


def test_demo_and_compress_help_list_units_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("demo", "compress", "train", "bench", "ablate"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--target-ratio R" in text and "--formulation {paper,budget,filters}" in text
    assert "(paper; default 16) or the budget is fp32 / R (budget and filters; default 16,24,32)" in text
    assert "(default: 2)" in text and "(default: sa)" in text  # defaults that exist are shown,
    assert "(default: None)" not in text and "(default: False)" not in text  # absent ones are not,
    assert "(default: True)" not in text  # nor a flag's (--no-analysis-cache's is True)


# --- bad input: one line on stderr, exit code 2, nothing half-written --------------------------------


def assert_one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    last = err[-1]
    assert last.startswith("qubocompress: error: "), last
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in last, last


def test_corrupt_idx_file_is_a_one_line_error(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in data_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    target = broken / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:200])
    assert run(*compress_args(broken, tmp_path / "out")) == 2
    assert_one_line_error(capsys, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--model", "alexnet"), ("unknown model 'alexnet'", "vgg")),
        (("--solver", "magic"), ("unknown --solver 'magic'", "sa", "qpu")),
        (("--finetune-epochs", "-1"), ("--finetune-epochs must be >= 0",)),
        (("--target-ratio", "0.5"), ("--target-ratio must be a number > 1",)),
        (("--metric", "bops"), ("--formulation budget",)),
        (("--formulation", "budget", "--beta", "2"), ("no beta",)),
        (
            ("--formulation", "budget", "--solver", "rl"),
            ("solver 'rl' walks the paper formulation's", "option grid cannot encode"),
        ),
        (("--checkpoint", "a.pt", "--weights", "b.pt"), ("either --checkpoint or --weights",)),
        (("--exact-time-limit", "0"), ("--exact-time-limit must be a positive number",)),
        (("--search", "ga-acc", "--search-evaluations", "0"), ("--search-evaluations must be a whole number >= 1",)),
        (("--num-reads", "0"), ("--num-reads must be >= 1",)),
        (("--calibration-samples", "0"), ("--calibration-samples must be >= 1",)),
        (("--budget", "64"), ("--budget '64' with --metric bits", "64KiB")),
        (("--budget", "2 parsecs"), ("give a size",)),
        (("--budget", "1e400B"), ("--budget must be more than 0",)),
        (("--budget", "10KiB", "--target-ratio", "8"), ("either --target-ratio or --budget",)),
        (("--formulation", "budget", "--budget", "1MiB"), ("is not below the uncompressed model's",)),
    ],
)
def test_bad_arguments_are_one_line_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert run(*compress_args(data_dir, tmp_path / "out"), *extra) == 2
    assert_one_line_error(capsys, *needles)


def test_a_choice_outside_the_list_exits_2_naming_the_choices(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(*compress_args(data_dir, tmp_path / "out"), "--search", "annealing")
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'annealing'" in last and "ga-acc" in last


@pytest.mark.parametrize("formulation", ["paper", "budget"])
def test_unreachable_target_says_what_is_reachable(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], formulation: str
) -> None:
    assert run(*compress_args(data_dir, tmp_path / "out", "--target-ratio", "5000", "--formulation", formulation)) == 2
    assert_one_line_error(capsys, "5000")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_output_folder_that_is_a_file_is_a_one_line_error(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert run(*compress_args(data_dir, out)) == 2
    assert_one_line_error(capsys, str(out))
    assert out.read_text() == "not a folder"


# --- user models --------------------------------------------------------------------------------


USER_MODULE = """
import torch
from torch import nn


def make(classes=4):
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, classes),
    )


def broken():
    raise RuntimeError("factory exploded")


def two_classes():
    return make(classes=2)
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "usernet.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("usernet", None)


def test_user_factory_with_weights_is_compressed(
    user_module: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import usernet

    torch.manual_seed(0)
    torch.save(usernet.make().state_dict(), user_module / "weights.pt")
    out = user_module / "out"
    code = run(
        *compress_args(data_dir, out, "--target-ratio", "6", "--finetune-epochs", "0", "--no-baseline"),
        "--model",
        "usernet:make",
        "--weights",
        user_module / "weights.pt",
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["name"] == "usernet:make"
    assert metrics["compressed"]["ratio"] >= 6.0
    model, info = load_model_file(out / "model.safetensors", factory="usernet:make")
    assert Plan.from_dict(info["plan"]).bits == Plan.from_dict(json.loads((out / "plan.json").read_text())).bits


@pytest.mark.parametrize(
    ("model", "weights", "needle"),
    [
        ("usernet:broken", None, "factory exploded"),
        ("usernet:two_classes", None, "outputs 2 logits per sample, but the data set has 4 classes"),
        ("usernet:make", "mismatch", "weights.pt"),
    ],
)
def test_bad_user_models_are_one_line_errors(
    user_module: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    weights: str | None,
    needle: str,
) -> None:
    extra = ["--model", model] if weights else ["--model", model, "--untrained"]
    if weights == "mismatch":
        torch.save({"0.weight": torch.zeros(3, 3)}, user_module / "weights.pt")
        extra += ["--weights", str(user_module / "weights.pt")]
    assert run(*compress_args(data_dir, user_module / "out"), *extra) == 2
    assert_one_line_error(capsys, needle)


def test_a_plan_at_the_optimum_up_to_rounding_has_no_gap() -> None:
    """With no damage anywhere (a model the compression cannot hurt), every plan within the budget
    is optimal; energies differ only by the penalty's float rounding (~1e-23). The figures use the
    benchmark's tolerance (solvers.metrics), not a gap relative to a rounding residue."""
    spec = with_synthetic_measurements(synthetic_spec(seed=0), interactions=False)
    spec = replace(
        spec,
        layers=tuple(replace(layer, quant_damage=np.zeros_like(layer.quant_damage)) for layer in spec.layers),
        groups=tuple(replace(group, prune_damage=np.zeros_like(group.prune_damage)) for group in spec.groups),
    )
    formulation = BudgetFormulation(spec, ratio=12)
    _, reference = formulation.exact()
    assert abs(reference) < 1e-15
    _, figures = solve_formulation(formulation, CompressConfig(formulation="budget"), reference)
    assert figures["gap"] == 0.0 and figures["success_probability"] == 1.0


def test_the_uniform_baseline_of_equal_scores_is_the_one_closest_to_the_target() -> None:
    """A model that predicts one class whatever it sees scores the same at every bit-width: the
    baseline is then the largest candidate that reaches the target, not the smallest."""
    data = synthetic_dataset(num_classes=4, n_train=16, n_val=32, n_test=16)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )
    with torch.no_grad():
        model[4].weight.zero_()
        model[4].bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    graph, spec = analyse_model(model.eval(), (data.calib.x, data.calib.y), (1, 28, 28), fake_quantize, "one-class")
    plan, choice = choose_uniform_plan(model, graph, spec, data, 6.0)
    assert len({row["val_acc_before_finetune"] for row in choice["candidates"]}) == 1
    assert len(choice["candidates"]) > 1
    ratios = [
        cost_ratio(spec, uniform_plan(spec, row["bit_width"], row["prune_ratio"]), "bits")
        for row in choice["candidates"]
    ]
    assert cost_ratio(spec, plan, "bits") == min(ratios) >= 6.0


def test_a_group_the_paper_form_cannot_certify_is_refused_before_the_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    from qubocompress import pipeline
    from qubocompress.models.zoo import build_model

    def no_measurement(*args: object, **kwargs: object) -> None:
        raise AssertionError("the analysis ran before the refusal")

    monkeypatch.setattr(pipeline, "analyse_model", no_measurement)
    dataset = synthetic_dataset(n_train=16, n_val=8, n_test=8)
    resnet56 = build_model("resnet56", width=2)  # stage 1's residual group ties the stem and nine convs
    config = CompressConfig(model="resnet56", formulation="paper", analysis_cache=False)
    with pytest.raises(ProblemError, match=r"'conv1' ties 10 layers: .* use --formulation budget"):
        pipeline.analyse(resnet56, dataset, config, "resnet56", log=lambda line: None)
    resnet20 = build_model("resnet20", width=2)  # its groups tie at most 4 layers: 8**4 joint choices
    pipeline.check_paper_certifiable(pipeline.trace_model(resnet20, dataset.input_shape), 3, max_prune_fraction=0.5)
    # with nothing prunable the residual group ties nothing: each layer is enumerated alone
    pipeline.check_paper_certifiable(pipeline.trace_model(resnet56, dataset.input_shape), 3, max_prune_fraction=0.0)


def test_an_absolute_budget_gives_the_qubo_and_the_searches_the_same_whole_budget() -> None:
    spec = synthetic_spec(seed=0)
    config = CompressConfig(budget="2.01kB", metric="bits")  # 2.01 * 8000 is 16079.999999999998 in floats
    assert absolute_budget(config) == 16080
    as_ratio = with_budget_as_ratio(config, spec, log=lambda line: None)
    assert math.floor(fp32_cost(spec, "bits") / as_ratio.target_ratio) == 16080  # what the searches take
    assert absolute_budget(CompressConfig(budget="2.0001kB", metric="bits")) == 16000  # a fraction of a bit: down
