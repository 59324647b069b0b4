"""How the polish's settings trade reads at the optimum for time, on a built-in model's budget QUBO.

The same ``sa`` reads (20 per seed, the schedule ``compress`` uses) are polished once per setting
``chains-per-free-choice:rounds:kick`` (``kick`` a number of choices, or ``auto`` for the default:
a quarter of the free choices, at least 5). Prints a markdown table: reads at the MILP's optimum
E*, runs whose best read is at E*, and the polish's seconds per run (wall time: run on a quiet box).

    .venv/bin/python scripts/polish_settings.py --model resnet20 --ratio 32 --settings 2:40:5,2:40:8 --seeds 0-19
"""

from __future__ import annotations

import argparse
import sys
import time

from qubocompress.bench.instances import builtin_budget_instance
from qubocompress.solvers.metrics import success_mask
from qubocompress.errors import ProblemError, QubocompressError
from qubocompress.report import markdown_table
from qubocompress.solvers.registry import make_sampler


def parse_setting(text: str) -> tuple[int, int, int | None]:
    """``"2:40:8"`` → (2, 40, 8); ``"2:40:auto"`` → (2, 40, None)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return int(parts[0]), int(parts[1]), None if parts[2] == "auto" else int(parts[2])
    except ValueError:
        raise ProblemError(f"a setting is chains:rounds:kick, e.g. 2:40:8 or 2:40:auto, got {text!r}") from None


def parse_seeds(text: str) -> list[int]:
    """``"0-19"`` → 0..19; ``"3"`` → [3]."""
    first, _, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise ProblemError(f"--seeds takes A-B or one seed, got {text!r}") from None
    if not seeds or seeds[0] < 0:
        raise ProblemError(f"--seeds takes A-B with 0 <= A <= B, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    """Polish the reads with every setting and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="built-in model with a packaged measured spec")
    parser.add_argument("--ratio", type=float, default=32.0, help="target ratio (weight bits vs fp32)")
    parser.add_argument("--settings", default="2:40:5,2:40:auto", help="comma-separated chains:rounds:kick")
    parser.add_argument("--seeds", default="0-9", help="sa seeds A-B (20 reads each)")
    args = parser.parse_args(argv)
    try:
        settings = [parse_setting(text) for text in args.settings.split(",")]
        seeds = parse_seeds(args.seeds)
        formulation = builtin_budget_instance(args.model, args.ratio).formulation
        _, e_star = formulation.exact()
        sampler = make_sampler("sa")
        options = formulation.recommended_sampler_options("sa")
        reads = [sampler.sample(formulation.bqm, seed=seed, **options) for seed in seeds]
        free = len(formulation.model.free)
        rows = []
        for chains, rounds, kick in settings:
            at_optimum = total = solved = 0
            seconds = 0.0
            for sampleset in reads:
                start = time.perf_counter()
                polished = formulation.polish(
                    sampleset, chains=formulation.chain_count(chains), chain_length=rounds, kick=kick
                )
                seconds += time.perf_counter() - start
                optimal = success_mask(polished.record.energy, e_star)
                at_optimum += int(polished.record.num_occurrences[optimal].sum())
                total += int(polished.record.num_occurrences.sum())
                solved += bool(optimal.any())
            rows.append(
                (
                    f"{chains}:{rounds}:{'auto' if kick is None else kick}",
                    str(polished.info["polish"]["kick"]),
                    f"{at_optimum} / {total}",
                    f"{at_optimum / total:.3f}",
                    f"{solved} / {len(reads)}",
                    f"{seconds / len(reads):.2f}",
                )
            )
    except QubocompressError as exc:
        print(f"polish_settings: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{args.model}-budget-{args.ratio:g}x, {free} free choices, seeds {seeds[0]}-{seeds[-1]}")
    print(markdown_table(("setting", "kick", "reads at E*", "p_s read", "runs at E*", "polish s per run"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
