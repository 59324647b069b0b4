"""Reading dimod's BQM file format from an untrusted file, safely.

``dimod.BinaryQuadraticModel.from_file`` trusts the file: a neighbourhood index outside the
model, which a damaged or crafted ``.bqm`` can hold, makes its C++ core write out of bounds and
the process crash (found by fuzzing: a segmentation fault, not an exception). :func:`read_bqm`
checks every size and index of the layout (dimod's ``to_file``, versions 1.0 and 2.0) with numpy
first and only then hands the bytes to dimod.
"""

from __future__ import annotations

import io
import json
import struct

import dimod
import numpy as np

MAGIC = b"DIMODBQM"
VERSIONS = ((1, 0), (2, 0))
BIAS_TYPES = ("float32", "float64")
INDEX_TYPES = ("int16", "int32", "int64", "uint16", "uint32", "uint64")
VARTYPES = ("BINARY", "SPIN")
LABELS_MAGIC = b"VARS"


def _header(data: bytes) -> tuple[tuple[int, int], dict, int]:
    """(version, header dict, offset of the body) of a BQM file; ValueError when malformed."""
    prefix = len(MAGIC) + 2 + 4
    if len(data) < prefix or data[: len(MAGIC)] != MAGIC:
        raise ValueError("no DIMODBQM magic")
    version = (data[len(MAGIC)], data[len(MAGIC) + 1])
    if version not in VERSIONS:
        raise ValueError(f"unsupported version {version}")
    (length,) = struct.unpack_from("<I", data, len(MAGIC) + 2)
    if prefix + length > len(data):
        raise ValueError("truncated header")
    header = json.loads(data[prefix : prefix + length].decode("ascii"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return version, header, prefix + length


def _layout(header: dict) -> tuple[int, int, np.dtype, np.dtype, np.dtype]:
    """(variables, interactions, bias, variable-index and neighbourhood-index dtypes)."""
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError(f"bad shape {shape!r}")
    if header.get("vartype") not in VARTYPES:
        raise ValueError(f"bad vartype {header.get('vartype')!r}")
    types = [header.get(key) for key in ("dtype", "itype", "ntype")]
    if types[0] not in BIAS_TYPES or types[1] not in INDEX_TYPES or types[2] not in INDEX_TYPES:
        raise ValueError(f"bad dtypes {types!r}")
    return shape[0], shape[1], *(np.dtype(name).newbyteorder("<") for name in types)  # type: ignore[return-value]


def check_bqm_bytes(data: bytes) -> None:
    """Raise ValueError unless ``data`` is a BQM file whose every size and index is consistent."""
    version, header, position = _header(data)
    variables, interactions, bias, itype, ntype = _layout(header)
    linear = np.dtype([("nidx", ntype), ("bias", bias)])
    quadratic = np.dtype([("outvar", itype), ("bias", bias)])
    body = variables * linear.itemsize + 2 * interactions * quadratic.itemsize + bias.itemsize
    if position + body > len(data):
        raise ValueError("truncated body")
    position += bias.itemsize
    starts = np.frombuffer(data, linear, variables, position)["nidx"].astype(np.int64)
    position += variables * linear.itemsize
    ends = np.append(starts[1:], 2 * interactions)
    if variables and (starts[0] != 0 or np.any(ends < starts)):
        raise ValueError("neighbourhood offsets out of order")
    neighbours = np.frombuffer(data, quadratic, 2 * interactions, position)["outvar"].astype(np.int64)
    position += 2 * interactions * quadratic.itemsize
    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= variables):
        raise ValueError("a neighbour index outside the model")
    for v, (start, end) in enumerate(zip(starts, ends)):
        row = neighbours[start:end]
        if np.any(np.diff(row) <= 0) or np.any(row == v):
            raise ValueError(f"the neighbourhood of variable {v} is not sorted, repeats, or holds itself")
    labelled = header.get("variables")
    if version >= (2, 0) and labelled:
        if data[position : position + len(LABELS_MAGIC)] != LABELS_MAGIC or position + 8 > len(data):
            raise ValueError("missing variable labels")
        (length,) = struct.unpack_from("<I", data, position + len(LABELS_MAGIC))
        labels = json.loads(data[position + 8 : position + 8 + length].decode("ascii"))
        if not isinstance(labels, list) or len(labels) != variables:
            raise ValueError("the variable labels do not match the variables")
    elif version < (2, 0) and labelled and (not isinstance(labelled, list) or len(labelled) != variables):
        raise ValueError("the variable labels do not match the variables")


def read_bqm(data: bytes) -> dimod.BinaryQuadraticModel:
    """The BQM in ``data`` (dimod's file format), checked first (:func:`check_bqm_bytes`);
    ValueError (or dimod's own error) when the bytes are not a consistent BQM file."""
    check_bqm_bytes(data)
    return dimod.BinaryQuadraticModel.from_file(io.BytesIO(data))
