"""Turn a traced model, its channel importance and its measured damage into a CompressionSpec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qubocompress.analysis.graph import ModelGraph
from qubocompress.errors import ProblemError
from qubocompress.problem.spec import ChannelGroup, CompressionSpec, Interaction, LayerSpec

DEFAULT_PRUNE_FRACTIONS = (0.0, 0.125, 0.25, 0.375, 0.5)


def _check_fraction(max_prune_fraction: float) -> None:
    if not 0.0 <= max_prune_fraction < 1.0:
        raise ProblemError(f"max prune fraction must be in [0, 1), got {max_prune_fraction}")


def max_pruned_channels(channels: int, max_prune_fraction: float, blocks: int = 1) -> int:
    """How many of ``channels`` may be pruned: ``floor(fraction * channels)``, at most channels − 1,
    rounded down to a multiple of ``blocks`` (a grouped convolution's; see ``ChannelGroup.blocks``)."""
    _check_fraction(max_prune_fraction)
    return min(int(np.floor(max_prune_fraction * channels)), channels - 1) // blocks * blocks


def prune_option_counts(
    channels: int, fractions: Sequence[float], max_prune_fraction: float, blocks: int = 1
) -> tuple[int, ...]:
    """The prune options of a group of ``channels``: each fraction times ``channels``, rounded half
    up to a multiple of ``blocks``, capped at :func:`max_pruned_channels`, deduplicated, ascending,
    always starting at 0."""
    if any(not 0.0 <= f < 1.0 for f in fractions):
        raise ProblemError(f"prune option fractions must lie in [0, 1), got {list(fractions)}")
    cap = max_pruned_channels(channels, max_prune_fraction, blocks)
    return tuple(sorted({0} | {min(int(np.floor(f * channels / blocks + 0.5)) * blocks, cap) for f in fractions}))


def build_spec(
    graph: ModelGraph,
    importance: Sequence[np.ndarray],
    damage: Mapping[str, np.ndarray],
    model_name: str,
    b_max: int = 8,
    bit_levels: int = 3,
    max_prune_fraction: float = 0.5,
    prune_options: Sequence[Sequence[int]] | None = None,
    prune_damage: Sequence[np.ndarray] | None = None,
    interactions: Sequence[Interaction] = (),
    filter_gram: np.ndarray | None = None,
) -> CompressionSpec:
    """The solver-facing description of ``graph``.

    Args:
        importance: one score vector per group of ``graph`` (higher = keep).
        damage: per layer name, the quantization damage at 1..b_max bits (see
            :mod:`qubocompress.analysis.sensitivity` for the units of each method).
        max_prune_fraction: at most this share of each group's channels may be pruned (the
            least important ones); at least one channel always survives.
        prune_options: per group, the pruned-channel counts on offer (e.g. from
            :func:`prune_option_counts`); None: no options.
        prune_damage: per group, the measured loss increase (nats) of each option.
        interactions: measured pairwise terms (:mod:`qubocompress.analysis.interactions`).
        filter_gram: the channels' Gram matrix (:func:`gram_matrix`), or None.
    """
    _check_fraction(max_prune_fraction)
    count = len(graph.groups)
    options = list(prune_options) if prune_options is not None else [()] * count
    damages = list(prune_damage) if prune_damage is not None else [np.zeros(0)] * count
    if len(options) != count or len(damages) != count:
        raise ProblemError(f"prune options and damages need one entry per channel group ({count})")
    groups = tuple(
        ChannelGroup(
            name=group.name,
            importance=np.asarray(score, dtype=np.float64),
            max_pruned=max_pruned_channels(group.channels, max_prune_fraction, group.blocks),
            members=group.producers + group.depthwise,
            prune_options=tuple(group_options),
            prune_damage=np.asarray(group_damage, dtype=np.float64),
            blocks=group.blocks,
        )
        for group, score, group_options, group_damage in zip(graph.groups, importance, options, damages, strict=True)
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
            extra_in_groups=layer.extra_in_groups,
            quant_damage=np.asarray(damage.get(layer.name, np.zeros(0)), dtype=np.float64),
        )
        for layer in graph.layers
    )
    return CompressionSpec(
        model=model_name,
        layers=layers,
        groups=groups,
        b_max=b_max,
        bit_levels=bit_levels,
        interactions=tuple(interactions),
        filter_gram=filter_gram,
    )


def gram_matrix(contributions: Sequence[np.ndarray]) -> np.ndarray:
    """``G = (1/N) Uᵀ U`` (nats) with ``U`` the groups' (N, channels) contributions side by side
    (groups in order, channels in index order): the empirical Fisher of a mask on every channel,
    so that ``½ Σ_{c,c'∈S} G[c, c']`` is the second-order loss increase of pruning the set S
    (what :func:`~qubocompress.analysis.sensitivity.fisher_prune_damage` gives for S a prefix of
    one group's rank order). Zero for N = 0.

    For a group tied across layers (a residual add, a depthwise carrier) a channel's contribution
    is measured at the input of every consumer of the tied channels and summed
    (``analysis.backward``): the derivative of one mask shared by all of them, which is exactly
    what removing the channel does (``analysis.masking``). Its producers' outputs would be the
    wrong place: they count the channel once per producer and miss the identity paths of the adds.
    """
    if not contributions:
        return np.zeros((0, 0))
    u = np.concatenate(contributions, axis=1)
    return u.T @ u / max(len(u), 1)
