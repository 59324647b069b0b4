"""Atomic file output: a file is either absent or whole, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from qubocompress.errors import ArtifactError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> int:
    """Call ``write(handle)`` on a temp file beside ``path``, then rename it into place.

    Returns the bytes written. On any error the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ArtifactError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def write_bytes_atomic(path: str | Path, data: bytes) -> int:
    """Write ``data`` to ``path`` atomically; returns its size in bytes."""
    return atomic_write(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | Path, text: str) -> int:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> int:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=jsonable) + "\n")


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays and paths in JSON output."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder (or accept an existing one); a file in its place is an error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"output folder {path} is a file; pass a folder path with --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create output folder {path}: {exc.strerror or exc}") from exc
    return path
