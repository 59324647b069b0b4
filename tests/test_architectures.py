"""Pruning through concatenations (DenseNet/Inception), squeeze-excitation products and grouped
convolutions (ResNeXt/RegNet): the channel groups the tracer finds, the pruned model computing what
the masked reference computes, the size model matching the pruned tensors, the grouped convs'
blocks in every formulation and search, and compress runs end to end."""

from __future__ import annotations

import itertools
from dataclasses import replace

import dimod
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import qubocompress as qc
from qubocompress.analysis import analyse_model
from qubocompress.analysis.backward import backward_statistics
from qubocompress.analysis.graph import ModelGraph, trace_model
from qubocompress.analysis.masking import feature_indices
from qubocompress.analysis.spec import DEFAULT_PRUNE_FRACTIONS, build_spec, max_pruned_channels, prune_option_counts
from qubocompress.apply.prune import mask_model, prune_model
from qubocompress.apply.quantize import fake_quantize
from qubocompress.data.datasets import synthetic_dataset
from qubocompress.errors import ModelError, ProblemError
from qubocompress.problem.choices import ChoiceModel, plan_cost
from qubocompress.problem.filters import FiltersFormulation
from qubocompress.problem.paper import PaperFormulation
from qubocompress.problem.plan import Plan, uniform_plan
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, block_counts, prune_order
from qubocompress.search import DecisionSpace, grid_prune_options

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


class ResNeXt(nn.Module):
    """A ResNeXt bottleneck with norms: 1x1, grouped 3x3 (groups=4), 1x1, each with BN (and ReLU),
    and a residual add."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.reduce, self.bn1 = nn.Conv2d(8, width, 1), nn.BatchNorm2d(width)
        self.grouped, self.bn2 = nn.Conv2d(width, width, 3, padding=1, groups=4), nn.BatchNorm2d(width)
        self.expand, self.bn3 = nn.Conv2d(width, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.bn1(self.reduce(x)))
        h = torch.relu(self.bn2(self.grouped(h)))
        return self.fc(torch.relu(self.bn3(self.expand(h)) + x).mean((2, 3)))


class YBlock(nn.Module):
    """A RegNetY block: 1x1, grouped 3x3 of ``group_width`` channels per group (strided), an SE gate,
    1x1; a projection shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 2) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)
        self.b = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, groups=cout // group_width)
        self.bn_b = nn.BatchNorm2d(cout)
        self.squeeze, self.excite = nn.Conv2d(cout, 3, 1), nn.Conv2d(3, cout, 1)
        self.c, self.bn_c = nn.Conv2d(cout, cout, 1), nn.BatchNorm2d(cout)
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout)) if stride > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn_a(self.a(x)))
        h = torch.relu(self.bn_b(self.b(h)))
        h = h * torch.sigmoid(self.excite(torch.relu(self.squeeze(h.mean((2, 3), keepdim=True)))))
        shortcut = x if self.proj is None else self.proj(x)
        return torch.relu(self.bn_c(self.c(h)) + shortcut)


class RegNet(nn.Module):
    """A RegNetY-style stage of two blocks (group width 2) between a stem and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.stage = nn.Sequential(YBlock(6, 12, 2), YBlock(12, 12, 1))
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


MODELS = {"dense": Dense, "se": SqueezeExcite, "next": NeXt, "mixed": Mixed, "resnext": ResNeXt, "regnet": RegNet}
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
    """Random channels of every group, as many from each of its blocks."""
    pruned = {}
    for g in graph.groups:
        width = g.channels // g.blocks
        count = int(rng.integers(1, width))
        pruned[g.name] = tuple(
            int(b * width + i) for b in range(g.blocks) for i in rng.choice(width, size=count, replace=False)
        )
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


def test_a_grouped_convolution_splits_its_input_and_its_output_group_into_blocks() -> None:
    graph = trace_model(ResNeXt(), SHAPE)
    assert [(g.name, g.blocks) for g in graph.groups] == [("stem", 1), ("reduce", 4), ("grouped", 4)]
    reduce, grouped = graph.groups[1], graph.groups[2]
    assert reduce.consumers == (("grouped", 1),) and reduce.norms == ("bn1",)
    assert grouped.producers == ("grouped",) and grouped.norms == ("bn2",) and grouped.consumers == (("expand", 1),)
    layer = graph.layer("grouped")
    assert (layer.in_group, layer.out_group, layer.groups) == (1, 2, 4)
    assert set(graph.frozen_reasons) == {"fc"}
    regnet = trace_model(RegNet(), SHAPE)
    blocks = {g.name: g.blocks for g in regnet.groups}
    assert blocks == {
        **{"stem.0": 1, "stage.0.a": 6, "stage.0.b": 6, "stage.0.squeeze": 1, "stage.0.proj.0": 1},
        **{"stage.1.a": 6, "stage.1.b": 6, "stage.1.squeeze": 1},
    }
    gated = regnet.groups[group_of(regnet, "stage.0.b")]
    assert gated.producers == ("stage.0.b", "stage.0.excite")  # the SE gate's channels share the blocks
    joined = regnet.groups[group_of(regnet, "stage.0.c")]
    assert joined.producers == ("stage.0.proj.0", "stage.0.c", "stage.1.c")  # the residual adds


class Blocks(nn.Module):
    """Grouped convs over shared channels: groups 2 and 4 over 8 (lcm 4 blocks), groups 4 and 6 over
    12 (blocks of one), one input channel per group, a concatenation into a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.h, self.h2, self.h4 = nn.Conv2d(1, 8, 1), nn.Conv2d(8, 4, 1, groups=2), nn.Conv2d(8, 8, 1, groups=4)
        self.a, self.g4, self.g6 = nn.Conv2d(1, 12, 1), nn.Conv2d(12, 8, 1, groups=4), nn.Conv2d(12, 6, 1, groups=6)
        self.b, self.mult = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.c, self.d, self.cat_g = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1), nn.Conv2d(8, 4, 1, groups=2)
        self.fc = nn.Linear(4 + 8 + 8 + 6 + 8 + 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, a = self.h(x), self.a(x)
        c = torch.cat([self.c(x), self.d(x)], 1)
        parts = [self.h2(h), self.h4(h), self.g4(a), self.g6(a), self.mult(self.b(x)), self.cat_g(c)]
        return self.fc(torch.cat(parts, 1).mean((2, 3)))


def test_grouped_convolutions_tie_blocks_by_their_lcm_and_freeze_blocks_of_one() -> None:
    graph = trace_model(Blocks(), SHAPE)
    blocks = {g.name: g.blocks for g in graph.groups}
    assert blocks == {"h": 4, "h2": 2, "h4": 4, "g4": 4, "mult": 4, "cat_g": 2}
    reasons = graph.frozen_reasons
    one = "into blocks of one (each block must lose as many as the others)"
    assert reasons["a"] == f"grouped convolutions g4 (groups=4), g6 (groups=6) split these 12 channels {one}"
    assert reasons["b"] == f"grouped convolution mult (groups=4) splits these 4 channels {one}"
    assert reasons["g6"] == f"grouped convolution g6 (groups=6) splits these 6 channels {one}"
    assert reasons["c"] == reasons["d"] == "feeds grouped convolution cat_g (groups=2) after a concatenation"
    spec = size_model(graph)
    assert {g.name: g.max_pruned for g in spec.groups} == {"h": 4, "h2": 2, "h4": 4, "g4": 4, "mult": 4, "cat_g": 2}


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


class Reductions(nn.Module):
    """8 channels of 8x8: a mean over dim 1 keeps (N, 8) in front, as a spatial mean does."""

    def __init__(self, over_channels: bool) -> None:
        super().__init__()
        self.over_channels = over_channels
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        if self.over_channels:
            return self.fc(y.mean(1).sum(dim=-1))  # (N, H): the heights, not the channels
        return self.fc(torch.mean(y, dim=(-2, -1)))


def test_a_reduction_over_the_channels_is_not_taken_for_a_spatial_one() -> None:
    graph = trace_model(Reductions(over_channels=True), SHAPE)
    assert graph.groups == [] and graph.frozen_reasons["a"] == "used by mean at mean, which qubocompress cannot follow"
    spatial = trace_model(Reductions(over_channels=False), SHAPE)
    assert [(g.name, g.consumers) for g in spatial.groups] == [("a", (("fc", 1),))]


class FlatNorm(nn.Module):
    """A BatchNorm1d over the flattened ``side`` x ``side`` maps of 4 channels."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.bn = nn.BatchNorm1d(4 * side * side)
        self.fc = nn.Linear(4 * side * side, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(torch.flatten(self.pool(self.a(x)), 1))))


def test_a_norm_of_flattened_maps_freezes_their_channels_and_one_of_pooled_channels_prunes() -> None:
    # pruning channel i of the maps removes features [4i, 4i+4) of the norm, not feature i: the
    # pruned model's norm had the wrong size and its forward failed
    graph = trace_model(FlatNorm(side=2), SHAPE)
    assert graph.groups == [] and graph.frozen_reasons["a"] == (
        "used by norm bn of flattened features, which qubocompress cannot follow"
    )
    model = FlatNorm(side=1).eval()
    with torch.no_grad():
        model.bn.running_mean.normal_(generator=torch.Generator().manual_seed(0))
    graph = trace_model(model, SHAPE)
    assert [(g.name, g.norms, g.consumers) for g in graph.groups] == [("a", ("bn",), (("fc", 1),))]
    plan = Plan(pruned={"a": (1, 2)}, bits={layer.name: 8 for layer in graph.layers})
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(prune_model(model, graph, plan)(x), mask_model(model, graph, plan)(x))


def test_the_mixed_model_prunes_through_all_three() -> None:
    graph = trace_model(Mixed(), SHAPE)
    a = graph.groups[group_of(graph, "a")]
    assert a.producers == ("a", "excite") and a.norms == ("bn_a", "bn") and a.offset("out") == 6
    assert graph.groups[group_of(graph, "p")].producers == ("p", "p2")
    assert (graph.layer("out").in_group, graph.layer("out").extra_in_groups) == (group_of(graph, "p"), (0,))
    reduce, g = graph.groups[group_of(graph, "reduce")], graph.groups[group_of(graph, "g")]
    assert (reduce.blocks, g.blocks, g.norms, g.offset("bn")) == (2, 2, ("bn",), 4)


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
    grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert [modules[n].groups for n in grouped] == [model.get_submodule(n).groups for n in grouped]  # groups stay


def test_a_grouped_conv_keeps_each_groups_own_columns_and_its_groups() -> None:
    model = randomized(ResNeXt(), 0)
    graph = trace_model(model, SHAPE)
    pruned = prune_model(model, graph, Plan(pruned={"reduce": (1, 2, 5, 6), "grouped": (0, 3, 4, 7)}, bits={}))
    conv = pruned.grouped
    assert (conv.in_channels, conv.out_channels, conv.groups, conv.weight.shape[1]) == (4, 4, 4, 1)
    # kept: filters 1, 2, 5, 6 (one of each group's two) and input channels 0, 3, 4, 7, which are
    # column 0, 1, 0, 1 of their group's two; each group's filter reads its own block's
    assert torch.equal(conv.weight, model.grouped.weight[[1, 2, 5, 6], [0, 1, 0, 1]][:, None])
    assert torch.equal(pruned.reduce.weight, model.reduce.weight[[0, 3, 4, 7]])
    assert torch.equal(pruned.expand.weight, model.expand.weight[:, [1, 2, 5, 6]])


def test_a_plan_must_prune_as_many_from_each_block() -> None:
    model = randomized(ResNeXt(), 0)
    graph = trace_model(model, SHAPE)
    spec = size_model(graph)
    uneven = Plan(pruned={"reduce": (0, 1)}, bits={layer.name: 8 for layer in spec.layers})  # both in block 0
    message = r"plan prunes \[2, 0, 0, 0\] channels from the 4 blocks of group 'reduce'"
    with pytest.raises(ProblemError, match=message):
        uneven.validate(spec)
    with pytest.raises(ModelError, match=message):
        prune_model(model, graph, uneven)
    Plan(pruned={"reduce": (0, 2, 4, 6)}, bits=uneven.bits).validate(spec)


def test_a_groups_order_takes_its_blocks_in_turn_and_its_counts_are_multiples() -> None:
    importance = np.array([5.0, 1.0, 0.5, 3.0, 2.0, 2.0, 9.0, 0.1])
    group = ChannelGroup("g", importance, 4, blocks=2)
    assert group.prune_order().tolist() == [2, 7, 1, 4, 3, 5, 0, 6]  # blocks (0-3) and (4-7), in turn
    assert group.units().tolist() == [[2, 7], [1, 4]]
    assert prune_order(importance).tolist() == np.argsort(importance, kind="stable").tolist()
    assert [group.round_count(c) for c in (0.9, 1.1, 3.2, 7.0)] == [0, 2, 4, 4]
    for bad in ({"max_pruned": 3}, {"max_pruned": 4, "prune_options": (0, 1, 4)}, {"max_pruned": 2, "blocks": 3}):
        with pytest.raises(ProblemError, match="multiples of its blocks"):
            ChannelGroup("g", importance, **{"blocks": 2, **bad})
    assert max_pruned_channels(16, 0.5, 4) == 8 and max_pruned_channels(16, 0.7, 4) == 8
    assert prune_option_counts(16, DEFAULT_PRUNE_FRACTIONS, 0.5, 4) == (0, 4, 8)
    assert grid_prune_options(8, blocks=4) == (0, 4, 8) and grid_prune_options(8) == (0, 2, 4, 6, 8)
    graph = trace_model(ResNeXt(width=16), SHAPE)
    spec = build_spec(graph, [np.random.default_rng(0).random(g.channels) for g in graph.groups], {}, "resnext")
    assert {g.name: (g.blocks, g.max_pruned) for g in spec.groups} == {
        "stem": (1, 4),
        "reduce": (4, 8),
        "grouped": (4, 8),
    }
    assert CompressionSpec.from_json(spec.to_json()).groups[1].blocks == 4
    space = DecisionSpace(spec, 2.0)
    assert space.prune_options == [(0, 1, 2, 3, 4), (0, 4, 8), (0, 4, 8)]
    for genome in itertools.product(*(range(n) for n in space.counts[:3])):
        plan = space.decode(np.array([*genome, *[0] * len(spec.layers)]))
        plan.validate(spec)  # every option is even over the blocks
    uniform = uniform_plan(spec, 8, 0.3)  # 0.3 of 16 = 4.8 channels: 4, one per block
    assert [len(uniform.pruned[g]) for g in ("stem", "reduce", "grouped")] == [2, 4, 4]


def paper_spec(seed: int = 0) -> CompressionSpec:
    """The ResNeXt block's spec with importances and a quantization damage, one bit level."""
    rng = np.random.default_rng(seed)
    graph = trace_model(ResNeXt(), SHAPE)
    damage = {layer.name: np.sort(rng.random(8))[::-1] * 1e-2 for layer in graph.layers}
    return build_spec(graph, [rng.random(g.channels) for g in graph.groups], damage, "resnext", bit_levels=1)


def test_the_paper_formulation_prunes_one_channel_of_every_block_per_variable() -> None:
    spec = paper_spec()
    formulation = PaperFormulation(spec, gamma=2.0)
    reduce = spec.groups[1]
    labels = [lab for lab, v in formulation.variables.items() if v.kind == "prune" and v.owner == 1]
    assert labels == [f"p[reduce:{int(unit[0])}]" for unit in reduce.units()]  # one unit: 4 channels
    states = dimod.ExactSolver().sample(formulation.bqm)
    for sample, energy in list(states.data(["sample", "energy"]))[::97]:
        plan = formulation.decode(sample)
        plan.validate(spec)
        assert formulation.energy(plan) == pytest.approx(energy, abs=1e-9)
        assert formulation.encode(plan) == dict(sample)
    plan, energy = formulation.exact()
    assert energy == pytest.approx(states.first.energy, abs=1e-9)
    assert len(plan.pruned["reduce"]) in (0, 4) and len(plan.pruned["grouped"]) in (0, 4)
    with pytest.raises(ProblemError, match="in units of one from each of its 4 blocks"):
        formulation.encode(Plan(pruned={"reduce": tuple(reduce.prune_order()[4:].tolist())}, bits=plan.bits))


def test_the_filters_formulation_keeps_a_count_per_block() -> None:
    spec = paper_spec()
    rng = np.random.default_rng(1)
    u = rng.normal(size=(32, 24))
    spec = replace(spec, filter_gram=u.T @ u / 32)
    bits = {layer.name: 8 for layer in spec.layers}
    with pytest.raises(ProblemError, match="in multiples of its blocks=4"):
        FiltersFormulation(spec, {"reduce": 2}, bits)
    formulation = FiltersFormulation(spec, {"reduce": 4}, bits, time_limit=10.0, reference_solver="highs")
    states = dimod.ExactSolver().sample(formulation.bqm)
    feasible = formulation.feasible_reads(states)
    assert feasible.sum() == 2**4  # one of the two channels of each of the four blocks
    plan = formulation.exact_result().plan
    assert block_counts(plan.pruned["reduce"], 8, 4).tolist() == [1, 1, 1, 1]
    assert formulation.objective(plan) == pytest.approx(float(states.record.energy[feasible].min()), rel=1e-9)
    lopsided = {label: int(label in {f"p[reduce][{i}]" for i in range(4)}) for label in formulation.labels}
    assert not formulation.feasible_reads(dimod.SampleSet.from_samples(lopsided, "BINARY", 0.0))[0]  # 2, 2, 0, 0


def test_the_analysis_measures_only_even_prune_options_of_a_regnet_stage() -> None:
    model = randomized(RegNet(), 0)
    x = torch.randn(24, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
    graph, spec = analyse_model(
        model, (x, y), SHAPE, fake_quantize, "regnet", prune_options=DEFAULT_PRUNE_FRACTIONS, interactions=True
    )
    with torch.no_grad():
        assert torch.equal(model(x), before)  # every masked weight slice put back
    gated = spec.groups[group_of(graph, "stage.0.b")]
    assert (gated.blocks, gated.max_pruned, gated.prune_options) == (6, 6, (0, 6))
    assert all(k % g.blocks == 0 for g in spec.groups for k in g.prune_options)
    assert gated.prune_damage[1] != 0
    # the measured damage is the loss of the physically pruned model
    plan = Plan(pruned={gated.name: tuple(int(i) for i in gated.candidates())}, bits={})
    pruned = prune_model(model, graph, plan)
    with torch.no_grad():
        loss = F.cross_entropy(pruned(x), y) - F.cross_entropy(model(x), y)
    assert gated.prune_damage[1] == pytest.approx(float(loss), rel=1e-4, abs=1e-6)
    assert pruned.stage[0].b.groups == 6 and pruned.stage[0].b.out_channels == 6
    # the Fisher estimate of the same option, from contributions read at the grouped convs' inputs
    _, fisher = analyse_model(
        model, (x, y), SHAPE, fake_quantize, "regnet", "taylor", "fisher", prune_options=DEFAULT_PRUNE_FRACTIONS
    )
    estimated = fisher.groups[group_of(graph, "stage.0.b")]
    assert estimated.prune_options == (0, 6) and estimated.prune_damage[1] > 0


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
    """A budget past what bits alone reach (16x at 2 bits) makes the plan prune the concatenation's
    inputs, and the grouped conv's input and output channels, as many from each of its groups."""
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
    assert set(plan.pruned) == {"stem.0", "grow", "trans", "grouped"}
    model = result.model
    kept_stem = 8 - len(plan.pruned["stem.0"])
    kept_grow = 8 - len(plan.pruned["grow"])
    assert kept_stem + kept_grow < 16
    assert (model.stem[0].out_channels, model.grow.in_channels) == (kept_stem, kept_stem)
    assert model.grow.out_channels == kept_grow
    assert model.bn.num_features == model.trans.in_channels == kept_stem + kept_grow
    kept_in, kept_out = 8 - len(plan.pruned["trans"]), 8 - len(plan.pruned["grouped"])
    assert kept_in % 2 == kept_out % 2 == 0 and kept_in + kept_out < 16
    assert (model.trans.out_channels, model.head.in_features) == (kept_in, kept_out)
    assert (model.grouped.in_channels, model.grouped.out_channels, model.grouped.groups) == (kept_in, kept_out, 2)
    folder = result.save(tmp_path / "run")
    reloaded = qc.load(folder / "model.safetensors", model=DenseNet())
    x = data.test.x[:8]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("formulation", ["paper", "filters"])
def test_compress_prunes_a_regnet_stage_through_its_grouped_convs(formulation: str) -> None:
    """The paper QUBO prunes a unit (one channel of each block) per variable, the filters QUBO
    chooses which channels of each block go (one count per block); the pruned model computes what
    the masked one does, and the grouped convs keep their groups."""
    data = synthetic_dataset(num_classes=3, n_train=96, n_val=1, n_test=32, seed=4)
    torch.manual_seed(0)
    net = RegNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(20):
        loss = F.cross_entropy(net(data.train.x), data.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    result = qc.compress(
        net,
        ((data.train.x, data.train.y), (data.test.x, data.test.y)),
        target_ratio=24,
        formulation=formulation,
        finetune_epochs=0,
        baseline=False,
        seed=0,
        report=False,
    )
    graph = trace_model(net, tuple(data.train.x.shape[1:]))
    blocks = {g.name: g.blocks for g in graph.groups}
    counts = {name: len(channels) for name, channels in result.plan.pruned.items() if channels}
    assert any(blocks[name] > 1 for name in counts), counts  # a grouped conv's input or output lost channels
    assert all(count % blocks[name] == 0 for name, count in counts.items())
    pruned, masked = prune_model(net, graph, result.plan), mask_model(net, graph, result.plan)
    x = data.test.x[:8]
    with torch.no_grad():
        assert torch.allclose(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
    for block in (0, 1):
        conv, before = result.model.stage[block].b, net.stage[block].b
        assert conv.groups == before.groups == 6 and conv.weight.shape[1] == conv.in_channels // 6
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in net.parameters())
