"""rl-acc's batches on the synthetic VGG-sized spec, many seeds, no model: the best plan's score
(minus the spec's estimated damage, the searches' test evaluate in tests/test_search.py) with
``episodes_per_batch`` 1 against larger batches, same seeds (issue 20; the measured-accuracy
counterpart, three seeds, is scripts/rl_batch_quality.py).

    .venv/bin/python scripts/rl_batch_surrogate.py                    # batches 1,2,8, seeds 0-23, 300 evaluations
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_search import VGG, Recorder  # noqa: E402  (the synthetic spec and its evaluate)

from qubocompress.search.rl_acc import rl_acc_search  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,2,8", help="comma-separated episodes_per_batch, the peer first")
    parser.add_argument("--seeds", type=int, default=24, help="seeds 0..N-1")
    parser.add_argument("--evaluations", type=int, default=300)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    scores = {
        batch: np.array(
            [
                rl_acc_search(VGG, Recorder(VGG), 16, seed=seed, max_evaluations=args.evaluations,
                              episodes_per_batch=batch).score
                for seed in range(args.seeds)
            ]
        )
        for batch in batches
    }  # fmt: skip
    print(f"rl-acc on the synthetic VGG spec at 16x, {args.evaluations} evaluations, seeds 0-{args.seeds - 1}")
    peer = scores[batches[0]]
    for batch in batches:
        gain = scores[batch] - peer
        print(
            f"batch {batch}: mean best score {scores[batch].mean():.4f} (standard error "
            f"{scores[batch].std() / np.sqrt(args.seeds):.4f}); against batch {batches[0]}: {gain.mean():+.4f} "
            f"(standard error {gain.std() / np.sqrt(args.seeds):.4f}), better in {(gain > 0).sum()}/{args.seeds} seeds"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
