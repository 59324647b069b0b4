"""Sweep cases as Ray tasks: a local 2-worker cluster, a worker killed mid-case, workers that die every
time or cannot import a task's module, and the one-line errors of bad cluster settings."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from qubocompress import cluster as cluster_module
from qubocompress.cluster import Cluster, Crashed, connect
from qubocompress.errors import ClusterError
from qubocompress.sweeps import STORE_FILE, read_sweep

from test_pipeline import assert_one_line_error, data_dir, run  # noqa: F401  (data_dir is a fixture)
from test_scripts import load_script
from test_sweep import sweep_args

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")


def test_a_sweep_on_two_ray_workers_survives_a_worker_killed_mid_case(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=load_script("ray_sweep_timing").kill_one_case_worker, args=(killed, stop), daemon=True
    )
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


def crash_on_odd(value: int) -> int:
    """A task that kills its own worker for odd values (pickled by value, see the test)."""
    if value % 2:
        os._exit(1)
    return 10 * value


def test_a_task_whose_worker_dies_every_time_is_crashed_and_a_missing_module_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--workers", "0"), ("--workers must be a whole number >= 1",)),
        (("--ray-address", "nowhere"), ("--ray-address must be auto, ray://HOST:PORT or HOST:PORT",)),
        (("--ray-address", "ray://127.0.0.1:1"), ("cannot reach the Ray cluster at ray://127.0.0.1:1",)),
    ],
)
def test_bad_cluster_settings_are_one_line_before_any_work(
    flags: tuple[str, ...], needles: tuple[str, ...], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(*sweep_args(data_dir, tmp_path / "sweep", "--target-ratio", "4", *flags)) == 2
    assert_one_line_error(capsys, *needles)
    assert not (tmp_path / "sweep" / "cases").exists()


def test_asking_for_ray_without_it_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cluster_module.importlib.util.find_spec
    monkeypatch.setattr(cluster_module.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name))
    with pytest.raises(ClusterError, match=r"pip install 'qubocompress\[ray\]'"):
        Cluster(workers=2).check()
    Cluster().check()  # no cluster asked for: nothing to check
