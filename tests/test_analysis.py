"""Tracing channel groups, importance, damage and the spec built from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qubocompress.analysis.graph import trace_model
from qubocompress.analysis.importance import filter_l1, group_importance
from qubocompress.analysis.sensitivity import mean_loss, quant_damage
from qubocompress.analysis.spec import build_spec
from qubocompress.apply.prune import prune_model
from qubocompress.errors import ModelError, ProblemError
from qubocompress.problem.plan import Plan


class Sequential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 7 * 7, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.conv(x) + x)
        x = self.pw(self.dw(x))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(self.c(y).mean((2, 3)))


def test_sequential_groups_follow_bn_pool_and_flatten() -> None:
    graph = trace_model(Sequential(), (1, 28, 28))
    assert [layer.name for layer in graph.layers] == ["features.0", "features.4", "classifier.1", "classifier.3"]
    names = [g.name for g in graph.groups]
    assert names == ["features.0", "features.4", "classifier.1"]
    first, second, hidden = graph.groups
    assert first.norms == ("features.1",) and first.consumers == (("features.4", 1),)
    assert second.consumers == (("classifier.1", 49),)
    fc = graph.layer("classifier.1")
    assert (fc.in_channels, fc.in_features_per_channel, fc.in_group) == (6, 49, 1)
    assert graph.layer("classifier.3").out_group is None
    assert graph.layer("features.0").out_positions == 28 * 28
    assert "classifier.3" in graph.frozen_reasons


def test_residual_add_and_depthwise_join_one_group() -> None:
    graph = trace_model(Residual(), (1, 12, 12))
    group = graph.groups[0]
    assert group.producers == ("stem", "conv") and group.depthwise == ("dw",)
    assert set(group.consumers) == {("conv", 1), ("pw", 1)}
    assert graph.layer("dw").out_group == graph.layer("dw").in_group == 0
    assert graph.layer("fc").in_group == 1


def test_concat_keeps_its_inputs_groups_at_their_offsets() -> None:
    graph = trace_model(Concat(), (1, 8, 8))
    assert [g.name for g in graph.groups] == ["a", "b", "c"]
    assert graph.groups[1].offset("c") == 4
    assert (graph.layer("c").in_group, graph.layer("c").extra_in_groups) == (0, (1,))
    assert len(graph.layers) == 4


class Viewing(nn.Module):
    """The tutorial idiom: flatten by ``view``, with the sizes from the tensor or written out."""

    def __init__(self, fixed: bool, method: str = "view") -> None:
        super().__init__()
        self.fixed, self.method = fixed, method
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.a(x)))
        flat = getattr(x, self.method)(-1, 6 * 4 * 4) if self.fixed else getattr(x, self.method)(x.size(0), -1)
        return self.fc(flat)


@pytest.mark.parametrize("method", ["view", "reshape"])
def test_a_reshape_to_a_fixed_size_freezes_its_channels(method: str) -> None:
    x = torch.randn(3, 1, 8, 8)
    follows, fixed = trace_model(Viewing(False, method), (1, 8, 8)), trace_model(Viewing(True, method), (1, 8, 8))
    assert [g.name for g in follows.groups] == ["a", "b"]
    assert follows.layer("fc").in_features_per_channel == 16
    assert [g.name for g in fixed.groups] == ["a"]  # pruning b would break x.view(-1, 96)
    assert "fixed size" in fixed.frozen_reasons["b"]
    model = Viewing(True, method).eval()
    pruned = prune_model(model, fixed, Plan(pruned={"a": (0, 2)}, bits={"a": 8, "b": 8, "fc": 8}))
    assert pruned(x).shape == (3, 3)


def test_a_model_fx_cannot_trace_gets_bits_only() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.conv(x)
            return x

    graph = trace_model(Branchy(), (1, 8, 8))
    assert [layer.name for layer in graph.layers] == ["conv"] and graph.groups == []
    assert graph.frozen_reasons["conv"].startswith("torch.fx cannot trace Branchy's forward (TraceError: ")
    assert graph.frozen_reasons["conv"].endswith("), so only bits are chosen")


def test_wrong_input_shape_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"does not run on inputs of shape \(3, 28, 28\)"):
        trace_model(Sequential(), (3, 28, 28))


def test_importance_sums_tied_filters() -> None:
    model = Residual()
    graph = trace_model(model, (1, 12, 12))
    scores = group_importance(model, graph)
    expected = filter_l1(model.stem.weight) + filter_l1(model.conv.weight) + filter_l1(model.dw.weight)
    np.testing.assert_allclose(scores[0], expected)
    with pytest.raises(ProblemError, match="unknown importance 'magic'"):
        group_importance(model, graph, "magic")


def test_quant_damage_measures_only_the_quantized_layer_and_restores_weights() -> None:
    torch.manual_seed(0)
    model = Sequential().eval()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 3, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def zero_at_one_bit(w: torch.Tensor, bits: int) -> torch.Tensor:
        return torch.zeros_like(w) if bits == 1 else w

    damage = quant_damage(model, ["features.4", "classifier.3"], x, y, zero_at_one_bit, b_max=4)
    assert set(damage) == {"features.4", "classifier.3"}
    assert damage["features.4"].shape == (4,)
    np.testing.assert_allclose(damage["features.4"][1:], 0.0, atol=1e-9)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    base = mean_loss(model, x, y)
    with torch.no_grad():
        model.classifier[3].weight.zero_()
    assert damage["classifier.3"][0] == pytest.approx(mean_loss(model, x, y) - base, rel=1e-6)


def test_spec_counts_the_model_weights_and_pruning_shrinks_consumers() -> None:
    model = Sequential()
    graph = trace_model(model, (1, 28, 28))
    damage = {layer.name: np.linspace(1.0, 0.0, 8) for layer in graph.layers}
    spec = build_spec(graph, group_importance(model, graph), damage, "seq", max_prune_fraction=0.5)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert spec.fp32_weight_bits() == 32 * weights
    assert [g.max_pruned for g in spec.groups] == [2, 3, 6]
    plan = Plan(pruned={"features.4": (0, 1)}, bits={layer.name: 8 for layer in spec.layers})
    counted = plan.layer_weights(spec)
    assert counted["features.4"] == 4 * 4 * 9
    assert counted["classifier.1"] == 12 * 4 * 49
    with pytest.raises(ProblemError, match="max prune fraction"):
        build_spec(graph, group_importance(model, graph), damage, "seq", max_prune_fraction=1.0)


def test_a_layer_whose_weight_is_parametrized_is_kept_as_it_is_and_listed():
    """weight_norm computes the weight on every call: quantizing or reading per-sample gradients of
    a stored tensor would be wrong, so the layer is left alone, said why, and the rest analysed."""
    from torch.nn.utils.parametrizations import weight_norm

    from qubocompress.analysis import analyse_model
    from qubocompress.apply.quantize import fake_quantize

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        weight_norm(nn.Conv2d(4, 4, 3, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    graph, spec = analyse_model(
        model,
        (x, y),
        (1, 8, 8),
        fake_quantize,
        "toy",
        layer_sensitivity="fisher",
        b_max=4,
        bit_levels=2,
        prune_options=(0.0, 0.5),
    )
    assert [layer.name for layer in spec.layers] == ["0", "5"]
    assert "parametrization" in graph.frozen_reasons["2"]
    assert all(row[0] > 0 for row in (layer.quant_damage for layer in spec.layers))
