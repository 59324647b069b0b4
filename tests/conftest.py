"""Shared test settings."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
