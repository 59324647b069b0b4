"""Data sets as in-memory tensors: Fashion-MNIST, scikit-learn digits, user folders, synthetic.

Every data set comes with four fixed splits (independent of the user's seed, so runs with
different seeds compare on the same data): ``train`` and ``val`` from the training file (a fixed
permutation, val = 1/6 of it, i.e. 10,000 images for Fashion-MNIST), ``test`` from the test file,
and ``calib``, a fixed subset of ``train`` (at most 2,048 samples) for sensitivity analysis.
Images are float32 N×C×H×W, x = (pixel/255 - mean) / std per channel, where the preprocessing
(``normalize``, see :func:`parse_normalize`) picks mean and std: "mean-std" (the default) uses the
train split's mean and std of pixel/255, "none" keeps pixel/255 in [0, 1] (mean 0, std 1), and
explicit numbers "MEAN,STD" or "M1,...,MC,S1,...,SC" give them directly; labels are int64.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
import torch.nn.functional as F

from qubocompress.data.idx import read_idx
from qubocompress.errors import DataError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data DIR"
NAMED_SOURCES = ("fashion-mnist", "digits")
# IDX file stems in a data directory, each accepted as ``stem``, ``stem.gz`` or with a dot
# instead of the dash before "idx" (both spellings circulate).
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# The only decoders Pillow may use on them, whatever a file's bytes claim to be (never, say, EPS,
# which Pillow hands to Ghostscript); a file none of them parses is a DataError.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP")
SIXTEEN_BIT_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L"})  # Pillow's modes of a 16-bit grey PNG
GRAY_MODES = frozenset({"1", "L", "LA", "F"}) | SIXTEEN_BIT_GRAY_MODES
# The most an image folder may take once decoded (float32 N×C×H×W, train and test): beyond it a
# DataError before any pixel is decoded (a folder of small files can hold huge images).
MAX_DECODED_IMAGE_BYTES = 4 * 2**30
SPLIT_SEED = 0  # the fixed train/val/test/calib permutations
VAL_FRACTION_DENOMINATOR = 6  # val = 1/6 of the training file
DIGITS_TEST_FRACTION = 0.2
CALIB_SIZE = 2048
DIGITS_SIZE = 28  # digits are upsampled from 8x8 to this size
NORMALIZE_MEAN_STD = "mean-std"  # per channel, the train split's mean and std of pixel/255
NORMALIZE_NONE = "none"  # pixel/255 as is, in [0, 1]
NORMALIZE_VALUES = "values"  # explicit means and stds, given as numbers
NORMALIZE_FORMS = "mean-std, none, or MEAN,STD (two numbers, or 2 per channel)"
MIN_STD = 1e-6  # floor of a computed std (pixel/255 units), so a constant channel does not divide by 0


@dataclass(frozen=True)
class Split:
    """Images ``x`` (float32 N×C×H×W, normalised) and labels ``y`` (int64 N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Preprocessing:
    """A validated ``normalize`` choice: images become x = (pixel/255 - mean) / std per channel.

    Attributes:
        method: "mean-std" (the train split's statistics), "none" (mean 0, std 1: x = pixel/255)
            or "values" (the explicit ``mean`` and ``std`` below).
        text: the canonical text, as ``--normalize`` takes it: "mean-std", "none" or the numbers
            (means, then stds) as given.
        mean, std: for "values", one number each (applied to every channel) or one per channel,
            in pixel/255 units; empty for the other methods.
    """

    method: str
    text: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


NormalizeSpec = str | Preprocessing | tuple[float | Sequence[float], float | Sequence[float]]


@dataclass(frozen=True)
class Dataset:
    """A data set with its fixed splits.

    Attributes:
        name: short name, safe in file names ("fashion-mnist", "digits", "synthetic", ...).
        input_shape: (C, H, W) of one image.
        classes: class names, index = label.
        source: where it came from (a path or a description).
        mean, std: the per-channel values applied, x = (pixel/255 - mean) / std: the train split's
            statistics for "mean-std", 0 and 1 for "none", the given numbers otherwise.
        preprocessing: the canonical ``normalize`` text used ("mean-std", "none" or the numbers),
            for metrics and model files (:meth:`normalize` is the method that applies it).
        note: a one-line notice for the user (e.g. that a fallback data set is used), or None.
    """

    name: str
    train: Split
    val: Split
    test: Split
    calib: Split
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocessing: str = NORMALIZE_MEAN_STD
    note: str | None = None

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise new images (N×C×H×W, values in [0, 1]) the way this data set's are."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (pixels.float() - mean) / std

    def fingerprint(self) -> str:
        """A sha256 hex digest of the splits' shapes, labels and a strided sample of the images."""
        digest = hashlib.sha256()
        for split_name in ("train", "val", "test"):
            split: Split = getattr(self, split_name)
            digest.update(f"{split_name}:{tuple(split.x.shape)}".encode())
            flat = split.x.reshape(-1)
            stride = max(1, flat.numel() // (1 << 20))
            digest.update(flat[::stride].contiguous().numpy().tobytes())
            digest.update(split.y.contiguous().numpy().tobytes())
        return digest.hexdigest()


def parse_normalize(value: NormalizeSpec) -> Preprocessing:
    """Validate a ``normalize`` choice before any data is loaded.

    ``value``: "mean-std", "none", "MEAN,STD" (two numbers, applied to every channel),
    "M1,...,MC,S1,...,SC" (per channel), a ``(mean, std)`` pair of numbers or of equally long
    sequences, or a :class:`Preprocessing` (returned as is). Means and stds are in pixel/255 units.
    Raises a one-line DataError for anything else, a non-finite number or a std <= 0; whether a
    per-channel list matches the data's channels is checked when the data is loaded.
    """
    if isinstance(value, Preprocessing):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in (NORMALIZE_MEAN_STD, NORMALIZE_NONE):
            return Preprocessing(method=text.lower(), text=text.lower())
        tokens = [token.strip() for token in text.split(",")]
        try:
            numbers = [float(token) for token in tokens]
        except ValueError:
            numbers = []
        if not numbers or len(numbers) % 2:
            raise DataError(f"--normalize must be {NORMALIZE_FORMS}; got {value!r}")
        half = len(numbers) // 2
        return _explicit_preprocessing(numbers[:half], numbers[half:], ",".join(tokens), value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            arrays = [np.asarray(part, dtype=np.float64) for part in value]
        except (TypeError, ValueError):
            arrays = []
        if len(arrays) != 2 or any(array.ndim > 1 for array in arrays):
            raise DataError(f"--normalize must be {NORMALIZE_FORMS}; got {value!r}")
        mean, std = ([float(v) for v in array.reshape(-1)] for array in arrays)
        if not mean or len(mean) != len(std):
            raise DataError(f"--normalize needs as many means as stds (at least one); got {value!r}")
        text = ",".join(repr(v) for v in mean + std)
        return _explicit_preprocessing(mean, std, text, value)
    raise DataError(f"--normalize must be {NORMALIZE_FORMS}; got {value!r}")


def _explicit_preprocessing(mean: list[float], std: list[float], text: str, given: NormalizeSpec) -> Preprocessing:
    """A "values" Preprocessing after checking that every number is finite and every std > 0."""
    if not all(math.isfinite(v) for v in mean + std):
        raise DataError(f"--normalize takes finite numbers only; got {given!r}")
    if min(std) <= 0:
        raise DataError(f"--normalize needs every std > 0; got {given!r}")
    return Preprocessing(method=NORMALIZE_VALUES, text=text, mean=tuple(mean), std=tuple(std))


def load_dataset(source: str | Path | None = None, normalize: NormalizeSpec = NORMALIZE_MEAN_STD) -> Dataset:
    """Load a data set.

    ``source``: None (Fashion-MNIST from the default folder, else scikit-learn's digits with a
    note), ``"fashion-mnist"``, ``"digits"``, or a directory holding the four IDX files or
    ``train/<class>/*.png`` and ``test/<class>/*.png`` image folders. ``normalize``: the
    preprocessing, see :func:`parse_normalize` (validated before anything is read).
    """
    preprocessing = parse_normalize(normalize)
    if source is None:
        if _idx_files(DEFAULT_FASHION_MNIST_DIR) is not None:
            return _load_idx_directory(DEFAULT_FASHION_MNIST_DIR, preprocessing)
        note = (
            f"Fashion-MNIST not found at {DEFAULT_FASHION_MNIST_DIR}; using scikit-learn's "
            f"digits instead ({INSTALL_HINT})"
        )
        return replace(_load_digits(preprocessing), note=note)
    text = str(source).strip()
    if text.lower() == "fashion-mnist":
        if _idx_files(DEFAULT_FASHION_MNIST_DIR) is None:
            raise DataError(f"Fashion-MNIST not found at {DEFAULT_FASHION_MNIST_DIR}; {INSTALL_HINT}")
        return _load_idx_directory(DEFAULT_FASHION_MNIST_DIR, preprocessing)
    if text.lower() == "digits":
        return _load_digits(preprocessing)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_directory(path, preprocessing)
    valid = ", ".join(NAMED_SOURCES)
    if path.exists():
        raise DataError(
            f"{path} is a file; the data source must be one of: {valid}, or a directory with IDX "
            "files or train/ and test/ image folders"
        )
    raise DataError(
        f"unknown data source {text!r} (no such directory); use one of: {valid}, or a directory "
        "with IDX files or train/<class>/ and test/<class>/ image folders"
    )


def synthetic_dataset(
    num_classes: int = 4,
    n_train: int = 256,
    n_val: int = 64,
    n_test: int = 64,
    shape: tuple[int, int, int] = (1, 28, 28),
    seed: int = 0,
    normalize: NormalizeSpec = NORMALIZE_MEAN_STD,
) -> Dataset:
    """A small learnable data set for tests: class-dependent stripes and blob plus noise.

    Class k shows stripes at angle k·π/num_classes (random phase, per sample) and a bright
    blob at a class-dependent spot (jittered ±2 px), both under Gaussian noise, so a tiny CNN
    gets well above chance within a few dozen SGD steps. Pixels are in [0, 1] before the
    ``normalize`` preprocessing (see :func:`parse_normalize`).
    """
    preprocessing = parse_normalize(normalize)
    if num_classes < 2 or min(n_train, n_val, n_test) < 1:
        raise ValueError("synthetic_dataset needs num_classes >= 2 and at least one sample per split")
    channels, height, width = shape
    rng = np.random.default_rng(seed)
    total = n_train + n_val + n_test
    labels = rng.permutation(np.arange(total) % num_classes)
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    cols = np.arange(width, dtype=np.float32)[None, :] / width
    angle = labels * math.pi / num_classes
    phase = rng.uniform(0, 2 * math.pi, total)
    frequency = 4.0 * 2 * math.pi
    stripes = 0.5 + 0.5 * np.sin(
        frequency * (np.cos(angle)[:, None, None] * rows + np.sin(angle)[:, None, None] * cols) + phase[:, None, None]
    )
    spot_angle = 2 * math.pi * labels / num_classes
    jitter = rng.uniform(-2, 2, (total, 2)) / np.array([height, width])
    centre_r = 0.5 + 0.28 * np.sin(spot_angle) + jitter[:, 0]
    centre_c = 0.5 + 0.28 * np.cos(spot_angle) + jitter[:, 1]
    blob = np.exp(
        -((rows[None] - centre_r[:, None, None]) ** 2 + (cols[None] - centre_c[:, None, None]) ** 2) / (2 * 0.1**2)
    )
    gains = rng.uniform(0.6, 1.0, (total, channels, 1, 1))
    pixels = gains * (0.5 * stripes + blob)[:, None] + rng.normal(0, 0.25, (total, channels, height, width))
    pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32)
    images = torch.from_numpy(pixels)
    targets = torch.from_numpy(labels.astype(np.int64))
    train_idx = np.arange(n_train)
    val_idx = np.arange(n_train, n_train + n_val)
    test_idx = np.arange(n_train + n_val, total)
    return _assemble(
        name="synthetic",
        images=images,
        labels=targets,
        train_idx=train_idx,
        val_idx=val_idx,
        test_images=images[test_idx],
        test_labels=targets[test_idx],
        classes=tuple(f"class{k}" for k in range(num_classes)),
        source=f"synthetic(num_classes={num_classes}, shape={shape}, seed={seed})",
        preprocessing=preprocessing,
    )


def dataset_from_tensors(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    normalize: NormalizeSpec = NORMALIZE_NONE,
    name: str = "tensors",
) -> Dataset:
    """A data set of the caller's own images ``(x, y)``: x float N×C×H×W as the model takes them
    (``normalize`` "none", the default, keeps them as they are), y integer labels 0..K-1. The
    validation split is cut from ``train`` as for every data set, the calibration split drawn from
    the rest. A DataError (one line) for the wrong shapes, types or labels."""
    arrays = []
    for role, (x, y) in (("train", train), ("test", test)):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise DataError(f"the {role} data must be tensors (x, y), got {type(x).__name__} and {type(y).__name__}")
        if x.ndim != 4 or not x.is_floating_point():
            raise DataError(
                f"the {role} images must be a float tensor N×C×H×W, got {x.dtype} of shape {tuple(x.shape)}"
            )
        if y.ndim != 1 or y.is_floating_point() or y.is_complex() or len(y) != len(x):
            raise DataError(
                f"the {role} labels must be {len(x)} integers (one per image), got {y.dtype} of shape {tuple(y.shape)}"
            )
        arrays.append((x.detach().cpu().float(), y.detach().cpu().long()))
    (train_x, train_y), (test_x, test_y) = arrays
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"train images are {tuple(train_x.shape[1:])} but test images are {tuple(test_x.shape[1:])}")
    if len(train_y) == 0 or len(test_y) == 0:
        raise DataError("the train or the test data holds no samples")
    num_classes = int(train_y.max()) + 1
    low = int(torch.cat([train_y, test_y]).min())
    high = int(test_y.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"labels must lie in 0..{num_classes - 1} (the classes of the train labels), got {min(low, high)}"
        )
    train_idx, val_idx = _train_val_indices(len(train_y), name)
    return _assemble(
        name=name,
        images=train_x.clone(),
        labels=train_y,
        train_idx=train_idx,
        val_idx=val_idx,
        test_images=test_x,
        test_labels=test_y,
        classes=tuple(str(k) for k in range(num_classes)),
        source=f"tensors given in Python ({len(train_y)} train, {len(test_y)} test)",
        preprocessing=parse_normalize(normalize),
    )


def stacked_tensors(source: object, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a pair of tensors, a ``torch.utils.data.Dataset`` of ``(image, label)`` items,
    or a ``DataLoader`` of such batches, stacked into two tensors (the data must fit in memory)."""
    if isinstance(source, (tuple, list)) and len(source) == 2 and all(isinstance(t, torch.Tensor) for t in source):
        return source[0], source[1]
    if isinstance(source, torch.utils.data.DataLoader):
        batches = list(source)
    elif isinstance(source, torch.utils.data.Dataset):
        batches = [torch.utils.data.default_collate([source[i] for i in range(len(source))])]  # type: ignore[arg-type]
    else:
        raise DataError(
            f"the {role} data must be a pair of tensors (x, y), a torch Dataset or a DataLoader, "
            f"got {type(source).__name__}"
        )
    try:
        images = torch.cat([torch.as_tensor(batch[0]) for batch in batches])
        labels = torch.cat([torch.as_tensor(batch[1]) for batch in batches])
    except (TypeError, IndexError, RuntimeError, ValueError) as exc:
        raise DataError(f"the {role} data must yield (image, label) pairs of one shape ({exc})") from None
    return images, labels


def _assemble(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    classes: tuple[str, ...],
    source: str,
    preprocessing: Preprocessing,
) -> Dataset:
    """Cut train/val out of ``images`` (pixels in [0, 1]), normalise everything, add calib."""
    train_x = images[torch.from_numpy(train_idx)]
    val_x = images[torch.from_numpy(val_idx)]
    mean, std = _normalization(preprocessing, train_x, source)
    scale = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    train = Split(train_x.sub_(shift).div_(scale), labels[torch.from_numpy(train_idx)].clone())
    val = Split(val_x.sub_(shift).div_(scale), labels[torch.from_numpy(val_idx)].clone())
    test = Split(((test_images - shift) / scale).contiguous(), test_labels.clone())
    calib_rng = np.random.default_rng(SPLIT_SEED + 1)
    calib_idx = torch.from_numpy(np.sort(calib_rng.choice(len(train), size=min(CALIB_SIZE, len(train)), replace=False)))
    calib = Split(train.x[calib_idx], train.y[calib_idx])
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        calib=calib,
        num_classes=len(classes),
        input_shape=(int(train_x.shape[1]), int(train_x.shape[2]), int(train_x.shape[3])),
        classes=classes,
        source=source,
        mean=mean,
        std=std,
        preprocessing=preprocessing.text,
    )


def _normalization(
    preprocessing: Preprocessing, train_x: torch.Tensor, source: str
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in pixel/255 units to apply to images like ``train_x`` (N×C×H×W).

    "mean-std": the train split's statistics (float32 values, so they round-trip exactly);
    "none": 0 and 1; "values": the given numbers, repeated when one pair is given. Raises a
    one-line DataError when explicit per-channel values do not match the number of channels.
    """
    channels = int(train_x.shape[1])
    if preprocessing.method == NORMALIZE_MEAN_STD:
        std, mean = torch.std_mean(train_x, dim=(0, 2, 3), correction=0)
        std = std.clamp_min(MIN_STD)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if preprocessing.method == NORMALIZE_NONE:
        return (0.0,) * channels, (1.0,) * channels
    given = len(preprocessing.mean)
    if given == 1:
        return preprocessing.mean * channels, preprocessing.std * channels
    if given != channels:
        raise DataError(
            f"--normalize {preprocessing.text!r} gives {given} means and {given} stds but {source} has "
            f"{channels} channel(s); give MEAN,STD or {2 * channels} numbers (M1,...,S1,...)"
        )
    return preprocessing.mean, preprocessing.std


def _train_val_indices(count: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Fixed split of ``count`` training samples: (train indices, val indices), both sorted."""
    if count < 2:
        raise DataError(f"{source} has {count} training sample(s); at least 2 are needed")
    permutation = np.random.default_rng(SPLIT_SEED).permutation(count)
    n_val = max(1, count // VAL_FRACTION_DENOMINATOR)
    return np.sort(permutation[n_val:]), np.sort(permutation[:n_val])


def _find_idx_files(directory: Path) -> dict[str, Path | None]:
    """Path of each of the four IDX files in ``directory`` (None where missing)."""
    found: dict[str, Path | None] = {}
    for role, stem in IDX_STEMS.items():
        dotted = stem.replace("-idx", ".idx")
        candidates = [directory / f"{s}{suffix}" for s in (stem, dotted) for suffix in (".gz", "")]
        found[role] = next((c for c in candidates if c.is_file()), None)
    return found


def _idx_files(directory: Path) -> dict[str, Path] | None:
    """Paths of the four IDX files in ``directory``, or None if any is missing."""
    found = _find_idx_files(directory)
    if any(path is None for path in found.values()):
        return None
    return {role: path for role, path in found.items() if path is not None}


def _load_directory(directory: Path, preprocessing: Preprocessing) -> Dataset:
    expected = ", ".join(f"{stem}[.gz]" for stem in IDX_STEMS.values())
    found = _find_idx_files(directory)
    missing = [IDX_STEMS[role] for role, path in found.items() if path is None]
    if not missing:
        return _load_idx_directory(directory, preprocessing)
    if len(missing) < len(IDX_STEMS):
        raise DataError(f"{directory} lacks the IDX file(s) {', '.join(missing)}[.gz]; expected {expected}")
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        return _load_image_folders(directory, preprocessing)
    raise DataError(
        f"{directory} has no recognised data layout; expected the IDX files {expected}, or "
        "train/<class>/*.png and test/<class>/*.png image folders"
    )


def _directory_name(directory: Path) -> str:
    """A file-name-safe data set name for ``directory`` ("fashion-mnist" for the default one)."""
    try:
        if directory.resolve() == DEFAULT_FASHION_MNIST_DIR.resolve():
            return "fashion-mnist"
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9_.-]+", "-", directory.resolve().name.lower()).strip("-.")
    return slug or "data"


def _load_idx_directory(directory: Path, preprocessing: Preprocessing) -> Dataset:
    files = _idx_files(directory)
    if files is None:
        raise DataError(f"{directory} does not hold the four IDX files")
    arrays = {role: read_idx(path) for role, path in files.items()}
    for role in ("train_images", "test_images"):
        array, path = arrays[role], files[role]
        if array.ndim != 3 or array.dtype != np.uint8:
            raise DataError(f"{path} holds {array.dtype} data of shape {array.shape}; expected uint8 images N×H×W")
    for role in ("train_labels", "test_labels"):
        array, path = arrays[role], files[role]
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise DataError(f"{path} holds {array.dtype} data of shape {array.shape}; expected 1-D integer labels")
    for part in ("train", "test"):
        n_images, n_labels = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_images != n_labels:
            raise DataError(
                f"{files[f'{part}_labels']} has {n_labels} labels but "
                f"{files[f'{part}_images'].name} has {n_images} images"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"{directory}: train images are {arrays['train_images'].shape[1:]} but test images are "
            f"{arrays['test_images'].shape[1:]}"
        )
    name = _directory_name(directory)
    train_labels = arrays["train_labels"].astype(np.int64)
    test_labels = arrays["test_labels"].astype(np.int64)
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise DataError(f"{directory}: the train or test file holds no samples")
    num_classes = int(train_labels.max()) + 1
    for role, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise DataError(
                f"{files[role]} has label {int(bad[0])} outside 0..{num_classes - 1} "
                "(the classes seen in the training labels)"
            )
    if name == "fashion-mnist" and num_classes == len(FASHION_MNIST_CLASSES):
        classes = FASHION_MNIST_CLASSES
    else:
        classes = tuple(str(k) for k in range(num_classes))
    train_idx, val_idx = _train_val_indices(len(train_labels), str(directory))
    images = torch.from_numpy(arrays["train_images"]).unsqueeze(1).float().div_(255.0)
    test_images = torch.from_numpy(arrays["test_images"]).unsqueeze(1).float().div_(255.0)
    return _assemble(
        name=name,
        images=images,
        labels=torch.from_numpy(train_labels),
        train_idx=train_idx,
        val_idx=val_idx,
        test_images=test_images,
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
        source=str(directory),
        preprocessing=preprocessing,
    )


def _load_digits(preprocessing: Preprocessing) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(small, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    permutation = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(round(DIGITS_TEST_FRACTION * len(labels)))
    test_idx = np.sort(permutation[:n_test])
    rest = np.sort(permutation[n_test:])
    train_pos, val_pos = _train_val_indices(len(rest), "digits")
    return _assemble(
        name="digits",
        images=images,
        labels=labels,
        train_idx=rest[train_pos],
        val_idx=rest[val_pos],
        test_images=images[torch.from_numpy(test_idx)],
        test_labels=labels[torch.from_numpy(test_idx)],
        classes=tuple(str(k) for k in range(10)),
        source="sklearn.datasets.load_digits (8x8 upsampled to 28x28)",
        preprocessing=preprocessing,
    )


def _image_files(split_dir: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if folder.is_dir():
            files += [
                (p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            ]
    return files


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """``path`` opened by Pillow with the PNG, JPEG and BMP decoders only, every failure of Pillow's
    (also a header whose pixel count Pillow calls a possible decompression bomb, which it would
    only warn about below twice its limit) a one-line DataError."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                yield image
    except DataError:
        raise
    # Pillow reports a damaged file as OSError, ValueError, SyntaxError ("broken PNG file"), EOFError
    # or struct.error, depending on the format and where the damage is
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise DataError(f"{path} cannot be read as an image ({exc})") from None
    except Image.DecompressionBombWarning as exc:
        raise DataError(f"{path} cannot be read as an image ({exc})") from None


def _pixels(image: Any, gray: bool) -> np.ndarray:
    """An open image's pixels as float32 in [0, 1]: H×W if ``gray``, else H×W×3. A 16-bit grey
    PNG (Pillow's "I;16" or "I") is scaled from 0..65535, not clipped to 255 as ``convert("L")`` does."""
    if image.mode in SIXTEEN_BIT_GRAY_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return grey if gray else np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0


def _read_images(files: list[tuple[Path, int]], gray: bool, size: tuple[int, int]) -> torch.Tensor:
    """The images of ``files`` (all ``size`` = (W, H), checked before), N×C×H×W float32 in [0, 1]."""
    width, height = size
    images = torch.empty((len(files), 1 if gray else 3, height, width), dtype=torch.float32)
    for index, (path, _) in enumerate(files):
        with _opened(path) as image:
            if image.size != size:  # changed since the first look
                raise DataError(f"{path} is {image.size[0]}x{image.size[1]} pixels, not {width}x{height}")
            pixels = torch.from_numpy(_pixels(image, gray))
        images[index] = pixels.unsqueeze(0) if gray else pixels.permute(2, 0, 1)
    return images


def _load_image_folders(directory: Path, preprocessing: Preprocessing) -> Dataset:
    train_dir, test_dir = directory / "train", directory / "test"
    classes = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{train_dir} has no class folders; expected train/<class>/*.png")
    extra = sorted({p.name for p in test_dir.iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise DataError(f"{test_dir} has class folder(s) {', '.join(extra)} that {train_dir} lacks")
    train_files = _image_files(train_dir, classes)
    test_files = _image_files(test_dir, classes)
    suffixes = "/".join(IMAGE_SUFFIXES)
    for split_dir, files in ((train_dir, train_files), (test_dir, test_files)):
        if not files:
            raise DataError(f"{split_dir} has no images ({suffixes}) in its class folders")
    # First every header (nothing decoded): each file parses, and all have one size.
    modes = set()
    size: tuple[int, int] | None = None
    first: Path | None = None
    for path, _ in train_files + test_files:
        with _opened(path) as image:
            modes.add(image.mode)
            if size is None:
                size, first = image.size, path
            elif image.size != size:
                raise DataError(
                    f"{path} is {image.size[0]}x{image.size[1]} pixels but the other images are "
                    f"{size[0]}x{size[1]} (as {first}); all images must be one size"
                )
    assert size is not None
    gray = modes <= GRAY_MODES
    count, channels = len(train_files) + len(test_files), 1 if gray else 3
    decoded = count * channels * size[0] * size[1] * 4
    if decoded > MAX_DECODED_IMAGE_BYTES:
        raise DataError(
            f"{directory}: {count:,} images of {size[0]}x{size[1]}x{channels} would take {decoded / 2**30:.1f} GiB "
            f"as float32, more than the {MAX_DECODED_IMAGE_BYTES / 2**30:g} GiB qubocompress holds in memory; "
            "use smaller or fewer images"
        )
    images = _read_images(train_files, gray, size)
    labels = torch.tensor([label for _, label in train_files], dtype=torch.int64)
    test_images = _read_images(test_files, gray, size)
    test_labels = torch.tensor([label for _, label in test_files], dtype=torch.int64)
    train_idx, val_idx = _train_val_indices(len(labels), str(train_dir))
    return _assemble(
        name=_directory_name(directory),
        images=images,
        labels=labels,
        train_idx=train_idx,
        val_idx=val_idx,
        test_images=test_images,
        test_labels=test_labels,
        classes=classes,
        source=str(directory),
        preprocessing=preprocessing,
    )
