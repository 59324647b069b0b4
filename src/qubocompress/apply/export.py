"""ONNX export of a compressed model: pruned shapes, integer weights dequantized in the graph.

Every quantized Conv2d/Linear weight is stored as its integer codes (the artifact's, from
:func:`~qubocompress.apply.quantize.quantize_tensor`) and one float32 scale per output channel,
which a ``DequantizeLinear`` node (zero point 0) turns back into the float32 weight the Conv/Gemm
reads: "QDQ weights only", activations stay float32. Codes of <= 4 bits are stored as INT4 where the
installed onnxruntime's CPU provider runs it (opset 21), else as INT8, like 5..8 bits; layers above
8 bits and unquantized ones keep float32 weights. The graph thus computes what the artifact
computes, and the file is about as small as the bit-widths allow in ONNX's integer types.

The graph comes from torch.export (``torch.onnx.export(dynamo=True)``, torch's recommended exporter,
which needs onnxscript); a TorchScript model, which torch.export cannot read, goes through the
TorchScript exporter. Both fold each BatchNorm into the conv before it, which multiplies every output
channel of the weight by a constant: the codes stay, only the scales change. So each quantized weight
is found in the graph by value, as a weight initializer equal to the layer's codes times one number
per output channel (of either sign), whatever the exporter named it.

onnxruntime keeps DequantizeLinear as a run-time op by default (for QDQ fusions, which need quantized
activations too): every run then dequantizes the weights and the convs lose their pre-packed layout.
The session config entry ``session.disable_quant_qdq=1`` folds them once at load instead, into the
graph of the float32 export (``scripts/onnx_latency.py`` measures both). A weight that a MatMul reads
(a Linear on a 3-D input) it fuses with its DequantizeLinear into MatMulNBits, which by default computes
with int8 activations (~1e-4 relative error): ``session.qdq_matmulnbits_accuracy_level=1`` keeps float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from qubocompress.apply.quantize import QuantizedTensor, quantize_model_weights, quantize_tensor, quantized_layers
from qubocompress.errors import ArtifactError
from qubocompress.io import write_bytes_atomic

# 21: the first opset whose DequantizeLinear takes INT4 codes.
ONNX_OPSET = 21
INT4_MAX_BITS = 4
INT8_MAX_BITS = 8
# A graph weight is a layer's codes times per-channel scales when no element is further than this,
# relative to its channel's largest magnitude, from codes × scale (float32 rounding of BN folding: ~1e-7).
MATCH_TOLERANCE = 1e-5
# Ops whose second input is a weight the exporters may leave as an initializer.
WEIGHT_CONSUMERS = ("Conv", "Gemm", "MatMul")
EXAMPLE_BATCH = 2  # torch.export may specialise a batch of 1 to a constant
MAX_REASON_CHARS = 300


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: Sequence[int],
    bits: Mapping[str, int] | None = None,
) -> int:
    """Write ``model`` (already pruned; exported in eval mode) as ONNX to ``path`` atomically; returns the
    bytes written.

    ``input_shape`` is one sample's shape without the batch axis, e.g. ``(1, 28, 28)``; the batch
    axis of the graph (input ``input``, output ``logits``) is dynamic. ``bits``: layer name ->
    weight bit-width, quantized as :func:`~qubocompress.apply.artifact.save_artifact` does (32 or
    absent: float32; None: every weight float32); a model from ``load_artifact`` keeps its codes.
    A layer whose weight the graph does not hold (unused in the forward) is left out, as torch's
    exporter leaves it.

    Raises ArtifactError (one line) when onnx, onnxscript or onnxruntime is missing, when the
    exporter cannot translate the model (an unsupported op, data-dependent control flow), or when
    ``path`` cannot be written; ModelError/ProblemError for a bad ``bits``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"cannot write ONNX file {path}: {path.parent} is not an existing directory")
    onnx, _ = _require_onnx_extra()
    cpu_model = copy.deepcopy(model).eval()
    if any(tensor.device.type != "cpu" for tensor in cpu_model.state_dict().values()):
        cpu_model.cpu()  # only then: a ScriptModule's .cpu() warns about .grad even with nothing to move
    layers = quantized_layers(cpu_model, bits or {})
    modules = dict(cpu_model.named_modules())
    codes = {name: quantize_tensor(modules[name].weight, b) for name, b in layers.items() if b <= INT8_MAX_BITS}
    proto = _exported_graph(quantize_model_weights(cpu_model, bits or {}), tuple(input_shape))
    _strip_debug_info(proto)
    _store_integer_weights(proto, codes, int4=onnxruntime_runs_int4())
    onnx.checker.check_model(proto)
    return write_bytes_atomic(path, proto.SerializeToString())


def _require_onnx_extra() -> tuple[ModuleType, ModuleType]:
    """(onnx, onnxruntime), or the one-line ArtifactError naming the first missing package of the onnx extra."""
    package = "onnx"
    try:
        import onnx

        package = "onnxruntime"
        import onnxruntime

        package = "onnxscript"
        import onnxscript  # noqa: F401  (torch's dynamo exporter imports it)
    except ImportError:
        raise ArtifactError(f"ONNX export needs {package}: pip install 'qubocompress[onnx]'") from None
    return onnx, onnxruntime


@functools.cache
def onnxruntime_runs_int4() -> bool:
    """Whether onnxruntime's CPU provider runs a Conv whose weight is an INT4 per-channel DequantizeLinear."""
    onnx, ort = _require_onnx_extra()
    helper, TensorProto = onnx.helper, onnx.TensorProto
    try:
        weight = _code_tensor("w", np.array([-7, 7], dtype=np.int8).reshape(2, 1, 1, 1), int4=True)
        scale = helper.make_tensor("s", TensorProto.FLOAT, [2], [0.5, 0.25])
        graph = helper.make_graph(
            [
                helper.make_node("DequantizeLinear", ["w", "s"], ["w_float"], axis=0),
                helper.make_node("Conv", ["x", "w_float"], ["y"]),
            ],
            "int4_probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])],
            [weight, scale],
        )
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"x": np.ones((1, 1, 1, 1), dtype=np.float32)})
    except Exception:  # an onnx without INT4, or an onnxruntime without the kernel: each raises its own types
        return False
    return bool(np.allclose(out.ravel(), [-3.5, 1.75]))


def _exported_graph(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The onnx ModelProto of ``model`` at :data:`ONNX_OPSET` with a dynamic batch axis (ArtifactError if it fails)."""
    import onnx

    example = (torch.zeros((EXAMPLE_BATCH, *input_shape), dtype=torch.float32),)
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": ONNX_OPSET}
    try:
        with _quiet_exporter(), torch.no_grad():
            if isinstance(model, torch.jit.ScriptModule):  # torch.export cannot read TorchScript
                buffer = io.BytesIO()
                axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
                torch.onnx.export(model, example, buffer, dynamo=False, dynamic_axes=axes, verbose=False, **names)
                return onnx.load_from_string(buffer.getvalue())
            batch = ({0: torch.export.Dim("batch")},)
            return torch.onnx.export(
                model, example, dynamo=True, dynamic_shapes=batch, verbose=False, **names
            ).model_proto
    except ArtifactError:
        raise
    except Exception as exc:  # the exporters raise many types (export, dispatch, shape and guard errors)
        name = getattr(model, "original_name", type(model).__name__)  # a ScriptModule's class name
        raise ArtifactError(f"cannot export {name} to ONNX: {_export_failure(exc)}") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporters' progress lines, graph dumps, warnings and torch log lines for the block: those
    Python prints, those torch's C++ side writes to file descriptors 1 and 2, and torch's log records."""
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    sink = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = [os.dup(fd) for fd in (1, 2)]
    torch_logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "wb") as devnull, warnings.catch_warnings():
            for fd in (1, 2):
                os.dup2(devnull.fileno(), fd)
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
    finally:
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        torch_logger.setLevel(level)


def _export_failure(exc: Exception) -> str:
    """One line saying why the exporter failed: the untranslatable op, else the root exception's message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return f"the exporter has no ONNX translation of torch operator {op.group(1)}"
    root = re.search(r"## Exception summary\s+<class '[^']*?([^.']+)'>: (.+)", text)
    reason = f"{root.group(1)}: {root.group(2)}" if root else text.strip().split("\n", 1)[0]
    return " ".join(reason.split())[:MAX_REASON_CHARS] or type(exc).__name__


def _strip_debug_info(proto: Any) -> None:
    """Drop the exporter's per-node debug data (stack traces with local paths, fx names): ~20 KB on a VGG."""
    proto.graph.doc_string = ""
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]


def _store_integer_weights(proto: Any, codes: Mapping[str, QuantizedTensor], int4: bool) -> None:
    """Replace each float weight initializer of ``proto`` that is some layer's codes times per-channel
    scales by the codes (INT4 at <= 4 bits if ``int4``, else INT8), the scales and a DequantizeLinear."""
    import onnx

    graph = proto.graph
    weight_names = {node.input[1] for node in graph.node if node.op_type in WEIGHT_CONSUMERS and len(node.input) > 1}
    dequantize_nodes = []
    for initializer in list(graph.initializer):
        if initializer.name not in weight_names or initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        values = onnx.numpy_helper.to_array(initializer)
        for layer, axis in _candidate_layers(initializer.name, values.shape, codes):
            layer_codes = codes[layer].codes.numpy()
            layer_codes = layer_codes.T if axis == 1 else layer_codes  # in the initializer's layout
            scales = _channel_scales(values, layer_codes, axis)
            if scales is None:
                continue
            signs = np.where(scales < 0, -1, 1).astype(np.int8)
            signs_shape = [-1 if dim == axis else 1 for dim in range(values.ndim)]
            stored = _code_tensor(
                f"{initializer.name}_codes",
                layer_codes * signs.reshape(signs_shape),
                int4=int4 and codes[layer].bits <= INT4_MAX_BITS,
            )
            scale = onnx.numpy_helper.from_array(np.abs(scales).astype(np.float32), f"{initializer.name}_scale")
            graph.initializer.remove(initializer)
            graph.initializer.extend([stored, scale])
            dequantize_nodes.append(
                onnx.helper.make_node(
                    "DequantizeLinear",
                    [stored.name, scale.name],
                    [initializer.name],
                    name=f"{initializer.name}_dequantize",
                    axis=axis,
                )
            )
            break
    nodes = dequantize_nodes + list(graph.node)  # they read initializers only, so they may run first
    del graph.node[:]
    graph.node.extend(nodes)


def _candidate_layers(name: str, shape: tuple[int, ...], codes: Mapping[str, QuantizedTensor]) -> list[tuple[str, int]]:
    """(layer, output-channel axis) whose codes have ``shape`` (axis 0) or, for a matrix, its
    transpose (axis 1): the layer whose weight bears initializer ``name`` first."""
    candidates = []
    for layer, qt in codes.items():
        if qt.shape == shape:
            candidates.append((layer, 0))
        if len(qt.shape) == 2 and qt.shape[::-1] == shape:
            candidates.append((layer, 1))
    return sorted(candidates, key=lambda candidate: name != f"{candidate[0]}.weight")


def _channel_scales(values: np.ndarray, codes: np.ndarray, axis: int) -> np.ndarray | None:
    """Per-channel (``axis``) scales ``s`` with ``values == codes * s`` (:data:`MATCH_TOLERANCE`), else None."""
    channels = values.shape[axis]
    v = np.moveaxis(values, axis, 0).reshape(channels, -1).astype(np.float64)
    c = np.moveaxis(codes, axis, 0).reshape(channels, -1).astype(np.float64)
    norms = (c * c).sum(axis=1)
    scales = (v * c).sum(axis=1) / np.where(norms > 0, norms, 1.0)
    errors = np.abs(v - c * scales[:, None]).max(axis=1)
    return scales if np.all(errors <= MATCH_TOLERANCE * np.abs(v).max(axis=1)) else None


def _code_tensor(name: str, codes: np.ndarray, int4: bool) -> Any:
    """An INT4 (two codes a byte, low nibble first) or INT8 TensorProto of integer ``codes``."""
    import onnx

    if not int4:
        return onnx.numpy_helper.from_array(codes.astype(np.int8), name)
    nibbles = np.append(codes.ravel(), [0] * (codes.size % 2)).astype(np.uint8) & 0x0F
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return onnx.helper.make_tensor(name, onnx.TensorProto.INT4, codes.shape, packed.tobytes(), raw=True)
