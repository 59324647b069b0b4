"""ga-acc scoring each generation's plans and rl-acc each batch's together (PlanScorer.score_many)
and on Ray actors: the same plans, scores and result as one evaluation after the other, and the
one-line refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from qubocompress.errors import SolverError
from qubocompress.problem.plan import Plan
from qubocompress.search import DecisionSpace, PlanScorer, ga_acc_search, rl_acc_search
from qubocompress.search.common import SearchStopped

from test_pipeline import assert_one_line_error, data_dir, run  # noqa: F401  (data_dir is a fixture)
from test_search import TINY, VGG, Recorder


class Batches(Recorder):
    """``evaluate_many`` over :class:`Recorder`: records each batch's size; seconds = 0."""

    def __init__(self, spec: object) -> None:
        super().__init__(spec)  # type: ignore[arg-type]
        self.sizes: list[int] = []

    def many(self, plans: Sequence[Plan]) -> list[tuple[float, float]]:
        self.sizes.append(len(plans))
        return [(self(plan), 0.0) for plan in plans]


def key(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), sort_keys=True)


@pytest.mark.parametrize("max_evaluations", [80, 31])  # 31: the cap falls inside a generation
def test_ga_acc_scoring_generations_together_gives_the_serial_result(max_evaluations: int) -> None:
    settings = {"population": 12, "generations": 10, "max_evaluations": max_evaluations, "seed": 3}
    serial_recorder = Recorder(TINY)
    serial = ga_acc_search(TINY, serial_recorder, 8, **settings)
    batches = Batches(TINY)
    batched = ga_acc_search(TINY, batches, 8, evaluate_many=batches.many, **settings)
    assert max(batches.sizes) > 1  # whole generations went to evaluate_many
    assert [key(p) for p in batches.plans] == [key(p) for p in serial_recorder.plans]
    assert batched.plan == serial.plan and batched.score == serial.score
    assert batched.history == serial.history and list(batched.cache) == list(serial.cache)
    assert batched.stopped_by == serial.stopped_by and batched.details == serial.details
    assert batched.evaluations == serial.evaluations <= max_evaluations


@pytest.mark.parametrize("max_evaluations", [60, 30])  # 30: the cap falls inside a batch of 4
def test_rl_acc_scoring_batches_together_gives_the_serial_result(max_evaluations: int) -> None:
    pytest.importorskip("stable_baselines3")
    settings = {"total_episodes": 64, "warmup_episodes": 8, "episodes_per_batch": 4, "seed": 3}
    serial_recorder = Recorder(VGG)
    serial = rl_acc_search(VGG, serial_recorder, 16, max_evaluations=max_evaluations, **settings)
    batches = Batches(VGG)
    batched = rl_acc_search(VGG, batches, 16, max_evaluations=max_evaluations, evaluate_many=batches.many, **settings)
    assert max(batches.sizes) == 4  # whole batches went to evaluate_many
    assert [key(p) for p in batches.plans] == [key(p) for p in serial_recorder.plans]
    assert batched.plan == serial.plan and batched.score == serial.score
    assert batched.history == serial.history and list(batched.cache) == list(serial.cache)
    assert batched.stopped_by == serial.stopped_by and batched.details == serial.details
    assert batched.evaluations == serial.evaluations == max_evaluations
    # an episode counts once its plan is scored, in a batch the cap cut short too
    assert batched.details["episodes"] == batched.evaluations + batched.details["cache_hits"]


def test_the_walks_of_an_rl_acc_batch_explore_apart() -> None:
    pytest.importorskip("stable_baselines3")
    batches = Batches(VGG)
    result = rl_acc_search(VGG, batches, 16, total_episodes=40, warmup_episodes=8, episodes_per_batch=4,
                           evaluate_many=batches.many, seed=0)  # fmt: skip
    assert result.details["episodes"] == 40 and len(batches.sizes) == 10
    # after the warm-up too, each batch's walks propose different plans: each draws its own noise
    assert all(size > 1 for size in batches.sizes[2:])


def test_score_many_counts_hits_and_stops_as_one_score_after_the_other() -> None:
    space = DecisionSpace(TINY, ratio=8)
    genomes = [np.array([0, 0, 5, 5, 5]), space.smallest(), np.array([0, 0, 5, 5, 5]), np.array([1, 1, 0, 0, 0])]
    serial = PlanScorer(space, Recorder(TINY), max_evaluations=2, time_limit=None, start=time.perf_counter())
    batches = Batches(TINY)
    batched = PlanScorer(space, batches, 2, None, time.perf_counter(), evaluate_many=batches.many)
    stops = []
    for scorer in (serial, batched):
        with pytest.raises(SearchStopped) as stop:
            scorer.score_many(genomes)
        stops.append(stop.value.reason)
    assert stops == ["evaluations", "evaluations"]
    assert batches.sizes == [2] and batched.history == serial.history and batched.hits == serial.hits == 1
    assert list(batched.cache) == list(serial.cache)


def test_score_many_checks_the_clock_once_before_each_batch() -> None:
    space = DecisionSpace(TINY, ratio=8)
    genomes = [space.smallest(), np.array([0, 0, 5, 5, 5]), np.array([1, 1, 0, 0, 0])]
    batches = Batches(TINY)
    past = time.perf_counter() - 10.0  # the 1 s limit ran out before the first batch
    scorer = PlanScorer(space, batches, None, 1.0, past, evaluate_many=batches.many)
    assert len(scorer.score_many(genomes)) == 3  # the first batch always runs, all of it
    assert batches.sizes == [3]
    fresh = np.array([0, 1, 0, 0, 0])
    assert tuple(space.repair(fresh).tolist()) not in scorer.cache
    with pytest.raises(SearchStopped) as stop:
        scorer.score_many([space.smallest(), fresh])
    assert stop.value.reason == "time_limit" and batches.sizes == [3] and scorer.hits == 1


@pytest.mark.parametrize(
    ("outcomes", "needle"),
    [
        (lambda plans: [0.5 for _ in plans], r"evaluate_many must return a \(score, seconds\) pair per plan, got 0.5"),
        (
            lambda plans: [(0.5,) for _ in plans],
            r"evaluate_many must return a \(score, seconds\) pair per plan, got \(0.5,\)",
        ),
        (lambda plans: [(0.5, -1.0) for _ in plans], "evaluate_many returned -1.0 seconds for a plan"),
        (lambda plans: [(0.5, "1") for _ in plans], "evaluate_many returned '1' seconds for a plan"),
        (lambda plans: [(0.5, 0.0)], "evaluate_many returned 1 scores for 2 plans"),
        (lambda plans: None, "evaluate_many must return a \\(score, seconds\\) pair per plan, got None"),
        (lambda plans: [(float("nan"), 0.0) for _ in plans], "evaluate returned nan; it must return a finite number"),
    ],
)
def test_bad_evaluate_many_outcomes_are_one_line_errors(outcomes: object, needle: str) -> None:
    space = DecisionSpace(TINY, ratio=8)
    scorer = PlanScorer(space, Recorder(TINY), None, None, time.perf_counter(), evaluate_many=outcomes)  # type: ignore[arg-type]
    with pytest.raises(SolverError, match=needle):
        scorer.score_many([space.smallest(), np.array([1, 1, 0, 0, 0])])


def test_an_evaluate_many_that_is_not_callable_is_named() -> None:
    space = DecisionSpace(TINY, ratio=8)
    with pytest.raises(
        SolverError, match=r"evaluate_many must be a callable plans -> \(score, seconds\) each, got int"
    ):
        PlanScorer(space, Recorder(TINY), None, None, time.perf_counter(), evaluate_many=3)  # type: ignore[arg-type]


def search_args(search: str, data_dir: Path, out: Path, *extra: str) -> list[str | Path]:
    return [
        "compress", "--model", "lenet5", "--data", data_dir, "--out", out, "--search", search,
        "--search-evaluations", "30" if search == "ga-acc" else "24", "--target-ratio", "8",
        "--finetune-epochs", "0", "--no-baseline", "--no-report", "--quiet", *extra,
    ]  # fmt: skip


@pytest.mark.slow  # ~40 s on 2 shared cores: two ga-acc runs of 30 plans, one of them with a Ray start
def test_ga_acc_on_two_ray_actors_finds_the_serial_plan(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,  # the actors score on one thread each: the serial run does too
) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("pymoo")
    assert run(*search_args("ga-acc", data_dir, tmp_path / "serial")) == 0
    # --device cuda: this process falls back to the CPU in one line (none here); the actors score on their CPUs
    capsys.readouterr()
    assert run(*search_args("ga-acc", data_dir, tmp_path / "ray", "--workers", "2", "--device", "cuda")) == 0
    fallbacks = capsys.readouterr().err.count("warning: --device cuda: torch sees no CUDA GPU")
    assert fallbacks == (0 if torch.cuda.is_available() else 1)
    searched = [json.loads((tmp_path / name / "metrics.json").read_text())["search"] for name in ("serial", "ray")]
    plans = [json.loads((tmp_path / name / "plan.json").read_text()) for name in ("serial", "ray")]
    assert plans[0] == plans[1]
    assert searched[0]["history"] == searched[1]["history"] and len(searched[0]["history"]) == 30
    assert searched[0]["score"] == searched[1]["score"]
    assert searched[1]["details"] == searched[0]["details"]


@pytest.mark.slow  # ~40 s on 2 shared cores: two rl-acc runs of 24 plans, one of them with a Ray start
def test_rl_acc_on_two_ray_actors_finds_the_plans_of_the_same_batch_without_ray(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    one_torch_thread: None,  # the actors score on one thread each: the serial run does too
) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("stable_baselines3")
    assert run(*search_args("rl-acc", data_dir, tmp_path / "serial", "--search-batch", "8")) == 0
    assert run(*search_args("rl-acc", data_dir, tmp_path / "ray", "--workers", "2")) == 0  # 8 a batch on Ray
    searched = [json.loads((tmp_path / name / "metrics.json").read_text())["search"] for name in ("serial", "ray")]
    plans = [json.loads((tmp_path / name / "plan.json").read_text()) for name in ("serial", "ray")]
    assert plans[0] == plans[1]
    assert searched[0]["history"] == searched[1]["history"] and len(searched[0]["history"]) == 24
    assert searched[0]["parameters"] == searched[1]["parameters"]
    assert searched[1]["parameters"]["episodes_per_batch"] == 8
    assert searched[0]["score"] == searched[1]["score"] and searched[1]["details"] == searched[0]["details"]


def test_a_ga_acc_config_on_ray_parses_back_from_its_command_line() -> None:
    import shlex

    from qubocompress.cli import _compress_config, build_parser
    from qubocompress.config import CompressConfig

    for config in (
        CompressConfig(search="ga-acc", workers=2),
        CompressConfig(search="ga-acc", ray_address="auto"),
        CompressConfig(search="rl-acc", workers=2, search_batch=4),
    ):
        words = shlex.split(config.command_line())
        assert _compress_config(build_parser().parse_args(words[1:])) == config


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--search", "uniform", "--workers", "2"), "--search uniform scores none that way, so drop them"),
        (("--search", "rl-acc", "--search-batch", "0"), "--search-batch must be a whole number >= 1, got 0"),
        (
            ("--search", "rl-acc", "--search-batch", "400"),
            "--search-batch (400) must be at most --search-evaluations (300): a batch's plans are scored together",
        ),
        (("--search", "ga-acc", "--search-batch", "4"), "--search ga-acc has no such batch, so drop it"),
        (("--search", "ga-acc", "--workers", "0"), "--workers must be a whole number >= 1"),
        (("--search", "ga-acc", "--ray-address", "127.0.0.1:1"), "cannot reach the Ray cluster"),
    ],
)
def test_bad_search_cluster_settings_are_one_line_before_any_work(
    flags: tuple[str, ...],
    needle: str,
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("ray")
    args = ["compress", "--model", "lenet5", "--data", data_dir, "--out", tmp_path / "run", "--quiet", *flags]
    assert run(*args) == 2
    assert_one_line_error(capsys, needle)
    assert not (tmp_path / "run").exists()
