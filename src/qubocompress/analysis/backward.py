"""Per-sample statistics from one backward pass per calibration batch, read at every layer.

Two statistics come out of the same pass (:func:`backward_statistics`):

* channel contributions ``Σ_sites a·∂L_n/∂a`` of every sample n and channel of every pruning
  group (nats), measured at the input of every consumer of the group: what the data-driven
  importance scores (``analysis.importance``) and the Fisher prune damage
  (``analysis.sensitivity.fisher_prune_damage``) are made of;
* the per-sample squared weight gradients ``Σ_n (∂L_n/∂W)²`` of the requested Conv2d/Linear
  layers: the empirical Fisher's diagonal (``analysis.sensitivity.fisher_diagonals``).

In eval mode (the model is switched to it, and back) no sample's output depends on another
sample's, so one backward pass of the summed batch loss gives every sample's gradient at its own
activations: ``∂L/∂a_n = ∂L_n/∂a_n``. A layer's per-sample weight gradient follows from its input
``a_n`` and output gradient ``g_n`` alone: ``g_nᵀ a_n`` for Linear, and for Conv2d the weight
gradient of a convolution with the samples stacked as groups (``torch.nn.grad.conv2d_weight``;
it avoids materialising an unfold of the input). This is what per-sample-gradient libraries do
(Opacus, BackPACK); it costs about one extra weight-gradient pass. With it the VGG-style net's
whole analysis took 3.4-3.6 s instead of 10.3 s with ``torch.func.vmap`` and a second pass for
the contributions (2 cores; docs/benchmarks.md §3.2.3).
A weight that several calls or layers share gets the sum of their per-sample gradients before
it is squared, as the definition wants. Parameters' ``.grad`` are left untouched.

Only eager Conv2d/Linear layers running the stock ``forward`` are read this way
(:func:`layers_readable`); ``analysis.sensitivity`` falls back to one backward pass per sample for
the rest (TorchScript models, subclasses that change what the weight does, a weight another
module also uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qubocompress.analysis.graph import PruningGroup

# Samples per forward/backward pass: 128 ran the VGG Fisher pass 1.2x faster than 256 (2 cores).
BATCH_SIZE = 128
# Per-sample gradients are formed this many weights x samples at a time (float32: 256 MiB).
PER_SAMPLE_GRADIENT_FLOATS = 1 << 26


@dataclass(frozen=True)
class BackwardStatistics:
    """What :func:`backward_statistics` read, summed over the N samples it saw.

    Attributes:
        contributions: per group, an (N, channels) float64 array of ``Σ_sites a·∂L_n/∂a`` (nats):
            ``-∂L_n/∂m`` for a mask m multiplying the channel at every consumer's input, the
            first-order change of sample n's loss when the channel is removed, sign flipped.
        squared_gradients: per requested layer, ``Σ_n (∂L_n/∂W)²`` shaped like its weight
            (float64, nats² per weight²).
        samples: N.
    """

    contributions: list[np.ndarray]
    squared_gradients: dict[str, torch.Tensor]
    samples: int

    def mean_squared_gradients(self) -> dict[str, torch.Tensor]:
        """``(1/N) Σ_n (∂L_n/∂W)²`` per layer: the empirical Fisher's diagonal (zero when N = 0)."""
        return {name: total / max(self.samples, 1) for name, total in self.squared_gradients.items()}


def readable(module: nn.Module) -> bool:
    """True when :func:`backward_statistics` can form ``module``'s per-sample weight gradients:
    an eager Conv2d or Linear (or subclass) that runs the stock ``forward``."""
    return (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward) or (
        isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
    )


def layers_readable(model: nn.Module, layer_names: Sequence[str]) -> bool:
    """True when every layer is :func:`readable` and no module outside ``layer_names`` holds one
    of their weights (its use of the weight would be missed). False for a TorchScript model."""
    if isinstance(model, torch.jit.ScriptModule):
        return False
    modules = dict(model.named_modules())
    if not all(readable(modules[name]) for name in layer_names):
        return False
    wanted = {id(modules[name].weight) for name in layer_names}
    return not any(
        id(getattr(module, "weight", None)) in wanted for name, module in modules.items() if name not in layer_names
    )


def _conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero or ``padding_mode`` padding the conv applies to its input."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        # "same": total d·(k-1) per dim, the odd pixel on the right/bottom (as torch pads it)
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        (top, bottom), (left, right) = ((t // 2, t - t // 2) for t in totals)
        return (left, right, top, bottom)
    height, width = module.padding
    return (width, width, height, height)


def per_sample_weight_gradients(module: nn.Module, inputs: torch.Tensor, grad_outputs: torch.Tensor) -> torch.Tensor:
    """``∂L_n/∂W`` of every sample n, shape (N, *weight.shape), from the layer's input and output
    gradient of each sample (a :func:`readable` Conv2d or Linear)."""
    samples = len(inputs)
    if isinstance(module, nn.Linear):
        a = inputs.reshape(samples, -1, module.in_features)
        g = grad_outputs.reshape(samples, -1, module.out_features)
        return torch.bmm(g.transpose(1, 2), a)
    assert isinstance(module, nn.Conv2d)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    a = nn.functional.pad(inputs, _conv_padding(module), mode=mode)
    out_channels, in_per_group = module.weight.shape[:2]
    gradients = torch.nn.grad.conv2d_weight(
        a.reshape(1, -1, *a.shape[2:]),
        (samples * out_channels, in_per_group, *module.kernel_size),
        grad_outputs.reshape(1, -1, *grad_outputs.shape[2:]),
        stride=module.stride,
        dilation=module.dilation,
        groups=samples * module.groups,
    )
    return gradients.reshape(samples, *module.weight.shape)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode within the block; its train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def backward_statistics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    groups: Sequence[PruningGroup] = (),
    layers: Sequence[str] = (),
    batch_size: int = BATCH_SIZE,
) -> BackwardStatistics:
    """The contributions of ``groups`` and the squared per-sample gradients of ``layers`` (every
    one :func:`readable`) over ``(x, y)``, ``L_n`` the cross-entropy of sample n in eval mode.
    One forward and one backward pass per batch of ``batch_size`` samples."""
    modules = dict(model.named_modules())
    # each consumer's groups: (group index, first input feature, features) -- several after a concatenation
    consumer_groups: dict[str, list[tuple[int, int, int]]] = {}
    for index, group in enumerate(groups):
        for name, per_channel in group.consumers:
            span = (index, group.offset(name) * per_channel, group.channels * per_channel)
            consumer_groups.setdefault(name, []).append(span)
    contributions = [np.zeros((len(x), group.channels)) for group in groups]
    weight_of = {name: modules[name].weight for name in layers}
    sums = {id(weight): torch.zeros_like(weight, dtype=torch.float64) for weight in weight_of.values()}
    sites: list[tuple[list[tuple[int, int, int]], torch.Tensor]] = []
    calls: dict[int, list[tuple[nn.Module, torch.Tensor, list[torch.Tensor]]]] = {key: [] for key in sums}

    def before(name: str) -> Callable[[nn.Module, tuple], tuple]:
        def hook(module: nn.Module, args: tuple) -> tuple:
            value = args[0]
            # a fresh node per call, so its gradient is the one flowing through this consumer only
            site = value.view_as(value) if value.requires_grad else value.detach().requires_grad_()
            sites.append((consumer_groups.get(name, []), site))
            return (site, *args[1:])

        return hook

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Keep the call's input and, once the backward reaches it, its output gradient."""
        if not output.requires_grad:  # computed without autograd: it passes no gradient on
            return
        grad: list[torch.Tensor] = []
        calls[id(module.weight)].append((module, args[0].detach(), grad))
        output.register_hook(lambda g: grad.append(g.detach()))

    watched = sorted(set(consumer_groups) | set(layers))
    if not watched:
        return BackwardStatistics(contributions, {}, len(x))
    handles = [modules[name].register_forward_pre_hook(before(name)) for name in watched]
    handles += [modules[name].register_forward_hook(record) for name in layers]
    try:
        with evaluating(model), torch.enable_grad():
            for start in range(0, len(x), batch_size):
                sites.clear()
                for recorded in calls.values():
                    recorded.clear()
                logits = model(x[start : start + batch_size])
                loss = nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum")
                # asking for every site's gradient runs the backward through every watched layer
                grads = torch.autograd.grad(loss, [site for _, site in sites], allow_unused=True)
                for (spans, site), grad in zip(sites, grads, strict=True):
                    if grad is None:
                        continue
                    product = site.detach() * grad
                    for index, first, features in spans:
                        part = product.narrow(1, first, features).reshape(len(site), groups[index].channels, -1)
                        contributions[index][start : start + len(site)] += part.sum(dim=2).double().cpu().numpy()
                for key, recorded in calls.items():
                    _add_squared_gradients(sums[key], [(m, a, g[0]) for m, a, g in recorded if g])
    finally:
        for handle in handles:
            handle.remove()
        sites.clear()
        calls.clear()
    return BackwardStatistics(contributions, {name: sums[id(weight)] for name, weight in weight_of.items()}, len(x))


@torch.no_grad()
def _add_squared_gradients(total: torch.Tensor, recorded: list[tuple[nn.Module, torch.Tensor, torch.Tensor]]) -> None:
    """Add ``Σ_n (Σ_calls ∂L_n/∂W)²`` of one batch to ``total``, a few samples at a time."""
    if not recorded:
        return
    (first, inputs, grads), *others = recorded
    step = max(1, PER_SAMPLE_GRADIENT_FLOATS // max(total.numel(), 1))
    for start in range(0, len(inputs), step):
        rows = slice(start, start + step)
        gradient = per_sample_weight_gradients(first, inputs[rows], grads[rows])
        for module, a, g in others:
            gradient += per_sample_weight_gradients(module, a[rows], g[rows])
        total += gradient.square_().sum(dim=0).double()
