"""Export the measured compression specs of the built-in models as package data for the benchmark.

Trains each model (or loads it from the cache), analyses it (channel groups, L1 importance,
measured quantization damage) and writes ``src/qubocompress/bench/data/<model>.spec.json``.
``qubocompress bench`` then uses these measured specs instead of the synthetic stand-ins, with
the source labelled ``model:<name> (<dataset>, seed <seed>)``. Run once (minutes per model on a
CPU when not cached):

    .venv/bin/python scripts/export_instances.py                 # lenet5, vgg, resnet20
    .venv/bin/python scripts/export_instances.py --models vgg --data digits
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qubocompress.bench.instances import BUILTIN_MODELS, model_spec, packaged_spec_path, write_model_spec
from qubocompress.errors import QubocompressError


def main(argv: list[str] | None = None) -> int:
    """Export one spec file per model; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUILTIN_MODELS), help="comma-separated built-in models")
    parser.add_argument("--data", default=None, help="data source (default: Fashion-MNIST, else digits)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: the package's bench/data)")
    args = parser.parse_args(argv)
    try:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            spec, source, info = model_spec(model, data=args.data, seed=args.seed, progress=print)
            path = packaged_spec_path(model) if args.out is None else args.out / f"{model}.spec.json"
            write_model_spec(path, spec, source, info)
            variables = sum(g.max_pruned for g in spec.groups) + spec.bit_levels * len(spec.layers)
            print(f"{model}: {len(spec.layers)} layers, {len(spec.groups)} groups, ~{variables} variables -> {path}")
    except QubocompressError as exc:
        print(f"export_instances: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
