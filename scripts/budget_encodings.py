"""The budget formulation's encodings side by side on the built-in budget instances (issue 19).

For every built-in model at the bench's budget ratios (16×, 24×, 32× fewer weight bits) and every
encoding of the budget (``slack``, ``unbalanced``, ``lagrangian``: problem/encodings.py): the
BQM's variables and couplings, the physical qubits of a minor-embedding into Advantage (Pegasus
P16) and Advantage2 (Zephyr Z12) (solvers/qpu_fit.py, ideal graphs, offline), and per solver the
raw feasible-read rate and the best raw feasible read's relative gap to the MILP optimum; for
``sa`` (the formulation's recommended options) also the gap after the polish. ``sqa`` and ``sb``
run with modest read counts (:data:`MODEST`) so that the table finishes on a laptop. Results are
kept in ``--out``/encodings.json, one row per instance and encoding; a rerun skips finished rows.

    .venv/bin/python scripts/budget_encodings.py --models lenet5,vgg,resnet20 --solvers sa,sqa,sb
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from qubocompress.bench.instances import BUDGET_TARGET_RATIOS, BUILTIN_MODELS, packaged_spec_path, read_model_spec
from qubocompress.errors import QubocompressError
from qubocompress.io import write_json_atomic
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.encodings import ENCODINGS
from qubocompress.report import markdown_table
from qubocompress.solvers.qpu_fit import TOPOLOGIES, fit_bqm
from qubocompress.solvers.registry import make_sampler

# Modest settings of the other samplers (their defaults take minutes per read on the dense BQMs).
MODEST: dict[str, dict[str, Any]] = {
    "sqa": {"num_reads": 5, "num_sweeps": 200, "trotter": 4},
    "sb": {"agents": 32, "max_steps": 2000},
}


def gap(value: float, optimum: float) -> float:
    """Relative gap of a damage to the optimum (inf when there is no feasible read)."""
    return (value - optimum) / abs(optimum) if np.isfinite(value) else float("inf")


def measure(model: str, ratio: float, encoding: str, solvers: list[str], timeout: float) -> dict[str, Any]:
    """One row: sizes, QPU fits and every solver's raw (and sa's polished) figures."""
    spec, _ = read_model_spec(packaged_spec_path(model))
    start = time.perf_counter()
    formulation = BudgetFormulation(spec, ratio=ratio, encoding=encoding)
    bqm = formulation.bqm
    optimum = formulation.exact_result().objective
    row: dict[str, Any] = {
        "model": model,
        "ratio": ratio,
        "encoding": encoding,
        "variables": formulation.num_variables,
        "couplings": formulation.num_interactions,
        "build_seconds": time.perf_counter() - start,
        "optimum": optimum,
        "certified": formulation.exact_result().certified,
        "describe": formulation.describe(),
    }
    if encoding != "slack":
        row["lagrangian_gap"] = gap(formulation.multiplier.damage, optimum)
    for name, topology in TOPOLOGIES.items():
        fit = fit_bqm(bqm, topology, timeout=timeout)
        row[f"qubits_{name}"] = fit.physical_qubits
        row[f"fit_{name}"] = fit.reason
    for solver in solvers:
        options = {**formulation.recommended_sampler_options(solver), **MODEST.get(solver, {})}
        started = time.perf_counter()
        raw = make_sampler(solver, formulation, **options).sample(bqm, seed=0)
        seconds = time.perf_counter() - started
        _, damage, rate = formulation.best_feasible(raw)
        figures = {
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
            "reads": int(raw.record.num_occurrences.sum()),
            "feasible_rate": rate,
            "raw_gap": gap(np.inf if damage is None else damage, optimum),
            "seconds": seconds,
        }
        if solver == "sa":
            polished = formulation.polish(raw, seed=0)
            _, damage, _ = formulation.best_feasible(polished)
            figures["polished_gap"] = gap(np.inf if damage is None else damage, optimum)
            figures["polish_seconds"] = polished.info["timing"]["polish_seconds"]
        row[solver] = figures
    return row


def cell_rate(row: dict[str, Any], solver: str) -> str:
    figures = row.get(solver)
    if figures is None:
        return "-"
    rate, raw_gap = figures["feasible_rate"], figures["raw_gap"]
    text = f"{rate:.2f}" + (f" ({raw_gap:.3g})" if np.isfinite(raw_gap) else "")
    return text + (f" → {figures['polished_gap']:.2g}" if "polished_gap" in figures else "")


def table(rows: list[dict[str, Any]], solvers: list[str]) -> str:
    header = ["instance", "encoding", "variables", "couplings", "qubits P16", "qubits Z12", "Lagrangian gap"]
    header += [f"{s} feasible (best raw gap)" + (" → polished gap" if s == "sa" else "") for s in solvers]
    lines = []
    for row in rows:
        lagrangian = row.get("lagrangian_gap")
        lines.append(
            [
                f"{row['model']}-budget-{row['ratio']:g}x",
                row["encoding"],
                f"{row['variables']:,}",
                f"{row['couplings']:,}",
                "no fit" if row["qubits_advantage"] is None else f"{row['qubits_advantage']:,}",
                "no fit" if row["qubits_advantage2"] is None else f"{row['qubits_advantage2']:,}",
                "-" if lagrangian is None else f"{lagrangian:.2g}",
                *(cell_rate(row, s) for s in solvers),
            ]
        )
    return markdown_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(BUILTIN_MODELS))
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in BUDGET_TARGET_RATIOS))
    parser.add_argument("--encodings", default=",".join(ENCODINGS))
    parser.add_argument("--solvers", default="sa,sqa,sb")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds of each embedding search")
    parser.add_argument("--out", type=Path, default=Path("runs/encodings"))
    args = parser.parse_args(argv)
    solvers = [s for s in args.solvers.split(",") if s]
    path = args.out / "encodings.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["model"], r["ratio"], r["encoding"]) for r in rows}
    try:
        for model in args.models.split(","):
            for ratio in (float(r) for r in args.ratios.split(",")):
                for encoding in args.encodings.split(","):
                    if (model, ratio, encoding) in done:
                        continue
                    print(f"{model} {ratio:g}x {encoding} ...", file=sys.stderr, flush=True)
                    rows.append(measure(model, ratio, encoding, solvers, args.timeout))
                    write_json_atomic(path, rows)
    except QubocompressError as exc:
        print(f"budget_encodings: error: {exc}", file=sys.stderr)
        return 2
    print(table(rows, solvers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
