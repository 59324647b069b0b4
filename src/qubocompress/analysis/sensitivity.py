"""Per-layer quantization sensitivity, measured on the calibration split.

For every compressible layer n and bit-width b, the damage is the increase of the mean
cross-entropy (nats) on the calibration split when only layer n's weights are quantized to b bits
(every other layer stays fp32): ``Ω_n(b) = loss(W_n -> Q_b(W_n)) - loss(fp32)``. This is the
"measured loss increase" of DESIGN.md §2 and of OpenPPL's layer-wise analysis; the formulations
fit their surrogates to it (the paper form fits ``s[n]·d²``), so the QUBO speaks in units of loss.

The quantizer is passed in (``apply.quantize.fake_quantize`` in the pipeline) so that this
module never depends on the layer that applies the plan, and the damage measured is that of the
very quantizer the artifact will use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

Quantizer = Callable[[torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean cross-entropy (nats) of ``model`` in eval mode on ``(x, y)``."""
    total = 0.0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        total += float(nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum"))
    return total / max(len(x), 1)


@torch.no_grad()
def quant_damage(
    model: nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    quantizer: Quantizer,
    b_max: int = 8,
) -> dict[str, np.ndarray]:
    """Loss increase per layer and bit-width: ``result[name][b-1] = Ω_name(b)`` for b = 1..b_max."""
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        base = mean_loss(model, x, y)
        damage = {}
        for name in layer_names:
            weight = modules[name].weight
            original = weight.detach().clone()
            row = np.zeros(b_max)
            try:
                for bits in range(1, b_max + 1):
                    weight.copy_(quantizer(original, bits))
                    row[bits - 1] = mean_loss(model, x, y) - base
            finally:
                weight.copy_(original)
            damage[name] = row
        return damage
    finally:
        model.train(was_training)
