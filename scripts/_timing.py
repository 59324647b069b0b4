"""What the timing scripts share: one qubocompress command run in a child process, timed."""

from __future__ import annotations

import subprocess
import sys
import time


def timed_cli(command: list[str], script: str) -> float:
    """Wall seconds of ``qubocompress COMMAND`` (its output hidden); a failure ends ``script`` in one line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "qubocompress.cli", *command], capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["(no message)"]
        raise SystemExit(f"{script}: error: {' '.join(command)} failed: {lines[-1]}")
    return time.perf_counter() - start
