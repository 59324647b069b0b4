"""Per-layer quantization sensitivity and per-group pruning damage, on the calibration split.

Layer methods (:data:`LAYER_SENSITIVITY_METHODS`); each returns, per layer n, an array over
bit-widths b = 1..b_max (entry ``b-1``):

* ``measured``: ``Ω_n(b) = loss(W_n -> Q_b(W_n)) - loss(fp32)``, the increase of the mean
  cross-entropy (nats) on the calibration split when only layer n is quantized (every other
  layer fp32). The "measured loss increase" of DESIGN.md §2 and of OpenPPL's layer-wise
  analysis. Cost: ``layers × b_max`` forward passes over the split.
* ``mse``: ``κ · Σ (Q_b(W_n) - W_n)²`` over the layer's weights: HAWQ's estimate below with one
  curvature for every layer (``Tr(H)/N = 2κ``), so a layer with more weights counts more. κ (nats
  per weight²) is fitted to one measurement (:func:`mse_loss_scale`): the loss increase with every
  layer at ``MSE_CALIBRATION_BITS`` bits (fewer if the loss does not rise there) over the summed
  weight errors there. That puts the
  estimate in nats, like the measured prune damage the ``budget`` formulation adds it to (raw
  weight² there collapsed the VGG plans to 39-59 % top-1 at 16x, measured); the paper
  formulation's balanced β is unchanged by the scale. Cost: two forward passes (or a few more).
* ``hessian``: HAWQ-V2 (Dong et al. 2020): ``Ω_n(b) ≈ Tr(H_n)/N_n · ||Q_b(W_n) - W_n||² / 2``,
  with ``H_n`` the Hessian of the mean calibration loss w.r.t. the layer's N_n weights, its trace
  from Hutchinson's estimator (:func:`hessian_traces`). A second-order estimate of the loss
  increase, in nats, so comparable with ``measured``. The trace of a layer that is not at a
  minimum can come out negative; it is reported as estimated (the formulations clip negative
  damage to 0).
* ``fisher``: the second-order estimate with the empirical Fisher's diagonal in place of the
  Hessian, weight by weight: ``Ω_n(b) ≈ ½ Σ_i F_ii (Q_b(w_i) - w_i)²``, ``F_ii = (1/N) Σ_s
  (∂L_s/∂w_i)²`` over the N calibration samples (:func:`fisher_diagonals`; the FIT metric of
  Zandonati et al. 2022 with each weight's own rounding error). It also estimates the prune
  damage of the ``budget`` formulation (:func:`fisher_prune_damage`), so the whole analysis is
  one backward pass per batch (``analysis.backward``) and no loss is measured: 3-4 s instead of
  50-67 s on the VGG-style net and 10-11 s instead of ~10 minutes on ResNet-20 (2 cores). It
  mostly underestimates large damages (VGG-style net, measured over fisher: 1.2-15x at 1 bit,
  0.7-6.9x at 2 bits, 1.6-12x with half a layer's channels pruned), and yet its plans were as
  good after fine-tuning on both built-in models (the same certified plans as ``measured`` at
  24x and 32x on the VGG-style net; docs/benchmarks.md §3.2.2), so it is the budget
  formulation's default.

The quantizer is passed in (``apply.quantize.fake_quantize`` in the pipeline) so that this
module never depends on the layer that applies the plan, and the damage measured is that of the
very quantizer the artifact will use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from qubocompress.analysis.backward import backward_statistics, evaluating, layers_readable
from qubocompress.analysis.graph import ModelGraph
from qubocompress.analysis.masking import masked_channels
from qubocompress.errors import ProblemError
from qubocompress.progress import track
from qubocompress.names import LAYER_SENSITIVITIES
from qubocompress.problem.spec import prune_order

Quantizer = Callable[[torch.Tensor, int], torch.Tensor]

LAYER_SENSITIVITY_METHODS = LAYER_SENSITIVITIES
# Rademacher probes of Hutchinson's estimator: its standard error falls as 1/sqrt(samples).
HUTCHINSON_SAMPLES = 32
# Inference batch: 256 ran the VGG calibration pass 2.3x faster than 1024 on 2 cores (measured;
# activations of a smaller batch stay in cache).
LOSS_BATCH_SIZE = 256
HESSIAN_BATCH_SIZE = 256
# Bits of the one measurement that puts weight-MSE in nats: with every layer at 4 bits the loss
# rises measurably on the built-in models but is far from the saturation of 1-2 bits.
MSE_CALIBRATION_BITS = 4


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = LOSS_BATCH_SIZE) -> float:
    """Mean cross-entropy (nats) of ``model`` in eval mode on ``(x, y)``."""
    total = 0.0
    with evaluating(model):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            total += float(nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum"))
    return total / max(len(x), 1)


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of the compressible layer ``name`` (ProblemError if there is none). Looked up
    through ``named_modules``, which TorchScript modules support (``get_submodule`` they do not)."""
    module = dict(model.named_modules()).get(name)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ProblemError(f"the model has no layer {name!r} with a weight")
    return weight


@contextmanager
def quantized_weights(model: nn.Module, bits: Mapping[str, int], quantizer: Quantizer) -> Iterator[nn.Module]:
    """Within the block, the weights of the layers in ``bits`` hold their quantized values.

    Edits in place and restores the originals on exit, also when the block raises. Yields ``model``.
    """
    originals: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, b in bits.items():
                weight = layer_weight(model, name)
                originals.append((weight, weight.detach().clone()))
                weight.copy_(quantizer(originals[-1][1], b))
        yield model
    finally:
        with torch.no_grad():
            for weight, original in reversed(originals):
                weight.copy_(original)


def quant_damage(
    model: nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    quantizer: Quantizer,
    b_max: int = 8,
    bit_widths: Sequence[int] | None = None,
    base_loss: float | None = None,
) -> dict[str, np.ndarray]:
    """Measured loss increase: ``result[name][b-1] = Ω_name(b)`` (nats) for b = 1..b_max.

    ``bit_widths``: measure only these (the other entries are 0); ``base_loss``: the fp32
    :func:`mean_loss` on ``(x, y)`` if already known. One pass per layer and bit-width (+1).
    """
    base = mean_loss(model, x, y) if base_loss is None else base_loss
    damage = {}
    for name in track(layer_names, "measuring each layer's quantization damage"):
        row = np.zeros(b_max)
        for bits in bit_widths or range(1, b_max + 1):
            with quantized_weights(model, {name: bits}, quantizer):
                row[bits - 1] = mean_loss(model, x, y) - base
        damage[name] = row
    return damage


@torch.no_grad()
def squared_rounding_errors(weight: torch.Tensor, quantizer: Quantizer, b_max: int) -> Iterator[torch.Tensor]:
    """``(Q_b(W) - W)²`` weight by weight (float64, weight²) for b = 1..b_max, one tensor at a time."""
    weight = weight.detach()
    for bits in range(1, b_max + 1):
        yield (quantizer(weight, bits) - weight).double().square()


def weight_error(
    model: nn.Module, layer_names: Sequence[str], quantizer: Quantizer, b_max: int = 8
) -> dict[str, np.ndarray]:
    """``result[name][b-1] = Σ (Q_b(W) - W)²`` over the layer's weights (units: weight²)."""
    return {
        name: np.array(
            [float(error.sum()) for error in squared_rounding_errors(layer_weight(model, name), quantizer, b_max)]
        )
        for name in layer_names
    }


def mse_loss_scale(
    model: nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    quantizer: Quantizer,
    errors: Mapping[str, np.ndarray],
    bits: int,
) -> float:
    """κ in nats per weight²: the loss increase on ``(x, y)`` with every layer at ``bits`` over
    ``Σ_n errors[n][bits-1]``. Where the loss does not rise at ``bits`` (an untrained model, or
    noise), one bit fewer is tried, down to 1; 0 when it never rises."""
    base = mean_loss(model, x, y)
    for width in range(bits, 0, -1):
        total = sum(float(errors[name][width - 1]) for name in layer_names)
        if total <= 0:
            continue
        with quantized_weights(model, dict.fromkeys(layer_names, width), quantizer):
            increase = mean_loss(model, x, y) - base
        if increase > 0:
            return increase / total
    return 0.0


@contextmanager
def _requiring_grad(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    flags = [t.requires_grad for t in tensors]
    try:
        for tensor in tensors:
            tensor.requires_grad_(True)
        yield
    finally:
        for tensor, flag in zip(tensors, flags, strict=True):
            tensor.requires_grad_(flag)


def hessian_traces(
    model: nn.Module,
    layer_names: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    samples: int = HUTCHINSON_SAMPLES,
    seed: int = 0,
    batch_size: int = HESSIAN_BATCH_SIZE,
) -> dict[str, float]:
    """Hutchinson estimates of ``Tr(H_n)`` for every layer n: H_n = ∂²L/∂W_n², L the mean
    cross-entropy (nats) over ``(x, y)`` in eval mode.

    Each of ``samples`` probes draws Rademacher vectors v (±1, from a generator seeded with
    ``seed``) for all layers at once and computes the Hessian-vector product ``Hv`` by double
    backward over the whole split; ``v_n·(Hv)_n`` is an unbiased estimate of ``Tr(H_n)`` (the
    cross-layer blocks average out), as in PyHessian/HAWQ-V2. Cost: ``samples`` × (forward +
    two backward passes) over the split. Parameters' ``.grad`` are left untouched.
    """
    if samples < 1:
        raise ProblemError(f"the Hutchinson estimator needs at least 1 sample, got {samples}")
    weights = [layer_weight(model, name) for name in layer_names]
    generator = torch.Generator().manual_seed(seed)
    sums = np.zeros(len(weights))
    with evaluating(model), _requiring_grad(weights), torch.enable_grad():
        for _ in range(samples):
            probes = [
                (torch.randint(0, 2, w.shape, generator=generator) * 2 - 1).to(device=w.device, dtype=w.dtype)
                for w in weights
            ]
            for start in range(0, len(x), batch_size):
                logits = model(x[start : start + batch_size])
                loss = nn.functional.cross_entropy(logits, y[start : start + batch_size], reduction="sum") / len(x)
                grads = torch.autograd.grad(loss, weights, create_graph=True)
                projected = sum((g * v).sum() for g, v in zip(grads, probes, strict=True))
                products = torch.autograd.grad(projected, weights)
                for i, (hv, v) in enumerate(zip(products, probes, strict=True)):
                    sums[i] += float((hv * v).double().sum())
    return {name: float(total / samples) for name, total in zip(layer_names, sums, strict=True)}


def _looped_squared_gradients(
    model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """``Σ_s (∂L_s/∂w)²`` over the samples of ``(x, y)`` for each tensor of ``weights`` (in its
    order), one backward pass per sample: for models whose layers ``analysis.backward`` cannot read."""
    tensors = list(weights.values())
    sums = [torch.zeros_like(tensor, dtype=torch.float64) for tensor in tensors]
    with _requiring_grad(tensors), torch.enable_grad():
        for sample, label in zip(x, y, strict=True):
            loss = nn.functional.cross_entropy(model(sample[None]), label[None])
            for total, gradient in zip(sums, torch.autograd.grad(loss, tensors), strict=True):
                total += gradient.double().square()
    return sums


def fisher_diagonals(
    model: nn.Module, layer_names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal of every layer's weight: ``F_ii = (1/N) Σ_s (∂L_s/∂w_i)²``
    over the N samples of ``(x, y)``, ``L_s`` the cross-entropy (nats) of sample s in eval mode;
    float64 tensors shaped like the weights (units: nats per weight²). Cost: one forward and one
    backward pass per batch (``analysis.backward``); one per sample where the per-sample gradients
    cannot be read off the layers (TorchScript, a Conv2d/Linear subclass with its own forward, a
    weight that another module uses too). Parameters' ``.grad`` are left untouched."""
    weights = {name: layer_weight(model, name) for name in layer_names}
    if len(x) == 0:
        return {name: torch.zeros_like(weight, dtype=torch.float64) for name, weight in weights.items()}
    if layers_readable(model, layer_names):
        return backward_statistics(model, x, y, layers=layer_names).mean_squared_gradients()
    with evaluating(model):
        sums = _looped_squared_gradients(model, weights, x, y)
    return {layer: total / len(x) for layer, total in zip(weights, sums, strict=True)}


def layer_damage(
    model: nn.Module,
    layers: ModelGraph | Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor,
    quantizer: Quantizer,
    b_max: int = 8,
    method: str = "measured",
    seed: int = 0,
    hessian_samples: int = HUTCHINSON_SAMPLES,
) -> dict[str, np.ndarray]:
    """Quantization damage of every layer at 1..b_max bits by ``method`` (see the module docstring).

    ``layers``: a traced graph (all its layers) or layer names. ``seed`` seeds the Hutchinson
    probes of ``hessian``; the other methods are deterministic without it.
    """
    if method not in LAYER_SENSITIVITY_METHODS:
        raise ProblemError(
            f"unknown layer sensitivity {method!r}; choose one of {', '.join(LAYER_SENSITIVITY_METHODS)}"
        )
    names = [layer.name for layer in layers.layers] if isinstance(layers, ModelGraph) else list(layers)
    if method == "measured":
        return quant_damage(model, names, x, y, quantizer, b_max)
    if method == "fisher":
        return fisher_damage(model, fisher_diagonals(model, names, x, y), quantizer, b_max)
    errors = weight_error(model, names, quantizer, b_max)
    if method == "mse":
        scale = mse_loss_scale(model, names, x, y, quantizer, errors, min(MSE_CALIBRATION_BITS, b_max))
        return {name: scale * row for name, row in errors.items()}
    traces = hessian_traces(model, names, x, y, hessian_samples, seed)
    return {name: traces[name] / layer_weight(model, name).numel() * errors[name] / 2 for name in names}


def fisher_damage(
    model: nn.Module, diagonals: Mapping[str, torch.Tensor], quantizer: Quantizer, b_max: int = 8
) -> dict[str, np.ndarray]:
    """``result[name][b-1] = ½ Σ_i F_ii (Q_b(w_i) - w_i)²`` (nats) for b = 1..b_max and every layer
    of ``diagonals``, the Fisher diagonals of :func:`fisher_diagonals`."""
    return {
        name: np.array(
            [
                float((diagonal * error).sum()) / 2
                for error in squared_rounding_errors(layer_weight(model, name), quantizer, b_max)
            ]
        )
        for name, diagonal in diagonals.items()
    }


def prune_damage(
    model: nn.Module,
    graph: ModelGraph,
    group_index: int,
    options: Sequence[int],
    x: torch.Tensor,
    y: torch.Tensor,
    importance: np.ndarray,
    base_loss: float | None = None,
) -> np.ndarray:
    """Measured loss increase (nats) of pruning, for each count k in ``options``, the k least
    important channels of group ``group_index`` (rest of the model fp32 and unpruned).

    Channels are ordered by :func:`prune_order` over the group's blocks; pruning is simulated by
    :func:`masked_channels`, which equals physical pruning. A count of 0 costs no pass and is exactly 0. ``base_loss``:
    the fp32 :func:`mean_loss` on ``(x, y)`` if already known (saves one pass).
    """
    group = graph.groups[group_index]
    if any(not 0 <= int(k) < group.channels for k in options):
        raise ProblemError(
            f"prune options {list(options)} of group {group.name!r} must lie in [0, {group.channels - 1}]"
        )
    order = prune_order(importance, group.blocks)
    base = mean_loss(model, x, y) if base_loss is None else base_loss
    damage = np.zeros(len(options))
    for i, count in enumerate(options):
        if count:
            with masked_channels(model, graph, {group_index: order[: int(count)].tolist()}):
                damage[i] = mean_loss(model, x, y) - base
    return damage


def fisher_prune_damage(
    contributions: np.ndarray, importance: np.ndarray, options: Sequence[int], blocks: int = 1
) -> np.ndarray:
    """Estimated loss increase (nats) of pruning, for each count k in ``options``, the k least
    important channels of a group: ``½ (1/N) Σ_s (Σ_{c pruned} u_sc)²``, the empirical-Fisher
    second-order term of removing them together (cross-channel terms included; the first-order
    term, which averages out near a trained minimum, is left out as for the layers).

    ``contributions``: the group's (N, channels) ``u_sc = Σ_sites a·∂L_s/∂a`` from
    ``analysis.backward.backward_statistics``; channels are ordered by :func:`prune_order` over the
    group's ``blocks``.
    """
    order = prune_order(importance, blocks)
    samples = max(len(contributions), 1)
    return np.array(
        [float(np.square(contributions[:, order[: int(count)]].sum(axis=1)).sum()) / (2 * samples) for count in options]
    )
