"""Importance methods, layer sensitivity, masking, prune damage, interactions and analyse_model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qubocompress.analysis import analyse_model
from qubocompress.analysis.graph import trace_model
from qubocompress.analysis.backward import backward_statistics
from qubocompress.analysis.importance import IMPORTANCE_METHODS, group_importance
from qubocompress.analysis.interactions import PruneChoices, feeding_pairs, layer_pairs, measure_interactions
from qubocompress.analysis.masking import masked_channels
from qubocompress.analysis.sensitivity import (
    fisher_damage,
    fisher_diagonals,
    fisher_prune_damage,
    hessian_traces,
    layer_damage,
    mean_loss,
    mse_loss_scale,
    prune_damage,
    quant_damage,
    quantized_weights,
    weight_error,
)
from qubocompress.analysis.spec import build_spec, prune_option_counts
from qubocompress.apply.prune import prune_model
from qubocompress.apply.quantize import fake_quantize
from qubocompress.errors import ModelError, ProblemError
from qubocompress.models.zoo import build_model
from qubocompress.problem.plan import Plan


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class DeadChannelNet(nn.Module):
    """conv(1→4) ReLU, residual conv(4→4) + add, global mean, Linear(4→6) ReLU, Linear(6→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.hidden = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv(h) + h)
        return self.head(torch.relu(self.hidden(h.mean((2, 3)))))


def dead_channel_net(dead: int = 2, seed: int = 0) -> nn.Module:
    """DeadChannelNet whose channel ``dead`` of the residual group carries nothing (zero weights, bias)."""
    torch.manual_seed(seed)
    model = DeadChannelNet().eval()
    with torch.no_grad():
        for conv in (model.stem, model.conv):
            conv.weight[dead].zero_()
            conv.bias[dead].zero_()
    return model


def data(n: int = 48, shape=(1, 8, 8), classes: int = 3, seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator, dtype=dtype), torch.randint(
        0, classes, (n,), generator=generator
    )


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


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", IMPORTANCE_METHODS)
def test_every_method_ranks_a_dead_channel_lowest(method):
    model = dead_channel_net(dead=2)
    graph = trace_model(model, (1, 8, 8))
    assert graph.groups[0].producers == ("stem", "conv")
    scores = group_importance(model, graph, method, data=data())
    assert len(scores) == len(graph.groups)
    residual = scores[0]
    assert residual[2] == pytest.approx(0.0, abs=1e-12)
    assert np.argmin(residual) == 2 and np.all(np.delete(residual, 2) > 1e-8)
    assert all(np.all(s >= 0) for s in scores)


@pytest.mark.parametrize("method", ["taylor", "fisher"])
def test_data_driven_importance_is_deterministic_and_needs_data(method):
    model = dead_channel_net()
    graph = trace_model(model, (1, 8, 8))
    before = state_copy(model)
    model.train()
    first = group_importance(model, graph, method, data=data(), batch_size=20)
    again = group_importance(model, graph, method, data=data(), batch_size=7)
    for a, b in zip(first, again):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert model.training  # the mode is restored
    assert all(p.grad is None for p in model.parameters())
    assert_same_state(model, before)
    assert not model.stem._forward_pre_hooks and not model.conv._forward_pre_hooks
    with pytest.raises(ProblemError, match=f"importance '{method}' needs calibration data"):
        group_importance(model, graph, method)


def scale_channel_inputs(model: nn.Module, group, channel: int, factor: float) -> nn.Module:
    """A copy whose consumers read ``channel`` of ``group`` scaled by ``factor``."""
    import copy

    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for name, per_channel in group.consumers:
            weight = scaled.get_submodule(name).weight
            weight[:, channel * per_channel : (channel + 1) * per_channel] *= factor
    return scaled


def test_contributions_are_the_derivative_of_each_samples_loss_under_a_channel_mask():
    """Σ_sites a·∂L_n/∂a equals dL_n/dε when the channel is scaled by (1+ε) at every consumer."""
    model = dead_channel_net(seed=3)
    graph = trace_model(model, (1, 8, 8))
    model.double()
    x, y = data(n=6, dtype=torch.float64)
    contributions = backward_statistics(model, x, y, groups=graph.groups, batch_size=4).contributions
    eps = 1e-5
    for group_index, group in enumerate(graph.groups):
        for channel in (0, group.channels - 1):
            up = scale_channel_inputs(model, group, channel, 1 + eps)
            down = scale_channel_inputs(model, group, channel, 1 - eps)
            with torch.no_grad():
                per_sample = (
                    F.cross_entropy(up(x), y, reduction="none") - F.cross_entropy(down(x), y, reduction="none")
                ) / (2 * eps)
            np.testing.assert_allclose(contributions[group_index][:, channel], per_sample.numpy(), rtol=1e-5, atol=1e-9)
    taylor = group_importance(model, graph, "taylor", data=(x, y))
    fisher = group_importance(model, graph, "fisher", data=(x, y))
    for c, t, f in zip(contributions, taylor, fisher):
        np.testing.assert_allclose(t, np.abs(c.sum(axis=0)) / len(x))
        np.testing.assert_allclose(f, np.square(c).sum(axis=0) / (2 * len(x)))


def test_unknown_importance_is_a_problem_error():
    model = dead_channel_net()
    with pytest.raises(ProblemError, match="unknown importance 'magic'; choose one of l1, taylor, fisher"):
        group_importance(model, trace_model(model, (1, 8, 8)), "magic")


# ---------------------------------------------------------------------------------------------
# layer sensitivity
# ---------------------------------------------------------------------------------------------


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def exact_hessian(model: TinyMLP, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[slice]]:
    """The Hessian of the mean loss w.r.t. (fc1.weight, fc2.weight) flattened, and each layer's slice."""
    names = ["fc1.weight", "fc2.weight"]
    shapes = [model.get_parameter(n).shape for n in names]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = torch.cat([model.get_parameter(n).detach().reshape(-1) for n in names])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        parts = torch.split(vector, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss, flat)
    bounds = np.cumsum([0, *sizes])
    return hessian, [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def test_hutchinson_trace_matches_the_exact_hessian_within_its_error():
    torch.manual_seed(0)
    model = TinyMLP().double().eval()
    x, y = data(n=40, shape=(4,), dtype=torch.float64)
    hessian, slices = exact_hessian(model, x, y)
    samples = 300
    estimate = hessian_traces(model, ["fc1", "fc2"], x, y, samples=samples, seed=1, batch_size=16)
    for name, own in zip(["fc1", "fc2"], slices):
        block = hessian[own, own]
        trace = float(torch.trace(block))
        # variance of one probe v_n·(Hv)_n: off-diagonal pairs inside the block count twice, the
        # cross-layer entries once (Rademacher probes drawn for all layers together)
        others = torch.ones(hessian.shape[0], dtype=torch.bool)
        others[own] = False
        within = float(torch.triu(block, diagonal=1).square().sum()) * 4
        across = float(hessian[own][:, others].square().sum())
        std_error = math.sqrt((within + across) / samples)
        assert std_error < 0.2 * abs(trace)  # the check below is a real one
        assert abs(estimate[name] - trace) < 4 * std_error, (name, estimate[name], trace, std_error)
    assert hessian_traces(model, ["fc1", "fc2"], x, y, samples=3, seed=1) == hessian_traces(
        model, ["fc1", "fc2"], x, y, samples=3, seed=1
    )
    assert hessian_traces(model, ["fc1"], x, y, samples=3, seed=1) != hessian_traces(
        model, ["fc1"], x, y, samples=3, seed=2
    )
    assert all(p.grad is None for p in model.parameters())


def test_hessian_trace_of_frozen_weights_and_bad_sample_count():
    model = TinyMLP().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data(n=8, shape=(4,))
    assert hessian_traces(model, ["fc2"], x, y, samples=2)["fc2"] > 0  # CE is convex in the last layer
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ProblemError, match="at least 1 sample"):
        hessian_traces(model, ["fc2"], x, y, samples=0)


def test_mse_damage_falls_with_bits_and_hessian_scales_it():
    torch.manual_seed(1)
    model = dead_channel_net(seed=1)
    graph = trace_model(model, (1, 8, 8))
    x, y = data()
    names = [layer.name for layer in graph.layers]
    errors = weight_error(model, names, fake_quantize, 8)
    for name, row in errors.items():
        assert row.shape == (8,)
        assert np.all(np.diff(row) <= 1e-12) and row[-1] < row[1] < row[0], name
        weight = model.get_submodule(name).weight.detach()
        assert row[2] == pytest.approx(float((fake_quantize(weight, 3) - weight).square().sum()), rel=1e-6)
    # mse is the weight error in nats: one factor fitted so that, with every layer at 4 bits (or
    # the first bit-width below at which the loss rises), the summed estimate equals the measured
    # loss increase
    mse = layer_damage(model, graph, x, y, fake_quantize, b_max=8, method="mse")
    scale = mse["head"][0] / errors["head"][0]
    for name in names:
        np.testing.assert_allclose(mse[name], scale * errors[name], rtol=1e-9)
    base = mean_loss(model, x, y)
    for bits in (4, 3, 2, 1):
        with quantized_weights(model, dict.fromkeys(names, bits), fake_quantize):
            increase = mean_loss(model, x, y) - base
        if increase > 0:
            break
    assert increase > 0 and scale > 0
    assert sum(mse[name][bits - 1] for name in names) == pytest.approx(increase, rel=1e-6)
    traces = hessian_traces(model, [layer.name for layer in graph.layers], x, y, samples=4, seed=5)
    hessian = layer_damage(model, graph, x, y, fake_quantize, b_max=8, method="hessian", seed=5, hessian_samples=4)
    for name, row in hessian.items():
        count = model.get_submodule(name).weight.numel()
        np.testing.assert_allclose(row, traces[name] / count * errors[name] / 2)
    measured = layer_damage(model, ["head"], x, y, fake_quantize, b_max=4, method="measured")
    np.testing.assert_array_equal(measured["head"], quant_damage(model, ["head"], x, y, fake_quantize, 4)["head"])
    with pytest.raises(ProblemError, match="unknown layer sensitivity 'psychic'"):
        layer_damage(model, graph, x, y, fake_quantize, method="psychic")


def per_sample_squared_gradient_mean(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> dict:
    """``(1/N) Σ_s (∂L_s/∂W)²`` by one plain backward pass per sample (the definition)."""
    weights = [dict(model.named_modules())[name].weight for name in names]
    totals = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    for sample, label in zip(x, y):
        loss = F.cross_entropy(model(sample[None]), label[None])
        for total, grad in zip(totals, torch.autograd.grad(loss, weights)):
            total += grad.double().square()
    return {name: total / len(x) for name, total in zip(names, totals)}


def test_fisher_diagonals_are_the_mean_squared_per_sample_gradient(monkeypatch):
    model = dead_channel_net(seed=3)
    graph = trace_model(model, (1, 8, 8))
    names = [layer.name for layer in graph.layers]
    x, y = data(n=20, seed=3)
    expected = per_sample_squared_gradient_mean(model, names, x, y)
    model.train()
    before = state_copy(model)
    diagonals = fisher_diagonals(model, names, x, y)
    # in eval mode whatever the model's mode, parameters and their .grad untouched
    assert model.training and all(p.grad is None for p in model.parameters())
    assert_same_state(model, before)
    for name in names:
        assert diagonals[name].shape == model.get_submodule(name).weight.shape
        torch.testing.assert_close(diagonals[name], expected[name], rtol=1e-5, atol=1e-12)
    # batches of 8 (an uneven last one), per-sample gradients formed 3 samples at a time (uneven too)
    monkeypatch.setattr(
        "qubocompress.analysis.backward.PER_SAMPLE_GRADIENT_FLOATS",
        3 * max(model.get_submodule(n).weight.numel() for n in names),
    )
    statistics = backward_statistics(model, x, y, groups=graph.groups, layers=names, batch_size=8)
    assert statistics.samples == 20
    for name, mean in statistics.mean_squared_gradients().items():
        torch.testing.assert_close(mean, expected[name], rtol=1e-5, atol=1e-12)
    # a TorchScript model (whose layers cannot be hooked) gives the same, one sample at a time
    scripted = torch.jit.script(TinyMLP().eval())
    reference = per_sample_squared_gradient_mean(scripted, ["fc1", "fc2"], x[:, 0, 0, :4], y)
    looped = fisher_diagonals(scripted, ["fc1", "fc2"], x[:, 0, 0, :4], y)
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(looped[name], reference[name], rtol=1e-6, atol=1e-12)
    assert all(torch.all(d == 0) for d in fisher_diagonals(model, names, x[:0], y[:0]).values())


class ConvZoo(nn.Module):
    """Every Conv2d/Linear geometry the per-sample gradients must get right, and the awkward uses:
    a conv called twice, two convs sharing one weight, an in-place ReLU on a conv's output, a
    Linear over a sequence axis."""

    def __init__(self) -> None:
        super().__init__()
        self.strided = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(4, 4, 3, dilation=2, padding=2, bias=False)
        self.grouped = nn.Conv2d(4, 6, 3, groups=2, padding="same", padding_mode="reflect")
        self.depthwise = nn.Conv2d(6, 6, 3, groups=6, padding=1, padding_mode="circular")
        self.even = nn.Conv2d(6, 4, (2, 3), padding="same")
        self.twice = nn.Conv2d(4, 4, 1)
        self.tied_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.tied_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.tied_b.weight = self.tied_a.weight
        self.tokens = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.strided(x))
        h = nn.functional.relu(self.dilated(h), inplace=True)
        h = torch.tanh(self.depthwise(self.grouped(h)))
        h = torch.tanh(self.even(h))
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        h = torch.tanh(self.tied_b(torch.tanh(self.tied_a(h))))
        sequence = h.flatten(2).transpose(1, 2)  # (N, positions, channels)
        return self.head(torch.tanh(self.tokens(sequence)).mean(dim=1))


def test_fisher_diagonals_read_off_the_layers_match_the_definition_for_every_geometry():
    torch.manual_seed(7)
    model = ConvZoo().double().eval()
    x, y = torch.randn(10, 2, 9, 9, dtype=torch.float64), torch.randint(0, 3, (10,))
    names = ["strided", "dilated", "grouped", "depthwise", "even", "twice", "tied_a", "tied_b", "tokens", "head"]
    expected = per_sample_squared_gradient_mean(model, names, x, y)
    diagonals = backward_statistics(model, x, y, layers=names, batch_size=4).mean_squared_gradients()
    for name in names:
        torch.testing.assert_close(diagonals[name], expected[name], rtol=1e-9, atol=1e-15)
    # one of the tied pair alone: the other's use would be missed, so it is computed sample by sample
    alone = fisher_diagonals(model, ["tied_a", "head"], x, y)
    torch.testing.assert_close(alone["tied_a"], expected["tied_a"], rtol=1e-9, atol=1e-15)


class FrozenFirstLayer(TinyMLP):
    """TinyMLP whose first layer runs without autograd (a frozen feature extractor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            hidden = torch.tanh(self.fc1(x))
        return self.fc2(hidden)


def test_a_layer_run_without_autograd_gets_no_gradient_and_the_rest_theirs():
    torch.manual_seed(8)
    model = FrozenFirstLayer().double().eval()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    diagonals = backward_statistics(model, x, y, layers=["fc1", "fc2"], batch_size=4).mean_squared_gradients()
    assert torch.all(diagonals["fc1"] == 0)
    expected = per_sample_squared_gradient_mean(model, ["fc2"], x, y)
    torch.testing.assert_close(diagonals["fc2"], expected["fc2"], rtol=1e-9, atol=1e-15)


class ScaledConv(nn.Conv2d):
    """A Conv2d subclass whose forward changes what its weight does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, 2 * self.weight.square(), self.bias)


def test_fisher_diagonals_of_a_layer_with_its_own_forward_are_computed_per_sample():
    torch.manual_seed(6)
    model = nn.Sequential(ScaledConv(1, 3, 3), nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).double().eval()
    x, y = torch.randn(7, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (7,))
    expected = per_sample_squared_gradient_mean(model, ["0", "2"], x, y)
    diagonals = fisher_diagonals(model, ["0", "2"], x, y)
    for name in ("0", "2"):
        torch.testing.assert_close(diagonals[name], expected[name], rtol=1e-9, atol=1e-15)


def test_fisher_damage_weights_each_rounding_error_by_its_fisher_entry():
    model = dead_channel_net(seed=4)
    graph = trace_model(model, (1, 8, 8))
    names = [layer.name for layer in graph.layers]
    x, y = data(n=16, seed=4)
    diagonals = fisher_diagonals(model, names, x, y)
    damage = layer_damage(model, graph, x, y, fake_quantize, b_max=6, method="fisher")
    np.testing.assert_array_equal(damage["head"], fisher_damage(model, diagonals, fake_quantize, 6)["head"])
    for name in names:
        weight = model.get_submodule(name).weight.detach()
        expected = [
            float((diagonals[name] * (fake_quantize(weight, b) - weight).double().square()).sum()) / 2
            for b in range(1, 7)
        ]
        np.testing.assert_allclose(damage[name], expected, rtol=1e-12)
        assert damage[name][0] > damage[name][3] > 0
    exact = fisher_damage(model, diagonals, lambda w, bits: w.clone(), 3)
    assert all(np.all(row == 0) for row in exact.values())


def test_fisher_prune_damage_is_the_second_order_term_of_removing_the_channels_together():
    rng = np.random.default_rng(0)
    contributions = rng.normal(size=(50, 4))
    contributions[:, 2] = 0.0  # a channel that nothing depends on
    importance = np.array([0.3, 0.1, 0.0, 0.2])  # prune order: 2, 1, 3, 0
    damage = fisher_prune_damage(contributions, importance, [0, 1, 2, 3])
    assert damage[0] == 0.0 and damage[1] == 0.0  # nothing pruned; then only the dead channel
    for count, chosen in ((2, [2, 1]), (3, [2, 1, 3])):
        # cross-channel terms count: the square of the summed contributions, not the sum of squares
        assert damage[count] == pytest.approx(np.mean(contributions[:, chosen].sum(axis=1) ** 2) / 2)
    assert damage[3] != pytest.approx(np.mean((contributions[:, [2, 1, 3]] ** 2).sum(axis=1)) / 2)


def test_fisher_analysis_measures_no_loss(monkeypatch):
    """The one-pass route: with ``fisher``, neither the layers' nor the prune options' damage is a
    measured loss; the prune damages come from the same contributions as the importance."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a loss was measured")

    monkeypatch.setattr("qubocompress.analysis.analyse.mean_loss", forbidden)
    monkeypatch.setattr("qubocompress.analysis.analyse.prune_damage", forbidden)
    monkeypatch.setattr("qubocompress.analysis.sensitivity.mean_loss", forbidden)
    model = dead_channel_net(seed=5)
    x, y = data(n=24, seed=5)
    graph, spec = analyse_model(
        model,
        (x, y),
        (1, 8, 8),
        fake_quantize,
        "toy",
        importance="taylor",
        layer_sensitivity="fisher",
        b_max=4,
        bit_levels=2,
        prune_options=(0.0, 0.25, 0.5),
    )
    contributions = backward_statistics(model, x, y, groups=graph.groups).contributions
    for group, columns in zip(spec.groups, contributions):
        np.testing.assert_allclose(
            group.prune_damage, fisher_prune_damage(columns, group.importance, group.prune_options), rtol=1e-12
        )
        assert group.prune_damage[0] == 0 and np.all(group.prune_damage >= 0)
    assert any(group.prune_damage[-1] > 0 for group in spec.groups)


def test_weight_error_is_zero_for_an_exact_quantizer():
    model = dead_channel_net()
    errors = weight_error(model, ["stem", "head"], lambda w, bits: w.clone(), b_max=3)
    assert all(np.all(row == 0) for row in errors.values())
    x, y = data(n=8)
    assert mse_loss_scale(model, ["stem", "head"], x, y, lambda w, bits: w.clone(), errors, 3) == 0.0


def test_quant_damage_restores_weights_after_a_failing_quantizer():
    model = dead_channel_net()
    before = state_copy(model)
    x, y = data(n=8)

    def failing(w: torch.Tensor, bits: int) -> torch.Tensor:
        if bits == 2:
            raise RuntimeError("boom")
        return torch.zeros_like(w)

    with pytest.raises(RuntimeError, match="boom"):
        quant_damage(model, ["conv"], x, y, failing, b_max=3)
    assert_same_state(model, before)


# ---------------------------------------------------------------------------------------------
# masking and prune damage
# ---------------------------------------------------------------------------------------------


def random_channels(graph, rng: np.random.Generator) -> dict[int, list[int]]:
    chosen = {}
    for index, group in enumerate(graph.groups):
        count = int(rng.integers(0, group.channels))
        chosen[index] = sorted(int(c) for c in rng.choice(group.channels, size=count, replace=False))
    return chosen


@pytest.mark.parametrize("name", ["resnet20", "mobilenet"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_channels_compute_what_physical_pruning_computes(name, seed):
    model = randomized(build_model(name, num_classes=5, in_channels=1, input_size=16, width=4), seed)
    graph = trace_model(model, (1, 16, 16))
    assert graph.groups and (name != "mobilenet" or any(g.depthwise for g in graph.groups))
    assert name != "resnet20" or any(len(g.producers) > 1 for g in graph.groups)
    chosen = random_channels(graph, np.random.default_rng(seed))
    plan = Plan(pruned={graph.groups[i].name: tuple(c) for i, c in chosen.items()}, bits={})
    pruned = prune_model(model, graph, plan).eval()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    before = state_copy(model)
    with torch.no_grad():
        full = model(x)
        with masked_channels(model, graph, chosen) as masked:
            out_masked = masked(x)
        out_pruned = pruned(x)
    assert out_pruned.shape == full.shape
    torch.testing.assert_close(out_masked, out_pruned, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_masked, full, atol=1e-4)
    assert_same_state(model, before)


def test_masked_channels_restore_on_error_and_reject_bad_channels():
    model = dead_channel_net()
    graph = trace_model(model, (1, 8, 8))
    before = state_copy(model)
    with pytest.raises(KeyError):
        with masked_channels(model, graph, {0: [0, 1], 1: [3]}):
            assert float(model.conv.weight.detach()[:, 0].abs().sum()) == 0.0
            raise KeyError("inside")
    assert_same_state(model, before)
    with pytest.raises(ModelError, match=r"cannot mask channels \[6\] of group 'hidden', which has 6"):
        with masked_channels(model, graph, {0: [1], 1: [6]}):
            pass
    assert_same_state(model, before)
    with pytest.raises(ModelError, match="no channel group 7"):
        with masked_channels(model, graph, {7: [0]}):
            pass


def test_prune_damage_is_zero_for_no_pruning_and_matches_physical_pruning():
    model = randomized(build_model("vgg", num_classes=3, in_channels=1, input_size=8, width=4), 4)
    graph = trace_model(model, (1, 8, 8))
    x, y = data(n=40)
    before = state_copy(model)
    base = mean_loss(model, x, y)
    for index, group in enumerate(graph.groups[:3]):
        importance = np.random.default_rng(index).random(group.channels)
        options = (0, 1, group.channels // 2)
        damage = prune_damage(model, graph, index, options, x, y, importance)
        assert damage[0] == 0.0
        order = np.argsort(importance, kind="stable")
        for count, value in zip(options[1:], damage[1:]):
            plan = Plan(pruned={group.name: tuple(int(c) for c in order[:count])}, bits={})
            assert value == pytest.approx(mean_loss(prune_model(model, graph, plan), x, y) - base, abs=1e-5)
        np.testing.assert_allclose(damage, prune_damage(model, graph, index, options, x, y, importance, base_loss=base))
    assert_same_state(model, before)
    with pytest.raises(ProblemError, match=r"prune options \[0, 4\] of group 'features.0' must lie in \[0, 3\]"):
        prune_damage(model, graph, 0, (0, 4), x, y, np.ones(4))


# ---------------------------------------------------------------------------------------------
# interactions
# ---------------------------------------------------------------------------------------------


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 6, bias=False)
        self.second = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def zero_at_low_bits(w: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.zeros_like(w) if bits <= 2 else w.clone()


def test_chained_layers_that_each_erase_the_output_interact_negatively():
    """Zeroing either layer gives uniform logits (loss ln 3); zeroing both cannot do worse, so
    the interaction at (2, 2) bits is loss(fp32) − ln 3 < 0 and every other entry is 0."""
    torch.manual_seed(0)
    model = TwoLinear().eval()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    graph = trace_model(model, (4,))
    terms, cost = measure_interactions(model, graph, x, y, zero_at_low_bits, b_max=4, bits=(3, 2))
    assert len(terms) == 1
    (term,) = terms
    assert (term.first, term.second, term.table.shape) == ("bits:first", "bits:second", (4, 4))
    expected = mean_loss(model, x, y) - math.log(3)
    assert expected < 0
    assert term.table[1, 1] == pytest.approx(expected, abs=1e-6)
    off = term.table.copy()
    off[1, 1] = 0.0
    np.testing.assert_allclose(off, 0.0, atol=1e-6)
    assert cost.pairs == 1 and cost.skipped_pairs == 0
    assert cost.passes == 1 + 2 * 2 + 4  # fp32, the two singles at 2 and 3 bits, 2×2 pairs
    again, _ = measure_interactions(model, graph, x, y, zero_at_low_bits, b_max=4, bits=(2, 3))
    np.testing.assert_array_equal(again[0].table, term.table)


def test_interaction_budget_takes_nearest_pairs_first_and_reuses_singles():
    model = randomized(build_model("lenet5", num_classes=3, in_channels=1, input_size=12), 0)
    graph = trace_model(model, (1, 12, 12))
    names = [layer.name for layer in graph.layers]
    assert layer_pairs(names)[: len(names) - 1] == list(zip(names, names[1:]))
    x, y = data(n=16, shape=(1, 12, 12))
    singles = quant_damage(model, names, x, y, fake_quantize, b_max=4)
    terms, cost = measure_interactions(
        model, graph, x, y, fake_quantize, b_max=4, bits=(2, 3), max_passes=1 + 3 * 4, quant_singles=singles
    )
    assert (cost.passes, cost.pairs) == (13, 3)
    assert cost.skipped_pairs == len(layer_pairs(names)) - 3
    assert {(t.first, t.second) for t in terms} <= {(f"bits:{a}", f"bits:{b}") for a, b in zip(names, names[1:])}
    for term in terms:
        assert np.all(term.table[[0, 3], :] == 0) and np.all(term.table[:, [0, 3]] == 0)
    with pytest.raises(ProblemError, match="interaction bit-widths"):
        measure_interactions(model, graph, x, y, fake_quantize, b_max=4, bits=(5,))


def test_prune_pairs_between_feeding_groups_match_physical_pruning():
    model = randomized(build_model("vgg", num_classes=3, in_channels=1, input_size=8, width=2), 1)
    graph = trace_model(model, (1, 8, 8))
    assert feeding_pairs(graph)[0] == (0, 1)
    x, y = data(n=24)
    importance = group_importance(model, graph, "l1")
    options = [prune_option_counts(g.channels, (0.0, 0.25, 0.5), 0.5) for g in graph.groups]
    choices = PruneChoices(importance, options)
    names = [g.name for g in graph.groups]
    base = mean_loss(model, x, y)

    def pruned_loss(pruned: dict[str, int]) -> float:
        plan = Plan(
            pruned={
                n: tuple(int(c) for c in np.argsort(importance[names.index(n)], kind="stable")[:k])
                for n, k in pruned.items()
            },
            bits={},
        )
        return mean_loss(prune_model(model, graph, plan), x, y) - base

    terms, cost = measure_interactions(
        model, graph, x, y, fake_quantize, b_max=2, bits=(2,), max_passes=10_000, prune=choices
    )
    assert cost.skipped_pairs == 0
    assert {(t.first, t.second) for t in terms if t.first.startswith("prune:")} <= {
        (f"prune:{names[g]}", f"prune:{names[h]}") for g, h in feeding_pairs(graph)
    }
    table = next(t for t in terms if (t.first, t.second) == (f"prune:{names[0]}", f"prune:{names[1]}")).table
    assert table.shape == (len(options[0]), len(options[1]))
    assert np.all(table[0] == 0) and np.all(table[:, 0] == 0)
    a, b = options[0][-1], options[1][-1]
    expected = pruned_loss({names[0]: a, names[1]: b}) - pruned_loss({names[0]: a}) - pruned_loss({names[1]: b})
    assert abs(expected) > 1e-4 and table[-1, -1] == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# spec and analyse_model
# ---------------------------------------------------------------------------------------------


def test_prune_option_counts_round_dedupe_and_cap():
    assert prune_option_counts(16, (0, 0.125, 0.25, 0.375, 0.5), 0.5) == (0, 2, 4, 6, 8)
    assert prune_option_counts(5, (0.125, 0.25, 0.375, 0.5), 0.5) == (0, 1, 2)
    assert prune_option_counts(2, (0.5,), 0.9) == (0, 1)
    with pytest.raises(ProblemError, match="fractions must lie in"):
        prune_option_counts(8, (1.0,), 0.5)


def test_build_spec_carries_prune_options_damage_and_interactions():
    model = dead_channel_net()
    graph = trace_model(model, (1, 8, 8))
    damage = {layer.name: np.linspace(1.0, 0.0, 8) for layer in graph.layers}
    options = [(0, 1, 2) for _ in graph.groups]
    damages = [np.array([0.0, 0.1, 0.3]) for _ in graph.groups]
    spec = build_spec(graph, group_importance(model, graph), damage, "toy", prune_options=options, prune_damage=damages)
    assert spec.groups[0].prune_options == (0, 1, 2)
    np.testing.assert_array_equal(spec.groups[1].prune_damage, [0.0, 0.1, 0.3])
    with pytest.raises(ProblemError, match="one entry per channel group"):
        build_spec(graph, group_importance(model, graph), damage, "toy", prune_options=options[:1])


@pytest.mark.parametrize(
    "importance, sensitivity", [("l1", "measured"), ("taylor", "mse"), ("fisher", "hessian"), ("l1", "fisher")]
)
def test_analyse_model_builds_a_valid_spec(importance, sensitivity):
    model = dead_channel_net()
    x, y = data(n=24)
    lines = []
    graph, spec = analyse_model(
        model,
        (x, y),
        (1, 8, 8),
        fake_quantize,
        "toy",
        importance=importance,
        layer_sensitivity=sensitivity,
        b_max=4,
        bit_levels=2,
        prune_options=(0.0, 0.25, 0.5),
        interactions=True,
        interaction_passes=40,
        hessian_samples=2,
        log=lines.append,
    )
    assert [layer.name for layer in spec.layers] == [layer.name for layer in graph.layers]
    assert [g.prune_options for g in spec.groups] == [(0, 1, 2), (0, 2, 3)]
    assert all(g.prune_damage[0] == 0 for g in spec.groups)
    assert all(layer.quant_damage.shape == (4,) for layer in spec.layers)
    assert spec.interactions and len(lines) == 1 and "forward passes" in lines[0]
    again = analyse_model(
        model,
        (x, y),
        (1, 8, 8),
        fake_quantize,
        "toy",
        importance=importance,
        layer_sensitivity=sensitivity,
        b_max=4,
        bit_levels=2,
        prune_options=(0.0, 0.25, 0.5),
        interactions=True,
        interaction_passes=40,
        hessian_samples=2,
    )[1]
    assert again.to_json() == spec.to_json()
