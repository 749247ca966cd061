"""Input checks used at every public boundary.

Each check raises ``ValueError`` (bad values) or ``TypeError`` (bad types) whose message names
the argument and says what was expected, so a user sees at once what to fix.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch


def as_tensor(value, name: str, *, dtype=None, device=None) -> torch.Tensor:
    """Convert ``value`` (tensor, array or nested list) to a floating tensor, or raise TypeError."""
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Number)):
        array = np.asarray(value)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool
        ):
            raise TypeError(f"{name}: expected numeric data, got an array of dtype {array.dtype}")
        tensor = torch.as_tensor(array)
    else:
        raise TypeError(f"{name}: expected a tensor or array, got {type(value).__name__}")
    if tensor.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if dtype is not None or device is not None:
        tensor = tensor.to(dtype=dtype or tensor.dtype, device=device or tensor.device)
    return tensor


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError if ``tensor`` holds NaN or infinite values, saying how many and where."""
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: contains {count} NaN or infinite value(s); first at index {first}"
        )


def check_matrix(tensor: torch.Tensor, name: str, columns: int | None = None) -> None:
    """Raise ValueError unless ``tensor`` is 2-D (rows = data points) with ``columns`` columns."""
    if tensor.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D array (n_points, n_units), got shape {tuple(tensor.shape)}"
        )
    if columns is not None and tensor.shape[1] != columns:
        raise ValueError(
            f"{name}: expected {columns} columns (units), got shape {tuple(tensor.shape)}"
        )


def check_binary(tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError unless every value is exactly 0 or 1 (Bernoulli data)."""
    bad = (tensor != 0) & (tensor != 1)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name}: a Bernoulli layer needs binary values (0 or 1); found {int(bad.sum())} "
            f"other value(s), e.g. {float(tensor[first]):g} at index {first}. "
            "Binarise the data first (ddchm.data.binarize)."
        )


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` as int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def make_generator(seed: int | torch.Generator | None, device=None) -> torch.Generator:
    """A torch.Generator from an int seed (or the generator itself); None draws a fresh seed."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator(device=device or "cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(check_positive_int(seed, "seed", minimum=0))
    return generator
