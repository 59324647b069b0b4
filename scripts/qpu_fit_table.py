"""Which of the benchmark's QUBOs fit today's D-Wave QPUs, and at what cost (offline)?

For every built-in instance of every formulation the bench knows — ``paper`` (the built-in models
at the bench's default 16×), ``budget`` and ``filters`` (at its 16×, 24×, 32×; a filters instance
that is not packaged is listed as missing) — prints a markdown table: size and density, then per
topology (Advantage: Pegasus P16; Advantage2: Zephyr Z12) the physical qubits, the longest chain,
whether it fits and the estimated QPU access time for 100 and 1,000 reads, and the seconds the
exact method takes to its reference optimum on the same problem (timed here, the formulation
rebuilt so nothing is cached). No QPU is run.

    .venv/bin/python scripts/qpu_fit_table.py --timeout 60
"""

from __future__ import annotations

import argparse
import sys
import time

from qubocompress.bench.instances import (
    BUDGET_TARGET_RATIOS,
    BUILTIN_MODELS,
    DEFAULT_TARGET_RATIO,
    Instance,
    builtin_budget_instance,
    builtin_filters_instance,
    builtin_instance,
)
from qubocompress.bench.qpu_fit import CAVEAT, fit_instances, fits_cells, not_fit_reasons
from qubocompress.errors import QubocompressError
from qubocompress.report import markdown_table
from qubocompress.solvers.qpu_fit import TOPOLOGIES, check_timeout


def _builders() -> list[tuple[str, object]]:
    """(label, builder) of every built-in instance, paper first."""
    builders: list[tuple[str, object]] = [
        (f"{m} (paper, {DEFAULT_TARGET_RATIO:g}x)", lambda m=m: builtin_instance(m)) for m in BUILTIN_MODELS
    ]
    for kind, build in (("budget", builtin_budget_instance), ("filters", builtin_filters_instance)):
        builders += [
            (f"{m} ({kind}, {r:g}x)", lambda m=m, r=r, build=build: build(m, r))
            for m in BUILTIN_MODELS
            for r in BUDGET_TARGET_RATIOS
        ]
    return builders


def _exact_seconds(instance: Instance) -> float:
    """Wall seconds of the formulation's reference optimum, built afresh."""
    fresh = instance.fresh_formulation()
    assert fresh is not None
    start = time.perf_counter()
    fresh.reference()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds of each minorminer search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        check_timeout(args.timeout)
    except QubocompressError as exc:
        print(f"qpu_fit_table: error: {exc}", file=sys.stderr)
        return 2
    instances, missing = [], []
    for label, build in _builders():
        try:
            instances.append(build())  # type: ignore[operator]
        except QubocompressError as exc:
            missing.append(f"{label}: {exc}")
    exact = {}
    for instance in instances:
        print(f"exact reference of {instance.name}", file=sys.stderr, flush=True)
        exact[instance.name] = _exact_seconds(instance)
    start = time.perf_counter()
    results = fit_instances(
        instances,
        exact,
        list(TOPOLOGIES.values()),
        timeout=args.timeout,
        seed=args.seed,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(markdown_table(*fits_cells(results)))
    print()
    for line in not_fit_reasons(results):
        print(f"- {line}")
    for line in missing:
        print(f"- not built: {line}")
    embed = {f.topology: 0.0 for r in results for f in r.fits}
    for result in results:
        for fit in result.fits:
            embed[fit.topology] += fit.embedding_seconds
    print()
    print(f"{CAVEAT}. Embedding seconds in all: " + ", ".join(f"{k} {v:.1f}" for k, v in embed.items()), end="")
    print(f"; {time.perf_counter() - start:.1f} s of fitting, minorminer timeout {args.timeout:g} s, seed {args.seed}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
