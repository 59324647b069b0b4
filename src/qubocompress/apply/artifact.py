"""The compressed model on disk: pruned shapes, bit-packed weights, one small self-checking file.

File layout (all integers little-endian)::

    b"QCZ1"                 magic, 4 bytes
    uint32                  H, length of the header in bytes
    H bytes                 UTF-8 JSON header (below)
    P bytes                 payload: the tensors, back to back
    uint32                  CRC32 of every byte before it (magic, length, header, payload)

Header: ``{"format": 1, "arch": {...}, "metadata": {...}, "payload_bytes": P, "tensors": [...]}``
where ``arch`` rebuilds the ORIGINAL (unpruned) model (``{"name", "kwargs"}`` for a built-in
model, ``{"factory", "kwargs"}`` for ``package.module:factory``, ``{"torchscript": true}`` for a
TorchScript model, see :mod:`qubocompress.models.user`) and ``tensors`` lists
every tensor of the state_dict in payload order, back to back (each one's byte offset is the sum
of the sizes before it; the entries carry no offsets, which keeps the header small):

* ``{"name", "shape", "bits": b}``: a quantized Conv2d/Linear weight (see
  :mod:`qubocompress.apply.quantize`): its integer codes offset to unsigned (``code + qmax``; at
  1 bit ``(code + 1) / 2``), split into ``b`` bit planes per weight (least significant first) and
  ``np.packbits``-ed little-endian: exactly ``b`` bits per weight, ``ceil(n * b / 8)`` bytes;
  then ``shape[0]`` float32 per-channel scales (``4 * shape[0]`` bytes);
* ``{"name", "shape", "dtype"}``: every other tensor (biases, BatchNorm parameters and running
  statistics, full-precision weights) stored raw, ``n * itemsize`` bytes. Every floating tensor
  is stored as float32 (biases and BatchNorm are a tiny share of the bytes, and kept exact),
  integer buffers (``num_batches_tracked``) in their own integer type;
* for a TorchScript model only, a last raw uint8 entry named ``@torchscript``: the model's
  TorchScript code with every tensor emptied, lzma-compressed
  (:func:`qubocompress.models.user.script_archive`, ~4 KB for the VGG), which loading refills
  from the entries before it.

Loading rebuilds the original architecture (on the meta device for a built-in model, so that no
header can make it allocate more than the file's tensors), shrinks every Conv2d/Linear/BatchNorm
to the stored shapes (the plan's pruning) and loads the dequantized weights, which equal
``quantize_model_weights(pruned_model, bits)`` exactly. It never imports or calls what the header
names (see :func:`load_artifact`); the CRC is integrity, not authenticity.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qubocompress.apply.quantize import (
    MAX_QUANT_BITS,
    QuantizedTensor,
    dequantize,
    max_code,
    quantize_tensor,
    quantized_layers,
)
from qubocompress.errors import ArtifactError, ModelError
from qubocompress.io import jsonable, write_bytes_atomic
from qubocompress.models.train import load_state
from qubocompress.models.user import Factory, arch_label, load_script_archive, rebuild_model, script_archive

MAGIC = b"QCZ1"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sI")
_CRC = struct.Struct("<I")
_SCALE_DTYPE = np.dtype("<f4")
_RAW_DTYPES = {
    "float32": np.dtype("<f4"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SCRIPT_ENTRY = "@torchscript"


def pack_codes(qt: QuantizedTensor) -> bytes:
    """The codes of ``qt`` packed at exactly ``qt.bits`` bits each (``ceil(n*bits/8)`` bytes)."""
    codes = qt.codes.reshape(-1).to(torch.int32).numpy()
    unsigned = (codes + 1) // 2 if qt.bits == 1 else codes + max_code(qt.bits)
    planes = (unsigned[:, None] >> np.arange(qt.bits, dtype=np.int32)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_codes(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` signed int32 codes."""
    planes = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    unsigned = (planes.reshape(count, bits).astype(np.int32) << np.arange(bits, dtype=np.int32)).sum(axis=1)
    return unsigned * 2 - 1 if bits == 1 else unsigned - max_code(bits)


def _raw_array(tensor: torch.Tensor) -> tuple[str, np.ndarray]:
    if tensor.is_floating_point():
        return "float32", tensor.to(torch.float32).numpy()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in _RAW_DTYPES:
        raise ArtifactError(f"cannot store a tensor of dtype {tensor.dtype} in an artifact")
    return name, tensor.numpy()


def _encode(model: nn.Module, bits: Mapping[str, int]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Header entries and payload chunks for every tensor of ``model.state_dict()``."""
    quantized = {f"{name}.weight": b for name, b in quantized_layers(model, bits).items()}
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu()
        entry: dict[str, Any] = {"name": key, "shape": list(tensor.shape)}
        if key in quantized:
            qt = quantize_tensor(tensor, quantized[key])
            entry["bits"] = qt.bits
            chunks += [pack_codes(qt), qt.scale.numpy().astype(_SCALE_DTYPE).tobytes()]
        else:
            entry["dtype"], array = _raw_array(tensor)
            chunks.append(np.ascontiguousarray(array, dtype=_RAW_DTYPES[entry["dtype"]]).tobytes())
        entries.append(entry)
    return entries, chunks


def _normalised_arch(arch: Any) -> dict[str, Any]:
    """``arch`` as stored: ``{"name"|"factory": str, "kwargs": dict}`` or ``{"torchscript": True}``."""
    if isinstance(arch, Mapping) and arch.get("torchscript") is True:
        return {"torchscript": True}
    for key in ("factory", "name"):
        if isinstance(arch, Mapping) and isinstance(arch.get(key), str) and isinstance(arch.get("kwargs", {}), Mapping):
            return {key: arch[key], "kwargs": dict(arch.get("kwargs", {}))}
    raise ArtifactError(
        "arch must be {'name': str, 'kwargs': dict}, {'factory': 'pkg.mod:make', 'kwargs': dict} or "
        f"{{'torchscript': True}} describing the unpruned model, got {arch!r}"
    )


def artifact_bytes(
    model: nn.Module,
    bits: Mapping[str, int],
    arch: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> bytes:
    """The artifact file of ``model`` (already pruned) with its weights quantized to ``bits``.

    ``bits``: layer name -> bit-width (32 or absent: float32). ``arch``: the dict that rebuilds
    the original unpruned model (see the module docstring); for ``{"torchscript": True}``
    ``model`` must be the ScriptModule, whose code is stored too. ``metadata``: any JSON-ready
    dict (plan, preprocessing), returned by :func:`load_artifact`.
    """
    stored_arch = _normalised_arch(arch)
    entries, chunks = _encode(model, bits)
    if stored_arch.get("torchscript"):
        if not isinstance(model, torch.jit.ScriptModule):
            raise ArtifactError(f"arch says torchscript, but the model is a {type(model).__name__}, not a ScriptModule")
        chunks.append(script_archive(model))
        entries.append({"name": SCRIPT_ENTRY, "shape": [len(chunks[-1])], "dtype": "uint8"})
    payload_bytes = sum(len(chunk) for chunk in chunks)
    header = {
        "format": FORMAT_VERSION,
        "arch": stored_arch,
        "metadata": dict(metadata or {}),
        "payload_bytes": payload_bytes,
        "tensors": entries,
    }
    try:
        header_bytes = json.dumps(header, separators=(",", ":"), default=jsonable).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"artifact arch/metadata must be JSON-serialisable: {exc}") from exc
    body = b"".join([_PREFIX.pack(MAGIC, len(header_bytes)), header_bytes, *chunks])
    return body + _CRC.pack(zlib.crc32(body))


def save_artifact(
    path: str | os.PathLike[str],
    model: nn.Module,
    bits: Mapping[str, int],
    arch: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Write :func:`artifact_bytes` to ``path`` atomically; returns the file size in bytes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ArtifactError(f"cannot write artifact {path}: {path.parent} is not an existing directory")
    return write_bytes_atomic(path, artifact_bytes(model, bits, arch, metadata))


def _read_header(path: str, data: bytes) -> tuple[dict[str, Any], memoryview]:
    """Check magic, lengths and checksum; return the header and the payload."""
    if len(data) < len(MAGIC) and data and MAGIC.startswith(data):
        raise ArtifactError(f"{path} is truncated ({len(data)} bytes); write the artifact again")
    if data[: len(MAGIC)] != MAGIC:
        raise ArtifactError(f"{path} is not a qubocompress artifact (no QCZ1 magic)")
    if len(data) < _PREFIX.size + _CRC.size:
        raise ArtifactError(f"{path} is truncated ({len(data)} bytes); write the artifact again")
    _, header_len = _PREFIX.unpack_from(data)
    header_end = _PREFIX.size + header_len
    if len(data) < header_end + _CRC.size:
        raise ArtifactError(f"{path} is truncated ({len(data)} bytes, header alone needs {header_end}); write it again")
    header: dict[str, Any] | None
    try:
        header = json.loads(bytes(data[_PREFIX.size : header_end]).decode("utf-8"))
        expected = header_end + int(header["payload_bytes"]) + _CRC.size
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        header = None
    else:
        if len(data) < expected:
            raise ArtifactError(f"{path} is truncated ({len(data)} of {expected} bytes); write the artifact again")
        if len(data) > expected:
            raise ArtifactError(f"{path} is corrupt ({len(data) - expected} unexpected bytes after its end)")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(memoryview(data)[: len(data) - _CRC.size]) != stored_crc:
        raise ArtifactError(f"{path} is corrupt (checksum mismatch); write the artifact again")
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} is corrupt (unreadable header)")
    if header.get("format") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format {header.get('format')!r}; this qubocompress reads format {FORMAT_VERSION}"
        )
    return header, memoryview(data)[header_end : len(data) - _CRC.size]


def _decode_tensors(entries: list[dict[str, Any]], payload: memoryview) -> dict[str, torch.Tensor]:
    """The state dict; KeyError/ValueError/TypeError when the entries do not describe the payload."""
    state: dict[str, torch.Tensor] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry["name"], str):
            raise ValueError(f"a tensor name is {entry['name']!r}, not a string")
        shape = tuple(int(n) for n in entry["shape"])
        if any(n < 0 for n in shape):
            raise ValueError(f"tensor {entry['name']!r} has a negative size")
        count = math.prod(shape)  # a Python int: no overflow before the size check below
        if "bits" in entry:
            bits = int(entry["bits"])
            if not (1 <= bits <= MAX_QUANT_BITS) or not shape:
                raise ValueError(f"tensor {entry['name']!r} has bits {bits} or no shape")
            code_bytes = -(-count * bits // 8)
            scale_bytes = shape[0] * _SCALE_DTYPE.itemsize
            end = offset + code_bytes + scale_bytes
            if end > len(payload):
                raise ValueError(f"tensor {entry['name']!r} does not fit the payload")
            codes = unpack_codes(payload[offset : offset + code_bytes], bits, count).reshape(shape)
            scale = np.frombuffer(payload[offset + code_bytes : end], dtype=_SCALE_DTYPE).copy()
            qt = QuantizedTensor(codes=torch.from_numpy(codes), scale=torch.from_numpy(scale), bits=bits, shape=shape)
            state[entry["name"]] = dequantize(qt)
        else:
            dtype = _RAW_DTYPES[entry["dtype"]]
            end = offset + count * dtype.itemsize
            if end > len(payload):
                raise ValueError(f"tensor {entry['name']!r} does not fit the payload")
            array = np.frombuffer(payload[offset:end], dtype=dtype).reshape(shape)
            state[entry["name"]] = torch.from_numpy(array.copy())
        offset = end
    if offset != len(payload):
        raise ValueError(f"the tensors cover {offset} of {len(payload)} payload bytes")
    return state


def _conv_like(old: nn.Conv2d, shape: tuple[int, ...]) -> nn.Conv2d:
    out_channels, in_per_group = shape[0], shape[1]
    depthwise = old.groups > 1 and old.groups == old.in_channels == old.out_channels
    groups = out_channels if depthwise else old.groups
    return nn.Conv2d(
        in_per_group * groups,
        out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )


def _resized(module: nn.Module, name: str, state: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """A replacement for ``module`` with the stored sizes, or None when it already fits."""
    prefix = f"{name}." if name else ""
    weight = state.get(prefix + "weight")
    if isinstance(module, nn.Conv2d) and weight is not None and weight.shape != module.weight.shape:
        return _conv_like(module, tuple(weight.shape))
    if isinstance(module, nn.Linear) and weight is not None and weight.shape != module.weight.shape:
        return nn.Linear(
            weight.shape[1],
            weight.shape[0],
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
    if isinstance(module, BATCH_NORMS):
        stored = weight if weight is not None else state.get(prefix + "running_mean")
        if stored is not None and stored.shape[0] != module.num_features:
            reference = next(iter(module.state_dict().values()))
            return type(module)(
                stored.shape[0],
                eps=module.eps,
                momentum=module.momentum,
                affine=module.affine,
                track_running_stats=module.track_running_stats,
                device=reference.device,
            )
    return None


def _shrink_to(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Replace every Conv2d/Linear/BatchNorm of ``model`` whose stored shape differs."""
    for name, module in list(model.named_modules()):
        replacement = _resized(module, name, state)
        if replacement is None or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, replacement)


def load_artifact(
    path: str | os.PathLike[str],
    factory: Factory | str | None = None,
    *,
    trust_torchscript: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Read an artifact written by :func:`save_artifact`: the pruned, dequantized model (in eval
    mode) and the stored metadata (see :func:`read_artifact`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or exc}") from exc
    return read_artifact(data, str(path), factory, trust_torchscript=trust_torchscript)


def read_artifact(
    data: bytes, label: str, factory: Factory | str | None = None, *, trust_torchscript: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The model and metadata of the artifact ``data`` (``label`` names it in errors).

    Loading never imports or calls anything the file names. A built-in model is rebuilt from the
    fixed table of built-in models; a user model only by ``factory``, the callable (or
    ``package.module:factory``) that builds the unpruned model, which must be the one the file
    records (:func:`qubocompress.models.user.rebuild_model`); a TorchScript model, whose stored code
    loading would run, only with ``trust_torchscript=True``. The checksum detects damage, not who
    wrote the file. Raises ArtifactError when the data is not an artifact, truncated or corrupt,
    or does not fit the rebuilt architecture, or when the architecture cannot be rebuilt.
    """
    path = label
    header, payload = _read_header(path, data)
    try:
        arch = _normalised_arch(header["arch"])
        state = _decode_tensors(header["tensors"], payload)
        metadata = dict(header.get("metadata") or {})
        archive = state.pop(SCRIPT_ENTRY).numpy().tobytes() if arch.get("torchscript") else None
    except (KeyError, IndexError, ValueError, TypeError, OverflowError, ArtifactError) as exc:
        raise ArtifactError(f"{path} is corrupt (malformed header: {exc})") from exc
    return rebuilt_model(path, arch, state, archive, factory, trust_torchscript, what="artifact"), metadata


def one_line(text: str) -> str:
    """``text`` on one line (a name read from a file may hold line breaks)."""
    return " ".join(text.split())


def rebuilt_model(
    label: str | Path,
    arch: dict[str, Any],
    state: dict[str, torch.Tensor],
    archive: bytes | None,
    factory: Factory | str | None,
    trust_torchscript: bool,
    what: str,
) -> nn.Module:
    """The model of ``arch`` (or of the TorchScript ``archive``, only when trusted) holding
    ``state``, in eval mode, under the reading rules of :func:`read_artifact`; every failure is a
    one-line ArtifactError (``label`` names the file, ``what`` its kind)."""
    try:
        if archive is not None:
            if not trust_torchscript:
                raise ArtifactError(
                    f"{label} holds TorchScript code, which loading would run: pass trust_torchscript=True "
                    "only for a file you trust (its checksum shows it is undamaged, not who wrote it)"
                )
            return load_script_archive(archive, state)
        model = rebuild_model(arch, factory)
    except ModelError as exc:  # the names in it come from the file and may hold any character
        name, reason = one_line(arch_label(arch)), one_line(str(exc))
        raise ArtifactError(f"{label}: cannot rebuild its {name} model: {reason}") from exc
    try:
        _shrink_to(model, state)
        load_state(model, state, Path(label), repr(arch_label(arch)), what=what)
    except ModelError as exc:
        raise ArtifactError(str(exc)) from None
    except (RuntimeError, ValueError) as exc:
        reason = one_line(str(exc))[:300] or type(exc).__name__
        raise ArtifactError(f"{label} does not fit architecture {arch_label(arch)!r}: {reason}") from exc
    return model.eval()
