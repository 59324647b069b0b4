"""The ``qubocompress bench`` sub-command's options, importable without torch, scipy or dimod.

It lives outside :mod:`qubocompress.bench`, whose package imports dimod, so that ``--help`` and
argument errors answer at once; :mod:`qubocompress.bench.cli` runs the parsed command.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from qubocompress.cluster import add_cluster_arguments
from qubocompress.names import BENCH_MODELS, OFFLINE_SOLVERS

DEFAULT_OUT = Path("runs/bench")
FULL_SEEDS = 5
QUICK_SEEDS = 3
# The defaults the help shows, the same as the benchmark's own (tests/test_names.py checks):
# bench.instances' SIZE_SERIES, DEFAULT_TARGET_RATIO and BUDGET_TARGET_RATIOS, and
# bench.runner's DEFAULT_EXACT_TIME_LIMIT.
SIZE_SERIES = (100, 300, 1000, 3000, 10_000)
DEFAULT_TARGET_RATIO = 16.0
BUDGET_TARGET_RATIOS = (16.0, 24.0, 32.0)
DEFAULT_EXACT_TIME_LIMIT = 60.0


SB_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def _sb_device(text: str) -> str:
    """``--device`` as the sb solver takes it (cpu, cuda, cuda:N), checked before any instance is built."""
    if SB_DEVICE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N (the sb solver's device), got {text!r}")
    return text


def add_bench_parser(subparsers: Any, formatter_class: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Register the ``bench`` sub-command on ``subparsers`` (from ``parser.add_subparsers``), its
    help laid out by ``formatter_class``."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark the QUBO solvers (success probability, TTS99, gap) on saved instances",
        description="Run every solver on the benchmark instances with several seeds and report E*, best "
        "energy, success probability per read and per run, TTS99, residual gap and timings, with each "
        "solver's TTS99 relative to sa's. Results go to a SQLite file; rerunning resumes.",
        formatter_class=formatter_class,
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help=f"the built-in models' instances only, {QUICK_SEEDS} seeds, every offline solver, sqa and sb "
        "with fewer reads/steps: a few minutes",
    )
    bench.add_argument(
        "--solvers",
        default=None,
        metavar="LIST",
        help=f"comma-separated solvers (default: every offline one: {','.join(OFFLINE_SOLVERS)}; "
        "qpu and hybrid only when named)",
    )
    bench.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"seeds 0..N-1 per solver (default {FULL_SEEDS}, quick {QUICK_SEEDS})",
    )
    bench.add_argument(
        "--first-seed",
        type=int,
        default=0,
        metavar="S",
        help="start the seeds at S: S..S+N-1 (other seeds than an earlier sweep's; the results of "
        "every seed stored in --out are summarised together)",
    )
    bench.add_argument(
        "--instances",
        default=None,
        metavar="DIR|NAMES",
        help="a folder of <name>.bqm (+ .json) files, one .bqm file, or comma-separated names: "
        f"{', '.join(BENCH_MODELS)}, <model>-synthetic, n<variables> (default: the built-in models)",
    )
    bench.add_argument(
        "--sizes",
        default=None,
        metavar="LIST",
        help="synthetic size series, comma-separated variable counts (default "
        f"{','.join(map(str, SIZE_SERIES))}; quick: none; "
        "with --instances: none unless given)",
    )
    bench.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    bench.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-clock budget per run of ga and rl (default: equal to sa's mean run time on the instance)",
    )
    bench.add_argument(
        "--converge", action="store_true", help="let ga and rl run to their own convergence instead of a time budget"
    )
    bench.add_argument(
        "--num-reads",
        type=int,
        default=None,
        help="reads per run of the read-based solvers, not ga/rl/exact (default: each solver's own)",
    )
    bench.add_argument(
        "--polish",
        action="store_true",
        help="polish every read as `compress` does (paper form: each group's pruned channels made its least "
        "important ones; filters: counts repaired, then swaps within groups) before scoring; its time counts as "
        "solve time; the raw reads are scored too (p_s raw)",
    )
    bench.add_argument(
        "--qpu-fit",
        action="store_true",
        help="also embed every instance offline into D-Wave's Advantage (Pegasus P16) and Advantage2 (Zephyr "
        "Z12) graphs: qubits, longest chain, fits, estimated QPU access time for 100 and 1,000 reads "
        "(qpu_fit.csv, results.json; no QPU is run)",
    )
    bench.add_argument(
        "--device",
        type=_sb_device,
        default=None,
        help="device of the sb solver: cpu, cuda or cuda:N (default: cuda when available)",
    )
    bench.add_argument(
        "--solver-option",
        action="append",
        default=[],
        metavar="SOLVER:KEY=VALUE",
        help="an option of one solver, repeatable; the value as JSON where it parses, else as text "
        "(e.g. --solvers sa,qpu-decomposed --solver-option qpu-decomposed:qpu=mock)",
    )
    bench.add_argument(
        "--formulation",
        choices=("paper", "budget", "filters"),
        default="paper",
        help="paper: the paper's energy, γ calibrated to the target; budget: minimum damage under a hard "
        "weight-bit budget (built-in models only; E* from the MILP); filters: which filters to prune under "
        "the measured filter Gram matrix (the packaged instances of the built-in models; E* from SCIP's MIQP, "
        "certified or best known)",
    )
    bench.add_argument(
        "--target-ratio",
        default=None,
        metavar="R[,R...]",
        help=f"compression target(s) vs fp32: γ is calibrated to it (paper; default {DEFAULT_TARGET_RATIO:g}) or "
        f"the budget is fp32 / R (budget and filters; default {','.join(f'{r:g}' for r in BUDGET_TARGET_RATIOS)})",
    )
    bench.add_argument(
        "--exact-time-limit",
        type=float,
        default=DEFAULT_EXACT_TIME_LIMIT,
        metavar="SECONDS",
        help="time limit of the generic exact solver on BQMs without a formulation",
    )
    resume = bench.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", dest="fresh", action="store_false", help="keep earlier results and run only what is missing"
    )
    resume.add_argument(
        "--fresh",
        dest="fresh",
        action="store_true",
        help="start over: once the command line is checked, the earlier results.sqlite is moved to "
        "results.sqlite.previous (replacing an older one)",
    )
    bench.set_defaults(fresh=False)
    add_cluster_arguments(bench, "run the instance × solver × seed runs (this process writes the store)")
    return bench
