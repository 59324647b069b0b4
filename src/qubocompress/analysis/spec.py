"""Turn a traced model, its channel importance and its measured damage into a CompressionSpec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qubocompress.analysis.graph import ModelGraph
from qubocompress.errors import ProblemError
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, LayerSpec


def build_spec(
    graph: ModelGraph,
    importance: Sequence[np.ndarray],
    damage: Mapping[str, np.ndarray],
    model_name: str,
    b_max: int = 8,
    bit_levels: int = 3,
    max_prune_fraction: float = 0.5,
) -> CompressionSpec:
    """The solver-facing description of ``graph``.

    Args:
        importance: one score vector per group of ``graph`` (higher = keep).
        damage: per layer name, the measured loss increase at 1..b_max bits.
        max_prune_fraction: at most this share of each group's channels may be pruned (the
            least important ones); at least one channel always survives.
    """
    if not 0.0 <= max_prune_fraction < 1.0:
        raise ProblemError(f"max prune fraction must be in [0, 1), got {max_prune_fraction}")
    groups = tuple(
        ChannelGroup(
            name=group.name,
            importance=np.asarray(score, dtype=np.float64),
            max_pruned=min(int(np.floor(max_prune_fraction * group.channels)), group.channels - 1),
            members=group.producers + group.depthwise,
        )
        for group, score in zip(graph.groups, importance, strict=True)
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
            quant_damage=np.asarray(damage.get(layer.name, np.zeros(0)), dtype=np.float64),
        )
        for layer in graph.layers
    )
    return CompressionSpec(model=model_name, layers=layers, groups=groups, b_max=b_max, bit_levels=bit_levels)
