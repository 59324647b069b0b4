"""Quantization-aware fine-tuning with the straight-through estimator (STE).

During training every Conv2d/Linear weight named in ``bits`` is replaced in the forward pass by
its fake-quantized value, computed with the very quantizer the artifact uses
(:func:`qubocompress.apply.quantize.fake_quantize`: per-channel scales searched afresh each
step), while the gradient flows to the latent full-precision weight as if rounding were the
identity. Afterwards the model holds the latent float weights again (no parametrization left);
export them with ``quantize_model_weights`` or ``save_artifact``, which quantize them the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from qubocompress.apply.quantize import fake_quantize, quantized_layers
from qubocompress.errors import DataError, ModelError
from qubocompress.models.train import augment_batch, training_layout
from qubocompress.progress import track

Progress = Callable[[str], None]
MOMENTUM = 0.9
# Largest random shift of the training augmentation, as a fraction of the image side (2 px at 28).
SHIFT_FRACTION = 1 / 14


class SplitLike(Protocol):
    """Anything with float inputs ``x`` (N×C×H×W or N×F) and int64 labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor


class _StraightThroughQuantize(torch.autograd.Function):
    """Forward: fake-quantize; backward: pass the gradient through unchanged."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bits: int) -> torch.Tensor:
        quantized = fake_quantize(weight, bits)
        if weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last):
            quantized = quantized.contiguous(memory_format=torch.channels_last)
        return quantized

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class FakeQuantWeight(nn.Module):
    """A parametrization that fake-quantizes a weight to ``bits`` bits with the STE."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThroughQuantize.apply(weight, self.bits)


def _check_settings(train: SplitLike, epochs: int, lr: float, batch_size: int) -> None:
    if epochs < 0:
        raise ModelError(f"fine-tuning epochs must be >= 0, got {epochs}")
    if not lr > 0:
        raise ModelError(f"fine-tuning learning rate must be > 0, got {lr}")
    if batch_size < 1:
        raise ModelError(f"fine-tuning batch size must be >= 1, got {batch_size}")
    if train.x.shape[0] == 0 or train.x.shape[0] != train.y.shape[0]:
        raise DataError(
            f"training split needs as many labels as inputs (> 0); got {train.x.shape[0]} inputs, "
            f"{train.y.shape[0]} labels"
        )


def shift_pixels(image_size: int) -> int:
    """Largest random shift of the augmentation for images of side ``image_size`` (2 px at 28)."""
    return max(1, round(image_size * SHIFT_FRACTION))


def _batch_count(n: int, batch_size: int) -> int:
    """Batches per epoch; a trailing batch of one sample is dropped (BatchNorm cannot train on it)."""
    count = -(-n // batch_size)
    return count - 1 if count > 1 and n % batch_size == 1 else count


def _batches(n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Shuffled index batches of one epoch."""
    return torch.randperm(n, generator=generator).split(batch_size)[: _batch_count(n, batch_size)]


def finetune(
    model: nn.Module,
    bits: Mapping[str, int],
    train: SplitLike,
    epochs: int,
    lr: float = 0.01,
    batch_size: int = 128,
    seed: int = 0,
    augment: bool = True,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``epochs`` with its ``bits`` layers fake-quantized (STE).

    SGD with Nesterov momentum 0.9, learning rate ``lr`` decayed to 0 by a per-step cosine,
    cross-entropy loss; ``augment`` shifts 4-D inputs randomly by up to 2 px (at 28 px; no flips,
    since the split does not say whether its images are mirror-symmetric). Deterministic given
    ``seed``; the caller's global RNG is left untouched. ``bits`` may be empty (plain
    fine-tuning); 32-bit entries stay full precision. ``progress`` gets one line per epoch.

    Returns one record per epoch: ``epoch`` (1-based), ``seconds`` (wall time), ``train_loss``
    (mean cross-entropy of the epoch's steps, nats), ``train_acc`` (top-1 of the fake-quantized
    model on the augmented batches, 0..1) and ``lr`` (at the epoch's end). The model is left with
    its latent float weights and its original train/eval mode.
    """
    _check_settings(train, epochs, lr, batch_size)
    chosen = quantized_layers(model, bits)
    if epochs == 0:
        return []
    modules = dict(model.named_modules())
    for name in chosen:
        if parametrize.is_parametrized(modules[name], "weight"):
            raise ModelError(f"layer {name!r} already has a parametrization on its weight; remove it first")
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ModelError(f"{type(model).__name__} has no parameters to fine-tune")
    device = parameter.device
    was_training = model.training
    registered: list[nn.Module] = []
    try:
        layout = training_layout(model, train.x)
        model.to(memory_format=layout)  # channels-last: ~30% faster convolutions on CPU
        for name, b in chosen.items():
            parametrize.register_parametrization(modules[name], "weight", FakeQuantWeight(b))
            registered.append(modules[name])
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _deterministic_cudnn():
            torch.manual_seed(seed)
            return _train(model, train, epochs, lr, batch_size, seed, augment, progress, device, layout)
    finally:
        for module in registered:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


@contextmanager
def _deterministic_cudnn() -> Iterator[None]:
    """cuDNN in deterministic mode (no benchmark autotuning) for the block, then as it was."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _cosine(lr: float, step: int, total_steps: int) -> float:
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def _train(
    model: nn.Module,
    train: SplitLike,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    augment: bool,
    progress: Progress | None,
    device: torch.device,
    layout: torch.memory_format,
) -> list[dict[str, float]]:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True)
    n = train.x.shape[0]
    total_steps = epochs * _batch_count(n, batch_size)
    step = 0
    history: list[dict[str, float]] = []
    model.train()
    for epoch in track(range(1, epochs + 1), "fine-tuning"):
        started = time.perf_counter()
        loss_sum, correct, seen, batches = 0.0, 0, 0, 0
        batch_count = _batch_count(n, batch_size)
        for index in track(_batches(n, batch_size, generator), f"  epoch {epoch}/{epochs}", batch_count):
            inputs = train.x[index]
            if augment and inputs.ndim == 4:
                inputs = augment_batch(inputs, generator, shift_pixels(min(inputs.shape[2:])), hflip=False)
            if inputs.ndim == 4:
                # a copy, not .contiguous(): an augmented 1-channel batch has channels-last strides
                # that pass as contiguous, and torch would pick the layout from them
                inputs = inputs.clone(memory_format=layout)
            labels = train.y[index].to(device)
            for group in optimizer.param_groups:
                group["lr"] = _cosine(lr, step, total_steps)
            logits = model(inputs.to(device))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            batches += 1
            loss_sum += float(loss.detach())
            correct += int((logits.detach().argmax(dim=1) == labels).sum())
            seen += labels.numel()
        record = {
            "epoch": epoch,
            "seconds": time.perf_counter() - started,
            "train_loss": loss_sum / batches,
            "train_acc": correct / seen,
            "lr": _cosine(lr, step, total_steps),
        }
        history.append(record)
        if progress is not None:
            progress(
                f"fine-tune epoch {epoch}/{epochs}: train loss {record['train_loss']:.3f}, "
                f"train acc {record['train_acc']:.2%} ({record['seconds']:.0f} s)"
            )
    return history
