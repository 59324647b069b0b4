"""Does ``sa`` reach the certified optimum of a compress run's QUBO for every seed? (issue 2's check)

Rebuilds the paper formulation of a finished run (``spec.json`` and β, γ from ``metrics.json``),
solves it with the default ``sa`` for seeds 0..N-1, and prints per seed: the best raw read's gap to
the certified optimum, the same after polishing (each group's pruned channels made the least
important ones), and the share of reads at the optimum before and after polishing.

    .venv/bin/python scripts/demo_seeds.py runs/demo            # after `make demo`
    .venv/bin/python scripts/demo_seeds.py runs/demo --seeds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qubocompress.solvers.metrics import residual_gap, success_mask
from qubocompress.errors import QubocompressError
from qubocompress.problem.paper import PaperFormulation
from qubocompress.problem.spec import CompressionSpec
from qubocompress.solvers.base import solve
from qubocompress.solvers.registry import make_sampler


def main(argv: list[str] | None = None) -> int:
    """Print one row per seed and a verdict; exit 0 when every seed's best polished read is optimal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run", type=Path, help="results folder of `qubocompress demo` or `compress` (paper formulation)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    args = parser.parse_args(argv)
    try:
        metrics = json.loads((args.run / "metrics.json").read_text())
        spec = CompressionSpec.from_json((args.run / "spec.json").read_text())
    except (OSError, ValueError, QubocompressError) as exc:
        print(f"demo_seeds: error: cannot read the run in {args.run}: {exc}", file=sys.stderr)
        return 2
    qubo = metrics.get("qubo", {})
    if qubo.get("formulation") != "paper":
        print("demo_seeds: error: the run did not use the paper formulation", file=sys.stderr)
        return 2
    formulation = PaperFormulation(spec, beta=qubo["beta"], gamma=qubo["gamma"])
    _, optimum = formulation.exact()
    sampler = make_sampler("sa", formulation=formulation)
    print(f"{formulation.num_variables} variables, certified optimum {optimum:.10g}")
    print("seed  raw gap    polished gap  p_s raw  p_s polished  seconds")
    all_optimal = True
    for seed in range(args.seeds):
        start = time.perf_counter()
        raw = solve(sampler, formulation.bqm, seed=seed)
        polished = formulation.polish(raw)
        seconds = time.perf_counter() - start
        rates = []
        for sampleset in (raw, polished):
            hits = sampleset.record.num_occurrences[success_mask(sampleset.record.energy, optimum)].sum()
            rates.append(float(hits) / float(sampleset.record.num_occurrences.sum()))
        gaps = [residual_gap(s.first.energy, optimum) for s in (raw, polished)]
        all_optimal &= bool(success_mask([polished.first.energy], optimum)[0])
        print(f"{seed:4d}  {gaps[0]:9.2e}  {gaps[1]:12.2e}  {rates[0]:7.3f}  {rates[1]:12.3f}  {seconds:7.1f}")
    print(
        "every seed reached the certified optimum (after polishing)" if all_optimal else "some seed missed the optimum"
    )
    return 0 if all_optimal else 1


if __name__ == "__main__":
    sys.exit(main())
