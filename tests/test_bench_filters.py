"""bench --formulation filters: instance files (BQM, sidecar, Gram matrix), the reference's
timeline, raw and polished scores, the packaged instances."""

from __future__ import annotations

import json
import lzma
from dataclasses import replace
from pathlib import Path
from typing import Any

import dimod
import numpy as np
import pytest

from qubocompress.bench import instances as bench_instances
from qubocompress.bench.instances import (
    BUDGET_TARGET_RATIOS,
    Instance,
    builtin_filters_instance,
    filters_instance,
    filters_instance_name,
    load_instance,
    load_instances,
    packaged_filters_path,
    save_instance,
)
from qubocompress.bench.runner import SweepConfig, run_sweep, summarize
from qubocompress.bench.store import ResultStore
from qubocompress.cli import main
from qubocompress.errors import DataError
from qubocompress.problem import filters as filters_module
from qubocompress.problem.filters import FiltersFormulation
from qubocompress.problem.synthetic import synthetic_spec, with_synthetic_filter_gram

SHIPPED_MODELS = ("vgg", "resnet20")
FAST = {"sa": {"num_reads": 10, "num_sweeps": 200}}


def tiny_filters_instance(name: str = "tiny-filters", float32: bool = True) -> Instance:
    """A 12-variable filters instance (two groups pruned), E* certified by SCIP or HiGHS."""
    spec = with_synthetic_filter_gram(synthetic_spec(channels=(4, 8, 8), prune_steps=2, seed=3), seed=1)
    if float32:  # what the export ships: the Gram matrix rounded to float32
        spec = replace(spec, filter_gram=spec.filter_gram.astype(np.float32).astype(np.float64))
    return filters_instance(name, spec, "synthetic (test)", 12.0, time_limit=20)


@pytest.fixture(scope="module")
def tiny() -> Instance:
    return tiny_filters_instance()


# --- instance files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_a_filters_instance_round_trips_with_its_gram_matrix(tiny: Instance, tmp_path: Path, compress: bool) -> None:
    assert isinstance(tiny.formulation, FiltersFormulation) and tiny.certified
    path = save_instance(tiny, tmp_path, compress=compress, gram_file="tiny.gram.npy")
    assert path.name == ("tiny-filters.bqm.xz" if compress else "tiny-filters.bqm")
    data = lzma.decompress(path.read_bytes()) if compress else path.read_bytes()
    assert dimod.BinaryQuadraticModel.from_file(data) == tiny.bqm  # plain dimod reads it
    sidecar = json.loads((tmp_path / "tiny-filters.json").read_text())
    gram = sidecar["spec"]["filter_gram"]
    assert gram["file"] == "tiny.gram.npy" and gram["dtype"] == "float32" and gram["channels"] == 20
    assert len(sidecar["reference"]["sample"]) == tiny.num_variables
    loaded = load_instance(path)
    assert loaded.sha256 == tiny.sha256 and loaded.bqm == tiny.bqm
    assert loaded.e_star == tiny.e_star and loaded.certified
    assert (
        loaded.formulation.counts == tiny.formulation.counts and loaded.formulation.penalty == tiny.formulation.penalty
    )
    np.testing.assert_array_equal(loaded.spec.filter_gram, tiny.spec.filter_gram)
    assert loaded.reference == tiny.reference
    fresh = loaded.fresh_formulation()
    assert isinstance(fresh, FiltersFormulation) and fresh.bqm == loaded.bqm
    assert [i.name for i in load_instances(tmp_path)] == ["tiny-filters"]  # a folder of .bqm.xz files too


def test_a_gram_matrix_that_float32_cannot_hold_is_stored_as_float64(tmp_path: Path) -> None:
    instance = tiny_filters_instance(float32=False)
    save_instance(instance, tmp_path)
    sidecar = json.loads((tmp_path / "tiny-filters.json").read_text())
    assert sidecar["spec"]["filter_gram"]["dtype"] == "float64"
    assert load_instance(tmp_path / "tiny-filters.json").bqm == instance.bqm


def test_loading_checks_the_stored_reference_instead_of_solving(
    tiny: Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_instance(tiny, tmp_path)

    def no_solve(*args: Any) -> None:
        raise AssertionError("the reference was solved again")

    monkeypatch.setattr(filters_module, "_solve_scip", no_solve)
    monkeypatch.setattr(filters_module, "_solve_milp", no_solve)
    loaded = load_instance(path)
    assert loaded.e_star == tiny.e_star and loaded.reference.timeline == tiny.reference.timeline


def edit_json(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def flip_first_bit(record: dict) -> None:
    sample = record["reference"]["sample"]
    record["reference"]["sample"] = ("1" if sample[0] == "0" else "0") + sample[1:]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(e_star=r["e_star"] * 0.5), "differs from the energy of its reference plan"),
        (flip_first_bit, "its reference plan has energy"),
        (lambda r: r["reference"].update(sample="01x"), "not a string of 0s and 1s"),
        (lambda r: r["formulation"].update(penalty=r["formulation"]["penalty"] * 2), "rebuilt from its spec"),
        (lambda r: r["spec"]["filter_gram"].update(file="../elsewhere.gram.npy"), "not a .gram.npy file beside"),
        (lambda r: r["spec"]["filter_gram"].update(file="missing.gram.npy"), "cannot read its filter Gram matrix"),
        (lambda r: r["spec"]["filter_gram"].update(channels=7), "not the upper triangle of 7 channels"),
        (lambda r: r["spec"].update(filter_gram="G"), "malformed compression spec"),
    ],
)
def test_a_corrupt_sidecar_is_one_clear_line(tiny: Instance, tmp_path: Path, edit: Any, message: str) -> None:
    path = save_instance(tiny, tmp_path)
    edit_json(tmp_path / "tiny-filters.json", edit)
    with pytest.raises(DataError, match="instance tiny-filters is corrupt: tiny-filters.json: .*" + message) as error:
        load_instance(path)
    assert "\n" not in str(error.value)


def test_a_corrupt_gram_file_or_xz_file_is_one_clear_line(tiny: Instance, tmp_path: Path) -> None:
    path = save_instance(tiny, tmp_path, compress=True)
    gram = tmp_path / "tiny-filters.gram.npy"
    data = bytearray(gram.read_bytes())
    data[-3] ^= 0xFF
    gram.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not have the sha256 the sidecar records"):
        load_instance(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="tiny-filters.bqm.xz is not a readable xz file"):
        load_instance(path)


# --- the reference's timeline ------------------------------------------------------------------------


def test_the_reference_timeline_of_a_certified_solve(tiny: Instance) -> None:
    timeline = tiny.formulation.reference_timeline
    result = tiny.formulation.exact_result()
    assert timeline.proof_seconds == result.seconds and timeline.gap == 0.0
    assert 0 <= timeline.search_best_seconds <= timeline.search_seconds <= result.seconds
    assert timeline.best_seconds is not None and 0 <= timeline.best_seconds <= result.seconds
    assert timeline.best_found_by in ("search", "solver")
    assert tiny.formulation.describe()["reference_timeline"] == timeline.figures()


@pytest.mark.parametrize("solver", ["scip", "highs"])
def test_when_the_solver_beats_the_search_the_timeline_says_so(
    tiny: Instance, monkeypatch: pytest.MonkeyPatch, solver: str
) -> None:
    if solver == "scip":
        pytest.importorskip("pyscipopt")
    given = tiny.formulation
    formulation = FiltersFormulation(given.spec, given.counts, given.bits, time_limit=20, reference_solver=solver)
    start_row = formulation._row_of(formulation.rank_prefix_plan())
    start_value = float(filters_module._halves(formulation.gram, start_row))

    def no_search(row: np.ndarray, seed: int = 0, start: float | None = None) -> tuple:
        return row, [(0.0, start_value)]

    monkeypatch.setattr(formulation, "_search", no_search)
    result = formulation.exact_result()
    assert result.certified and result.objective < formulation.objective(formulation.rank_prefix_plan())
    timeline = formulation.reference_timeline
    assert timeline.solver == solver and timeline.best_found_by == "solver"
    if solver == "scip":  # SCIP says when it found each solution
        assert timeline.search_seconds <= timeline.best_seconds <= result.seconds
    else:  # scipy's HiGHS does not
        assert timeline.best_seconds is None


# --- the sweep: raw and polished scores, the reference's figures ---------------------------------


def test_a_filters_sweep_scores_raw_and_polished_reads_and_times_the_reference(tiny: Instance, tmp_path: Path) -> None:
    config = SweepConfig(solvers=["sa", "random", "exact"], seeds=(0, 1), solver_options=FAST, polish=True)
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_sweep([tiny], config, store, progress=False)
        rows = {row["solver"]: row for row in summarize(store, [tiny], config)}
    sa, random, exact = rows["sa"], rows["random"], rows["exact"]
    assert sa["reads"] == 20 and sa["e_star_certified"]
    for row in (sa, random):
        assert 0 <= row["p_s_read_raw"] <= row["p_s_read"] <= 1  # the polish never makes a read worse
        assert row["feasible_rate"] == 1.0 and 0 <= row["feasible_rate_raw"] <= 1
        assert row["gap_best"] <= (row["gap_best_raw"] if row["gap_best_raw"] is not None else np.inf)
        assert row["tts99_raw"] is None or row["tts99_raw"] > 0
    assert sa["p_s_run"] == 1.0 and sa["gap_best"] == 0.0  # the polished route reaches the optimum
    assert exact["exact_certified"] and exact["exact_gap"] == 0.0 and exact["p_s_read"] == 1.0
    assert 0 <= exact["exact_best_seconds"] <= exact["t_run_mean"]
    assert exact["exact_search_seconds"] <= exact["t_run_mean"] and exact["exact_best_found_by"] in ("search", "solver")
    assert "p_s_read_raw" not in exact


def test_cli_bench_filters_on_a_saved_instance(
    tiny: Instance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_instance(tiny, tmp_path / "inst", compress=True)
    out = tmp_path / "bench"
    argv = ["bench", "--instances", str(tmp_path / "inst"), "--solvers", "random,exact", "--seeds", "1"]
    assert main([*argv, "--polish", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "raw p_s" in printed and "exact on tiny-filters: proved its optimum" in printed
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"p_s_read_raw", "tts99_raw", "exact_best_seconds", "exact_gap"} <= set(header)
    assert load_instance(out / "instances" / "tiny-filters.bqm").sha256 == tiny.sha256


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--instances", "n100"], "filters instances are the built-in models' packaged ones"),
        (["--sizes", "100"], "drop it with --formulation filters"),
    ],
)
def test_cli_bench_filters_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list, message: str
) -> None:
    assert main(["bench", "--formulation", "filters", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_an_unshipped_ratio_names_the_shipped_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_instances, "packaged_filters_path", lambda name: tmp_path / f"{name}.bqm.xz")
    save_instance(tiny_filters_instance("lenet5-filters-16x"), tmp_path, compress=True)
    assert builtin_filters_instance("lenet5", 16.0).name == "lenet5-filters-16x"
    with pytest.raises(
        DataError, match=r"no packaged filters instance lenet5-filters-20x \(shipped: lenet5-filters-16x\)"
    ):
        builtin_filters_instance("lenet5", 20.0)


# --- the packaged instances -------------------------------------------------------------------------


@pytest.mark.parametrize("model", SHIPPED_MODELS)
@pytest.mark.parametrize("ratio", BUDGET_TARGET_RATIOS)
def test_the_packaged_instances_load_and_rebuild(model: str, ratio: float) -> None:
    name = filters_instance_name(model, ratio)
    path = packaged_filters_path(name)
    instance = builtin_filters_instance(model, ratio)  # hashes, the rebuilt BQM, the reference plan checked
    sidecar = json.loads(path.with_name(f"{name}.json").read_text())
    assert instance.name == name and instance.source.startswith(f"model:{model} (")
    assert isinstance(instance.formulation, FiltersFormulation) and instance.target_ratio == ratio
    assert (
        instance.num_variables == sidecar["num_variables"] and instance.num_interactions == sidecar["num_interactions"]
    )
    assert instance.spec.filter_gram.shape == (sum(g.size for g in instance.spec.groups),) * 2
    assert dimod.BinaryQuadraticModel.from_file(lzma.open(path)) == instance.bqm


def test_an_exact_run_short_of_e_star_is_never_marked_faster(tmp_path: Path) -> None:
    from test_bench import _record

    with ResultStore(tmp_path / "r.sqlite") as store:
        store.add_instance("hand", "h" * 64, 10, 20, -10.0, False, "hand-made", 0.0)
        store.add_run(_record("tabu", 0, [-11.0, -9.0], [1, 1], 5.0))
        store.add_run(_record("sa", 0, [-9.0], [1], 1.0))  # never at E*: TTS99 ∞
        store.add_run(_record("exact", 0, [-10.5], [1], 0.5, info={"solver_info": {"certified": False, "gap": 0.2}}))
        rows = {row["solver"]: row for row in summarize(store)}
    assert rows["exact"]["e_star"] == -11.0 and rows["exact"]["p_s_run"] == 0.0
    assert rows["exact"]["exact_faster_than_every_heuristic"] is False  # 0.5 s < ∞, but it never reached E*
    assert rows["exact"]["exact_certified"] is False and rows["exact"]["exact_gap"] == 0.2
