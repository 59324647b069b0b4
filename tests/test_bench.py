"""bench: metrics, instance files, the resumable store, aggregation, plots and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dimod
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qubocompress.bench import cli as bench_cli
from qubocompress.bench import instances as bench_instances
from qubocompress.bench import runner
from qubocompress.bench.instances import (
    Instance,
    instance_from_formulation,
    instance_from_spec,
    load_instance,
    save_instance,
    size_series_instance,
)
from qubocompress.solvers.metrics import residual_gap, residual_gaps, success_mask, success_probability, tts99
from qubocompress.bench.plots import write_plots
from qubocompress.bench.runner import Budget, SweepConfig, run_sweep, summarize, tts_ratio_lines
from qubocompress.bench.store import ResultStore, RunKey, RunRecord
from qubocompress.cli import build_parser, main
from qubocompress.errors import DataError, ProblemError, SolverError
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.synthetic import synthetic_spec
from qubocompress.solvers import registry
from qubocompress.solvers.base import timed_sampleset

FAST_SA = {"sa": {"num_reads": 20, "num_sweeps": 300}}


def tiny_instance(name: str = "tiny", seed: int = 2) -> Instance:
    return instance_from_spec(name, synthetic_spec(channels=(4, 8, 8), seed=seed), "synthetic (test)", 10.0)


# --------------------------------------------------------------------------- metrics


def test_tts99_edge_cases_and_formula() -> None:
    assert tts99(2.0, 0.0) == math.inf
    assert tts99(2.0, 1.0) == 2.0
    assert tts99(2.0, 0.5) == pytest.approx(2.0 * math.log(0.01) / math.log(0.5))
    assert tts99(2.0, 0.995) == 2.0  # never less than one trial


@given(
    t=st.floats(min_value=1e-6, max_value=1e3),
    p=st.floats(min_value=1e-6, max_value=1.0),
    q=st.floats(min_value=1e-6, max_value=1.0),
)
def test_tts99_is_at_least_one_trial_and_falls_with_success(t: float, p: float, q: float) -> None:
    low, high = sorted((p, q))
    assert tts99(t, low) >= tts99(t, high) >= t * (1 - 1e-12)


@given(
    energies=st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=30),
    counts=st.data(),
)
def test_success_probability_is_a_weighted_share(energies: list[float], counts: st.DataObject) -> None:
    occurrences = counts.draw(st.lists(st.integers(1, 5), min_size=len(energies), max_size=len(energies)))
    e_star = min(energies)
    p = success_probability(energies, e_star, occurrences)
    mask = success_mask(energies, e_star)
    assert 0 < p <= 1
    assert p == pytest.approx(sum(c for c, m in zip(occurrences, mask) if m) / sum(occurrences))


@settings(max_examples=50)
@given(
    e_star=st.floats(min_value=-1e4, max_value=-1e-3),
    excess=st.floats(min_value=0.0, max_value=1e3),
    scale=st.floats(min_value=1e-3, max_value=1e3),
)
def test_residual_gap_is_scale_free_and_zero_at_optimum(e_star: float, excess: float, scale: float) -> None:
    assert residual_gap(e_star, e_star) == 0.0
    gap = residual_gap(e_star + excess, e_star)
    assert gap >= 0
    assert residual_gap(scale * (e_star + excess), scale * e_star) == pytest.approx(gap, rel=1e-6, abs=1e-9)


def test_tolerance_rounding_and_zero_optimum() -> None:
    assert success_mask([-10.0 + 5e-9, -10.0 + 2e-8], -10.0).tolist() == [True, False]
    assert residual_gap(-10.0 - 1e-14, -10.0) == 0.0  # rounding below E* is not a gap
    assert success_mask([0.0, 1e-13, 1e-6], 0.0).tolist() == [True, True, False]
    assert residual_gaps([0.0, 0.5], 0.0).tolist() == [0.0, math.inf]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tts99(1.0, 1.5), "success probability must be in"),
        (lambda: tts99(-1.0, 0.5), "time per trial"),
        (lambda: success_mask([1.0], math.nan), "E\\* must be a finite"),
        (lambda: success_probability([1.0, 2.0], 1.0, [1]), "occurrence counts"),
    ],
)
def test_metric_errors(call: Any, message: str) -> None:
    with pytest.raises(ProblemError, match=message):
        call()


# --------------------------------------------------------------------------- instances


def test_instance_round_trip(tmp_path: Path) -> None:
    instance = tiny_instance()
    path = save_instance(instance, tmp_path)
    assert path == tmp_path / "tiny.bqm"
    assert dimod.BinaryQuadraticModel.from_file(path.open("rb")) == instance.bqm  # plain dimod can read it
    loaded = load_instance(path)
    assert loaded.sha256 == instance.sha256
    assert loaded.e_star == pytest.approx(instance.e_star, abs=1e-12) and loaded.certified
    assert loaded.bqm == instance.bqm
    assert loaded.formulation is not None and loaded.formulation.gamma == instance.formulation.gamma
    assert loaded.formulation.bqm is loaded.bqm  # solvers get the formulation's own BQM
    sidecar = json.loads((tmp_path / "tiny.json").read_text())
    assert sidecar["formulation"]["target_ratio"] == 10.0 and sidecar["spec"]["model"] == "synthetic-vgg"


def test_size_series_reaches_the_requested_size() -> None:
    instance = size_series_instance(150)
    assert 150 <= instance.num_variables <= 160
    assert instance.name == "synthetic-n150" and instance.certified


def test_corrupt_bqm_is_a_clear_error(tmp_path: Path) -> None:
    path = save_instance(tiny_instance(), tmp_path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"instance tiny is corrupt: tiny.bqm has sha256"):
        load_instance(path)


def test_truncated_bqm_with_matching_hash_is_a_clear_error(tmp_path: Path) -> None:
    path = save_instance(tiny_instance(), tmp_path)
    truncated = path.read_bytes()[:100]
    path.write_bytes(truncated)
    sidecar = json.loads((tmp_path / "tiny.json").read_text())
    import hashlib

    sidecar["bqm_sha256"] = hashlib.sha256(truncated).hexdigest()
    (tmp_path / "tiny.json").write_text(json.dumps(sidecar))
    with pytest.raises(DataError, match=r"instance tiny is corrupt: its .bqm is not a readable dimod BQM"):
        load_instance(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s["formulation"].update(gamma=s["formulation"]["gamma"] * 1.5), "rebuilt from its spec"),
        (lambda s: s.update(e_star=s["e_star"] + 1.0), "differs from the certified optimum"),
        (lambda s: s["spec"].pop("layers"), "malformed compression spec"),
    ],
)
def test_tampered_sidecar_is_a_clear_error(tmp_path: Path, edit: Any, message: str) -> None:
    path = save_instance(tiny_instance(), tmp_path)
    sidecar = json.loads((tmp_path / "tiny.json").read_text())
    edit(sidecar)
    (tmp_path / "tiny.json").write_text(json.dumps(sidecar))
    with pytest.raises(DataError, match=f"instance tiny is corrupt: tiny.json: .*{message}"):
        load_instance(path)


def test_sidecar_that_is_not_json(tmp_path: Path) -> None:
    path = save_instance(tiny_instance(), tmp_path)
    (tmp_path / "tiny.json").write_text("{not json")
    with pytest.raises(DataError, match="instance tiny is corrupt: tiny.json is not readable JSON"):
        load_instance(path)


def test_bare_bqm_gets_its_optimum_from_the_exact_solver(tmp_path: Path) -> None:
    bqm = dimod.BinaryQuadraticModel(
        {"a": -1.0, "b": 2.0, "c": -0.5}, {("a", "b"): -3.0, ("b", "c"): 1.0}, 0.0, "BINARY"
    )
    with bqm.to_file() as handle:
        (tmp_path / "bare.bqm").write_bytes(handle.read())
    loaded = load_instance(tmp_path / "bare.bqm")
    assert loaded.formulation is None and loaded.source.startswith("file:")
    assert loaded.certified and loaded.e_star == pytest.approx(min(dimod.ExactSolver().sample(bqm).record.energy))


def test_missing_instance_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="instance file .*nothing.bqm not found"):
        load_instance(tmp_path / "nothing.bqm")


def test_builtin_instance_falls_back_to_a_labelled_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench_instances, "packaged_spec_path", lambda model: tmp_path / f"{model}.spec.json")
    instance = bench_instances.builtin_instance("lenet5")
    assert instance.name == "lenet5-synthetic" and "shaped like lenet5" in instance.source
    bench_instances.write_model_spec(
        tmp_path / "lenet5.spec.json", synthetic_spec(channels=(4, 8), seed=1), "model:lenet5 (test, seed 0)", {}
    )
    measured = bench_instances.builtin_instance("lenet5")
    assert measured.name == "lenet5" and measured.source == "model:lenet5 (test, seed 0)"
    (tmp_path / "lenet5.spec.json").write_text("[]")
    with pytest.raises(DataError, match="lenet5.spec.json is corrupt"):
        bench_instances.builtin_instance("lenet5")


# --------------------------------------------------------------------------- store and sweep


def test_interrupted_sweep_resumes_with_only_the_missing_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    instance = tiny_instance()
    config = SweepConfig(solvers=["exact", "sa"], seeds=(0, 1), solver_options=FAST_SA)
    calls: list[tuple[str, int]] = []
    pending_interrupt = [True]  # the second run of the first sweep is interrupted (Ctrl-C)
    real_run_once = runner._run_once

    def interrupted(name: str, inst: Instance, seed: int, *args: Any) -> RunRecord:
        calls.append((name, seed))
        if pending_interrupt[0] and len(calls) == 2:
            pending_interrupt[0] = False
            raise KeyboardInterrupt
        return real_run_once(name, inst, seed, *args)

    monkeypatch.setattr(runner, "_run_once", interrupted)
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(KeyboardInterrupt):
        run_sweep([instance], config, store, progress=False)
    assert calls == [("sa", 0), ("sa", 1)]  # sa (the default solver) first
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert [(r.key.solver, r.key.seed) for r in store.runs()] == [("sa", 0)]
        calls.clear()
        outcome = run_sweep([instance], config, store, progress=False)
        assert calls == [("sa", 1), ("exact", 0)]
        assert (outcome.executed, outcome.reused) == (2, 1)
        calls.clear()
        assert run_sweep([instance], config, store, progress=False).executed == 0 and calls == []
        runs = store.runs()
    assert all(r.status == "ok" and r.energies.size > 0 for r in runs)
    exact = next(r for r in runs if r.key.solver == "exact")
    assert exact.e_best == pytest.approx(instance.e_star) and exact.info["solver_info"]["certified"]


def test_polished_runs_are_separate_runs_and_never_score_worse(tmp_path: Path) -> None:
    instance = tiny_instance()
    with ResultStore(tmp_path / "r.sqlite") as store:
        plain = SweepConfig(solvers=["sa"], seeds=(0,), solver_options=FAST_SA)
        polished = SweepConfig(solvers=["sa"], seeds=(0,), solver_options=FAST_SA, polish=True)
        run_sweep([instance], plain, store, progress=False)
        assert run_sweep([instance], polished, store, progress=False).executed == 1
        raw, fixed = sorted(store.runs(), key=lambda r: "polish" in r.options)
    assert fixed.options["polish"] and "polish" not in raw.options
    assert fixed.e_best <= raw.e_best + 1e-12 and fixed.successes >= raw.successes
    assert fixed.info["solver_info"]["polish"]["method"] == "canonical"
    assert fixed.solve_seconds >= fixed.info["timing"]["polish_seconds"]


def test_changed_options_are_new_runs(tmp_path: Path) -> None:
    instance = tiny_instance()
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep([instance], SweepConfig(solvers=["sa"], seeds=(0,), solver_options=FAST_SA), store, progress=False)
        again = SweepConfig(solvers=["sa"], seeds=(0,), solver_options=FAST_SA, num_reads=5)
        assert run_sweep([instance], again, store, progress=False).executed == 1
        assert summarize(store, [instance], again)[0]["reads"] == 5


def _record(
    solver: str, seed: int, energies: list[float], counts: list[int], seconds: float, **extra: Any
) -> RunRecord:
    return RunRecord(
        key=RunKey("hand", "h" * 64, solver, seed, "opts"),
        options={},
        status="ok",
        e_best=min(energies),
        reads=sum(counts),
        successes=0,
        solve_seconds=seconds,
        energies=np.array(energies),
        occurrences=np.array(counts),
        **extra,
    )


def test_aggregation_on_a_hand_made_case(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_instance("hand", "h" * 64, 10, 20, -10.0, True, "hand-made", 0.5)
        store.add_run(_record("sa", 0, [-10.0, -9.0], [1, 3], 2.0))
        store.add_run(_record("sa", 1, [-9.5], [4], 4.0))
        store.add_run(_record("ga", 0, [-10.0], [1], 1.0, evaluations=500, stopped_by="time_limit"))
        store.add_run(_record("ga", 1, [-9.0], [1], 3.0, evaluations=700, stopped_by="convergence"))
        kept = {"independent_reads": False}  # 10 reads from one trial (e.g. a GA run's final population)
        store.add_run(_record("rl", 0, [-10.0, -8.0], [1, 9], 2.0, info=kept))
        store.add_run(_record("exact", 0, [-10.0], [1], 0.01))
        rows = {row["solver"]: row for row in summarize(store)}
    sa, ga, rl, exact = rows["sa"], rows["ga"], rows["rl"], rows["exact"]
    assert sa["reads"] == 8 and sa["p_s_read"] == pytest.approx(1 / 8) and sa["p_s_run"] == 0.5
    assert sa["t_read"] == pytest.approx(6 / 8) and sa["t_run_mean"] == 3.0
    assert sa["tts99_read"] == pytest.approx(0.75 * math.log(0.01) / math.log(7 / 8))
    assert sa["tts99_run"] == pytest.approx(3.0 * math.log(0.01) / math.log(0.5))
    assert sa["tts99"] == sa["tts99_read"] and sa["tts99_unit"] == "read"
    assert sa["gap_best"] == 0.0 and sa["gap_median"] == pytest.approx(0.025)
    ga_tts = 2.0 * math.log(0.01) / math.log(0.5)  # one read per run: 2 s per read, p = 1/2
    assert ga["tts99"] == pytest.approx(ga_tts) and ga["tts99_unit"] == "read"
    assert ga["tts99_run"] == pytest.approx(ga_tts)
    assert ga["tts99_ratio_to_default"] == pytest.approx(ga_tts / sa["tts99_read"])
    assert ga["evaluations_mean"] == 600 and ga["stopped_by"] == "convergence, time_limit"
    assert rl["p_s_read"] == pytest.approx(0.1) and rl["p_s_run"] == 1.0
    assert rl["tts99"] == 2.0 and rl["tts99_unit"] == "run"
    assert exact["exact_faster_than_every_heuristic"] is True
    assert sa["e_star"] == -10.0 and sa["e_star_certified"]
    assert tts_ratio_lines(list(rows.values())) == [
        f"TTS99(ga)/TTS99(sa): hand {ga_tts / sa['tts99_read']:.3g}×",
        f"TTS99(rl)/TTS99(sa): hand {2.0 / sa['tts99_read']:.3g}×",
    ]


def test_uncertified_optimum_is_the_best_energy_found(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_instance("hand", "h" * 64, 10, 20, -11.0, False, "file", 0.0)
        store.add_run(_record("sa", 0, [-12.0, -11.0], [1, 1], 1.0))
        store.add_run(_record("tabu", 0, [-11.0], [2], 1.0))
        rows = {row["solver"]: row for row in summarize(store)}
    assert rows["tabu"]["e_star"] == -12.0 and not rows["tabu"]["e_star_certified"]
    assert rows["tabu"]["p_s_run"] == 0.0 and rows["tabu"]["tts99"] == math.inf
    assert rows["tabu"]["tts99_ratio_to_default"] == math.inf and rows["sa"]["p_s_read"] == 0.5


def test_plots_are_png_files(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_instance("hand", "h" * 64, 10, 20, -10.0, True, "hand-made", 0.5)
        store.add_run(_record("sa", 0, [-10.0, -9.0], [1, 3], 2.0))
        store.add_run(_record("ga", 0, [-8.0], [2], 1.0))
        paths = write_plots(store, summarize(store), tmp_path / "plots")
    assert {p.name for p in paths} == {"tts99_vs_variables.png", "success_probability.png", "energy-hand.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_plots_are_drawn_when_no_solver_reached_the_optimum(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_instance("hand", "h" * 64, 10, 20, -10.0, True, "hand-made", 0.5)
        store.add_run(_record("sa", 0, [-9.0], [4], 2.0))
        paths = write_plots(store, summarize(store), tmp_path / "plots")
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


class BudgetedStub(dimod.Sampler):
    """A stand-in budgeted solver: remembers the time limit it was given."""

    received: list[float | None] = []

    @property
    def parameters(self) -> dict[str, list[str]]:
        return {"time_limit": [], "seed": []}

    @property
    def properties(self) -> dict[str, Any]:
        return {}

    def sample(
        self, bqm: dimod.BinaryQuadraticModel, time_limit: float | None = None, seed: int | None = None
    ) -> dimod.SampleSet:
        BudgetedStub.received.append(time_limit)
        variables = list(bqm.variables)
        samples = np.random.default_rng(seed).integers(0, 2, size=(3, len(variables)))
        info = {"stopped_by": "time_limit" if time_limit else "convergence", "evaluations": 42}
        return timed_sampleset(bqm, samples, variables, 0.001, info=info)


@pytest.mark.parametrize("mode", ["equal", "converge", "fixed"])
def test_budget_of_ga_and_rl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str) -> None:
    monkeypatch.setitem(registry.SOLVERS, "ga", registry.SolverEntry(lambda formulation, **o: BudgetedStub(), "stub"))
    monkeypatch.setattr(runner, "SOLVER_NAMES", tuple(registry.SOLVERS))
    BudgetedStub.received = []
    budget = Budget(mode, seconds=0.25 if mode == "fixed" else None)
    config = SweepConfig(solvers=["ga", "sa"], seeds=(0, 1), solver_options=FAST_SA, budget=budget)
    instance = tiny_instance()
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep([instance], config, store, progress=False)
        sa_mean = float(np.mean([r.solve_seconds for r in store.runs(solver="sa")]))
        rows = {row["solver"]: row for row in summarize(store, [instance], config)}
    # sa can solve the tiny instance in under a millisecond: the equal budget is then the floor
    expected = {"equal": max(sa_mean, runner.MIN_EQUAL_TIME_LIMIT), "converge": None, "fixed": 0.25}[mode]
    assert BudgetedStub.received == [expected, expected]
    described = {"equal": "time limit", "converge": "own convergence", "fixed": "time limit 0.25 s (stated)"}
    assert rows["ga"]["budget"].startswith(described[mode])
    assert rows["ga"]["evaluations_mean"] == 42 and rows["ga"]["tts99_unit"] == "read"


def test_bad_budget_and_unknown_solver() -> None:
    with pytest.raises(SolverError, match="time limit must be a number of seconds > 0"):
        Budget("fixed", seconds=0.0)
    with pytest.raises(SolverError, match="unknown solver 'nope'"):
        SweepConfig(solvers=["nope"]).validate()


def _missing_package(formulation: Any, **options: Any) -> dimod.Sampler:
    raise SolverError("solver 'fake' needs fakepkg: pip install 'qubocompress[fake]'")


def test_missing_package_is_skipped_unless_asked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(registry.SOLVERS, "fake", registry.SolverEntry(_missing_package, "needs a package"))
    monkeypatch.setattr(runner, "SOLVER_NAMES", tuple(registry.SOLVERS))
    instance = tiny_instance()
    with ResultStore(tmp_path / "r.sqlite") as store:
        config = SweepConfig(solvers=["sa", "fake"], seeds=(0,), solver_options=FAST_SA)
        outcome = run_sweep([instance], config, store, progress=False)
        assert outcome.skipped == {"fake": "solver 'fake' needs fakepkg: pip install 'qubocompress[fake]'"}
        with pytest.raises(SolverError, match="needs fakepkg"):
            run_sweep([instance], SweepConfig(solvers=["fake"], explicit=True), store, progress=False)


# --------------------------------------------------------------------------- CLI


@pytest.fixture()
def tiny_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """--quick shrunk to one tiny stand-in and one tiny size instance."""
    monkeypatch.setattr(bench_cli, "BUILTIN_MODELS", ("lenet5",))
    monkeypatch.setattr(bench_cli, "QUICK_SIZES", (40,))
    monkeypatch.setattr(bench_cli, "QUICK_SEEDS", 2)
    monkeypatch.setitem(bench_instances.STAND_INS, "lenet5", lambda seed: synthetic_spec(channels=(4, 8), seed=seed))
    monkeypatch.setattr(bench_instances, "packaged_spec_path", lambda model: Path("/nonexistent") / model)


def test_cli_bench_quick(tiny_quick: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "--quick", "--solvers", "sa,exact", "--num-reads", "10", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "lenet5-synthetic" in printed and "synthetic-n40" in printed and "★" in printed
    assert "instance lenet5-synthetic (" in printed and "shaped like lenet5" in printed
    assert "target sa p_s_run ≥ 0.99 on every built-in-model instance" in printed
    for name in ("results.sqlite", "results.csv", "results.json", "plots/tts99_vs_variables.png"):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "instances").iterdir()} == {
        "lenet5-synthetic.bqm",
        "lenet5-synthetic.json",
        "synthetic-n40.bqm",
        "synthetic-n40.json",
    }
    result = json.loads((out / "results.json").read_text())
    assert {(r["instance"], r["solver"]) for r in result["rows"]} == {
        (i, s) for i in ("lenet5-synthetic", "synthetic-n40") for s in ("sa", "exact")
    }
    assert (out / "results.csv").read_text().splitlines()[0].startswith("instance,variables,")
    # the saved instances can be rerun; the store already has every run
    assert (
        main(
            [
                "bench",
                "--instances",
                str(out / "instances"),
                "--solvers",
                "sa,exact",
                "--seeds",
                "2",
                "--num-reads",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "0 runs now, 6 from earlier" in capsys.readouterr().out


def test_cli_bench_first_seed_runs_other_seeds_and_a_later_sweep_reuses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = save_instance(tiny_instance(), tmp_path / "inst")
    out = tmp_path / "o"
    common = ["bench", "--instances", str(path), "--solvers", "sa", "--num-reads", "5", "--out", str(out)]
    assert main([*common, "--seeds", "2", "--first-seed", "3"]) == 0
    assert "2 runs now, 0 from earlier" in capsys.readouterr().out
    assert main([*common, "--seeds", "5"]) == 0  # seeds 0-4: 3 and 4 are stored
    assert "3 runs now, 2 from earlier" in capsys.readouterr().out
    with ResultStore(out / "results.sqlite") as store:
        assert sorted(run.key.seed for run in store.runs()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--solvers", "sa,nope"], "unknown solver 'nope'"),
        (["--time-limit", "0"], "--time-limit must be a number of seconds > 0"),
        (["--time-limit", "-3"], "--time-limit must be a number of seconds > 0"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--solvers", "sa,tabu", "--device", "cpu"], "and --solvers sa,tabu has no sb"),
        (["--first-seed", "-1"], "--first-seed must be >= 0"),
        (["--first-seed", str(2**31 - 2), "--seeds", "3"], "--first-seed + --seeds must stay within"),
        (["--instances", "vgg,unknown-model"], "unknown instance 'unknown-model'"),
        (["--sizes", "100,big"], "--sizes takes variable counts"),
        (["--sizes", "10"], "need at least 30 variables, got 10"),
        (["--target-ratio", "1"], "--target-ratio must be a number > 1"),
        (["--target-ratio", "16,x"], "--target-ratio takes numbers > 1"),
        (["--formulation", "budget", "--instances", "n100"], "budget instances come from the built-in models"),
        (["--formulation", "budget", "--sizes", "100"], "paper-formulation benchmark"),
    ],
)
def test_cli_bench_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["bench", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_bench_corrupt_instance_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_instance(tiny_instance(), tmp_path / "inst")
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["bench", "--instances", str(path), "--solvers", "sa", "--out", str(tmp_path / "o")]) == 2
    assert "instance tiny is corrupt" in capsys.readouterr().err


def test_cli_bench_missing_optional_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(registry.SOLVERS, "fake", registry.SolverEntry(_missing_package, "needs a package"))
    monkeypatch.setattr(runner, "SOLVER_NAMES", tuple(registry.SOLVERS))
    path = save_instance(tiny_instance(), tmp_path / "inst")
    assert main(["bench", "--instances", str(path), "--solvers", "fake", "--out", str(tmp_path / "o")]) == 2
    message = "qubocompress: error: solver 'fake' needs fakepkg: pip install 'qubocompress[fake]'"
    assert capsys.readouterr().err.strip() == message


def test_store_file_that_is_not_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.sqlite").write_text("not a database" * 100)
    path = save_instance(tiny_instance(), tmp_path / "inst")
    assert main(["bench", "--instances", str(path), "--solvers", "exact", "--out", str(out)]) == 2
    assert "is not a usable SQLite file" in capsys.readouterr().err
    assert main(["bench", "--instances", str(path), "--solvers", "exact", "--out", str(out), "--fresh"]) == 0


def test_offline_sweeps_leave_out_the_cloud_solvers() -> None:
    offline = runner.offline_solvers()
    assert "qpu" not in offline and "hybrid" not in offline
    assert set(offline) == set(registry.SOLVER_NAMES) - {"qpu", "qpu-decomposed", "hybrid", "hybrid-cqm"}


# --------------------------------------------------------------------------- budget instances


def tiny_budget_instance(ratio: float = 12.0) -> Instance:
    spec = synthetic_spec(channels=(4, 8, 8), prune_steps=2, seed=3)
    return instance_from_formulation("tiny-budget", BudgetFormulation(spec, ratio=ratio), "synthetic (test)", ratio)


def test_budget_instance_round_trip(tmp_path: Path) -> None:
    instance = tiny_budget_instance()
    assert instance.certified
    assert instance.e_star == pytest.approx(instance.formulation.exact_result().objective, rel=1e-8)
    loaded = load_instance(save_instance(instance, tmp_path))
    assert isinstance(loaded.formulation, BudgetFormulation) and loaded.bqm == instance.bqm
    assert loaded.formulation.bqm is loaded.bqm and loaded.formulation.budget == instance.formulation.budget
    assert loaded.e_star == pytest.approx(instance.e_star, abs=1e-12) and loaded.certified
    fresh = loaded.fresh_formulation()
    assert isinstance(fresh, BudgetFormulation) and fresh is not loaded.formulation and fresh.bqm == loaded.bqm
    sidecar = json.loads((tmp_path / "tiny-budget.json").read_text())
    assert sidecar["formulation"]["name"] == "budget" and sidecar["formulation"]["ratio"] == 12.0


def test_budget_sweep_reports_feasibility_and_the_polished_route_reaches_the_optimum(tmp_path: Path) -> None:
    instance = tiny_budget_instance()
    rows = {}
    for polish in (False, True):
        config = SweepConfig(solvers=["sa", "exact"], seeds=(0, 1), polish=polish)
        with ResultStore(tmp_path / f"r{polish}.sqlite") as store:
            run_sweep([instance], config, store, progress=False)
            rows[polish] = {row["solver"]: row for row in summarize(store, [instance], config)}
            infos = [run.info["solver_info"] for run in store.runs(solver="sa")]
    raw, polished = rows[False]["sa"], rows[True]["sa"]
    assert raw["reads"] == 2 * 20  # the formulation's recommended schedule: 20 reads × 100 sweeps
    assert 0.0 <= raw["feasible_rate"] <= 1.0
    assert polished["feasible_rate"] == 1.0 and polished["p_s_run"] == 1.0
    assert polished["gap_best"] == 0.0 and polished["e_best"] == pytest.approx(instance.e_star)
    assert rows[True]["exact"]["p_s_read"] == 1.0 and rows[True]["exact"]["feasible_rate"] == 1.0
    assert all("polish" in info for info in infos)  # the last store's runs were polished


def test_rl_refuses_the_budget_formulation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SolverError, match="budget formulation's option grid cannot encode"):
        registry.make_sampler("rl", tiny_budget_instance().formulation)
    argv = [
        "bench",
        "--formulation",
        "budget",
        "--instances",
        "lenet5",
        "--target-ratio",
        "16",
        "--solvers",
        "rl",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2  # named explicitly: an error, not a skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("qubocompress: error: solver 'rl' walks") and "Traceback" not in "\n".join(err)


def test_cli_bench_budget_on_a_builtin_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    argv = [
        "bench",
        "--formulation",
        "budget",
        "--instances",
        "vgg",
        "--target-ratio",
        "24",
        "--solvers",
        "sa,exact",
        "--seeds",
        "1",
        "--polish",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "vgg-budget-24x" in printed and "feasible" in printed
    rows = {r["solver"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["exact"]["e_star_certified"] and rows["sa"]["feasible_rate"] == 1.0
    assert rows["sa"]["p_s_run"] == 1.0  # the route's sa + polish on the shipped VGG spec
    assert "feasible_rate" in (out / "results.csv").read_text().splitlines()[0]
    loaded = load_instance(out / "instances" / "vgg-budget-24x.bqm")
    assert isinstance(loaded.formulation, BudgetFormulation) and loaded.formulation.ratio == 24.0


def test_several_ratios_name_the_paper_instances_by_ratio(tiny_quick: None) -> None:
    args = build_parser().parse_args(["bench", "--instances", "lenet5-synthetic", "--target-ratio", "8,16"])
    names = [instance.name for instance in bench_cli.build_instances(bench_cli.instance_plan(args), log=lambda _: None)]
    assert names == ["lenet5-synthetic-8x", "lenet5-synthetic-16x"]
