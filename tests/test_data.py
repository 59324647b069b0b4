"""Tests of the data layer: IDX reading, data set loading, splits, normalisation (preprocessing), errors."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qubocompress.data import datasets
from qubocompress.data.datasets import Preprocessing, load_dataset, parse_normalize, synthetic_dataset
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


def test_cifar_style_folder_of_32x32_rgb_images_in_png_jpeg_and_bmp(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "cifar", "RGB", size=(32, 32))
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cifar" / "train" / "cat" / "photo.jpg")
    Image.fromarray(pixels).save(tmp_path / "cifar" / "test" / "ant" / "scan.bmp")
    data = load_dataset(tmp_path / "cifar")
    assert data.input_shape == (3, 32, 32) and len(data.mean) == len(data.std) == 3
    assert (len(data.train) + len(data.val), len(data.test)) == (25, 7)


def test_image_files_are_parsed_only_as_png_jpeg_or_bmp(tmp_path: Path) -> None:
    # a TIFF named .png: Pillow would open it, but only the PNG, JPEG and BMP decoders may run
    write_image_folders(tmp_path / "pics")
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(tmp_path / "pics" / "train" / "cat" / "t.png", "TIFF")
    with pytest.raises(DataError, match=r"t.png cannot be read as an image \(cannot identify image file"):
        load_dataset(tmp_path / "pics")


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk of a ``width`` x ``height`` gray image, and IEND (no pixels)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_an_image_that_claims_a_huge_size_is_refused_before_decoding(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "pics")
    (tmp_path / "pics" / "test" / "ant" / "bomb.png").write_bytes(png_header(40_000, 40_000))
    with pytest.raises(DataError, match=r"bomb.png cannot be read as an image \(Image size \(1600000000 pixels\)"):
        load_dataset(tmp_path / "pics")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each chunk of a PNG file."""
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def test_a_png_with_a_broken_chunk_among_its_pixels_is_a_data_error(tmp_path: Path) -> None:
    # Pillow finds a chunk type that is not one only while decoding, and raises SyntaxError for it
    write_image_folders(tmp_path / "pics")
    path = tmp_path / "pics" / "train" / "cat" / "0.png"

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    chunks = dict(png_chunks(path.read_bytes()))
    pixels = chunks[b"IDAT"]
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", chunks[b"IHDR"])
        + chunk(b"IDAT", pixels[:10])
        + chunk(b"\x01\x02\x03\x04", b"")
        + chunk(b"IDAT", pixels[10:])
        + chunk(b"IEND", b"")
    )
    with pytest.raises(SyntaxError):  # what Pillow itself raises
        Image.open(path).convert("L")
    with pytest.raises(DataError, match=r"0.png cannot be read as an image \(broken PNG file"):
        load_dataset(tmp_path / "pics")


def test_sixteen_bit_gray_pngs_are_scaled_not_clipped(tmp_path: Path) -> None:
    # convert("L") clips a 16-bit gray image ("I;16") at 255: every pixel from 255/65535 up would read as white
    write_image_folders(tmp_path / "pics")
    values = np.arange(120, dtype=np.uint16).reshape(10, 12) * 500
    for path in (tmp_path / "pics").rglob("*.png"):
        Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    data = load_dataset(tmp_path / "pics", normalize="none")
    assert data.input_shape == (1, 10, 12)
    torch.testing.assert_close(data.test.x[0, 0], torch.from_numpy(values / 65535.0).float())


def test_sixteen_bit_gray_beside_rgb_images_becomes_three_equal_channels(tmp_path: Path) -> None:
    write_image_folders(tmp_path / "pics", "RGB")
    values = np.full((10, 12), 30_000, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "pics" / "test" / "ant" / "0.png")
    data = load_dataset(tmp_path / "pics", normalize="none")
    ant = data.test.x[data.test.y == 0][0]
    torch.testing.assert_close(ant, torch.full((3, 10, 12), 30_000 / 65535.0))


def test_an_image_past_pillows_bomb_limit_is_refused_where_pillow_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # between Pillow's MAX_IMAGE_PIXELS and twice it, Pillow warns and decodes; the folder loader refuses
    write_image_folders(tmp_path / "pics")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the images are 12x10 = 120 pixels
    with pytest.raises(DataError, match=r"0.png cannot be read as an image \(Image size \(120 pixels\) exceeds limit"):
        load_dataset(tmp_path / "pics")


def test_sizes_are_checked_on_every_header_before_any_image_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_image_folders(tmp_path / "pics")
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "pics" / "test" / "cat" / "odd.png")
    loads = []
    original = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self) or original(self))
    with pytest.raises(DataError, match=r"odd.png is 5x5 pixels but the other images are 12x10 \(as .*0.png\)"):
        load_dataset(tmp_path / "pics")
    assert loads == []


def test_a_folder_too_big_to_decode_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folders(tmp_path / "pics", "RGB")
    monkeypatch.setattr(datasets, "MAX_DECODED_IMAGE_BYTES", 30 * 3 * 12 * 10 * 4 - 1, raising=False)
    with pytest.raises(DataError, match=r"30 images of 12x10x3 would take 0.0 GiB as float32, more than"):
        load_dataset(tmp_path / "pics")
    monkeypatch.setattr(datasets, "MAX_DECODED_IMAGE_BYTES", 30 * 3 * 12 * 10 * 4)
    assert load_dataset(tmp_path / "pics").input_shape == (3, 10, 12)


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


# ---------------------------------------------------------------- preprocessing (--normalize)

SMALL_SYNTHETIC = {"num_classes": 3, "n_train": 30, "n_val": 9, "n_test": 12, "shape": (3, 16, 16), "seed": 4}


def test_normalize_none_keeps_pixels_in_unit_range(tmp_path: Path) -> None:
    data = synthetic_dataset(**SMALL_SYNTHETIC, normalize="none")
    for split in (data.train, data.val, data.test, data.calib):
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
    assert data.mean == (0.0, 0.0, 0.0) and data.std == (1.0, 1.0, 1.0)
    assert data.preprocessing == "none"
    assert torch.equal(data.normalize(data.test.x), data.test.x)
    # On IDX files "none" gives exactly pixel/255.
    arrays = write_idx_dir(tmp_path / "d")
    raw = load_dataset(tmp_path / "d", normalize="none")
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).unsqueeze(1).float() / 255
    assert torch.equal(raw.test.x, expected)
    all_train = torch.from_numpy(arrays["train-images-idx3-ubyte"]).unsqueeze(1).float() / 255
    rows = sorted(row.numpy().tobytes() for row in torch.cat([raw.train.x, raw.val.x]))
    assert rows == sorted(row.numpy().tobytes() for row in all_train)


def test_normalize_explicit_mean_std_for_every_channel() -> None:
    raw = synthetic_dataset(**SMALL_SYNTHETIC, normalize="none")
    data = synthetic_dataset(**SMALL_SYNTHETIC, normalize="0.5,0.25")
    assert torch.equal(data.train.x, (raw.train.x - 0.5) / 0.25)
    assert torch.equal(data.test.x, (raw.test.x - 0.5) / 0.25)
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.25, 0.25, 0.25)
    assert data.preprocessing == "0.5,0.25"
    assert torch.equal(data.normalize(raw.test.x), data.test.x)


def test_normalize_explicit_per_channel() -> None:
    raw = synthetic_dataset(**SMALL_SYNTHETIC, normalize="none")
    text = "0.1,0.2,0.3,0.5,0.25,2"
    data = synthetic_dataset(**SMALL_SYNTHETIC, normalize=text)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert torch.equal(data.val.x, (raw.val.x - mean) / std)
    assert data.mean == (0.1, 0.2, 0.3) and data.std == (0.5, 0.25, 2.0)
    assert data.preprocessing == text
    assert torch.equal(data.normalize(raw.val.x), data.val.x)
    # The same numbers as a Python (means, stds) pair give the same images.
    pair = synthetic_dataset(**SMALL_SYNTHETIC, normalize=((0.1, 0.2, 0.3), (0.5, 0.25, 2.0)))
    assert torch.equal(pair.val.x, data.val.x)
    assert pair.preprocessing == "0.1,0.2,0.3,0.5,0.25,2.0"


def test_normalize_mean_std_default_matches_hand_computation() -> None:
    raw = synthetic_dataset(**SMALL_SYNTHETIC, normalize="none")
    default = synthetic_dataset(**SMALL_SYNTHETIC)
    named = synthetic_dataset(**SMALL_SYNTHETIC, normalize="mean-std")
    assert default.preprocessing == named.preprocessing == "mean-std"
    # By hand in float64: the train split's per-channel mean and population std of pixel/255.
    pixels = raw.train.x.double().numpy()
    mean = pixels.mean(axis=(0, 2, 3))
    std = pixels.std(axis=(0, 2, 3))
    np.testing.assert_allclose(default.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(default.std, std, rtol=1e-5)
    by_hand = (raw.test.x.double().numpy() - mean[None, :, None, None]) / std[None, :, None, None]
    np.testing.assert_allclose(default.test.x.numpy(), by_hand, rtol=1e-4, atol=1e-5)
    # Bit-identical to the float32 formula used before the choice existed.
    std32, mean32 = torch.std_mean(raw.train.x, dim=(0, 2, 3), correction=0)
    shift, scale = mean32.view(1, -1, 1, 1), std32.clamp_min(1e-6).view(1, -1, 1, 1)
    for split in ("train", "val", "test", "calib"):
        raw_x, x = getattr(raw, split).x, getattr(default, split).x
        assert torch.equal(x, (raw_x - shift) / scale)
        assert torch.equal(x, getattr(named, split).x)
    assert default.mean == tuple(float(v) for v in mean32)
    assert default.fingerprint() == named.fingerprint()


def test_fingerprint_differs_between_preprocessings() -> None:
    prints = {
        text: synthetic_dataset(**SMALL_SYNTHETIC, normalize=text).fingerprint()
        for text in ("mean-std", "none", "0.5,0.25", "0.1,0.2,0.3,0.5,0.25,2")
    }
    assert len(set(prints.values())) == len(prints)


def test_parse_normalize_forms() -> None:
    assert parse_normalize("mean-std") == Preprocessing(method="mean-std", text="mean-std")
    assert parse_normalize(" None ") == Preprocessing(method="none", text="none")
    parsed = parse_normalize(" 0.5 , 0.25")
    assert (parsed.method, parsed.text, parsed.mean, parsed.std) == ("values", "0.5,0.25", (0.5,), (0.25,))
    assert parse_normalize(parsed) is parsed
    assert parse_normalize((0.5, 0.25)).text == "0.5,0.25"
    assert parse_normalize(([0.1, 0.2], np.array([1.0, 2.0]))).mean == (0.1, 0.2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("x", "--normalize must be mean-std, none, or MEAN,STD (two numbers, or 2 per channel); got 'x'"),
        ("", "--normalize must be mean-std, none, or MEAN,STD (two numbers, or 2 per channel); got ''"),
        ("0.5", "--normalize must be mean-std, none, or MEAN,STD (two numbers, or 2 per channel); got '0.5'"),
        ("0.5,0.2,0.1", "--normalize must be mean-std, none, or MEAN,STD"),
        ("0.5,", "--normalize must be mean-std, none, or MEAN,STD"),
        ("mean,std", "--normalize must be mean-std, none, or MEAN,STD"),
        ("0.5,0", "--normalize needs every std > 0; got '0.5,0'"),
        ("0.5,-1", "--normalize needs every std > 0; got '0.5,-1'"),
        ("nan,1", "--normalize takes finite numbers only; got 'nan,1'"),
        ("0,inf", "--normalize takes finite numbers only; got '0,inf'"),
        (((0.1, 0.2), (1.0,)), "--normalize needs as many means as stds"),
        ((0.5, "a"), "--normalize must be mean-std, none, or MEAN,STD"),
        (0.5, "--normalize must be mean-std, none, or MEAN,STD"),
    ],
)
def test_parse_normalize_rejects_bad_values(value: object, expected: str) -> None:
    with pytest.raises(DataError) as info:
        parse_normalize(value)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_bad_normalize_is_rejected_before_loading(tmp_path: Path) -> None:
    # The source does not exist: the preprocessing error comes first, before anything is read.
    with pytest.raises(DataError, match="--normalize must be"):
        load_dataset(tmp_path / "absent", normalize="zscore")
    with pytest.raises(DataError, match="--normalize needs every std > 0"):
        synthetic_dataset(normalize="0,0")


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_per_channel_normalize_must_match_channels(tmp_path: Path, mode: str, channels: int) -> None:
    write_image_folders(tmp_path / "pics", mode)
    wrong = "0.1,0.2,0.5,0.5" if channels != 2 else "0.1,0.5"
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "pics", normalize=wrong)
    message = str(info.value)
    assert f"gives 2 means and 2 stds but {tmp_path / 'pics'} has {channels} channel(s)" in message
    assert f"give MEAN,STD or {2 * channels} numbers" in message and "\n" not in message
    # One pair, or one per channel, is accepted.
    right = ",".join(["0.5"] * channels + ["0.25"] * channels)
    for text in ("0.5,0.25", right):
        data = load_dataset(tmp_path / "pics", normalize=text)
        assert data.mean == (0.5,) * channels and data.std == (0.25,) * channels
    with pytest.raises(DataError, match="has 3 channel"):
        synthetic_dataset(**SMALL_SYNTHETIC, normalize="0.1,0.2,0.5,0.5")
