"""User data from ``.npy``, ``.npz`` and text (``.csv``/``.tsv``/``.txt``) files, checked on load.

:func:`load_array` returns a float32 matrix (n_points, n_units) after checking everything a
model would otherwise trip over later with a less helpful message: the file exists and has a
known extension, the values are numeric and finite, the array is 2-D, and, for a Bernoulli
observation layer, binary. Every error names the file and where the problem is, e.g.
``data.csv: row 17, column 3 is NaN``. Rows and columns in messages count from 1 (rows count
data rows, a header line excluded; text parse errors also give the file's line number); array
indices in brackets count from 0.

:func:`split_train_valid_test` cuts any array into seeded train/valid/test parts.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ddchm.validation import check_binary

__all__ = ["OBSERVATIONS", "SUPPORTED_EXTENSIONS", "load_array", "split_train_valid_test"]

OBSERVATIONS = (None, "bernoulli", "gaussian", "laplace")
_TEXT = (".csv", ".tsv", ".txt")
SUPPORTED_EXTENSIONS = (".npy", ".npz") + _TEXT + tuple(e + ".gz" for e in _TEXT)


def _extension(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return suffixes[-2] + ".gz"
    return suffixes[-1] if suffixes else ""


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _read_text(path: Path, name: str, delimiter: str | None) -> np.ndarray:
    """Parse a numeric delimited text file; a first line that is not all numbers is a header."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except (UnicodeDecodeError, OSError, EOFError) as error:
        raise ValueError(f"{name}: cannot be read as text ({error})") from error
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{name}: the file is empty")
    if delimiter is None:
        first = lines[0][1]
        delimiter = next((d for d in (",", "\t", ";") if d in first), " ")
    if delimiter == " ":
        rows = [(number, line.split()) for number, line in lines]
    else:
        reader = csv.reader(io.StringIO("\n".join(line for _, line in lines)), delimiter=delimiter)
        rows = [(number, fields) for (number, _), fields in zip(lines, reader)]
    header = rows[0][1]
    if any(_parse_float(field) is None for field in header):
        rows = rows[1:]  # a header: some field of the first line is not a number
        if not rows:
            raise ValueError(f"{name}: only a header line, no data")
    width = len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for index, (number, fields) in enumerate(rows):
        if len(fields) != width:
            raise ValueError(
                f"{name}: row {index + 1} (line {number}) has {len(fields)} columns, the first "
                f"data row has {width}"
            )
        for column, field in enumerate(fields):
            value = _parse_float(field)
            if value is None:
                what = "is empty" if not field.strip() else f"is not a number: {field.strip()!r}"
                raise ValueError(
                    f"{name}: row {index + 1} (line {number}), column {column + 1} {what}"
                )
            values[index, column] = value
    return values


def _read_npz(path: Path, name: str, key: str | None) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name}: not a readable .npz file ({error})") from error
    with archive:
        keys = list(archive.files)
        if key is None:
            if len(keys) != 1:
                raise ValueError(
                    f"{name}: holds {len(keys)} arrays ({', '.join(keys) or 'none'}); say which "
                    "with key=..."
                )
            key = keys[0]
        if key not in keys:
            raise ValueError(f"{name}: no array named {key!r}; it holds: {', '.join(keys)}")
        try:
            return archive[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{name}[{key}]: cannot be loaded ({error})") from error


def _check_finite(array: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        value = array[where]
        kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
        place = (
            f"row {where[0] + 1}, column {where[1] + 1}"
            if len(where) == 2
            else f"index {list(where)}"
        )
        raise ValueError(
            f"{name}: {place} is {kind} (array index {list(where)}); {int(bad.sum())} "
            "non-finite value(s) in all. Remove or impute them before training."
        )


def load_array(
    path: str | os.PathLike,
    key: str | None = None,
    observation: str | None = None,
    *,
    delimiter: str | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """Load a data matrix (n_points, n_units) from ``path`` and check it; float32 by default.

    ``.npy``: one array. ``.npz``: ``key`` names the array (required when the file holds
    several; the error lists them). ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``): numeric
    values; a first line that is not all numbers is taken as a header and skipped; the
    delimiter is guessed from the first line (comma, tab, semicolon, else whitespace) unless
    given. ``observation``: the model's observation layer; 'bernoulli' additionally requires
    every value to be 0 or 1 ('gaussian', 'laplace' and None only need finite numbers).

    Raises FileNotFoundError (missing file), ValueError (unknown extension, NaN/inf, wrong
    shape, non-binary values for Bernoulli, unparsable text) or TypeError (non-numeric dtype),
    each message starting with the file name.
    """
    path = Path(path).expanduser()
    name = str(path)
    if observation not in OBSERVATIONS:
        raise ValueError(
            f"observation: expected one of {', '.join(map(repr, OBSERVATIONS))}, got "
            f"{observation!r}"
        )
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file")
    if path.is_dir():
        raise ValueError(f"{name}: is a directory, expected a data file")
    extension = _extension(path)
    if extension not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"{name}: unknown extension {extension or '(none)'!r}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if key is not None and extension != ".npz":
        raise ValueError(f"{name}: key={key!r} is only meaningful for .npz files")
    if extension == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{name}: not a readable .npy file ({error})") from error
    elif extension == ".npz":
        array = _read_npz(path, name, key)
        name = f"{name}[{key}]" if key is not None else name
    else:
        array = _read_text(path, name, delimiter)

    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name}: expected numeric data, got dtype {array.dtype} (strings, objects and "
            "complex numbers are not supported)"
        )
    if array.ndim == 1:
        raise ValueError(
            f"{name}: expected a 2-D array (n_points, n_units), got a 1-D array of shape "
            f"{array.shape}. Reshape it: array.reshape(-1, 1) if it is {array.shape[0]} points "
            f"of one unit, array.reshape(1, -1) if it is one point of {array.shape[0]} units."
        )
    if array.ndim > 2:
        flat = (array.shape[0], int(np.prod(array.shape[1:])))
        raise ValueError(
            f"{name}: expected a 2-D array (n_points, n_units), got shape {array.shape}. If the "
            f"first axis indexes points (e.g. images), flatten the rest: "
            f"array.reshape({array.shape[0]}, -1) -> {flat}."
        )
    if array.ndim == 0:
        raise ValueError(f"{name}: expected a 2-D array (n_points, n_units), got a scalar")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the array is empty, shape {array.shape}")
    if array.dtype.kind == "f":
        _check_finite(array, name)
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.ascontiguousarray(array, dtype=dtype)
    if converted.dtype.kind == "f" and not np.isfinite(converted).all():
        row, column = (int(i) for i in np.argwhere(~np.isfinite(converted))[0])
        raise ValueError(
            f"{name}: row {row + 1}, column {column + 1} is {array[row, column]:g}, too large for "
            f"{np.dtype(dtype).name} (largest {np.finfo(converted.dtype).max:g}); rescale the data "
            "or load it as float64"
        )
    if observation == "bernoulli":
        binary_view = array.astype(np.float64, copy=False)
        try:
            check_binary(torch.from_numpy(binary_view), name)
        except ValueError as error:
            row, column = (int(i) for i in np.argwhere((binary_view != 0) & (binary_view != 1))[0])
            index = f"at index {(row, column)}"
            where = f"at row {row + 1}, column {column + 1} (array index {[row, column]})"
            message = str(error)
            message = message.replace(index, where) if index in message else f"{message} {where}"
            raise ValueError(message) from None
    return converted


def split_train_valid_test(array, fractions=(0.8, 0.1, 0.1), seed: int | None = 0) -> dict:
    """Shuffle the rows of ``array`` with a seeded permutation and cut them into three parts.

    Returns ``{'train', 'valid', 'test'}`` (the same keys as the synthetic truths' ``splits``),
    copies of the same type as ``array`` (numpy array or torch tensor). Sizes: valid and test get
    ``round(fraction * n)`` rows, train the rest. ``numpy.random.default_rng(seed)`` draws the
    permutation, so the same seed gives the same split.
    """
    if isinstance(array, torch.Tensor):
        n = array.shape[0] if array.dim() else 0
    else:
        array = np.asarray(array)
        n = array.shape[0] if array.ndim else 0
    if n == 0:
        raise ValueError("array: expected at least one row")
    try:
        f_train, f_valid, f_test = (float(f) for f in fractions)
    except (TypeError, ValueError) as error:
        raise ValueError(f"fractions: expected three numbers, got {fractions!r}") from error
    if min(f_train, f_valid, f_test) < 0 or abs(f_train + f_valid + f_test - 1) > 1e-6:
        raise ValueError(
            f"fractions: expected three non-negative numbers summing to 1, got {fractions!r}"
        )
    n_valid, n_test = round(f_valid * n), round(f_test * n)
    n_train = n - n_valid - n_test
    if n_train < 0:
        raise ValueError(f"fractions: {fractions!r} leaves no rows for training out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    if isinstance(array, torch.Tensor):
        order = torch.from_numpy(order).to(array.device)
    return {
        "train": array[order[:n_train]],
        "valid": array[order[n_train : n_train + n_valid]],
        "test": array[order[n_train + n_valid :]],
    }
