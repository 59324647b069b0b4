"""Shared test settings."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

# Same as the CLI: OpenMP threads must not spin while tests share two cores (see cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Trained models and analyses go to a temporary cache, never the user's (one training per
    model for the whole session)."""
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("QUBOCOMPRESS_CACHE")
    os.environ["QUBOCOMPRESS_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("QUBOCOMPRESS_CACHE", None)
    else:
        os.environ["QUBOCOMPRESS_CACHE"] = previous


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread within the test (small models run faster so on two shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted with ``options`` on ``folder`` for the block, or a skipped test where
    mounting is not permitted (not root, or no right to mount)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB file system (tmpfs): writing more than that fails with ENOSPC, as a full disk."""
    with _tmpfs(tmp_path / "full-disk", "size=64k") as folder:
        yield folder


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A real read-only file system (root ignores permission bits, so a chmod would not do)."""
    with _tmpfs(tmp_path / "read-only", "ro,size=64k") as folder:
        yield folder
