"""Wall time of one ``compress --search ga-acc|rl-acc`` in this process against the same run with
each generation's / batch's plans scored on Ray actors (``--workers N``), same seed (issue 20).

Runs ``qubocompress compress`` twice into fresh folders; a warm-up run first trains the model (or
reads it from the cache) and caches the analysis, so neither timed run pays for them. Prints both
wall times (the whole command, and the search stage alone), their ratios, and whether the two runs
chose the same plan and got the same scores in the same order.

    .venv/bin/python scripts/search_ray_timing.py                     # ga-acc, lenet5 on digits, 8x, 2 workers
    .venv/bin/python scripts/search_ray_timing.py --search rl-acc     # both runs 8 episodes a batch
    .venv/bin/python scripts/search_ray_timing.py --model vgg --data cifar10 --ratio 16 --evaluations 300
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _timing import timed_cli


def run(command: list[str]) -> float:
    """Wall seconds of one qubocompress command."""
    return timed_cli(command, "search_ray_timing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", choices=("ga-acc", "rl-acc"), default="ga-acc")
    parser.add_argument("--batch", type=int, default=8, help="rl-acc: --search-batch of both runs")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--data", default="digits", help="as qubocompress --data")
    parser.add_argument("--ratio", default="8", help="the target ratio")
    parser.add_argument("--evaluations", type=int, default=300, help="--search-evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args(argv)
    common = ["compress", "--model", args.model, "--data", args.data, "--target-ratio", args.ratio]
    common += ["--finetune-epochs", "0", "--no-baseline", "--no-report", "--quiet", "--seed", str(args.seed)]
    searched_by = [*common, "--search", args.search, "--search-evaluations", str(args.evaluations)]
    if args.search == "rl-acc":
        searched_by += ["--search-batch", str(args.batch)]
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        run([*common, "--search", "uniform", "--out", str(out / "warm")])
        walls = {
            "serial": run([*searched_by, "--out", str(out / "serial")]),
            "ray": run([*searched_by, "--workers", str(args.workers), "--out", str(out / "ray")]),
        }
        metrics = {name: json.loads((out / name / "metrics.json").read_text()) for name in walls}
        plans = {name: json.loads((out / name / "plan.json").read_text()) for name in walls}
    searched = {name: metrics[name]["search"] for name in walls}
    stage = {name: metrics[name]["timing"]["search"] for name in walls}
    print(
        f"{args.model} on {args.data}, {args.search} at {args.ratio}x, seed {args.seed}, "
        f"{searched['serial']['evaluations']} plans scored, no fine-tuning"
    )
    print(f"serial: {walls['serial']:.1f} s wall, search stage {stage['serial']:.1f} s")
    print(
        f"on {args.workers} Ray workers: {walls['ray']:.1f} s wall, search stage {stage['ray']:.1f} s "
        "(Ray's start and the actors' model copies included)"
    )
    same_plan = plans["serial"] == plans["ray"]
    same_history = searched["serial"]["history"] == searched["ray"]["history"]
    print(
        f"same plan: {'yes' if same_plan else 'NO'}; same scores in the same order: {'yes' if same_history else 'NO'}"
    )
    ratios = {"wall": walls["serial"] / walls["ray"], "search": stage["serial"] / stage["ray"]}
    print(f"ratio (serial / Ray): wall {ratios['wall']:.2f}x, search {ratios['search']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
