"""The compressed model as a ``model.safetensors`` file: pruned shapes, bit-packed weights, a checksum.

Any safetensors reader opens the file (``safetensors.numpy.load_file``, ``safe_open``) without
qubocompress: every tensor is a plain array and every metadata value a JSON string. Tensors:

* ``<layer>.weight.codes``: uint8, the codes of a quantized Conv2d/Linear weight packed at exactly
  ``b`` bits each (:func:`qubocompress.apply.artifact.pack_codes`: offset to unsigned, ``b`` bit
  planes per weight, least significant first, little-endian ``np.packbits``), ``ceil(n * b / 8)``
  bytes for ``n`` weights;
* ``<layer>.weight.scale``: float32, its per-output-channel step size (``weight = code * scale``);
* every other tensor of the state_dict under its own name (biases, BatchNorm parameters and
  statistics, full-precision weights): floats as float32, integer buffers in their own type;
* for a TorchScript model only, ``@torchscript``: uint8, the model's code with every tensor emptied
  (:func:`qubocompress.models.user.script_archive`), which loading refills from the tensors.

``__metadata__`` (every value a JSON string): ``qubocompress_format`` (``"1"``), ``arch`` (the
dict that rebuilds the ORIGINAL unpruned model: ``{"name", "kwargs"}`` built-in, ``{"factory",
"kwargs"}`` or ``{"torchscript": true}``, see :mod:`qubocompress.models.user`), ``bits`` (layer ->
bit-width of every quantized layer), ``shapes`` (layer -> shape of its weight), ``metadata`` (the
caller's: plan, preprocessing) and ``sha256``: the hex SHA-256 of the canonical JSON
``{"metadata": {the five keys above: their strings}, "tensors": {name: [dtype, shape]}}``
(``sort_keys``, no spaces) followed by every tensor's bytes in name order (by code point). It covers what the
loader reads, so a changed tensor, shape, dtype or metadata value is a checksum mismatch; it shows
that the file is undamaged, not who wrote it.

Loading checks the safetensors header itself (lengths, dtypes, sizes, offsets) before
safetensors parses the file, then rebuilds the model exactly as
:func:`qubocompress.apply.artifact.load_artifact` does: nothing the file names is imported or
called; the weights equal ``quantize_model_weights(pruned_model, bits)`` exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from safetensors import SafetensorError
from torch import nn

from qubocompress.apply.artifact import (
    SCRIPT_ENTRY,
    _normalised_arch,
    _raw_array,
    one_line,
    pack_codes,
    rebuilt_model,
    unpack_codes,
)
from qubocompress.apply.quantize import MAX_QUANT_BITS, QuantizedTensor, dequantize, quantize_tensor, quantized_layers
from qubocompress.errors import ArtifactError
from qubocompress.io import jsonable, write_bytes_atomic
from qubocompress.models.user import Factory, script_archive

FORMAT_VERSION = "1"
FORMAT_KEY = "qubocompress_format"
CHECKSUM_KEY = "sha256"
CHECKED_KEYS = (FORMAT_KEY, "arch", "bits", "shapes", "metadata")
CODES_SUFFIX = ".codes"
SCALE_SUFFIX = ".scale"
# The safetensors dtypes this format stores, by their safetensors names.
DTYPES = {
    "F32": np.dtype("<f4"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
DTYPE_NAMES = {dtype.name: code for code, dtype in DTYPES.items()}
# Bytes of one float32 entry: a scale, a bias, a norm parameter, an unquantized weight.
FP32_BYTES = DTYPES["F32"].itemsize
_HEADER_LENGTH = struct.Struct("<Q")

TensorBytes = tuple[str, list[int], bytes | memoryview]  # (safetensors dtype, shape, little-endian bytes)
Arrays = dict[str, np.ndarray]


def payload_digest(metadata: Mapping[str, Any], tensors: Mapping[str, TensorBytes]) -> str:
    """The hex SHA-256 the ``sha256`` metadata holds (see the module docstring)."""
    described = {
        "metadata": {key: metadata.get(key) for key in CHECKED_KEYS},
        "tensors": {name: [dtype, shape] for name, (dtype, shape, _) in tensors.items()},
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for name in sorted(tensors):
        digest.update(tensors[name][2])
    return digest.hexdigest()


def _strict_json(value: Any) -> str:
    """``value`` as compact JSON that any JSON parser reads (no NaN or infinity)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, default=jsonable)


def _encode(model: nn.Module, bits: Mapping[str, int]) -> tuple[Arrays, dict[str, list[int]], dict[str, int]]:
    """The arrays of ``model.state_dict()`` (quantized weights bit-packed), and the shape and bits
    of each quantized layer's weight."""
    quantized = quantized_layers(model, bits)
    layer_of_weight = {f"{layer}.weight": layer for layer in quantized}
    arrays: Arrays = {}
    shapes: dict[str, list[int]] = {}
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        layer = layer_of_weight.get(key)
        if layer is None:
            arrays[key] = _raw_array(tensor)[1]
            continue
        qt = quantize_tensor(tensor, quantized[layer])
        arrays[key + CODES_SUFFIX] = np.frombuffer(pack_codes(qt), dtype=np.uint8)
        arrays[key + SCALE_SUFFIX] = qt.scale.numpy().astype(DTYPES["F32"])
        shapes[layer] = list(qt.shape)
    return arrays, shapes, quantized


def save_model_file(
    path: str | os.PathLike[str],
    model: nn.Module,
    bits: Mapping[str, int],
    arch: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write :func:`model_file_bytes` to ``path`` atomically; returns the file size in bytes."""
    return write_bytes_atomic(Path(path), model_file_bytes(model, bits, arch, metadata))


def model_file_bytes(
    model: nn.Module,
    bits: Mapping[str, int],
    arch: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """The safetensors file of ``model`` (already pruned) with its weights quantized to ``bits``.

    ``bits``: layer name -> bit-width (32 or absent: float32). ``arch``: the dict that rebuilds the
    original unpruned model (see the module docstring); for ``{"torchscript": True}`` ``model``
    must be the ScriptModule, whose code is stored too. ``metadata``: any JSON-ready dict (plan,
    preprocessing), returned by :func:`load_model_file`.
    """
    stored_arch = _normalised_arch(arch)
    arrays, shapes, quantized = _encode(model, bits)
    if stored_arch.get("torchscript"):
        if not isinstance(model, torch.jit.ScriptModule):
            raise ArtifactError(f"arch says torchscript, but the model is a {type(model).__name__}, not a ScriptModule")
        arrays[SCRIPT_ENTRY] = np.frombuffer(script_archive(model), dtype=np.uint8)
    try:
        fields = {
            FORMAT_KEY: FORMAT_VERSION,
            "arch": _strict_json(stored_arch),
            "bits": _strict_json(quantized),
            "shapes": _strict_json(shapes),
            "metadata": _strict_json(dict(metadata or {})),
        }
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"model file arch/metadata must be JSON-serialisable: {exc}") from exc
    tensors = {name: (DTYPE_NAMES[a.dtype.name], list(a.shape), a.tobytes()) for name, a in arrays.items()}
    fields[CHECKSUM_KEY] = payload_digest(fields, tensors)
    return safetensors.numpy.save(arrays, metadata=fields)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("the header names a key twice")
    return dict(pairs)


def _is_size_list(value: Any, length: int | None = None) -> bool:
    """Whether ``value`` is a list of non-negative ints (of ``length`` items when given)."""
    sized = isinstance(value, list) and (length is None or len(value) == length)
    return sized and all(type(n) is int and n >= 0 for n in value)


def _tensor_spans(header: Mapping[str, Any]) -> dict[str, tuple[str, list[int], int, int]]:
    """name -> (dtype, shape, begin, end) of every tensor entry, checked to tile the data buffer
    from 0 without gaps; ValueError otherwise."""
    spans: dict[str, tuple[str, list[int], int, int]] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {name!r} is not described by exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {dtype!r}, which this format does not store")
        if not _is_size_list(shape):
            raise ValueError(f"tensor {name!r} has shape {shape!r}")
        if not _is_size_list(offsets, 2) or offsets[1] - offsets[0] != math.prod(shape) * DTYPES[dtype].itemsize:
            raise ValueError(f"tensor {name!r} has data_offsets {offsets!r}, which do not fit its shape and dtype")
        spans[name] = (dtype, shape, *offsets)
    position = 0
    for _, _, begin, end in sorted(spans.values(), key=lambda span: (span[2], span[3])):
        if begin != position:
            raise ValueError(f"the tensors leave a gap or overlap at byte {position} of the data")
        position = end
    return spans


def _read_header(path: Path, data: bytes) -> dict[str, str]:
    """Check lengths, offsets, format and checksum before safetensors parses ``data``; return the
    metadata."""
    if len(data) < _HEADER_LENGTH.size or data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + 1] != b"{":
        raise ArtifactError(f"{path} is not a safetensors model file, or is truncated ({len(data)} bytes)")
    header_end = _HEADER_LENGTH.size + _HEADER_LENGTH.unpack_from(data)[0]
    if len(data) < header_end:
        raise ArtifactError(
            f"{path} is truncated ({len(data)} bytes, its header alone needs {header_end}); write the model file again"
        )
    try:
        text = data[_HEADER_LENGTH.size : header_end].decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise ArtifactError(f"{path} is corrupt (unreadable safetensors header: {exc})") from exc
    fields = header.pop("__metadata__", None)
    if not isinstance(fields, dict) or FORMAT_KEY not in fields:
        raise ArtifactError(f"{path} is a safetensors file but not a qubocompress model (no {FORMAT_KEY} metadata)")
    if fields[FORMAT_KEY] != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has model file format {fields[FORMAT_KEY]!r}; this qubocompress reads format {FORMAT_VERSION!r}"
        )
    try:
        if not all(isinstance(fields.get(key), str) for key in (*CHECKED_KEYS, CHECKSUM_KEY)):
            raise ValueError(f"the metadata needs the strings {', '.join((*CHECKED_KEYS, CHECKSUM_KEY))}")
        spans = _tensor_spans(header)
    except ValueError as exc:
        raise ArtifactError(f"{path} is corrupt (malformed safetensors header: {exc})") from exc
    expected = header_end + max((end for *_, end in spans.values()), default=0)
    if len(data) < expected:
        raise ArtifactError(f"{path} is truncated ({len(data)} of {expected} bytes); write the model file again")
    if len(data) > expected:
        raise ArtifactError(f"{path} is corrupt ({len(data) - expected} unexpected bytes after its end)")
    view = memoryview(data)[header_end:]
    tensors = {name: (dtype, shape, view[begin:end]) for name, (dtype, shape, begin, end) in spans.items()}
    if fields[CHECKSUM_KEY] != payload_digest(fields, tensors):
        raise ArtifactError(f"{path} is corrupt (checksum mismatch); write the model file again")
    return fields


def _decode_state(arrays: Arrays, bits: Any, shapes: Any) -> dict[str, torch.Tensor]:
    """The state dict: quantized weights dequantized, the other arrays as tensors; ValueError when
    the metadata does not describe the arrays."""
    if not isinstance(bits, dict) or not isinstance(shapes, dict) or set(bits) != set(shapes):
        raise ValueError("bits and shapes must be dicts over the same layers")
    state: dict[str, torch.Tensor] = {}
    for layer, layer_bits in bits.items():
        key, shape = f"{layer}.weight", shapes[layer]
        quantizable = type(layer_bits) is int and 1 <= layer_bits <= MAX_QUANT_BITS
        if not quantizable or not _is_size_list(shape) or not shape:
            raise ValueError(f"layer {layer!r} has bits {layer_bits!r} and weight shape {shape!r}")
        if key + CODES_SUFFIX not in arrays or key + SCALE_SUFFIX not in arrays or key in arrays:
            raise ValueError(f"layer {layer!r} needs the tensors {key + CODES_SUFFIX} and {key + SCALE_SUFFIX} only")
        codes, scale = arrays.pop(key + CODES_SUFFIX), arrays.pop(key + SCALE_SUFFIX)
        shape, count = tuple(shape), math.prod(shape)
        if codes.dtype != DTYPES["U8"] or codes.shape != (-(-count * layer_bits // 8),):
            raise ValueError(f"{key + CODES_SUFFIX} does not hold {count} codes of {layer_bits} bits")
        if scale.dtype != DTYPES["F32"] or scale.shape != shape[:1]:
            raise ValueError(f"{key + SCALE_SUFFIX} is not {shape[0]} float32 scales")
        codes_tensor = torch.from_numpy(unpack_codes(codes, layer_bits, count).reshape(shape))
        qt = QuantizedTensor(codes=codes_tensor, scale=torch.from_numpy(scale.copy()), bits=layer_bits, shape=shape)
        state[key] = dequantize(qt)
    state.update((name, torch.from_numpy(array.copy())) for name, array in arrays.items())
    return state


def load_model_file(
    path: str | os.PathLike[str], factory: Factory | str | None = None, *, trust_torchscript: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a file written by :func:`save_model_file`: the pruned, dequantized model (in eval
    mode) and the stored metadata.

    The trust rules of :func:`qubocompress.apply.artifact.load_artifact`: loading never imports or
    calls anything the file names. A built-in model is rebuilt from the fixed table of built-in
    models (on the meta device); a user model only by ``factory``, the callable (or
    ``package.module:factory``) that builds the unpruned model, which must be the one the file
    records; a TorchScript model, whose stored code loading would run, only with
    ``trust_torchscript=True``. Raises ArtifactError (one line) when the file is missing, not a
    qubocompress safetensors file, of another format version, truncated, altered or corrupt, or
    does not fit the rebuilt architecture, or when the architecture cannot be rebuilt.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    return read_model_file(data, path, factory, trust_torchscript=trust_torchscript)


def read_model_file(
    data: bytes, path: Path, factory: Factory | str | None = None, *, trust_torchscript: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_model_file` on the file's bytes (``path`` names it in errors)."""
    fields = _read_header(path, data)
    try:
        arrays = safetensors.numpy.load(data)
    except SafetensorError as exc:
        raise ArtifactError(f"{path} is corrupt (safetensors cannot read it: {one_line(str(exc))[:300]})") from exc
    try:
        arch = _normalised_arch(json.loads(fields["arch"]))
        if arch.get("torchscript") and SCRIPT_ENTRY not in arrays:
            raise ValueError(f"its arch is torchscript, but it holds no {SCRIPT_ENTRY} tensor")
        archive = arrays.pop(SCRIPT_ENTRY).tobytes() if arch.get("torchscript") else None
        state = _decode_state(arrays, json.loads(fields["bits"]), json.loads(fields["shapes"]))
        metadata = json.loads(fields["metadata"])
        if not isinstance(metadata, dict):
            raise TypeError(f"the metadata is a {type(metadata).__name__}, not a dict")
    except (ValueError, TypeError, OverflowError, RecursionError, ArtifactError) as exc:
        raise ArtifactError(f"{path} is corrupt (malformed metadata: {exc})") from exc
    return rebuilt_model(path, arch, state, archive, factory, trust_torchscript, what="model file"), metadata


def stored_bits(path: str | os.PathLike[str]) -> dict[str, int]:
    """Layer -> bit-width of every quantized layer of a model file (read it with
    :func:`load_model_file` first: this trusts the file's checks done there)."""
    with safetensors.safe_open(str(path), framework="numpy") as handle:
        return {str(name): int(bits) for name, bits in json.loads(handle.metadata()["bits"]).items()}
