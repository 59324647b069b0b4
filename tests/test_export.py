"""Tests of the ONNX export: integer weights with per-channel DequantizeLinear, run by onnxruntime."""

from __future__ import annotations

import collections
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from qubocompress.analysis.graph import trace_model
from qubocompress.apply import export as export_module
from qubocompress.apply.artifact import load_artifact, save_artifact
from qubocompress.apply.export import export_onnx, onnxruntime_runs_int4
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import quantize_model_weights
from qubocompress.errors import ArtifactError
from qubocompress.models.zoo import build_model
from qubocompress.problem.plan import Plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

INPUT_SHAPE = (1, 28, 28)
MODEL_KWARGS = {"num_classes": 10, "in_channels": 1, "input_size": 28}
# Every kind of storage: int8 (5..8 bits), int4 or int8 (<= 4 bits), float32 (> 8 bits, 32).
BITS_CYCLE = (8, 3, 1, 5, 4, 2, 12, 32, 7, 6)
DEMO_BITS = (8, 8, 8, 7, 3, 1, 1, 8)


@pytest.fixture
def ort() -> Any:
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def randomized_zoo_model(name: str, seed: int = 0) -> nn.Module:
    """Built-in model ``name`` with random BatchNorm statistics and affine parameters of either sign
    (exported BatchNorm is folded into the conv, scaling its channels by factors of either sign)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, **MODEL_KWARGS)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.normal_(0.0, 1.0, generator=generator)
                module.bias.normal_(0.0, 0.3, generator=generator)
                module.running_mean.normal_(0.0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def pruned_with_bits(model: nn.Module, bits_cycle: tuple[int, ...], seed: int = 0) -> tuple[nn.Module, dict[str, int]]:
    """``model`` with about a quarter of every channel group pruned, and bits ``bits_cycle`` over its layers."""
    graph = trace_model(model, INPUT_SHAPE)
    rng = np.random.default_rng(seed)
    pruned = {
        group.name: tuple(int(i) for i in rng.choice(group.channels, size=group.channels // 4, replace=False))
        for group in graph.groups
    }
    bits = {layer.name: bits_cycle[index % len(bits_cycle)] for index, layer in enumerate(graph.layers)}
    return prune_model(model, graph, Plan(pruned=pruned, bits=bits)), bits


def random_inputs(n: int, seed: int = 1) -> np.ndarray:
    return torch.randn((n, *INPUT_SHAPE), generator=torch.Generator().manual_seed(seed)).numpy()


def run_onnx(ort: Any, path: Path, inputs: np.ndarray, config: Mapping[str, str] | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": inputs})
    return logits


def torch_logits(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(inputs)).numpy()


def weight_storage(path: Path) -> collections.Counter[str]:
    """How many DequantizeLinear-fed weights of the file are stored as each ONNX type (e.g. INT4)."""
    import onnx

    proto = onnx.load(str(path))
    types = {tensor.name: onnx.TensorProto.DataType.Name(tensor.data_type) for tensor in proto.graph.initializer}
    return collections.Counter(types[node.input[0]] for node in proto.graph.node if node.op_type == "DequantizeLinear")


def expected_storage(bits: Mapping[str, int], int4: bool) -> collections.Counter[str]:
    return collections.Counter("INT4" if int4 and b <= 4 else "INT8" for b in bits.values() if b <= 8)


@pytest.mark.parametrize("name", ["vgg", "resnet20", "lenet5", "mobilenet"])
def test_qdq_export_of_a_pruned_zoo_model_runs_and_matches_the_compressed_model(ort, tmp_path, name):
    pruned, bits = pruned_with_bits(randomized_zoo_model(name), BITS_CYCLE)
    path = tmp_path / "model.onnx"
    size = export_onnx(pruned, path, INPUT_SHAPE, bits)
    assert size == path.stat().st_size > 0
    inputs = random_inputs(32)
    got = run_onnx(ort, path, inputs)
    expected = torch_logits(quantize_model_weights(pruned, bits), inputs)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert np.array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert weight_storage(path) == expected_storage(bits, onnxruntime_runs_int4())


def test_int4_dequantize_linear_runs_in_this_onnxruntime(ort, tmp_path):
    if tuple(int(part) for part in ort.__version__.split(".")[:2]) < (1, 19):
        pytest.skip("the CPU provider runs INT4 DequantizeLinear from onnxruntime 1.19 on (its PR #20362)")
    assert onnxruntime_runs_int4()
    pruned, bits = pruned_with_bits(randomized_zoo_model("lenet5"), (1, 3, 4, 8, 2))
    path = tmp_path / "model.onnx"
    export_onnx(pruned, path, INPUT_SHAPE, bits)
    assert weight_storage(path) == collections.Counter({"INT4": 4, "INT8": 1})


def test_without_int4_the_low_bit_layers_are_int8(ort, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "onnxruntime_runs_int4", lambda: False)
    pruned, bits = pruned_with_bits(randomized_zoo_model("lenet5"), (1, 3, 4, 8, 2))
    path = tmp_path / "model.onnx"
    export_onnx(pruned, path, INPUT_SHAPE, bits)
    assert weight_storage(path) == collections.Counter({"INT8": 5})
    inputs = random_inputs(8)
    expected = torch_logits(quantize_model_weights(pruned, bits), inputs)
    np.testing.assert_allclose(run_onnx(ort, path, inputs), expected, atol=1e-4, rtol=0)


def test_qdq_file_is_well_below_the_fp32_file(ort, tmp_path):
    model = randomized_zoo_model("vgg")
    pruned, bits = pruned_with_bits(model, DEMO_BITS)
    fp32_path, qdq_path = tmp_path / "fp32.onnx", tmp_path / "qdq.onnx"
    fp32_bytes = export_onnx(model, fp32_path, INPUT_SHAPE)
    qdq_bytes = export_onnx(pruned, qdq_path, INPUT_SHAPE, bits)
    assert weight_storage(fp32_path) == collections.Counter()
    assert qdq_bytes * 3.5 < fp32_bytes
    inputs = random_inputs(4)
    np.testing.assert_allclose(run_onnx(ort, fp32_path, inputs), torch_logits(model, inputs), atol=1e-4, rtol=0)


def test_a_model_loaded_from_its_artifact_exports_the_same_function(ort, tmp_path):
    pruned, bits = pruned_with_bits(randomized_zoo_model("mobilenet"), BITS_CYCLE)
    save_artifact(tmp_path / "model.qcz", pruned, bits, {"name": "mobilenet", "kwargs": MODEL_KWARGS})
    loaded, _ = load_artifact(tmp_path / "model.qcz")  # dequantized weights: quantizing them again keeps the codes
    path = tmp_path / "model.onnx"
    export_onnx(loaded, path, INPUT_SHAPE, bits)
    inputs = random_inputs(8)
    np.testing.assert_allclose(run_onnx(ort, path, inputs), torch_logits(loaded, inputs), atol=1e-4, rtol=0)
    assert weight_storage(path) == expected_storage(bits, onnxruntime_runs_int4())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_model_exports_through_the_torchscript_exporter(ort, tmp_path):
    pruned, bits = pruned_with_bits(randomized_zoo_model("vgg"), DEMO_BITS)
    scripted = torch.jit.script(pruned)
    path = tmp_path / "model.onnx"
    export_onnx(scripted, path, INPUT_SHAPE, bits)  # its initializers are named onnx::Conv_N: matched by value
    inputs = random_inputs(8)
    expected = torch_logits(quantize_model_weights(pruned, bits), inputs)
    np.testing.assert_allclose(run_onnx(ort, path, inputs), expected, atol=1e-4, rtol=0)
    assert weight_storage(path) == expected_storage(bits, onnxruntime_runs_int4())


class TokenMixer(nn.Module):
    """A Linear on a 3-D input: exported as MatMul with the transposed weight (output channels on axis 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(2).transpose(1, 2)).mean(dim=1)


def test_a_transposed_weight_is_dequantized_along_its_output_axis(ort, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TokenMixer().eval()
    bits = {"conv": 3, "fc": 6}
    path = tmp_path / "model.onnx"
    export_onnx(model, path, INPUT_SHAPE, bits)
    inputs = random_inputs(8)
    expected = torch_logits(quantize_model_weights(model, bits), inputs)
    # onnxruntime fuses DequantizeLinear + MatMul into MatMulNBits, by default with int8 activations (level 4)
    float_matmul = {"session.qdq_matmulnbits_accuracy_level": "1"}
    np.testing.assert_allclose(run_onnx(ort, path, inputs, float_matmul), expected, atol=1e-5, rtol=0)
    assert weight_storage(path) == expected_storage(bits, onnxruntime_runs_int4())


class SpareLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.spare = nn.Linear(3, 3)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_layer_the_forward_never_uses_is_left_out(ort, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(SpareLayer().eval(), path, INPUT_SHAPE, {"conv": 4, "spare": 2})
    assert weight_storage(path) == expected_storage({"conv": 4}, onnxruntime_runs_int4())


class BesselHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(self.conv(x))  # no ONNX translation


class SignBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if y.sum() > 0 else -y  # data-dependent control flow


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (BesselHead, "BesselHead to ONNX: the exporter has no ONNX translation of torch operator prims.bessel_j0"),
        (SignBranch, "SignBranch to ONNX: GuardOnDataDependentSymNode: Could not guard on data-dependent expression"),
        (
            lambda: torch.jit.script(BesselHead()),
            "BesselHead to ONNX: Exporting the operator 'aten::special_bessel_j0' to ONNX opset version 21",
        ),
    ],
    ids=["unsupported-op", "data-dependent-branch", "torchscript-unsupported-op"],
)
def test_a_model_the_exporter_cannot_translate_is_one_line_error(ort, tmp_path, capfd, make, reason):
    path = tmp_path / "model.onnx"
    with pytest.raises(ArtifactError) as caught:
        export_onnx(make(), path, INPUT_SHAPE, {"conv": 4})
    message = str(caught.value)
    assert message.startswith(f"cannot export {reason}")
    assert "\n" not in message and len(message) < 400
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not path.exists()
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the exporter's progress lines, graph dumps and log lines are hidden


@pytest.mark.parametrize("package", ["onnx", "onnxruntime", "onnxscript"])
def test_a_missing_onnx_package_is_one_line_error(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    with pytest.raises(ArtifactError, match=rf"^ONNX export needs {package}: pip install 'qubocompress\[onnx\]'$"):
        export_onnx(build_model("lenet5", **MODEL_KWARGS), tmp_path / "model.onnx", INPUT_SHAPE, {})
    assert not (tmp_path / "model.onnx").exists()


def load_latency_script() -> Any:
    path = Path(__file__).resolve().parents[1] / "scripts" / "onnx_latency.py"
    spec = importlib.util.spec_from_file_location("onnx_latency", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_script_prints_sizes_latencies_and_the_graph_ops(ort, capsys):
    assert load_latency_script().main(["--repeats", "1", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "VGG, random weights; demo-like plan: 10 filters pruned, bits 8 8 8 7 3 1 1 8"
    fp32_bytes, qdq_bytes = (int(word.replace(",", "")) for word in lines[2].split() if word.replace(",", "").isdigit())
    assert qdq_bytes * 3.5 < fp32_bytes
    assert lines[5].endswith("same top-1 256/256")
    header = next(index for index, line in enumerate(lines) if line.startswith("batch"))
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == ["1", "256"]
    assert any(line.startswith("  QDQ: 8 DequantizeLinear, 0 NCHWc convs, 6 plain NCHW convs") for line in lines)


def test_latency_script_bad_run_folder_is_one_line(tmp_path, capsys):
    assert load_latency_script().main(["--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"onnx_latency: error: cannot read {tmp_path / 'plan.json'}")
