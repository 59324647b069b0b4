"""``qpu-decomposed`` (issue 19): dwave-hybrid's decomposition workflow, offline on a mock QPU.

No QPU is reachable here: every run below samples its sub-problems on ``MockDWaveSampler``
(classical steepest descent on a Pegasus graph) and must say so.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import socket
import unittest
from collections.abc import Iterator
from pathlib import Path

import dimod
import dimod.testing
import numpy as np
import pytest
from dwave.system.testing import MockDWaveSampler

from qubocompress.bench.instances import save_instance
from qubocompress.cli import _compress_config, build_parser, main
from qubocompress.config import CompressConfig
from qubocompress.errors import SolverError
from qubocompress.solvers import DecomposedQpuSampler, make_sampler
from qubocompress.solvers.registry import preflight

from test_bench import tiny_instance
from test_pipeline import assert_one_line_error, compress_args, data_dir, run  # noqa: F401
from test_reliability import no_work

NO_TOKEN = "solver 'qpu-decomposed' has no D-Wave API token: run `dwave setup --auth` or set DWAVE_API_TOKEN"
OFFLINE = "or pass qpu=mock (compress: --solver-option qpu=mock; bench: --solver-option qpu-decomposed:qpu=mock)"


def mock_qpu(shape: int = 6) -> MockDWaveSampler:
    """A Pegasus P``shape`` whose "QPU" is seeded steepest descent."""
    return MockDWaveSampler(topology_type="pegasus", topology_shape=[shape], substitute_kwargs={"seed": 7})


def quick(clique: bool = False, shape: int = 6, **options: object) -> DecomposedQpuSampler:
    settings = {"sub_size": 10, "qpu_reads": 10, "tabu_timeout": 10, **options}
    return DecomposedQpuSampler(qpu="mock", child_sampler=mock_qpu(shape), clique=clique, **settings)


def random_bqm(variables: int = 20, seed: int = 3) -> dimod.BinaryQuadraticModel:
    return dimod.generators.gnp_random_bqm(variables, 0.4, "BINARY", random_state=seed)


@pytest.fixture
def dwave_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """No DWAVE_* variable, an empty dwave.conf, and every socket connection refused and recorded."""
    for name in [name for name in os.environ if name.startswith("DWAVE_")]:
        monkeypatch.delenv(name)
    (tmp_path / "dwave.conf").write_text("")
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(tmp_path / "dwave.conf"))
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == [], f"tried to connect to {attempts}"


@dimod.testing.load_sampler_bqm_tests(lambda: quick(shape=4, sub_size=4, qpu_reads=2, max_iter=2))
class TestDecomposedConformance(unittest.TestCase):
    pass


def test_sampler_api() -> None:
    dimod.testing.assert_sampler_api(quick())


@pytest.mark.parametrize("clique", [False, True])
def test_finds_the_ground_state_and_reports_its_sub_problems(clique: bool) -> None:
    bqm = random_bqm()
    ground = dimod.ExactSolver().sample(bqm).first.energy
    result = quick(clique).sample(bqm, seed=1)
    dimod.testing.assert_sampleset_energies(result, bqm)
    assert result.first.energy == pytest.approx(ground)
    info = result.info
    assert info["qpu"] == "mock" and info["on_qpu"] is False and "not a QPU" in info["sub_sampler"]
    assert info["embedding"] == ("clique (busclique)" if clique else "minorminer.find_embedding")
    assert info["subproblems"] >= 1 and info["iterations"] >= info["parameters"]["convergence"]
    assert info["subproblem_variables"]["max"] == 10
    # every logical variable takes at least one qubit; the 4-clique-dense sub-problems need chains
    assert info["physical_qubits"]["mean"] >= info["subproblem_variables"]["mean"]
    assert info["physical_qubits"]["max"] <= info["max_chain_length"] * 10
    assert info["max_chain_length"] >= 2
    assert 0 <= info["decomposed_wins"] <= info["iterations"]
    timing = info["timing"]
    assert "qpu_access_seconds" not in timing  # a mock's demonstration timings are not QPU time
    assert 0 < timing["embedding_seconds"] <= timing["subproblem_seconds"] <= timing["solve_seconds"]


def test_iteration_limit_and_small_problems() -> None:
    result = quick(max_iter=1).sample(random_bqm(), seed=2)
    assert result.info["iterations"] == 1 and result.info["stopped_by"] == "evaluations"
    spin = dimod.BinaryQuadraticModel({"a": 1.0, "b": -1.0}, {("a", "b"): -2.0}, 0.5, "SPIN")
    result = quick().sample(spin, seed=0)  # fewer variables than sub_size: one sub-problem of all
    assert result.first.energy == pytest.approx(dimod.ExactSolver().sample(spin).first.energy)
    assert result.info["subproblem_variables"]["max"] == 2


def test_an_unembeddable_sub_problem_is_one_line() -> None:
    bqm = dimod.generators.gnp_random_bqm(40, 1.0, "SPIN", random_state=1)
    with pytest.raises(SolverError, match="^solver 'qpu-decomposed' found no minor embedding of a 40-variable "):
        quick(clique=True, shape=2, sub_size=40).sample(bqm, seed=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"qpu": "real"}, "qpu must be one of dwave, mock, got 'real'"),
        ({"qpu": "mock", "sub_size": 0}, "sub_size must be a positive integer, got 0"),
        ({"qpu": "mock", "qpu_reads": 2.5}, "qpu_reads must be a positive integer, got 2.5"),
        ({"qpu": "mock", "time_limit": -1}, "time_limit must be a positive number of seconds, got -1"),
        ({"qpu": "mock", "tabu_timeout": 0}, "tabu_timeout must be a positive number of milliseconds, got 0"),
        ({"qpu": "mock", "embedding_timeout": "long"}, "embedding_timeout must be a positive number of seconds"),
        ({"qpu": "mock", "annealing": 1}, "has no option annealing; valid options: convergence, "),
    ],
)
def test_bad_options_are_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(SolverError, match=f"^solver 'qpu-decomposed'.*{message}"):
        make_sampler("qpu-decomposed", None, **options)


def test_a_bad_sample_option_is_one_line() -> None:
    with pytest.raises(SolverError, match="max_iter must be a positive integer"):
        quick().sample(random_bqm(), max_iter=0)


def test_no_token_on_a_real_qpu_is_one_line_naming_the_offline_way(dwave_env: list[object]) -> None:
    for attempt in (lambda: preflight("qpu-decomposed"), lambda: make_sampler("qpu-decomposed", None)):
        with pytest.raises(SolverError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith(f"{NO_TOKEN}; {OFFLINE}") and "\n" not in message
    preflight("qpu-decomposed", {"qpu": "mock"})  # offline needs no token


def test_compress_without_a_token_is_refused_before_any_work(
    data_dir: Path,  # noqa: F811
    tmp_path: Path,
    dwave_env: list[object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    no_work(monkeypatch)
    assert run(*compress_args(data_dir, tmp_path / "out"), "--solver", "qpu-decomposed") == 2
    assert_one_line_error(capsys, NO_TOKEN, OFFLINE)
    assert run(*compress_args(data_dir, tmp_path / "out"), "--solver-option", "qpu") == 2
    assert_one_line_error(capsys, "--solver-option takes KEY=VALUE, e.g. qpu=mock")


def test_solver_options_on_the_command_line_parse_back() -> None:
    config = CompressConfig(solver="qpu-decomposed", solver_options={"qpu": "mock", "time_limit": 5, "label": "7"})
    words = shlex.split(config.command_line())
    assert "--solver-option" in words and "qpu=mock" in words and 'label="7"' in words
    assert _compress_config(build_parser().parse_args(words[1:])) == config
    with_object = CompressConfig(solver_options={"child_sampler": object()})
    assert "# from Python: solver_options=" in with_object.command_line()


@pytest.mark.slow  # trains LeNet-5 once (shared with test_pipeline) and fine-tunes: ~1 min on 2 shared cores
def test_compress_runs_end_to_end_on_the_mock_qpu(data_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    options = ["qpu=mock", "sub_size=20", "qpu_reads=20", "tabu_timeout=50", "time_limit=30"]
    extra = ["--solver", "qpu-decomposed", "--finetune-epochs", "0", "--no-baseline"]
    argv = [*compress_args(data_dir, out), *extra, *(word for o in options for word in ("--solver-option", o))]
    assert run(*argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert '"qpu-decomposed"' in text and '"qpu": "mock"' in text
    assert metrics["compressed"]["ratio"] >= 15.9


def test_bench_runs_the_decomposed_solver_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_instance(tiny_instance(), tmp_path / "inst")
    out = tmp_path / "bench"
    argv = ["bench", "--instances", str(path), "--solvers", "sa,qpu-decomposed", "--seeds", "1", "--out", str(out)]
    options = ["qpu-decomposed:qpu=mock", "qpu-decomposed:sub_size=8", "qpu-decomposed:tabu_timeout=10"]
    assert main([*argv, "--num-reads", "20", *(word for o in options for word in ("--solver-option", o))]) == 0
    rows = {row["solver"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert rows["qpu-decomposed"]["status"] == "ok" and float(rows["qpu-decomposed"]["gap_best"]) >= 0
    assert "'qpu': 'mock'" in rows["qpu-decomposed"]["options"] or "mock" in rows["qpu-decomposed"]["options"]
    capsys.readouterr()
    assert main([*argv, "--solver-option", "tabu:tenure=3"]) == 2
    assert "--solver-option takes SOLVER:KEY=VALUE for a solver in --solvers" in capsys.readouterr().err


def test_the_seed_fixes_the_start_and_the_embeddings() -> None:
    bqm = random_bqm(30, seed=5)
    sampler = quick(max_iter=1, convergence=1)
    first, again = (sampler.sample(bqm, seed=4) for _ in range(2))
    # one iteration from the same start: the same sub-problem, the same embedding
    assert first.info["physical_qubits"] == again.info["physical_qubits"]
    assert np.isfinite(first.first.energy)
