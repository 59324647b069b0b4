"""``report.html`` of a run, sweep or bench folder: one self-contained file, its figures embedded.

The figures are matplotlib PNGs (:mod:`.figures`), written beside the HTML as ``report-*.png`` and
embedded in it as ``data:`` URIs; the CSS is inline, there is no script and nothing is fetched, so
the file opens from disk anywhere (:mod:`.html`). Every text taken from a file is escaped.
Everything is read and drawn before the first write; the PNGs are written first and the HTML last,
each atomically, so a report is whole or absent, and a folder with nothing to report (or a file
that cannot be read) is an :class:`~qubocompress.errors.ArtifactError` with nothing written.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qubocompress.errors import ArtifactError
from qubocompress.io import write_bytes_atomic, write_text_atomic
from qubocompress.report.figures import (
    Figure,
    Point,
    accuracy_figure,
    bench_figures,
    energy_figure,
    pareto_front,
    plan_figure,
    route_colors,
    time_figure,
)
from qubocompress.report.html import Cell, Section, bullets, code, figure, page, paragraph, table
from qubocompress.report.sources import (
    TIME_STAGES,
    UNIFORM_ROUTE,
    BenchSource,
    Case,
    PlanPair,
    RunSource,
    Source,
    SweepSource,
    read_source,
    shown_folder,
)
from qubocompress.sweeps import QUBO_ROUTE, SweepRow

REPORT_FILE = "report.html"
KINDS = {RunSource: "run", SweepSource: "sweep", BenchSource: "bench"}


@dataclass(frozen=True)
class Report:
    """A report before it is written: its title and lead (the headline, HTML), its sections and figures."""

    title: str
    lead: str
    sections: tuple[Section, ...]
    figures: tuple[Figure, ...]


def write_report(folder: str | Path, log: Callable[[str], None] = print) -> Path:
    """Write ``folder/report.html`` and its ``report-*.png`` for the run, sweep or bench in ``folder``;
    returns the HTML's path. ``log`` gets a short line per step."""
    folder = Path(folder)
    try:
        source = read_source(folder)
        log(f"report: drawing the figures of the {KINDS[type(source)]} in {source.folder}")
        report = build_report(source)
    except KeyError as exc:
        raise ArtifactError(f"the results in {shown_folder(folder)} lack the field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ArtifactError(
            f"the results in {shown_folder(folder)} hold a malformed value ({str(exc).splitlines()[0]})"
        ) from None
    for item in report.figures:
        write_bytes_atomic(folder / item.name, item.png)
    path = folder / REPORT_FILE
    write_text_atomic(path, page(report.title, report.lead, report.sections))
    log(f"report: {source.folder / REPORT_FILE} ({len(report.figures)} figures, also as report-*.png beside it)")
    return path


def build_report(source: Source) -> Report:
    """The report of a run, sweep or bench folder's contents."""
    if isinstance(source, SweepSource):
        return _sweep_report(source)
    if isinstance(source, RunSource):
        return _run_report(source)
    return _bench_report(source)


# --- numbers as text -----------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    """0..1 as a percentage with two decimals ('' for None)."""
    return "" if value is None else f"{100 * value:.2f}"


def _number(value: Any, digits: int = 4) -> str:
    """A cell: floats to ``digits`` significant digits, inf as 'inf', None as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _count(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value >= 0.1 else f"{value:.2f}"


def _reproduce(commands: Sequence[str], folder: Path) -> Section:
    """The commands that make every figure and table of the page again."""
    lines = [*commands, f"qubocompress report {shlex.quote(str(folder))}"]
    return Section(
        "Reproduce",
        paragraph("Every figure and table on this page comes from these commands (the last one redraws the page):")
        + code(lines),
    )


# --- shared parts of run and sweep reports ---------------------------------------------------------


def _title(case: Case, what: str) -> str:
    return f"{case.metrics['model']['name']} on {case.metrics['data']['name']}: {what}"


def _plan_section(pair: PlanPair, plan_figure_: Figure) -> Section:
    """The chosen plan's figure and its layers beside the uniform plan's."""
    has_uniform = pair.uniform is not None
    header = ["layer", "kind", "out x in channels", "weights", f"bits: {pair.case.route}", "kept filters", "KiB"]
    if has_uniform:
        header += [f"bits: {pair.uniform_label}", "kept filters", "KiB"]
    rows = []
    for layer in pair.layers():
        row = [
            layer.name,
            layer.kind,
            f"{layer.out_channels} x {layer.in_channels}",
            f"{layer.weights:,}",
            str(layer.bits),
            f"{layer.kept_filters}/{layer.out_channels}",
            f"{layer.kept_weights * layer.bits / 8192:.2f}",
        ]
        if has_uniform:
            row += [
                str(layer.uniform_bits),
                f"{layer.uniform_kept_filters}/{layer.out_channels}",
                f"{(layer.uniform_kept_weights or 0) * (layer.uniform_bits or 0) / 8192:.2f}",
            ]
        rows.append(row)
    return Section("The chosen plan, layer by layer", figure(plan_figure_) + table(header, rows))


def _qubo_table(cases: Sequence[Case]) -> str:
    """The QUBO of each case: its size, the share of reads at the optimum (and feasible, for a
    formulation with a constraint), raw and polished; then how each reference optimum was found."""
    constrained = any("feasible_rate" in (c.qubo or {}) for c in cases)
    header = ["case", "formulation", "variables", "couplings", "reads", "at E* raw", "at E* polished"]
    header += ["feasible raw", "feasible polished"] if constrained else []
    header += ["energy", "E*", "E* certified", "solve s", "polish s"]
    rows = []
    methods: dict[str, list[str]] = {}
    for case in cases:
        q = case.qubo or {}
        exact = q.get("exact", {})
        methods.setdefault(str(exact.get("method", "?")), []).append(case.name)
        row = [
            case.name,
            str(q.get("formulation", "")),
            _number(q.get("variables")),
            _number(q.get("interactions")),
            _number(q.get("reads")),
            _number(q.get("success_probability_raw"), 3),
            _number(q.get("success_probability"), 3),
        ]
        if constrained:
            row += [_number(q.get("feasible_rate_raw"), 3), _number(q.get("feasible_rate"), 3)]
        row += [
            _number(q.get("energy"), 7),
            _number(q.get("exact_energy"), 7),
            _number(exact.get("certified")),
            _seconds(float(q.get("solve_seconds", 0.0))),
            _seconds(float(q.get("polish_seconds", 0.0))),
        ]
        rows.append(row)
    notes = [f"E* of {', '.join(names)}: {method}" for method, names in methods.items()]
    if not constrained:
        notes.append(
            "feasible shares: recorded for the budget formulation only (the paper's energy has no hard constraint)"
        )
    return table(header, rows) + bullets(notes, "note")


def _time_table(cases: Sequence[Case], routes: Sequence[str]) -> str:
    """Mean seconds per case of each route and stage (the time figure's numbers)."""
    rows = []
    for route in routes:
        mine = [c for c in cases if c.route == route]
        means = [float(np.mean([c.stage_seconds()[stage] for c in mine])) for stage in TIME_STAGES]
        rows.append([route, str(len(mine)), *map(_seconds, means), _seconds(sum(means))])
    return table(["route", "cases", *TIME_STAGES, "total"], rows)


def _search_section(cases: Sequence[Case], routes: Sequence[str], time: Figure, energies: Figure | None) -> Section:
    qubo_cases = [c for c in cases if c.qubo is not None]
    parts = [figure(time), _time_table(cases, routes)]
    if energies is not None:
        parts.append(figure(energies))
    if qubo_cases:
        parts.append(paragraph("The QUBO of each case (couplings: its quadratic terms):") + _qubo_table(qubo_cases))
    return Section("The search: time, QUBO size and solver reads", "".join(parts))


# --- a sweep ----------------------------------------------------------------------------------------


def _means_by_route(cases: Sequence[Case]) -> dict[str, tuple[float, float, int]]:
    """Per route of ``cases``: mean top-1 (0..1), mean model file bytes and the number of cases."""
    means = {}
    for route in dict.fromkeys(c.route for c in cases):
        mine = [c for c in cases if c.route == route]
        accuracy = float(np.mean([c.compressed["test_acc"] for c in mine]))
        means[route] = (accuracy, float(np.mean([c.compressed["model_file_bytes"] for c in mine])), len(mine))
    return means


def _headline(sweep: SweepSource) -> list[str]:
    """Per target: the best QUBO route (mean top-1 over seeds) against the uniform route."""
    lines = []
    for target in sweep.targets():
        means = _means_by_route([c for c in sweep.cases if c.target == target])
        said = {
            route: f"{route} {100 * accuracy:.2f}% at {size:,.0f} B (mean of {_count(n, 'seed')})"
            for route, (accuracy, size, n) in means.items()
        }
        qubo = [r for r in means if r.startswith(QUBO_ROUTE)]
        best = max(qubo or list(means), key=lambda r: means[r][0])
        if UNIFORM_ROUTE in means and best != UNIFORM_ROUTE:
            gain = 100 * (means[best][0] - means[UNIFORM_ROUTE][0])
            smaller = 100 * (1 - means[best][1] / means[UNIFORM_ROUTE][1])
            lines.append(
                f"{target}: {said[best]} against {said[UNIFORM_ROUTE]}: {gain:+.2f} points of top-1, a model file "
                f"{abs(smaller):.0f}% {'smaller' if smaller >= 0 else 'larger'}."
            )
        else:
            lines.append(f"{target}: best {said[best]}; no {'uniform' if best != UNIFORM_ROUTE else 'QUBO'} case.")
    return lines


CASE_HEADER = (
    "case", "route", "target", "seed", "top-1 %", "before fine-tune %", "weight ratio", "model file (B)", "route s",
    "case s", "Pareto", "status",
)  # fmt: skip


def _case_rows(rows: Sequence[SweepRow], front: set[str]) -> list[list[str | Cell]]:
    table_rows: list[list[str | Cell]] = []
    for row in rows:
        route = f"{row.route} ({row.solver})" if row.solver else row.route
        cells: list[str | Cell] = [row.case, route, row.target, str(row.seed)]
        if row.ok:
            cells += [
                _percent(row.test_acc),
                _percent(row.test_acc_before_finetune),
                f"{row.ratio:.1f}x",
                f"{row.model_file_bytes:,}",
                _seconds(row.route_seconds or 0.0),
                _seconds(row.seconds),
                "yes" if row.case in front else "",
                Cell("ok"),
            ]
        else:
            cells += ["", "", "", "", "", _seconds(row.seconds), "", Cell(f"failed: {row.reason}")]
        table_rows.append(cells)
    return table_rows


def _sweep_report(sweep: SweepSource) -> Report:
    cases = sweep.cases
    first = cases[0]
    fp32 = float(first.metrics["model"]["fp32_test_acc"])
    colors = route_colors([c.route for c in cases])
    pair = sweep.plan_pair()
    points = {case.name: Point.of(case) for case in cases}
    front = pareto_front(cases, lambda c: points[c.name].file_bytes or 0, lambda c: points[c.name].after, True)
    accuracy = accuracy_figure(list(points.values()), fp32, colors)
    plan = plan_figure(pair, colors[pair.case.route])
    read_cases = [c for c in cases if c.qubo and c.target == pair.case.target and c.seed == pair.case.seed]
    energies = energy_figure(read_cases)
    time = time_figure(cases, colors)
    failed = sweep.failed
    routes = list(colors)
    seeds = sorted({row.seed for row in sweep.table.rows})
    epochs = int(first.compressed.get("finetune_epochs", 0))
    tuned = f"After fine-tuning ({_count(epochs, 'epoch')})" if epochs else "Without fine-tuning"
    lead = paragraph(
        f"{len(sweep.table.rows)} cases of {first.metrics['model']['name']} on {first.metrics['data']['name']} "
        f"({first.metrics['data'].get('test', '?')} test images): targets {', '.join(sweep.targets())}; routes "
        f"{', '.join(routes)}; seeds {', '.join(map(str, seeds))}"
        + (f"; {len(failed)} failed (their reasons are in the table of cases)" if failed else "")
        + f". The uncompressed fp32 model has {100 * fp32:.2f}% test top-1. {tuned}, per target:",
        "lead",
    ) + bullets(_headline(sweep), "headline")
    totals = sweep.table.stage_seconds()
    share_rows = [
        [name, _seconds(totals[key]), f"{100 * totals[key] / max(totals['cases'], 1e-9):.0f}%"]
        for name, key in (
            ("all cases", "cases"),
            ("analysis", "analysis"),
            ("search", "search"),
            ("fine-tuning", "finetune"),
        )
    ]
    commands = (sweep.table.command or "").splitlines() or [
        "# run from Python (qubocompress.sweep): no command line was recorded"
    ]
    sections = (
        Section("Accuracy against size", figure(accuracy)),
        _plan_section(pair, plan),
        _search_section(cases, routes, time, energies),
        Section(
            "Cases",
            paragraph("Every case of the sweep (Pareto: on the front of model file bytes against top-1):")
            + table(
                CASE_HEADER,
                _case_rows(sweep.table.rows, {c.name for c in front}),
                [not row.ok for row in sweep.table.rows],
            )
            + paragraph(
                "Where the sweep's time went (seconds summed over the finished cases; search: the QUBO's "
                "build, solve and polish, or the search's plan scoring, and the chosen plan's evaluation):"
            )
            + table(["part", "seconds", "share"], share_rows),
        ),
        _reproduce(commands, sweep.folder),
    )
    figures = tuple(f for f in (accuracy, plan, energies, time) if f is not None)
    return Report(_title(first, "compression sweep"), lead, sections, figures)


# --- a run -----------------------------------------------------------------------------------------------


def _run_report(run: RunSource) -> Report:
    case, metrics, baseline = run.case, run.metrics, run.baseline
    fp32 = float(metrics["model"]["fp32_test_acc"])
    c = case.compressed
    colors = route_colors([case.route])
    base_point = None
    if baseline is not None:
        base_point = Point(
            run.baseline_label,
            case.target,
            None,
            float(baseline["ratio"]),
            100 * baseline["test_acc"],
            100 * baseline["test_acc_before_finetune"],
        )
    accuracy = accuracy_figure([Point.of(case)], fp32, colors, base_point)
    pair = run.plan_pair()
    plan = plan_figure(pair, colors[case.route])
    energies = energy_figure([case])
    time = time_figure([case], colors)
    said = (
        f"{case.route} compressed {metrics['model']['name']} {c['ratio']:.1f}x (weight bits vs fp32) to "
        f"{100 * c['test_acc']:.2f}% test top-1 after fine-tuning ({100 * c['test_acc_before_finetune']:.2f}% "
        f"before), in a model file of {c['model_file_bytes']:,} bytes; the fp32 model has {100 * fp32:.2f}%."
    )
    if baseline is not None:
        said += (
            f" The uniform baseline at the same target ({run.baseline_label}, {baseline['ratio']:.1f}x) reaches "
            f"{100 * baseline['test_acc']:.2f}% ({100 * (c['test_acc'] - baseline['test_acc']):+.2f} points for "
            f"{case.route})."
        )
    rows = [
        [
            case.route,
            _percent(c["test_acc"]),
            _percent(c["test_acc_before_finetune"]),
            f"{c['ratio']:.1f}x",
            f"{c['weight_bits'] / 8192:.1f}",
            f"{c['model_file_bytes']:,}",
            _seconds(case.route_seconds),
        ]
    ]
    if baseline is not None:
        rows.append(
            [
                run.baseline_label,
                _percent(baseline["test_acc"]),
                _percent(baseline["test_acc_before_finetune"]),
                f"{baseline['ratio']:.1f}x",
                f"{baseline['weight_bits'] / 8192:.1f}",
                "",
                "",
            ]
        )
    rows.append(
        [
            "fp32",
            _percent(fp32),
            "",
            "1.0x",
            f"{c['fp32_weight_bits'] / 8192:.1f}",
            f"{metrics['model'].get('fp32_state_dict_bytes', 0):,} (state_dict)",
            "",
        ]
    )
    command = run.command()
    sections = (
        Section("Accuracy against size", figure(accuracy)),
        _plan_section(pair, plan),
        _search_section([case], [case.route], time, energies),
        Section(
            "The run",
            table(
                [
                    "model",
                    "top-1 %",
                    "before fine-tune %",
                    "weight ratio",
                    "weights (KiB)",
                    "model file (B)",
                    "route s",
                ],
                rows,
            ),
        ),
        _reproduce([command] if command else ["# run from Python: its settings make no command line"], run.folder),
    )
    figures = tuple(f for f in (accuracy, plan, energies, time) if f is not None)
    title = _title(case, f"{case.route} at {case.target}")
    return Report(title, paragraph(said, "lead"), sections, figures)


# --- a bench --------------------------------------------------------------------------------------------------

BENCH_COLUMNS = (
    "instance",
    "variables",
    "interactions",
    "solver",
    "status",
    "runs",
    "reads",
    "p_s_read",
    "p_s_run",
    "tts99",
    "tts99_unit",
    "t_run_mean",
    "e_best",
    "e_star",
    "e_star_certified",
    "gap_best",
    "feasible_rate",
)


def _bench_report(bench: BenchSource) -> Report:
    figures = tuple(bench_figures(bench))
    rows = bench.rows
    instances = list(dict.fromkeys(r["instance"] for r in rows))
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    lead = paragraph(
        f"{len(instances)} QUBO instances ({min(r['variables'] for r in rows)} to {max(r['variables'] for r in rows)} "
        f"variables) solved by {', '.join(solvers)}: the success probability p_s (reads at the reference optimum "
        "E*) and the time to solution with 99% probability (TTS99) per instance and solver.",
        "lead",
    )
    columns = [name for name in BENCH_COLUMNS if any(r.get(name) is not None for r in rows)]
    sections = (
        Section("Figures", "".join(figure(item) for item in figures)),
        Section("Results", table(columns, [[_number(r.get(name)) for name in columns] for r in rows])),
        _reproduce(["# the bench's command line is not recorded: qubocompress bench ... --out FOLDER"], bench.folder),
    )
    return Report("qubocompress bench: solvers on QUBO instances", lead, sections, figures)
