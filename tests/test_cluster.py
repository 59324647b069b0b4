"""Sweep cases and bench runs as Ray tasks: a local 2-worker cluster, a worker killed mid-case or
mid-run, workers that die every time (a failed row, once) or cannot import a task's module, a
driver killed mid-sweep (the rerun runs each case once), and the one-line errors of bad cluster
settings, before any folder is made (with or without Ray)."""

from __future__ import annotations

import concurrent.futures
import http.server
import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qubocompress import cluster as cluster_module
from qubocompress import sweeps as sweep_module
from qubocompress.bench.instances import save_instance
from qubocompress.bench.runner import SweepConfig
from qubocompress.bench.runner import run_sweep as bench_sweep
from qubocompress.bench.store import ResultStore
from qubocompress.cli import main
from qubocompress.cluster import Cluster, Crashed, connect
from qubocompress.errors import ClusterError
from qubocompress.sweeps import STORE_FILE, read_sweep

from test_bench import tiny_instance
from test_pipeline import assert_one_line_error, data_dir, run  # noqa: F401  (data_dir is a fixture)
from test_scripts import load_script
from test_sweep import kill_when, recorded, sweep_args

kill_own_worker = load_script("ray_sweep_timing").kill_own_worker

# Only the tests that start Ray need it: the one-line refusals below run (and must pass) without it.
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the Ray workers in /proc (Linux)")
def test_a_sweep_on_two_ray_workers_survives_a_worker_killed_mid_case(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_own_worker, args=("ray::run_case_task", killed, stop), daemon=True)
    killer.start()
    try:
        args = sweep_args(data_dir, out, "--target-ratio", "4,6,8", "--routes", "qubo,uniform", "--workers", "2")
        assert run(*args) == 0
    finally:
        stop.set()
        killer.join()
    assert killed, "no case's worker was seen to kill"
    with sqlite3.connect(out / STORE_FILE) as db:
        names = [name for (name,) in db.execute("SELECT name FROM cases")]
    assert len(names) == len(set(names)) == 6  # every case once, the killed one retried by Ray
    table = read_sweep(out)
    assert all(row.ok for row in table.rows), [row.reason for row in table.rows if not row.ok]
    published = sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith("."))
    assert published == sorted(names)
    for row in table.rows:
        folder = out / "cases" / row.case
        assert (folder / "model.safetensors").stat().st_size == row.model_file_bytes
        assert row.ratio >= float(row.target.rstrip("x"))
    assert not list((out / "cases").glob(".*.partial-*"))


@needs_ray
@pytest.mark.slow
def test_a_ray_sweep_on_cuda_runs_on_the_cluster_gpus_or_falls_back_to_its_cpus_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    asked: list[int] = []  # the GPUs each sweep's tasks held
    real_run = cluster_module.Session.run_unordered

    def run_unordered(self: cluster_module.Session, *args: object, gpus: int = 0) -> object:
        asked.append(gpus)
        return real_run(self, *args, gpus=gpus)  # type: ignore[arg-type]

    monkeypatch.setattr(cluster_module.Session, "run_unordered", run_unordered)
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda **options: real_init(**options, num_gpus=0))  # whatever this box has
    args = ("--target-ratio", "4,6", "--routes", "uniform", "--workers", "2", "--device", "cuda")
    assert run(*sweep_args(data_dir, tmp_path / "cpus", *args)) == 0  # a cluster of CPUs: one warning, even --quiet
    warning = "warning: --device cuda: a local Ray cluster of 2 workers has no GPUs; the cases run on its CPUs"
    assert capsys.readouterr().err.splitlines() == [warning]
    assert all(row.ok for row in read_sweep(tmp_path / "cpus").rows)
    # a cluster with a GPU (one declared to Ray; torch on the worker sees none and uses its CPU): each case's
    # task holds it, so they run one at a time, and every case finishes
    monkeypatch.setattr(ray, "init", lambda **options: real_init(**options, num_gpus=1))
    assert run(*sweep_args(data_dir, tmp_path / "gpu", *args)) == 0
    assert capsys.readouterr().err == ""  # this process used no GPU and fell back from none
    assert asked == [0, 1]
    rows = read_sweep(tmp_path / "gpu").rows
    assert [row.case for row in rows] == ["4x-uniform-seed0", "6x-uniform-seed0"] and all(row.ok for row in rows)
    for row in rows:
        metrics = json.loads((tmp_path / "gpu" / "cases" / row.case / "metrics.json").read_text())
        assert metrics["config"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the worker's


DOOMED_CASE = "6x-uniform-seed0"


def die_on_the_doomed_case(case: sweep_module.SweepCase, inputs: sweep_module.CaseInputs) -> sweep_module.CaseOutput:
    """The sweep's Ray task, whose worker dies on every try of DOOMED_CASE (pickled by value)."""
    if case.name == DOOMED_CASE:
        os._exit(1)
    return sweep_module.run_case_task(case, inputs)


@needs_ray
@pytest.mark.slow
def test_a_sweep_case_whose_worker_dies_on_every_try_is_recorded_failed_with_its_reason_once(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(sweep_module, "run_case_task", die_on_the_doomed_case)
    out = tmp_path / "sweep"
    args = sweep_args(data_dir, out, "--target-ratio", "4,6", "--routes", "uniform", "--workers", "2")
    assert run(*args) == 0
    rows = {row.case: row for row in read_sweep(out).rows}
    assert list(rows) == ["4x-uniform-seed0", DOOMED_CASE] and rows["4x-uniform-seed0"].ok
    tries = cluster_module.DEFAULT_RETRIES + 1
    assert rows[DOOMED_CASE].status == "failed" and f"its Ray worker died {tries} times" in rows[DOOMED_CASE].reason
    assert sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith(".")) == ["4x-uniform-seed0"]
    # rerun: both are recorded, so nothing runs again (no cluster is even started) and nothing is added
    monkeypatch.setattr(sweep_module, "connect", _no_connect)
    before = [(r.case, r.status, r.reason) for r in read_sweep(out).rows]
    assert run(*args) == 0
    assert [(r.case, r.status, r.reason) for r in read_sweep(out).rows] == before


@needs_ray
@pytest.mark.slow
def test_a_ray_sweep_whose_driver_is_killed_resumes_running_each_case_once(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = sweep_args(data_dir, out, "--target-ratio", "4,6,8,10", "--routes", "uniform", "--workers", "2")
    command = [sys.executable, "-m", "qubocompress.cli", *(str(a) for a in args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # kill it once a case is recorded, while the others run on its cluster
    kill_when(command, env, lambda: (out / STORE_FILE).exists() and bool(recorded(out)), seconds=600, poll=0.05)
    done_before = recorded(out)
    assert 1 <= len(done_before) < 4
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = recorded(out)
    names = [name for name, _, _ in after]
    assert len(names) == len(set(names)) == 4 and after[: len(done_before)] == done_before
    assert all(status == "ok" for _, status, _ in after)
    assert not list((out / "cases").glob(".*.partial-*"))
    assert sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith(".")) == sorted(names)


@needs_ray
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the Ray workers in /proc (Linux)")
def test_a_bench_on_two_ray_workers_writes_every_run_once_with_a_worker_killed_mid_run(tmp_path: Path) -> None:
    instances = save_instance(tiny_instance(), tmp_path / "instances")
    out = tmp_path / "bench"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_own_worker, args=("ray::run_bench_task", killed, stop), daemon=True)
    killer.start()
    try:
        argv = ["bench", "--instances", instances, "--solvers", "sa,ga", "--seeds", "3", "--out", out]
        argv += ["--solver-option", "sa:num_reads=2000", "--solver-option", "sa:num_sweeps=1000", "--workers", "2"]
        assert main([str(word) for word in argv]) == 0
    finally:
        stop.set()
        killer.join()
    assert killed, "no run's worker was seen to kill"
    with ResultStore(out / "results.sqlite") as store:
        runs = store.runs()
    keys = [(run.key.solver, run.key.seed) for run in runs]
    assert sorted(keys) == [(solver, seed) for solver in ("ga", "sa") for seed in range(3)]  # each once
    assert all(run.status == "ok" for run in runs), [run.info.get("error") for run in runs]
    # the budgeted ga runs were sent once the sa runs were stored: their equal budget matched sa's
    assert all(run.info["budget"].startswith("time limit") for run in runs if run.key.solver == "ga")


@needs_ray
def test_a_bench_on_ray_records_what_it_records_in_this_process(tmp_path: Path) -> None:
    config = SweepConfig(solvers=["sa", "tabu"], seeds=(0, 1), solver_options={"sa": {"num_reads": 20}})
    records = {}
    for where, cluster in (("here", None), ("ray", Cluster(workers=2))):
        with ResultStore(tmp_path / f"{where}.sqlite") as store:
            outcome = bench_sweep([tiny_instance()], config, store, progress=False, cluster=cluster)
            assert outcome.executed == 4 and outcome.reused == 0
            records[where] = {(r.key.solver, r.key.seed): r for r in store.runs()}
            assert store.instances()[0]["e_star"] is not None
    assert records["ray"].keys() == records["here"].keys()
    for key, here in records["here"].items():
        ray_record = records["ray"][key]
        assert ray_record.status == here.status == "ok"
        assert ray_record.energies.tolist() == here.energies.tolist() and ray_record.successes == here.successes


def slow_square_with(offset: int) -> Callable[[int], int]:
    """A pool actor's function: the square of a value plus ``offset``, slower for small values (so
    that the results come back out of order)."""

    def square(value: int) -> int:
        time.sleep(0.05 * (4 - value % 4))
        return value * value + offset

    return square


def crash_on_odd(value: int) -> int:
    """A task that kills its own worker for odd values (pickled by value, see the test)."""
    if value % 2:
        os._exit(1)
    return 10 * value


@needs_ray
def test_a_task_whose_worker_dies_every_time_is_crashed_a_missing_module_is_one_line_and_a_pool_keeps_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # a module only this process can import: the workers cannot, as on a cluster without qubocompress
    (tmp_path / "driver_only_module.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_module

    with connect(Cluster(workers=2, retries=1)) as session:
        assert session.cpus == 2
        results = dict(session.run_unordered(crash_on_odd, [(0,), (1,), (2,)], {}))
        assert results[0] == 0 and results[2] == 20
        assert isinstance(results[1], Crashed) and "died 2 times" in results[1].reason
        with pytest.raises(ClusterError, match="cannot import 'driver_only_module'") as error:
            list(session.run_unordered(driver_only_module.double, [(1,)], {}))
        assert "\n" not in str(error.value)
        pool = session.pool(slow_square_with, (session.put(7),), 2)  # its actors hold both CPUs: last
        assert pool.size == 2 and pool.map(list(range(9))) == [v * v + 7 for v in range(9)]


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--workers", "0"), ("--workers must be a whole number >= 1",)),
        (("--workers", str(cluster_module.usable_cpus() + 1)), ("is more than this machine's", "--ray-address")),
        (("--ray-address", "nowhere"), ("--ray-address must be auto, ray://HOST:PORT or HOST:PORT",)),
        # getaddrinfo takes 70000 as 70000 - 65536: a cluster on port 4464 would have been reached
        (("--ray-address", "127.0.0.1:70000"), ("--ray-address 127.0.0.1:70000: the port must be 1 to 65535",)),
        # (Ray found, past Cluster.check: the address is tried, the device weighed)
        pytest.param(
            ("--ray-address", "127.0.0.1:1"), ("cannot reach the Ray cluster at 127.0.0.1:1",), marks=needs_ray
        ),
        pytest.param(
            ("--workers", "2", "--device", "cuda:1"),
            ("--device cuda:1 names one GPU of this machine",),
            marks=needs_ray,
        ),
    ],
)
def test_bad_cluster_settings_are_one_line_before_any_work(
    flags: tuple[str, ...],
    needles: tuple[str, ...],
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sweep_module, "connect", _no_connect)
    assert run(*sweep_args(data_dir, tmp_path / "sweep", "--target-ratio", "4", *flags)) == 2
    assert_one_line_error(capsys, *needles)
    assert not (tmp_path / "sweep").exists()  # no store, no folder: refused before any of it


def _no_connect(cluster: Cluster) -> None:
    raise AssertionError(f"connected to {cluster.describe()} for a sweep that should have been refused")


def hide_module(monkeypatch: pytest.MonkeyPatch, hidden: str) -> None:
    """Make ``cluster`` see ``hidden`` as not installed (its find_spec says None)."""
    real = cluster_module.importlib.util.find_spec
    monkeypatch.setattr(cluster_module.importlib.util, "find_spec", lambda name: None if name == hidden else real(name))


def test_a_ray_client_address_without_ray_client_names_its_extra_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_module(monkeypatch, "grpc")
    with pytest.raises(ClusterError, match=r"pip install 'ray\[client\]'"):
        Cluster(address="ray://head:10001").check()
    Cluster(address="head:6379").check()  # a GCS address needs no Ray Client
    # a port that answers, as a Ray Client server's would: refused at once, not a traceback from ray.init
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"ray://127.0.0.1:{server.getsockname()[1]}"
        assert run(*sweep_args(data_dir, tmp_path / "sweep", "--target-ratio", "4", "--ray-address", address)) == 2
    assert_one_line_error(capsys, f"--ray-address {address} connects through Ray Client", "ray[client]")
    assert not (tmp_path / "sweep").exists()


@needs_ray
def test_a_port_that_answers_but_is_not_ray_is_one_line_not_a_hang(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("grpc")
    monkeypatch.setattr(sweep_module, "connect", _no_connect)
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT", 0.5)
    quiet = type("Quiet", (http.server.BaseHTTPRequestHandler,), {"log_message": lambda *args: None})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), quiet) as web:  # as a dashboard's port would
        threading.Thread(target=web.serve_forever, daemon=True).start()
        for address in (f"127.0.0.1:{web.server_address[1]}", f"ray://127.0.0.1:{web.server_address[1]}"):
            assert run(*sweep_args(data_dir, tmp_path / "sweep", "--target-ratio", "4", "--ray-address", address)) == 2
            assert_one_line_error(capsys, f"{address} answers, but not as a Ray cluster does", "(8265)")
            assert not (tmp_path / "sweep").exists()
        web.shutdown()
    import grpc

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        Cluster(address=f"127.0.0.1:{port}").reach()  # a gRPC server, as Ray's GCS is: passes
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # and not through a proxy, as Ray does not
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
        Cluster(address=f"127.0.0.1:{port}").reach()
    finally:
        server.stop(None)


@needs_ray
def test_a_refused_gcs_address_names_token_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refused(**options: object) -> None:  # what ray.init says when the GCS rejects the token
        raise ConnectionError(f"Failed to connect to Ray cluster at {options['address']}")

    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(Cluster, "reach", lambda self: None)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    for address, hinted in (("10.0.0.1:6379", True), ("auto", False), ("ray://10.0.0.1:10001", False)):
        with pytest.raises(ClusterError) as error, connect(Cluster(address=address)):
            pass
        message = str(error.value)
        assert message.startswith(f"cannot connect to the Ray cluster at {address}: Failed to connect")
        assert ("set RAY_AUTH_MODE=token" in message) is hinted and "\n" not in message
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # already set: the hint would not help
    with pytest.raises(ClusterError) as error, connect(Cluster(address="10.0.0.1:6379")):
        pass
    assert "RAY_AUTH_MODE" not in str(error.value)


def test_a_session_counts_the_gpus_a_one_cpu_one_gpu_task_can_use() -> None:
    class Nodes:
        def __init__(self, *nodes: dict[str, object]) -> None:
            self._nodes = list(nodes)

        def nodes(self) -> list[dict[str, object]]:
            return self._nodes

    def node(alive: bool, **resources: float) -> dict[str, object]:
        return {"Alive": alive, "Resources": resources}

    def gpus(*nodes: dict[str, object]) -> int:
        return cluster_module.Session(Nodes(*nodes), Cluster(workers=1)).gpus

    assert gpus(node(True, CPU=4.0)) == 0
    assert gpus(node(True, CPU=4.0, GPU=2.0), node(True, CPU=8.0, GPU=1.0)) == 3
    assert gpus(node(True, CPU=0.0, GPU=4.0), node(True, CPU=8.0)) == 0  # GPUs on a CPU-less head: no task fits
    assert gpus(node(False, CPU=8.0, GPU=4.0), node(True, CPU=8.0, GPU=1.0)) == 1  # a dead node counts nothing


def test_asking_for_ray_without_it_names_the_extra(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_module(monkeypatch, "ray")
    with pytest.raises(ClusterError, match=r"pip install 'qubocompress\[ray\]'"):
        Cluster(workers=2).check()
    Cluster().check()  # no cluster asked for: nothing to check
    assert run(*sweep_args(data_dir, tmp_path / "sweep", "--target-ratio", "4", "--workers", "2")) == 2
    assert_one_line_error(capsys, "running on Ray needs the ray package: pip install 'qubocompress[ray]'")
    assert not (tmp_path / "sweep").exists()
