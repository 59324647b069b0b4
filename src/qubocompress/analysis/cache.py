"""A disk cache of analyses: the same model, calibration data and options give the same spec.

The measured damages cost one forward pass over the calibration split per layer and bit-width and
per prune option (about a minute for the VGG-style net on 2 cores, several for ResNet-20), and
they do not depend on the target ratio, the formulation's penalty or the solver. A user who
compresses one model at several ratios, or with several solvers, pays them once.

The key covers everything the result depends on: the model (its class, its printed structure,
its traced forward code and every tensor of its state_dict, buffers included), the calibration
inputs and labels (all bytes), and the analysis options. Entries are JSON files written
atomically; one that cannot be read is ignored (and overwritten by the fresh analysis).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn

from qubocompress.errors import ProblemError
from qubocompress.io import write_json_atomic
from qubocompress.problem.spec import CompressionSpec

# Bump when the analysis computes anything differently, so that old entries are not reused.
ANALYSIS_FORMAT_VERSION = 4  # 3: groups followed through concatenations and SE gates; 4: grouped convs' blocks


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _forward_code(model: nn.Module) -> str:
    """The model's forward as code: TorchScript's or torch.fx's; empty when fx cannot trace it (the
    key then rests on the model's repr and state)."""
    if isinstance(model, torch.jit.ScriptModule):
        return str(model.code)
    try:
        return torch.fx.symbolic_trace(model).code
    except Exception:  # fx raises many types for untraceable code; the repr below still counts
        return ""


def analysis_key(model: nn.Module, calib: tuple[torch.Tensor, torch.Tensor], options: Mapping[str, Any]) -> str:
    """A sha256 hex digest of the model, the calibration split and the analysis ``options``
    (JSON-serialisable)."""
    digest = hashlib.sha256()
    digest.update(f"v{ANALYSIS_FORMAT_VERSION}:{type(model).__qualname__}\n{model!r}\n{_forward_code(model)}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    for tensor in calib:
        digest.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    digest.update(json.dumps(dict(options), sort_keys=True).encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, model_name: str, key: str) -> Path:
    """Where the analysis with ``key`` of the model labelled ``model_name`` is kept."""
    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)[:40]
    return cache_dir / "analyses" / f"{safe_name}-{key[:16]}.json"


def load_cached(path: Path, key: str) -> tuple[CompressionSpec, float] | None:
    """The spec stored at ``path`` for ``key`` and the seconds its analysis took, or None when
    there is no such entry or it cannot be read."""
    try:
        entry = json.loads(path.read_text())
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        return CompressionSpec.from_dict(entry["spec"]), float(entry["seconds"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, ProblemError):
        return None


def store(path: Path, key: str, spec: CompressionSpec, seconds: float) -> None:
    """Keep ``spec`` (measured in ``seconds``) under ``key``; ArtifactError or OSError if it cannot
    be written."""
    write_json_atomic(path, {"key": key, "seconds": seconds, "spec": spec.to_dict()})
