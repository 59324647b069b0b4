"""Pruning through concatenations (DenseNet/Inception), squeeze-excitation products and grouped
convolutions: the channel groups the tracer finds, the pruned model computing what the masked
reference computes, the size model matching the pruned tensors, and one compress run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import qubocompress as qc
from qubocompress.analysis.backward import backward_statistics
from qubocompress.analysis.graph import ModelGraph, trace_model
from qubocompress.analysis.masking import feature_indices
from qubocompress.analysis.spec import DEFAULT_PRUNE_FRACTIONS, build_spec, prune_option_counts
from qubocompress.apply.prune import mask_model, prune_model
from qubocompress.data.datasets import synthetic_dataset
from qubocompress.problem.choices import ChoiceModel, plan_cost
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import CompressionSpec
from qubocompress.search import DecisionSpace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Dense(nn.Module):
    """A DenseNet-style block: nested concatenations, a norm over a concatenation, an input of a
    concatenation also read directly, and a classifier over a flattened concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(4)
        self.l1 = nn.Conv2d(4, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(7)
        self.l2 = nn.Conv2d(7, 3, 3, padding=1)
        self.trans = nn.Conv2d(10, 6, 1)
        self.fc = nn.Linear((6 + 3) * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = torch.relu(self.bn0(self.stem(x)))
        x1 = torch.relu(self.l1(x0))
        c1 = torch.cat([x0, x1], dim=1)
        x2 = self.l2(torch.relu(self.bn1(c1)))
        y = self.trans(torch.cat((c1, x2), 1))
        z = torch.cat([F.adaptive_avg_pool2d(y, 2), F.adaptive_avg_pool2d(x2, 2)], dim=1)
        return self.fc(torch.flatten(z, 1))


class SqueezeExcite(nn.Module):
    """Two SE gates: torchvision's (1x1 convs) and the Linear one reshaped by ``view(b, c, 1, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.mid = nn.Conv2d(8, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 3)
        self.fc2 = nn.Linear(3, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1)))))
        x = torch.relu(self.mid(x * gate))
        b, c = x.shape[:2]
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))).view(b, c, 1, 1)
        return self.head((x * s).mean((2, 3)))


class NeXt(nn.Module):
    """A ResNeXt-style bottleneck: 1x1, grouped 3x3 (groups=2), 1x1 and a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.reduce = nn.Conv2d(6, 4, 1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.expand = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        h = torch.relu(self.grouped(torch.relu(self.reduce(x))))
        return self.fc(torch.relu(self.expand(h) + x).mean((2, 3)))


class Mixed(nn.Module):
    """The three combined: an SE-gated branch and a grouped-conv branch concatenated with the
    network input, a norm over that, and a residual add of two concatenations of the same sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.squeeze = nn.Conv2d(4, 2, 1)
        self.excite = nn.Conv2d(2, 4, 1)
        self.reduce = nn.Conv2d(1, 4, 1)
        self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(9)
        self.p, self.p2 = nn.Conv2d(9, 6, 1), nn.Conv2d(9, 6, 3, padding=1)
        self.out = nn.Conv2d(10, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn_a(self.a(x)))
        a = a * torch.sigmoid(self.excite(torch.relu(self.squeeze(a.mean((2, 3), keepdim=True)))))
        g = torch.relu(self.g(torch.relu(self.reduce(x))))
        d = torch.relu(self.bn(torch.cat([a, g, x], 1)))
        f = torch.cat([self.p(d), a], 1) + torch.cat([self.p2(d), a], 1)
        return self.fc(torch.relu(self.out(f)).mean((2, 3)))


MODELS = {"dense": Dense, "se": SqueezeExcite, "next": NeXt, "mixed": Mixed}
SHAPE = (1, 8, 8)


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with random weights and BatchNorm statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0.0, 0.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.3, generator=generator)
                module.running_mean.normal_(0.0, 0.3, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def size_model(graph: ModelGraph) -> CompressionSpec:
    return build_spec(graph, [np.ones(g.channels) for g in graph.groups], {}, "test")


def random_plan(graph: ModelGraph, rng: np.random.Generator) -> Plan:
    pruned = {
        g.name: tuple(int(i) for i in rng.choice(g.channels, size=int(rng.integers(1, g.channels)), replace=False))
        for g in graph.groups
    }
    return Plan(pruned=pruned, bits={layer.name: 8 for layer in graph.layers})


def group_of(graph: ModelGraph, name: str) -> int:
    return next(n for n, g in enumerate(graph.groups) if name in g.producers)


def test_a_concatenation_keeps_each_input_group_at_its_offset() -> None:
    graph = trace_model(Dense(), SHAPE)
    assert [g.name for g in graph.groups] == ["stem", "l1", "l2", "trans"]
    stem, l1, l2, trans = graph.groups
    assert stem.norms == ("bn0", "bn1") and l1.norms == ("bn1",) and stem.offset("bn1") == 0 and l1.offset("bn1") == 4
    assert [c for c, _ in stem.consumers] == ["l1", "l2", "trans"]
    assert (l1.offset("l2"), l1.offset("trans"), l2.offset("trans"), l2.offset("fc")) == (4, 4, 7, 6)
    assert dict(l2.consumers) == {"trans": 1, "fc": 4} and trans.consumers == (("fc", 4),)
    assert (graph.layer("trans").in_group, graph.layer("trans").extra_in_groups) == (0, (1, 2))
    assert (graph.layer("fc").in_group, graph.layer("fc").extra_in_groups) == (3, (2,))
    assert "fc" in graph.frozen_reasons and len(graph.frozen_reasons) == 1  # only the classifier's logits


def test_squeeze_excitation_ties_the_gate_to_the_gated_channels() -> None:
    graph = trace_model(SqueezeExcite(), SHAPE)
    conv, mid = graph.groups[group_of(graph, "conv")], graph.groups[group_of(graph, "mid")]
    assert conv.producers == ("conv", "excite") and {c for c, _ in conv.consumers} == {"squeeze", "mid"}
    assert mid.producers == ("mid", "fc2") and {c for c, _ in mid.consumers} == {"fc1", "head"}
    assert group_of(graph, "squeeze") != group_of(graph, "conv")


def test_grouped_convolutions_freeze_their_channels_with_a_reason() -> None:
    graph = trace_model(NeXt(), SHAPE)
    assert {"reduce", "grouped"} <= set(graph.frozen_reasons)
    assert graph.frozen_reasons["reduce"] == (
        "feeds grouped convolution grouped (groups=2), whose channels qubocompress cannot prune "
        "(each of its groups must keep as many channels as the others)"
    )
    assert graph.frozen_reasons["grouped"] == "grouped convolution grouped (groups=2) cannot lose channels"
    assert [g.producers for g in graph.groups] == [("stem", "expand")]
    assert graph.layer("grouped").in_group is None and graph.layer("grouped").groups == 2


class Odd(nn.Module):
    """Concatenations qubocompress does not follow: one group twice into one consumer, along the
    height, of flattened features, gated by one conv's channels, and into a depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.pair, self.wide = nn.Conv2d(8, 2, 1), nn.Conv2d(4, 2, 1)
        self.c, self.gate = nn.Conv2d(1, 2, 1), nn.Conv2d(4, 6, 1)
        self.d, self.dw = nn.Conv2d(1, 3, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(2 * 16 * 8 + 2 + 6 + 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        pair = self.pair(torch.cat([a, a], 1)).mean((2, 3))
        rows = torch.cat([b, b], dim=2)
        gated = torch.cat([b, self.c(x)], 1) * self.gate(b).sigmoid()  # one gate over two groups
        carried = self.dw(torch.cat([self.d(x), x], 1)).mean((2, 3))
        return self.fc(torch.cat([self.wide(rows).flatten(1), pair, gated.mean((2, 3)), carried], 1))


def test_what_a_concatenation_cannot_carry_stays_frozen_with_its_reason() -> None:
    graph = trace_model(Odd(), SHAPE)
    assert graph.groups == []
    reasons = graph.frozen_reasons
    assert reasons["a"] == "reaches pair twice through a concatenation"
    assert reasons["b"] == "used by cat at cat_1 (not along the channel dim), which qubocompress cannot follow"
    assert reasons["wide"] == "used by cat at cat_4 (of flattened features), which qubocompress cannot follow"
    assert reasons["c"] == reasons["gate"] == "mul at mul mixes channels qubocompress cannot follow"
    assert reasons["d"] == "feeds depthwise dw after a concatenation"


def test_the_mixed_model_prunes_through_all_three() -> None:
    graph = trace_model(Mixed(), SHAPE)
    a = graph.groups[group_of(graph, "a")]
    assert a.producers == ("a", "excite") and a.norms == ("bn_a", "bn") and a.offset("out") == 6
    assert graph.groups[group_of(graph, "p")].producers == ("p", "p2")
    assert (graph.layer("out").in_group, graph.layer("out").extra_in_groups) == (group_of(graph, "p"), (0,))
    assert {"reduce", "g"} <= set(graph.frozen_reasons)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_pruned_model_computes_the_masked_model_and_is_as_small_as_planned(name: str, seed: int) -> None:
    model = randomized(MODELS[name](), seed)
    graph = trace_model(model, SHAPE)
    plan = random_plan(graph, np.random.default_rng(seed))
    pruned, masked = prune_model(model, graph, plan).eval(), mask_model(model, graph, plan).eval()
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out, reference, full = pruned(x), masked(x), model(x)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference, full, atol=1e-4)  # the plan really removed something
    expected = plan.layer_weights(size_model(graph))
    modules = dict(pruned.named_modules())
    assert {n: modules[n].weight.numel() for n in expected} == expected
    assert sum(expected.values()) < sum(layer.weight.numel() for layer in model.modules() if hasattr(layer, "groups"))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_a_norm_and_a_consumer_after_a_concatenation_lose_each_group_at_its_offset() -> None:
    model = randomized(Dense(), 0)
    graph = trace_model(model, SHAPE)
    pruned = prune_model(model, graph, Plan(pruned={"stem": (1,), "l1": (0, 2), "l2": (2,)}, bits={}))
    assert torch.equal(pruned.bn1.running_mean, model.bn1.running_mean[[0, 2, 3, 5]])
    assert torch.equal(pruned.trans.weight, model.trans.weight[:, [0, 2, 3, 5, 7, 8]])
    columns = [c * 4 + k for c in [*range(6), 6, 7] for k in range(4)]
    assert torch.equal(pruned.fc.weight, model.fc.weight[:, columns])
    assert (pruned.l2.in_channels, pruned.trans.in_channels, pruned.fc.in_features) == (4, 6, 32)


@pytest.mark.parametrize("metric", ["bits", "bops"])
def test_every_cost_model_counts_a_consumer_of_several_groups(metric: str) -> None:
    """The option grid's cells, the searches' genomes and the plan agree on a layer reading a
    concatenation, and all three on the weights of the pruned model."""
    model = randomized(Dense(), 0)
    graph = trace_model(model, SHAPE)
    options = [prune_option_counts(g.channels, DEFAULT_PRUNE_FRACTIONS, 0.5) for g in graph.groups]
    spec = build_spec(
        graph,
        [np.arange(g.channels, dtype=float) for g in graph.groups],
        {layer.name: np.linspace(1, 0, 8) for layer in graph.layers},
        "dense",
        prune_options=options,
        prune_damage=[np.zeros(len(o)) for o in options],
    )
    assert [layer.in_groups for layer in spec.layers] == [(), (0,), (0, 1), (0, 1, 2), (3, 2)]
    read_back = CompressionSpec.from_json(spec.to_json())
    assert [layer.in_groups for layer in read_back.layers] == [layer.in_groups for layer in spec.layers]
    grid, space = ChoiceModel(spec, (2, 4, 8), metric), DecisionSpace(spec, 2.0, metric, (2, 4, 8))
    rng = np.random.default_rng(0)
    for _ in range(20):
        index = np.array([rng.integers(len(c.options)) for c in grid.choices])
        plan = grid.plan_of(index)
        assert space.decode(index) == plan  # the same layout: groups' options, then layers' bits
        assert int(grid.costs(index)[0]) == plan_cost(spec, plan, metric) == space.cost(index)
        pruned = dict(prune_model(model, graph, plan).named_modules())
        assert plan.layer_weights(spec) == {layer.name: pruned[layer.name].weight.numel() for layer in spec.layers}


def test_contributions_are_read_at_each_group_offset_of_a_consumer() -> None:
    """Σ a·∂L/∂a of a channel of a concatenated group is d/dt of the loss with the channel scaled by
    t at every consumer's input (at t = 1): checked against a central difference, in float64."""
    graph = trace_model(Dense(), SHAPE)
    model = randomized(Dense(), 3).double()
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    contributions = backward_statistics(model, x, y, groups=graph.groups).contributions

    def loss(group_index: int, channel: int, scale: float) -> float:
        group, edited = graph.groups[group_index], randomized(Dense(), 3).double()
        with torch.no_grad():
            for name, per_channel in group.consumers:
                weight = edited.get_submodule(name).weight
                weight[:, feature_indices(torch.tensor([channel]), per_channel, group.offset(name))] *= scale
            return float(F.cross_entropy(edited(x), y, reduction="sum"))

    for index in (group_of(graph, "l1"), group_of(graph, "l2")):
        for channel in range(graph.groups[index].channels):
            slope = (loss(index, channel, 1 + 1e-6) - loss(index, channel, 1 - 1e-6)) / 2e-6
            assert contributions[index][:, channel].sum() == pytest.approx(slope, rel=1e-5, abs=1e-7)


class DenseNet(nn.Module):
    """A tiny trainable DenseNet-style classifier with a grouped conv in its head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.grow = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.trans = nn.Conv2d(16, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.bn(torch.cat([x, torch.relu(self.grow(x))], 1)))
        x = F.max_pool2d(torch.relu(self.trans(x)), 2)
        return self.head(torch.relu(self.grouped(x)).mean((2, 3)))


@pytest.mark.slow
def test_compress_prunes_through_a_concatenation_and_exports_the_pruned_model(tmp_path) -> None:
    """A budget past what bits alone reach (16x at 2 bits) makes the plan prune the concatenation's inputs."""
    data = synthetic_dataset(num_classes=4, n_train=192, n_val=1, n_test=64, seed=3)
    torch.manual_seed(0)
    net = DenseNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(30):
        loss = F.cross_entropy(net(data.train.x), data.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    result = qc.compress(
        net.eval(),
        ((data.train.x, data.train.y), (data.test.x, data.test.y)),
        target_ratio=20,
        formulation="budget",
        finetune_epochs=0,
        baseline=False,
        seed=0,
        report=False,
    )
    plan = result.plan
    assert set(plan.pruned) == {"stem.0", "grow"}  # the two inputs of the concatenation
    model = result.model
    kept_stem = 8 - len(plan.pruned["stem.0"])
    kept_grow = 8 - len(plan.pruned["grow"])
    assert kept_stem + kept_grow < 16
    assert (model.stem[0].out_channels, model.grow.in_channels) == (kept_stem, kept_stem)
    assert model.grow.out_channels == kept_grow
    assert model.bn.num_features == model.trans.in_channels == kept_stem + kept_grow
    assert model.grouped.in_channels == model.grouped.out_channels == 8  # frozen: grouped conv
    folder = result.save(tmp_path / "run")
    reloaded = qc.load(folder / "model.safetensors", model=DenseNet())
    x = data.test.x[:8]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=1e-5, rtol=1e-5)
