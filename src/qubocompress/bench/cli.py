"""``qubocompress bench``: the solver benchmark (instances × solvers × seeds), resumable.

Full sweep (hours on 2 cores; the documented command)::

    qubocompress bench --out runs/bench

= the built-in models (lenet5, vgg, resnet20: measured specs when packaged, else synthetic
stand-ins) and the synthetic size series 100, 300, 1000, 3000, 10000 variables, every offline
solver, 5 seeds. ``--quick`` runs a few small instances with few seeds (minutes). Interrupt and
rerun the same command to resume; ``--fresh`` starts over (the earlier store kept as
``results.sqlite.previous``); a second run on the same folder is refused while one runs.
``--formulation budget`` benchmarks the built-in models' budget QUBOs instead
(``<model>-budget-<ratio>x`` at 16×, 24×, 32× by default; ``E*`` from the MILP), every solver's
reads scored against it, with their feasibility rate. ``--formulation filters`` benchmarks the
packaged filters QUBOs (``<model>-filters-<ratio>x``, which filters to prune under the measured
Gram matrix; ``E*`` from SCIP's MIQP, certified or best known); with ``--polish`` the raw reads are
scored too, and the ``exact`` row tells when the reference found its best plan and its proof.

Output folder: ``results.sqlite`` (every run and read), ``results.csv`` / ``results.json`` (one
row per instance × solver), ``plots/*.png``, ``instances/<name>.bqm`` + ``.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from qubocompress.bench.instances import (
    BUDGET_TARGET_RATIOS,
    BUILTIN_MODELS,
    DEFAULT_TARGET_RATIO,
    MIN_SERIES_SIZE,
    SIZE_SERIES,
    Instance,
    budget_instance_name,
    builtin_budget_instance,
    builtin_filters_instance,
    builtin_instance,
    filters_instance_name,
    instance_bqm_path,
    shipped_filters_models,
    instance_files,
    load_instance,
    save_instance,
    size_series_instance,
    stand_in_instance,
)
from qubocompress.bench.runner import (
    BUDGETED_SOLVERS,
    DEFAULT_SOLVER,
    EXACT_SOLVER,
    Budget,
    SweepConfig,
    offline_solvers,
    run_sweep,
    summarize,
    target_check,
    tts_ratio_lines,
)
from qubocompress.bench.store import ResultStore
from qubocompress.bench_parser import FULL_SEEDS, QUICK_SEEDS
from qubocompress.cluster import Cluster
from qubocompress.config import parse_solver_option
from qubocompress.errors import DataError, SolverError
from qubocompress.limits import MAX_SEED
from qubocompress.io import prepare_output_dir, write_json_atomic, write_text_atomic

QUICK_SIZES: tuple[int, ...] = ()
# --quick keeps every solver's defaults except the two slowest on a 2-core CPU (the default sa,
# which the target is about, is untouched); the table's options column and a note say so.
QUICK_SOLVER_OPTIONS: dict[str, dict[str, Any]] = {
    "sqa": {"num_reads": 10},
    "sb": {"agents": 32, "max_steps": 1000},
}
CSV_COLUMNS = (
    "instance",
    "variables",
    "interactions",
    "source",
    "solver",
    "status",
    "runs",
    "reads",
    "e_star",
    "e_star_certified",
    "e_best",
    "gap_best",
    "gap_median",
    "p_s_read",
    "p_s_run",
    "feasible_rate",
    "p_s_read_raw",
    "p_s_run_raw",
    "e_best_raw",
    "gap_best_raw",
    "tts99_raw",
    "feasible_rate_raw",
    "t_read",
    "t_run_mean",
    "t_run_median",
    "build_seconds",
    "embed_seconds_mean",
    "tts99_read",
    "tts99_run",
    "tts99",
    "tts99_unit",
    "tts99_ratio_to_default",
    "evaluations_mean",
    "stopped_by",
    "budget",
    "exact_faster_than_every_heuristic",
    "exact_certified",
    "exact_gap",
    "exact_best_seconds",
    "exact_search_seconds",
    "exact_best_found_by",
    "options",
)


def _log(message: str) -> None:
    logging.getLogger("qubocompress").info(message)


def _parse_list(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise SolverError(f"{what} is empty; give a comma-separated list")
    return items


def _parse_sizes(text: str) -> list[int]:
    sizes = []
    for item in _parse_list(text, "--sizes"):
        try:
            sizes.append(int(item))
        except ValueError:
            raise DataError(f"--sizes takes variable counts such as 100,1000; got {item!r}") from None
    too_small = [size for size in sizes if size < MIN_SERIES_SIZE]
    if too_small:
        raise DataError(f"--sizes: synthetic instances need at least {MIN_SERIES_SIZE} variables, got {too_small[0]}")
    return sizes


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep's configuration from the command line; bad values are one-line errors."""
    if args.time_limit is not None and not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise SolverError(f"--time-limit must be a number of seconds > 0, got {args.time_limit:g}")
    if args.time_limit is not None and args.converge:
        raise SolverError("--time-limit and --converge exclude each other: pick one budget for ga and rl")
    if args.seeds is not None and args.seeds < 1:
        raise SolverError(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        raise SolverError(f"--first-seed must be >= 0, got {args.first_seed}")
    explicit = args.solvers is not None
    solvers = _parse_list(args.solvers, "--solvers") if explicit else list(offline_solvers())
    if args.time_limit is not None:
        budget = Budget("fixed", seconds=args.time_limit)
    else:
        budget = Budget("converge" if args.converge else "equal")
    solver_options: dict[str, dict[str, Any]] = {}
    if args.quick:
        solver_options = {name: dict(QUICK_SOLVER_OPTIONS[name]) for name in solvers if name in QUICK_SOLVER_OPTIONS}
    if args.device is not None:
        if "sb" not in solvers:  # it would be ignored
            raise SolverError(f"--device sets the sb solver's device, and --solvers {','.join(solvers)} has no sb")
        solver_options.setdefault("sb", {})["device"] = args.device
    for text in args.solver_option:
        solver, colon, option = text.partition(":")
        if not colon or solver not in solvers:
            raise SolverError(
                f"--solver-option takes SOLVER:KEY=VALUE for a solver in --solvers, e.g. qpu-decomposed:qpu=mock; "
                f"got {text!r}"
            )
        key, value = parse_solver_option(option)
        solver_options.setdefault(solver, {})[key] = value
    seeds = args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)
    if args.first_seed + seeds > MAX_SEED:
        raise SolverError(f"--first-seed + --seeds must stay within {MAX_SEED:,} (the samplers' 31-bit seeds)")
    config = SweepConfig(
        solvers=solvers,
        seeds=tuple(range(args.first_seed, args.first_seed + seeds)),
        solver_options=solver_options,
        num_reads=args.num_reads,
        budget=budget,
        exact_time_limit=args.exact_time_limit,
        explicit=explicit,
        polish=args.polish,
    )
    config.validate()
    return config


def _parse_ratios(text: str | None, formulation: str) -> list[float]:
    """The target ratios of ``--target-ratio`` (each a number > 1), or the formulation's default."""
    if text is None:
        return list(BUDGET_TARGET_RATIOS) if formulation in ("budget", "filters") else [DEFAULT_TARGET_RATIO]
    ratios = []
    for item in _parse_list(text, "--target-ratio"):
        try:
            ratio = float(item)
        except ValueError:
            raise DataError(f"--target-ratio takes numbers > 1 such as 16 or 16,24,32; got {item!r}") from None
        if not (math.isfinite(ratio) and ratio > 1):
            raise DataError(f"--target-ratio must be a number > 1, got {item}")
        ratios.append(ratio)
    return ratios


def _instance_builders(name: str, ratios: list[float], formulation: str) -> list[tuple[str, Callable[[], Instance]]]:
    """How to build the instances called ``name``, one per ratio: (label, builder), checked now,
    built later. With several ratios a paper instance's name gets ``-<ratio>x``."""
    if formulation == "budget":
        if name not in BUILTIN_MODELS:
            raise DataError(
                f"budget instances come from the built-in models' measured specs ({', '.join(BUILTIN_MODELS)}); "
                f"got {name!r}"
            )
        return [(budget_instance_name(name, r), lambda r=r: builtin_budget_instance(name, r)) for r in ratios]
    if formulation == "filters":
        if name not in BUILTIN_MODELS:
            raise DataError(
                f"filters instances are the built-in models' packaged ones ({', '.join(BUILTIN_MODELS)}); got "
                f"{name!r} (a folder or .bqm file of saved instances works with any --formulation)"
            )
        return [(filters_instance_name(name, r), lambda r=r: builtin_filters_instance(name, r)) for r in ratios]
    model = name.removesuffix("-synthetic")
    digits = name.removeprefix("synthetic-").removeprefix("n")
    if name in BUILTIN_MODELS:
        build: Callable[..., Instance] = partial(builtin_instance, name)
    elif name.endswith("-synthetic") and model in BUILTIN_MODELS:
        build = partial(stand_in_instance, model)
    elif digits.isdigit():
        build = partial(size_series_instance, int(digits))
    else:
        raise DataError(
            f"unknown instance {name!r}: give a folder or .bqm file, or names among "
            f"{', '.join(BUILTIN_MODELS)}, <model>-synthetic, n<variables>"
        )
    if len(ratios) == 1:
        return [(name, partial(build, target_ratio=ratios[0]))]
    return [(f"{name} at {r:g}x", lambda r=r: _renamed(build(target_ratio=r), r)) for r in ratios]


def _renamed(instance: Instance, ratio: float) -> Instance:
    """``instance`` named ``<its name>-<ratio>x`` (one of several ratios of a paper instance)."""
    instance.name = f"{instance.name}-{ratio:g}x"
    return instance


@dataclass
class InstancePlan:
    """The instances a command line asks for, checked but not built yet.

    Attributes:
        files: ``.bqm`` files to load and verify (E* of a bare one from the exact solver).
        builders: (label, builder) of each generated instance.
        exact_time_limit: seconds of the exact solver per bare ``.bqm``.
    """

    files: list[Path]
    builders: list[tuple[str, Callable[[], Instance]]]
    exact_time_limit: float


def _check_distinct(names: list[str]) -> None:
    """A DataError when an instance name appears twice."""
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise DataError(f"instance {duplicate!r} is asked for twice")


def instance_plan(args: argparse.Namespace) -> InstancePlan:
    """The instances the command line asks for, to build later (:func:`build_instances`).

    Every name, size, ratio, file and folder is checked now; nothing is built or loaded (that can
    take minutes: a MILP per budget instance, the exact solver on a bare ``.bqm``).
    """
    ratios = _parse_ratios(args.target_ratio, args.formulation)
    budget = args.formulation in ("budget", "filters")
    if args.sizes is not None:
        if budget:
            raise DataError(
                "--sizes: the synthetic size series is a paper-formulation benchmark; drop it with "
                f"--formulation {args.formulation}"
            )
        sizes = _parse_sizes(args.sizes)
    elif args.instances is not None or budget:
        sizes = []
    else:
        sizes = list(QUICK_SIZES if args.quick else SIZE_SERIES)
    path = None if args.instances is None else Path(args.instances)
    files: list[Path] = []
    if path is None:  # the filters instances of the models they ship for
        names = shipped_filters_models() if args.formulation == "filters" else list(BUILTIN_MODELS)
    elif path.is_dir():
        names, files = [], instance_files(path)
        if not files:
            raise DataError(f"no .bqm instance files in {path}")
    elif path.suffix in (".bqm", ".json") or path.name.endswith(".bqm.xz"):
        names, files = [], [instance_bqm_path(path)]
        if not files[0].is_file():
            raise DataError(f"instance file {files[0]} not found")
    else:
        names = _parse_list(args.instances, "--instances")
    names += [f"n{size}" for size in sizes]
    _check_distinct(names)
    builders = [b for name in names for b in _instance_builders(name, ratios, args.formulation)]
    return InstancePlan(files, builders, args.exact_time_limit)


def build_instances(plan: InstancePlan, log: Callable[[str], None] = _log) -> list[Instance]:
    """The planned instances (see :func:`instance_plan`), loaded and verified, or generated."""
    instances = [load_instance(path, plan.exact_time_limit) for path in plan.files]
    for label, build in plan.builders:
        log(f"building instance {label}")
        instances.append(build())
    _check_distinct([instance.name for instance in instances])
    return instances


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        if value == 0:
            return "0"
        return f"{value:.{digits}g}"
    return str(value)


def _plain(value: Any) -> Any:
    """JSON/CSV-safe value: non-finite floats as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def results_csv(rows: list[dict[str, Any]]) -> str:
    """The summary rows as CSV text (non-finite numbers as inf/nan, options as JSON)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: _plain(row.get(k)) for k in CSV_COLUMNS}
        flat["options"] = json.dumps(row.get("options", {}), sort_keys=True)
        writer.writerow(flat)
    return buffer.getvalue()


def results_table(rows: list[dict[str, Any]]) -> Any:
    """A rich Table of the summary rows (an "embed s" column appears when any solver embeds, a
    "feasible" one when any instance is constrained)."""
    from rich.markup import escape
    from rich.table import Table

    with_embed = any((row.get("embed_seconds_mean") or 0) > 0 for row in rows)
    with_feasible = any(row.get("feasible_rate") is not None for row in rows)
    with_raw = any(row.get("p_s_read_raw") is not None for row in rows)
    table = Table(title="solver benchmark (E*: ✓ certified, ≈ best known; times are wall seconds)")
    headers = ["instance", "vars", "build s", "solver", "reads", "E*", "gap best", "gap med", "p_s read", "p_s run"]
    headers += ["raw p_s read/run", "raw gap"] * with_raw
    headers += ["feasible"] * with_feasible + ["embed s"] * with_embed
    headers += ["t/run s", "TTS99 s", "×sa", "evals", "stop / budget"]
    for header in headers:
        table.add_column(header, justify="left" if header in ("instance", "solver", "stop / budget") else "right")
    previous = None
    for row in rows:
        first = row["instance"] != previous
        if first and previous is not None:
            table.add_section()
        previous = row["instance"]
        e_star = "-" if row["e_star"] is None else f"{row['e_star']:.6g} {'✓' if row['e_star_certified'] else '≈'}"
        lead = [
            row["instance"] if first else "",
            str(row["variables"]) if first else "",
            _cell(row["build_seconds"]) if first else "",
            row["solver"],
        ]
        if row["status"] != "ok":
            table.add_row(*lead, "-", e_star, escape(row["status"]))
            continue
        tts = f"{_cell(row['tts99'])}/{row['tts99_unit']}"
        if row.get("exact_faster_than_every_heuristic"):
            tts += " ★"
        stop = " / ".join(x for x in (row.get("stopped_by"), row.get("budget")) if x) or "-"
        cells = [
            str(row["reads"]),
            e_star,
            _cell(row["gap_best"]),
            _cell(row["gap_median"]),
            _cell(row["p_s_read"]),
            _cell(row["p_s_run"]),
        ]
        if with_raw:
            raw = row.get("p_s_read_raw") is not None
            cells += [f"{_cell(row['p_s_read_raw'])}/{_cell(row['p_s_run_raw'])}" if raw else "-"]
            cells += [_cell(row.get("gap_best_raw"))]
        cells += [_cell(row.get("feasible_rate"))] * with_feasible
        cells += [_cell(row["embed_seconds_mean"])] * with_embed
        cells += [
            _cell(row["t_run_mean"]),
            tts,
            _cell(row.get("tts99_ratio_to_default")),
            _cell(row.get("evaluations_mean")),
            escape(stop),
        ]
        table.add_row(*lead, *cells)
    return table


def _exact_lines(rows: list[dict[str, Any]]) -> list[str]:
    faster = [r["instance"] for r in rows if r["solver"] == EXACT_SOLVER and r.get("exact_faster_than_every_heuristic")]
    if not faster:
        return []
    names = ", ".join(faster)
    return [f"★ the exact method ({EXACT_SOLVER}) is faster than every heuristic's TTS99 on: {names}"]


def _reference_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per instance whose exact reference reports when it found its best plan (filters)."""
    lines = []
    for row in rows:
        if row["solver"] != EXACT_SOLVER or row["status"] != "ok" or "exact_search_seconds" not in row:
            continue
        proof = (
            "proved its optimum"
            if row["exact_certified"]
            else f"stopped at its time limit with a proven gap of {_cell(row['exact_gap'])}"
        )
        best = row["exact_best_seconds"]
        held = "an unknown time" if best is None else f"{_cell(best)} s"
        verdict = "at E*" if row["p_s_run"] == 1 else f"gap {_cell(row['gap_best'])} to E*"
        lines.append(
            f"exact on {row['instance']}: {proof} after {_cell(row['t_run_mean'])} s; its best plan ({verdict}) "
            f"first held after {held} (by the {row['exact_best_found_by']}; the starting swap search took "
            f"{_cell(row['exact_search_seconds'])} s); E* {'certified' if row['e_star_certified'] else 'best known'}"
        )
    return lines


def _qpu_fits(instances: list[Instance], rows: list[dict[str, Any]]) -> list[Any]:
    """``--qpu-fit``: each instance's offline fit into the default topologies, beside the exact
    solver's mean run seconds on it (when it ran)."""
    from qubocompress.bench.qpu_fit import fit_instances
    from qubocompress.solvers.qpu_fit import TOPOLOGIES

    exact = {r["instance"]: r["t_run_mean"] for r in rows if r["solver"] == EXACT_SOLVER and r["status"] == "ok"}
    return fit_instances(instances, exact, list(TOPOLOGIES.values()), log=_log)


def run_bench(args: argparse.Namespace) -> int:
    """Run ``qubocompress bench`` with parsed ``args``; returns the exit code."""
    from rich.console import Console

    start = time.perf_counter()
    config = sweep_config(args)
    plan = instance_plan(args)
    cluster = Cluster(address=args.ray_address, workers=args.workers)
    cluster.check()
    cluster.reach()
    if args.qpu_fit:  # its packages are checked before the sweep, not after it
        from qubocompress.solvers.base import require_all
        from qubocompress.solvers.qpu_fit import FIT_REQUIRES

        require_all(FIT_REQUIRES, "qpu-fit")
    out = prepare_output_dir(args.out)
    with ResultStore(out / "results.sqlite", fresh=args.fresh) as store:
        if store.previous is not None:
            _log(f"--fresh: the earlier results are moved to {store.previous} (a later --fresh replaces them)")
        instances = build_instances(plan)
        for instance in instances:
            save_instance(instance, out / "instances")
        outcome = run_sweep(instances, config, store, progress=sys.stderr.isatty(), log=_log, cluster=cluster)
        rows = summarize(store, instances, config)
        from qubocompress.bench.plots import write_plots

        plots = write_plots(store, rows, out / "plots")
    notes = [f"instance {i.name} ({i.num_variables} variables): {i.source}" for i in instances]
    notes += tts_ratio_lines(rows) + _exact_lines(rows) + _reference_lines(rows)
    check = target_check(rows)
    if check is not None:
        notes.append(check)
    notes += [f"skipped {name}: {reason}" for name, reason in outcome.skipped.items()]
    changed = [
        f"{name} " + ", ".join(f"{key}={value}" for key, value in options.items())
        for name, options in config.solver_options.items()
        if options and name not in outcome.skipped
    ]
    if config.num_reads is not None:
        changed.append(f"num_reads={config.num_reads} for the read-based solvers")
    if config.polish:
        changed.append("every read polished by the formulation (solve times include it; raw: the reads before it)")
    if changed:
        notes.append("not the solvers' defaults: " + "; ".join(changed))
    wall = time.perf_counter() - start
    notes.append(
        f"{outcome.executed} runs now, {outcome.reused} from earlier; {wall:.1f} s; budget of "
        f"{'/'.join(BUDGETED_SOLVERS)}: {config.budget.key()} (default solver {DEFAULT_SOLVER})"
    )
    qpu_fits = _qpu_fits(instances, rows) if args.qpu_fit else None
    if qpu_fits is not None:
        from qubocompress.bench.qpu_fit import fits_csv

        write_text_atomic(out / "qpu_fit.csv", fits_csv(qpu_fits))
    write_text_atomic(out / "results.csv", results_csv(rows))
    write_json_atomic(
        out / "results.json",
        _plain(
            {
                "solvers": list(config.solvers),
                "seeds": list(config.seeds),
                "budget": config.budget.key(),
                "num_reads": config.num_reads,
                "skipped": outcome.skipped,
                "instances": [
                    {"name": i.name, "variables": i.num_variables, "source": i.source, "sha256": i.sha256}
                    for i in instances
                ],
                "rows": rows,
                "notes": notes,
                "wall_seconds": wall,
                "qpu_fit": None if qpu_fits is None else [fit.to_dict() for fit in qpu_fits],
            }
        ),
    )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(results_table(rows))
    if qpu_fits is not None:
        from qubocompress.bench.qpu_fit import CAVEAT, fits_table

        console.print(fits_table(qpu_fits))
        console.print(f"QPU fit: {CAVEAT}", highlight=False, markup=False)
    for line in notes:
        console.print(line, highlight=False, markup=False)
    console.print(
        f"results in {out}/ (results.sqlite, results.csv, results.json, {len(plots)} plots in plots/, instances/)",
        highlight=False,
    )
    return 0
