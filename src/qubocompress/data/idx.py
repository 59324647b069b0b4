"""Reader for IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian.
Every problem with a file (missing, unreadable, corrupt, truncated, of an unknown type) raises
:class:`~qubocompress.errors.DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np

from qubocompress.errors import DataError

# IDX type code -> numpy dtype (big-endian, as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


def _decompress_gzip(raw: bytes, path: Path) -> tuple[bytes, bool]:
    """Decompress every gzip member of ``raw``; return the data and whether the stream ended early."""
    parts: list[bytes] = []
    rest = raw
    while rest:
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            parts.append(stream.decompress(rest))
        except zlib.error as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc})") from None
        if not stream.eof:
            return b"".join(parts), True
        rest = stream.unused_data.lstrip(b"\0")  # gzip allows zero padding after a member
    return b"".join(parts), False


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """Return the (decompressed) content of ``path`` and whether a gzip stream ended early."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not an IDX file") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if raw.startswith(GZIP_MAGIC):
        return _decompress_gzip(raw, path)
    return raw, False


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its stored shape and type.

    Returns native-endian data: uint8 for images and labels (type code 0x08), or the signed
    integer / float type the header names.
    """
    path = Path(path)
    data, stream_truncated = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    zero_a, zero_b, type_code, ndim = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero_a != 0 or zero_b != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file (magic number 0x{magic:08x}; expected 0x000008NN "
            "for uint8 data with NN dimensions)"
        )
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(f"{path} is truncated: its header lists {ndim} dimensions but ends early")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header_bytes
    shape_text = "x".join(str(d) for d in dims)
    if found < expected or stream_truncated:
        raise DataError(f"{path} is truncated: expected {expected} bytes of data for shape {shape_text}, found {found}")
    if found > expected:
        raise DataError(f"{path} is corrupt: {found - expected} unexpected bytes after the {shape_text} data")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_bytes)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)
