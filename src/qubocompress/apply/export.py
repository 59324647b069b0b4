"""ONNX export of a compressed model (pruned shapes, dequantized float32 weights).

ONNX has no sub-byte weight type that runtimes execute, so the exported graph carries the
dequantized weights: it runs anywhere and computes what the artifact computes, while the
bytes-on-disk figure comes from the bit-packed artifact (:mod:`qubocompress.apply.artifact`).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from qubocompress.errors import ArtifactError
from qubocompress.io import atomic_write

ONNX_OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_shape: Sequence[int]) -> int:
    """Write ``model`` in eval mode as ONNX to ``path`` atomically; returns the bytes written.

    ``input_shape`` is one sample's shape without the batch axis, e.g. ``(1, 28, 28)``; the batch
    axis of the graph is dynamic. Uses torch's TorchScript exporter (no onnxscript needed).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"cannot write ONNX file {path}: {path.parent} is not an existing directory")
    exported = copy.deepcopy(model).eval().cpu()
    example = torch.zeros((1, *input_shape), dtype=torch.float32)

    def write(handle: BinaryIO) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                exported,
                (example,),
                handle,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )

    return atomic_write(path, write)
