"""Per-output-channel symmetric uniform weight quantization.

One quantizer serves every consumer (the artifact writer, fine-tuning, the sensitivity analysis),
so a weight evaluated during the search is bit-for-bit the weight stored on disk.

Levels at ``b`` bits:

* ``b >= 2``: the signed integers ``-(2**(b-1) - 1) .. 2**(b-1) - 1`` (restricted symmetric range,
  ``2**b - 1`` levels, zero exact), ``w ≈ code * scale``;
* ``b == 1``: binary ``{-1, +1} * scale`` with ``scale = mean|w|`` of the channel (XNOR-Net's
  optimum for the L2 error), ``sign(0) := +1``.

The scale of each output channel (dim 0) is chosen from a grid of clipping ratios
``r * max|w| / qmax`` by least squared error, vectorised over channels: at 2-4 bits clipping the
largest weights typically halves the error compared with ``r = 1``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from qubocompress.errors import ModelError, ProblemError
from qubocompress.models.user import is_compressible_module

FULL_PRECISION_BITS = 32
MAX_QUANT_BITS = 16
CLIP_RATIOS = torch.linspace(1.0, 0.2, 20)
# Elements (rows × ratios × weights-per-row) the scale search handles at once: cache-sized blocks
# are fastest on a CPU, big blocks (few kernel launches) on a GPU (64 MiB of fp32 at most).
SEARCH_BLOCK_ELEMENTS_CPU = 2**16
SEARCH_BLOCK_ELEMENTS_GPU = 2**24
# Scale of a channel whose weights are all zero: its codes are 0 (or +1 at 1 bit), its value ~0.
ZERO_CHANNEL_SCALE = 1e-8


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized weight: ``dequantize() == codes * scale`` broadcast over dim 0.

    Attributes:
        codes: integer codes, shape ``shape``; int8 storage for <= 8 bits, int16 above.
        scale: float32, shape ``(shape[0],)``: the step size of each output channel.
        bits: bit-width (1..16).
        shape: shape of the original weight.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    shape: tuple[int, ...]


def check_bits(bits: int, where: str = "weight") -> int:
    """Return ``bits`` as int if it is a quantizable bit-width (1..16), else raise ProblemError."""
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= int(bits) <= MAX_QUANT_BITS:
        raise ProblemError(
            f"{where}: cannot quantize to {bits!r} bits; use an integer in 1..{MAX_QUANT_BITS} "
            f"(or {FULL_PRECISION_BITS} to keep full precision)"
        )
    return int(bits)


def max_code(bits: int) -> int:
    """Largest code magnitude at ``bits`` bits (1 for binary weights)."""
    return 1 if bits == 1 else 2 ** (bits - 1) - 1


def _code_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16


def quantize_tensor(w: torch.Tensor, bits: int) -> QuantizedTensor:
    """Quantize ``w`` per output channel (dim 0) to ``bits`` bits (see the module docstring)."""
    bits = check_bits(bits)
    if w.ndim == 0 or w.shape[0] == 0:
        raise ProblemError(f"cannot quantize a tensor of shape {tuple(w.shape)}: it needs output channels")
    flat = w.detach().to(torch.float32).reshape(w.shape[0], -1)
    if bits == 1:
        scale = flat.abs().mean(dim=1)
        codes = torch.where(flat >= 0, 1.0, -1.0)
    else:
        scale, codes = _search_scale(flat, max_code(bits))
    scale = torch.where(scale > 0, scale, torch.full_like(scale, ZERO_CHANNEL_SCALE))
    return QuantizedTensor(
        codes=codes.to(_code_dtype(bits)).reshape(w.shape),
        scale=scale.contiguous(),
        bits=bits,
        shape=tuple(w.shape),
    )


def _search_scale(flat: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and codes minimising the squared error over :data:`CLIP_RATIOS`.

    All ratios are tried at once on blocks of rows (a few large kernels rather than many small
    ones: this runs at every step of quantization-aware training).
    """
    max_abs = flat.abs().amax(dim=1)
    safe_max = torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))
    steps = CLIP_RATIOS.to(device=flat.device, dtype=flat.dtype) / qmax
    scales = safe_max[:, None] * steps[None, :]  # (rows, ratios)
    block_elements = SEARCH_BLOCK_ELEMENTS_CPU if flat.device.type == "cpu" else SEARCH_BLOCK_ELEMENTS_GPU
    rows_per_block = max(1, block_elements // (steps.numel() * flat.shape[1]))
    errors = []
    for start in range(0, flat.shape[0], rows_per_block):
        block = flat[start : start + rows_per_block, None, :]
        block_scales = scales[start : start + rows_per_block, :, None]
        codes = torch.clamp(torch.round(block / block_scales), -qmax, qmax)
        errors.append((codes * block_scales - block).square().sum(dim=2))
    best = torch.cat(errors).argmin(dim=1)  # the first (largest) ratio wins ties
    best_scale = scales.gather(1, best[:, None]).squeeze(1)
    codes = torch.clamp(torch.round(flat / best_scale[:, None]), -qmax, qmax)
    return torch.where(max_abs > 0, best_scale, torch.zeros_like(best_scale)), codes


def dequantize(qt: QuantizedTensor) -> torch.Tensor:
    """The float32 weight a :class:`QuantizedTensor` stands for."""
    view = (-1,) + (1,) * (len(qt.shape) - 1)
    return qt.codes.to(torch.float32) * qt.scale.reshape(view)


def fake_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``dequantize(quantize_tensor(w, bits))`` in ``w``'s dtype (no gradient)."""
    return dequantize(quantize_tensor(w, bits)).to(w.dtype)


def weight_quant_error(w: torch.Tensor, bits: int) -> float:
    """Mean squared error of quantizing ``w`` to ``bits`` bits (units of w², 0 at 32 bits)."""
    if bits == FULL_PRECISION_BITS:
        return 0.0
    w32 = w.detach().to(torch.float32)
    return float((fake_quantize(w32, bits) - w32).square().mean())


def quantized_layers(model: nn.Module, bits: Mapping[str, int]) -> dict[str, int]:
    """The layers of ``bits`` to quantize: name -> bits, 32-bit (full precision) entries left out.

    Raises ModelError when a name is not a Conv2d/Linear of ``model`` and ProblemError for an
    impossible bit-width.
    """
    modules = dict(model.named_modules())
    chosen: dict[str, int] = {}
    for name, b in bits.items():
        module = modules.get(name)
        if module is None or not is_compressible_module(module):
            found = "no such module" if module is None else type(module).__name__
            raise ModelError(f"bit-width given for {name!r}, which is not a Conv2d/Linear of the model ({found})")
        if b != FULL_PRECISION_BITS:
            chosen[name] = check_bits(b, where=f"layer {name!r}")
    return chosen


def quantize_model_weights(model: nn.Module, bits: Mapping[str, int]) -> nn.Module:
    """A deep copy of ``model`` whose Conv2d/Linear weights named in ``bits`` hold their
    dequantized values (32 bits or absent: untouched). Biases and norms stay float32."""
    chosen = quantized_layers(model, bits)
    quantized = copy.deepcopy(model)
    modules = dict(quantized.named_modules())
    with torch.no_grad():
        for name, b in chosen.items():
            weight = modules[name].weight
            weight.copy_(fake_quantize(weight, b))
    return quantized


# The widest bit-width :func:`inferred_bits` tries: the formulations offer at most 8.
WIDEST_INFERRED_BITS = 8


def inferred_bits(model: nn.Module) -> dict[str, int]:
    """Layer -> the fewest bits at which each Conv2d/Linear weight of ``model`` is already exactly
    quantized (``fake_quantize`` gives it back unchanged); layers quantized at no width up to 8
    are left out (kept float32). What a compressed model carries without its plan."""
    found: dict[str, int] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not (isinstance(module, (nn.Conv2d, nn.Linear)) and is_compressible_module(module)):
                continue
            weight = module.weight.detach()
            for bits in range(1, WIDEST_INFERRED_BITS + 1):
                if torch.allclose(fake_quantize(weight, bits), weight, rtol=1e-6, atol=0.0):
                    found[name] = bits
                    break
    return found
