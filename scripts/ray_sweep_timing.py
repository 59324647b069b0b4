"""Wall time of one sweep in this process against the same sweep on a local Ray cluster (issue 20).

Runs ``qubocompress sweep`` twice into fresh folders, serially and with ``--workers N``; with
``--kill`` a watcher SIGKILLs one Ray worker while it runs a case (Ray retries it). Prints the cases
each run finished (every one must be there once), both wall times and their ratio. The model is
trained (or read from the cache) by a warm-up ``compress`` first, so neither run pays for it.

    .venv/bin/python scripts/ray_sweep_timing.py                      # 100 cases, lenet5 on digits
    .venv/bin/python scripts/ray_sweep_timing.py --ratios 4,8 --seeds 0,1 --workers 2 --kill
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from _timing import timed_cli

from qubocompress.sweeps import read_sweep


def run(command: list[str]) -> float:
    """Wall seconds of one qubocompress command."""
    return timed_cli(command, "ray_sweep_timing")


def _parent(pid: int) -> int:
    """The parent of process ``pid`` (0 when it is gone), from /proc."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def kill_own_worker(title: str, killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first process titled ``title`` (a Ray worker running such a task) that descends
    from this process (its own local cluster, never another Ray on the machine)."""
    me = os.getpid()
    while not stop.is_set() and not killed:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            pid = ancestor = int(entry.name)
            if title not in command:
                continue
            while ancestor > 1 and ancestor != me:
                ancestor = _parent(ancestor)
            if ancestor != me:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(pid)
            return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--data", default="digits", help="as qubocompress --data")
    parser.add_argument("--ratios", default="4,6,8,10,12")
    parser.add_argument("--routes", default="qubo,uniform")
    parser.add_argument("--solver", default="exact")
    parser.add_argument("--seeds", default=",".join(str(s) for s in range(10)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill", action="store_true", help="kill one Ray worker mid-case")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    common = ["--model", args.model, "--data", args.data, "--finetune-epochs", "0", "--quiet", "--no-report"]
    sweep = ["sweep", *common, "--routes", args.routes, "--solvers", args.solver, "--target-ratio", args.ratios]
    sweep += ["--seeds", args.seeds]
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        first_ratio = args.ratios.split(",")[0]
        warm = ["compress", *common, "--solver", args.solver, "--no-baseline", "--target-ratio", first_ratio]
        run([*warm, "--out", str(out / "warm")])
        serial = run([*sweep, "--out", str(out / "serial")])
        killed: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=kill_own_worker, args=("ray::run_case_task", killed, stop), daemon=True)
        if args.kill:
            watcher.start()
        try:
            on_ray = run([*sweep, "--workers", str(args.workers), "--out", str(out / "ray")])
        finally:
            stop.set()
        tables = {name: read_sweep(out / name) for name in ("serial", "ray")}
    for name, table in tables.items():
        names = [row.case for row in table.rows]
        ok = sum(row.ok for row in table.rows)
        print(f"{name}: {len(names)} cases ({len(set(names))} distinct), {ok} ok, {len(names) - ok} failed")
    if args.kill:
        print(f"killed Ray worker(s) mid-case: {killed or 'none seen'}")
    print(f"serial sweep: {serial:.1f} s; on {args.workers} Ray workers: {on_ray:.1f} s")
    print(f"ratio (serial / Ray): {serial / on_ray:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
