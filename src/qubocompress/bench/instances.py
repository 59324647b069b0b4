"""Benchmark instances: QUBOs of the paper or the budget formulation, saved so that anyone can rerun them.

An instance on disk is two files in one folder:

* ``<name>.bqm``: the BQM in dimod's own serialisation (``bqm.to_file()``;
  ``dimod.BinaryQuadraticModel.from_file`` reads it back), usable without this package;
* ``<name>.json``: the sidecar: where the instance comes from, the compression spec and the
  formulation's parameters (paper: β, γ, target ratio; budget: ratio or absolute budget, metric,
  bit-widths, penalty, MILP time limit) so the formulation — its certified optimum, its decoder,
  its polish, the RL solver's layer walk — can be rebuilt, ``E*`` and whether it is certified,
  and the sha256 of the ``.bqm`` bytes.

Loading checks the hash and that the rebuilt formulation's BQM equals the file's; any mismatch
is a :class:`~qubocompress.errors.DataError` ("instance x is corrupt: ..."). A bare ``.bqm``
(no sidecar) is accepted: its ``E*`` then comes from the generic exact solver within a time
limit (certified if it proves optimality, else marked best known).

Generators: the synthetic size series (:func:`size_series_instance`, VGG-like specs with
realistic statistics from :func:`~qubocompress.problem.synthetic.synthetic_spec`, calibrated to
a 16× target), and the built-in models (:func:`builtin_instance`: the packaged spec measured on
the trained model when ``bench/data/<model>.spec.json`` exists, else a synthetic stand-in of the
same shape, named ``<model>-synthetic`` and labelled so; :func:`model_instance` trains or loads
the model and analyses it, which needs torch and the pipeline), and the built-in models' budget
QUBOs (:func:`builtin_budget_instance`, ``<model>-budget-<ratio>x``: the same measured specs under a
hard weight-bit budget, ``E*`` from the MILP, certified or marked best known).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import DataError, ProblemError, QubocompressError
from qubocompress.io import write_bytes_atomic, write_json_atomic
from qubocompress.problem import FORMULATIONS, Formulation
from qubocompress.problem.bqm_file import read_bqm
from qubocompress.problem.budget import BudgetFormulation
from qubocompress.problem.spec import CompressionSpec
from qubocompress.problem.synthetic import synthetic_resnet_spec, synthetic_spec
from qubocompress.problem.target import calibrate_gamma
from qubocompress.names import BENCH_MODELS

INSTANCE_FORMAT = "qubocompress-bench-instance"
SPEC_FORMAT = "qubocompress-model-spec"
FORMAT_VERSION = 1
DEFAULT_TARGET_RATIO = 16.0
# Seconds the generic exact solver may spend on a bare .bqm before E* falls back to best known.
DEFAULT_EXACT_TIME_LIMIT = 60.0
# The built-in models the benchmark covers.
BUILTIN_MODELS = BENCH_MODELS
# Their synthetic stand-ins, same layer and channel counts: LeNet-5 (conv 6, 16, fc 120, 84: the
# fcs drawn as 3×3 convs of that width), the VGG-style net (convs 16, 16, 32, 32, 64, 64, hidden
# fc 128) and ResNet-20 (with its residual channel groups).
STAND_INS: dict[str, Callable[[int], CompressionSpec]] = {
    "lenet5": lambda seed: synthetic_spec(channels=(6, 16, 120, 84), seed=seed),
    "vgg": lambda seed: synthetic_spec(channels=(16, 16, 32, 32, 64, 64), hidden=128, seed=seed),
    "resnet20": lambda seed: synthetic_resnet_spec(seed=seed),
}
SIZE_SERIES = (100, 300, 1000, 3000, 10_000)
MIN_SERIES_SIZE = 30
# Target ratios of the built-in models' budget instances (issue 4's 16×, 24× and 32×).
BUDGET_TARGET_RATIOS = (16.0, 24.0, 32.0)
# Base convs of synthetic_spec's default net: (16, 16, 32, 32, 64, 64) channels.
_BASE_CHANNELS = 224
_BASE_CONVS = 6


@dataclass
class Instance:
    """One benchmark QUBO and what is known about it.

    Attributes:
        name: file-safe label (also the key of its results in the store).
        bqm: the QUBO.
        source: where it comes from, e.g. ``"model:vgg (fashion-mnist, seed 0)"`` or
            ``"synthetic (width 4.29, depth 2, seed 0)"``.
        e_star: the certified optimum energy, or the best energy known (see ``certified``);
            None when nothing is known yet.
        certified: whether ``e_star`` is proven optimal.
        spec: the compression spec (None for a bare BQM file).
        formulation: the paper or budget formulation of ``spec`` whose ``bqm`` is ``bqm`` (None
            for a bare BQM).
        target_ratio: the compression ratio γ was calibrated to (None if not calibrated).
        build_seconds: wall time to build the BQM from the spec and parameters (0 for a bare file).
    """

    name: str
    bqm: dimod.BinaryQuadraticModel
    source: str
    e_star: float | None
    certified: bool
    spec: CompressionSpec | None = None
    formulation: Formulation | None = None
    target_ratio: float | None = None
    build_seconds: float = 0.0
    _sha256: str | None = field(default=None, repr=False)

    @property
    def num_variables(self) -> int:
        """Number of BQM variables."""
        return len(self.bqm.variables)

    @property
    def num_interactions(self) -> int:
        """Number of quadratic terms."""
        return int(self.bqm.num_interactions)

    @property
    def sha256(self) -> str:
        """sha256 hex digest of the BQM's dimod serialisation (what ``<name>.bqm`` holds)."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(bqm_bytes(self.bqm)).hexdigest()
        return self._sha256

    def fresh_formulation(self) -> Formulation | None:
        """A new formulation object with the same parameters (nothing cached: for timing the exact solver)."""
        if self.formulation is None:
            return None
        return formulation_from_parameters(self.formulation.spec, self.formulation.parameters())

    def sidecar(self) -> dict[str, Any]:
        """The JSON sidecar written next to the ``.bqm``."""
        formulation = None
        if self.formulation is not None:
            formulation = {**self.formulation.parameters(), "target_ratio": self.target_ratio}
        return {
            "format": INSTANCE_FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "source": self.source,
            "num_variables": self.num_variables,
            "num_interactions": self.num_interactions,
            "bqm_sha256": self.sha256,
            "e_star": self.e_star,
            "certified": self.certified,
            "build_seconds": self.build_seconds,
            "formulation": formulation,
            "spec": None if self.spec is None else self.spec.to_dict(),
        }


def formulation_from_parameters(spec: CompressionSpec, params: dict[str, Any]) -> Formulation:
    """The formulation of ``spec`` that its ``parameters()`` describe."""
    cls = FORMULATIONS.get(params.get("name"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown formulation {params.get('name')!r}")
    return cls.from_parameters(spec, params)


def _reference(formulation: Formulation) -> tuple[float, bool]:
    """(``E*``, certified): the formulation's reference optimum and whether it is proven."""
    reference = formulation.reference()
    return float(reference.energy), reference.certified


def bqm_bytes(bqm: dimod.BinaryQuadraticModel) -> bytes:
    """The BQM in dimod's file format."""
    with bqm.to_file() as handle:
        return handle.read()


def instance_from_formulation(name: str, formulation: Formulation, source: str, target_ratio: float | None) -> Instance:
    """An instance of a formulation, with its reference optimum as ``E*``.

    ``build_seconds`` times the BQM construction (if the formulation has not built it yet).
    """
    start = time.perf_counter()
    bqm = formulation.bqm
    build_seconds = time.perf_counter() - start
    e_star, certified = _reference(formulation)
    return Instance(
        name=name,
        bqm=bqm,
        source=source,
        e_star=e_star,
        certified=certified,
        spec=formulation.spec,
        formulation=formulation,
        target_ratio=target_ratio,
        build_seconds=build_seconds,
    )


def instance_from_spec(
    name: str, spec: CompressionSpec, source: str, target_ratio: float = DEFAULT_TARGET_RATIO
) -> Instance:
    """The paper formulation of ``spec`` with γ calibrated so its optimum compresses ≥ ``target_ratio``."""
    return instance_from_formulation(name, calibrate_gamma(spec, target_ratio), source, target_ratio)


def _size_series_shape(variables: int) -> tuple[float, int]:
    """(width, depth) of a synthetic spec with at least ``variables`` variables (and close to it).

    The paper form of ``synthetic_spec`` has ``Σ floor(channels/2)`` pruning and 3 bits per layer
    variables; depth grows like sqrt(n / 300) so that large instances get more layers instead of
    ever denser ones.
    """
    depth = max(1, round(math.sqrt(variables / 300)))
    layers = _BASE_CONVS * depth + 1
    width = max((variables - 3 * layers) / (_BASE_CHANNELS / 2 * depth), 0.05)
    while _variable_count(synthetic_spec(width=width, depth=depth)) < variables:
        width *= 1.002
    return width, depth


def _variable_count(spec: CompressionSpec) -> int:
    return sum(g.max_pruned for g in spec.groups) + spec.bit_levels * len(spec.layers)


def size_series_instance(variables: int, seed: int = 0, target_ratio: float = DEFAULT_TARGET_RATIO) -> Instance:
    """A synthetic VGG-like instance with at least ``variables`` variables, named ``synthetic-n<variables>``."""
    if variables < MIN_SERIES_SIZE:
        raise ProblemError(f"size-series instances need at least {MIN_SERIES_SIZE} variables, got {variables}")
    width, depth = _size_series_shape(variables)
    spec = synthetic_spec(width=width, depth=depth, seed=seed)
    source = f"synthetic (VGG-like, width {width:.3g}, depth {depth}, seed {seed})"
    return instance_from_spec(f"synthetic-n{variables}", spec, source, target_ratio)


def stand_in_instance(model: str, seed: int = 0, target_ratio: float = DEFAULT_TARGET_RATIO) -> Instance:
    """A synthetic spec shaped like built-in ``model`` (:data:`STAND_INS`), named ``<model>-synthetic``."""
    if model not in STAND_INS:
        raise ProblemError(f"no synthetic stand-in for model {model!r}; known: {', '.join(STAND_INS)}")
    spec = STAND_INS[model](seed)
    source = f"synthetic, shaped like {model} (no measured spec packaged: run scripts/export_instances.py)"
    return instance_from_spec(f"{model}-synthetic", spec, source, target_ratio)


def packaged_spec_path(model: str) -> Path:
    """Where the measured spec of built-in ``model`` lives in the package (it may not exist)."""
    return Path(str(resources.files("qubocompress.bench").joinpath("data", f"{model}.spec.json")))


def read_model_spec(path: str | Path) -> tuple[CompressionSpec, str]:
    """A model spec file written by :func:`write_model_spec`: (spec, source label)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != SPEC_FORMAT:
            raise ValueError(f"format is {record.get('format')!r}, expected {SPEC_FORMAT!r}")
        return CompressionSpec.from_dict(record["spec"]), str(record["source"])
    except OSError as exc:
        raise DataError(f"cannot read model spec {path}: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError, ProblemError) as exc:
        raise DataError(f"model spec {path} is corrupt: {exc}; re-export it with scripts/export_instances.py") from exc


def builtin_instance(model: str, target_ratio: float = DEFAULT_TARGET_RATIO) -> Instance:
    """The instance of built-in ``model``: its packaged measured spec, else its synthetic stand-in."""
    path = packaged_spec_path(model)
    if path.is_file():
        spec, source = read_model_spec(path)
        return instance_from_spec(model, spec, source, target_ratio)
    return stand_in_instance(model, target_ratio=target_ratio)


def budget_instance_name(model: str, target_ratio: float) -> str:
    """``<model>-budget-<ratio>x``, e.g. ``vgg-budget-24x``."""
    return f"{model}-budget-{target_ratio:g}x"


def builtin_budget_instance(model: str, target_ratio: float) -> Instance:
    """The budget QUBO of built-in ``model`` at ``target_ratio``× fewer weight bits than fp32,
    from its packaged measured spec (measured quantization and prune damage, L1 importance)."""
    path = packaged_spec_path(model)
    if not path.is_file():
        raise DataError(f"no packaged measured spec for {model!r}: budget instances need one ({path})")
    spec, source = read_model_spec(path)
    formulation = BudgetFormulation(spec, ratio=target_ratio)
    return instance_from_formulation(budget_instance_name(model, target_ratio), formulation, source, target_ratio)


def model_spec(
    model: str,
    data: str | None = None,
    seed: int = 0,
    max_prune_fraction: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> tuple[CompressionSpec, str, dict[str, Any]]:
    """Train (or load from the cache) built-in ``model`` and analyse it: (spec, source label, model info).

    The spec carries L1 importance, measured quantization damage, and prune options with their
    measured damage (what the ``budget`` formulation needs; the paper formulation ignores them).

    Imports torch, the models and the pipeline lazily: the benchmark itself runs without them.
    """
    from qubocompress.data.datasets import load_dataset
    from qubocompress.models.train import load_or_train
    from qubocompress.pipeline import CompressConfig, analyse

    dataset = load_dataset(data)
    net, info = load_or_train(model, dataset, seed=seed, progress=progress)
    # "budget" makes the analysis measure prune options too, so one spec serves both formulations.
    config = CompressConfig(
        model=model,
        data=data,
        seed=seed,
        max_prune_fraction=max_prune_fraction,
        formulation="budget",
        sensitivity="measured",
    )
    _, spec = analyse(net, dataset, config, model, progress or (lambda _: None))
    source = f"model:{model} ({dataset.name}, seed {seed})"
    return spec, source, {"dataset": dataset.name, "seed": seed, "fp32_test_acc": float(info["test_acc"])}


def model_instance(
    model: str, data: str | None = None, seed: int = 0, target_ratio: float = DEFAULT_TARGET_RATIO
) -> Instance:
    """The instance of a trained built-in model, analysed now (minutes if it must be trained)."""
    spec, source, _ = model_spec(model, data=data, seed=seed)
    return instance_from_spec(model, spec, source, target_ratio)


def write_model_spec(path: str | Path, spec: CompressionSpec, source: str, info: dict[str, Any]) -> None:
    """Write a measured model spec (what ``bench/data/<model>.spec.json`` holds) atomically."""
    write_json_atomic(
        path, {"format": SPEC_FORMAT, "version": FORMAT_VERSION, "source": source, **info, "spec": spec.to_dict()}
    )


def save_instance(instance: Instance, folder: str | Path) -> Path:
    """Write ``<folder>/<name>.bqm`` and ``<folder>/<name>.json``; returns the ``.bqm`` path."""
    folder = Path(folder)
    bqm_path = folder / f"{instance.name}.bqm"
    data = bqm_bytes(instance.bqm)
    instance._sha256 = hashlib.sha256(data).hexdigest()
    write_bytes_atomic(bqm_path, data)
    write_json_atomic(folder / f"{instance.name}.json", instance.sidecar())
    return bqm_path


def _parse_bqm(data: bytes, name: str) -> dimod.BinaryQuadraticModel:
    try:
        return read_bqm(data)
    except Exception as exc:  # dimod raises many types on a damaged file; all mean the same here
        raise DataError(f"instance {name} is corrupt: its .bqm is not a readable dimod BQM ({exc})") from exc


def _same_bqm(a: dimod.BinaryQuadraticModel, b: dimod.BinaryQuadraticModel) -> bool:
    """Same vartype, variables, offset and biases (to 1e-12 relative)."""
    if a.vartype is not b.vartype or set(a.variables) != set(b.variables):
        return False
    if a.num_interactions != b.num_interactions:
        return False
    order = list(a.variables)
    la, (ra, ca, qa), oa = a.to_numpy_vectors(variable_order=order, sort_indices=True)
    lb, (rb, cb, qb), ob = b.to_numpy_vectors(variable_order=order, sort_indices=True)
    return (
        np.array_equal(ra, rb)
        and np.array_equal(ca, cb)
        and np.allclose(la, lb, rtol=1e-12, atol=1e-15)
        and np.allclose(qa, qb, rtol=1e-12, atol=1e-15)
        and math.isclose(float(oa), float(ob), rel_tol=1e-12, abs_tol=1e-15)
    )


def load_instance(path: str | Path, exact_time_limit: float = DEFAULT_EXACT_TIME_LIMIT) -> Instance:
    """Read an instance from ``<name>.bqm`` (+ ``<name>.json`` when present); see the module docstring."""
    path = Path(path)
    bqm_path = path.with_suffix(".bqm")
    json_path = path.with_suffix(".json")
    name = bqm_path.stem
    try:
        data = bqm_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"instance file {bqm_path} not found") from None
    except OSError as exc:
        raise DataError(f"cannot read instance file {bqm_path}: {exc.strerror or exc}") from exc
    if not json_path.is_file():
        return _bare_instance(name, _parse_bqm(data, name), bqm_path, exact_time_limit)
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"instance {name} is corrupt: {json_path.name} is not readable JSON ({exc})") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != INSTANCE_FORMAT:
        raise DataError(f"instance {name} is corrupt: {json_path.name} is not a qubocompress instance sidecar")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.get("bqm_sha256"):
        raise DataError(
            f"instance {name} is corrupt: {bqm_path.name} has sha256 {digest[:12]}…, the sidecar says "
            f"{str(sidecar.get('bqm_sha256'))[:12]}…; regenerate or re-download both files"
        )
    bqm = _parse_bqm(data, name)
    try:
        return _instance_from_sidecar(sidecar, bqm, digest)
    except (KeyError, TypeError, ValueError, ProblemError) as exc:
        raise DataError(f"instance {name} is corrupt: {json_path.name}: {exc}") from exc


def _instance_from_sidecar(sidecar: dict[str, Any], bqm: dimod.BinaryQuadraticModel, digest: str) -> Instance:
    name = str(sidecar["name"])
    e_star = None if sidecar["e_star"] is None else float(sidecar["e_star"])
    certified = bool(sidecar["certified"])
    params = sidecar.get("formulation")
    if params is None:
        return Instance(name, bqm, str(sidecar["source"]), e_star, certified, _sha256=digest)
    spec = CompressionSpec.from_dict(sidecar["spec"])
    formulation = formulation_from_parameters(spec, params)
    start = time.perf_counter()
    rebuilt = formulation.bqm
    build_seconds = time.perf_counter() - start
    if not _same_bqm(rebuilt, bqm):
        raise ValueError("the BQM rebuilt from its spec and parameters differs from the .bqm file")
    reference, proven = _reference(formulation)
    if certified and proven and e_star is not None and not math.isclose(e_star, reference, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"its E* {e_star!r} differs from the certified optimum {reference!r}")
    target = params.get("target_ratio")
    return Instance(
        name=name,
        bqm=rebuilt,
        source=str(sidecar["source"]),
        e_star=reference if proven or e_star is None else min(reference, e_star),
        certified=proven,
        spec=spec,
        formulation=formulation,
        target_ratio=None if target is None else float(target),
        build_seconds=build_seconds,
        _sha256=digest,
    )


def _bare_instance(name: str, bqm: dimod.BinaryQuadraticModel, path: Path, exact_time_limit: float) -> Instance:
    """A BQM file without sidecar: E* from the generic exact solver within ``exact_time_limit`` seconds."""
    from qubocompress.solvers.exact import ExactSampler

    try:
        result = ExactSampler(time_limit=exact_time_limit).sample(bqm)
    except QubocompressError as exc:
        raise DataError(f"instance {name}: could not bound its optimum: {exc}") from exc
    certified = bool(result.info.get("certified", False))
    return Instance(
        name=name,
        bqm=bqm,
        source=f"file:{path}",
        e_star=float(result.first.energy) if len(result) else None,
        certified=certified,
    )


def load_instances(folder: str | Path, exact_time_limit: float = DEFAULT_EXACT_TIME_LIMIT) -> list[Instance]:
    """Every ``*.bqm`` instance in ``folder``, by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"instance folder {folder} not found")
    files = sorted(folder.glob("*.bqm"))
    if not files:
        raise DataError(f"no .bqm instance files in {folder}")
    return [load_instance(path, exact_time_limit) for path in files]
