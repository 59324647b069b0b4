"""Physical channel pruning of a model along the coupled channel groups of its ModelGraph.

``prune_model`` removes the pruned channels for real (smaller weight tensors, updated
``in/out_channels``), so the pruned model is smaller in memory, on disk and in MACs.
``mask_model`` is its reference: it keeps every tensor and zeroes the pruned channels' input slice
in every consumer (:mod:`qubocompress.analysis.masking`, which the sensitivity analysis uses too),
which must compute the same function (tests check that they agree).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn

from qubocompress.analysis.graph import ModelGraph, PruningGroup
from qubocompress.analysis.masking import consumer_module, feature_indices, graph_module, zero_consumer_inputs
from qubocompress.errors import ModelError
from qubocompress.problem.plan import Plan


def _pruned_groups(graph: ModelGraph, plan: Plan) -> Iterator[tuple[PruningGroup, torch.Tensor, torch.Tensor]]:
    """Each group with pruned channels, with the (pruned, kept) channel indices; validates the plan."""
    by_name = {group.name: group for group in graph.groups}
    for name, indices in plan.pruned.items():
        group = by_name.get(name)
        if group is None:
            raise ModelError(
                f"plan prunes channel group {name!r}, which the model does not have "
                f"(known groups: {sorted(by_name)}); was the plan made for another model?"
            )
        if not indices:
            continue
        if any(not 0 <= i < group.channels for i in indices):
            raise ModelError(f"plan prunes channels {list(indices)} of group {name!r}, which has {group.channels}")
        if len(set(indices)) >= group.channels:
            raise ModelError(f"plan prunes all {group.channels} channels of group {name!r}; keep at least one")
        pruned = torch.tensor(sorted(set(indices)), dtype=torch.long)
        keep_mask = torch.ones(group.channels, dtype=torch.bool)
        keep_mask[pruned] = False
        yield group, pruned, torch.nonzero(keep_mask).flatten()


def _select_param(module: nn.Module, attr: str, dim: int, index: torch.Tensor) -> None:
    """Replace parameter ``attr`` of ``module`` by its slice ``index`` along ``dim``."""
    param = getattr(module, attr)
    if param is None:
        return
    kept = param.detach().index_select(dim, index.to(param.device)).clone()
    setattr(module, attr, nn.Parameter(kept, requires_grad=param.requires_grad))


def _select_buffer(module: nn.Module, attr: str, index: torch.Tensor) -> None:
    buffer = getattr(module, attr, None)
    if buffer is None:
        return
    setattr(module, attr, buffer.index_select(0, index.to(buffer.device)).clone())


def _shrink_group(model: nn.Module, group: PruningGroup, keep: torch.Tensor) -> None:
    """Physically keep only channels ``keep`` of ``group`` in every module it touches."""
    n = int(keep.numel())
    for name in group.producers:
        module = graph_module(model, name, (nn.Conv2d, nn.Linear), "producer")
        _select_param(module, "weight", 0, keep)
        _select_param(module, "bias", 0, keep)
        if isinstance(module, nn.Conv2d):
            module.out_channels = n
        else:
            module.out_features = n
    for name in group.norms:
        module = graph_module(model, name, (nn.BatchNorm1d, nn.BatchNorm2d), "norm")
        _select_param(module, "weight", 0, keep)
        _select_param(module, "bias", 0, keep)
        _select_buffer(module, "running_mean", keep)
        _select_buffer(module, "running_var", keep)
        module.num_features = n
    for name in group.depthwise:
        module = graph_module(model, name, (nn.Conv2d,), "depthwise conv")
        if not module.groups == module.in_channels == module.out_channels:
            raise ModelError(f"the model graph names {name!r} depthwise, but it has groups={module.groups}")
        _select_param(module, "weight", 0, keep)
        _select_param(module, "bias", 0, keep)
        module.in_channels = module.out_channels = module.groups = n
    for name, per_channel in group.consumers:
        module = consumer_module(model, name, per_channel)
        _select_param(module, "weight", 1, feature_indices(keep, per_channel))
        if isinstance(module, nn.Conv2d):
            module.in_channels = n
        else:
            module.in_features = n * per_channel


def _apply(
    model: nn.Module,
    graph: ModelGraph,
    plan: Plan,
    edit: Callable[[nn.Module, PruningGroup, torch.Tensor, torch.Tensor], object],
) -> nn.Module:
    groups = list(_pruned_groups(graph, plan))  # validate the whole plan before copying
    edited = copy.deepcopy(model)
    for group, pruned, keep in groups:
        edit(edited, group, pruned, keep)
    return edited


def prune_model(model: nn.Module, graph: ModelGraph, plan: Plan) -> nn.Module:
    """A deep copy of ``model`` with every channel in ``plan.pruned`` physically removed.

    Producers lose output channels (weight dim 0 and bias), norms their per-channel parameters and
    running statistics, depthwise convs their channels (and ``groups``), consumers the matching
    input slice of weight dim 1. ``plan.bits`` is ignored. Raises ModelError when the plan names
    a group the graph does not have, an out-of-range channel, or every channel of a group.
    """
    return _apply(model, graph, plan, lambda m, group, pruned, keep: _shrink_group(m, group, keep))


def mask_model(model: nn.Module, graph: ModelGraph, plan: Plan) -> nn.Module:
    """A deep copy of ``model`` in which the pruned channels are zeroed in every consumer's input.

    Nothing is removed: this is the reference that :func:`prune_model` must agree with.
    """
    return _apply(model, graph, plan, lambda m, group, pruned, keep: zero_consumer_inputs(m, group, pruned))
