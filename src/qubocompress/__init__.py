"""qubocompress: joint pruning + mixed-precision quantization of CNNs searched as a QUBO.

``import qubocompress as qc``; ``qc.compress(model, data, target_ratio=16)``, ``qc.sweep(model, data,
target_ratios=[8, 16, 32])``, ``qc.load(path)`` and
``qc.export_onnx(model, path, input_shape)`` (:mod:`qubocompress.api`) import torch when first used,
so that importing the package (and the command line's help) stays fast. The layers and their
one-way imports are a contract in pyproject.toml (import-linter).
"""

from typing import Any

from qubocompress.errors import QubocompressError

__version__ = "0.1.0"
__all__ = [
    "CompressResult",
    "QubocompressError",
    "SweepTable",
    "__version__",
    "compress",
    "export_onnx",
    "load",
    "sweep",
]
API = ("CompressResult", "SweepTable", "compress", "export_onnx", "load", "sweep")


def __getattr__(name: str) -> Any:
    if name in API:
        from qubocompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'qubocompress' has no attribute {name!r}")
