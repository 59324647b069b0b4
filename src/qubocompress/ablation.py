"""The ablation: one budget, every filter importance × layer sensitivity, with and without pairwise terms.

Each combination is a full ``compress`` run of the ``budget`` formulation (same model, data, seed,
budget and fine-tuning; no uniform baseline), written to ``<out>/<importance>-<sensitivity>[-pairs]``;
the folder is published whole at the end.
What differs between rows is only how the damage the QUBO minimises was estimated, so the
accuracies say which estimate leads to the better plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from qubocompress.errors import ProblemError
from qubocompress.io import run_folder, write_json_atomic
from qubocompress.pipeline import CompressConfig, Log, compress, log_line


def ablate(
    base: CompressConfig,
    importances: Sequence[str],
    sensitivities: Sequence[str],
    pairs: Sequence[bool] = (False, True),
    log: Log = log_line,
) -> list[dict[str, Any]]:
    """Run every combination; returns one row per run (also written to ``<out>/ablation.json``)."""
    if base.formulation != "budget" or base.search != "qubo":
        raise ProblemError("the ablation compares damage estimates of the budget QUBO: use --formulation budget")
    if not importances or not sensitivities or not pairs:
        raise ProblemError("the ablation needs at least one importance, one sensitivity and one pairs setting")
    combos = [(i, s, p) for i in importances for s in sensitivities for p in pairs]
    for importance, sensitivity, _ in combos:  # fail before the first run, not in the middle
        replace(base, importance=importance, sensitivity=sensitivity).validate()
    with run_folder(base.out) as folder:  # the ablation's folder is published whole, as a run's
        rows = [
            _ablation_row(base, folder, combo, f"[{number}/{len(combos)}]", log)
            for number, combo in enumerate(combos, 1)
        ]
        write_json_atomic(folder / "ablation.json", rows)
    return rows


def _ablation_row(
    base: CompressConfig, folder: Path, combo: tuple[str, str, bool], counter: str, log: Log
) -> dict[str, Any]:
    """Run one combination into ``folder``/<name>; its row of the table."""
    importance, sensitivity, with_pairs = combo
    name = f"{importance}-{sensitivity}" + ("-pairs" if with_pairs else "")
    log(f"{counter} {name}")
    config = replace(
        base,
        importance=importance,
        sensitivity=sensitivity,
        interactions=with_pairs,
        baseline=False,
        out=base.out / name,
    )
    metrics = compress(config, log=lambda line: log(f"  [{name}] {line}"), into=folder / name)
    compressed, qubo = metrics["compressed"], metrics["qubo"]
    return {
        "name": name,
        "importance": importance,
        "sensitivity": sensitivity,
        "pairs": with_pairs,
        "test_acc_before_finetune": compressed["test_acc_before_finetune"],
        "test_acc": compressed["test_acc"],
        "finetune_epochs": compressed["finetune_epochs"],
        "ratio": compressed["ratio"],
        "cost_ratio": compressed["cost_ratio"],
        "energy": qubo["energy"],
        "exact_certified": qubo["exact"]["certified"],
        "analysis_seconds": metrics["timing"]["analysis"],
        "fp32_test_acc": metrics["model"]["fp32_test_acc"],
    }


def ablation_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of the rows of :func:`ablate`."""
    header = ("importance", "sensitivity", "pairs", "top-1 %", "before fine-tune", "ratio", "QUBO energy", "analysis s")
    lines = [header]
    for row in rows:
        lines.append(
            (
                row["importance"],
                row["sensitivity"],
                "yes" if row["pairs"] else "no",
                f"{100 * row['test_acc']:.2f}",
                f"{100 * row['test_acc_before_finetune']:.2f}",
                f"{row['ratio']:.1f}x",
                f"{row['energy']:.4g}",
                f"{row['analysis_seconds']:.0f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines) + "\n"
