"""The report's figures: matplotlib (Agg) PNGs made in memory, each with its file name and caption.

The style is the benchmark's (:mod:`qubocompress.bench.plots`, whose plots a bench report reuses):
light grids, small legends, 120 dpi. A route keeps its colour in every figure of a report.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

from qubocompress.bench.plots import (  # noqa: E402
    GAP_FLOOR,
    plot_energy_histograms,
    plot_success_probability,
    plot_tts_vs_variables,
)
from qubocompress.bench.store import ResultStore  # noqa: E402
from qubocompress.report.sources import TIME_STAGES, BenchSource, Case, PlanPair  # noqa: E402
from qubocompress.solvers.metrics import residual_gaps  # noqa: E402

DPI = 120
# The most QUBO cases whose reads one energy figure shows (one panel each).
MAX_ENERGY_PANELS = 4
T = TypeVar("T")


@dataclass(frozen=True)
class Figure:
    """One figure of a report.

    Attributes:
        name: its PNG's file name beside ``report.html`` (``report-*.png``).
        png: the PNG's bytes.
        caption: what it shows, plain text (escaped when embedded).
    """

    name: str
    png: bytes
    caption: str


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def route_colors(routes: Sequence[str]) -> dict[str, str]:
    """One matplotlib cycle colour per route, in the order given."""
    return {route: f"C{n % 10}" for n, route in enumerate(dict.fromkeys(routes))}


@dataclass(frozen=True)
class Point:
    """One compressed model on the accuracy figure.

    Attributes:
        route, target: what made it.
        file_bytes: bytes of its ``model.safetensors`` (None: no file was written, a run's baseline).
        ratio: fp32 weight bits over the plan's.
        after, before: test top-1 (%) after and before fine-tuning.
    """

    route: str
    target: str
    file_bytes: int | None
    ratio: float
    after: float
    before: float

    @classmethod
    def of(cls, case: Case) -> Point:
        """The point of a case."""
        c = case.compressed
        after, before = 100 * c["test_acc"], 100 * c["test_acc_before_finetune"]
        return cls(case.route, case.target, int(c["model_file_bytes"]), float(c["ratio"]), after, before)


def pareto_front(
    items: Sequence[T], size: Callable[[T], float], accuracy: Callable[[T], float], smaller_is_better: bool
) -> list[T]:
    """The items that no other item beats on both size and accuracy (higher is better), best size
    first; of equal ones, the first."""
    sign = 1.0 if smaller_is_better else -1.0
    front: list[T] = []
    for item in sorted(items, key=lambda i: (sign * size(i), -accuracy(i))):
        if not front or accuracy(item) > accuracy(front[-1]):
            front.append(item)
    return front


class _LogTicks(LogFormatter):
    """Log-axis tick labels in ``text``'s words, on the ticks matplotlib would label."""

    def __init__(self, text: Callable[[float], str]) -> None:
        super().__init__(labelOnlyBase=False)
        self.text = text

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.text(x) if super().__call__(x, pos) else ""


def _bytes_text(value: float) -> str:
    """A tick of a bytes axis: ``800 B``, ``30 kB``, ``1.5 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{value:g} B"


def _ratio_text(value: float) -> str:
    """A tick of a ratio axis: ``4x``."""
    return f"{value:g}x"


# The accuracy figure's columns: (Point attribute, x label, smaller is better, tick text) and rows:
# (Point attribute, y label, filled markers).
SIZE_AXES = (
    ("file_bytes", "model.safetensors on disk (log)", True, _bytes_text),
    ("ratio", "weight-bit ratio vs fp32 (log)", False, _ratio_text),
)
ACCURACY_ROWS = (("after", "top-1 after fine-tuning (%)", True), ("before", "top-1 before fine-tuning (%)", False))


def accuracy_figure(
    points: Sequence[Point], fp32: float, colors: dict[str, str], baseline: Point | None = None
) -> Figure:
    """Top-1 against on-disk bytes (left) and the weight-bit ratio (right), after fine-tuning (top,
    filled) and before (bottom, hollow): per route and target the mean over seeds with min-max bars,
    each seed a faint dot; fp32 (%, ``fp32`` in 0..1) as a line; the Pareto front of all points."""
    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex="col", sharey="row")
    everything = [*points, *([baseline] if baseline is not None else [])]
    for row, (accuracy, ylabel, filled) in enumerate(ACCURACY_ROWS):
        for column, (size, xlabel, smaller_is_better, ticks) in enumerate(SIZE_AXES):
            axis = axes[row, column]
            for route in colors:
                _route_means(axis, [p for p in points if p.route == route], size, accuracy, colors[route], filled)
            if baseline is not None and getattr(baseline, size) is not None:
                axis.plot(
                    getattr(baseline, size),
                    getattr(baseline, accuracy),
                    "s",
                    ms=8,
                    color="0.35",
                    mfc="0.35" if filled else "white",
                    ls="none",
                    label="uniform baseline of the run",
                )
            placed = [p for p in everything if getattr(p, size) is not None]
            front = pareto_front(placed, attrgetter(size), attrgetter(accuracy), smaller_is_better)
            axis.plot(
                [getattr(p, size) for p in front],
                [getattr(p, accuracy) for p in front],
                "k--",
                lw=1,
                marker="D",
                ms=11,
                mfc="none",
                mew=1.2,
                label="Pareto front",
                zorder=5,
            )
            axis.axhline(100 * fp32, color="k", lw=0.8, label=f"fp32 ({100 * fp32:.2f}%)")
            axis.set_xscale("log")
            _widen(axis, [getattr(p, size) for p in placed])
            axis.xaxis.set_major_formatter(_LogTicks(ticks))
            axis.xaxis.set_minor_formatter(_LogTicks(ticks))
            axis.set_ylim(top=min(axis.get_ylim()[1], 100.5))
            axis.grid(True, which="both", alpha=0.3)
            if row == 1:
                axis.set_xlabel(xlabel)
            if column == 0:
                axis.set_ylabel(ylabel)
    handles: dict[str, object] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(len(handles), 4),
        fontsize="small",
        bbox_to_anchor=(0.5, -0.06),
    )
    caption = (
        "Test top-1 against the compressed model's size: the bytes of model.safetensors on disk (left) and the "
        "weight-bit ratio vs fp32 (right), after fine-tuning (top, filled markers) and before it (bottom, hollow). "
        "Each marker is the mean over seeds of one route at one target, its bar the seeds' min to max, the faint "
        "dots the seeds themselves. Diamonds joined by a dashed line: the Pareto front, the models that no other "
        "beats on both size and top-1. The horizontal line is the uncompressed fp32 model."
    )
    if baseline is not None:
        caption += " The grey square is the run's uniform baseline (its model file is not written: right panels only)."
    return Figure("report-accuracy-vs-size.png", _png(figure), caption)


def _widen(axis: plt.Axes, values: Sequence[float], least: float = 2.0) -> None:
    """A log x axis over at least a factor ``least`` around ``values`` (a single run's points)."""
    low, high = min(values), max(values)
    if high / low < least:
        margin = (least * low / high) ** 0.5
        axis.set_xlim(low / margin, high * margin)


def _route_means(axis: plt.Axes, points: Sequence[Point], size: str, accuracy: str, color: str, filled: bool) -> None:
    """One route's markers: the mean per target with min-max bars, joined by size; its seeds as dots."""
    if not points:
        return
    by_target: dict[str, list[Point]] = {}
    for point in points:
        by_target.setdefault(point.target, []).append(point)
    rows = []
    for group in by_target.values():
        values = np.array([getattr(p, accuracy) for p in group])
        rows.append((float(np.mean([getattr(p, size) for p in group])), values.mean(), values.min(), values.max()))
    x, mean, low, high = np.array(sorted(rows)).T
    axis.errorbar(
        x,
        mean,
        yerr=[np.maximum(mean - low, 0.0), np.maximum(high - mean, 0.0)],  # rounding can make 0 negative
        color=color,
        marker="o",
        ms=7,
        capsize=3,
        mfc=color if filled else "white",
        ls="-" if filled else ":",
        label=points[0].route,
    )
    axis.scatter(
        [getattr(p, size) for p in points],
        [getattr(p, accuracy) for p in points],
        s=10,
        color=color,
        alpha=0.35,
        zorder=1,
    )


def plan_figure(pair: PlanPair, color: str) -> Figure:
    """Per layer: the plan's bits, its kept output filters against the layer's, and its weight memory
    against the layer's fp32 one; beside the uniform plan at the same target when there is one."""
    layers = pair.layers()
    x = np.arange(len(layers))
    has_uniform = pair.uniform is not None
    width = 0.4 if has_uniform else 0.7
    shift = width / 2 if has_uniform else 0.0
    label = pair.case.route
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    bits, filters, memory = axes
    bits.bar(x - shift, [r.bits for r in layers], width, color=color, label=label)
    filters.bar(x, [r.out_channels for r in layers], 0.85, color="0.88", label="filters of the layer")
    filters.bar(x - shift, [r.kept_filters for r in layers], width, color=color, label=f"kept by {label}")
    memory.bar(x, [r.weights * 32 / 8192 for r in layers], 0.85, color="0.88", label="fp32")
    memory.bar(x - shift, [r.kept_weights * r.bits / 8192 for r in layers], width, color=color, label=label)
    if has_uniform:
        uniform = pair.uniform_label
        bits.bar(x + shift, [r.uniform_bits for r in layers], width, color="0.45", label=uniform)
        filters.bar(
            x + shift, [r.uniform_kept_filters for r in layers], width, color="0.45", label=f"kept by {uniform}"
        )
        memory.bar(
            x + shift,
            [(r.uniform_kept_weights or 0) * (r.uniform_bits or 0) / 8192 for r in layers],
            width,
            color="0.45",
            label=uniform,
        )
    memory.set_yscale("log")
    for axis, ylabel in zip(axes, ("weight bits", "output filters", "weight memory (KiB, log)")):
        axis.set_xticks(x, [r.name for r in layers], rotation=45, ha="right", fontsize="small")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize="x-small")
        axis.grid(True, axis="y", alpha=0.3)
    caption = (
        f"The plan of {pair.why}. Per layer: its weight bits (left), the output filters it keeps against the "
        "layer's filters (middle, grey) and its weight memory against the layer's fp32 memory (right, grey)"
        + (f"; dark grey: {pair.uniform_label}, the uniform plan at the same target." if has_uniform else ".")
    )
    return Figure("report-plan.png", _png(figure), caption)


def time_figure(cases: Sequence[Case], colors: dict[str, str]) -> Figure:
    """Mean seconds per case of each route, stacked by stage (:data:`~.sources.TIME_STAGES`)."""
    routes = [route for route in colors if any(c.route == route for c in cases)]
    means = np.array(
        [
            [np.mean([c.stage_seconds()[stage] for c in cases if c.route == route]) for stage in TIME_STAGES]
            for route in routes
        ]
    )
    figure, axis = plt.subplots(figsize=(9, 0.55 * len(routes) + 1.8))
    left = np.zeros(len(routes))
    for n, stage in enumerate(TIME_STAGES):
        if means[:, n].any():
            axis.barh(routes, means[:, n], left=left, color=plt.get_cmap("tab20c")(n / len(TIME_STAGES)), label=stage)
        left += means[:, n]
    for y, total in enumerate(left):
        axis.text(total, y, f" {total:.1f} s", va="center", fontsize="small")
    axis.set_xlim(0, max(left.max(), 1e-3) * 1.15)
    axis.set_xlabel("seconds per case (mean over its targets and seeds)")
    axis.invert_yaxis()
    axis.legend(fontsize="x-small", ncol=len(TIME_STAGES), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    axis.grid(True, axis="x", alpha=0.3)
    caption = (
        "Time per case of each route, by stage: the analysis (read from its cache after the first case of a model), "
        "the QUBO's build, its solve and the polish of its reads, a search's plan scoring, the chosen plan's "
        "evaluation on the validation split, and the fine-tuning of the compressed model."
    )
    return Figure("report-time.png", _png(figure), caption)


def energy_figure(cases: Sequence[Case]) -> Figure | None:
    """Per QUBO case (at most :data:`MAX_ENERGY_PANELS`): the share of its reads at each residual gap
    (E - E*)/|E*| to the reference optimum E*, raw and polished; None when no case has reads."""
    shown = [c for c in cases if c.qubo is not None and "read_energies" in c.qubo][:MAX_ENERGY_PANELS]
    if not shown:
        return None
    figure, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown) + 1, 3.8), squeeze=False)
    references = set()
    for axis, case in zip(axes[0], shown):
        qubo = case.qubo or {}
        e_star = float(qubo["exact_energy"])
        gaps = {}
        for kind in ("raw", "polished"):
            reads = qubo["read_energies"][kind]
            found = np.nan_to_num(residual_gaps(reads["energy"], e_star), posinf=1e6, neginf=GAP_FLOOR)
            gaps[kind] = (np.maximum(found, GAP_FLOOR), np.asarray(reads["count"], dtype=float))
        largest = max(float(g.max()) for g, _ in gaps.values())
        bins = np.geomspace(GAP_FLOOR / 2, max(largest, GAP_FLOOR * 10) * 2, 40)
        for (kind, (values, counts)), color in zip(gaps.items(), ("C0", "C1")):
            rate = qubo["success_probability_raw" if kind == "raw" else "success_probability"]
            feasible = qubo.get("feasible_rate_raw" if kind == "raw" else "feasible_rate")
            label = f"{kind}: {rate:.2f} at E*" + ("" if feasible is None else f", {feasible:.2f} feasible")
            axis.hist(
                values, bins=bins, weights=counts / counts.sum(), histtype="step", lw=1.6, color=color, label=label
            )
        certified = bool(qubo["exact"]["certified"])
        references.add("certified optimum" if certified else "best known (not certified)")
        axis.axvline(
            GAP_FLOOR, color="k", lw=0.8, ls=":", label="E* " + ("(certified)" if certified else "(best known)")
        )
        axis.set_xscale("log")
        reads = qubo.get("reads", 0)
        axis.set_title(f"{case.name} ({reads} read{'' if reads == 1 else 's'})", fontsize="small")
        axis.set_xlabel(f"(E - E*)/|E*|  (at E*: drawn at {GAP_FLOOR:g})")
        axis.legend(fontsize="x-small")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("share of reads")
    caption = (
        "The energies of the solver's reads against the reference optimum E* ("
        + " / ".join(sorted(references))
        + "), raw and after the polish, per QUBO case of the chosen plan's target and seed; the legend gives the "
        "share of reads at E* and, for the budget formulation, the share that keeps the budget (feasible)."
    )
    return Figure("report-energies.png", _png(figure), caption)


def bench_figures(bench: BenchSource) -> list[Figure]:
    """The benchmark's own plots (:mod:`qubocompress.bench.plots`): TTS99 and success probability
    against variables per solver, and each instance's energy histogram."""
    rows = list(bench.rows)
    with tempfile.TemporaryDirectory(prefix="qubocompress-report-") as scratch:
        folder = Path(scratch)
        made = [
            (
                "report-tts99-vs-variables.png",
                plot_tts_vs_variables(rows, folder / "tts.png"),
                "TTS99 (time to reach E* with 99% probability; log) against the instance's variables (log), per "
                "solver; a solver that never reached E* on an instance has no point there.",
            ),
            (
                "report-success-probability.png",
                plot_success_probability(rows, folder / "success.png"),
                "Success probability (reads at E*) per read (top) and per run (bottom), per instance and solver.",
            ),
        ]
        with ResultStore(bench.store_path) as store:
            histograms = plot_energy_histograms(store, rows, folder)
        for path in histograms:
            instance = path.stem.removeprefix("energy-")
            made.append(
                (
                    f"report-energy-{instance}.png",
                    path,
                    f"{instance}: the share of reads at each residual gap (E - E*)/|E*|, per solver.",
                )
            )
        return [Figure(name, path.read_bytes(), caption) for name, path, caption in made]
