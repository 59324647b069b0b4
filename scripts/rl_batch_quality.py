"""What rl-acc's batches cost in search quality: ``compress --search rl-acc`` with ``--search-batch 1``
(HAQ's and AMC's one episode at a time) against larger batches (what Ray scores in parallel), same
seeds, no Ray (issue 20).

For each seed and batch: one run into ``--out``/b<B>-seed<S>/ (a rerun reuses a finished one); a
warm-up run first trains the model or reads it from the cache and caches the analysis. Prints a
markdown table: the best plan's validation top-1 (before fine-tuning: the figure the search
maximises) and the search's seconds per seed, their means, and each batch's mean as a difference
against batch 1's.

    .venv/bin/python scripts/rl_batch_quality.py                          # vgg, 16x, batches 1,8, seeds 0-2
    .venv/bin/python scripts/rl_batch_quality.py --model lenet5 --data digits --batches 1,4,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from _timing import timed_cli

from qubocompress.report import markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg")
    parser.add_argument("--data", default=None, help="as qubocompress --data (default: the built-in default)")
    parser.add_argument("--ratio", default="16", help="the target ratio")
    parser.add_argument("--evaluations", type=int, default=300, help="--search-evaluations")
    parser.add_argument("--batches", default="1,8", help="comma-separated --search-batch values, the peer first")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--out", type=Path, default=Path("runs/rl-batch"))
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    common = ["compress", "--model", args.model, "--target-ratio", args.ratio, "--finetune-epochs", "0"]
    common += ["--no-baseline", "--no-report", "--quiet", *(["--data", args.data] if args.data else [])]
    timed_cli([*common, "--search", "uniform", "--out", str(args.out / "warm")], "rl_batch_quality")
    found: dict[int, list[tuple[float, float]]] = {}
    for batch in batches:
        for seed in seeds:
            folder = args.out / f"b{batch}-seed{seed}"
            if not (folder / "metrics.json").exists():
                rl = ["--search", "rl-acc", "--search-evaluations", str(args.evaluations), "--search-batch", str(batch)]
                timed_cli([*common, *rl, "--seed", str(seed), "--out", str(folder)], "rl_batch_quality")
            searched = json.loads((folder / "metrics.json").read_text())["search"]
            found.setdefault(batch, []).append((searched["score"], searched["seconds"]))
    peer = statistics.mean(score for score, _ in found[batches[0]])
    rows = []
    for batch in batches:
        scores = [score for score, _ in found[batch]]
        seconds = [time for _, time in found[batch]]
        rows.append(
            [
                str(batch),
                " / ".join(f"{score:.2%}" for score in scores),
                f"{statistics.mean(scores):.2%}",
                f"{(statistics.mean(scores) - peer) * 100:+.2f} points",
                " / ".join(f"{time:.0f}" for time in seconds),
            ]
        )
    print(
        f"rl-acc on {args.model} at {args.ratio}x, {args.evaluations} evaluations, seeds {args.seeds}, "
        f"against --search-batch {batches[0]}"
    )
    headers = ["--search-batch", "best val top-1 per seed", "mean", "mean vs first batch", "search s per seed"]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
