"""Tests of the apply layer: quantizer, physical pruning, bit-packed artifact, QAT, ONNX export."""

from __future__ import annotations

import copy
import io
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from qubocompress.analysis.graph import LayerInfo, ModelGraph, PruningGroup, trace_model
from qubocompress import io as io_module
from qubocompress.apply.artifact import load_artifact, pack_codes, save_artifact, unpack_codes
from qubocompress.apply.export import export_onnx
from qubocompress.apply.finetune import finetune
from qubocompress.apply.prune import mask_model, prune_model
from qubocompress.apply.quantize import (
    CLIP_RATIOS,
    QuantizedTensor,
    dequantize,
    fake_quantize,
    max_code,
    quantize_model_weights,
    quantize_tensor,
    weight_quant_error,
)
from qubocompress.errors import ArtifactError, DataError, ModelError, ProblemError
from qubocompress.models.user import factory_label
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# Small models with hand-written graphs
# ---------------------------------------------------------------------------------------------


class SeqNet(nn.Module):
    """conv-BN-ReLU ×2, max-pool, flatten, Linear-ReLU-Linear; input 1×8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(8 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(torch.flatten(self.features(x), 1))))


def seq_graph() -> ModelGraph:
    layers = [
        LayerInfo("features.0", "conv", 6, 1, 1, 9, 1, 64, 0, None),
        LayerInfo("features.3", "conv", 8, 6, 1, 9, 1, 64, 1, 0),
        LayerInfo("fc1", "linear", 12, 8, 1, 1, 16, 1, 2, 1),
        LayerInfo("fc2", "linear", 4, 12, 1, 1, 1, 1, None, 2),
    ]
    groups = [
        PruningGroup("features.0", 6, ("features.0",), ("features.1",), (), (("features.3", 1),)),
        PruningGroup("features.3", 8, ("features.3",), ("features.4",), (), (("fc1", 16),)),
        PruningGroup("fc1", 12, ("fc1",), (), (), (("fc2", 1),)),
    ]
    return ModelGraph(layers=layers, groups=groups)


class TinyResNet(nn.Module):
    """A stem, an identity residual block and a strided block with a 1×1 projection; input 3×8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_stem = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.conv_c = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.bn_c = nn.BatchNorm2d(12)
        self.conv_d = nn.Conv2d(12, 12, 3, padding=1)
        self.bn_d = nn.BatchNorm2d(12)
        self.shortcut = nn.Conv2d(8, 12, 1, stride=2, bias=False)
        self.bn_s = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn_stem(self.stem(x)))
        r = F.relu(self.bn_a(self.conv_a(h)))
        h = F.relu(self.bn_b(self.conv_b(r)) + h)
        r = F.relu(self.bn_c(self.conv_c(h)))
        h = F.relu(self.bn_d(self.conv_d(r)) + self.bn_s(self.shortcut(h)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def resnet_graph() -> ModelGraph:
    layers = [
        LayerInfo("stem", "conv", 8, 3, 1, 9, 1, 64, 0, None),
        LayerInfo("conv_a", "conv", 8, 8, 1, 9, 1, 64, 1, 0),
        LayerInfo("conv_b", "conv", 8, 8, 1, 9, 1, 64, 0, 1),
        LayerInfo("conv_c", "conv", 12, 8, 1, 9, 1, 16, 2, 0),
        LayerInfo("conv_d", "conv", 12, 12, 1, 9, 1, 16, 3, 2),
        LayerInfo("shortcut", "conv", 12, 8, 1, 1, 1, 16, 3, 0),
        LayerInfo("fc", "linear", 3, 12, 1, 1, 1, 1, None, 3),
    ]
    groups = [
        PruningGroup(
            "stem", 8, ("stem", "conv_b"), ("bn_stem", "bn_b"), (), (("conv_a", 1), ("conv_c", 1), ("shortcut", 1))
        ),
        PruningGroup("conv_a", 8, ("conv_a",), ("bn_a",), (), (("conv_b", 1),)),
        PruningGroup("conv_c", 12, ("conv_c",), ("bn_c",), (), (("conv_d", 1),)),
        PruningGroup("conv_d", 12, ("conv_d", "shortcut"), ("bn_d", "bn_s"), (), (("fc", 1),)),
    ]
    return ModelGraph(layers=layers, groups=groups)


class DepthwiseNet(nn.Module):
    """conv-BN-ReLU, depthwise 3×3-BN-ReLU, pointwise 1×1-BN-ReLU, global pool, Linear; input 3×8×8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 10, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn0(self.conv0(x)))
        h = F.relu(self.bn_dw(self.dw(h)))
        h = F.relu(self.bn_pw(self.pw(h)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def depthwise_graph() -> ModelGraph:
    layers = [
        LayerInfo("conv0", "conv", 8, 3, 1, 9, 1, 64, 0, None),
        LayerInfo("dw", "conv", 8, 8, 8, 9, 1, 64, 0, 0),
        LayerInfo("pw", "conv", 10, 8, 1, 1, 1, 64, 1, 0),
        LayerInfo("fc", "linear", 3, 10, 1, 1, 1, 1, None, 1),
    ]
    groups = [
        PruningGroup("conv0", 8, ("conv0",), ("bn0", "bn_dw"), ("dw",), (("pw", 1),)),
        PruningGroup("pw", 10, ("pw",), ("bn_pw",), (), (("fc", 1),)),
    ]
    return ModelGraph(layers=layers, groups=groups)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]
    graph: Callable[[], ModelGraph]
    input_shape: tuple[int, int, int]


CASES = [
    Case("seq", SeqNet, seq_graph, (1, 8, 8)),
    Case("resnet", TinyResNet, resnet_graph, (3, 8, 8)),
    Case("depthwise", DepthwiseNet, depthwise_graph, (3, 8, 8)),
]
CASE_BY_NAME = {case.name: case for case in CASES}


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with random weights and non-trivial BatchNorm statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0.0, 0.4, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.2, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.3, generator=generator)
                module.running_mean.normal_(0.0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def spec_of(graph: ModelGraph) -> CompressionSpec:
    """The size model of ``graph`` (importance and damage do not matter here)."""
    groups = tuple(
        ChannelGroup(g.name, np.ones(g.channels), g.channels - 1, g.producers + g.depthwise) for g in graph.groups
    )
    layers = tuple(
        LayerSpec(
            name=layer.name,
            kind=layer.kind,  # type: ignore[arg-type]
            out_channels=layer.out_channels,
            in_channels=layer.in_channels,
            groups=layer.groups,
            kernel_area=layer.kernel_area,
            in_features_per_channel=layer.in_features_per_channel,
            out_positions=layer.out_positions,
            out_group=layer.out_group,
            in_group=layer.in_group,
        )
        for layer in graph.layers
    )
    return CompressionSpec(model="test", layers=layers, groups=groups)


def random_plan(graph: ModelGraph, rng: np.random.Generator, bits_choices=(1, 2, 3, 4, 8)) -> Plan:
    pruned = {}
    for group in graph.groups:
        count = int(rng.integers(0, group.channels))  # at most channels - 1
        pruned[group.name] = tuple(int(i) for i in rng.choice(group.channels, size=count, replace=False))
    bits = {layer.name: int(rng.choice(bits_choices)) for layer in graph.layers}
    return Plan(pruned=pruned, bits=bits)


def sample_input(case: Case, seed: int = 0, n: int = 5) -> torch.Tensor:
    return torch.randn((n, *case.input_shape), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 12])
def test_codes_lie_on_the_symmetric_grid(bits):
    w = torch.randn(7, 5, 3, 3, generator=torch.Generator().manual_seed(bits))
    qt = quantize_tensor(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert qt.codes.dtype == (torch.int8 if bits <= 8 else torch.int16)
    assert qt.codes.shape == w.shape and qt.scale.shape == (7,) and qt.scale.dtype == torch.float32
    assert int(qt.codes.abs().max()) <= qmax
    assert torch.all(qt.scale > 0)
    expected = qt.codes.float() * qt.scale[:, None, None, None]
    assert torch.equal(dequantize(qt), expected)
    assert torch.equal(fake_quantize(w, bits), expected)


def test_one_bit_is_sign_times_mean_abs():
    w = torch.tensor([[0.5, -1.5, 0.0, 1.0], [-2.0, -2.0, 2.0, 2.0]])
    qt = quantize_tensor(w, 1)
    assert qt.codes.tolist() == [[1, -1, 1, 1], [-1, -1, 1, 1]]
    assert torch.allclose(qt.scale, torch.tensor([0.75, 2.0]))


def test_error_falls_with_bits_and_clipping_beats_max_scaling():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    errors = [weight_quant_error(w, b) for b in range(1, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert weight_quant_error(w, 32) == 0.0
    assert errors[-1] < 1e-4 * float(w.square().mean())
    for bits in (2, 3):
        qmax = max_code(bits)
        scale = w.abs().amax(dim=1, keepdim=True) / qmax
        max_scaled = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
        max_scaled_error = float((max_scaled - w).square().mean())
        assert weight_quant_error(w, bits) < 0.8 * max_scaled_error


def test_scale_is_the_best_on_the_grid_per_channel():
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * torch.tensor([[0.01], [1.0], [100.0], [3.0]])
    qt = quantize_tensor(w, 3)
    error = ((dequantize(qt) - w) ** 2).sum(dim=1)
    for ratio in CLIP_RATIOS.tolist():
        scale = w.abs().amax(dim=1) * ratio / 3
        other = torch.clamp(torch.round(w / scale[:, None]), -3, 3) * scale[:, None]
        assert torch.all(error <= ((other - w) ** 2).sum(dim=1) * (1 + 1e-6))


def test_zero_channel_gives_no_nan():
    w = torch.randn(3, 9)
    w[1] = 0.0
    for bits in (1, 2, 4, 8):
        qt = quantize_tensor(w, bits)
        out = dequantize(qt)
        assert torch.isfinite(out).all() and torch.isfinite(qt.scale).all()
        assert float(out[1].abs().max()) <= 1e-8


@pytest.mark.parametrize("bits", [0, 17, 2.5, True])
def test_impossible_bit_width_is_a_problem_error(bits):
    with pytest.raises(ProblemError, match="cannot quantize"):
        quantize_tensor(torch.randn(2, 2), bits)


def test_quantize_model_weights_copies_and_leaves_32_bit_layers():
    model = randomized(SeqNet(), 0)
    original = copy.deepcopy(model.state_dict())
    quantized = quantize_model_weights(model, {"features.0": 2, "fc1": 32, "fc2": 4})
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key])  # the input is untouched
    state = quantized.state_dict()
    assert torch.equal(state["features.0.weight"], fake_quantize(original["features.0.weight"], 2))
    assert torch.equal(state["fc2.weight"], fake_quantize(original["fc2.weight"], 4))
    for key in ("fc1.weight", "features.3.weight", "features.0.bias", "features.1.running_mean"):
        assert torch.equal(state[key], original[key])


def test_bits_for_a_non_layer_is_a_model_error():
    model = SeqNet()
    with pytest.raises(ModelError, match="'features.1', which is not a Conv2d/Linear.*BatchNorm2d"):
        quantize_model_weights(model, {"features.1": 4})
    with pytest.raises(ModelError, match="'nope'.*no such module"):
        quantize_model_weights(model, {"nope": 4})


# ---------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(case_name=st.sampled_from(sorted(CASE_BY_NAME)), seed=st.integers(0, 2**31 - 1))
def test_pruned_model_equals_masked_reference(case_name, seed):
    case = CASE_BY_NAME[case_name]
    graph = case.graph()
    model = randomized(case.make(), seed % 1000)
    plan = random_plan(graph, np.random.default_rng(seed))
    x = sample_input(case, seed % 97)
    pruned = prune_model(model, graph, plan).eval()
    masked = mask_model(model, graph, plan).eval()
    with torch.no_grad():
        out_pruned, out_masked, out_full = pruned(x), masked(x), model(x)
    assert out_pruned.shape == out_full.shape
    torch.testing.assert_close(out_pruned, out_masked, atol=1e-5, rtol=1e-5)
    if any(plan.pruned.values()):
        assert not torch.allclose(out_masked, out_full, atol=1e-5)  # the pruning really changed something
    expected = plan.layer_weights(spec_of(graph))
    modules = dict(pruned.named_modules())
    for name, count in expected.items():
        assert modules[name].weight.numel() == count, name


def test_pruned_modules_have_consistent_attributes():
    case = CASE_BY_NAME["depthwise"]
    model = randomized(case.make(), 0)
    model.dw.weight.requires_grad_(False)
    plan = Plan(pruned={"conv0": (0, 5, 7), "pw": (1,)}, bits={})
    pruned = prune_model(model, depthwise_graph(), plan)
    assert (pruned.conv0.out_channels, pruned.bn0.num_features) == (5, 5)
    assert (pruned.dw.in_channels, pruned.dw.out_channels, pruned.dw.groups) == (5, 5, 5)
    assert tuple(pruned.dw.weight.shape) == (5, 1, 3, 3) and not pruned.dw.weight.requires_grad
    assert pruned.bn_dw.running_var.shape == (5,)
    assert pruned.pw.in_channels == 5 and pruned.pw.out_channels == 9 and pruned.fc.in_features == 9
    assert torch.equal(pruned.conv0.weight, model.conv0.weight[[1, 2, 3, 4, 6]])
    assert model.conv0.out_channels == 8 and model.conv0.weight.shape[0] == 8  # original untouched


def test_flatten_consumer_keeps_whole_feature_blocks():
    model = randomized(SeqNet(), 3)
    pruned = prune_model(model, seq_graph(), Plan(pruned={"features.3": (2,)}, bits={}))
    kept = [c for c in range(8) if c != 2]
    columns = [c * 16 + k for c in kept for k in range(16)]
    assert pruned.fc1.in_features == 7 * 16
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[:, columns])


def test_plan_errors_are_model_errors():
    model, graph = SeqNet(), seq_graph()
    with pytest.raises(ModelError, match="group 'conv9', which the model does not have"):
        prune_model(model, graph, Plan(pruned={"conv9": (0,)}, bits={}))
    with pytest.raises(ModelError, match="prunes all 6 channels of group 'features.0'"):
        prune_model(model, graph, Plan(pruned={"features.0": tuple(range(6))}, bits={}))
    with pytest.raises(ModelError, match="channels \\[6\\] of group 'features.0', which has 6"):
        mask_model(model, graph, Plan(pruned={"features.0": (6,)}, bits={}))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hand_written_graphs_are_what_the_tracer_finds(case):
    traced = trace_model(case.make(), case.input_shape)
    assert traced.layers == case.graph().layers
    assert traced.groups == case.graph().groups


def test_empty_plan_is_an_identical_copy():
    model = randomized(TinyResNet(), 4)
    pruned = prune_model(model, resnet_graph(), Plan(pruned={"stem": ()}, bits={}))
    assert pruned is not model
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), pruned.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


# ---------------------------------------------------------------------------------------------
# artifact
# ---------------------------------------------------------------------------------------------


def arch_of(case: Case) -> dict:
    """The arch an artifact of ``case``'s model records: its factory, rebuilt only when passed."""
    return {"factory": factory_label(case.make), "kwargs": {}}


ARCH = arch_of(CASE_BY_NAME["seq"])


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 16), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    count = data.draw(st.integers(1, 300))
    qmax = max_code(bits)
    codes = data.draw(st.lists(st.integers(-qmax, qmax), min_size=count, max_size=count))
    if bits == 1:
        codes = [1 if c >= 0 else -1 for c in codes]
    tensor = torch.tensor(codes, dtype=torch.int16).reshape(count, 1)
    qt = QuantizedTensor(codes=tensor, scale=torch.ones(count), bits=bits, shape=(count, 1))
    packed = pack_codes(qt)
    assert len(packed) == -(-count * bits // 8)
    assert unpack_codes(packed, bits, count).tolist() == codes


def compressed(case: Case, seed: int = 0) -> tuple[nn.Module, Plan]:
    graph = case.graph()
    plan = random_plan(graph, np.random.default_rng(seed), bits_choices=(1, 2, 3, 4, 5, 8, 32))
    return prune_model(randomized(case.make(), seed), graph, plan), plan


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_artifact_round_trip_matches_quantized_pruned_model(case, tmp_path):
    pruned, plan = compressed(case, seed=11)
    path = tmp_path / "model.qcz"
    metadata = {"plan": plan.to_dict(), "acc": np.float32(0.5), "counts": np.arange(3)}
    size = save_artifact(path, pruned, plan.bits, arch_of(case), metadata)
    assert size == path.stat().st_size
    loaded, meta = load_artifact(path, factory=case.make)
    assert not loaded.training
    assert meta == {"plan": plan.to_dict(), "acc": 0.5, "counts": [0, 1, 2]}
    reference = quantize_model_weights(pruned, plan.bits).eval()
    for (key, expected), (key2, got) in zip(reference.state_dict().items(), loaded.state_dict().items()):
        assert key == key2 and expected.shape == got.shape and torch.equal(expected, got), key
    x = sample_input(case, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), atol=1e-5, rtol=1e-5)


def test_artifact_preserves_conv_hyper_parameters(tmp_path):
    pruned, plan = compressed(CASE_BY_NAME["resnet"], seed=2)
    save_artifact(tmp_path / "r.qcz", pruned, plan.bits, arch_of(CASE_BY_NAME["resnet"]))
    loaded, _ = load_artifact(tmp_path / "r.qcz", factory=TinyResNet)
    for name in ("conv_c", "shortcut"):
        module = loaded.get_submodule(name)
        assert module.stride == (2, 2) and (module.bias is None) == (pruned.get_submodule(name).bias is None)
    dw_pruned, dw_plan = compressed(CASE_BY_NAME["depthwise"], seed=5)
    save_artifact(tmp_path / "d.qcz", dw_pruned, dw_plan.bits, arch_of(CASE_BY_NAME["depthwise"]))
    loaded, _ = load_artifact(tmp_path / "d.qcz", factory=DepthwiseNet)
    assert loaded.dw.groups == loaded.dw.out_channels == dw_pruned.dw.out_channels
    assert loaded.bn_dw.eps == dw_pruned.bn_dw.eps and loaded.bn_dw.momentum == dw_pruned.bn_dw.momentum


@pytest.mark.parametrize("name", ["lenet5", "vgg", "vgg16", "resnet20", "resnet56", "mobilenet"])
def test_built_in_models_prune_and_reload_with_the_default_builder(name, tmp_path):
    from qubocompress.models import zoo

    kwargs = {"num_classes": 5, "in_channels": 1, "input_size": 16}
    if name != "lenet5":
        kwargs["width"] = 4
    model = randomized(zoo.build_model(name, **kwargs), 0)
    graph = trace_model(model, (1, 16, 16))
    plan = random_plan(graph, np.random.default_rng(1), bits_choices=(2, 4, 8))
    pruned = prune_model(model, graph, plan).eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), mask_model(model, graph, plan)(x), atol=1e-5, rtol=1e-5)
    path = tmp_path / f"{name}.qcz"
    save_artifact(path, pruned, plan.bits, {"name": name, "kwargs": kwargs})
    loaded, _ = load_artifact(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), quantize_model_weights(pruned, plan.bits).eval()(x), atol=1e-5, rtol=1e-5)


def torch_save_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def test_artifact_size_is_packed_bits_plus_small_overhead(tmp_path):
    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(32)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(64)
            self.fc = nn.Linear(64 * 4 * 4, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
            return self.fc(torch.flatten(h, 1))

    model = randomized(Wide(), 0)
    bits = {"conv1": 8, "conv2": 3, "fc": 4}
    path = tmp_path / "wide.qcz"
    size = save_artifact(path, model, bits, {"name": "wide", "kwargs": {}})
    state = model.state_dict()
    weights = {f"{name}.weight": b for name, b in bits.items()}
    packed = sum(-(-state[key].numel() * b // 8) + 4 * state[key].shape[0] for key, b in weights.items())
    raw = sum(4 * v.numel() if v.is_floating_point() else 8 for k, v in state.items() if k not in weights)
    header_budget = 70 * len(state) + 200
    assert packed + raw + 12 < size < packed + raw + 12 + header_budget
    assert size < torch_save_bytes(model) / 4


def write_valid(tmp_path: Path) -> Path:
    pruned, plan = compressed(CASE_BY_NAME["seq"], seed=3)
    path = tmp_path / "m.qcz"
    save_artifact(path, pruned, plan.bits, ARCH)
    return path


def test_flipped_byte_is_detected(tmp_path):
    path = write_valid(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) - 40] ^= 0x01  # a payload byte
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"m.qcz is corrupt \(checksum mismatch\)"):
        load_artifact(path, factory=SeqNet)


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.01])
def test_truncated_file_is_detected(tmp_path, keep):
    path = write_valid(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: max(5, int(len(data) * keep))])
    with pytest.raises(ArtifactError, match="m.qcz is truncated"):
        load_artifact(path, factory=SeqNet)


def test_wrong_magic_and_missing_files(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(SeqNet().state_dict(), path)
    with pytest.raises(ArtifactError, match="model.pt is not a qubocompress artifact"):
        load_artifact(path, factory=SeqNet)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ArtifactError, match="is not a qubocompress artifact"):
        load_artifact(tmp_path / "empty", factory=SeqNet)
    with pytest.raises(ArtifactError, match="cannot read artifact .*absent.qcz"):
        load_artifact(tmp_path / "absent.qcz", factory=SeqNet)


def test_trailing_bytes_are_corruption(tmp_path):
    path = write_valid(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ArtifactError, match="is corrupt \\(2 unexpected bytes"):
        load_artifact(path, factory=SeqNet)


def rewrite_header(path: Path, edit: Callable[[dict], None]) -> None:
    """Change the header of the artifact at ``path`` and write a matching checksum."""
    data = path.read_bytes()
    header_len = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    edit(header)
    text = json.dumps(header).encode()
    body = b"QCZ1" + len(text).to_bytes(4, "little") + text + data[8 + header_len : -4]
    path.write_bytes(body + zlib.crc32(body).to_bytes(4, "little"))


def test_header_that_does_not_describe_the_payload_is_corrupt(tmp_path):
    path = write_valid(tmp_path)
    rewrite_header(path, lambda header: header["tensors"][0].update(shape=[1, 1, 1, 1]))
    with pytest.raises(ArtifactError, match="is corrupt \\(malformed header: the tensors cover"):
        load_artifact(path, factory=SeqNet)
    rewrite_header(path, lambda header: header.update(format=2))
    with pytest.raises(ArtifactError, match="has artifact format 2; this qubocompress reads format 1"):
        load_artifact(path, factory=SeqNet)


def test_wrong_architecture_is_an_artifact_error(tmp_path):
    path = write_valid(tmp_path)
    with pytest.raises(ArtifactError, match="records the factory test_apply:SeqNet, not test_apply:TinyResNet"):
        load_artifact(path, factory=TinyResNet)
    rewrite_header(path, lambda header: header["arch"].update(factory=factory_label(TinyResNet)))
    with pytest.raises(
        ArtifactError, match=r"artifact .*m.qcz does not match the 'test_apply:TinyResNet' architecture"
    ):
        load_artifact(path, factory=TinyResNet)


def test_unwritable_locations_are_artifact_errors(tmp_path):
    model = SeqNet()
    with pytest.raises(ArtifactError, match="is not an existing directory"):
        save_artifact(tmp_path / "no" / "such" / "m.qcz", model, {}, ARCH)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="file"):
        save_artifact(tmp_path / "file" / "m.qcz", model, {}, ARCH)
    (tmp_path / "adir").mkdir()
    with pytest.raises(ArtifactError, match="cannot write .*adir: it is an existing folder"):
        save_artifact(tmp_path / "adir", model, {}, ARCH)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "file"]


def test_bad_arch_and_metadata_are_artifact_errors(tmp_path):
    with pytest.raises(ArtifactError, match="arch must be"):
        save_artifact(tmp_path / "m.qcz", SeqNet(), {}, {"kwargs": {}})
    with pytest.raises(ArtifactError, match="JSON-serialisable"):
        save_artifact(tmp_path / "m.qcz", SeqNet(), {}, ARCH, metadata={"x": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_save_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch, error):
    path = write_valid(tmp_path)
    before = path.read_bytes()
    calls = {"n": 0}

    def failing_fsync(fd):  # the bytes are written, not yet renamed into place
        calls["n"] += 1
        raise error

    monkeypatch.setattr(io_module.os, "fsync", failing_fsync)
    expected = ArtifactError if isinstance(error, OSError) else KeyboardInterrupt
    for target in (path, tmp_path / "new.qcz"):
        with pytest.raises(expected):
            save_artifact(target, SeqNet(), {"fc1": 2}, ARCH)
    assert calls["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qcz"]
    assert path.read_bytes() == before


def test_header_is_json_with_exact_bit_widths(tmp_path):
    path = write_valid(tmp_path)
    data = path.read_bytes()
    assert data[:4] == b"QCZ1"
    header_len = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    assert header["arch"] == ARCH and header["format"] == 1
    entries = {entry["name"]: entry for entry in header["tensors"]}
    assert set(entries["features.1.running_var"]) == {"name", "shape", "dtype"}
    assert entries["features.1.running_var"]["dtype"] == "float32"
    assert set(entries["fc1.weight"]) == {"name", "shape", "bits"}
    assert entries["features.1.num_batches_tracked"]["dtype"] == "int64"
    sizes = [
        -(-int(np.prod(e["shape"])) * e["bits"] // 8) + 4 * e["shape"][0]
        if "bits" in e
        else int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize
        for e in header["tensors"]
    ]
    assert sum(sizes) == header["payload_bytes"] == len(data) - 12 - header_len
    assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[:-4])


# ---------------------------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToySplit:
    x: torch.Tensor
    y: torch.Tensor


def toy_problem(n: int, seed: int) -> ToySplit:
    """4 classes of 1×8×8 images: a class template plus strong noise."""
    templates = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=generator)
    x = templates[y] + 1.2 * torch.randn(n, 1, 8, 8, generator=generator)
    return ToySplit(x, y)


def quantized_loss(model: nn.Module, bits: dict[str, int], split: ToySplit) -> tuple[float, float]:
    quantized = quantize_model_weights(model, bits).eval()
    with torch.no_grad():
        logits = quantized(split.x)
    return float(F.cross_entropy(logits, split.y)), float((logits.argmax(1) == split.y).float().mean())


def all_bits(model: nn.Module, b: int) -> dict[str, int]:
    return {name: b for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_qat_at_two_bits_recovers_the_quantized_model():
    train, test = toy_problem(512, 0), toy_problem(512, 1)
    torch.manual_seed(0)
    model = SeqNet()
    finetune(model, {}, train, epochs=6, lr=0.05, batch_size=64, seed=0)
    bits = all_bits(model, 2)
    fp_loss, fp_acc = quantized_loss(model, {}, test)
    before_loss, before_acc = quantized_loss(model, bits, test)
    assert fp_acc > 0.8 and before_loss > fp_loss  # 2 bits hurt the trained model
    control = copy.deepcopy(model)
    history = finetune(model, bits, train, epochs=4, lr=0.02, batch_size=64, seed=0)
    after_loss, after_acc = quantized_loss(model, bits, test)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert after_loss < 0.8 * before_loss and after_acc > before_acc
    # the same fine-tuning without fake quantization does not help the 2-bit model nearly as much
    finetune(control, {}, train, epochs=4, lr=0.02, batch_size=64, seed=0)
    assert after_loss < 0.8 * quantized_loss(control, bits, test)[0]
    assert set(history[0]) == {"epoch", "seconds", "train_loss", "train_acc", "lr"}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_finetune_is_deterministic_and_leaves_no_parametrization():
    train = toy_problem(130, 0)
    base = randomized(SeqNet(), 0).train()
    bits = {"features.0": 3, "features.3": 2, "fc1": 2, "fc2": 32}
    runs = []
    rng_state = torch.random.get_rng_state()
    lines: list[str] = []
    for seed in (7, 7, 8):
        model = copy.deepcopy(base)
        history = finetune(model, bits, train, epochs=2, batch_size=32, seed=seed, progress=lines.append)
        runs.append((snapshot(model), [h["train_loss"] for h in history]))
        assert model.training  # mode restored
        for module in model.modules():
            assert not parametrize.is_parametrized(module)
            assert type(module) in (SeqNet, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Linear)
            assert not module._forward_pre_hooks and not module._forward_hooks
        assert all(isinstance(p, nn.Parameter) for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert len(lines) == 6 and lines[0].startswith("fine-tune epoch 1/2: train loss")
    (first, loss1), (second, loss2), (third, _) = runs
    assert loss1 == loss2
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], third[k]) for k in first)
    # the latent weights are kept (they are not on the 2-bit grid)
    assert not torch.equal(first["fc1.weight"], fake_quantize(first["fc1.weight"], 2))


class ViewNet(SeqNet):
    """SeqNet flattening with ``.view``, as many users' models do: fails in channels-last layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.fc2(F.relu(self.fc1(features.view(features.size(0), -1))))


def test_finetune_runs_a_model_that_views_its_conv_output():
    train = toy_problem(64, 0)
    model = randomized(ViewNet(), 0)
    control = randomized(SeqNet(), 0)  # the same weights, flattened with torch.flatten
    bits = {"features.0": 3, "fc1": 2}
    history = finetune(model, bits, train, epochs=1, batch_size=32, seed=0)
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])
    assert all(p.is_contiguous() for p in model.parameters())
    finetune(control, bits, train, epochs=1, batch_size=32, seed=0)
    after, expected = snapshot(model), snapshot(control)
    assert all(torch.allclose(after[k], expected[k], atol=1e-4) for k in expected)


def test_finetune_passes_gradients_through_the_rounding():
    train = toy_problem(64, 0)
    model = randomized(SeqNet(), 1)
    before = snapshot(model)
    finetune(model, all_bits(model, 1), train, epochs=1, batch_size=64, seed=0, augment=False)
    after = snapshot(model)
    for name in all_bits(model, 1):
        assert not torch.equal(before[f"{name}.weight"], after[f"{name}.weight"]), name


def test_zero_epochs_is_a_no_op_and_bad_settings_are_errors():
    train = toy_problem(16, 0)
    model = randomized(SeqNet(), 0)
    before = snapshot(model)
    assert finetune(model, {"fc1": 2}, train, epochs=0) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ModelError, match="epochs must be >= 0, got -1"):
        finetune(model, {}, train, epochs=-1)
    with pytest.raises(ModelError, match="learning rate must be > 0"):
        finetune(model, {}, train, epochs=1, lr=0.0)
    with pytest.raises(ModelError, match="batch size must be >= 1"):
        finetune(model, {}, train, epochs=1, batch_size=0)
    with pytest.raises(DataError, match="3 inputs, 2 labels"):
        finetune(model, {}, ToySplit(train.x[:3], train.y[:2]), epochs=1)
    with pytest.raises(ModelError, match="'features.1', which is not a Conv2d/Linear"):
        finetune(model, {"features.1": 2}, train, epochs=1)


def test_finetune_cleans_up_after_an_error():
    train = toy_problem(64, 0)
    model = randomized(SeqNet(), 0)

    def stop(line: str) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        finetune(model, {"fc1": 2}, train, epochs=2, batch_size=32, progress=stop)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert isinstance(model.fc1.weight, nn.Parameter) and not model.training


# ---------------------------------------------------------------------------------------------
# ONNX export
# ---------------------------------------------------------------------------------------------


def test_onnx_export_of_the_compressed_model_runs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    case = CASE_BY_NAME["resnet"]
    pruned, plan = compressed(case, seed=4)
    model = quantize_model_weights(pruned, plan.bits).eval()
    path = tmp_path / "model.onnx"
    size = export_onnx(model, path, case.input_shape)
    assert size == path.stat().st_size > 0
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    x = sample_input(case, 2, n=3)
    (got,) = ReferenceEvaluator(proto).run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(ArtifactError, match="is not an existing directory"):
        export_onnx(model, tmp_path / "missing" / "m.onnx", case.input_shape)
