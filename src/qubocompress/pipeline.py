"""The end-to-end job: data -> model -> analysis -> QUBO -> solver -> plan -> apply -> measure.

``compress(config)`` runs every step, writes the results folder and returns the metrics dict that
``metrics.json`` holds. It is what ``qubocompress compress`` and ``qubocompress demo`` call.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dimod
import torch
from torch import nn

from qubocompress.analysis.graph import ModelGraph, trace_model
from qubocompress.analysis.importance import group_importance
from qubocompress.analysis.sensitivity import quant_damage
from qubocompress.analysis.spec import build_spec
from qubocompress.apply.artifact import load_artifact, save_artifact
from qubocompress.apply.finetune import finetune
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import fake_quantize, quantize_model_weights
from qubocompress.data.datasets import Dataset, load_dataset
from qubocompress.errors import ProblemError
from qubocompress.io import prepare_output_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from qubocompress.models.stats import count_macs, count_params
from qubocompress.models.train import evaluate, load_checkpoint, load_or_train
from qubocompress.problem.target import calibrate_gamma
from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import CompressionSpec
from qubocompress.solvers.base import solve
from qubocompress.solvers.registry import make_sampler

Log = Callable[[str], None]


@dataclass
class CompressConfig:
    """Everything ``compress`` needs; the CLI flags map one to one onto these fields."""

    model: str = "vgg"
    data: str | None = None
    checkpoint: Path | None = None
    target_ratio: float = 16.0
    solver: str = "sa"
    seed: int = 0
    out: Path = Path("runs/latest")
    finetune_epochs: int = 2
    beta: float | None = None
    max_prune_fraction: float = 0.5
    b_max: int = 8
    bit_levels: int = 3
    num_reads: int | None = None
    baseline: bool = True
    solver_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Reject impossible settings before any work starts."""
        if self.finetune_epochs < 0:
            raise ProblemError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if not math.isfinite(self.target_ratio) or self.target_ratio <= 1.0:
            raise ProblemError(f"--target-ratio must be a number > 1 (e.g. 16 for 16x smaller), got {self.target_ratio}")
        if self.num_reads is not None and self.num_reads < 1:
            raise ProblemError(f"--num-reads must be >= 1, got {self.num_reads}")


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


def analyse(model: nn.Module, dataset: Dataset, config: CompressConfig, model_name: str) -> tuple[ModelGraph, CompressionSpec]:
    """Trace the model, score its channels and measure each layer's quantization damage."""
    graph = trace_model(model, dataset.input_shape)
    importance = group_importance(model, graph, "l1")
    damage = quant_damage(
        model, [layer.name for layer in graph.layers], dataset.calib.x, dataset.calib.y, fake_quantize, config.b_max
    )
    spec = build_spec(
        graph, importance, damage, model_name, config.b_max, config.bit_levels, config.max_prune_fraction
    )
    return graph, spec


def apply_plan(
    model: nn.Module,
    graph: ModelGraph,
    plan: Plan,
    dataset: Dataset,
    epochs: int,
    seed: int,
    log: Log,
) -> tuple[nn.Module, dict[str, float]]:
    """Prune and quantize ``model`` by ``plan``, fine-tune it, and measure test accuracy."""
    pruned = prune_model(model, graph, plan)
    before = evaluate(quantize_model_weights(pruned, plan.bits), dataset.test)
    history = finetune(pruned, plan.bits, dataset.train, epochs=epochs, seed=seed, progress=log)
    after = evaluate(quantize_model_weights(pruned, plan.bits), dataset.test)
    return pruned, {
        "test_acc_before_finetune": before,
        "test_acc": after,
        "finetune_epochs": epochs,
        "finetune_history": history,
    }


def choose_uniform_plan(
    model: nn.Module, graph: ModelGraph, spec: CompressionSpec, dataset: Dataset, target_ratio: float
) -> tuple[Plan, dict[str, Any]]:
    """The uniform baseline: one bit-width and one L1 prune ratio for every layer.

    For every bit-width, the smallest prune ratio (step 1/64) that reaches the target; among those,
    the one whose pruned+quantized model (before fine-tuning) scores best on the validation split.
    Picking by validation accuracy makes the baseline as strong as a careful user would make it.
    """
    candidates = []
    for bits in range(spec.min_bits, spec.b_max + 1):
        for step in range(64):
            plan = uniform_plan(spec, bits, step / 64)
            if plan.compression_ratio(spec) >= target_ratio:
                candidates.append((bits, step / 64, plan))
                break
    if not candidates:
        raise ProblemError(f"no uniform plan reaches {target_ratio:g}x within the allowed pruning")
    scored = []
    for bits, ratio, plan in candidates:
        acc = evaluate(quantize_model_weights(prune_model(model, graph, plan), plan.bits), dataset.val)
        scored.append({"bit_width": bits, "prune_ratio": ratio, "val_acc_before_finetune": acc, "plan": plan})
    best = max(scored, key=lambda row: row["val_acc_before_finetune"])
    table = [{k: v for k, v in row.items() if k != "plan"} for row in scored]
    return best["plan"], {"bit_width": best["bit_width"], "prune_ratio": best["prune_ratio"], "candidates": table}


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
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def load_model(config: CompressConfig, dataset: Dataset, log: Log) -> tuple[nn.Module, dict[str, Any]]:
    """The user's checkpoint if given, else the cached (or freshly trained) built-in model."""
    if config.checkpoint is not None:
        model, info = load_checkpoint(config.checkpoint)
        info = {**info, "test_acc": evaluate(model, dataset.test)}
        return model, info
    return load_or_train(config.model, dataset, seed=config.seed, progress=log)


def compress(config: CompressConfig, log: Log = print) -> dict[str, Any]:
    """Run the whole job and write ``config.out``; returns the metrics."""
    config.validate()
    out = prepare_output_dir(config.out)
    timer = Timer(log)
    torch.manual_seed(config.seed)

    with timer.stage("data", "loading data"):
        dataset = load_dataset(config.data)
        if dataset.note:
            log(dataset.note)
    with timer.stage("model", f"loading or training {config.model}"):
        model, model_info = load_model(config, dataset, log)
        model.eval()
    model_name = model_info.get("arch", {}).get("name", config.model)
    fp32_acc = float(model_info["test_acc"])
    log(
        f"{model_name}: {count_params(model):,} params, {count_macs(model, dataset.input_shape):,} MACs, "
        f"fp32 test top-1 {100 * fp32_acc:.2f}%"
    )

    with timer.stage("analysis", "analysing the model (channel groups, importance, quantization damage)"):
        graph, spec = analyse(model, dataset, config, model_name)
    for name, reason in graph.frozen_reasons.items():
        log(f"  not pruned: {name} ({reason})")

    with timer.stage("build", f"building the QUBO and calibrating gamma for {config.target_ratio:g}x"):
        formulation = calibrate_gamma(spec, config.target_ratio, beta=config.beta)
        bqm = formulation.bqm
        exact_plan, exact_energy = formulation.exact()

    sampler = make_sampler(config.solver, formulation=formulation, **config.solver_options)
    sample_kwargs: dict[str, Any] = {}
    if config.num_reads is not None and "num_reads" in sampler.parameters:
        sample_kwargs["num_reads"] = config.num_reads
    with timer.stage("solve", f"solving {len(bqm.variables)} variables with {config.solver}"):
        sampleset = solve(sampler, bqm, seed=config.seed, **sample_kwargs)
    best = sampleset.first
    plan = formulation.decode(best.sample)
    plan.validate(spec)
    energies = sampleset.record.energy
    occurrences = sampleset.record.num_occurrences
    hits = float(occurrences[energies <= exact_energy + 1e-9 * abs(exact_energy)].sum()) / float(occurrences.sum())

    with timer.stage("apply", f"applying the plan and fine-tuning {config.finetune_epochs} epoch(s)"):
        compressed, accuracy = apply_plan(model, graph, plan, dataset, config.finetune_epochs, config.seed, log)

    arch = model_info.get("arch", {"name": model_name, "kwargs": {}})
    artifact_path = out / "model.qcz"
    artifact_bytes = save_artifact(artifact_path, compressed, plan.bits, arch, metadata={"plan": plan.to_dict()})
    reloaded, _ = load_artifact(artifact_path)
    reloaded_acc = evaluate(reloaded, dataset.test)

    metrics: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "data": {"name": dataset.name, "source": dataset.source, "train": len(dataset.train), "test": len(dataset.test)},
        "model": {
            "name": model_name,
            "params": count_params(model),
            "macs": count_macs(model, dataset.input_shape),
            "fp32_test_acc": fp32_acc,
            "fp32_state_dict_bytes": state_dict_bytes(model),
            "cached": bool(model_info.get("cached", False)),
        },
        "qubo": {
            "formulation": "paper",
            "variables": len(bqm.variables),
            "interactions": len(bqm.quadratic),
            "beta": formulation.beta,
            "gamma": formulation.gamma,
            "solver": config.solver,
            "energy": float(best.energy),
            "exact_energy": float(exact_energy),
            "gap": (float(best.energy) - exact_energy) / abs(exact_energy) if exact_energy else 0.0,
            "success_probability": hits,
            "reads": int(occurrences.sum()),
            "solver_info": {k: v for k, v in sampleset.info.items() if k == "timing"},
        },
        "compressed": {
            **size_summary(spec, plan),
            **accuracy,
            "artifact_bytes": artifact_bytes,
            "reloaded_test_acc": reloaded_acc,
            "exact_plan_matches": plan == exact_plan,
        },
        "timing": timer.seconds,
    }

    if config.baseline:
        with timer.stage("baseline", "uniform baseline at the same ratio (one bit-width, one L1 prune ratio)"):
            base_plan, choice = choose_uniform_plan(model, graph, spec, dataset, config.target_ratio)
            _, base_acc = apply_plan(model, graph, base_plan, dataset, config.finetune_epochs, config.seed, log)
        metrics["baseline_uniform"] = {**choice, **size_summary(spec, base_plan), **base_acc}
        metrics["timing"] = timer.seconds

    write_json_atomic(out / "plan.json", plan.to_dict())
    write_json_atomic(out / "spec.json", spec.to_dict())
    write_bytes_atomic(out / "qubo.bqm", dimod_bytes(bqm))
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "summary.txt", summary_text(metrics))
    return metrics


def dimod_bytes(bqm: dimod.BinaryQuadraticModel) -> bytes:
    """The BQM in dimod's own file format (``dimod.BinaryQuadraticModel.from_file`` reads it)."""
    with bqm.to_file() as handle:
        return handle.read()


def summary_text(metrics: dict[str, Any]) -> str:
    """A plain-text table of the headline figures (also printed by the CLI)."""
    m, c, q = metrics["model"], metrics["compressed"], metrics["qubo"]
    rows = [
        ("", "top-1 %", "ratio vs fp32", "weights (KiB)", "bits per layer"),
        ("fp32", f"{100 * m['fp32_test_acc']:.2f}", "1.0x", f"{c['fp32_weight_bits'] / 8192:.1f}", "32"),
        (
            f"QUBO ({q['solver']})",
            f"{100 * c['test_acc']:.2f}",
            f"{c['ratio']:.1f}x",
            f"{c['weight_bits'] / 8192:.1f}",
            " ".join(str(b) for b in c["bits"].values()),
        ),
    ]
    base = metrics.get("baseline_uniform")
    if base:
        rows.append(
            (
                f"uniform {base['bit_width']}b + {100 * base['prune_ratio']:.0f}% L1",
                f"{100 * base['test_acc']:.2f}",
                f"{base['ratio']:.1f}x",
                f"{base['weight_bits'] / 8192:.1f}",
                str(base["bit_width"]),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.append("")
    lines.append(
        f"QUBO: {q['variables']} variables, {q['interactions']} interactions; energy {q['energy']:.6g}, "
        f"certified optimum {q['exact_energy']:.6g}, gap {q['gap']:.2e}, success probability {q['success_probability']:.2f}"
    )
    lines.append(
        f"artifact: {c['artifact_bytes']:,} bytes on disk vs {m['fp32_state_dict_bytes']:,} for the fp32 state_dict "
        f"({m['fp32_state_dict_bytes'] / max(c['artifact_bytes'], 1):.1f}x smaller)"
    )
    lines.append("time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timing"].items()))
    return "\n".join(lines) + "\n"
