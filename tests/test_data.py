"""Tests of the data layer: IDX reading, data set loading, splits, normalisation, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qubocompress.data import datasets
from qubocompress.data.datasets import load_dataset, synthetic_dataset
from qubocompress.data.idx import read_idx
from qubocompress.errors import DataError

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uint8 or int32)."""
    code = IDX_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    stored = array.astype(">i4") if array.dtype == np.int32 else array
    return header + np.ascontiguousarray(stored).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_dir(
    directory: Path,
    n_train: int = 60,
    n_test: int = 20,
    side: int = 8,
    classes: int = 3,
    gz: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write the four IDX files of a small random data set; return the arrays."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % classes).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % classes).astype(np.uint8),
    }
    suffix = ".gz" if gz else ""
    for stem, array in arrays.items():
        write_idx(directory / f"{stem}{suffix}", array)
    return arrays


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    result = read_idx(write_idx(tmp_path / name, array))
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, array)


def test_read_idx_big_endian_int32(tmp_path: Path) -> None:
    array = np.array([-5, 0, 70000], dtype=np.int32)
    result = read_idx(write_idx(tmp_path / "labels", array))
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, array)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(DataError, match=r"bad-idx3-ubyte is not an IDX file \(magic number 0x12340803"):
        read_idx(path)


def test_read_idx_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "weird"
    path.write_bytes(b"\x00\x00\x42\x01" + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_read_idx_truncated_payload(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    full = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))
    path.write_bytes(gzip.compress(full[: 16 + 1000]))
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated: expected 7840 bytes of data for shape 10x28x28, found 1000" in message
    assert "\n" not in message


def test_read_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    compressed = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)))
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"labels.gz is truncated: expected 5000 bytes"):
        read_idx(path)


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="short is truncated: its header lists 3 dimensions"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)) + b"xx")
    with pytest.raises(DataError, match="long is corrupt: 2 unexpected bytes"):
        read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip data at all")
    with pytest.raises(DataError, match=r"x.gz is not a valid gzip file"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothing.gz does not exist"):
        read_idx(tmp_path / "nothing.gz")


def test_read_idx_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="too short to be an IDX file"):
        read_idx(path)


# ---------------------------------------------------------------- IDX directories


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_splits_and_normalisation(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_dir(tmp_path / "MyData", gz=gz)
    data = load_dataset(tmp_path / "MyData")
    assert data.name == "mydata"
    assert (len(data.train), len(data.val), len(data.test), len(data.calib)) == (50, 10, 20, 50)
    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 3 and data.classes == ("0", "1", "2")
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert abs(float(data.train.x.mean())) < 1e-4
    assert abs(float(data.train.x.std(correction=0)) - 1.0) < 1e-4
    # The test split is the test file, normalised with the train statistics.
    raw_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).unsqueeze(1).float() / 255
    torch.testing.assert_close(data.normalize(raw_test), data.test.x)
    np.testing.assert_array_equal(data.test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # Train and val partition the training file.
    all_train = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1).float() / 255
    together = torch.cat([data.train.x, data.val.x])
    assert together.shape[0] == all_train.shape[0]
    assert torch.allclose(together.sum(), data.normalize(all_train).sum(), atol=1e-2)


def test_splits_are_fixed(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "d")
    first, second = load_dataset(tmp_path / "d"), load_dataset(tmp_path / "d")
    assert torch.equal(first.val.x, second.val.x)
    assert torch.equal(first.calib.y, second.calib.y)
    assert first.fingerprint() == second.fingerprint()
    write_idx_dir(tmp_path / "e", seed=1)
    assert load_dataset(tmp_path / "e").fingerprint() != first.fingerprint()


def test_calib_is_a_subset_of_train_capped_at_2048(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "big", n_train=3000, n_test=5, side=4)
    data = load_dataset(tmp_path / "big")
    assert len(data.train) == 2500 and len(data.calib) == 2048
    train_rows = {row.numpy().tobytes() for row in data.train.x}
    assert all(row.numpy().tobytes() in train_rows for row in data.calib.x[:50])


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(59, dtype=np.uint8))
    expected = "train-labels-idx1-ubyte.gz has 59 labels but train-images-idx3-ubyte.gz has 60 images"
    with pytest.raises(DataError, match=expected):
        load_dataset(tmp_path / "d")


def test_test_label_out_of_range(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "d")
    labels = np.zeros(20, dtype=np.uint8)
    labels[7] = 9
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz has label 9 outside 0..2"):
        load_dataset(tmp_path / "d")


def test_images_must_be_three_dimensional(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-images-idx3-ubyte.gz", np.zeros(60, dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 images N×H×W"):
        load_dataset(tmp_path / "d")


def test_corrupt_file_in_directory_names_the_file(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "d")
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is not an IDX file"):
        load_dataset(tmp_path / "d")


def test_partial_idx_directory(tmp_path: Path) -> None:
    write_idx_dir(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks the IDX file.s. t10k-labels-idx1-ubyte"):
        load_dataset(tmp_path / "d")


def test_empty_directory_has_no_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no recognised data layout"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- image folders


def write_image_folders(root: Path, mode: str = "L", size: tuple[int, int] = (12, 10)) -> None:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    for split, count in (("train", 12), ("test", 3)):
        for name in ("cat", "ant"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode=mode).save(folder / f"{index}.png")


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_image_folders(tmp_path: Path, mode: str, channels: int) -> None:
    write_image_folders(tmp_path / "pics", mode)
    data = load_dataset(tmp_path / "pics")
    assert data.classes == ("ant", "cat")
    assert data.input_shape == (channels, 10, 12)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 4, 6)
    assert sorted(data.test.y.tolist()) == [0, 0, 0, 1, 1, 1]
    assert len(data.mean) == channels


def test_image_folders_of_different_sizes(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "pics")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "pics" / "test" / "ant" / "odd.png")
    with pytest.raises(DataError, match=r"odd.png is 5x5 pixels but the other images are 12x10"):
        load_dataset(tmp_path / "pics")


def test_image_folders_unreadable_image(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "pics")
    (tmp_path / "pics" / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png cannot be read as an image"):
        load_dataset(tmp_path / "pics")


def test_image_folders_unknown_test_class(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "pics")
    (tmp_path / "pics" / "test" / "dog").mkdir()
    with pytest.raises(DataError, match="class folder.s. dog that"):
        load_dataset(tmp_path / "pics")


# ---------------------------------------------------------------- named sources


def test_unknown_source_lists_valid_values(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar-100")
    assert "unknown data source 'cifar-100'" in str(info.value)
    assert "fashion-mnist, digits" in str(info.value)


def test_file_is_not_a_source(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x")
    with pytest.raises(DataError, match="a.txt is a file; the data source must be one of: fashion-mnist, digits"):
        load_dataset(path)


def test_digits_fallback_with_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", tmp_path / "absent")
    data = load_dataset()
    assert data.name == "digits"
    assert data.note is not None and "\n" not in data.note
    assert f"Fashion-MNIST not found at {tmp_path / 'absent'}" in data.note
    assert "apt-get install dataset-fashion-mnist" in data.note and "--data DIR" in data.note
    assert data.input_shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (1199, 239, 359)
    assert data.num_classes == 10
    assert load_dataset("digits").note is None


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="Fashion-MNIST not found at .*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_default_directory_is_fashion_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "fmnist"
    write_idx_dir(directory, classes=10)
    monkeypatch.setattr(datasets, "DEFAULT_FASHION_MNIST_DIR", directory)
    for source in (None, "fashion-mnist", directory):
        data = load_dataset(source)
        assert data.name == "fashion-mnist"
        assert data.classes[0] == "T-shirt/top" and data.note is None


# ---------------------------------------------------------------- synthetic


def test_synthetic_dataset_shapes_and_determinism() -> None:
    data = synthetic_dataset(num_classes=3, n_train=30, n_val=9, n_test=12, shape=(3, 16, 16), seed=4)
    assert data.input_shape == (3, 16, 16)
    assert (len(data.train), len(data.val), len(data.test), len(data.calib)) == (30, 9, 12, 30)
    assert set(data.train.y.tolist()) == {0, 1, 2}
    again = synthetic_dataset(num_classes=3, n_train=30, n_val=9, n_test=12, shape=(3, 16, 16), seed=4)
    assert torch.equal(data.train.x, again.train.x)
    other = synthetic_dataset(num_classes=3, n_train=30, n_val=9, n_test=12, shape=(3, 16, 16), seed=5)
    assert not torch.equal(data.train.x, other.train.x)
