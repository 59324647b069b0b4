"""Prune channels without changing any shape: zero their input slice in every consumer.

Why this is exactly physical pruning: a channel of a :class:`~qubocompress.analysis.graph.PruningGroup`
reaches the rest of the network only through the group's consumers. Its producers, norms and
depthwise convs (carriers: depthwise output channel i reads only input channel i, which belongs to
the same group), the residual adds and channel-wise products joining it, and the concatenations
that carry it to a consumer at an offset all stay inside the group, and the tracer freezes any
group whose channels leave by another way (the model output, a reshape, a concatenation into a
grouped conv). So zeroing the weights that read channel i in every consumer (weight dim 1,
features ``[(o+i)*k, (o+i+1)*k)`` for ``k`` input features per channel and the group's offset
``o`` in that consumer's input; in a grouped conv, whose weight is ``[out, in/g, kh, kw]``, only
the filters of the conv group j = c // (in/g) of input channel c read it, at column c mod (in/g))
removes every effect of the channel,
which is what :func:`qubocompress.apply.prune.prune_model` does by cutting tensors; the producer,
norm and depthwise rows can stay as they are, since nothing reads them any more. (The one
difference: a pruned channel carrying inf or NaN would still poison a masked consumer, as
``0 * inf`` is NaN; a physically pruned one would not.)

:func:`masked_channels` applies the mask for the duration of a ``with`` block (sensitivity
analysis); :func:`zero_consumer_inputs` applies it for good (``apply.prune.mask_model``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from qubocompress.analysis.graph import ModelGraph, PruningGroup
from qubocompress.errors import ModelError

# (weight or a view of its rows, feature indices along dim 1, the values they held)
_Saved = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def feature_indices(channels: torch.Tensor, per_channel: int, offset: int = 0) -> torch.Tensor:
    """Input features of ``channels`` when each channel spans ``per_channel`` consecutive features
    and the group starts at channel ``offset`` of the input (after a concatenation)."""
    return ((channels[:, None] + offset) * per_channel + torch.arange(per_channel)).flatten()


def graph_module(model: nn.Module, name: str, kinds: tuple[type[nn.Module], ...], role: str) -> nn.Module:
    """The submodule ``name`` of ``model``, checked to be one of ``kinds`` (ModelError otherwise)."""
    try:
        module = model.get_submodule(name)
    except AttributeError as exc:
        raise ModelError(f"the model graph names {role} {name!r}, which the model does not have") from exc
    if not isinstance(module, kinds):
        raise ModelError(f"the model graph names {role} {name!r}, a {type(module).__name__}, not a {kinds[0].__name__}")
    return module


def consumer_module(model: nn.Module, name: str, per_channel: int) -> nn.Module:
    """The consumer ``name``: a Conv2d (one feature per channel) or a Linear."""
    module = graph_module(model, name, (nn.Conv2d, nn.Linear), "consumer")
    if isinstance(module, nn.Conv2d) and per_channel != 1:
        raise ModelError(f"conv {name!r} cannot take {per_channel} input features per channel")
    return module


def weight_columns(module: nn.Module, features: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
    """Where a consumer's weight reads input features ``features`` (sorted): ``(output rows,
    columns of weight dim 1)``, one pair per conv group that reads some. An ungrouped layer: every
    row, the features themselves; a grouped conv (weight ``[out, in/g, kh, kw]``): group j's rows
    and the features of its input block, less the block's start."""
    groups = getattr(module, "groups", 1)
    if groups == 1:
        return [(slice(None), features)]
    per_in, per_out = module.weight.shape[1], module.weight.shape[0] // groups
    block = features // per_in
    return [
        (slice(j * per_out, (j + 1) * per_out), features[block == j] - j * per_in) for j in torch.unique(block).tolist()
    ]


def zero_consumer_inputs(model: nn.Module, group: PruningGroup, channels: torch.Tensor) -> list[_Saved]:
    """Zero the input slice of ``channels`` (of ``group``) in every consumer of ``model``, in place.

    Returns what was overwritten, in order, so that the caller can put it back.
    """
    saved: list[_Saved] = []
    with torch.no_grad():
        for name, per_channel in group.consumers:
            module = consumer_module(model, name, per_channel)
            features = feature_indices(channels, per_channel, group.offset(name)).to(module.weight.device)
            for rows, columns in weight_columns(module, features):
                weight = module.weight[rows]  # a view: edits reach the module's weight
                saved.append((weight, columns, weight.index_select(1, columns).clone()))
                weight.index_fill_(1, columns, 0.0)
    return saved


def _restore(saved: list[_Saved]) -> None:
    with torch.no_grad():
        for weight, features, values in reversed(saved):
            weight.index_copy_(1, features, values)


def _channel_tensor(group: PruningGroup, channels: Sequence[int]) -> torch.Tensor:
    indices = sorted({int(c) for c in channels})
    if any(not 0 <= c < group.channels for c in indices):
        raise ModelError(f"cannot mask channels {indices} of group {group.name!r}, which has {group.channels}")
    return torch.tensor(indices, dtype=torch.long)


@contextmanager
def masked_channels(model: nn.Module, graph: ModelGraph, channels: Mapping[int, Sequence[int]]) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes as if the channels were pruned.

    ``channels`` maps a group index of ``graph`` to the channel indices to remove. The consumers'
    weights are edited in place and restored on exit, also when the block raises; no copy of the
    model is made, so this costs nothing but the edited slices. Yields ``model``.
    """
    saved: list[_Saved] = []
    try:
        for index, chosen in channels.items():
            if not 0 <= index < len(graph.groups):
                raise ModelError(f"no channel group {index} in the model graph ({len(graph.groups)} groups)")
            group = graph.groups[index]
            if len(chosen):
                saved += zero_consumer_inputs(model, group, _channel_tensor(group, chosen))
        yield model
    finally:
        _restore(saved)
