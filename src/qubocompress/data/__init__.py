"""data layer: Fashion-MNIST (IDX), scikit-learn digits, user folders, synthetic test data."""

from qubocompress.data.datasets import (
    DEFAULT_FASHION_MNIST_DIR,
    Dataset,
    Split,
    load_dataset,
    synthetic_dataset,
)
from qubocompress.data.idx import read_idx

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "Dataset",
    "Split",
    "load_dataset",
    "read_idx",
    "synthetic_dataset",
]
