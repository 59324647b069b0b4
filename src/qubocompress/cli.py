"""The ``qubocompress`` command line.

Every user error (bad file, unknown name, impossible budget) ends as one line on stderr and exit
code 2; Ctrl-C ends with 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from qubocompress.bench_parser import add_bench_parser
from qubocompress.cluster import Cluster, add_cluster_arguments
from qubocompress.config import RAY_EPISODES_PER_BATCH, CompressConfig, parse_solver_option
from qubocompress.errors import QubocompressError
from qubocompress.progress import log_line
from qubocompress.names import (
    BUDGET_ENCODINGS,
    FORMULATIONS,
    IMPORTANCES,
    LAYER_SENSITIVITIES,
    METRICS,
    MODELS,
    SEARCH_METHODS,
    SENSITIVITIES,
    SOLVERS,
)

DEMO_OUT = Path("runs/demo")
# The demo fine-tunes one epoch (compress: 2) so that a run with a cached model stays under ~3
# minutes on 2 cores: each VGG fine-tuning epoch costs ~50 s and the demo fine-tunes twice (QUBO
# plan and uniform baseline). Measured at 16x: one epoch ends 0.3 points below fp32, two 0.1.
DEMO_FINETUNE_EPOCHS = 1

# Idle OpenMP threads sleep instead of spinning: with 2 cores, a spinning torch thread that shares
# its core with another process made training steps ~7x slower (measured); passive costs ~5%.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


LOGGER = logging.getLogger("qubocompress")


def _install_log_handler(quiet: bool) -> None:
    """Progress lines of the ``qubocompress`` logger to stderr (only warnings and errors if ``quiet``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(logging.WARNING if quiet else logging.INFO)
    LOGGER.propagate = False


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _seed(text: str) -> int:
    from qubocompress.errors import ProblemError
    from qubocompress.limits import check_seed

    try:
        return check_seed(int(text))
    except (ValueError, ProblemError) as exc:
        raise argparse.ArgumentTypeError(
            str(exc) if isinstance(exc, ProblemError) else f"expected a whole number, got {text!r}"
        ) from None


def _add_data_args(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    parser.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="data set: 'fashion-mnist' (Debian's dataset-fashion-mnist, the default when installed), "
        "'digits' (scikit-learn, the fallback), or a folder of IDX files or of train/<class>/*.png images",
    )
    parser.add_argument(
        "--normalize",
        default="mean-std",
        metavar="HOW",
        help="input preprocessing the model expects: mean-std (per channel, from the train split), none (pixels "
        "in [0, 1]), or MEAN,STD (two numbers, or M1,..,MC,S1,..,SC per channel)",
    )
    parser.add_argument(
        "--device",
        default=CompressConfig.device,
        metavar="DEVICE",
        help="where training, the analysis, fine-tuning and the sb solver run: cpu, cuda, cuda:N, or auto (cuda "
        "when torch sees a GPU); cuda without one falls back to the CPU with a warning",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines: warnings and errors only")
    if sweep:
        parser.add_argument(
            "--seeds",
            default="0",
            metavar="S1,S2,..",
            help="seeds of the solver, search and fine-tuning, one case each (the model is trained once, seed 0)",
        )
        return
    parser.add_argument(
        "--seed", type=_seed, default=0, help="seed of training, solver and fine-tuning (0 to 2^31 - 1)"
    )


def _add_compress_args(
    parser: argparse.ArgumentParser, out_default: Path, route_choices: bool = True, sweep: bool = False
) -> None:
    """The options of one compression run; ``route_choices`` False leaves out those the ablation
    sets per run or that do not apply to it (formulation, importance, sensitivity, pairwise terms,
    search, the paper's beta, baseline). ``sweep``: the target, solver, route and seed as lists
    (``--target-ratio``, ``--budget``, ``--solvers``, ``--routes``, ``--seeds``), no baseline."""
    defaults = CompressConfig()
    _add_data_args(parser, sweep)
    parser.add_argument(
        "--model",
        default=defaults.model,
        help=f"built-in model ({', '.join(MODELS)}), package.module:factory (with --weights), or a TorchScript file",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="state_dict (torch.save) for --model; a built-in model is then not trained",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="compress this checkpoint (from `qubocompress train --save`)"
    )
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="compress a package.module:factory model without --weights, as freshly initialised (refused otherwise)",
    )
    several = "comma-separated, one case each: " if sweep else ""
    parser.add_argument(
        "--target-ratio",
        type=str if sweep else _positive_float,
        default=None,
        metavar="R1,R2,.." if sweep else "R",
        help=f"{several}R times smaller than fp32: weight bits (pruned filters, removed input channels and bits all "
        f"counted), or bit operations per sample with --metric bops (default {defaults.target_ratio:g})",
    )
    parser.add_argument(
        "--budget",
        default=None,
        metavar="A1,A2,.." if sweep else "AMOUNT",
        help=f"{several}an absolute budget instead of --target-ratio: the compressed layers' weight memory (64KiB, "
        "50kB, 1.5MB, 2GiB, 40000B, 320kbit), the model file's size with --metric file, or bit operations per "
        "sample with --metric bops (2.5e9, 2.5G)",
    )
    parser.add_argument(
        "--metric",
        default=defaults.metric,
        choices=METRICS,
        help="what the budget counts: weight bits, bit operations per sample (bops), or every byte of "
        "model.safetensors (file: --budget 32KiB gives a file of at most 32 KiB); bops and file: --formulation budget",
    )
    if route_choices:
        parser.add_argument(
            "--formulation",
            default=defaults.formulation,
            choices=FORMULATIONS,
            help="paper: H = L_p + beta*L_q - gamma*R with gamma bisected to the target; budget: least damage "
            "(estimated or measured: --sensitivity) under a hard budget; filters: the budget optimum's prune counts "
            "and bits, then which filters by their pairwise Fisher (Gram) damage, one variable per filter",
        )
        parser.add_argument(
            "--budget-encoding",
            default=defaults.budget_encoding,
            choices=BUDGET_ENCODINGS,
            help="how the budget formulation's QUBO encodes the budget: slack (binary slack bits, exact), "
            "unbalanced (no slack, -l1*h + l2*h^2 on the unused budget h; heuristic) or lagrangian (no slack, "
            "the cost weighted by a bisected multiplier; sparse); the polish keeps every answer within the budget",
        )
        parser.add_argument(
            "--importance",
            default=defaults.importance,
            choices=IMPORTANCES,
            help="filter importance: mean |w|, first-order Taylor, or Fisher",
        )
        parser.add_argument(
            "--sensitivity",
            default=defaults.sensitivity,
            choices=SENSITIVITIES,
            help="layer quantization damage: loss increase measured on the calibration split, weight MSE (put in "
            "nats by one measured pass), Hessian trace x quantization error (Hutchinson), or empirical-Fisher "
            "diagonal x each weight's rounding error (also estimates the prune damage: one backward pass, no "
            "measured losses); auto: fisher with --formulation budget or filters, measured with paper",
        )
        parser.add_argument(
            "--interactions",
            action="store_true",
            help="measure pairwise cross-layer damage (CLADO-style) as QUBO couplings (--formulation budget)",
        )
    if sweep:
        parser.add_argument(
            "--solvers",
            default=defaults.solver,
            help=f"the qubo route's solvers, comma-separated: {', '.join(SOLVERS)}",
        )
    else:
        parser.add_argument("--solver", default=defaults.solver, help=f"QUBO solver: {', '.join(SOLVERS)}")
    parser.add_argument("--num-reads", type=int, default=None, help="solver reads (default: the solver's own)")
    if sweep:
        parser.add_argument(
            "--routes",
            default="qubo,uniform",
            help="comma-separated routes: qubo (once per --solvers), uniform (one bit-width, one L1 prune ratio), "
            "ga-acc, rl-acc (plans scored by validation accuracy)",
        )
    if route_choices and not sweep:
        parser.add_argument(
            "--search",
            default=defaults.search,
            choices=SEARCH_METHODS,
            help="qubo: the QUBO route; ga-acc / rl-acc: genetic algorithm / DDPG agent that score each candidate "
            "plan by its validation accuracy (the paper's peers, same options and budget as --formulation budget); "
            "uniform: one bit-width and one L1 prune ratio for every layer, the best of each bit-width's on the "
            "validation split",
        )
    if route_choices:
        parser.add_argument(
            "--search-evaluations",
            type=int,
            default=defaults.search_evaluations,
            metavar="N",
            help="ga-acc / rl-acc: at most N plans scored; above 300 the search grows to match (ga-acc: more "
            "generations; rl-acc: N episodes, AMC's 800 with N = 800)",
        )
    if route_choices and not sweep:
        parser.add_argument(
            "--search-batch",
            type=int,
            default=None,
            metavar="B",
            help="rl-acc: B episodes proposed by one policy and scored together, in parallel with --workers / "
            f"--ray-address (default: 1, HAQ's and AMC's one at a time; {RAY_EPISODES_PER_BATCH} on Ray); "
            "the same B gives the same plans with or without Ray",
        )
    parser.add_argument(
        "--exact-time-limit",
        type=_positive_float,
        default=defaults.exact_time_limit,
        metavar="S",
        help="seconds for the exact reference (MILP) of the budget formulation",
    )
    parser.add_argument(
        "--no-analysis-cache",
        dest="analysis_cache",
        action="store_false",
        help="measure the analysis again instead of reusing one cached for the same model, data and options "
        "(under $QUBOCOMPRESS_CACHE/analyses)",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=defaults.finetune_epochs,
        metavar="N",
        help="quantization-aware fine-tuning epochs (0 = none)",
    )
    if route_choices:
        parser.add_argument(
            "--beta",
            type=float,
            default=None,
            help="paper formulation: weight of the quantization-damage term (default: balanced so the largest "
            "pruning and quantization damages are equal)",
        )
    parser.add_argument(
        "--max-prune",
        type=float,
        default=defaults.max_prune_fraction,
        metavar="F",
        help="at most this fraction of each layer's filters may be pruned (the least important ones)",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=None,
        metavar="N",
        help="analyse on N images drawn from the calibration split (default: all of it, up to 2,048): a "
        "smaller N makes the analysis faster (512: ~3x on the built-in nets) and its estimates noisier",
    )
    if route_choices and not sweep:
        parser.add_argument(
            "--no-baseline", action="store_true", help="skip the uniform bits + uniform pruning baseline"
        )
    parser.add_argument("--out", type=Path, default=out_default, help="results folder")
    if not route_choices:  # the options left out keep their defaults, for the caller to set per run
        parser.set_defaults(
            formulation=defaults.formulation,
            budget_encoding=defaults.budget_encoding,
            importance=defaults.importance,
            sensitivity=defaults.sensitivity,
            interactions=False,
            search=defaults.search,
            search_evaluations=defaults.search_evaluations,
            beta=None,
            no_baseline=False,
        )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except where there is none to show (None) or it is a flag (its
    default is "not given"): the help text says what happens then."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.nargs == 0:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="qubocompress",
        description="Compress a CNN by jointly pruning filters and choosing per-layer bit-widths, "
        "searched as a QUBO (quantum annealer, classical or quantum-inspired solvers).",
        formatter_class=HelpFormatter,
    )
    from qubocompress import __version__

    parser.add_argument("--version", action="version", version=f"qubocompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = HelpFormatter

    demo = sub.add_parser(
        "demo",
        help="the default job: VGG-style net on Fashion-MNIST, 16x smaller, solver sa",
        description="Train (or load from cache) the default VGG-style CNN on Fashion-MNIST, compress it "
        "16x with the paper's QUBO solved by simulated annealing, fine-tune 1 epoch, and compare with "
        "the uniform baseline (one bit-width, one L1 prune ratio) at the same size. Same as `compress` "
        "with its defaults, --finetune-epochs 1 and --export onnx.",
        formatter_class=fmt,
    )
    _add_data_args(demo)
    demo.add_argument("--out", type=Path, default=DEMO_OUT, help="results folder")

    compress = sub.add_parser(
        "compress",
        help="compress a model to a target size with a QUBO solver",
        description="Analyse the model, build the QUBO, solve it, prune and quantize the model by the "
        "plan, fine-tune, and write plan.json, metrics.json, spec.json, qubo.bqm and model.safetensors.",
        formatter_class=fmt,
    )
    _add_compress_args(compress, Path("runs/latest"))
    compress.add_argument(
        "--solver-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the solver, repeatable; the value as JSON where it parses, else as text "
        "(e.g. --solver qpu-decomposed --solver-option qpu=mock --solver-option time_limit=60)",
    )
    compress.add_argument(
        "--json", action="store_true", help="print the metrics (metrics.json) as JSON on stdout instead of the table"
    )
    add_cluster_arguments(compress, "score each --search ga-acc generation's or rl-acc batch's plans in parallel")
    compress.add_argument(
        "--export",
        choices=("onnx",),
        default=None,
        help="also write model.onnx: int4/int8 weights with per-channel DequantizeLinear, runs in onnxruntime",
    )
    for name, summary in (
        ("inspect", "print a model file's layers: shapes before and after pruning, kept filters, bits, bytes"),
        ("export", "write a run folder's (or model file's) compressed model as ONNX"),
    ):
        command = sub.add_parser(name, help=summary, description=summary + ".", formatter_class=fmt)
        command.add_argument("path", type=Path, help="model.safetensors, or the run folder that holds it")
        command.add_argument(
            "--model",
            default=None,
            metavar="PKG.MOD:FACTORY",
            help="the factory of a user model (a file's own names are never imported); built-in models need none",
        )
        command.add_argument(
            "--trust-torchscript", action="store_true", help="load a TorchScript model, whose stored code runs"
        )
        if name == "export":
            command.add_argument("--onnx", type=Path, required=True, metavar="OUT", help="the ONNX file to write")

    train = sub.add_parser(
        "train",
        help="train a built-in model (cached by model, data and seed)",
        description="Train a built-in model, or load it from the cache, and print its accuracy.",
        formatter_class=fmt,
    )
    _add_data_args(train)
    train.add_argument("--model", default="vgg", help=f"built-in model: {', '.join(MODELS)}")
    train.add_argument("--save", type=Path, default=None, help="also write the checkpoint to this file")

    ablate = sub.add_parser(
        "ablate",
        help="compare filter importances x layer sensitivities (with/without pairwise terms) at one budget",
        description="Run the budget formulation once per filter importance, layer sensitivity and "
        "pairwise-terms setting, at the same budget, and tabulate the accuracy each reaches.",
        formatter_class=fmt,
    )
    _add_compress_args(ablate, Path("runs/ablation"), route_choices=False)
    ablate.add_argument("--importances", default=",".join(IMPORTANCES), help="comma-separated filter importances")
    ablate.add_argument(
        "--sensitivities",
        default=",".join(LAYER_SENSITIVITIES),
        help="comma-separated layer sensitivities",
    )
    ablate.add_argument("--pairs", default="both", choices=("both", "off", "on"), help="pairwise (CLADO-style) terms")
    ablate.set_defaults(formulation="budget", finetune_epochs=0, no_baseline=True)
    sweep = sub.add_parser(
        "sweep",
        help="compress one model at many targets with several routes and seeds: the accuracy-size curve",
        description="Run one compression per target, route (qubo with each solver, uniform, ga-acc, rl-acc) "
        "and seed; the model and data load once and the analysis is cached. Each case is a run folder "
        "under OUT/cases/ and a row of OUT/sweep.sqlite; killed and rerun with the same command, the sweep "
        "runs only the missing cases. Writes OUT/sweep.csv and OUT/report.html.",
        formatter_class=fmt,
    )
    _add_compress_args(sweep, Path("runs/sweep"), sweep=True)
    sweep.add_argument(
        "--fresh", action="store_true", help="start over: the folder's store and cases are set aside (.previous)"
    )
    sweep.add_argument("--no-report", action="store_true", help="do not write report.html")
    add_cluster_arguments(sweep, "run the cases (their ga-acc / rl-acc searches stay serial inside)")
    report = sub.add_parser(
        "report",
        help="write report.html (figures embedded) for a run, sweep or bench folder",
        description="Write PATH/report.html, one self-contained file (figures embedded, nothing fetched), "
        "and its figures as PNGs beside it, for a compress run folder, a sweep folder or a bench folder.",
        formatter_class=fmt,
    )
    report.add_argument("path", type=Path, help="the folder of a compress run, a sweep or a bench")
    report.add_argument("--quiet", action="store_true", help="no progress lines: warnings and errors only")
    qpu_fit = sub.add_parser(
        "qpu-fit",
        help="does the QUBO fit today's D-Wave QPUs? embedding, chains, estimated QPU time (offline)",
        description="Embed the QUBO of a compress run folder (its qubo.bqm) or a .bqm file offline into the "
        "ideal graphs of D-Wave's published topologies and print, per topology, the physical qubits, chain "
        "lengths, embedding time, whether it fits, and the QPU access time D-Wave's published timing model "
        "gives for 100 and 1,000 reads, beside the exact method's time on the same problem. No QPU is "
        "contacted.",
        formatter_class=fmt,
    )
    qpu_fit.add_argument("path", type=Path, help="a compress run folder, or a .bqm file (a bench instance)")
    qpu_fit.add_argument(
        "--topology",
        action="append",
        default=None,
        metavar="T[,T...]",
        help="advantage (Pegasus P16), advantage2 (Zephyr Z12), pegasus:M or zephyr:M,T; repeatable "
        "(default: advantage and advantage2)",
    )
    qpu_fit.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="seconds of each minorminer search"
    )
    qpu_fit.add_argument("--seed", type=_seed, default=0, help="seed of the embedding search")
    qpu_fit.add_argument("--json", action="store_true", help="print the result as JSON")
    qpu_fit.add_argument("--quiet", action="store_true", help="no progress lines: warnings and errors only")
    compress.add_argument("--no-report", action="store_true", help="do not write report.html")
    add_bench_parser(sub, fmt)
    return parser


def _items(text: str | None, what: str) -> list[str]:
    """The comma-separated items of ``text`` (an empty list for None); an empty item is a ProblemError."""
    from qubocompress.errors import ProblemError

    if text is None:
        return []
    items = [item.strip() for item in text.split(",")]
    if not any(items) or not all(items):
        raise ProblemError(f"{what}: give a comma-separated list such as 4,8,16, got {text!r}")
    return items


def _cluster(args: argparse.Namespace) -> Cluster:
    cluster = Cluster(address=args.ray_address, workers=args.workers)
    cluster.check()
    return cluster


def _run_sweep(args: argparse.Namespace, argv: list[str]) -> int:
    import shlex

    from qubocompress.errors import ProblemError
    from qubocompress.limits import check_seed
    from qubocompress.sweeps import parse_targets, run_sweep, sweep_cases

    def numbers(text: str | None, flag: str, kind: type) -> list:
        values = []
        for item in _items(text, flag):
            try:
                values.append(kind(item))
            except ValueError:
                kind_name = "number" if kind is float else "whole number"
                raise ProblemError(f"{flag}: {item!r} is not a {kind_name}") from None
        return values

    ratios = numbers(args.target_ratio, "--target-ratio", float)
    budgets = _items(args.budget, "--budget")
    targets = parse_targets(ratios or ([] if budgets else [CompressConfig.target_ratio]), budgets)
    seeds = [check_seed(seed, "--seeds") for seed in numbers(args.seeds, "--seeds", int)]
    solvers = _items(args.solvers, "--solvers")
    cases = sweep_cases(targets, _items(args.routes, "--routes"), solvers, seeds)
    per_case = {"target_ratio": None, "budget": None, "solver": solvers[0], "search": "qubo", "seed": 0}
    per_case.update(workers=None, ray_address=None)  # the sweep's cluster runs the cases: their searches stay serial
    base = _compress_config(argparse.Namespace(**{**vars(args), **per_case, "no_baseline": True}))
    command = shlex.join(["qubocompress", *argv])
    cluster = _cluster(args)
    table = run_sweep(base, cases, args.out, fresh=args.fresh, command=command, log=log_line, cluster=cluster)
    print(table.text(), end="")
    if not args.no_report:
        _write_report(args.out)
    files = "sweep.sqlite, sweep.csv, cases/" + ("" if args.no_report else ", report.html")
    print(f"results in {args.out}/ ({files})")
    return 0


def _write_report(folder: Path) -> Path:
    from qubocompress.report import write_report

    return write_report(folder, log=log_line)


def _run_qpu_fit(args: argparse.Namespace) -> int:
    from qubocompress.bench.qpu_fit import qpu_fit_path
    from qubocompress.solvers.qpu_fit import parse_topologies

    topologies = parse_topologies(args.topology or ["advantage", "advantage2"])
    report = qpu_fit_path(args.path, topologies, timeout=args.timeout, seed=args.seed, log=log_line)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text(), end="\n" if args.json else "")
    return 0


def _run_ablate(args: argparse.Namespace) -> int:
    from qubocompress.ablation import ablate, ablation_table

    pairs = {"both": (False, True), "off": (False,), "on": (True,)}[args.pairs]
    rows = ablate(
        _compress_config(args),
        [name.strip() for name in args.importances.split(",") if name.strip()],
        [name.strip() for name in args.sensitivities.split(",") if name.strip()],
        pairs,
        log=log_line,
    )
    print(ablation_table(rows), end="")
    print(f"results in {args.out}/ (ablation.json and one folder per run)")
    return 0


def _compress_config(args: argparse.Namespace) -> CompressConfig:
    from qubocompress.errors import ProblemError

    if args.budget is not None and args.target_ratio is not None:
        raise ProblemError("give either --target-ratio or --budget, not both")
    if args.search != "qubo" and (args.num_reads is not None or getattr(args, "solver_option", [])):
        raise ProblemError(f"--num-reads and --solver-option set the QUBO's solver: --search {args.search} uses none")
    return CompressConfig(
        model=args.model,
        weights=args.weights,
        data=args.data,
        normalize=args.normalize,
        checkpoint=args.checkpoint,
        target_ratio=CompressConfig.target_ratio if args.target_ratio is None else args.target_ratio,
        budget=args.budget,
        formulation=args.formulation,
        budget_encoding=args.budget_encoding,
        metric=args.metric,
        importance=args.importance,
        sensitivity=args.sensitivity,
        interactions=args.interactions,
        exact_time_limit=args.exact_time_limit,
        analysis_cache=args.analysis_cache,
        calibration_samples=args.calibration_samples,
        solver=args.solver,
        search=args.search,
        search_evaluations=args.search_evaluations,
        search_batch=getattr(args, "search_batch", None),
        seed=args.seed,
        out=args.out,
        finetune_epochs=args.finetune_epochs,
        beta=args.beta,
        max_prune_fraction=args.max_prune,
        num_reads=args.num_reads,
        baseline=not args.no_baseline,
        untrained=args.untrained,
        export_onnx=getattr(args, "export", None) == "onnx",
        device=args.device,
        solver_options=dict(parse_solver_option(text) for text in getattr(args, "solver_option", [])),
        workers=getattr(args, "workers", None),
        ray_address=getattr(args, "ray_address", None),
    )


@contextmanager
def _c_prints_to_stderr() -> Iterator[None]:
    """File descriptor 1 on stderr while the work runs, so that stdout holds only the JSON printed
    after it: compiled libraries print there (scipy's HiGHS prints a debug line on some MILPs)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_compress(config: CompressConfig, as_json: bool = False, report: bool = True) -> int:
    from qubocompress.io import jsonable
    from qubocompress.pipeline import compress, summary_text

    with _c_prints_to_stderr() if as_json else nullcontext():
        metrics = compress(config, log=log_line, finish=None if not report else _write_report)
    if as_json:
        print(json.dumps(metrics, indent=2, default=jsonable))
        return 0
    print(summary_text(metrics), end="")
    qubo = "qubo.bqm, " if config.search == "qubo" else ""
    onnx = ", model.onnx" if config.export_onnx else ""
    files = f"metrics.json, plan.json, spec.json, {qubo}model.safetensors{onnx}{', report.html' if report else ''}"
    print(f"results in {config.out}/ ({files})")
    return 0


def _run_model_file_command(args: argparse.Namespace) -> int:
    from qubocompress.apply.inspect import export_model_file, inspect_model_file

    path = args.path / "model.safetensors" if args.path.is_dir() else args.path
    if args.command == "inspect":
        print(inspect_model_file(path, args.model, trust_torchscript=args.trust_torchscript).table(), end="")
        return 0
    size = export_model_file(path, args.onnx, args.model, trust_torchscript=args.trust_torchscript)
    print(f"{args.onnx}: {size:,} bytes")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from qubocompress.data.datasets import load_dataset
    from qubocompress.errors import ModelError
    from qubocompress.io import check_writable_file
    from qubocompress.models.stats import count_macs, count_params
    from qubocompress.models.train import check_device, load_or_train, resolve_device, save_checkpoint

    check_device(args.device)
    if args.model not in MODELS:  # before the data loads
        raise ModelError(f"unknown model {args.model!r}; built-in models are: {', '.join(sorted(MODELS))}")
    if args.save is not None:
        check_writable_file(args.save, "--save")  # before the training, not after it
    dataset = load_dataset(args.data, args.normalize)
    if dataset.note:
        log_line(dataset.note)
    device = resolve_device(args.device, log_line)
    model, info = load_or_train(args.model, dataset, seed=args.seed, progress=log_line, device=device)
    print(
        f"{args.model} on {dataset.name}: {count_params(model):,} params, "
        f"{count_macs(model, dataset.input_shape):,} MACs, test top-1 {100 * info['test_acc']:.2f}% "
        f"({'cached' if info.get('cached') else 'trained'}: {info.get('cache_path')})"
    )
    if args.save is not None:
        save_checkpoint(args.save, model, info["arch"], {k: info[k] for k in ("val_acc", "test_acc") if k in info})
        print(f"checkpoint written to {args.save}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qubocompress`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    _install_log_handler(quiet)
    from qubocompress import progress

    progress.enable(not quiet)  # drawn only when stderr is a terminal
    try:
        if args.command == "demo":
            config = CompressConfig(
                data=args.data,
                normalize=args.normalize,
                seed=args.seed,
                out=args.out,
                finetune_epochs=DEMO_FINETUNE_EPOCHS,
                export_onnx=True,
                device=args.device,
            )
            return _run_compress(config)
        if args.command == "compress":
            config = _compress_config(args)
            config.check_reads_used()  # compress only: a sweep's cases of such a solver run without it
            return _run_compress(config, as_json=args.json, report=not args.no_report)
        if args.command == "train":
            return _run_train(args)
        if args.command == "ablate":
            return _run_ablate(args)
        if args.command in ("inspect", "export"):
            return _run_model_file_command(args)
        if args.command == "sweep":
            return _run_sweep(args, sys.argv[1:] if argv is None else argv)
        if args.command == "report":
            _write_report(args.path)
            return 0
        if args.command == "qpu-fit":
            return _run_qpu_fit(args)
        if args.command == "bench":
            from qubocompress.bench.cli import run_bench

            return run_bench(args)
        parser.error(f"unknown command {args.command}")
    except QubocompressError as exc:
        print(f"qubocompress: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qubocompress: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
