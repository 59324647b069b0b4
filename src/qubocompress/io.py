"""File output that is whole or absent: atomic files, atomic run folders, one writer at a time.

Every writer of qubocompress goes through :func:`atomic_write` (a file) or :func:`run_folder` (a
folder of files published together), so that an interrupted, failing or concurrent run never
leaves a half-written file or a folder that mixes two runs, and every file and folder gets the
permissions the user's umask asks for. A failure of the file system (no space left, a read-only
place, a path under a file) is an :class:`~qubocompress.errors.ArtifactError` with one line.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from qubocompress.errors import ArtifactError

PARTIAL_MARK = ".partial-"
OLD_MARK = ".old-"


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_reason(exc: OSError) -> str:
    """A short reason for a file-system error, in the words users know."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "the file system is read-only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if exc.errno == errno.EISDIR:
        return "it is an existing folder"
    return exc.strerror or str(exc)


def _parent_folder(path: Path) -> Path:
    """``path``'s folder, created if missing; ArtifactError when it cannot be."""
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists() and not ancestor.is_dir():
            raise ArtifactError(f"cannot write {path}: {ancestor} is a file, not a folder")
        if ancestor.exists():
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path}: {os_reason(exc)}") from None
    return parent


def _temp_file_beside(path: Path, suffix: str, failure: str) -> tuple[int, str]:
    """A new temp file in ``path``'s folder (made if missing): (fd, name); an ArtifactError that
    starts with ``failure`` when ``path`` is a folder or its folder takes no file."""
    if path.is_dir():
        raise ArtifactError(f"{failure}: it is an existing folder")
    parent = _parent_folder(path)
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=parent)
    except OSError as exc:
        raise ArtifactError(f"{failure}: {os_reason(exc)}") from None


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> int:
    """Call ``write(handle)`` on a temp file beside ``path``, then rename it into place.

    The file gets mode ``0o666 & ~umask``. Returns the bytes written. On any error the temp file
    is removed and ``path`` is untouched; a file-system error is an ArtifactError.
    """
    path = Path(path)
    fd, tmp = _temp_file_beside(path, ".tmp", f"cannot write {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ArtifactError(f"cannot write {path}: {os_reason(exc)}") from None
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


def check_writable_file(path: str | Path, flag: str) -> Path:
    """``path`` can be written as a file (its folder exists or can be made, and takes a file),
    checked before any long work; ArtifactError naming ``flag`` otherwise. Creates the folder."""
    path = Path(path)
    fd, probe = _temp_file_beside(path, ".probe", f"cannot write {flag} {path}")
    os.close(fd)
    os.unlink(probe)
    return path


@contextmanager
def exclusive_lock(target: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of ``target`` (a file ``.<name>.lock`` beside it) for the block; an
    ArtifactError at once when another process holds it. ``what`` names the target in the error."""
    target = Path(target)
    parent = _parent_folder(target)
    lock_path = parent / f".{target.name}.lock"
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the block
    except OSError as exc:
        raise ArtifactError(f"cannot lock {what} {target}: {os_reason(exc)}") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(
                f"another qubocompress run is writing {what} {target}; wait for it or choose another folder"
            ) from None
        yield
    finally:
        handle.close()  # closing releases the lock; the lock file stays (removing it would race)


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder (or accept an existing one); a file in its place is an error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"output folder {path} is a file; pass a folder path with --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create output folder {path}: {os_reason(exc)}") from None
    return path


def _remove_leftovers(parent: Path, name: str) -> None:
    """Folders that an earlier run of ``name`` left behind when it was killed (the caller holds
    the lock, so no live run owns them)."""
    for leftover in parent.glob(f".{name}{PARTIAL_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in parent.glob(f".{name}{OLD_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def run_folder(target: str | Path) -> Iterator[Path]:
    """A run's results folder, published whole: the block writes into a fresh folder beside
    ``target`` (``.<name>.partial-*``), which replaces ``target`` only when the block ends without
    error. An interrupted or failing run leaves the previous ``target`` as it was; a second run on
    the same ``target`` is refused while the first one holds it (:func:`exclusive_lock`)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ArtifactError(f"output folder {target} is a file; pass a folder path with --out")
    with exclusive_lock(target, "the results folder"):
        parent = target.parent
        _remove_leftovers(parent, target.name)
        try:
            partial = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_MARK}", dir=parent))
            os.chmod(partial, 0o777 & ~current_umask())
        except OSError as exc:
            raise ArtifactError(f"cannot create output folder {target}: {os_reason(exc)}") from None
        try:
            yield partial
            _publish(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise


def _publish(partial: Path, target: Path) -> None:
    """Put the finished ``partial`` folder in ``target``'s place (the old one is removed after)."""
    old = None
    try:
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}{OLD_MARK}", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(partial, target)
    except OSError as exc:
        if old is not None and not target.exists() and (old / target.name).exists():
            os.replace(old / target.name, target)
        raise ArtifactError(f"cannot publish the results folder {target}: {os_reason(exc)}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# SQLite's messages of a failing environment, in the words of io.os_reason (the error codes of
# sqlite3 exceptions need Python 3.11)
SQLITE_REASONS = {
    "database or disk is full": "no space left on the device",
    "attempt to write a readonly database": "the file or its file system is read-only",
    "unable to open database file": "the file cannot be opened or created there",
}


def sqlite_reason(exc: sqlite3.DatabaseError) -> str:
    """A short reason for a failed SQLite call, in the words users know."""
    text = str(exc)
    if type(exc) is sqlite3.DatabaseError:  # the file's own fault: "file is not a database", "... is malformed"
        return f"it is not a usable SQLite file ({text}); delete it or run with --fresh"
    return SQLITE_REASONS.get(text, text)
