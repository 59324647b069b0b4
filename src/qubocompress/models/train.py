"""Training, evaluation, checkpoints and the cache of trained built-in models.

Training is deterministic given ``TrainConfig.seed``: model initialisation, shuffling and
augmentation draw from seeded generators, and the caller's global torch RNG is left untouched.
Library functions never change torch's thread count.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qubocompress.data.datasets import Dataset, Split
from qubocompress.errors import ArtifactError, ModelError
from qubocompress.io import check_writable_file, os_reason, write_bytes_atomic
from qubocompress.models.stats import count_macs, count_params
from qubocompress.models.zoo import build_model
from qubocompress.progress import track

Progress = Callable[[str], None]
CACHE_FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "qubocompress-checkpoint"
CHECKPOINT_VERSION = 1
# Small training sets get more epochs so that they still see this many SGD steps (digits:
# 56 epochs, vgg test top-1 99.4-99.7 %; three times as many steps gained nothing).
MIN_TRAIN_STEPS = 500
MAX_AUTO_EPOCHS = 200
# Samples of the probe forward that checks a model's outputs in channels-last layout.
PROBE_SAMPLES = 4


@dataclass(frozen=True)
class TrainConfig:
    """SGD (Nesterov) with a one-cycle learning-rate schedule; defaults are the tuned recipe.

    Attributes:
        epochs: passes over the train split.
        batch_size: samples per step (the last partial batch of an epoch is dropped).
        lr: peak learning rate of the one-cycle schedule.
        momentum: peak SGD (Nesterov) momentum; one-cycle lowers it to min(0.85, momentum)
            while the learning rate is high and raises it back as the rate anneals.
        weight_decay: L2 penalty on conv/linear weights (not on biases or norm parameters).
        label_smoothing: cross-entropy label smoothing, 0 to 1.
        augment: random shifts of up to ``shift`` pixels (edge-replicated padding).
        hflip: random horizontal flips (with ``augment``); right for clothes, wrong for digits.
        shift: largest shift in pixels.
        seed: seeds initialisation (in ``load_or_train``), shuffling and augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.95
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = True
    hflip: bool = True
    shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{field} must be {rule}, got {value}"
            for field, value, ok, rule in (
                ("epochs", self.epochs, self.epochs >= 1, "at least 1"),
                ("batch_size", self.batch_size, self.batch_size >= 1, "at least 1"),
                ("lr", self.lr, self.lr > 0, "positive"),
                ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
                ("weight_decay", self.weight_decay, self.weight_decay >= 0, "non-negative"),
                ("label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "in [0, 1)"),
                ("shift", self.shift, self.shift >= 0, "non-negative"),
            )
            if not ok
        ]
        if problems:
            raise ModelError(f"bad training settings: {'; '.join(problems)}")


# Peak learning rates of models without BatchNorm: LeNet-5 diverged at 0.1 (stuck at chance on a
# small 4-class set, measured) and trained to 100 % there at 0.05.
NO_BATCHNORM_LR = {"lenet5": 0.05}


def default_config(dataset: Dataset, model: str | None = None) -> TrainConfig:
    """The recipe for ``dataset`` (and the built-in ``model``): flips only for Fashion-MNIST, more
    epochs for small sets, a lower peak learning rate for models without BatchNorm."""
    base = TrainConfig()
    if model in NO_BATCHNORM_LR:
        base = replace(base, lr=NO_BATCHNORM_LR[model])
    steps_per_epoch = max(1, len(dataset.train) // base.batch_size)
    epochs = min(MAX_AUTO_EPOCHS, max(base.epochs, math.ceil(MIN_TRAIN_STEPS / steps_per_epoch)))
    return replace(base, epochs=epochs, hflip=dataset.name == "fashion-mnist")


def default_cache_dir() -> Path:
    """``$QUBOCOMPRESS_CACHE`` if set, else the user's cache folder for qubocompress."""
    override = os.environ.get("QUBOCOMPRESS_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qubocompress"))


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


DEVICE_FORMS = "cpu, cuda, cuda:N (the N-th GPU) or auto (cuda when torch sees a GPU, else cpu)"
DEVICE_PATTERN = re.compile(r"cpu|auto|cuda(:[0-9]+)?")


def check_device(name: str) -> str:
    """``name`` if it is a device ``--device`` takes (:data:`DEVICE_FORMS`), else a one-line ModelError."""
    if not isinstance(name, str) or DEVICE_PATTERN.fullmatch(name) is None:
        raise ModelError(f"--device must be {DEVICE_FORMS}; got {name!r}")
    return name


def resolve_device(name: str, warn: Progress | None = None) -> torch.device:
    """The torch device that training, analysis, fine-tuning and the ``sb`` solver run on.

    ``name`` as :func:`check_device` takes it: "cpu"; "auto" is "cuda" when
    ``torch.cuda.is_available()``, else "cpu"; "cuda" or "cuda:N" fall back to the CPU, with one
    line to ``warn``, when torch sees no CUDA GPU. A "cuda:N" beyond the GPUs torch sees is a ModelError.
    """
    check_device(name)
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if not available:
        if warn is not None:
            warn(
                f"warning: --device {name}: torch sees no CUDA GPU (torch.cuda.is_available() is false); using the CPU"
            )
        return torch.device("cpu")
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ModelError(f"--device {name}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


# Inference batch: 256 evaluated the VGG 2.3x faster than 1024 on 2 cores (measured; cache).
EVAL_BATCH_SIZE = 256


def _batched_logits(model: nn.Module, split: Split, batch_size: int) -> Any:
    """Yield (logits, labels) over ``split`` in eval mode without gradients."""
    device = _device(model)
    for start in range(0, len(split), batch_size):
        inputs = split.x[start : start + batch_size].to(device)
        yield model(inputs), split.y[start : start + batch_size].to(device)


def evaluate(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Top-1 accuracy on ``split``, in [0, 1]; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for logits, labels in _batched_logits(model, split, batch_size):
                correct += int((logits.argmax(dim=1) == labels).sum())
    finally:
        model.train(was_training)
    return correct / max(1, len(split))


def evaluate_loss(model: nn.Module, split: Split, batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Mean cross-entropy on ``split``, in nats; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for logits, labels in _batched_logits(model, split, batch_size):
                total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
    finally:
        model.train(was_training)
    return total / max(1, len(split))


def augment_batch(batch: torch.Tensor, generator: torch.Generator, shift: int, hflip: bool) -> torch.Tensor:
    """Shift each image by up to ``shift`` px (edge-replicated) and flip half of them if ``hflip``.

    The result is a strided view; the caller copies it into the memory layout it trains in.
    """
    count, _, height, width = batch.shape
    padded = F.pad(batch, (shift, shift, shift, shift), mode="replicate").permute(0, 2, 3, 1)
    offset_rows = torch.randint(0, 2 * shift + 1, (count, 1), generator=generator)
    offset_cols = torch.randint(0, 2 * shift + 1, (count, 1), generator=generator)
    rows = offset_rows + torch.arange(height)
    cols = torch.arange(width).expand(count, width)
    if hflip:
        flip = torch.rand(count, 1, generator=generator) < 0.5
        cols = torch.where(flip, width - 1 - cols, cols)
    cols = offset_cols + cols
    picked = padded[torch.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)


def channels_last_is_safe(model: nn.Module) -> bool:
    """Whether torch handles ``model``'s layers in channels-last layout (25-40 % faster on CPU).

    Not when it has a 1×1 conv with stride > 1 and fewer than 8 input channels per group: in
    torch 2.13 on CPU that conv's weight gradient corrupts memory (crash) in channels-last layout
    (found by a sweep over conv shapes), and pruning a ResNet shortcut produces such convs.
    """
    return not any(
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride != (1, 1)
        and module.in_channels // module.groups < 8
        for module in model.modules()
    )


def training_layout(model: nn.Module, inputs: torch.Tensor) -> torch.memory_format:
    """The memory layout to train ``model`` in on batches like ``inputs`` (its first
    :data:`PROBE_SAMPLES` samples are run, on the model's device).

    Channels-last where :func:`channels_last_is_safe` and where the model's own code gives the
    same outputs in it (eval mode, no gradients): a forward that calls ``.view`` on a conv's output
    (a common idiom) fails in channels-last layout, and code that reads strides may differ.
    Otherwise the default layout. The model is left as it was (layout and train/eval mode).
    """
    if inputs.ndim != 4 or not channels_last_is_safe(model):
        return torch.contiguous_format
    inputs = inputs[:PROBE_SAMPLES].to(_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(inputs.contiguous())
            model.to(memory_format=torch.channels_last)
            # an explicit copy: a 1-channel batch can pass as both layouts (see ``train``)
            got = model(inputs.clone(memory_format=torch.channels_last))
        same = (
            isinstance(expected, torch.Tensor)
            and isinstance(got, torch.Tensor)
            and got.shape == expected.shape
            and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
        )
    except RuntimeError:
        same = False
    finally:
        model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return torch.channels_last if same else torch.contiguous_format


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights (ndim > 1) only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``dataset.train``; return per-epoch history.

    Each history entry: epoch (1-based), seconds (wall time of the epoch, evaluation included),
    train_loss (mean cross-entropy of the epoch's steps, nats), val_acc (top-1 on the val split).
    Trains in channels-last memory layout where that is safe (see ``training_layout``); the
    model is left in eval mode, in the default contiguous layout.
    """
    config = config or default_config(dataset)
    split = dataset.train
    count = len(split)
    if count == 0:
        raise ModelError(f"data set {dataset.name} has an empty train split")
    batch_size = min(config.batch_size, count)
    steps_per_epoch = count // batch_size
    device = _device(model)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    memory_format = training_layout(model, split.x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model.to(memory_format=memory_format)
        optimizer = torch.optim.SGD(
            _param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum, nesterov=True
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * steps_per_epoch,
            base_momentum=min(0.85, config.momentum),
            max_momentum=config.momentum,
        )
        try:
            for epoch in track(range(1, config.epochs + 1), "training"):
                started = time.perf_counter()
                model.train()
                order = torch.randperm(count, generator=generator)
                loss_sum = 0.0
                for step in track(range(steps_per_epoch), f"  epoch {epoch}/{config.epochs}"):
                    index = order[step * batch_size : (step + 1) * batch_size]
                    inputs = split.x[index]
                    if config.augment:
                        inputs = augment_batch(inputs, generator, config.shift, config.hflip)
                    # An explicit copy: a 1-channel batch can pass as both layouts, and torch
                    # would then pick the layout from its strides, not from ours.
                    inputs = inputs.clone(memory_format=memory_format)
                    logits = model(inputs.to(device))
                    loss = F.cross_entropy(logits, split.y[index].to(device), label_smoothing=config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += float(loss.detach())
                val_acc = evaluate(model, dataset.val)
                seconds = time.perf_counter() - started
                train_loss = loss_sum / steps_per_epoch
                history.append({"epoch": epoch, "seconds": seconds, "train_loss": train_loss, "val_acc": val_acc})
                if progress is not None:
                    progress(
                        f"epoch {epoch}/{config.epochs}: train loss {train_loss:.3f}, "
                        f"val acc {val_acc:.2%} ({seconds:.0f} s)"
                    )
        finally:
            model.to(memory_format=torch.contiguous_format)
            model.eval()
    return history


def save_checkpoint(path: str | Path, model: nn.Module, arch: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Write ``model``'s weights with its architecture (``{"name", "kwargs"}``) and metrics,
    atomically (an ArtifactError when it cannot be written)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": {"name": str(arch["name"]), "kwargs": dict(arch["kwargs"])},
        "metrics": dict(metrics),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()  # torch's zip writer would turn a full disk into a RuntimeError
    torch.save(payload, buffer)
    write_bytes_atomic(Path(path), buffer.getvalue())


REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code. A
    missing or unreadable file, or one that holds a pickled object safe loading refuses, is a
    ModelError saying which (``what`` names the file's role: "checkpoint", "weights file")."""
    if not path.exists():
        raise ModelError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ModelError(f"{what} {path} is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path}: {os_reason(exc)}") from None
    except Exception as exc:  # torch.load raises many types on a damaged file (zip, EOF, KeyError ...)
        refused = REFUSED_GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if refused is None:
            raise ModelError(f"{what} {path} is unreadable: not a torch.save file, or truncated or damaged") from None
        raise ModelError(
            f"{what} {path} holds a pickled {refused.group(1)} object, which safe loading (weights_only=True) "
            "refuses: qubocompress loads tensors only, never code; save torch.save(model.state_dict(), path)"
        ) from None


def is_state_dict(payload: Any) -> bool:
    return (
        isinstance(payload, Mapping)
        and len(payload) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())
    )


def load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], path: Path, arch_name: str, what: str = "checkpoint"
) -> None:
    """Load ``state`` into ``model`` or raise a one-line ModelError naming the mismatch (``what``
    names the file's role in it). A model
    built on the meta device (:func:`qubocompress.models.zoo.build_model` with ``meta=True``) is
    given memory only once its every tensor matches ``state``, so a file's sizes cannot make it
    allocate more than the file holds."""
    expected = model.state_dict()

    def shown(key: str) -> str:  # a name read from a file may hold any character
        return key if key.isprintable() else repr(key)

    missing = [shown(k) for k in expected if k not in state]
    unexpected = [shown(k) for k in state if k not in expected]
    reshaped = [
        f"{shown(k)} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise ModelError(f"{what} {path} does not match the {arch_name} architecture ({'; '.join(problems)})")
    if any(tensor.is_meta for tensor in expected.values()):
        model.to_empty(device="cpu")
    model.load_state_dict(state)


def _dataset_kwargs(dataset: Dataset) -> dict[str, int]:
    channels, height, width = dataset.input_shape
    if height != width:
        raise ModelError(f"built-in models need square images; data set {dataset.name} has {height}x{width} images")
    return {"num_classes": dataset.num_classes, "in_channels": channels, "input_size": height}


def _unpack_checkpoint(
    payload: Mapping[str, Any], path: Path
) -> tuple[dict[str, Any], Mapping[str, torch.Tensor], dict[str, Any]]:
    """(arch, state_dict, metrics) of a payload written by :func:`save_checkpoint`."""
    try:
        arch = {"name": str(payload["arch"]["name"]), "kwargs": dict(payload["arch"]["kwargs"])}
        state = payload["state_dict"]
        metrics = dict(payload.get("metrics", {}))
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"checkpoint {path} is corrupt or not a qubocompress checkpoint (bad layout)") from None
    if not is_state_dict(state):
        raise ModelError(f"checkpoint {path} is corrupt or not a qubocompress checkpoint (bad weights)")
    return arch, state, metrics


def load_checkpoint(
    path: str | Path, name: str | None = None, dataset: Dataset | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (or a bare state_dict of a built-in model).

    ``name`` must match the stored architecture if given; a bare state_dict needs ``name`` and
    ``dataset`` to know the architecture. With ``dataset``, the model's classes and input shape
    must fit it. Returns the model in eval mode and info: the stored metrics, "arch", "path".
    """
    path = Path(path)
    payload = safe_torch_load(path, "checkpoint")
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        arch, state, metrics = _unpack_checkpoint(payload, path)
        if name is not None and name != arch["name"]:
            raise ModelError(f"checkpoint {path} holds a {arch['name']} model, not {name}")
    elif is_state_dict(payload):
        if name is None or dataset is None:
            raise ModelError(
                f"checkpoint {path} is a bare state_dict; give the model name and data set so its architecture is known"
            )
        arch = {"name": name, "kwargs": _dataset_kwargs(dataset)}
        state, metrics = payload, {}
    else:
        raise ModelError(f"checkpoint {path} is corrupt or not a qubocompress checkpoint (no weights found)")
    if dataset is not None:
        wanted = _dataset_kwargs(dataset)
        clashes = [f"{k} {arch['kwargs'].get(k)} vs {v}" for k, v in wanted.items() if arch["kwargs"].get(k) != v]
        if clashes:
            raise ModelError(
                f"checkpoint {path} does not fit data set {dataset.name} (model vs data: {', '.join(clashes)})"
            )
    model = build_model(arch["name"], meta=True, **arch["kwargs"])
    load_state(model, state, path, arch["name"])
    model.eval()
    return model, {**metrics, "arch": arch, "path": path}


def _cache_path(name: str, dataset: Dataset, arch: Mapping[str, Any], config: TrainConfig, cache_dir: Path) -> Path:
    key = {
        "format": CACHE_FORMAT_VERSION,
        "arch": arch,
        "dataset": dataset.name,
        "data": dataset.fingerprint(),
        "config": asdict(config),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir / "models" / f"{name}-{dataset.name}-s{config.seed}-{digest}.pt"


def load_or_train(
    name: str,
    dataset: Dataset,
    seed: int = 0,
    config: TrainConfig | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Return the built-in model ``name`` trained on ``dataset``, from the cache or freshly trained.

    The cache key covers the architecture (``model_kwargs`` included), the data (name and
    fingerprint), ``seed`` (which overrides ``config.seed``) and the training config, not the
    ``device`` it trains on (a torch device, see :func:`resolve_device`; the initial weights are
    drawn on the CPU either way). A corrupt cache file is reported through ``progress`` and
    retrained. Returns the model on ``device`` in eval mode and info: val_acc, test_acc (0..1),
    params, macs, train_seconds, cached, cache_path, arch (and history when trained now).
    """
    arch = {"name": name, "kwargs": {**_dataset_kwargs(dataset), **dict(model_kwargs or {})}}
    config = replace(config or default_config(dataset, name), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, **arch["kwargs"])
    path = _cache_path(name, dataset, arch, config, cache_dir or default_cache_dir())
    if path.exists():
        try:
            cached_model, stored = load_checkpoint(path, name=name)
            if stored["arch"] != arch:
                raise ModelError(f"checkpoint {path} holds a different architecture")
            return cached_model.to(device), {**stored, "cached": True, "cache_path": path}
        except ModelError as exc:
            if progress is not None:
                progress(f"warning: {exc}; retraining")
    try:
        check_writable_file(path, "the model cache")
    except ArtifactError as exc:  # before the training, not after it
        raise ModelError(
            f"the model cache is not writable: {exc}; set QUBOCOMPRESS_CACHE to a writable folder"
        ) from None
    if progress is not None:
        progress(f"training {name} on {dataset.name} ({config.epochs} epochs, seed {seed}, on {device})")
    history = train(model.to(device), dataset, config, progress)
    metrics = {
        "val_acc": evaluate(model, dataset.val),
        "test_acc": evaluate(model, dataset.test),
        "params": count_params(model),
        "macs": count_macs(model, dataset.input_shape),
        "train_seconds": sum(entry["seconds"] for entry in history),
    }
    try:
        save_checkpoint(path, model, arch, metrics)
    except ArtifactError as exc:
        raise ModelError(
            f"the model cache is not writable: {exc}; set QUBOCOMPRESS_CACHE to a writable folder"
        ) from None
    return model, {**metrics, "arch": arch, "cached": False, "cache_path": path, "history": history}
