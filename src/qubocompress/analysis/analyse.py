"""The whole analysis in one call: trace, score channels, measure damage, build the spec."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from qubocompress.analysis.graph import ModelGraph, trace_model
from qubocompress.analysis.backward import backward_statistics, layers_readable
from qubocompress.analysis.importance import group_importance
from qubocompress.analysis.interactions import DEFAULT_BITS, DEFAULT_MAX_PASSES, PruneChoices, measure_interactions
from qubocompress.analysis.sensitivity import (
    HUTCHINSON_SAMPLES,
    Quantizer,
    fisher_damage,
    fisher_prune_damage,
    layer_damage,
    mean_loss,
    prune_damage,
)
from qubocompress.analysis.spec import build_spec, gram_matrix, prune_option_counts
from qubocompress.errors import ProblemError
from qubocompress.problem.spec import CompressionSpec
from qubocompress.progress import track


def analyse_model(
    model: nn.Module,
    calib: tuple[torch.Tensor, torch.Tensor],
    input_shape: tuple[int, ...],
    quantizer: Quantizer,
    model_name: str,
    importance: str = "l1",
    layer_sensitivity: str = "measured",
    b_max: int = 8,
    bit_levels: int = 3,
    max_prune_fraction: float = 0.5,
    prune_options: Sequence[float] | None = None,
    interactions: bool = False,
    measure_damage: bool = True,
    filter_gram: bool = False,
    seed: int = 0,
    interaction_bits: Sequence[int] = DEFAULT_BITS,
    interaction_passes: int = DEFAULT_MAX_PASSES,
    hessian_samples: int = HUTCHINSON_SAMPLES,
    log: Callable[[str], None] | None = None,
) -> tuple[ModelGraph, CompressionSpec]:
    """Trace ``model`` and describe it as a :class:`CompressionSpec`.

    Args:
        calib: ``(x, y)`` calibration inputs and int64 labels (every data-driven step uses them),
            moved to the model's device.
        input_shape: (C, H, W) of one input, for tracing.
        quantizer: ``quantizer(weight, bits)`` -> the fake-quantized weight (the artifact's).
        importance: channel score, one of ``analysis.importance.IMPORTANCE_METHODS``.
        layer_sensitivity: quantization damage, one of
            ``analysis.sensitivity.LAYER_SENSITIVITY_METHODS``; ``fisher`` estimates the prune
            options' damage too (the others measure it).
        max_prune_fraction: at most this share of a group's channels may be pruned.
        prune_options: fractions of each group's channels on offer (e.g.
            ``analysis.spec.DEFAULT_PRUNE_FRACTIONS``); each becomes a count (rounded,
            deduplicated, capped at the group's max_pruned) with its damage. None: none.
        interactions: also measure CLADO-style pairwise terms (bits × bits, and prune × prune
            between feeding groups when prune options are given) within ``interaction_passes``
            forward passes at ``interaction_bits`` (see ``analysis.interactions``).
        measure_damage: False: no damage at all (no data passes; the spec's damage arrays stay
            empty), for searches that score plans by themselves; ``interactions`` must be False.
        filter_gram: also keep the channels' Gram matrix ``(1/N) Uᵀ U`` (``spec.filter_gram``, for
            the ``filters`` formulation), from the contributions of the same backward pass: it
            then runs even with l1 importance and a sensitivity other than fisher.
        seed: seeds the Hutchinson probes of the ``hessian`` sensitivity.
        log: receives one line on what the interactions cost, if measured.
    """
    if interactions and not measure_damage:
        raise ProblemError("pairwise interactions are measured damage; they need measure_damage=True")
    if filter_gram and not measure_damage:
        raise ProblemError("the filter Gram matrix is an estimate of damage; it needs measure_damage=True")
    parameter = next(model.parameters(), None)
    x, y = (tensor.to(parameter.device) for tensor in calib) if parameter is not None else calib
    graph = trace_model(model, input_shape)
    options = damages = None
    if prune_options is not None:
        options = [
            prune_option_counts(group.channels, prune_options, max_prune_fraction, group.blocks)
            for group in graph.groups
        ]
    estimate_prune = options is not None and measure_damage and layer_sensitivity == "fisher"
    names = [layer.name for layer in graph.layers]
    # one backward pass serves the data-driven importance, the Fisher prune damage, the filter Gram
    # matrix and, where the layers can be read, the Fisher diagonals
    needs_contributions = bool(graph.groups) and (estimate_prune or importance != "l1" or filter_gram)
    fisher_layers = names if measure_damage and layer_sensitivity == "fisher" and layers_readable(model, names) else []
    statistics = (
        backward_statistics(model, x, y, groups=graph.groups if needs_contributions else (), layers=fisher_layers)
        if needs_contributions or fisher_layers
        else None
    )
    contributions = statistics.contributions if statistics is not None and needs_contributions else None
    scores = group_importance(model, graph, importance, data=(x, y), contributions=contributions)
    if not measure_damage:
        damage = {}
    elif statistics is not None and fisher_layers:
        damage = fisher_damage(model, statistics.mean_squared_gradients(), quantizer, b_max)
    else:
        damage = layer_damage(
            model, graph, x, y, quantizer, b_max, layer_sensitivity, seed=seed, hessian_samples=hessian_samples
        )
    if estimate_prune:
        damages = [
            fisher_prune_damage(contributions[index], scores[index], counts, graph.groups[index].blocks)  # type: ignore[index]
            for index, counts in enumerate(options)  # type: ignore[arg-type]
        ]
    elif options is not None and measure_damage:
        base = mean_loss(model, x, y)
        damages = [
            prune_damage(model, graph, index, counts, x, y, scores[index], base_loss=base)
            for index, counts in track(list(enumerate(options)), "measuring each group's pruning damage")
        ]
    terms = ()
    if interactions:
        terms, cost = measure_interactions(
            model,
            graph,
            x,
            y,
            quantizer,
            b_max,
            interaction_bits,
            interaction_passes,
            quant_singles=damage if layer_sensitivity == "measured" else None,
            # estimated prune singles are no base for a measured pair term: those get measured
            prune=PruneChoices(scores, options, None if estimate_prune else damages) if options is not None else None,
        )
        if log is not None:
            log(
                f"interactions: {len(terms)} non-zero tables from {cost.pairs} pairs in {cost.passes} forward "
                f"passes ({cost.seconds:.1f} s); {cost.skipped_pairs} pairs left out by the budget"
            )
    spec = build_spec(
        graph,
        scores,
        damage,
        model_name,
        b_max,
        bit_levels,
        max_prune_fraction,
        prune_options=options,
        prune_damage=damages,
        interactions=terms,
        filter_gram=gram_matrix(contributions or []) if filter_gram else None,
    )
    return graph, spec
