"""The end-to-end job: data -> model -> analysis -> QUBO -> solver -> plan -> apply -> measure.

``compress(config)`` runs every step, writes the results folder and returns the metrics dict that
``metrics.json`` holds. It is what ``qubocompress compress`` and ``qubocompress demo`` call.
"""

from __future__ import annotations

import copy
import io
import tempfile
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import dimod
import numpy as np
import torch
from torch import nn

from qubocompress.analysis.analyse import analyse_model
from qubocompress.analysis.cache import analysis_key, load_cached, store
from qubocompress.analysis.cache import cache_path as analysis_cache_path
from qubocompress.analysis.graph import ModelGraph, trace_model
from qubocompress.analysis.spec import DEFAULT_PRUNE_FRACTIONS, max_pruned_channels
from qubocompress.apply.model_file import FP32_BYTES, model_file_bytes, read_model_file
from qubocompress.apply.export import export_onnx
from qubocompress.apply.finetune import finetune
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import fake_quantize, quantize_model_weights
from qubocompress.solvers.metrics import residual_gap, success_mask
from qubocompress.cluster import Session, connect
from qubocompress.config import CompressConfig, parse_budget
from qubocompress.data.datasets import Dataset, Split, load_dataset
from qubocompress.errors import ArtifactError, ProblemError
from qubocompress.io import prepare_output_dir, run_folder, write_bytes_atomic, write_json_atomic, write_text_atomic
from qubocompress.models.stats import count_macs, count_params
from qubocompress.progress import log_line
from qubocompress.models.train import default_cache_dir, evaluate, load_checkpoint, load_or_train, resolve_device
from qubocompress.models.user import arch_label, factory_label, load_user_model
from qubocompress.models.zoo import MODELS
from qubocompress.progress import counting
from qubocompress.problem import FORMULATIONS, Formulation, Reference, Target
from qubocompress.problem.choices import fp32_cost, plan_cost
from qubocompress.problem.paper import check_certifiable
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec, FileLayout
from qubocompress.search import SEARCHES
from qubocompress.search.ga_acc import DEFAULT_POPULATION as GA_POPULATION
from qubocompress.solvers.base import solve
from qubocompress.solvers.composites import PolishingComposite
from qubocompress.solvers.registry import make_sampler

Log = Callable[[str], None]
# A library does not print: progress goes to this logger unless the caller passes its own ``log``
# (the command line installs a handler that writes it to stderr).
LOGGER = logging.getLogger("qubocompress")


# Seed of the one draw of --calibration-samples images from the calibration split.
CALIBRATION_DRAW_SEED = 0
# Validation images that score plans before fine-tuning (the uniform baseline's choice, ga-acc and
# rl-acc): 2,000 tell apart plans that differ by more than ~1.5 points (2 standard errors at 90 %
# accuracy) at a fifth of the cost of 10,000.
VAL_SAMPLES = 2000

# The stages a search route's time adds up (the ones a route does not run count 0): the QUBO's
# analysis + build + solve, a search's analysis (trace and channel ranks) + search, and one
# evaluation of the chosen plan.
ROUTE_STAGES = ("analysis", "build", "solve", "search", "evaluate")


class Timer:
    """Named wall-clock stages, in seconds."""

    def __init__(self, log: Log) -> None:
        self.seconds: dict[str, float] = {}
        self._log = log

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        """Time the block as stage ``name``, logging ``message`` before and the time after."""
        self._log(f"{message} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self._log(f"  done in {self.seconds[name]:.1f} s")


# An accuracy below chance + this share of the way from chance to 100 % reads as "near chance".
NEAR_CHANCE_MARGIN = 0.1


def near_chance(accuracy: float, num_classes: int) -> bool:
    """Whether top-1 ``accuracy`` (0..1) is hardly better than guessing among ``num_classes``."""
    chance = 1 / num_classes
    return accuracy < chance + NEAR_CHANCE_MARGIN * (1 - chance)


def analysis_options(config: CompressConfig, dataset: Dataset, model_name: str) -> dict[str, Any]:
    """The keyword arguments of ``analyse_model`` that ``config`` sets (input_shape as a list):
    with the model and the calibration split, the whole key of the analysis cache."""
    return {
        "model_name": model_name,
        "input_shape": list(dataset.input_shape),
        "importance": config.importance,
        "layer_sensitivity": config.layer_sensitivity(),
        "b_max": config.b_max,
        "bit_levels": config.bit_levels,
        "max_prune_fraction": config.max_prune_fraction,
        "prune_options": (
            list(DEFAULT_PRUNE_FRACTIONS)
            if config.formulation in ("budget", "filters") or config.search != "qubo"
            else None
        ),
        "interactions": config.interactions,
        "measure_damage": config.search == "qubo",
        "filter_gram": config.formulation == "filters" and config.search == "qubo",
        # only the Hutchinson probes are random
        "seed": config.seed if config.layer_sensitivity() == "hessian" and config.search == "qubo" else None,
    }


def calibration_subset(dataset: Dataset, samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the calibration split, or of ``samples`` of its images drawn at random (a fixed
    draw, the same for every run and seed) when that is fewer."""
    x, y = dataset.calib.x, dataset.calib.y
    if samples is None or samples >= len(x):
        return x, y
    chosen = torch.randperm(len(x), generator=torch.Generator().manual_seed(CALIBRATION_DRAW_SEED))[:samples]
    chosen = chosen.sort().values
    return x[chosen], y[chosen]


def check_paper_certifiable(graph: ModelGraph, bit_levels: int, max_prune_fraction: float) -> None:
    """Before the measurement: a ProblemError when a channel group ties more layers than the paper
    formulation's exact enumeration can certify (as its reference would find only afterwards); a
    group none of whose channels may be pruned ties nothing."""
    for g, group in enumerate(graph.groups):
        check_certifiable(
            group.name,
            sum(layer.out_group == g for layer in graph.layers),
            bit_levels,
            prunable=max_pruned_channels(group.channels, max_prune_fraction, group.blocks) > 0,
        )


def analyse(
    model: nn.Module, dataset: Dataset, config: CompressConfig, model_name: str, log: Log
) -> tuple[ModelGraph, CompressionSpec, dict[str, Any]]:
    """Trace the model, score its channels, measure its damages (and interactions) on the calib split.

    The ``budget`` and ``filters`` formulations (the latter also the filter Gram matrix) and the
    accuracy-in-the-loop searches also get prune options
    (``DEFAULT_PRUNE_FRACTIONS`` of each group, capped at ``max_prune_fraction``; the searches
    choose among the same options under the same budget). The searches score plans themselves,
    so no damage is measured for them. With ``config.analysis_cache`` a spec measured before for
    the same model, calibration data and options is reused (``analysis.cache``). Returns the
    graph, the spec and ``{"cached", "measured_seconds", "cache_path", "calibration_samples"}``:
    ``measured_seconds`` is what the measurement took when it ran (now or when cached).
    """
    start = time.perf_counter()
    if config.search == "qubo" and config.formulation == "paper":
        check_paper_certifiable(trace_model(model, dataset.input_shape), config.bit_levels, config.max_prune_fraction)
    options = analysis_options(config, dataset, model_name)
    calib = calibration_subset(dataset, config.calibration_samples)
    key = analysis_key(model, calib, options) if config.analysis_cache else ""
    path = analysis_cache_path(default_cache_dir(), model_name, key) if key else None
    cached = load_cached(path, key) if path is not None else None
    where = {"cache_path": str(path) if path else None, "calibration_samples": len(calib[0])}
    if cached is not None:
        spec, seconds = cached
        log(f"  reused the analysis measured in {seconds:.1f} s ({path})")
        return trace_model(model, dataset.input_shape), spec, {"cached": True, "measured_seconds": seconds, **where}
    arguments = {**{k: v for k, v in options.items() if k != "input_shape"}, "seed": config.seed}
    graph, spec = analyse_model(model, calib, dataset.input_shape, fake_quantize, **arguments, log=log)
    seconds = time.perf_counter() - start
    if path is not None:
        try:
            store(path, key, spec, seconds)
        except (OSError, ArtifactError) as exc:
            log(f"  warning: could not cache the analysis ({exc}); the next run measures it again")
    return graph, spec, {"cached": False, "measured_seconds": seconds, **where}


def absolute_budget(config: CompressConfig) -> int:
    """``config.budget`` in whole units of its metric: rounded to the nearest unit where the text's
    decimal value is one up to float error (``133798.30kB`` is 1,070,386,400 bits), else down."""
    value = parse_budget(config.budget, config.metric)  # type: ignore[arg-type]
    nearest = round(value)
    return int(nearest) if abs(value - nearest) <= 1e-9 * value else int(math.floor(value))


def with_budget_as_ratio(config: CompressConfig, spec: CompressionSpec, log: Log) -> CompressConfig:
    """``config`` with an absolute ``budget`` turned into ``target_ratio`` (fp32 cost / budget, so
    that every route's ``floor(fp32 cost / ratio)`` is the same whole budget as the QUBO's);
    unchanged without one. A budget that is not below the fp32 cost is a ProblemError."""
    if config.budget is None:
        return config
    budget, full = absolute_budget(config), fp32_cost(spec, config.metric)
    unit = {"bits": "weight bits", "bops": "BOPs per sample", "file": "bits of model file"}[config.metric]
    if budget >= full:
        raise ProblemError(
            f"--budget {config.budget} ({budget:,} {unit}) is not below the uncompressed model's {full:,} {unit}"
        )
    ratio = full / budget
    while math.floor(full / ratio) < budget:  # float division can land one unit short
        ratio = math.nextafter(ratio, 0.0)
    log(f"budget {config.budget} = {budget:,} {unit}: {ratio:.2f}x smaller than fp32")
    return replace(config, target_ratio=ratio)


def build_formulation(spec: CompressionSpec, config: CompressConfig) -> tuple[Formulation, Reference]:
    """The QUBO of ``config.formulation`` at the target (:meth:`Formulation.for_target`), and its
    reference optimum (the paper form's certified enumeration; the budget form's MILP within
    ``exact_time_limit``, certified or with its proven gap; the filters form's budget MILP, then its
    MIQP or MILP over which filters, each within ``exact_time_limit``)."""
    target = Target(
        ratio=config.target_ratio,
        absolute=None if config.budget is None else absolute_budget(config),
        metric=config.metric,  # type: ignore[arg-type]
        beta=config.beta,
        time_limit=config.exact_time_limit,
        budget_encoding=config.budget_encoding,
    )
    formulation = FORMULATIONS[config.formulation].for_target(spec, target)
    return formulation, formulation.reference()


def solve_formulation(
    formulation: Formulation, config: CompressConfig, reference_energy: float
) -> tuple[Plan, dict[str, Any]]:
    """Sample the BQM with ``config.solver``, polish the reads, return the best plan and the figures.

    Polishing (each formulation's ``polish``) is part of the route: for ``paper`` it replaces each
    group's pruned channels by as many least important ones; for ``budget`` it repairs reads into
    the budget and runs a feasible local search. The figures keep the raw reads' success rate (and,
    for a formulation with constraints, feasibility rate) next to the polished ones, so the
    solver's own share is visible.
    """
    options = {**formulation.recommended_sampler_options(config.solver), **config.solver_options}
    sampler = PolishingComposite(make_sampler(config.solver, formulation=formulation, **options), formulation)
    sample_kwargs: dict[str, Any] = {}
    if config.num_reads is not None and "num_reads" in sampler.parameters:
        sample_kwargs["num_reads"] = config.num_reads
    start = time.perf_counter()
    polished = solve(sampler, formulation.bqm, seed=config.seed, **sample_kwargs)
    seconds = time.perf_counter() - start
    if len(polished) == 0:
        raise ProblemError(f"solver {config.solver!r} returned no sample (time limit too short?)")
    raw = polished.info.pop("raw")
    polish_seconds = polished.info["timing"]["polish_seconds"]
    solve_seconds = seconds - polish_seconds

    def success(sampleset: dimod.SampleSet) -> float:
        energies = formulation.read_objectives(sampleset)
        counts = sampleset.record.num_occurrences * formulation.feasible_reads(sampleset)
        return float(counts[success_mask(energies, reference_energy)].sum()) / float(
            sampleset.record.num_occurrences.sum()
        )

    figures: dict[str, Any] = {
        "solver": config.solver,
        "solver_options": options,
        "reads": int(raw.record.num_occurrences.sum()),
        "solve_seconds": solve_seconds,
        "polish_seconds": polish_seconds,
        "success_probability_raw": success(raw),
        "success_probability": success(polished),
        "solver_info": {k: v for k, v in raw.info.items() if k == "timing"},
        "polish": polished.info.get("polish", {}),
        "read_energies": {"raw": energy_counts(raw, formulation), "polished": energy_counts(polished, formulation)},
    }
    _, _, feasible_raw = formulation.best_plan(raw)
    plan, _, feasible = formulation.best_plan(polished)
    if plan is None:
        raise ProblemError(f"no read of {config.solver!r} could be repaired into the budget")
    if formulation.constrained:
        figures.update(feasible_rate_raw=feasible_raw, feasible_rate=feasible)
    plan.validate(formulation.spec)
    energy = formulation.energy(plan)
    figures.update(energy=energy, gap=residual_gap(energy, reference_energy))
    return plan, figures


def energy_counts(sampleset: dimod.SampleSet, formulation: Formulation) -> dict[str, Any]:
    """The reads' distinct objectives (:meth:`Formulation.read_objectives`, comparable with the
    reference energy), ascending, and how many reads had each, for the report's energy histogram;
    ``infeasible``: how many reads have no objective (a slack-free budget encoding's over-budget reads)."""
    objectives = np.asarray(formulation.read_objectives(sampleset), dtype=float)
    occurrences = sampleset.record.num_occurrences
    finite = np.isfinite(objectives)
    energies, inverse = np.unique(objectives[finite], return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=occurrences[finite], minlength=len(energies))
    return {
        "energy": [float(e) for e in energies],
        "count": [int(c) for c in counts],
        "infeasible": int(occurrences[~finite].sum()),
    }


def apply_plan(
    model: nn.Module,
    graph: ModelGraph,
    plan: Plan,
    dataset: Dataset,
    epochs: int,
    seed: int,
    log: Log,
    measure: Callable[[nn.Module], float] | None = None,
    tune: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune and quantize ``model`` by ``plan``, fine-tune it (``epochs`` of ours, or the user's
    ``tune``), and measure its accuracy (``measure``, default top-1 on the test split; once when
    there is no fine-tuning: before and after are then the same model). ``finetune_seconds``: the
    fine-tuning's wall time."""
    measure = measure or (lambda candidate: evaluate(candidate, dataset.test))
    pruned = prune_model(model, graph, plan)
    before = measure(quantize_model_weights(pruned, plan.bits))
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    if tune is not None:
        tune(pruned)
        epochs = 0
    else:
        history = finetune(pruned, plan.bits, dataset.train, epochs=epochs, seed=seed, progress=log)
    tuned_seconds = time.perf_counter() - start
    after = measure(quantize_model_weights(pruned, plan.bits)) if epochs or tune is not None else before
    return pruned, {
        "test_acc_before_finetune": before,
        "test_acc": after,
        "finetune_epochs": epochs,
        "finetune_history": history,
        "finetune_seconds": tuned_seconds,
    }


def validation_subset(dataset: Dataset) -> Split:
    """The first ``VAL_SAMPLES`` validation images: what scores plans before fine-tuning."""
    return Split(dataset.val.x[:VAL_SAMPLES], dataset.val.y[:VAL_SAMPLES])


@dataclass(frozen=True)
class PlanAccuracy:
    """A plan's score: top-1 (0..1) on ``val`` of ``model`` pruned and quantized by the plan."""

    model: nn.Module
    graph: ModelGraph
    val: Split

    def __call__(self, plan: Plan) -> float:
        return evaluate(quantize_model_weights(prune_model(self.model, self.graph, plan), plan.bits), self.val)

    def on_cpu(self) -> PlanAccuracy:
        """This scorer with its model and split on the CPU (copied when they are elsewhere): what
        the Ray actors hold, which score on their CPUs whatever device this process uses."""
        if self.val.x.device.type == "cpu" and all(t.device.type == "cpu" for t in self.model.state_dict().values()):
            return self
        return PlanAccuracy(copy.deepcopy(self.model).cpu(), self.graph, Split(self.val.x.cpu(), self.val.y.cpu()))


def timed_plan_accuracy(accuracy: PlanAccuracy) -> Callable[[Plan], tuple[float, float]]:
    """What a Ray actor scores plans with: ``accuracy`` on one torch thread, each plan's (score,
    seconds). Module-level, so that the workers import it by name."""
    torch.set_num_threads(1)

    def timed(plan: Plan) -> tuple[float, float]:
        began = time.perf_counter()
        score = accuracy(plan)
        return score, time.perf_counter() - began

    return timed


def scoring_pool(
    session: Session, accuracy: PlanAccuracy, advance: Callable[[], None], log: Log, at_once: int
) -> Callable[[Sequence[Plan]], list[tuple[float, float]]]:
    """The ``evaluate_many`` of a search on Ray that scores up to ``at_once`` plans together (a GA
    population, an rl-acc batch): plans scored by actors (one per CPU, at most ``at_once``) that
    each hold ``accuracy`` (the model and the validation split), sent once."""
    pool = session.pool(timed_plan_accuracy, (session.put(accuracy.on_cpu()),), min(session.cpus, at_once))
    log(f"  scoring up to {at_once} plans at a time on {pool.size} Ray actors ({session.cluster.describe()})")

    def evaluate_many(plans: Sequence[Plan]) -> list[tuple[float, float]]:
        outcomes = pool.map(plans)
        for _ in plans:
            advance()
        return outcomes

    return evaluate_many


def file_metadata(plan: Plan, dataset: Dataset) -> dict[str, Any]:
    """What the model file records besides the tensors: the plan, the input shape, the preprocessing."""
    return {"plan": plan.to_dict(), "input_shape": list(dataset.input_shape), **preprocessing_of(dataset)}


def file_layout_of(
    model: nn.Module, graph: ModelGraph, spec: CompressionSpec, arch: dict[str, Any], dataset: Dataset
) -> FileLayout:
    """The model file's bytes beyond the weight codes, for ``--metric file``: per layer, each kept
    filter's scale, bias and (on one producer per group) its norms' four float32 entries; and the
    rest of the file with its header at the longest plan (every group at its largest prune option,
    of its highest indices), so that the cost of every plan is at least its file's size."""
    modules = dict(model.named_modules())
    norms = {group.name: group.norms for group in graph.groups}
    carried: set[int] = set()
    filter_bytes = []
    for layer in spec.layers:
        extra = FP32_BYTES * (1 + (getattr(modules[layer.name], "bias", None) is not None))
        if layer.out_group is not None and layer.out_group not in carried:
            carried.add(layer.out_group)
            for norm in norms.get(spec.groups[layer.out_group].name, ()):
                per_channel = [t for t in modules[norm].state_dict().values() if t.ndim == 1 and t.is_floating_point()]
                extra += FP32_BYTES * len(per_channel)
        filter_bytes.append(extra)
    longest = Plan(
        pruned={g.name: tuple(range(g.size - max(g.prune_options or (0,)), g.size)) for g in spec.groups},
        bits={layer.name: spec.b_max for layer in spec.layers},
    )
    full = len(model_file_bytes(model, longest.bits, arch, metadata=file_metadata(longest, dataset)))
    layout = FileLayout(tuple(filter_bytes), 0, state_dict_bytes(model))
    unpruned = Plan(pruned={}, bits=longest.bits)
    modelled = plan_cost(replace(spec, file_layout=layout), unpruned, "file") // 8
    return replace(layout, fixed_bytes=full - modelled)


def preprocessing_of(dataset: Dataset) -> dict[str, Any]:
    """What the model's inputs are made of, for metrics.json and the model file: the --normalize
    text and the per-channel mean and std applied to pixel/255."""
    return {"normalize": dataset.preprocessing, "mean": list(dataset.mean), "std": list(dataset.std)}


def cost_ratio(spec: CompressionSpec, plan: Plan, metric: str) -> float:
    """fp32 cost over the plan's cost: weight bits (``bits``) or bit operations per sample (``bops``)."""
    return fp32_cost(spec, metric) / max(plan_cost(spec, plan, metric), 1)  # type: ignore[arg-type]


def choose_uniform_plan(
    model: nn.Module,
    graph: ModelGraph,
    spec: CompressionSpec,
    dataset: Dataset,
    target_ratio: float,
    metric: str = "bits",
) -> tuple[Plan, dict[str, Any]]:
    """The uniform baseline (:func:`qubocompress.search.uniform.uniform_search`), each candidate
    scored before fine-tuning on the validation split (:func:`validation_subset`); the plan and
    ``{bit_width, prune_ratio, candidates}``."""
    val_accuracy = PlanAccuracy(model, graph, validation_subset(dataset))
    result = SEARCHES["uniform"](spec, val_accuracy, target_ratio, metric=metric)  # type: ignore[operator]
    return result.plan, dict(result.details)


def size_summary(spec: CompressionSpec, plan: Plan) -> dict[str, Any]:
    """Weight bits, ratio and BOPs of a plan against fp32."""
    pruned = sum(len(v) for v in plan.pruned.values())
    return {
        "ratio": plan.compression_ratio(spec),
        "weight_bits": plan.weight_bits(spec),
        "fp32_weight_bits": spec.fp32_weight_bits(),
        "bops": plan.bops(spec),
        "fp32_bops": spec.fp32_macs() * 32 * spec.activation_bits,
        "pruned_channels": pruned,
        "total_channels": sum(g.size for g in spec.groups),
        "bits": dict(plan.bits),
    }


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the fp32 checkpoint size a user compares with."""
    buffer = io.BytesIO()
    torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, buffer)
    return buffer.getbuffer().nbytes


def frozen_lines(reasons: dict[str, str]) -> list[str]:
    """One log line per reason a layer is not pruned, naming every layer it applies to."""
    layers: dict[str, list[str]] = {}
    for name, reason in reasons.items():
        layers.setdefault(reason, []).append(name)
    return [f"  not pruned: {', '.join(names)} ({reason})" for reason, names in layers.items()]


def model_source(config: CompressConfig) -> str:
    """What :func:`load_model` will do, for the progress line."""
    if config.checkpoint is not None:
        return f"loading the checkpoint {config.checkpoint}"
    if config.model in MODELS and config.weights is None:
        return f"loading or training {config.model}"
    return f"loading {config.model}" + (f" with {config.weights}" if config.weights is not None else "")


def load_model(config: CompressConfig, dataset: Dataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
    """The model to compress, on ``config.device`` (:func:`~qubocompress.models.train.resolve_device`),
    and its info (``arch``, ``test_acc``, ``cached``).

    A qubocompress checkpoint (``--checkpoint``); a user model (``package.module:factory`` with
    ``--weights``, or a TorchScript file); a built-in model with ``--weights``; else the cached (or
    freshly trained) built-in model.
    """
    device = resolve_device(config.device, log)
    if config.checkpoint is not None:
        model, info = load_checkpoint(config.checkpoint, dataset=dataset)
    elif config.model in MODELS and config.weights is None:
        return load_or_train(config.model, dataset, seed=config.seed, progress=log, device=device)
    else:
        model, arch = load_user_model(
            config.model, config.weights, input_shape=dataset.input_shape, num_classes=dataset.num_classes
        )
        info = {"arch": arch}
    model = model.to(device)
    return model, {**info, "test_acc": evaluate(model, dataset.test)}


@dataclass(frozen=True)
class Metrics:
    """The figures of one compression run (what metrics.json holds), the headline ones typed.

    Attributes:
        fp32_test_acc: top-1 of the uncompressed model on the test split, 0..1.
        test_acc: top-1 of the compressed model after fine-tuning, 0..1.
        test_acc_before_finetune: its top-1 before fine-tuning, 0..1.
        ratio: fp32 weight bits over the compressed model's.
        model_file_bytes: bytes of the compressed model's file.
        figures: everything, as metrics.json has it.
    """

    fp32_test_acc: float
    test_acc: float
    test_acc_before_finetune: float
    ratio: float
    model_file_bytes: int
    figures: dict[str, Any]

    @classmethod
    def of(cls, figures: dict[str, Any]) -> Metrics:
        compressed = figures["compressed"]
        return cls(
            fp32_test_acc=figures["model"]["fp32_test_acc"],
            test_acc=compressed["test_acc"],
            test_acc_before_finetune=compressed["test_acc_before_finetune"],
            ratio=compressed["ratio"],
            model_file_bytes=compressed["model_file_bytes"],
            figures=figures,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every figure, as metrics.json holds them."""
        return self.figures


MODEL_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class CompressResult:
    """What a compression run gives: the compressed model and everything its results folder holds.

    Attributes:
        model: the compressed ``nn.Module`` (pruned shapes, quantized weights), in eval mode.
        plan: the plan it was made by.
        metrics: the run's figures.
        spec: the analysed problem.
        bqm: the QUBO that was solved (None for the ga-acc, rl-acc and uniform searches).
        model_file: the bytes of the model file (``model.safetensors``, :mod:`qubocompress.apply.model_file`).
        onnx_file: the bytes of ``model.onnx`` (int4/int8 weights, :mod:`qubocompress.apply.export`), when
            asked for (``export_onnx``).
    """

    model: nn.Module
    plan: Plan
    metrics: Metrics
    spec: CompressionSpec
    bqm: dimod.BinaryQuadraticModel | None
    model_file: bytes
    onnx_file: bytes | None = None

    def save(self, out: str | Path) -> Path:
        """Write the results folder ``out`` whole (:func:`qubocompress.io.run_folder`): what
        ``qubocompress compress --out`` writes. Returns the folder."""
        with run_folder(out) as folder:
            self.write_into(folder)
        return Path(out)

    def write_into(self, folder: Path) -> None:
        """Write the result's files into the existing ``folder``."""
        write_bytes_atomic(folder / MODEL_FILE, self.model_file)
        if self.onnx_file is not None:
            write_bytes_atomic(folder / ONNX_FILE, self.onnx_file)
        write_json_atomic(folder / "plan.json", self.plan.to_dict())
        write_json_atomic(folder / "spec.json", self.spec.to_dict())
        if self.bqm is not None:
            write_bytes_atomic(folder / "qubo.bqm", dimod_bytes(self.bqm))
        write_json_atomic(folder / "metrics.json", self.metrics.to_dict())
        write_text_atomic(folder / "summary.txt", summary_text(self.metrics.to_dict()))


def compress(
    config: CompressConfig,
    log: Log = log_line,
    into: Path | None = None,
    finish: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run the whole job and publish its results folder ``config.out`` whole at the end
    (:func:`qubocompress.io.run_folder`); returns the metrics. ``into``: write the files there
    instead, for a caller that publishes a folder holding this run (the ablation). ``finish(folder)``
    adds files to the folder before it is published (the command line's report)."""
    config.validate()
    if into is not None:
        result = run_compression(config, log)
        result.write_into(prepare_output_dir(into))
        return result.metrics.to_dict()
    with run_folder(config.out) as out:  # held from the start: a second run on it is refused at once
        result = run_compression(config, log)
        result.write_into(out)
        if finish is not None:
            finish(out)
    return result.metrics.to_dict()


def run_compression(
    config: CompressConfig,
    log: Log = log_line,
    model: nn.Module | None = None,
    dataset: Dataset | None = None,
    test_accuracy: Callable[[nn.Module], float] | None = None,
    tune: Callable[[nn.Module], None] | None = None,
    model_info: dict[str, Any] | None = None,
) -> CompressResult:
    """The job on a valid ``config``, nothing written: data, model, analysis, search, apply, measure.

    ``model`` / ``dataset``: use these instead of loading ``config.model`` / ``config.data``;
    ``model_info``: what :func:`load_model` said of ``model`` (its ``arch`` and ``test_acc``: a
    sweep loads and measures the model once for all its cases).
    ``test_accuracy(model) -> float`` replaces the top-1 on the test split in every figure;
    ``tune(model)`` replaces the fine-tuning of a compressed model (in place, quantization kept).
    Everything runs on ``config.device`` (a given ``model`` is moved there, in place), and so does
    the ``sb`` solver unless its options name a device; the metrics' config records the device used.
    """
    device = resolve_device(config.device, log)  # the one fallback warning; the stages get the device itself
    config = replace(config, sensitivity=config.layer_sensitivity(), device=str(device))
    if config.solver == "sb" and "device" not in config.solver_options:
        config = replace(config, solver_options={**config.solver_options, "device": str(device)})
    timer = Timer(log)
    torch.manual_seed(config.seed)

    with timer.stage("data", "loading data"):
        if dataset is None:
            dataset = load_dataset(config.data, config.normalize)
        if dataset.note:
            log(dataset.note)
    measure = test_accuracy or (lambda candidate: evaluate(candidate, dataset.test))
    with timer.stage("model", "using the given model" if model is not None else model_source(config)):
        if model is None:
            model, model_info = load_model(config, dataset, log)
        elif model_info is None:
            model_info = {"arch": {"factory": factory_label(type(model)), "kwargs": {}}}
        else:
            model_info = dict(model_info)
        model = model.to(device).eval()
        if test_accuracy is not None or "test_acc" not in model_info:  # else load_model measured it already
            model_info["test_acc"] = measure(model)
    arch = model_info.get("arch") or {"name": config.model, "kwargs": {}}
    model_name = arch_label(arch)
    scripted = isinstance(model, torch.jit.ScriptModule)
    fp32_acc = float(model_info["test_acc"])
    log(
        f"{model_name}: {count_params(model):,} params, {count_macs(model, dataset.input_shape):,} MACs, "
        f"fp32 test top-1 {100 * fp32_acc:.2f}%"
    )
    if near_chance(fp32_acc, dataset.num_classes):
        log(
            f"warning: the uncompressed model's test top-1 {100 * fp32_acc:.2f}% is near chance "
            f"({100 / dataset.num_classes:.2f}%): it likely expects other inputs (see --normalize), other "
            "weights, or another label order"
        )
    fp32_onnx = b""
    if config.export_onnx:  # before the work: a model the exporter cannot translate fails here, not at the end
        with timer.stage("export", "exporting the fp32 model to ONNX (its size, and that it exports at all)"):
            fp32_onnx = onnx_bytes(model, dataset.input_shape)

    measured = (
        f"{config.sensitivity} damage" if config.search == "qubo" else f"no damage: {config.search} scores plans itself"
    )
    with timer.stage("analysis", f"analysing the model ({config.importance} importance, {measured})"):
        graph, spec, analysis_info = analyse(model, dataset, config, model_name, log)
    for line in frozen_lines(graph.frozen_reasons):
        log(line)
    if config.metric == "file":
        spec = replace(spec, file_layout=file_layout_of(model, graph, spec, arch, dataset))
    config = with_budget_as_ratio(config, spec, log)

    val = validation_subset(dataset)
    val_accuracy = PlanAccuracy(model, graph, val)
    route: dict[str, Any]
    if config.search == "qubo":
        with timer.stage(
            "build", f"building the {config.formulation} QUBO for {config.target_ratio:g}x ({config.metric})"
        ):
            formulation, reference = build_formulation(spec, config)
            bqm = formulation.bqm
        with timer.stage("solve", f"solving {len(bqm.variables)} variables with {config.solver}"):
            plan, figures = solve_formulation(formulation, config, reference.energy)
        route = {
            "formulation": config.formulation,
            "metric": config.metric,
            "variables": len(bqm.variables),
            "interactions": len(bqm.quadratic),
            **formulation.describe(),
            **figures,
            "exact_energy": reference.energy,
            "exact": reference.figures(),
            "exact_plan_matches": plan == reference.plan,
        }
    else:
        search = SEARCHES[config.search]
        evaluations = None if config.search == "uniform" else config.search_evaluations
        with timer.stage(
            "search",
            f"{config.search}: {'one plan per bit-width' if evaluations is None else f'up to {evaluations} plans'} "
            f"pruned, quantized and scored on {len(val)} validation images",
        ):
            with counting(f"{config.search}: plans scored", evaluations) as advance, ExitStack() as held:

                def scored(candidate: Plan) -> float:
                    value = val_accuracy(candidate)
                    advance()
                    return value

                options: dict[str, Any] = {}
                at_once = GA_POPULATION
                if config.search == "rl-acc":
                    at_once = options["episodes_per_batch"] = config.episodes_per_batch()
                if config.cluster().enabled:  # validate: ga-acc and rl-acc only
                    session = held.enter_context(connect(config.cluster()))
                    options["evaluate_many"] = scoring_pool(session, val_accuracy, advance, log, at_once)
                result = search(  # type: ignore[operator]
                    spec,
                    scored,
                    config.target_ratio,
                    metric=config.metric,
                    max_evaluations=config.search_evaluations,
                    seed=config.seed,
                    **options,
                )
        plan = result.plan
        route = {"metric": config.metric, **{k: v for k, v in result.to_dict().items() if k != "plan"}}
    with timer.stage("evaluate", "scoring the plan on the validation subset"):
        route["val_acc_before_finetune"] = val_accuracy(plan)
    route["route_seconds"] = sum(timer.seconds.get(stage, 0.0) for stage in ROUTE_STAGES)
    # What the route takes when the analysis is not in the cache (the figure to compare a single run by).
    route["route_seconds_uncached"] = (
        route["route_seconds"] - timer.seconds["analysis"] + analysis_info["measured_seconds"]
        if analysis_info["cached"]
        else route["route_seconds"]
    )
    route["analysis"] = analysis_info

    epochs = 0 if scripted else config.finetune_epochs
    if scripted and config.finetune_epochs:
        log("  a TorchScript model is quantized as it is, without fine-tuning (its code cannot be rewritten)")
    with timer.stage("apply", f"applying the plan and fine-tuning {epochs} epoch(s)"):
        compressed, accuracy = apply_plan(model, graph, plan, dataset, epochs, config.seed, log, measure, tune)

    model_file = model_file_bytes(compressed, plan.bits, arch, metadata=file_metadata(plan, dataset))
    if config.metric == "file" and len(model_file) * 8 > fp32_cost(spec, "file") / config.target_ratio:
        raise ProblemError(f"the model file takes {len(model_file):,} bytes, over the budget: the file layout is wrong")
    reloaded, _ = read_model_file(model_file, Path(MODEL_FILE), factory_of(model, arch), trust_torchscript=True)
    reloaded_acc = measure(reloaded.to(device))

    metrics: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "data": {
            "name": dataset.name,
            "source": dataset.source,
            "train": len(dataset.train),
            "test": len(dataset.test),
            **preprocessing_of(dataset),
        },
        "model": {
            "name": model_name,
            "params": count_params(model),
            "macs": count_macs(model, dataset.input_shape),
            "fp32_test_acc": fp32_acc,
            "fp32_near_chance": near_chance(fp32_acc, dataset.num_classes),
            "fp32_state_dict_bytes": state_dict_bytes(model),
            "cached": bool(model_info.get("cached", False)),
        },
        "qubo" if config.search == "qubo" else "search": {"method": config.search, **route},
        "compressed": {
            **size_summary(spec, plan),
            "cost_ratio": cost_ratio(spec, plan, config.metric),
            **accuracy,
            "model_file_bytes": len(model_file),
            "reloaded_test_acc": reloaded_acc,
        },
        "timing": timer.seconds,
    }

    if config.baseline and not scripted:
        with timer.stage("baseline", "uniform baseline at the same ratio (one bit-width, one L1 prune ratio)"):
            base_plan, choice = choose_uniform_plan(model, graph, spec, dataset, config.target_ratio, config.metric)
            _, base_acc = apply_plan(model, graph, base_plan, dataset, epochs, config.seed, log, measure, tune)
        metrics["baseline_uniform"] = {
            **choice,
            **size_summary(spec, base_plan),
            "cost_ratio": cost_ratio(spec, base_plan, config.metric),
            **base_acc,
        }
        metrics["timing"] = timer.seconds

    final = quantize_model_weights(compressed, plan.bits).eval()
    onnx_file = None
    if config.export_onnx:
        with timer.stage("export", "exporting model.onnx (int4/int8 weights)"):
            onnx_file = onnx_bytes(final, dataset.input_shape, plan.bits)
        metrics["compressed"]["onnx_bytes"], metrics["model"]["fp32_onnx_bytes"] = len(onnx_file), len(fp32_onnx)
        metrics["timing"] = timer.seconds
    qubo = bqm if config.search == "qubo" else None
    return CompressResult(final, plan, Metrics.of(metrics), spec, qubo, model_file, onnx_file)


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...], bits: dict[str, int] | None = None) -> bytes:
    """The ONNX file of ``model`` (:func:`qubocompress.apply.export.export_onnx`: weights of ``bits``
    as int4/int8 with DequantizeLinear; float32 without ``bits``)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ONNX_FILE
        export_onnx(model, path, input_shape, bits)
        return path.read_bytes()


def factory_of(model: nn.Module, arch: dict[str, Any]) -> Callable[..., nn.Module] | str | None:
    """What rebuilds the unpruned ``model`` of ``arch`` when its own file is read back: the
    user's factory spec, or a copy of the model given as an object; None for a built-in one."""
    if "factory" not in arch:
        return None
    if arch["factory"] != factory_label(type(model)):
        return str(arch["factory"])
    template = copy.deepcopy(model)

    def rebuild(**kwargs: Any) -> nn.Module:  # named as the model's class, as the file records it
        return template

    rebuild.__module__, rebuild.__qualname__ = type(model).__module__, type(model).__qualname__
    return rebuild


def dimod_bytes(bqm: dimod.BinaryQuadraticModel) -> bytes:
    """The BQM in dimod's own file format (``dimod.BinaryQuadraticModel.from_file`` reads it)."""
    with bqm.to_file() as handle:
        return handle.read()


def summary_text(metrics: dict[str, Any]) -> str:
    """A plain-text table of the headline figures (also printed by the CLI)."""
    m, c = metrics["model"], metrics["compressed"]
    q, searched = metrics.get("qubo"), metrics.get("search")
    route = q or searched
    bits_metric = route["metric"] == "bits"
    ratio_title = (
        "ratio vs fp32" if bits_metric else f"weights / {'file' if route['metric'] == 'file' else 'BOPs'} vs fp32"
    )

    def ratio(entry: dict[str, Any]) -> str:
        return f"{entry['ratio']:.1f}x" if bits_metric else f"{entry['ratio']:.1f}x / {entry['cost_ratio']:.1f}x"

    def row(label: str, entry: dict[str, Any], bits: str) -> tuple[str, ...]:
        return (
            label,
            f"{100 * entry['test_acc']:.2f}",
            f"{100 * entry['test_acc_before_finetune']:.2f}",
            ratio(entry),
            f"{entry['weight_bits'] / 8192:.1f}",
            f"{entry['pruned_channels']}/{entry['total_channels']}",
            bits,
        )

    label = f"QUBO {q['formulation']} ({q['solver']})" if q else searched["method"]
    rows = [
        ("", "top-1 %", "before fine-tune", ratio_title, "weights (KiB)", "pruned filters", "bits per layer"),
        ("fp32", f"{100 * m['fp32_test_acc']:.2f}", "", "1.0x", f"{c['fp32_weight_bits'] / 8192:.1f}", "", "32"),
        row(label, c, " ".join(str(b) for b in c["bits"].values())),
    ]
    base = metrics.get("baseline_uniform")
    if base:
        rows.append(
            row(f"uniform {base['bit_width']}b + {100 * base['prune_ratio']:.0f}% L1", base, str(base["bit_width"]))
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append("")
    if q:
        exact = q["exact"]
        optimum = "certified optimum" if exact["certified"] else f"best known (proven gap {exact['gap']:.1e})"
        feasible = (
            f", feasible reads {q['feasible_rate_raw']:.2f} raw / {q['feasible_rate']:.2f} polished"
            if "feasible_rate" in q
            else ""
        )
        lines.append(
            f"QUBO ({q['formulation']}): {q['variables']} variables, {q['interactions']} interactions; "
            f"energy {q['energy']:.6g}, {optimum} {q['exact_energy']:.6g}, gap {q['gap']:.2e}"
        )
        lines.append(
            f"reads at the optimum: {q['success_probability_raw']:.2f} raw, {q['success_probability']:.2f} after "
            f"polishing ({q['reads']} reads){feasible}"
        )
    else:
        lines.append(
            f"{searched['method']}: {searched['evaluations']} plans scored in {searched['seconds']:.1f} s "
            f"({searched['evaluate_seconds']:.1f} s inside the evaluations), stopped by {searched['stopped_by']}"
        )
    cached = (
        f"; the analysis came from the cache, {route['route_seconds_uncached']:.1f} s without it"
        if route["analysis"]["cached"]
        else ""
    )
    lines.append(
        f"search route: {route['route_seconds']:.1f} s (analysis + build + solve + one evaluation for the QUBO; "
        f"analysis + search + one evaluation otherwise){cached}"
    )
    lines.append(
        f"{MODEL_FILE}: {c['model_file_bytes']:,} bytes on disk vs {m['fp32_state_dict_bytes']:,} for the fp32 "
        f"state_dict ({m['fp32_state_dict_bytes'] / max(c['model_file_bytes'], 1):.1f}x smaller)"
    )
    if "onnx_bytes" in c:
        lines.append(
            f"{ONNX_FILE}: {c['onnx_bytes']:,} bytes (int4/int8 weights) vs {m['fp32_onnx_bytes']:,} for the fp32 "
            f"ONNX ({m['fp32_onnx_bytes'] / max(c['onnx_bytes'], 1):.1f}x smaller)"
        )
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timing"].items()))
    return "\n".join(lines) + "\n"
