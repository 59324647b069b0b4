"""Measured pairwise damage terms (CLADO, Deng et al., arXiv 2307.05657), for the spec.

The per-layer damages assume that the loss increases add up; they do not (CLADO shows the
cross-layer terms matter, and they are what makes the problem genuinely quadratic). For two
choices A (of one family) and B (of another), measured with forward passes only:

    table[a, b] = loss(A=a and B=b) − loss(A=a alone) − loss(B=b alone) + loss(fp32)      (nats)

Families: ``bits:<layer>`` (index = bit-width − 1, over 1..b_max) and ``prune:<group>`` (index =
position in the group's ``prune_options``). A negative entry means the two damages overlap (the
pair hurts less than the sum), a positive one that they compound.

What is measured, within a budget of ``max_passes`` forward passes over the calibration split
(each pass = one loss evaluation; the measured time is returned with the count):

* bit pairs: every pair of layers in the order of their distance in the forward order (adjacent
  layers first, where the errors meet directly), ties by position, each at every combination of
  ``bits`` (default 2, 3, 4: the low bit-widths where damage, and so its interaction, is large;
  at 5 bits and more the single damages are already small). Entries at other bit-widths are 0
  (not measured, taken as additive).
* prune pairs (when prune options are given): each group with every group that it feeds (one of
  the second group's producers consumes the first), at every pair of non-zero options; row and
  column 0 (nothing pruned) are exactly 0.

Candidates are taken in the order: adjacent-layer bit pairs, prune pairs, then farther bit
pairs; a pair is measured whole or not at all, and measuring stops at the first pair that no
longer fits the budget. The single damages of the formula are taken from ``quant_singles`` /
``prune_singles`` when given (the spec's own measurements, so no pass is spent on them), else
measured at ``bits`` only (and counted). Deterministic: eval mode, fixed data, no randomness.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qubocompress.analysis.graph import ModelGraph
from qubocompress.analysis.masking import masked_channels
from qubocompress.analysis.sensitivity import (
    Quantizer,
    mean_loss,
    prune_damage,
    quant_damage,
    quantized_weights,
)
from qubocompress.errors import ProblemError
from qubocompress.problem.spec import Interaction, prune_order

DEFAULT_BITS = (2, 3, 4)
DEFAULT_MAX_PASSES = 256


@dataclass(frozen=True)
class PruneChoices:
    """What the prune families offer: per group of the graph, the channel importance (the k
    least important channels are pruned), the option counts and, optionally, their measured
    single damages (nats, one per option)."""

    importance: Sequence[np.ndarray]
    options: Sequence[Sequence[int]]
    damage: Sequence[np.ndarray] | None = None


@dataclass(frozen=True)
class InteractionCost:
    """What measuring the interactions cost: forward passes over the calibration split (the
    fp32 reference and any single damages included), wall-clock seconds, pairs measured and the
    pairs that the budget left out."""

    passes: int
    seconds: float
    pairs: int
    skipped_pairs: int


def layer_pairs(layer_names: Sequence[str]) -> list[tuple[str, str]]:
    """All pairs of layers, nearest in forward order first, ties by position."""
    n = len(layer_names)
    return [(layer_names[i], layer_names[i + d]) for d in range(1, n) for i in range(n - d)]


def feeding_pairs(graph: ModelGraph) -> list[tuple[int, int]]:
    """``(g, h)`` for every group g and every other group h that one of g's consumers produces."""
    producer_group = {name: index for index, group in enumerate(graph.groups) for name in group.producers}
    pairs = []
    for g, group in enumerate(graph.groups):
        fed = sorted({producer_group[name] for name, _ in group.consumers if name in producer_group} - {g})
        pairs += [(g, h) for h in fed]
    return pairs


def measure_interactions(
    model: nn.Module,
    graph: ModelGraph,
    x: torch.Tensor,
    y: torch.Tensor,
    quantizer: Quantizer,
    b_max: int = 8,
    bits: Sequence[int] = DEFAULT_BITS,
    max_passes: int = DEFAULT_MAX_PASSES,
    quant_singles: Mapping[str, np.ndarray] | None = None,
    prune: PruneChoices | None = None,
) -> tuple[tuple[Interaction, ...], InteractionCost]:
    """CLADO-style pairwise terms of ``graph``'s layers (and groups) within ``max_passes`` passes.

    See the module docstring for what is measured in which order. Returns the interactions
    (all-zero tables are dropped) and what they cost.
    """
    bits = tuple(sorted({int(b) for b in bits}))
    if not bits or any(not 1 <= b <= b_max for b in bits):
        raise ProblemError(f"interaction bit-widths {list(bits)} must lie in 1..{b_max}")
    if max_passes < 1:
        raise ProblemError(f"the interaction budget must allow at least 1 forward pass, got {max_passes}")
    started = time.perf_counter()
    names = [layer.name for layer in graph.layers]
    base = mean_loss(model, x, y)
    passes = 1

    bit_pairs = layer_pairs(names)
    adjacent = [pair for pair in bit_pairs if names.index(pair[1]) - names.index(pair[0]) == 1]
    farther = bit_pairs[len(adjacent) :]
    prune_pairs = feeding_pairs(graph) if prune is not None else []
    candidates: list[tuple[str, tuple]] = (
        [("bits", p) for p in adjacent] + [("prune", p) for p in prune_pairs] + [("bits", p) for p in farther]
    )

    quant_cache: dict[str, np.ndarray] = dict(quant_singles or {})
    prune_cache: dict[int, np.ndarray] = dict(enumerate(prune.damage)) if prune and prune.damage is not None else {}
    terms: list[Interaction] = []
    measured = 0
    for position, (kind, pair) in enumerate(candidates):
        if kind == "bits":
            missing = [name for name in pair if name not in quant_cache]
            cost = len(bits) ** 2 + len(missing) * len(bits)
            if passes + cost > max_passes:
                break
            quant_cache.update(quant_damage(model, missing, x, y, quantizer, b_max, bits, base_loss=base))
            table = _bit_table(model, pair, quantizer, x, y, base, bits, b_max, quant_cache)
            first, second = (f"bits:{name}" for name in pair)
        else:
            assert prune is not None
            g, h = pair
            options_g, options_h = (list(prune.options[i]) for i in pair)
            missing_groups = [i for i in pair if i not in prune_cache]
            cost = (len(options_g) - 1) * (len(options_h) - 1) + sum(len(prune.options[i]) - 1 for i in missing_groups)
            if passes + cost > max_passes:
                break
            for i in missing_groups:
                prune_cache[i] = prune_damage(
                    model, graph, i, prune.options[i], x, y, prune.importance[i], base_loss=base
                )
            table = _prune_table(model, graph, pair, prune, x, y, base, prune_cache)
            first, second = f"prune:{graph.groups[g].name}", f"prune:{graph.groups[h].name}"
        passes += cost
        measured = position + 1
        if np.any(table):
            terms.append(Interaction(first, second, table))
    cost_report = InteractionCost(
        passes=passes,
        seconds=time.perf_counter() - started,
        pairs=measured,
        skipped_pairs=len(candidates) - measured,
    )
    return tuple(terms), cost_report


def _bit_table(
    model: nn.Module,
    pair: tuple[str, str],
    quantizer: Quantizer,
    x: torch.Tensor,
    y: torch.Tensor,
    base: float,
    bits: Sequence[int],
    b_max: int,
    singles: Mapping[str, np.ndarray],
) -> np.ndarray:
    first, second = pair
    table = np.zeros((b_max, b_max))
    for a in bits:
        for b in bits:
            with quantized_weights(model, {first: a, second: b}, quantizer):
                both = mean_loss(model, x, y) - base
            table[a - 1, b - 1] = both - singles[first][a - 1] - singles[second][b - 1]
    return table


def _prune_table(
    model: nn.Module,
    graph: ModelGraph,
    pair: tuple[int, int],
    prune: PruneChoices,
    x: torch.Tensor,
    y: torch.Tensor,
    base: float,
    singles: Mapping[int, np.ndarray],
) -> np.ndarray:
    g, h = pair
    order_g, order_h = (prune_order(prune.importance[i], graph.groups[i].blocks) for i in pair)
    options_g, options_h = prune.options[g], prune.options[h]
    table = np.zeros((len(options_g), len(options_h)))
    for a, count_g in enumerate(options_g):
        for b, count_h in enumerate(options_h):
            if not (count_g and count_h):
                continue
            chosen = {g: order_g[: int(count_g)].tolist(), h: order_h[: int(count_h)].tolist()}
            with masked_channels(model, graph, chosen):
                both = mean_loss(model, x, y) - base
            table[a, b] = both - singles[g][a] - singles[h][b]
    return table
