"""Benchmark instances: QUBOs of the paper or the budget formulation, saved so that anyone can rerun them.

An instance on disk is two files in one folder (three with a filter Gram matrix):

* ``<name>.bqm``: the BQM in dimod's own serialisation (``bqm.to_file()``;
  ``dimod.BinaryQuadraticModel.from_file`` reads it back), usable without this package; or
  ``<name>.bqm.xz``, the same bytes xz-compressed (``xz -d``, or Python's ``lzma``): the dense
  filters BQMs (float64, every pair coupled) shrink to about 45 %;
* ``<name>.json``: the sidecar: where the instance comes from, the compression spec and the
  formulation's parameters (paper: β, γ, target ratio; budget: ratio or absolute budget, metric,
  bit-widths, penalty, MILP time limit; filters: counts, bits, penalty, reference time limit) so
  the formulation — its certified optimum, its decoder, its polish, the RL solver's layer walk —
  can be rebuilt, ``E*`` and whether it is certified, the reference plan behind ``E*`` (its
  sample, proven bound and gap, method, seconds), and the sha256 of the (uncompressed) ``.bqm``;
* ``<file>.gram.npy`` when the spec has a filter Gram matrix (the ``filters`` formulation): its
  upper triangle, diagonal included, row by row (``numpy.triu_indices``), float32 when that is
  exact else float64, in numpy's ``.npy`` format (read with ``allow_pickle=False``); the
  sidecar's ``spec.filter_gram`` names the file and its sha256. Several instances of one model
  share one file.

Loading checks the hashes and that the rebuilt formulation's BQM equals the file's; any mismatch
is a :class:`~qubocompress.errors.DataError` ("instance x is corrupt: ..."). ``E*`` is solved
again and compared (paper and budget: milliseconds), except for the formulations of
:data:`STORED_REFERENCE_FORMULATIONS`, whose reference is a minute's search: there the stored
reference plan's energy must equal ``E*``, and ``E*`` and whether it is certified are taken from
the sidecar (the benchmark's ``exact`` run times a fresh solve). A bare ``.bqm`` (no sidecar) is
accepted: its ``E*`` then comes from the generic exact solver within a time limit (certified if
it proves optimality, else marked best known).

Generators: the synthetic size series (:func:`size_series_instance`, VGG-like specs with
realistic statistics from :func:`~qubocompress.problem.synthetic.synthetic_spec`, calibrated to
a 16× target), and the built-in models (:func:`builtin_instance`: the packaged spec measured on
the trained model when ``bench/data/<model>.spec.json`` exists, else a synthetic stand-in of the
same shape, named ``<model>-synthetic`` and labelled so; :func:`model_instance` trains or loads
the model and analyses it, which needs torch and the pipeline), and the built-in models' budget
QUBOs (:func:`builtin_budget_instance`, ``<model>-budget-<ratio>x``: the same measured specs under a
hard weight-bit budget, ``E*`` from the MILP, certified or marked best known), and their filters
QUBOs (:func:`builtin_filters_instance`, ``<model>-filters-<ratio>x``: which filters to prune under
the measured filter Gram matrix; shipped as files in ``bench/data/filters/``, written by
``scripts/export_instances.py --filters`` from the trained models).
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import dimod
import numpy as np

from qubocompress.errors import DataError, ProblemError, QubocompressError
from qubocompress.io import write_bytes_atomic, write_json_atomic
from qubocompress.problem import FORMULATIONS, Formulation
from qubocompress.problem.bqm_file import read_bqm
from qubocompress.problem.base import Target
from qubocompress.problem.budget import DEFAULT_TIME_LIMIT, BudgetFormulation
from qubocompress.problem.filters import FiltersFormulation
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
# The packaged filters instances (<model>-filters-<ratio>x): bench/data/filters/.
FILTERS_DATA = "filters"
COMPRESSED_SUFFIX = ".xz"
GRAM_SUFFIX = ".gram.npy"
GRAM_LAYOUT = "upper triangle with the diagonal, row by row (numpy.triu_indices)"
# Formulations whose reference is an iterated search and a time-limited MIQP (up to a minute):
# their sidecar's reference plan backs E*, which loading checks rather than solves again.
STORED_REFERENCE_FORMULATIONS = ("filters",)
# Base convs of synthetic_spec's default net: (16, 16, 32, 32, 64, 64) channels.
_BASE_CHANNELS = 224
_BASE_CONVS = 6


@dataclass(frozen=True)
class StoredReference:
    """The reference plan behind an instance's ``E*`` and how it was found (its sidecar keeps it).

    Attributes:
        sample: the plan as 0/1 per BQM variable, in the order of the BQM's variables.
        energy: its BQM energy (``E*`` when nothing better is known).
        certified: whether it is proven optimal.
        gap: proven relative gap ``(energy − bound) / |energy|`` (0 when certified).
        bound: proven lower bound of the optimum.
        method: how it was found.
        seconds: wall time of the solve.
        timeline: when the solve found its best plan and its proof, where the formulation
            reports it (the filters formulation's ``ReferenceTimeline.figures()``), else None.
    """

    sample: str
    energy: float
    certified: bool
    gap: float
    bound: float
    method: str
    seconds: float
    timeline: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The sidecar's ``reference`` entry."""
        return {
            "sample": self.sample,
            "energy": self.energy,
            "certified": self.certified,
            "gap": self.gap,
            "bound": self.bound,
            "method": self.method,
            "seconds": self.seconds,
            "timeline": self.timeline,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredReference:
        """Inverse of :meth:`to_dict` (KeyError, TypeError or ValueError when malformed)."""
        sample = str(data["sample"])
        if set(sample) - {"0", "1"}:
            raise ValueError("its reference sample is not a string of 0s and 1s")
        timeline = data.get("timeline")
        if timeline is not None and not isinstance(timeline, dict):
            raise TypeError("its reference timeline is not a JSON object")
        return cls(
            sample=sample,
            energy=float(data["energy"]),
            certified=bool(data["certified"]),
            gap=float(data["gap"]),
            bound=float(data["bound"]),
            method=str(data["method"]),
            seconds=float(data["seconds"]),
            timeline=timeline,
        )


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
        reference: the formulation's reference plan behind ``e_star`` (None for a bare BQM).
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
    reference: StoredReference | None = None
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

    def sidecar(self, gram: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON sidecar written next to the ``.bqm``; ``gram``: what stands for the spec's
        filter Gram matrix (the file that holds it, :func:`save_instance`), else it is inlined."""
        formulation = None
        if self.formulation is not None:
            formulation = {**self.formulation.parameters(), "target_ratio": self.target_ratio}
        spec = None
        if self.spec is not None:
            spec = self.spec.to_dict()
            if gram is not None:
                spec = {**replace(self.spec, filter_gram=None).to_dict(), "filter_gram": gram}
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
            "reference": None if self.reference is None else self.reference.to_dict(),
            "spec": spec,
        }


def formulation_from_parameters(spec: CompressionSpec, params: dict[str, Any]) -> Formulation:
    """The formulation of ``spec`` that its ``parameters()`` describe."""
    cls = FORMULATIONS.get(params.get("name"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown formulation {params.get('name')!r}")
    return cls.from_parameters(spec, params)


def _reference(formulation: Formulation) -> StoredReference:
    """The formulation's reference optimum (solved now, or its cached solve) as stored."""
    reference = formulation.reference()
    energy = float(reference.energy)
    sample = formulation.encode(reference.plan)
    # the filters formulation reports when its search and MIQP got where (describe()'s entry)
    timeline = formulation.describe().get("reference_timeline")
    return StoredReference(
        sample="".join(str(int(sample[v])) for v in formulation.bqm.variables),
        energy=energy,
        certified=reference.certified,
        gap=float(reference.gap),
        bound=energy if reference.certified else energy - float(reference.gap) * abs(energy),
        method=reference.method,
        seconds=float(reference.seconds),
        timeline=timeline,
    )


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
    reference = _reference(formulation)
    return Instance(
        name=name,
        bqm=bqm,
        source=source,
        e_star=reference.energy,
        certified=reference.certified,
        spec=formulation.spec,
        formulation=formulation,
        target_ratio=target_ratio,
        build_seconds=build_seconds,
        reference=reference,
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


def filters_instance_name(model: str, target_ratio: float) -> str:
    """``<model>-filters-<ratio>x``, e.g. ``vgg-filters-24x``."""
    return f"{model}-filters-{target_ratio:g}x"


def packaged_filters_path(name: str) -> Path:
    """Where the packaged filters instance ``name`` lives (its ``.bqm.xz``; it may not exist)."""
    folder = resources.files("qubocompress.bench").joinpath("data", FILTERS_DATA)
    return Path(str(folder)) / f"{name}.bqm{COMPRESSED_SUFFIX}"


def shipped_filters_models() -> list[str]:
    """The built-in models whose filters instances ship with the package."""
    folder = packaged_filters_path("x").parent
    return [m for m in BUILTIN_MODELS if any(folder.glob(f"{m}-filters-*.bqm{COMPRESSED_SUFFIX}"))]


def builtin_filters_instance(model: str, target_ratio: float) -> Instance:
    """The packaged filters QUBO of built-in ``model`` at ``target_ratio``× (loaded and verified)."""
    name = filters_instance_name(model, target_ratio)
    path = packaged_filters_path(name)
    if not path.is_file():
        shipped = sorted(p.name.split(".bqm")[0] for p in path.parent.glob(f"*.bqm{COMPRESSED_SUFFIX}"))
        raise DataError(
            f"no packaged filters instance {name} (shipped: {', '.join(shipped) or 'none'}); "
            f"scripts/export_instances.py --filters --ratios {target_ratio:g} writes it from the trained model"
        )
    return load_instance(path)


def filters_instance(
    name: str, spec: CompressionSpec, source: str, target_ratio: float, time_limit: float = DEFAULT_TIME_LIMIT
) -> Instance:
    """The filters QUBO of ``spec`` (with its filter Gram matrix) at ``target_ratio``×: counts and
    bits from the budget formulation's optimum, ``E*`` from its reference within ``time_limit`` s."""
    formulation = FiltersFormulation.for_target(spec, Target(ratio=target_ratio, time_limit=time_limit))
    return instance_from_formulation(name, formulation, source, target_ratio)


def model_spec(
    model: str,
    data: str | None = None,
    seed: int = 0,
    max_prune_fraction: float = 0.5,
    progress: Callable[[str], None] | None = None,
    filter_gram: bool = False,
) -> tuple[CompressionSpec, str, dict[str, Any]]:
    """Train (or load from the cache) built-in ``model`` and analyse it: (spec, source label, model info).

    The spec carries L1 importance, measured quantization damage, and prune options with their
    measured damage (what the ``budget`` formulation needs; the paper formulation ignores them);
    with ``filter_gram`` also the channels' Gram matrix (the ``filters`` formulation's).

    Imports torch, the models and the pipeline lazily: the benchmark itself runs without them.
    """
    from qubocompress.data.datasets import load_dataset
    from qubocompress.models.train import load_or_train
    from qubocompress.pipeline import CompressConfig, analyse

    dataset = load_dataset(data)
    net, info = load_or_train(model, dataset, seed=seed, progress=progress)
    # "budget" makes the analysis measure prune options too, so one spec serves both formulations;
    # "filters" measures the same and the filter Gram matrix.
    config = CompressConfig(
        model=model,
        data=data,
        seed=seed,
        max_prune_fraction=max_prune_fraction,
        formulation="filters" if filter_gram else "budget",
        sensitivity="measured",
    )
    _, spec, _ = analyse(net, dataset, config, model, progress or (lambda _: None))
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


def save_instance(instance: Instance, folder: str | Path, compress: bool = False, gram_file: str | None = None) -> Path:
    """Write ``<folder>/<name>.bqm`` (``.bqm.xz`` with ``compress``) and ``<folder>/<name>.json``,
    and a spec's filter Gram matrix to ``<folder>/<gram_file>`` (default ``<name>.gram.npy``);
    returns the BQM file's path."""
    folder = Path(folder)
    bqm_path = folder / f"{instance.name}.bqm{COMPRESSED_SUFFIX if compress else ''}"
    data = bqm_bytes(instance.bqm)
    instance._sha256 = hashlib.sha256(data).hexdigest()
    gram = None
    if instance.spec is not None and instance.spec.filter_gram is not None:
        gram = _write_gram(folder / (gram_file or f"{instance.name}{GRAM_SUFFIX}"), instance.spec.filter_gram)
    write_bytes_atomic(bqm_path, lzma.compress(data, preset=9) if compress else data)
    write_json_atomic(folder / f"{instance.name}.json", instance.sidecar(gram))
    return bqm_path


def _write_gram(path: Path, gram: np.ndarray) -> dict[str, Any]:
    """Write the upper triangle of ``gram`` as an ``.npy`` file (float32 when exact); returns the
    sidecar's record of it."""
    upper = gram[np.triu_indices(gram.shape[0])]
    narrow = upper.astype(np.float32)
    values = narrow if np.array_equal(narrow.astype(np.float64), upper) else upper
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    return {
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "channels": int(gram.shape[0]),
        "dtype": str(values.dtype),
        "layout": GRAM_LAYOUT,
    }


def _read_gram(folder: Path, record: dict[str, Any]) -> np.ndarray:
    """The symmetric matrix a sidecar's ``spec.filter_gram`` record names (ValueError when the
    file is missing, altered or malformed)."""
    name = str(record["file"])
    if Path(name).name != name or not name.endswith(GRAM_SUFFIX):
        raise ValueError(f"spec.filter_gram names {name!r}, not a {GRAM_SUFFIX} file beside the sidecar")
    try:
        data = (folder / name).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read its filter Gram matrix {name}: {exc.strerror or exc}") from exc
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ValueError(f"its filter Gram matrix {name} does not have the sha256 the sidecar records")
    values = np.load(io.BytesIO(data), allow_pickle=False)
    channels = int(record["channels"])
    if values.dtype not in (np.float32, np.float64) or values.shape != (channels * (channels + 1) // 2,):
        raise ValueError(f"{name} holds {values.dtype} {values.shape}, not the upper triangle of {channels} channels")
    gram = np.zeros((channels, channels))
    gram[np.triu_indices(channels)] = values
    return gram + np.triu(gram, 1).T


def instance_bqm_path(path: Path) -> Path:
    """The BQM file of the instance at ``<name>.bqm``, ``<name>.bqm.xz`` or ``<name>.json``: the
    ``.bqm.xz`` when that is the path given, or when it exists and the ``.bqm`` does not."""
    name = _instance_name(path)
    plain = path.with_name(f"{name}.bqm")
    compressed = path.with_name(f"{name}.bqm{COMPRESSED_SUFFIX}")
    return compressed if path.name == compressed.name or (not plain.is_file() and compressed.is_file()) else plain


def _instance_name(path: Path) -> str:
    return path.name.removesuffix(COMPRESSED_SUFFIX).removesuffix(".bqm").removesuffix(".json")


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
    name, bqm_path = _instance_name(path), instance_bqm_path(path)
    json_path = path.with_name(f"{name}.json")
    try:
        data = bqm_path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"instance file {bqm_path} not found") from None
    except OSError as exc:
        raise DataError(f"cannot read instance file {bqm_path}: {exc.strerror or exc}") from exc
    if bqm_path.name.endswith(COMPRESSED_SUFFIX):
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as exc:
            raise DataError(f"instance {name} is corrupt: {bqm_path.name} is not a readable xz file ({exc})") from exc
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
        return _instance_from_sidecar(sidecar, bqm, digest, json_path.parent)
    except (KeyError, TypeError, ValueError, ProblemError) as exc:
        raise DataError(f"instance {name} is corrupt: {json_path.name}: {exc}") from exc


def _instance_from_sidecar(
    sidecar: dict[str, Any], bqm: dimod.BinaryQuadraticModel, digest: str, folder: Path
) -> Instance:
    name = str(sidecar["name"])
    e_star = None if sidecar["e_star"] is None else float(sidecar["e_star"])
    certified = bool(sidecar["certified"])
    params = sidecar.get("formulation")
    if params is None:
        return Instance(name, bqm, str(sidecar["source"]), e_star, certified, _sha256=digest)
    spec_record = dict(sidecar["spec"])
    if isinstance(spec_record.get("filter_gram"), dict):  # a file record, not the matrix itself
        spec_record["filter_gram"] = _read_gram(folder, spec_record["filter_gram"])
    spec = CompressionSpec.from_dict(spec_record)
    formulation = formulation_from_parameters(spec, params)
    start = time.perf_counter()
    rebuilt = formulation.bqm
    build_seconds = time.perf_counter() - start
    if not _same_bqm(rebuilt, bqm):
        raise ValueError("the BQM rebuilt from its spec and parameters differs from the .bqm file")
    stored = sidecar.get("reference")
    if formulation.name in STORED_REFERENCE_FORMULATIONS and stored is not None:
        reference = _checked_reference(StoredReference.from_dict(stored), formulation, e_star, certified)
    else:
        reference = _reference(formulation)
        if certified and reference.certified and e_star is not None and not _same_energy(e_star, reference.energy):
            raise ValueError(f"its E* {e_star!r} differs from the certified optimum {reference.energy!r}")
    target = params.get("target_ratio")
    return Instance(
        name=name,
        bqm=rebuilt,
        source=str(sidecar["source"]),
        e_star=reference.energy if reference.certified or e_star is None else min(reference.energy, e_star),
        certified=reference.certified,
        spec=spec,
        formulation=formulation,
        target_ratio=None if target is None else float(target),
        build_seconds=build_seconds,
        reference=reference,
        _sha256=digest,
    )


def _same_energy(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _checked_reference(
    reference: StoredReference, formulation: Formulation, e_star: float | None, certified: bool
) -> StoredReference:
    """``reference`` when its sample is a feasible plan whose energy on the formulation's BQM is the
    one it records and ``e_star``, its bound is at most that, and its certification is the
    sidecar's (ValueError otherwise)."""
    bqm = formulation.bqm
    if len(reference.sample) != len(bqm.variables):
        raise ValueError(f"its reference sample has {len(reference.sample)} values for {len(bqm.variables)} variables")
    energy = float(bqm.energy(dict(zip(bqm.variables, map(int, reference.sample)))))
    if not _same_energy(energy, reference.energy):
        raise ValueError(f"its reference plan has energy {energy!r}, not the {reference.energy!r} it records")
    if e_star is None or not _same_energy(e_star, energy):
        raise ValueError(f"its E* {e_star!r} differs from the energy of its reference plan {energy!r}")
    sample = dict(zip(bqm.variables, map(int, reference.sample)))
    if not formulation.feasible_reads(dimod.SampleSet.from_samples_bqm(sample, bqm))[0]:
        raise ValueError("its reference plan breaks the formulation's constraints")
    if not reference.bound <= energy + 1e-9 * max(1.0, abs(energy)):
        raise ValueError(f"its proven bound {reference.bound!r} lies above its reference plan's energy {energy!r}")
    if reference.certified != certified:
        raise ValueError(f"its reference says certified={reference.certified}, its sidecar certified={certified}")
    return reference


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
    files = instance_files(folder)
    if not files:
        raise DataError(f"no .bqm instance files in {folder}")
    return [load_instance(path, exact_time_limit) for path in files]


def instance_files(folder: Path) -> list[Path]:
    """The instances' BQM files in ``folder``: every ``*.bqm``, and each ``*.bqm.xz`` without one."""
    plain = sorted(folder.glob("*.bqm"))
    names = {path.name for path in plain}
    compressed = [
        p for p in sorted(folder.glob(f"*.bqm{COMPRESSED_SUFFIX}")) if p.name[: -len(COMPRESSED_SUFFIX)] not in names
    ]
    return sorted(plain + compressed)
