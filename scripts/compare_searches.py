"""The QUBO route against accuracy-in-the-loop GA and RL at equal budget (issue 4's comparison).

For every model and target ratio: ``compress`` with the budget QUBO (and the uniform baseline),
then with ``--search ga-acc`` and ``--search rl-acc``, all with the same fine-tuning. Prints a
markdown table: top-1 after fine-tuning, its margin over uniform, and each route's search time
with its ratio to the QUBO route's (analysis + build + solve + one evaluation), and the same
when the analysis comes from the cache (a repeat run on the same model, e.g. at another ratio).
Runs are kept in ``--out``/<model>-<ratio>x-<route>/ (the QUBO route with ``--sensitivity`` other
than ``measured`` in ``...-qubo-<sensitivity>/``, next to the others); a rerun skips finished ones,
and ``--routes`` picks which missing ones to run. The uniform baseline is fine-tuned once per model
and ratio, by the first QUBO run there.

    .venv/bin/python scripts/compare_searches.py --models vgg --ratios 16,24,32
    .venv/bin/python scripts/compare_searches.py --models vgg --routes qubo --sensitivity fisher
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qubocompress.analysis.sensitivity import LAYER_SENSITIVITY_METHODS
from qubocompress.errors import QubocompressError
from qubocompress.pipeline import CompressConfig, compress
from qubocompress.report import markdown_table

ROUTES = ("qubo", "ga-acc", "rl-acc")


def run_folder(model: str, ratio: float, route: str, sensitivity: str, out: Path) -> Path:
    """Where one run's results live (the QUBO route's folder names a non-default sensitivity)."""
    suffix = f"-{sensitivity}" if route == "qubo" and sensitivity != "measured" else ""
    return out / f"{model}-{ratio:g}x-{route}{suffix}"


def find_baseline(model: str, ratio: float, out: Path) -> dict | None:
    """The uniform baseline fine-tuned by any finished QUBO run of ``model`` at ``ratio``."""
    for path in sorted(out.glob(f"{model}-{ratio:g}x-qubo*/metrics.json")):
        baseline = json.loads(path.read_text()).get("baseline_uniform")
        if baseline is not None:
            return baseline
    return None


def run_route(model: str, ratio: float, route: str, args: argparse.Namespace) -> dict | None:
    """The metrics of one run, from its folder when it already finished; None when it has not and
    ``route`` is not among ``--routes``."""
    out = run_folder(model, ratio, route, args.sensitivity, args.out)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    if route not in args.routes.split(","):
        return None
    config = CompressConfig(
        model=model,
        target_ratio=ratio,
        formulation="budget",
        sensitivity=args.sensitivity,
        search=route,
        search_evaluations=args.evaluations,
        finetune_epochs=args.finetune_epochs,
        baseline=route == "qubo" and find_baseline(model, ratio, args.out) is None,
        seed=args.seed,
        out=out,
    )
    return compress(
        config, log=lambda line: print(f"  [{model} {ratio:g}x {route}] {line}", file=sys.stderr, flush=True)
    )


def route_seconds(metrics: dict) -> tuple[float, float]:
    """A route's search time when its analysis is measured, and when it comes from the cache (a
    repeat run on the same model: the QUBO then pays build + solve + one evaluation)."""
    route = metrics.get("qubo") or metrics["search"]
    cold = route.get("route_seconds_uncached", route["route_seconds"])
    analysis = route.get("analysis")
    measured = analysis["measured_seconds"] if analysis else metrics["timing"]["analysis"]
    # runs from before the analysis cache left the analysis out of a search's route time
    return cold, cold - measured if "qubo" in metrics or analysis else cold


def main(argv: list[str] | None = None) -> int:
    """Run the missing routes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg", help="comma-separated built-in models")
    parser.add_argument("--ratios", default="16,24,32", help="comma-separated target ratios (weights vs fp32)")
    parser.add_argument("--evaluations", type=int, default=300, help="plans ga-acc and rl-acc may score")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--routes", default=",".join(ROUTES), help="routes to run where missing (the table shows every finished one)"
    )
    parser.add_argument(
        "--sensitivity", default="measured", choices=LAYER_SENSITIVITY_METHODS, help="the QUBO route's damage estimate"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    args = parser.parse_args(argv)
    rows = []
    try:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            for ratio in [float(r) for r in args.ratios.split(",")]:
                found = {route: run_route(model, ratio, route, args) for route in ROUTES}
                results = {route: metrics for route, metrics in found.items() if metrics is not None}
                if "qubo" not in results:
                    continue  # the table measures every route against the QUBO run and its baseline
                qubo = results["qubo"]
                fp32 = qubo["model"]["fp32_test_acc"]
                base = find_baseline(model, ratio, args.out)
                if base is None:
                    continue
                qubo_cold, qubo_warm = route_seconds(qubo)
                rows.append((model, f"{ratio:g}x", "fp32", f"{100 * fp32:.2f}", "", "", "", "", ""))
                rows.append(
                    (
                        model,
                        f"{ratio:g}x",
                        f"uniform {base['bit_width']}b + {100 * base['prune_ratio']:.0f}% L1",
                        f"{100 * base['test_acc']:.2f}",
                        f"{100 * (base['test_acc'] - fp32):+.2f}",
                        "",
                        f"{base['ratio']:.1f}x",
                        "",
                        "",
                    )
                )
                for route, metrics in results.items():
                    compressed = metrics["compressed"]
                    cold, warm = route_seconds(metrics)
                    damage = "" if args.sensitivity == "measured" else f", {args.sensitivity}"
                    label = f"QUBO budget (sa{damage})" if route == "qubo" else route
                    rows.append(
                        (
                            model,
                            f"{ratio:g}x",
                            label,
                            f"{100 * compressed['test_acc']:.2f}",
                            f"{100 * (compressed['test_acc'] - fp32):+.2f}",
                            f"{100 * (compressed['test_acc'] - base['test_acc']):+.2f}",
                            f"{compressed['ratio']:.1f}x",
                            f"{cold:.0f} s ({cold / qubo_cold:.2f}x QUBO)",
                            f"{warm:.0f} s ({warm / qubo_warm:.1f}x QUBO)",
                        )
                    )
    except QubocompressError as exc:
        print(f"compare_searches: error: {exc}", file=sys.stderr)
        return exc.exit_code
    header = (
        "model",
        "target",
        "route",
        "top-1 %",
        "vs fp32",
        "vs uniform",
        "ratio",
        "search time",
        "search time, analysis cached",
    )
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
