"""``qubocompress qpu-fit``: offline embedding into D-Wave topologies and the published timing model."""

from __future__ import annotations

import json
from pathlib import Path

import dimod
import pytest

pytest.importorskip("minorminer")
from dwave.embedding import verify_embedding  # noqa: E402

from qubocompress.bench.instances import instance_from_spec, save_instance  # noqa: E402
from qubocompress.bench.qpu_fit import fit_instances, fits_cells, not_fit_reasons, qpu_fit_path  # noqa: E402
from qubocompress.cli import main  # noqa: E402
from qubocompress.errors import DataError, SolverError  # noqa: E402
from qubocompress.problem.synthetic import synthetic_spec  # noqa: E402
from qubocompress.solvers.qpu_fit import (  # noqa: E402
    ADVANTAGE2_TIMING,
    ADVANTAGE_TIMING,
    fit_bqm,
    parse_topologies,
    parse_topology,
)

SMALL = ("pegasus:2", "zephyr:2,4")


def ring(n: int) -> dimod.BinaryQuadraticModel:
    """A sparse BQM: a ring of ``n`` variables."""
    return dimod.BinaryQuadraticModel(
        {i: 1.0 for i in range(n)}, {(i, (i + 1) % n): -1.0 for i in range(n)}, 0, "BINARY"
    )


def complete(n: int) -> dimod.BinaryQuadraticModel:
    return dimod.generators.uniform(n, "BINARY", seed=0)


@pytest.mark.parametrize("name", SMALL)
def test_a_sparse_bqm_fits_with_a_valid_embedding_and_its_chain_figures(name: str) -> None:
    bqm = ring(16)
    topology = parse_topology(name)
    fit = fit_bqm(bqm, topology, timeout=5, seed=1)
    assert fit.fits and fit.proven and fit.embedding is not None
    graph = topology.graph()
    assert verify_embedding(fit.embedding, list(bqm.quadratic), graph.edges)
    assert set(fit.embedding) == set(bqm.variables)
    lengths = [len(chain) for chain in fit.embedding.values()]
    assert fit.physical_qubits == sum(lengths) and fit.max_chain == max(lengths)
    assert fit.mean_chain == pytest.approx(sum(lengths) / len(lengths))
    assert (fit.variables, fit.couplings, fit.graph_qubits) == (16, 16, graph.number_of_nodes())
    assert fit.density == pytest.approx(16 / (16 * 15 / 2))
    assert [a.reads for a in fit.access] == [100, 1000]


def test_a_dense_bqm_up_to_the_largest_clique_is_clique_embedded() -> None:
    topology = parse_topology("pegasus:2")
    fit = fit_bqm(complete(8), topology)
    assert fit.fits and fit.method == "clique" and fit.largest_clique >= 8
    assert verify_embedding(fit.embedding, list(complete(8).quadratic), topology.graph().edges)


def test_a_complete_graph_above_the_clique_limit_does_not_fit_and_says_why() -> None:
    topology = parse_topology("pegasus:2")  # 40 qubits, 164 couplers, largest clique 10
    fit = fit_bqm(complete(15), topology)  # 105 couplings: the counting bounds do not decide
    assert not fit.fits and not fit.proven and fit.method is None and fit.access == ()
    assert f"15 variables > the largest clique ({fit.largest_clique})" in fit.reason
    assert fit.largest_clique < 15
    proof = fit_bqm(complete(30), topology)  # 435 couplings > 164 couplers: impossible
    assert not proof.fits and proof.proven and "435 couplings > 164 couplers" in proof.reason
    too_many = fit_bqm(ring(41), topology)
    assert not too_many.fits and too_many.proven and "41 variables > 40 qubits" in too_many.reason


def test_a_search_that_finds_nothing_says_how_long_it_tried_and_that_it_is_no_proof() -> None:
    # A star of 40: passes the counting bounds of P2 (40 qubits) but needs a degree-39 qubit.
    star = dimod.BinaryQuadraticModel({i: 0.0 for i in range(40)}, {(0, i): 1.0 for i in range(1, 40)}, 0, "BINARY")
    fit = fit_bqm(star, parse_topology("pegasus:2"), timeout=0.5)
    assert not fit.fits and not fit.proven
    assert "no embedding found within 0.5 s (minorminer stopped after" in fit.reason and "not a proof" in fit.reason


def test_access_time_is_the_published_timing_model() -> None:
    # programming + reads × (anneal 20 + readout + delay) µs, at the lowest and highest readout.
    assert ADVANTAGE_TIMING.access_seconds(100) == pytest.approx(
        ((14_200 + 100 * 58.5) * 1e-6, (14_200 + 100 * 213.5) * 1e-6)
    )
    assert ADVANTAGE2_TIMING.access_seconds(1000) == pytest.approx((0.1312, 0.2152))
    fit = fit_bqm(ring(8), parse_topology("advantage2"))
    estimate = fit.access_for(1000)
    assert estimate is not None and (estimate.low_seconds, estimate.high_seconds) == pytest.approx((0.1312, 0.2152))


def test_topology_names() -> None:
    assert [t.name for t in parse_topologies(["advantage,zephyr:2,4", "pegasus:3", "advantage"])] == [
        "advantage",
        "zephyr:2,4",
        "pegasus:3",
    ]
    assert parse_topology("advantage").graph().number_of_nodes() == 5640  # the ideal P16
    assert parse_topology("ADVANTAGE2").label == "Zephyr Z12 (T=4)"
    for bad in ("chimera:4", "pegasus:1", "zephyr:2", "advantage3", "pegasus:99"):
        with pytest.raises(SolverError, match=r"unknown topology .*; choose from advantage \(Pegasus P16\)"):
            parse_topology(bad)


def test_a_corrupt_or_missing_file_is_one_data_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.bqm"
    corrupt.write_bytes(b"DIMODBQM\x02\x00garbage")
    with pytest.raises(DataError, match="bad.bqm is corrupt: not a readable dimod BQM file"):
        qpu_fit_path(corrupt, parse_topologies(["pegasus:2"]))
    with pytest.raises(DataError, match="holds no qubo.bqm"):
        qpu_fit_path(tmp_path, parse_topologies(["pegasus:2"]))


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    with ring(12).to_file() as handle:
        (run / "qubo.bqm").write_bytes(handle.read())
    exact = {"energy": -1.0, "certified": True, "gap": 0.0, "method": "per-component enumeration", "seconds": 0.0042}
    (run / "metrics.json").write_text(json.dumps({"qubo": {"exact": exact}}))
    return run


def test_cli_on_a_run_folder_reads_the_exact_time_from_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _run_folder(tmp_path)
    assert main(["qpu-fit", str(run), "--topology", "pegasus:2", "--topology", "zephyr:2,4", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] == {
        "seconds": 0.0042,
        "method": "per-component enumeration",
        "certified": True,
        "where": "metrics.json",
    }
    assert [f["topology"] for f in report["fits"]] == list(SMALL)
    assert all(f["fits"] and f["physical_qubits"] >= 12 for f in report["fits"])
    assert "no QPU was run" in report["note"]
    assert main(["qpu-fit", str(run), "--topology", "pegasus:2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "12 variables, 12 couplings" in text and "exact method (per-component enumeration, certified" in text


def test_cli_on_a_bench_instance_times_the_exact_reference(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    instance = instance_from_spec("tiny", synthetic_spec(channels=(4, 6), seed=0), "synthetic", 4.0)
    path = save_instance(instance, tmp_path)
    assert main(["qpu-fit", str(path), "--topology", "zephyr:2,4", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"]["where"] == "timed now" and report["exact"]["certified"]
    assert report["variables"] == instance.num_variables


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--topology", "chimera:4"], "unknown topology 'chimera:4'; choose from advantage"),
        (["--timeout", "0"], "the embedding timeout must be a number of seconds > 0"),
        (["--topology", ","], "--topology: give names such as advantage,advantage2"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    run = _run_folder(tmp_path)
    assert main(["qpu-fit", str(run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qubocompress: error: ") and message in err and err.count("\n") == 1


def test_cli_corrupt_bqm_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "x.bqm"
    path.write_bytes(b"not a bqm")
    assert main(["qpu-fit", str(path), "--topology", "pegasus:2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.bqm is corrupt" in err


def test_the_docs_table_script_prints_a_row_per_instance(monkeypatch, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "qpu_fit_table", Path(__file__).parents[1] / "scripts/qpu_fit_table.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tiny = instance_from_spec("tiny", synthetic_spec(channels=(4, 6), seed=0), "synthetic", 4.0)
    monkeypatch.setattr(script, "_builders", lambda: [("tiny", lambda: tiny)])
    assert script.main(["--timeout", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| instance | variables |") and out[2].startswith(f"| tiny | {tiny.num_variables} |")
    assert "no QPU was run" in out[-1]
    assert script.main(["--timeout", "-1"]) == 2
    assert "timeout must be a number of seconds > 0" in capsys.readouterr().err


def test_bench_table_rows_per_instance_with_the_exact_time() -> None:
    class Named:
        def __init__(self, name: str, bqm: dimod.BinaryQuadraticModel) -> None:
            self.name, self.bqm = name, bqm

    results = fit_instances(
        [Named("ring", ring(10)), Named("k30", complete(30))], {"ring": 0.5}, parse_topologies(["pegasus:2"])
    )
    headers, rows = fits_cells(results)
    assert headers[:6] == ["instance", "variables", "couplings", "density", "pegasus:2 qubits", "pegasus:2 max chain"]
    assert headers[6:] == [
        "pegasus:2 fits",
        "pegasus:2 QPU s (100 reads)",
        "pegasus:2 QPU s (1000 reads)",
        "pegasus:2 embed s",
        "exact s",
    ]
    assert rows[0][:4] == ["ring", "10", "10", "0.222"] and rows[0][6] == "yes" and rows[0][-1] == "0.5"
    assert rows[1][:9] == ["k30", "30", "435", "1.000", "-", "-", "no", "-", "-"] and rows[1][10] == "-"
    assert not_fit_reasons(results) == [
        "k30 on pegasus:2: 435 couplings > 164 couplers of the graph (one each at least)"
    ]
