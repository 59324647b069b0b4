"""Benchmark plots (matplotlib, Agg backend, PNG): TTS99 vs size, success probability, energy histograms."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from qubocompress.solvers.metrics import residual_gaps  # noqa: E402
from qubocompress.bench.store import ResultStore  # noqa: E402
from qubocompress.io import write_bytes_atomic  # noqa: E402

# Reads at E* (gap 0) are drawn in the first histogram bin, at this gap.
GAP_FLOOR = 1e-10


def _save(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _solvers(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["solver"] for row in rows))


def plot_tts_vs_variables(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """TTS99 (seconds, log) against the number of variables (log), one line per solver.

    Solvers that never reached E* on an instance have no point there; the legend counts them.
    """
    figure, axis = plt.subplots(figsize=(7, 4.5))
    plotted = False
    for solver in _solvers(rows):
        points = sorted(
            (row["variables"], row["tts99"]) for row in rows if row["solver"] == solver and row["status"] == "ok"
        )
        finite = [(n, t) for n, t in points if math.isfinite(t) and t > 0]
        missed = len(points) - len(finite)
        label = solver + (f" (missed E* on {missed})" if missed else "")
        if finite:
            axis.plot(*zip(*finite), marker="o", label=label)
            plotted = True
        elif points:
            axis.plot([], [], marker="o", label=label)
    if plotted:  # a log axis without a positive point cannot be drawn
        axis.set_xscale("log")
        axis.set_yscale("log")
    else:
        axis.text(0.5, 0.5, "no solver reached E* on any instance", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("variables")
    axis.set_ylabel("TTS99 (s; per read, or per run where reads are not independent)")
    axis.set_title("time to solution (99 %) vs problem size")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize="small")
    return _save(figure, Path(path))


def plot_success_probability(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bars of p_s per read (top) and per run (bottom), per instance and solver."""
    instances = list(dict.fromkeys(row["instance"] for row in rows))
    solvers = _solvers(rows)
    figure, axes = plt.subplots(2, 1, figsize=(max(6, 1.2 * len(instances) * max(1, len(solvers)) / 3), 6), sharex=True)
    width = 0.8 / max(len(solvers), 1)
    x = np.arange(len(instances))
    for j, solver in enumerate(solvers):
        by_instance = {row["instance"]: row for row in rows if row["solver"] == solver and row["status"] == "ok"}
        for axis, key in zip(axes, ("p_s_read", "p_s_run")):
            values = [by_instance[name][key] if name in by_instance else 0.0 for name in instances]
            axis.bar(x + (j - (len(solvers) - 1) / 2) * width, values, width, label=solver)
    for axis, title in zip(axes, ("success probability per read", "success probability per run (seed)")):
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("p_s")
        axis.set_title(title)
        axis.grid(True, axis="y", alpha=0.3)
    axes[1].set_xticks(x, instances, rotation=30, ha="right")
    axes[0].legend(fontsize="small", ncol=min(len(solvers), 5))
    return _save(figure, Path(path))


def plot_energy_histograms(store: ResultStore, rows: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Per instance, a histogram of every read's residual gap ``(E − E*)/|E*|`` per solver.

    Reads at E* fall in the first bin (drawn at ``GAP_FLOOR``). Files: ``energy-<instance>.png``.
    """
    folder = Path(folder)
    written = []
    for instance in dict.fromkeys(row["instance"] for row in rows):
        instance_rows = [r for r in rows if r["instance"] == instance and r["status"] == "ok"]
        if not instance_rows or instance_rows[0]["e_star"] is None:
            continue
        e_star = instance_rows[0]["e_star"]
        wanted = {(r["instance_sha256"], r["solver"], r["options_hash"]) for r in instance_rows}
        samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for run in store.runs(instance=instance):
            key = (run.key.instance_sha256, run.key.solver, run.key.options_hash)
            if key not in wanted or run.status != "ok" or run.energies.size == 0:
                continue
            gaps = np.maximum(np.nan_to_num(residual_gaps(run.energies, e_star), posinf=1e6), GAP_FLOOR)
            old_gaps, old_counts = samples.get(run.key.solver, (np.zeros(0), np.zeros(0)))
            samples[run.key.solver] = (np.concatenate([old_gaps, gaps]), np.concatenate([old_counts, run.occurrences]))
        if not samples:
            continue
        largest = max(float(g.max()) for g, _ in samples.values())
        bins = np.geomspace(GAP_FLOOR / 2, max(largest, GAP_FLOOR * 10) * 2, 40)
        figure, axis = plt.subplots(figsize=(7, 4))
        for solver, (gaps, counts) in samples.items():
            axis.hist(gaps, bins=bins, weights=counts / counts.sum(), histtype="step", linewidth=1.5, label=solver)
        axis.set_xscale("log")
        axis.set_xlabel(f"residual gap (E − E*)/|E*|  (reads at E* drawn at {GAP_FLOOR:g})")
        axis.set_ylabel("share of reads")
        axis.set_title(f"{instance}: energies of all reads")
        axis.legend(fontsize="small")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in instance)
        written.append(_save(figure, folder / f"energy-{safe}.png"))
    return written


def write_plots(store: ResultStore, rows: Sequence[dict[str, Any]], folder: str | Path) -> list[Path]:
    """Every plot of a sweep into ``folder``; returns the files written."""
    folder = Path(folder)
    if not rows:
        return []
    paths = [
        plot_tts_vs_variables(rows, folder / "tts99_vs_variables.png"),
        plot_success_probability(rows, folder / "success_probability.png"),
    ]
    return paths + plot_energy_histograms(store, rows, folder)
