"""What a ``model.safetensors`` holds, layer by layer: shapes before and after pruning, kept filters,
bits and bytes (``qubocompress inspect FILE``); and its ONNX export (``qubocompress export``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors
from torch import nn

from qubocompress.apply.export import export_onnx
from qubocompress.apply.model_file import FP32_BYTES, load_model_file, stored_bits
from qubocompress.errors import ArtifactError
from qubocompress.models.user import Factory, rebuild_model


@dataclass(frozen=True)
class LayerSummary:
    """One Conv2d/Linear layer of a model file.

    Attributes:
        name: the layer's name in the model.
        shape_before: its weight's shape in the original (unpruned) model.
        shape_after: its weight's shape in the file.
        bits: bits per weight (32: kept as float32).
        weight_bytes: bytes its weight takes in the file (packed codes and per-channel scales).
    """

    name: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    bits: int
    weight_bytes: int

    @property
    def kept_filters(self) -> str:
        return f"{self.shape_after[0]}/{self.shape_before[0]}"


@dataclass(frozen=True)
class ModelFileSummary:
    """A model file's layers and totals.

    Attributes:
        path: the file.
        file_bytes: its size on disk.
        layers: every Conv2d/Linear layer.
        fp32_bytes: what the original model's tensors take as float32 (4 bytes each).
    """

    path: Path
    file_bytes: int
    layers: tuple[LayerSummary, ...]
    fp32_bytes: int

    def table(self) -> str:
        """A plain-text table of the layers and the totals."""
        rows = [("layer", "shape before", "shape after", "kept filters", "bits", "weight bytes")]
        for layer in self.layers:
            rows.append(
                (
                    layer.name,
                    "x".join(map(str, layer.shape_before)),
                    "x".join(map(str, layer.shape_after)),
                    layer.kept_filters,
                    str(layer.bits),
                    f"{layer.weight_bytes:,}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        weights = sum(layer.weight_bytes for layer in self.layers)
        lines.append(
            f"{self.path.name}: {self.file_bytes:,} bytes ({weights:,} in the layers' weights); the original "
            f"model's tensors in float32: {self.fp32_bytes:,} bytes ({self.fp32_bytes / self.file_bytes:.1f}x more)"
        )
        return "\n".join(lines) + "\n"


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def inspect_model_file(
    path: str | os.PathLike[str], factory: Factory | str | None = None, *, trust_torchscript: bool = False
) -> ModelFileSummary:
    """The summary of the model file ``path``; loaded under :func:`load_model_file`'s rules (a user
    model needs its ``factory``), so a damaged or hostile file is the same one-line ArtifactError."""
    path = Path(path)
    model, _ = load_model_file(path, factory, trust_torchscript=trust_torchscript)
    with safetensors.safe_open(str(path), framework="numpy") as handle:  # checked by the load above
        arch = json.loads(handle.metadata()["arch"])
    bits = stored_bits(path)
    original = model if arch.get("torchscript") else rebuild_model(arch, factory)  # TorchScript is never pruned
    before = {name: tuple(m.weight.shape) for name, m in _layers(original).items()}
    layers = []
    for name, module in _layers(model).items():
        shape = tuple(module.weight.shape)
        width = int(bits.get(name, 32))
        count = module.weight.numel()
        stored = -(-count * width // 8) + FP32_BYTES * shape[0] if name in bits else FP32_BYTES * count
        layers.append(LayerSummary(name, before.get(name, shape), shape, width, stored))
    fp32 = FP32_BYTES * sum(tensor.numel() for tensor in original.state_dict().values())
    return ModelFileSummary(path, path.stat().st_size, tuple(layers), fp32)


def export_model_file(
    path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    factory: Factory | str | None = None,
    *,
    trust_torchscript: bool = False,
) -> int:
    """Write the model of the model file ``path`` as ONNX to ``onnx_path`` with its own bits
    (int4/int8 weights, :func:`~qubocompress.apply.export.export_onnx`); returns the ONNX file's bytes."""
    model, metadata = load_model_file(path, factory, trust_torchscript=trust_torchscript)
    shape = metadata.get("input_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ArtifactError(f"{path} records no input shape (written before qubocompress recorded it); compress again")
    return export_onnx(model, onnx_path, tuple(shape), stored_bits(path))
