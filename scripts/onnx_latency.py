"""File size and onnxruntime CPU latency of the VGG as float32 ONNX and as compressed QDQ ONNX (issue 16).

Builds the demo's VGG (1×28×28 inputs, 10 classes; random weights, or those of --checkpoint) and a
demo-like plan: bits 8 8 8 7 3 1 1 8 over its 8 layers and the 10 of its 352 filters with the least
mean |weight| pruned; or takes a run folder's plan.json and model.safetensors (--run). Exports the unpruned
float32 model and the compressed one (:func:`qubocompress.apply.export.export_onnx`), prints both
files' bytes and their ratio, and the median onnxruntime CPU latency (ms per batch, after warm-up)
at batch 1 and 256 of the float32 file, of the QDQ file in a default session (DequantizeLinear run
at every call) and of the QDQ file with the DequantizeLinear folded at load, with the ops of
onnxruntime's optimised graph that explain the differences.

    .venv/bin/python scripts/onnx_latency.py
    .venv/bin/python scripts/onnx_latency.py --run runs/demo --repeats 50 --threads 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qubocompress.analysis.graph import trace_model
from qubocompress.apply.model_file import load_model_file
from qubocompress.apply.export import export_onnx, onnxruntime_runs_int4
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import quantize_model_weights
from qubocompress.errors import ArtifactError, ModelError, QubocompressError
from qubocompress.models.stats import count_macs
from qubocompress.models.train import load_checkpoint
from qubocompress.models.zoo import build_model
from qubocompress.problem.plan import Plan

DEMO_MODEL_KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 28}
DEMO_BITS = (8, 8, 8, 7, 3, 1, 1, 8)
DEMO_PRUNED_FILTERS = 10
BATCHES = (1, 256)
SEED = 0
# onnxruntime session config: constant-fold DequantizeLinear at load instead of keeping it for QDQ fusions.
FOLD_AT_LOAD = {"session.disable_quant_qdq": "1"}
NCHWC_DOMAIN = "com.microsoft.nchwc"  # onnxruntime's blocked-layout kernels, whose weights it packs at load


def demo_plan(model: nn.Module, input_shape: tuple[int, int, int]) -> Plan:
    """Bits :data:`DEMO_BITS` in layer order; the :data:`DEMO_PRUNED_FILTERS` filters of least mean |w| pruned."""
    graph = trace_model(model, input_shape)
    if len(graph.layers) != len(DEMO_BITS):
        raise ModelError(f"the VGG has {len(graph.layers)} layers; the demo-like plan is for {len(DEMO_BITS)}")
    modules = dict(model.named_modules())
    filters = []  # (mean |w| of the filter, group, channel)
    for group in graph.groups:
        weight = modules[group.producers[0]].weight.detach()
        for channel, magnitude in enumerate(weight.abs().flatten(1).mean(dim=1).tolist()):
            filters.append((magnitude, group.name, channel))
    pruned: dict[str, list[int]] = collections.defaultdict(list)
    for _, group_name, channel in sorted(filters)[:DEMO_PRUNED_FILTERS]:
        pruned[group_name].append(channel)
    bits = {layer.name: b for layer, b in zip(graph.layers, DEMO_BITS)}
    return Plan(pruned={name: tuple(channels) for name, channels in pruned.items()}, bits=bits)


def compressed_model(
    run: Path | None, fp32: nn.Module, input_shape: tuple[int, int, int]
) -> tuple[nn.Module, Mapping[str, int], str]:
    """(pruned model, bits per layer, description) of ``run``'s files, else of the demo-like plan on ``fp32``."""
    if run is None:
        plan = demo_plan(fp32, input_shape)
        model = prune_model(fp32, trace_model(fp32, input_shape), plan)
        where = "demo-like plan"
    else:
        try:
            plan = Plan.from_dict(json.loads((run / "plan.json").read_text()))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read {run / 'plan.json'}: {exc}") from None
        model, _ = load_model_file(run / "model.safetensors")
        if [name for name, _ in model.named_modules()] != [name for name, _ in fp32.named_modules()]:
            raise ModelError(f"the model of {run} is not the VGG this script compares it with")
        where = f"plan of {run}"
    pruned_count = sum(len(channels) for channels in plan.pruned.values())
    return model, plan.bits, f"{where}: {pruned_count} filters pruned, bits {' '.join(map(str, plan.bits.values()))}"


def session(path: Path, threads: int, config: Mapping[str, str], optimised: Path) -> Any:
    """An onnxruntime CPU session of ``path`` on ``threads`` intra-op threads; writes its optimised graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warning about the hardware-specific optimised graph
    options.optimized_model_filepath = str(optimised)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(sessions: Mapping[str, Any], batch: np.ndarray, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each session on ``batch``, after ``warmup`` untimed rounds; every round
    times each session once, so that a shared machine's slow spells hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_index in range(warmup + repeats):
        for name, ort_session in sessions.items():
            start = time.perf_counter()
            ort_session.run(None, {"input": batch})
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def graph_ops(path: Path) -> str:
    """The ops of onnxruntime's optimised graph at ``path`` that set its speed, counted."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    dequantize = sum(node.op_type == "DequantizeLinear" for node in nodes)
    nchwc = sum(node.domain == NCHWC_DOMAIN and node.op_type == "Conv" for node in nodes)
    plain = sum(node.domain != NCHWC_DOMAIN and node.op_type in ("Conv", "FusedConv") for node in nodes)
    reorders = sum(node.op_type in ("ReorderInput", "ReorderOutput") for node in nodes)
    return f"{dequantize} DequantizeLinear, {nchwc} NCHWc convs, {plain} plain NCHW convs, {reorders} layout reorders"


def weight_types(path: Path) -> str:
    """How many weights of the onnx file at ``path`` are stored in each integer type."""
    import onnx

    counts = collections.Counter(
        onnx.TensorProto.DataType.Name(tensor.data_type)
        for tensor in onnx.load(str(path)).graph.initializer
        if tensor.name.endswith("_codes")
    )
    return ", ".join(f"{count} {name.lower()}" for name, count in sorted(counts.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    """Print sizes, latencies and what drives them; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, help="a qubocompress checkpoint of the VGG (default: random weights)"
    )
    parser.add_argument(
        "--run", type=Path, help="a VGG run folder with plan.json and model.safetensors (default: demo-like plan)"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds, one call of each file a round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds before them")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, help="folder for the ONNX files (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads take at least 1, --warmup at least 0")
    try:
        torch.manual_seed(SEED)
        if args.checkpoint is None:
            fp32, kwargs, source = build_model("vgg", **DEMO_MODEL_KWARGS).eval(), DEMO_MODEL_KWARGS, "random weights"
        else:
            fp32, info = load_checkpoint(args.checkpoint, name="vgg")
            kwargs, source = info["arch"]["kwargs"], f"weights of {args.checkpoint}"
        input_shape = (kwargs["in_channels"], kwargs["input_size"], kwargs["input_size"])
        model, bits, plan_text = compressed_model(args.run, fp32, input_shape)
        with tempfile.TemporaryDirectory() as scratch:
            report(args, Path(scratch), input_shape, (fp32, model, bits), f"VGG, {source}; {plan_text}")
    except QubocompressError as exc:
        print(f"onnx_latency: error: {exc}", file=sys.stderr)
        return 2
    return 0


def report(
    args: argparse.Namespace,
    scratch: Path,
    input_shape: tuple[int, int, int],
    models: tuple[nn.Module, nn.Module, Mapping[str, int]],
    title: str,
) -> None:
    """Export ``models`` (fp32, pruned, bits) into --out (or ``scratch``), then print sizes, a check,
    latencies and the reasons."""
    fp32, model, bits = models
    folder = args.out or scratch
    fp32_path, qdq_path = folder / "vgg-fp32.onnx", folder / "vgg-qdq.onnx"
    fp32_bytes = export_onnx(fp32, fp32_path, input_shape)
    qdq_bytes = export_onnx(model, qdq_path, input_shape, bits)  # raised if onnxruntime is missing
    import onnxruntime as ort

    print(title)
    print(f"onnxruntime {ort.__version__} CPU, {args.threads} intra-op thread(s), {os.cpu_count()} CPUs visible")
    print(f"fp32 ONNX {fp32_bytes:,} bytes, QDQ ONNX {qdq_bytes:,} bytes: {fp32_bytes / qdq_bytes:.2f}x smaller")
    print(f"QDQ weights: {weight_types(qdq_path)} (INT4 DequantizeLinear runs here: {onnxruntime_runs_int4()})")
    fp32_macs, qdq_macs = count_macs(fp32, input_shape), count_macs(model, input_shape)
    print(f"MACs per sample: fp32 {fp32_macs:,}, pruned {qdq_macs:,} ({1 - qdq_macs / fp32_macs:.1%} fewer)")

    generator = np.random.default_rng(SEED)
    inputs = {batch: generator.standard_normal((batch, *input_shape)).astype(np.float32) for batch in BATCHES}
    variants = {"fp32": (fp32_path, {}), "QDQ": (qdq_path, {}), "QDQ folded at load": (qdq_path, FOLD_AT_LOAD)}
    sessions = {
        name: session(path, args.threads, config, scratch / f"optimised-{index}.onnx")
        for index, (name, (path, config)) in enumerate(variants.items())
    }
    with torch.no_grad():
        expected = quantize_model_weights(model, bits).eval()(torch.from_numpy(inputs[BATCHES[-1]])).numpy()
    (got,) = sessions["QDQ"].run(None, {"input": inputs[BATCHES[-1]]})
    agree = int((got.argmax(1) == expected.argmax(1)).sum())
    print(
        f"QDQ ONNX vs the compressed torch model on {len(got)} random inputs: max |Δ logit| "
        f"{np.abs(got - expected).max():.1e}, same top-1 {agree}/{len(got)}"
    )

    print(f"\nlatency, ms per batch (median of {args.repeats} rounds after {args.warmup} warm-up rounds)")
    print("batch  " + "  ".join(f"{name:>18}" for name in variants) + "   speed-up vs fp32: QDQ  folded")
    for batch in BATCHES:
        ms = list(median_ms(sessions, inputs[batch], args.warmup, args.repeats).values())
        cells = "  ".join(f"{value:18.3f}" for value in ms)
        print(f"{batch:5d}  {cells}   {ms[0] / ms[1]:21.2f}x  {ms[0] / ms[2]:5.2f}x")

    print("\nops of onnxruntime's optimised graph:")
    for index, name in enumerate(variants):
        print(f"  {name}: {graph_ops(scratch / f'optimised-{index}.onnx')}")
    print(
        "why: every Conv/Gemm computes in float32 (onnxruntime's CPU provider has no kernel for integer weights\n"
        "with float activations), so integer weights make the file small, not the arithmetic fast. In a default\n"
        "session the DequantizeLinear nodes run at every call, and the convs, whose weights are then no\n"
        "constants, fall back from onnxruntime's NCHWc kernels (which need constant weights, blocked once at\n"
        "load) to plain NCHW convolutions: slower, most at large batches. Folded at load\n"
        "(session.disable_quant_qdq=1) the graph is the float32 one with the pruned shapes and the weights take\n"
        "float32 memory once loaded: pruning removes MACs, but a conv whose input channels are no multiple of the\n"
        "CPU's NCHWc block (16 floats with AVX-512, 8 with AVX2), such as 31 or 63 left of 32 or 64, also runs\n"
        "as a plain NCHW convolution, which can cost more than the pruned MACs save."
    )


if __name__ == "__main__":
    sys.exit(main())
