"""Which channels of a torch model can be pruned together, found by tracing it with torch.fx.

The result, a :class:`ModelGraph`, lists the compressible layers (Conv2d and Linear) and the
channel groups: sets of output channels that must be removed together (a conv and its BatchNorm;
every layer joined by a residual add; a depthwise conv and the layer feeding it), with every layer
that consumes them (whose input channels shrink when they are pruned). ``apply.prune`` uses it to
cut the real model; ``analysis.spec`` uses it to fill the solver-facing ``CompressionSpec``.

Layers whose channels we cannot follow (a concatenation, a reshape other than flatten, an
unknown op) are not an error: their groups are simply frozen (not prunable) and listed in
``ModelGraph.frozen_reasons``; their weights can still be quantized.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from qubocompress.errors import ModelError

COMPRESSIBLE = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules and functions that keep each channel where it is (elementwise or per-channel spatial ops).
CHANNEL_PRESERVING_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
CHANNEL_PRESERVING_FUNCTIONS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.leaky_relu,
    torch.nn.functional.hardswish,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.dropout,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.adaptive_max_pool2d,
}
CHANNEL_PRESERVING_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
ELEMENTWISE_JOIN = {operator.add, torch.add, operator.mul, torch.mul, operator.iadd}
ELEMENTWISE_JOIN_METHODS = {"add", "add_", "mul", "mul_"}


@dataclass(frozen=True)
class LayerInfo:
    """One Conv2d or Linear layer of the traced model.

    Attributes:
        name: qualified module name.
        kind: ``"conv"`` or ``"linear"``.
        out_channels, in_channels, groups, kernel_area: the weight's geometry.
        in_features_per_channel: input features per input channel (H*W for a linear after a
            flatten of a C×H×W map, else 1).
        out_positions: output positions per sample (H_out*W_out for conv, 1 for linear).
        out_group: index of the group of its output channels (None: not prunable).
        in_group: index of the group of its input channels (None: network input or untracked).
    """

    name: str
    kind: str
    out_channels: int
    in_channels: int
    groups: int
    kernel_area: int
    in_features_per_channel: int
    out_positions: int
    out_group: int | None
    in_group: int | None


@dataclass(frozen=True)
class PruningGroup:
    """Channels pruned together: index i of this group is channel i of every member.

    Attributes:
        name: the first producer's module name.
        channels: number of channels.
        producers: Conv2d/Linear modules whose output channels (weight dim 0, bias) these are.
        norms: BatchNorm modules normalising these channels.
        depthwise: depthwise Conv2d modules that carry these channels through (their weight
            dim 0, bias and ``groups`` shrink with the group).
        consumers: ``(module, in_features_per_channel)`` for every Conv2d/Linear whose input
            holds these channels: channel i spans input features
            ``[i*k, (i+1)*k)`` of its weight dim 1 (k = in_features_per_channel).
    """

    name: str
    channels: int
    producers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    depthwise: tuple[str, ...] = ()
    consumers: tuple[tuple[str, int], ...] = ()


@dataclass
class ModelGraph:
    """The traced model: compressible layers, prunable channel groups, and what was frozen."""

    layers: list[LayerInfo]
    groups: list[PruningGroup]
    frozen_reasons: dict[str, str] = field(default_factory=dict)

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name``."""
        for info in self.layers:
            if info.name == name:
                return info
        raise ModelError(f"no compressible layer named {name!r}")
