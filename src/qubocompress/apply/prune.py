"""Physical channel pruning of a model along the coupled channel groups of its ModelGraph.

``prune_model`` removes the pruned channels for real (smaller weight tensors, updated
``in/out_channels``), so the pruned model is smaller in memory, on disk and in MACs.
``mask_model`` is its reference: it keeps every tensor and zeroes the pruned channels' input slice
in every consumer (:mod:`qubocompress.analysis.masking`, which the sensitivity analysis uses too),
which must compute the same function (tests check that they agree).

As in Torch-Pruning, each module type has its prune functions, one per side (output channels,
input features), and the channel groups say which indices each module loses. A grouped Conv2d
loses as many channels from each of its groups on either side and keeps its ``groups``
(Torch-Pruning's other rule, dropping whole groups, would tie a conv's input to its output). All of a module's
indices are gathered over every pruned group first and cut at once: after a concatenation one
norm or consumer holds several groups, each at an offset into its original channels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from qubocompress.analysis.graph import NORMS, ModelGraph, PruningGroup
from qubocompress.analysis.masking import (
    consumer_module,
    feature_indices,
    graph_module,
    weight_columns,
    zero_consumer_inputs,
)
from qubocompress.errors import ModelError
from qubocompress.problem.plan import Plan
from qubocompress.problem.spec import block_counts, uneven_blocks


_Pruned = list[tuple[PruningGroup, torch.Tensor]]


def _pruned_groups(graph: ModelGraph, plan: Plan) -> Iterator[tuple[PruningGroup, torch.Tensor]]:
    """Each group with pruned channels, with the pruned channel indices; validates the plan."""
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
        uneven = uneven_blocks(name, set(indices), group.channels, group.blocks)
        if uneven is not None:
            raise ModelError(uneven)
        yield group, torch.tensor(sorted(set(indices)), dtype=torch.long)


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


# -- one prune function per module type and side (the Torch-Pruning layout) --------------------


def _check_even(module: nn.Module, keep: torch.Tensor, size: int, side: str) -> None:
    """ModelError unless ``keep`` (of ``size`` channels) leaves each group of a grouped conv as many."""
    counts = block_counts(keep.tolist(), size, module.groups).tolist()
    if len(set(counts)) > 1:
        raise ModelError(
            f"pruning would leave the {module.groups} groups of a grouped Conv2d {counts} {side} channels; "
            "each must keep as many (the model graph should split its channel group into blocks)"
        )


def _conv_out(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output channels ``keep`` of a Conv2d (a depthwise conv: its input channels and groups too;
    a grouped conv: as many in each group, ``groups`` unchanged)."""
    depthwise = module.groups == module.in_channels == module.out_channels > 1
    if module.groups > 1 and not depthwise:
        _check_even(module, keep, module.out_channels, "output")
    _select_param(module, "weight", 0, keep)
    _select_param(module, "bias", 0, keep)
    module.out_channels = int(keep.numel())
    if depthwise:
        module.in_channels = module.groups = module.out_channels


def _conv_in(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep input channels ``keep`` of a Conv2d. A grouped conv (weight ``[out, in/g, kh, kw]``)
    keeps as many of each group's input block, each group's filters the columns of its own block."""
    if module.groups == 1:
        _select_param(module, "weight", 1, keep)
    else:
        _check_even(module, keep, module.in_channels, "input")
        weight = module.weight.detach()
        pieces = weight_columns(module, keep.to(weight.device))
        kept = torch.cat([weight[rows].index_select(1, columns) for rows, columns in pieces])
        module.weight = nn.Parameter(kept, requires_grad=module.weight.requires_grad)
    module.in_channels = int(keep.numel())


def _linear_out(module: nn.Module, keep: torch.Tensor) -> None:
    _select_param(module, "weight", 0, keep)
    _select_param(module, "bias", 0, keep)
    module.out_features = int(keep.numel())


def _linear_in(module: nn.Module, keep: torch.Tensor) -> None:
    _select_param(module, "weight", 1, keep)
    module.in_features = int(keep.numel())


def _norm(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep channels ``keep`` of a BatchNorm: affine parameters and running statistics."""
    for attr in ("weight", "bias"):
        _select_param(module, attr, 0, keep)
    for attr in ("running_mean", "running_var"):
        _select_buffer(module, attr, keep)
    module.num_features = int(keep.numel())


_Keep = Callable[[nn.Module, torch.Tensor], None]
# how each module type keeps only some of its output channels (dim 0), and of its input features (weight dim 1)
_PRUNE_OUT: dict[type[nn.Module], _Keep] = {
    nn.Conv2d: _conv_out,
    nn.Linear: _linear_out,
    nn.BatchNorm1d: _norm,
    nn.BatchNorm2d: _norm,
}
_PRUNE_IN: dict[type[nn.Module], _Keep] = {nn.Conv2d: _conv_in, nn.Linear: _linear_in}


def _registered(table: dict[type[nn.Module], _Keep], module: nn.Module) -> _Keep:
    """The prune function of ``module``'s type (or its nearest base class) in ``table``."""
    return next(table[kind] for kind in type(module).__mro__ if kind in table)


@dataclass
class _Cut:
    """What one module loses, in its original indices: output channels and input features."""

    module: nn.Module
    out: set[int] = field(default_factory=set)
    inputs: set[int] = field(default_factory=set)


def _cuts(model: nn.Module, groups: _Pruned) -> dict[str, _Cut]:
    """Every module's cut over all pruned groups, checked against the model. Gathered before any
    tensor changes, since one module can hold several groups (a norm or consumer after a
    concatenation) whose offsets refer to its original channels."""
    cuts: dict[str, _Cut] = {}

    def cut(name: str, module: nn.Module) -> _Cut:
        return cuts.setdefault(name, _Cut(module))

    for group, pruned in groups:
        removed = pruned.tolist()
        for name in group.producers:
            cut(name, graph_module(model, name, (nn.Conv2d, nn.Linear), "producer")).out.update(removed)
        for name in group.norms:
            module = graph_module(model, name, NORMS, "norm")
            cut(name, module).out.update(i + group.offset(name) for i in removed)
        for name in group.depthwise:
            module = graph_module(model, name, (nn.Conv2d,), "depthwise conv")
            if not module.groups == module.in_channels == module.out_channels:
                raise ModelError(f"the model graph names {name!r} depthwise, but it has groups={module.groups}")
            cut(name, module).out.update(removed)
        for name, per_channel in group.consumers:
            features = feature_indices(pruned, per_channel, group.offset(name))
            cut(name, consumer_module(model, name, per_channel)).inputs.update(features.tolist())
    return cuts


def _kept(size: int, removed: set[int]) -> torch.Tensor:
    keep_mask = torch.ones(size, dtype=torch.bool)
    keep_mask[torch.tensor(sorted(removed), dtype=torch.long)] = False
    return torch.nonzero(keep_mask).flatten()


def _prune_in_place(model: nn.Module, groups: _Pruned) -> None:
    """Physically remove the pruned channels of ``groups`` from every module they touch."""
    for cut in _cuts(model, groups).values():
        module = cut.module
        if cut.out:
            size = module.num_features if isinstance(module, NORMS) else module.weight.shape[0]
            _registered(_PRUNE_OUT, module)(module, _kept(size, cut.out))
        if cut.inputs:
            features = module.weight.shape[1] * getattr(module, "groups", 1)  # a grouped conv's: in_channels
            _registered(_PRUNE_IN, module)(module, _kept(features, cut.inputs))


def _apply(
    model: nn.Module,
    graph: ModelGraph,
    plan: Plan,
    edit: Callable[[nn.Module, _Pruned], object],
) -> nn.Module:
    groups = list(_pruned_groups(graph, plan))  # validate the whole plan before copying
    edited = copy.deepcopy(model)
    edit(edited, groups)
    return edited


def prune_model(model: nn.Module, graph: ModelGraph, plan: Plan) -> nn.Module:
    """A deep copy of ``model`` with every channel in ``plan.pruned`` physically removed.

    Producers lose output channels (weight dim 0 and bias), norms their per-channel parameters and
    running statistics, depthwise convs their channels (and ``groups``), consumers the matching
    input slice of weight dim 1 (a grouped conv: in each group's filters, the columns of its own
    input block; its ``groups`` stay). ``plan.bits`` is ignored. Raises ModelError when the plan
    names a group the graph does not have, an out-of-range channel, every channel of a group, or
    different numbers from the blocks of a group that a grouped conv splits.
    """
    return _apply(model, graph, plan, _prune_in_place)


def mask_model(model: nn.Module, graph: ModelGraph, plan: Plan) -> nn.Module:
    """A deep copy of ``model`` in which the pruned channels are zeroed in every consumer's input.

    Nothing is removed: this is the reference that :func:`prune_model` must agree with.
    """
    return _apply(
        model, graph, plan, lambda edited, groups: [zero_consumer_inputs(edited, g, pruned) for g, pruned in groups]
    )
