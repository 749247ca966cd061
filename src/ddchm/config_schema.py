"""What a config may hold: one validation layer, run before anything is built.

Each key of each section has a check that returns the value or raises :class:`ConfigError`
naming the key (``train.log_every: expected an integer >= 1, got 0``); an unknown section or
key, algorithm, layer family or synthetic truth is named with the closest valid spelling.
Algorithm arguments are checked against the constructor's signature: the type of each default
sets the expected type, learning rates must be positive and finite; the constructor then checks
its own ranges and any error it raises is reported under ``[algorithm]``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import re
from collections.abc import Callable


class ConfigError(ValueError):
    """A config that names an unknown section, key or value, or a value out of range."""


def did_you_mean(word, choices) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- value checks: each takes (value, name) and returns the value or raises ConfigError ------
def integer(minimum: int) -> Callable:
    def check(value, name):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value}")
        return int(value)

    return check


def real(
    minimum: float = -math.inf,
    *,
    strict: bool = False,
    optional: bool = False,
    maximum: float = math.inf,
):
    """A finite real number >= minimum (> minimum if ``strict``) and <= maximum; None allowed
    if optional."""
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    what = "a finite number" + ("" if minimum == -math.inf else f" {bound}")
    what += "" if maximum == math.inf else f" and <= {maximum:g}"

    def check(value, name):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{name}: expected {what}, got {value!r}")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise ConfigError(f"{name}: expected {what}, got {value!r}")
        if value > maximum:
            raise ConfigError(f"{name}: expected {what}, got {value!r}")
        return value

    return check


def choice(*options, optional: bool = False) -> Callable:
    def check(value, name):
        if value is None and optional:
            return None
        if not isinstance(value, str) or value not in options:
            raise ConfigError(
                f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}"
                + did_you_mean(value, options)
            )
        return value

    return check


def string(optional: bool = True) -> Callable:
    def check(value, name):
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value

    return check


def optional_integer(minimum: int) -> Callable:
    inner = integer(minimum)
    return lambda value, name: None if value is None else inner(value, name)


def boolean(value, name):
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    return value


def device(value, name):
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ConfigError(f"{name}: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return value


def layers(value, name):
    """None, or a list (top first) of at least two tables {family, dim, layer options}."""
    if value is None:
        return None
    from ddchm.models.layers import FAMILIES

    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ConfigError(
            f"{name}: expected a list of at least two layer tables (top first), e.g. "
            f"[{{family = 'bernoulli', dim = 4}}, {{family = 'bernoulli', dim = 8}}], got {value!r}"
        )
    for i, entry in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table {{family = ..., dim = ...}}, got {entry}")
        for key in ("family", "dim"):
            if key not in entry:
                raise ConfigError(f"{where}: missing key {key!r}")
        family = choice(*FAMILIES)(entry["family"], f"{where}.family")
        integer(1)(entry["dim"], f"{where}.dim")
        options = _keyword_defaults(FAMILIES[family].__init__) - {"dim", "parent_dim"}
        for key, option in entry.items():
            if key in ("family", "dim", "parent_dim"):
                continue
            if key not in options:
                raise ConfigError(
                    f"{where}: unknown key {key!r} for a {family} layer"
                    f"{did_you_mean(key, options)}; it takes {sorted(options)}"
                )
            if key in POSITIVE_LAYER_OPTIONS:
                real(0, strict=True)(option, f"{where}.{key}")
            elif key == "init_scale":
                real(0)(option, f"{where}.{key}")
            else:
                real()(option, f"{where}.{key}")
    return value


POSITIVE_LAYER_OPTIONS = {"init_std", "init_bias_scale"}  # a std or scale is > 0


def _keyword_defaults(function) -> set[str]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name for p in parameters if p.name != "self" and p.kind != p.VAR_KEYWORD}


MAX_LR = 1e6  # orders of magnitude beyond any learning rate that learns; float32-safe

SCHEMA: dict[str, dict[str, Callable]] = {
    "data": {
        "source": choice("synthetic", "array", "mnist", "patches"),
        "name": string(),  # a synthetic truth, checked in validate() when source = synthetic
        "n_train": integer(1),
        "n_valid": integer(0),
        "n_test": integer(1),
        "seed": integer(0),
        "path": string(),
        "key": string(),
        "binarize": choice("dynamic", "threshold", optional=True),
        "subset": string(),
        "patch_size": integer(1),
        "whiten": choice("pca", "zca", optional=True),
        "n_components": optional_integer(1),
    },
    "model": {
        "architecture": choice("truth"),
        "layers": layers,
        "init_scale": real(0),
        "seed": integer(0),
        "dtype": choice("float32", "float64"),
    },
    "train": {
        "steps": integer(0),
        "batch_size": integer(1),
        "seed": integer(0),
        "log_every": integer(1),
        "eval_every": integer(1),
        "eval_early": boolean,
        "checkpoint_every": integer(1),
        "max_seconds": real(0, strict=True, optional=True),
        "max_cpu_seconds": real(0, strict=True, optional=True),
        "device": device,
        "threads": optional_integer(1),
    },
    "evaluate": {"points": integer(1), "posterior_points": integer(1)},
}


def check_algorithm_arguments(section: dict, cls, allowed: set[str]) -> None:
    """Type checks from the constructor's defaults (float, int, bool, str, sequence of ints);
    learning rates (``lr``, ``*_lr``, ``*_lr_final``) positive and finite."""
    defaults = dict(cls.option_defaults()) if hasattr(cls, "option_defaults") else {}
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind == p.KEYWORD_ONLY:
                    defaults.setdefault(p.name, p.default)
    for key, value in section.items():
        if key == "name" or key not in allowed:
            continue
        name = f"algorithm.{key}"
        default = defaults.get(key, inspect.Parameter.empty)
        if re.fullmatch(r"(\w+_)?lr(_final)?", key):
            # an optimiser multiplies by lr in float32: beyond MAX_LR the step overflows
            real(0, strict=True, optional=default is None, maximum=MAX_LR)(value, name)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
        elif isinstance(default, tuple) and any(
            not isinstance(v, numbers.Integral) for v in default
        ):
            # a number or a range of numbers (encoding_gain: one gain, or [low, high])
            for v in value if isinstance(value, (list, tuple)) else [value]:
                real(0, strict=True)(v, name)
        elif isinstance(default, numbers.Integral) or isinstance(default, tuple):
            # sizes: an int, or (for per-layer sizes such as hidden, n_features) a list of them
            if isinstance(value, (list, tuple)):
                for size in value:
                    integer(1)(size, name + " entries")
            elif isinstance(default, tuple):
                raise ConfigError(f"{name}: expected a list of integers >= 1, got {value!r}")
            else:
                integer(0)(value, name)
        elif isinstance(default, numbers.Real):
            real()(value, name)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        elif default is None and isinstance(value, numbers.Real) and not isinstance(value, bool):
            real()(value, name)  # optional numbers (ema, sleep_samples, ...): at least finite
