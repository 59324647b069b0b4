"""Export the measured compression specs of the built-in models as package data for the benchmark.

Trains each model (or loads it from the cache), analyses it (channel groups, L1 importance,
measured quantization damage) and writes ``src/qubocompress/bench/data/<model>.spec.json``.
``qubocompress bench`` then uses these measured specs instead of the synthetic stand-ins, with
the source labelled ``model:<name> (<dataset>, seed <seed>)``. Run once (minutes per model on a
CPU when not cached):

    .venv/bin/python scripts/export_instances.py                 # lenet5, vgg, resnet20
    .venv/bin/python scripts/export_instances.py --models vgg --data digits

With ``--filters`` it writes the filters instances instead (``bench --formulation filters``): the
analysis also measures the filter Gram matrix, rounded to float32 (7 significant digits, far
below its sampling error), and for each ratio the instance ``<model>-filters-<ratio>x`` goes to
``src/qubocompress/bench/data/filters/`` as ``.bqm.xz`` + ``.json``, with one
``<model>.gram.npy`` per model; its ``E*`` is the reference's within ``--time-limit`` seconds:

    .venv/bin/python scripts/export_instances.py --filters --models vgg,resnet20 --ratios 16,24,32
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from qubocompress.bench.instances import (
    BUDGET_TARGET_RATIOS,
    BUILTIN_MODELS,
    FILTERS_DATA,
    GRAM_SUFFIX,
    filters_instance,
    filters_instance_name,
    model_spec,
    packaged_spec_path,
    save_instance,
    write_model_spec,
)
from qubocompress.errors import QubocompressError
from qubocompress.problem.budget import DEFAULT_TIME_LIMIT


def _ratios(text: str) -> list[float]:
    """``16,24,32`` -> [16.0, 24.0, 32.0] (each a number > 1)."""
    try:
        ratios = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios are numbers > 1 such as 16,24,32; got {text!r}") from None
    if not ratios or not all(r > 1 for r in ratios):
        raise argparse.ArgumentTypeError(f"ratios are numbers > 1 such as 16,24,32; got {text!r}")
    return ratios


def export_filters(model: str, args: argparse.Namespace) -> None:
    """Write ``model``'s filters instances at ``args.ratios`` (see the module docstring)."""
    spec, source, _ = model_spec(model, data=args.data, seed=args.seed, progress=print, filter_gram=True)
    assert spec.filter_gram is not None
    spec = replace(spec, filter_gram=spec.filter_gram.astype(np.float32).astype(np.float64))
    folder = packaged_spec_path(model).parent / FILTERS_DATA if args.out is None else args.out
    for ratio in args.ratios:
        name = filters_instance_name(model, ratio)
        instance = filters_instance(name, spec, source, ratio, time_limit=args.time_limit)
        path = save_instance(instance, folder, compress=True, gram_file=f"{model}{GRAM_SUFFIX}")
        reference = instance.reference
        assert reference is not None
        proof = "certified" if reference.certified else f"best known, proven gap {reference.gap:.3g}"
        print(
            f"{name}: {instance.num_variables} variables, {instance.num_interactions} couplings, "
            f"E* {instance.e_star:.6g} ({proof}, {reference.seconds:.1f} s) -> {path} ({path.stat().st_size:,} bytes)"
        )


def main(argv: list[str] | None = None) -> int:
    """Export one spec file per model (or its filters instances); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUILTIN_MODELS), help="comma-separated built-in models")
    parser.add_argument("--data", default=None, help="data source (default: Fashion-MNIST, else digits)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: the package's bench/data)")
    parser.add_argument("--filters", action="store_true", help="write the filters instances instead of the specs")
    parser.add_argument(
        "--ratios",
        type=_ratios,
        default=list(BUDGET_TARGET_RATIOS),
        help="--filters: the target ratios (default 16,24,32)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help="--filters: seconds of each instance's reference solve (also the bench's exact run's)",
    )
    args = parser.parse_args(argv)
    try:
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            if args.filters:
                export_filters(model, args)
                continue
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
