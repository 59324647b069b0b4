"""Parameter and multiply-accumulate counts of a model."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases; BatchNorm running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on one C×H×W input, over Conv2d and Linear layers.

    Conv: output elements × in_channels/groups × kernel area; Linear: in × out features per
    output row. Biases, norms, activations and pools are not counted.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kernel_area = module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * (module.in_channels // module.groups) * kernel_area

    def linear_hook(module: nn.Linear, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def describe(model: nn.Module, input_shape: tuple[int, int, int], name: str | None = None) -> str:
    """One line such as ``"vgg: 0.15 M params, 7.4 M MACs"``."""
    label = name or type(model).__name__
    params = count_params(model) / 1e6
    macs = count_macs(model, input_shape) / 1e6
    return f"{label}: {params:.2f} M params, {macs:.1f} M MACs"
