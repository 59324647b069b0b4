"""The ``filters`` QUBO's plan against the rank-prefix plan at the same counts and bits (issue 18).

For every model, target ratio and seed: one ``compress`` run with ``--formulation budget`` (solver
``exact`` by default: the budget MILP's optimum, each group's ``k_g`` least important filters) and
one with ``--formulation filters`` (solver ``sa``: which ``k_g`` filters, by their Fisher Gram
damage, at the counts and bits of that same optimum), the same seed (solver and fine-tuning), no
uniform baseline. The script checks that both plans have the same counts and bits (so the same
weight bits) and that the budget plan is the rank prefix, then records per plan, on the test split:
the cross-entropy and top-1 of the compressed model before fine-tuning (against the fp32 model's),
top-1 and cross-entropy after ``--finetune-epochs``, the model file's bytes, and the damage each
plan is estimated to do (the filters QUBO's energy, ½pᵀGp + quantization, of both plans). Each
case's row is added to ``--csv`` as soon as it is done; a rerun skips the cases already there.
Prints per model and ratio the mean ± sd over seeds of Δloss and Δtop-1 (filters − rank) and how
many seeds the filters plan wins.

    .venv/bin/python scripts/filters_vs_rank.py --models vgg --ratios 16,24,32 --seeds 0,1,2
    .venv/bin/python scripts/filters_vs_rank.py --models resnet20 --finetune-epochs 1
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from qubocompress.analysis.graph import ModelGraph, trace_model
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import quantize_model_weights
from qubocompress.data.datasets import Dataset, load_dataset
from qubocompress.errors import QubocompressError
from qubocompress.io import write_text_atomic
from qubocompress.models.train import evaluate, evaluate_loss, load_or_train
from qubocompress.pipeline import CompressConfig, CompressResult, run_compression
from qubocompress.problem.plan import Plan
from qubocompress.report import markdown_table

PLANS = ("rank", "filters")
KEY = ("model", "ratio", "seed", "finetune_epochs")
FIELDS = (
    *KEY,
    "counts",
    "bits",
    "weight_bits",
    "ratio_achieved",
    "budget_certified",
    "filters_moved",
    "fp32_loss",
    "fp32_top1",
    *(
        f"{plan}_{figure}"
        for plan in PLANS
        for figure in (
            "loss_before",
            "top1_before",
            "top1_after",
            "loss_after",
            "file_bytes",
            "est_damage",
            "seconds",
        )
    ),
    "filters_reference_damage",
)


def counts_of(plan: Plan) -> dict[str, int]:
    """Group name -> how many of its filters ``plan`` prunes (groups that lose none left out)."""
    return {name: len(channels) for name, channels in plan.pruned.items() if channels}


def measured(model: nn.Module, graph: ModelGraph, plan: Plan, dataset: Dataset) -> tuple[float, float]:
    """(cross-entropy in nats, top-1) on the test split of ``model`` pruned and quantized by ``plan``,
    not fine-tuned: the model the pipeline scores as ``test_acc_before_finetune``."""
    compressed = quantize_model_weights(prune_model(model, graph, plan), plan.bits)
    return evaluate_loss(compressed, dataset.test), evaluate(compressed, dataset.test)


def run_case(
    name: str,
    model: nn.Module,
    info: dict[str, Any],
    dataset: Dataset,
    ratio: float,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, CompressResult | float]:
    """Both runs of one case, the filters one first: ``{"filters": result, "rank": result,
    "filters_seconds": s, ...}``. A QubocompressError of the filters run (the budget optimum prunes
    nothing, say) is raised before the budget run starts."""
    runs: dict[str, Any] = {}
    for plan, formulation, solver in (("filters", "filters", args.solver), ("rank", "budget", args.budget_solver)):
        config = CompressConfig(
            model=name,
            data=args.data,
            target_ratio=ratio,
            formulation=formulation,
            solver=solver,
            seed=seed,
            finetune_epochs=args.finetune_epochs,
            baseline=False,
            exact_time_limit=args.exact_time_limit,
            calibration_samples=args.calibration_samples,
        )
        config.validate(model_given=True)
        start = time.perf_counter()
        runs[plan] = run_compression(
            config,
            lambda line, tag=f"{name} {ratio:g}x seed {seed} {plan}": print(f"  [{tag}] {line}", file=sys.stderr),
            model=model,
            dataset=dataset,
            model_info=info,
        )
        runs[f"{plan}_seconds"] = time.perf_counter() - start
    return runs


def case_row(
    name: str,
    ratio: float,
    seed: int,
    epochs: int,
    runs: dict[str, Any],
    model: nn.Module,
    graph: ModelGraph,
    dataset: Dataset,
    fp32: tuple[float, float],
) -> dict[str, Any]:
    """The CSV row of one case; SystemExit when the two plans differ in counts or bits, or the
    budget plan is not each group's least important filters."""
    rank, filters = runs["rank"], runs["filters"]
    if counts_of(rank.plan) != counts_of(filters.plan) or dict(rank.plan.bits) != dict(filters.plan.bits):
        raise SystemExit(
            f"filters_vs_rank: error: {name} {ratio:g}x seed {seed}: the plans differ in counts or bits "
            f"(budget {counts_of(rank.plan)}, filters {counts_of(filters.plan)}); rerun with --budget-solver exact"
        )
    for group in rank.spec.groups:
        prefix = set(group.prune_order()[: len(rank.plan.pruned.get(group.name, ()))].tolist())
        if set(rank.plan.pruned.get(group.name, ())) != prefix:
            raise SystemExit(f"filters_vs_rank: error: the budget plan of {group.name!r} is not its rank prefix")
    qubo = filters.metrics.figures["qubo"]
    if qubo["counts"] != counts_of(filters.plan):
        raise SystemExit("filters_vs_rank: error: the filters plan does not keep its formulation's counts")
    weight_bits = rank.metrics.figures["compressed"]["weight_bits"]
    assert weight_bits == filters.metrics.figures["compressed"]["weight_bits"]  # same counts and bits
    row: dict[str, Any] = {
        "model": name,
        "ratio": f"{ratio:g}",
        "seed": seed,
        "finetune_epochs": epochs,
        "counts": " ".join(f"{g}:{k}" for g, k in counts_of(rank.plan).items()),
        "bits": " ".join(str(b) for b in rank.plan.bits.values()),
        "weight_bits": weight_bits,
        "ratio_achieved": f"{rank.metrics.ratio:.3f}",
        "budget_certified": qubo["budget_stage"]["certified"],
        "filters_moved": sum(
            len(set(channels) - set(rank.plan.pruned.get(group, ()))) for group, channels in filters.plan.pruned.items()
        ),
        "fp32_loss": f"{fp32[0]:.5f}",
        "fp32_top1": f"{fp32[1]:.4f}",
        "filters_reference_damage": f"{qubo['exact_energy']:.6g}",
        "rank_est_damage": f"{qubo['rank_prefix_energy']:.6g}",
        "filters_est_damage": f"{qubo['energy']:.6g}",
    }
    for plan in PLANS:
        result = runs[plan]
        loss, top1 = measured(model, graph, result.plan, dataset)
        if abs(top1 - result.metrics.test_acc_before_finetune) > 1e-9:
            raise SystemExit(f"filters_vs_rank: error: the {plan} plan's rebuilt model scores another top-1")
        row.update(
            {
                f"{plan}_loss_before": f"{loss:.5f}",
                f"{plan}_top1_before": f"{top1:.4f}",
                f"{plan}_top1_after": f"{result.metrics.test_acc:.4f}",
                f"{plan}_loss_after": f"{evaluate_loss(result.model, dataset.test):.5f}",
                f"{plan}_file_bytes": result.metrics.model_file_bytes,
                f"{plan}_seconds": f"{runs[f'{plan}_seconds']:.1f}",
            }
        )
    return row


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows already in ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as CSV with :data:`FIELDS` as the header, written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def summary(rows: list[dict[str, str]]) -> str:
    """Per model, ratio and fine-tuning: mean ± sd over seeds of the filters plan's Δ against the
    rank prefix (loss and top-1 before fine-tuning, top-1 after), and on how many seeds it wins."""

    def stat(deltas: list[float], scale: float, form: str, better: int) -> str:
        """mean ± sd of ``deltas`` times ``scale`` and the wins (``better``: +1 higher wins, -1 lower)."""
        mean = statistics.fmean(deltas) * scale
        sd = statistics.stdev(deltas) * scale if len(deltas) > 1 else 0.0
        wins = sum(better * d > 0 for d in deltas)
        return f"{mean:+{form}} ± {sd:{form}} ({wins}/{len(deltas)})"

    cases: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for row in rows:
        cases.setdefault((row["model"], row["ratio"], row["finetune_epochs"]), []).append(row)
    table = []
    for (model, ratio, epochs), group in cases.items():

        def delta(figure: str, group: list[dict[str, str]] = group) -> list[float]:
            return [float(r[f"filters_{figure}"]) - float(r[f"rank_{figure}"]) for r in group]

        fp32_loss = statistics.fmean(float(r["fp32_loss"]) for r in group)
        rank_increase = statistics.fmean(float(r["rank_loss_before"]) for r in group) - fp32_loss
        table.append(
            (
                model,
                f"{ratio}x",
                str(len(group)),
                f"{rank_increase:.4f}",
                stat(delta("est_damage"), 1, ".2e", -1),
                stat(delta("loss_before"), 1, ".4f", -1),
                stat(delta("top1_before"), 100, ".2f", 1),
                stat(delta("top1_after"), 100, ".2f", 1),
                epochs,
            )
        )
    header = (
        "model",
        "target",
        "seeds",
        "rank Δloss vs fp32 (nats)",
        "Δ est. damage (nats, wins)",
        "Δ loss before FT (nats, wins)",
        "Δ top-1 before FT (pts, wins)",
        "Δ top-1 after FT (pts, wins)",
        "FT epochs",
    )
    return markdown_table(header, table)


def parse_list(text: str, kind: type) -> list[Any]:
    """``"a,b,c"`` as a list of ``kind``."""
    return [kind(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg,resnet20", help="comma-separated built-in models")
    parser.add_argument("--data", default=None, help="as qubocompress --data (default: Fashion-MNIST)")
    parser.add_argument("--ratios", default="16,24,32", help="comma-separated target ratios")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (solver and fine-tuning)")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--solver", default="sa", help="the filters QUBO's solver")
    parser.add_argument("--budget-solver", default="exact", help="the budget QUBO's solver (exact: its MILP optimum)")
    parser.add_argument("--exact-time-limit", type=float, default=60.0, help="seconds per reference solve")
    parser.add_argument("--calibration-samples", type=int, default=None)
    parser.add_argument("--csv", type=Path, default=Path("docs/filters-vs-rank.csv"))
    args = parser.parse_args(argv)
    try:
        models, ratios, seeds = (
            parse_list(args.models, str),
            parse_list(args.ratios, float),
            parse_list(args.seeds, int),
        )
        rows = read_rows(args.csv)
    except (ValueError, OSError, csv.Error) as exc:
        print(f"filters_vs_rank: error: {exc}", file=sys.stderr)
        return 2
    done = {tuple(row[k] for k in KEY) for row in rows}
    try:
        for name in models:
            dataset = load_dataset(args.data)
            model, info = load_or_train(name, dataset, seed=0, progress=lambda line: print(line, file=sys.stderr))
            graph = trace_model(model, dataset.input_shape)
            fp32 = (evaluate_loss(model, dataset.test), evaluate(model, dataset.test))
            for seed in seeds:  # every target at a seed before the next seed: a cut-short run covers them all
                for ratio in ratios:
                    if (name, f"{ratio:g}", str(seed), str(args.finetune_epochs)) in done:
                        continue
                    try:
                        runs = run_case(name, model, info, dataset, ratio, seed, args)
                    except QubocompressError as exc:  # this case only: e.g. nothing to prune at this target
                        print(f"{name} {ratio:g}x seed {seed}: skipped: {exc}", file=sys.stderr, flush=True)
                        continue
                    rows.append(case_row(name, ratio, seed, args.finetune_epochs, runs, model, graph, dataset, fp32))
                    write_rows(args.csv, rows)
                    print(f"{name} {ratio:g}x seed {seed}: done", file=sys.stderr, flush=True)
    except QubocompressError as exc:
        print(f"filters_vs_rank: error: {exc}", file=sys.stderr)
        return 2
    wanted = {(m, f"{r:g}") for m in models for r in ratios}
    print(summary([row for row in read_rows(args.csv) if (row["model"], row["ratio"]) in wanted]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
