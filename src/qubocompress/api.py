"""The Python API: ``qc.compress(model, data, ...)``, ``qc.sweep(...)``, ``qc.load(path)``, ``qc.export_onnx(...)``.

``compress`` takes any ``nn.Module`` (or a built-in name) and data as a built-in name, a folder,
tensors or torch Datasets / DataLoaders, runs the same job as ``qubocompress compress`` and returns
a :class:`~qubocompress.pipeline.CompressResult`; it writes nothing unless ``out`` is given (or
``result.save`` is called). Every keyword of :class:`~qubocompress.pipeline.CompressConfig` is an
option. Progress goes to the ``qubocompress`` logger; errors are :class:`QubocompressError`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qubocompress.apply import export
from qubocompress.apply.model_file import load_model_file
from qubocompress.apply.quantize import inferred_bits
from qubocompress.cluster import Cluster
from qubocompress.data.datasets import SPLIT_SEED, Dataset, dataset_from_tensors, load_dataset, stacked_tensors
from qubocompress.errors import DataError, ModelError, ProblemError
from qubocompress.io import run_folder
from qubocompress.models.user import check_runs, factory_label
from qubocompress.pipeline import CompressConfig, CompressResult, factory_of, log_line, run_compression
from qubocompress.report import write_report
from qubocompress.sweeps import SweepTable, parse_targets, run_sweep, sweep_cases

# A single (x, y) pair is split into train and test with this share held out for the test.
TEST_SHARE_DENOMINATOR = 6
OPTIONS = tuple(f.name for f in dataclasses.fields(CompressConfig) if f.name not in ("model", "data", "out"))

__all__ = ["CompressResult", "SweepTable", "compress", "export_onnx", "load", "sweep"]


def compress(
    model: nn.Module | str,
    data: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    finetune: Callable[[nn.Module], None] | None = None,
    log: Callable[[str], None] | None = None,
    report: bool = True,
    **options: Any,
) -> CompressResult:
    """Compress ``model`` on ``data``; see the module docstring.

    Args:
        model: an ``nn.Module`` that returns (N, classes) logits, or a built-in name (``"vgg"``).
        data: None (Fashion-MNIST, else digits), a name or folder as ``--data`` takes, a pair
            ``(x, y)`` of tensors (a sixth held out as the test split), or a pair ``(train, test)``
            of such pairs, torch Datasets or DataLoaders. Tensors are used as given
            (``normalize="none"``) unless ``normalize`` says otherwise.
        out: write the results folder there (whole, at the end), as ``compress --out`` does.
        evaluate: ``evaluate(model) -> float``, the accuracy to report (default: top-1 on the test split).
        finetune: ``finetune(model)``, your training of a compressed model in place (default: ours,
            ``finetune_epochs`` of quantization-aware fine-tuning).
        log: where progress lines go (default: the ``qubocompress`` logger, at INFO).
        report: with ``out``, also write ``report.html`` there (:func:`qubocompress.report.write_report`).
        **options: any field of CompressConfig: ``target_ratio``, ``budget``, ``formulation``,
            ``metric``, ``solver``, ``search``, ``finetune_epochs``, ``seed``, ...
    """
    config, module, dataset = _prepared(model, data, out, options, "qubocompress.compress")
    log = log or log_line
    arguments = {"log": log, "model": module, "dataset": dataset, "test_accuracy": evaluate}
    if out is None:
        return run_compression(config, **arguments, tune=finetune)
    with run_folder(out) as folder:
        result = run_compression(config, **arguments, tune=finetune)
        result.write_into(folder)
        if report:
            write_report(folder, log=log)
    return result


def sweep(
    model: nn.Module | str,
    data: Any = None,
    *,
    target_ratios: Sequence[float] = (),
    budgets: Sequence[str] = (),
    routes: Sequence[str] = ("qubo", "uniform"),
    solvers: Sequence[str] = ("sa",),
    seeds: Sequence[int] = (0,),
    out: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    evaluate: Callable[[nn.Module], float] | None = None,
    finetune: Callable[[nn.Module], None] | None = None,
    log: Callable[[str], None] | None = None,
    report: bool = True,
    workers: int | None = None,
    ray_address: str | None = None,
    **options: Any,
) -> SweepTable:
    """Compress ``model`` at every target ratio (or budget), route, solver and seed
    (:mod:`qubocompress.sweeps`); the table of the cases (``.rows``, ``.to_csv()``).

    ``model``, ``data``, ``evaluate``, ``finetune``, ``log`` and ``**options`` as for :func:`compress`.
    ``routes``: ``"qubo"`` (once per solver in ``solvers``), ``"uniform"``, ``"ga-acc"``, ``"rl-acc"``.
    ``out``: the sweep's folder (a run folder per case, ``sweep.sqlite``, ``sweep.csv`` and, with
    ``report``, ``report.html``); rerun on the same folder, only the missing cases run (``fresh``:
    start over). Without ``out`` nothing is written. ``workers`` / ``ray_address``: run the cases as
    Ray tasks on a local cluster of that many workers / on an existing cluster (the ``ray`` extra).
    """
    cluster = Cluster(address=ray_address, workers=workers)
    cluster.check()
    per_case = sorted(set(options) & {"target_ratio", "budget", "search", "solver", "seed", "baseline"})
    if per_case:
        raise ProblemError(
            f"qubocompress.sweep sets {per_case[0]!r} per case: give target_ratios, budgets, routes, solvers and seeds"
        )
    if "search_batch" in options:
        raise ProblemError(
            "qubocompress.sweep has no search_batch: a sweep's rl-acc cases propose one episode at a time "
            "(qubocompress.compress(..., search='rl-acc', search_batch=B) batches them)"
        )
    cases = sweep_cases(parse_targets(list(target_ratios), list(budgets)), list(routes), list(solvers), list(seeds))
    base, module, dataset = _prepared(model, data, out, {**options, "baseline": False}, "qubocompress.sweep")
    log = log or log_line
    table = run_sweep(
        base,
        cases,
        None if out is None else Path(out),
        fresh=fresh,
        log=log,
        model=module,
        dataset=dataset,
        test_accuracy=evaluate,
        tune=finetune,
        cluster=cluster,
    )
    if out is not None and report:
        write_report(Path(out), log=log)
    return table


def _prepared(
    model: nn.Module | str, data: Any, out: str | os.PathLike[str] | None, options: dict[str, Any], caller: str
) -> tuple[CompressConfig, nn.Module | None, Dataset | None]:
    """The checked config of ``options``, the model given as an object (else None: ``config.model``
    names it) and the data set made of ``data`` (None: ``config.data`` names it)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ProblemError(f"unknown option {unknown[0]!r} of {caller}; the options are: {', '.join(OPTIONS)}")
    if not isinstance(model, (nn.Module, str)):
        raise ModelError(f"model must be a torch.nn.Module or a built-in model name, got a {type(model).__name__}")
    normalize = options.pop("normalize", None)
    dataset, source = _dataset(data, normalize)
    config = CompressConfig(
        data=source, normalize=normalize or CompressConfig.normalize, out=Path(out or CompressConfig.out), **options
    )
    if isinstance(model, str):
        config = dataclasses.replace(config, model=model)
    config.validate()
    if not isinstance(model, nn.Module):
        return config, None, dataset
    config = dataclasses.replace(config, model=factory_label(type(model)))
    if dataset is None:
        dataset = load_dataset(source, config.normalize)
    check_runs(model, dataset.input_shape, config.model, dataset.num_classes)
    return config, model, dataset


def _dataset(data: Any, normalize: str | None) -> tuple[Dataset | None, str | None]:
    """(the data set made of ``data``'s tensors, or None; the ``--data`` source otherwise)."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None, None if data is None else str(data)
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise DataError(
            "data must be a name or folder, a pair (x, y) of tensors, or a pair (train, test) of such pairs, "
            f"torch Datasets or DataLoaders; got a {type(data).__name__}"
        )
    preprocessing = normalize or "none"
    if all(isinstance(part, torch.Tensor) for part in data):
        x, y = data
        order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        held_out = max(1, len(y) // TEST_SHARE_DENOMINATOR)
        test, train = torch.from_numpy(np.sort(order[:held_out])), torch.from_numpy(np.sort(order[held_out:]))
        return dataset_from_tensors((x[train], y[train]), (x[test], y[test]), preprocessing), None
    train, test = (stacked_tensors(part, role) for part, role in zip(data, ("train", "test")))
    return dataset_from_tensors(train, test, preprocessing), None


def load(
    path: str | os.PathLike[str],
    factory: Callable[..., nn.Module] | str | None = None,
    *,
    model: nn.Module | None = None,
    trust_torchscript: bool = False,
) -> nn.Module:
    """The compressed model of a ``model.safetensors`` file, runnable, in eval mode.

    A built-in model needs nothing more (a ``model`` or ``factory`` for one is refused). A user
    model is rebuilt only from what you pass (the file's own names are never imported or called):
    ``model``, an instance of the original (unpruned) architecture, or ``factory``, the callable or
    ``package.module:factory`` that builds it. A TorchScript model needs ``trust_torchscript=True``.
    """
    if model is not None:
        factory = factory_of(model, {"factory": factory_label(type(model))})
    loaded, _ = load_model_file(path, factory, trust_torchscript=trust_torchscript)
    return loaded


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    bits: dict[str, int] | None = None,
) -> int:
    """Write ``model`` (e.g. ``result.model``) as ONNX with int4/int8 weights and per-channel
    ``DequantizeLinear``; returns the file's bytes. ``bits``: layer -> bit-width; by default the
    bits each weight is already quantized at (a compressed model's, recovered exactly; float32
    layers stay float32)."""
    return export.export_onnx(model, path, input_shape, inferred_bits(model) if bits is None else bits)
