"""How the QUBO builds scale with the number of variables (issue 20, "Bigger QUBOs").

For each size (variables, default 1k-50k) and each kind — the budget BQM in its three encodings
(``slack``, ``unbalanced``, ``lagrangian``), the budget CQM (``cqm``) and the ``filters`` BQM — one
child process builds it and reports variables, couplings, wall and CPU seconds and peak resident memory
(``VmHWM``, reset before each phase through ``/proc/self/clear_refs``) of each phase: the spec,
the budget's MILP reference (which the penalty and the cost unit need), the Lagrange multiplier
(slack-free encodings) and the build itself. A build whose predicted memory exceeds ``--max-gib``
(the slack and unbalanced budget BQMs and the filters BQM are dense: ``n(n − 1)/2`` couplings) is
not run; its line says what it would need. Then the log-log slopes of build seconds (wall, CPU)
and peak memory against variables, per kind.

Specs: budget kinds, :func:`~qubocompress.problem.synthetic.synthetic_spec` (VGG-like, 128-unit
hidden layer, 4 prune steps, interactions) at the least ``depth`` whose budget BQM has at least
the size's variables (about 900 per depth: a conv's cell has 5 × 6 × 5 states); filters, the same
net without measurements at the least ``width`` with that many channels, its synthetic filter Gram
matrix, every group pruning half its ``max_pruned`` at ``b_max`` bits (the counts a budget stage
would give, without its MILP).

``--sa``: ``sa`` (dwave-samplers, the project's wrapper) on the lagrangian budget BQM of the
``--sa-variables`` size (the encoding that builds sparsely), raw and after a polish of
``--sa-chains`` chains: the feasible share, the best feasible damage's gap to the MILP's
(``read_objectives``: the damage of a feasible read) and the wall and CPU seconds.

    nice -n 5 .venv/bin/python scripts/qubo_scaling.py --sizes 1000,2000,5000 --kinds lagrangian,cqm
    nice -n 5 .venv/bin/python scripts/qubo_scaling.py --sa
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qubocompress.errors import QubocompressError
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.encodings import ENCODINGS
from qubocompress.problem.filters import FiltersFormulation
from qubocompress.problem.spec import CompressionSpec
from qubocompress.problem.synthetic import synthetic_spec, with_synthetic_filter_gram
from qubocompress.report import markdown_table
from qubocompress.solvers.registry import make_sampler

KINDS = (*ENCODINGS, "cqm", "filters")
DENSE = ("slack", "unbalanced", "filters")
DEFAULT_SIZES = (1000, 2000, 5000, 10_000, 20_000, 50_000)
RATIO = 16.0
BUILD_TARGET_SECONDS = 10.0
SA_TARGET_SECONDS = 30.0
SA_TARGET_GAP = 0.01
MIB = 2**20
# Predicted peak bytes of a dense build per variable²: its n × n float64 matrix (8) and the BQM's
# adjacency (dimod keeps each coupling twice, 16 bytes each), for filters also the spec's and the
# formulation's Gram matrices (8 + 8): 24 and 40; measured with the process around them at 10,000
# variables (3269 MiB for slack's 10,875, 4316 MiB for filters'): 29 and 45.
DENSE_BYTES = {"slack": 30, "unbalanced": 30, "filters": 45}


@dataclass(frozen=True)
class Phase:
    """One timed phase of a child build: wall and CPU seconds, and peak resident MiB during it (the
    build is single-threaded, so on a contended box its CPU seconds estimate an idle core's wall)."""

    seconds: float
    cpu_seconds: float
    peak_mib: float


@dataclass(frozen=True)
class Row:
    """One build: the kind, the size asked for, what was built, and its phases (None: not built)."""

    kind: str
    size: int
    variables: int
    couplings: int
    phases: dict[str, Phase] | None
    note: str = ""


def budget_spec(variables: int, seed: int = 0) -> tuple[CompressionSpec, int]:
    """The least-depth VGG-like spec whose budget BQM has at least ``variables`` state variables, and its depth."""
    depth = 1
    while True:
        spec = synthetic_spec(depth=depth, hidden=128, prune_steps=4, interactions=True, seed=seed)
        if state_variables(spec) >= variables:
            return spec, depth
        depth += max(1, int(depth * (variables / state_variables(spec) - 1)))


def state_variables(spec: CompressionSpec) -> int:
    """Cell-state variables of the spec's budget BQM at the default bit options (slack bits aside)."""
    return sum(cell.size.size for cell in BudgetFormulation(spec, ratio=RATIO).cells)


def filters_width(variables: int) -> float:
    """The least width (to 1 %) at which :func:`synthetic_spec`'s net has at least ``variables`` channels."""
    width = variables / 224  # the default net's convs have 224 channels in all
    while sum(group.size for group in synthetic_spec(width=width).groups) < variables:
        width *= 1.01
    return width


def filters_formulation(spec: CompressionSpec) -> FiltersFormulation:
    """Every group prunes half its ``max_pruned`` (at least one), every layer at ``b_max`` bits."""
    counts = {group.name: max(1, group.max_pruned // 2) for group in spec.groups}
    return FiltersFormulation(spec, counts, {layer.name: spec.b_max for layer in spec.layers}, time_limit=1.0)


# --- the child ---------------------------------------------------------------------------------


def _reset_peak() -> None:
    """Reset this process's VmHWM (Linux >= 4.0); elsewhere a no-op (a phase's peak is then the
    process's peak so far)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _timed(phases: dict[str, Phase], name: str, work: Callable[[], Any]) -> Any:
    _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    result = work()
    phases[name] = Phase(time.perf_counter() - start, time.process_time() - cpu, _peak_mib())
    return result


def child(kind: str, size: int, time_limit: float, seed: int) -> dict[str, Any]:
    """Build one QUBO (or CQM) in this process; its figures as a JSON-able dict."""
    phases: dict[str, Phase] = {}
    if kind == "filters":
        width = filters_width(size)
        spec = _timed(phases, "spec", lambda: with_synthetic_filter_gram(synthetic_spec(width=width, seed=seed), seed))
        formulation = filters_formulation(spec)
        bqm = _timed(phases, "build", lambda: formulation.bqm)
        built = (bqm.num_variables, bqm.num_interactions)
    else:
        spec, _ = _timed(phases, "spec", lambda: budget_spec(size, seed))
        encoding = "slack" if kind == "cqm" else kind
        formulation = BudgetFormulation(spec, ratio=RATIO, encoding=encoding, time_limit=time_limit)
        _timed(phases, "reference", formulation.exact_result)
        if encoding != "slack":
            _timed(phases, "multiplier", lambda: formulation.multiplier)
        if kind == "cqm":
            cqm = _timed(phases, "build", formulation.to_cqm)
            built = (cqm.num_variables(), cqm.objective.num_interactions)
        else:
            bqm = _timed(phases, "build", lambda: formulation.bqm)
            built = (bqm.num_variables, bqm.num_interactions)
    return asdict(Row(kind, size, built[0], built[1], phases))


# --- the parent --------------------------------------------------------------------------------


def predicted(kind: str, size: int, seed: int) -> tuple[int, int]:
    """(variables, couplings) the build would have, from the spec alone (dense kinds: every pair)."""
    if kind == "filters":
        n = sum(group.size for group in synthetic_spec(width=filters_width(size), seed=seed).groups)
    else:
        n = state_variables(budget_spec(size, seed)[0])
    return n, n * (n - 1) // 2


def run_child(kind: str, size: int, time_limit: float, seed: int, max_gib: float) -> Row:
    """One build in a child process, or the reason it is not run."""
    if kind in DENSE:
        variables, couplings = predicted(kind, size, seed)
        need = DENSE_BYTES[kind] * variables**2 / 2**30
        if need > max_gib:
            note = f"not built: would need {couplings:,} couplings = {need:.1f} GiB (> {max_gib:g} GiB)"
            return Row(kind, size, variables, couplings, None, note)
    command = [sys.executable, __file__, "--child", kind, str(size), "--time-limit", str(time_limit)]
    command += ["--seed", str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return Row(kind, size, 0, 0, None, f"failed: {tail}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    phases = {name: Phase(**phase) for name, phase in data.pop("phases").items()}
    return Row(**data, phases=phases)


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two points)."""
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def table(rows: list[Row]) -> str:
    lines = []
    for row in rows:
        if row.phases is None:
            lines.append((row.kind, f"{row.variables:,}", f"{row.couplings:,}", "-", "-", "-", "-", "-", row.note))
            continue
        build = row.phases["build"]
        before = sum(p.seconds for name, p in row.phases.items() if name in ("reference", "multiplier"))
        lines.append(
            (
                row.kind,
                f"{row.variables:,}",
                f"{row.couplings:,}",
                f"{build.seconds:.2f}",
                f"{build.cpu_seconds:.2f}",
                f"{build.peak_mib:.0f}",
                f"{before:.1f}",
                f"{build.seconds / BUILD_TARGET_SECONDS:.2f}",
                row.note,
            )
        )
    header = (
        "kind",
        "variables",
        "couplings",
        "build s",
        "build CPU s",
        "build peak MiB",
        "MILP s",
        "build s / 10 s",
        "note",
    )
    return markdown_table(header, lines)


def slopes(rows: list[Row]) -> str:
    lines = []
    for kind in dict.fromkeys(row.kind for row in rows):
        built = [row for row in rows if row.kind == kind and row.phases is not None]
        xs = [float(row.variables) for row in built]
        figures = [
            slope(xs, [max(getattr(row.phases["build"], key), 1e-6) for row in built])  # type: ignore[index]
            for key in ("seconds", "cpu_seconds", "peak_mib")
        ]
        lines.append((kind, str(len(built)), *("-" if value is None else f"{value:.2f}" for value in figures)))
    header = ("kind", "sizes built", "slope of build s", "slope of build CPU s", "slope of peak MiB")
    return markdown_table(header, lines)


def sa_check(size: int, time_limit: float, seed: int, reads: int, sweeps: int, chains: int) -> None:
    """``sa`` on the lagrangian budget BQM of ``size`` variables, then a polish of ``chains`` chains:
    feasible share, gaps to the MILP's damage and wall seconds, printed as they come."""
    spec, _ = budget_spec(size, seed)
    formulation = BudgetFormulation(spec, ratio=RATIO, encoding="lagrangian", time_limit=time_limit)
    start = time.perf_counter()
    exact = formulation.exact_result()
    bqm = formulation.bqm
    status = "certified" if exact.certified else f"uncertified, proven gap {exact.gap:.2e}"
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"sa on the lagrangian budget BQM: {bqm.num_variables:,} variables, {bqm.num_interactions:,} couplings")
    say(f"  MILP reference {exact.objective:.6g} nats ({status}, {exact.seconds:.1f} s)")
    say(f"  MILP + multiplier + build: {time.perf_counter() - start:.1f} s")

    def gap(values: np.ndarray) -> float:
        return (float(np.min(values)) - exact.objective) / abs(exact.objective)

    options = {**formulation.recommended_sampler_options("sa"), "num_reads": reads, "num_sweeps": sweeps}
    start, cpu = time.perf_counter(), time.process_time()
    sampleset = make_sampler("sa").sample(bqm, seed=seed, **options)
    sampled, sampled_cpu = time.perf_counter() - start, time.process_time() - cpu
    raw = formulation.read_objectives(sampleset)
    say(
        f"  sa {reads} reads x {sweeps} sweeps ({options.get('beta_schedule_type', 'default')} schedule): "
        f"{sampled:.1f} s ({sampled_cpu:.1f} CPU s) = {sampled / SA_TARGET_SECONDS:.2f} of the 30 s target"
    )
    say(f"  raw: {np.isfinite(raw).mean():.0%} feasible, best gap to the MILP {gap(raw):.2e} (target 1 %)")
    start, cpu = time.perf_counter(), time.process_time()
    polished = formulation.read_objectives(formulation.polish(sampleset, chains=chains, seed=seed))
    total, total_cpu = sampled + time.perf_counter() - start, sampled_cpu + time.process_time() - cpu
    say(
        f"  polished ({chains} chains): sa + polish {total:.1f} s ({total_cpu:.1f} CPU s) = "
        f"{total / SA_TARGET_SECONDS:.2f} of 30 s; "
        f"best gap to the MILP {gap(polished):.2e} = {gap(polished) / SA_TARGET_GAP:.2f} of the 1 % target"
    )


def sizes_of(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise QubocompressError(f"--sizes takes positive integers separated by commas, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="variables per build")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"any of {', '.join(KINDS)}")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds of each MILP (reference, multiplier)")
    parser.add_argument("--max-gib", type=float, default=4.0, help="skip a dense build predicted to need more")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sa", action="store_true", help="run the sa check instead of the curve")
    parser.add_argument("--sa-variables", type=int, default=10_000)
    parser.add_argument("--sa-reads", type=int, default=4)
    parser.add_argument("--sa-sweeps", type=int, default=200)
    parser.add_argument("--sa-chains", type=int, default=8, help="chains of the polish after sa")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.child:
            print(json.dumps(child(args.child[0], int(args.child[1]), args.time_limit, args.seed)))
            return 0
        if args.sa:
            sa_check(args.sa_variables, args.time_limit, args.seed, args.sa_reads, args.sa_sweeps, args.sa_chains)
            return 0
        sizes = sizes_of(args.sizes)
        kinds = args.kinds.split(",")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise QubocompressError(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
        rows = []
        for kind in kinds:
            for size in sizes:
                rows.append(run_child(kind, size, args.time_limit, args.seed, args.max_gib))
                print(f"# {kind} {size}: {rows[-1]}", file=sys.stderr, flush=True)
    except QubocompressError as exc:
        print(f"qubo_scaling: error: {exc}", file=sys.stderr)
        return 2
    print(table(rows))
    print()
    print(slopes(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
