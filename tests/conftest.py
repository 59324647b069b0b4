"""Shared test settings."""

import os
from collections.abc import Iterator
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
