"""Wall time of a QUBO sweep over several ratios against one `compress` process per ratio (issue 17).

Runs ``qubocompress sweep --routes qubo`` at the given ratios (one solver, one seed, no fine-tuning,
the analysis from the cache: the script runs one ``compress`` first to fill it), then the same
cases as separate ``qubocompress compress --search qubo --no-baseline`` processes, the peer a user
without the sweep would run. Prints both wall times, their ratio, and the sweep's own split
(analysis, search, fine-tuning, the rest: loading, applying the plans, measuring, writing).

    .venv/bin/python scripts/sweep_timing.py
    .venv/bin/python scripts/sweep_timing.py --model lenet5 --ratios 4,8 --data DIR
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _timing import timed_cli

from qubocompress.sweeps import read_sweep


def run(command: list[str]) -> float:
    """Wall seconds of one qubocompress command."""
    return timed_cli(command, "sweep_timing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg")
    parser.add_argument("--data", default=None, help="as qubocompress --data (default: Fashion-MNIST)")
    parser.add_argument("--ratios", default="4,8,12,16,24,32")
    parser.add_argument("--solver", default="sa")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    ratios = [r.strip() for r in args.ratios.split(",") if r.strip()]
    data = ["--data", args.data] if args.data else []
    common = ["--model", args.model, *data, "--finetune-epochs", "0", "--quiet", "--no-report"]
    compress = ["compress", *common, "--solver", args.solver, "--no-baseline"]
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        warm = run([*compress, "--target-ratio", ratios[0], "--out", str(out / "warm")])
        sweep = ["sweep", *common, "--routes", "qubo", "--solvers", args.solver, "--target-ratio", ",".join(ratios)]
        sweep_seconds = run([*sweep, "--out", str(out / "sweep")])
        separate = [run([*compress, "--target-ratio", r, "--out", str(out / f"compress-{r}")]) for r in ratios]
        shares = read_sweep(out / "sweep").stage_seconds()
    print(f"{args.model}, {len(ratios)} ratios ({', '.join(ratios)}), qubo route with {args.solver}, no fine-tuning")
    print(f"warm-up compress (fills the analysis cache): {warm:.1f} s")
    print(f"sweep: {sweep_seconds:.1f} s; {len(ratios)} compress processes: {sum(separate):.1f} s")
    print(f"ratio (compress processes / sweep): {sum(separate) / sweep_seconds:.2f}x")
    rest = sweep_seconds - shares["analysis"] - shares["search"] - shares["finetune"]
    print(
        f"sweep split: analysis {shares['analysis']:.1f} s, search {shares['search']:.1f} s, "
        f"fine-tuning {shares['finetune']:.1f} s, the rest {rest:.1f} s (loading, applying, measuring, writing)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
