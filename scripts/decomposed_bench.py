"""``qpu-decomposed`` (mock QPU) against ``sa`` on the largest instances (issue 19).

For each instance — the largest built-in ones (ResNet-20 and VGG, paper form at 16×; ResNet-20's
budget form at 16×) and the 10,000-variable synthetic one — one seeded run of ``sa`` (its defaults
unless ``--sa-reads``) and one of ``qpu-decomposed`` with ``qpu=mock`` under ``--time-limit``.
Prints a markdown table: best energy, gap to E* (certified or best known), wall seconds, the
ratios to sa's, sub-problems solved and physical qubits per sub-problem. The sub-problems go to
MockDWaveSampler (classical steepest descent on a Pegasus P16 graph): nothing here is a QPU result.

    .venv/bin/python scripts/decomposed_bench.py --time-limit 60
    .venv/bin/python scripts/decomposed_bench.py --instances resnet20,n10000 --sa-reads 30
"""

from __future__ import annotations

import argparse
import sys
import time

from qubocompress.bench.instances import Instance, builtin_budget_instance, builtin_instance, size_series_instance
from qubocompress.errors import QubocompressError
from qubocompress.report import markdown_table
from qubocompress.solvers.metrics import residual_gap
from qubocompress.solvers.registry import make_sampler

INSTANCES = {
    "resnet20": lambda: builtin_instance("resnet20"),
    "vgg": lambda: builtin_instance("vgg"),
    "resnet20-budget-16x": lambda: builtin_budget_instance("resnet20", 16.0),
    "n10000": lambda: size_series_instance(10_000),
}


def best_objective(instance: Instance, sampleset: object) -> float:
    """The best read as the instance measures it against E* (its formulation's read objective)."""
    if instance.formulation is None:
        return float(sampleset.first.energy)
    return float(instance.formulation.read_objectives(sampleset).min())


def run(instance: Instance, solver: str, options: dict, seed: int) -> tuple[float, float, dict]:
    """(best objective, wall seconds, the sample set's info) of one run."""
    sampler = make_sampler(solver, instance.formulation, **options)
    start = time.perf_counter()
    sampleset = sampler.sample(instance.bqm, seed=seed)
    return best_objective(instance, sampleset), time.perf_counter() - start, dict(sampleset.info)


def gap_text(energy: float, e_star: float | None) -> str:
    """The residual gap to E* as text (– without an E*)."""
    return "–" if e_star is None else f"{residual_gap(energy, e_star):.2e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default=",".join(INSTANCES), help=f"comma-separated: {', '.join(INSTANCES)}")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds of each qpu-decomposed run")
    parser.add_argument("--sub-size", type=int, default=50, help="variables per sub-problem")
    parser.add_argument("--clique", action="store_true", help="clique embeddings (busclique) instead of minorminer")
    parser.add_argument("--sa-reads", type=int, default=None, help="sa reads (default: sa's own, 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.instances.split(",") if name.strip()]
    unknown = [name for name in names if name not in INSTANCES]
    if unknown:
        print(f"decomposed_bench: error: unknown instance {unknown[0]!r}; choose from {', '.join(INSTANCES)}")
        return 2
    decomposed = {"qpu": "mock", "time_limit": args.time_limit, "sub_size": args.sub_size, "clique": args.clique}
    sa = {} if args.sa_reads is None else {"num_reads": args.sa_reads}
    rows = []
    try:
        for name in names:
            instance = INSTANCES[name]()
            e_sa, t_sa, _ = run(instance, "sa", sa, args.seed)
            e_dec, t_dec, info = run(instance, "qpu-decomposed", decomposed, args.seed)
            e_star = instance.e_star
            qubits = info["physical_qubits"]
            rows.append(
                [
                    name,
                    str(instance.bqm.num_variables),
                    f"{e_star:.6g} ({'certified' if instance.certified else 'best known'})",
                    f"{e_sa:.6g}",
                    gap_text(e_sa, e_star),
                    f"{t_sa:.1f}",
                    f"{e_dec:.6g}",
                    gap_text(e_dec, e_star),
                    f"{t_dec:.1f}",
                    f"{t_dec / t_sa:.2f}",
                    f"{info['subproblems']} ({info['decomposed_wins']} of {info['iterations']} iterations won)",
                    f"{qubits['mean']:.0f} / {qubits['max']}",
                    info["stopped_by"],
                ]
            )
            print(
                f"{name}: sa {e_sa:.6g} in {t_sa:.1f} s; qpu-decomposed (mock) {e_dec:.6g} in {t_dec:.1f} s", flush=True
            )
    except QubocompressError as exc:
        print(f"decomposed_bench: error: {exc}")
        return 2
    header = [
        "instance",
        "variables",
        "E*",
        "sa best",
        "sa gap",
        "sa s",
        "decomposed best",
        "decomposed gap",
        "decomposed s",
        "time ÷ sa",
        "sub-problems",
        "qubits per sub-problem (mean / max)",
        "stopped by",
    ]
    print(markdown_table(header, rows))
    print("\nqpu-decomposed ran on MockDWaveSampler (classical steepest descent on Pegasus P16): not a QPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
