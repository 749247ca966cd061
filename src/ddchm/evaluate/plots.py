"""Figures for comparing algorithms: learning curves, sample grids, posterior-mean scatter.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly (no pyplot):
nothing is displayed, no global backend is switched and nothing leaks between calls. Every
function returns the figure; with ``path`` it is also saved as PNG at ``dpi``.

Curve format, as the training loop records it: one dict per seed,
``{"step": [...], "time": [...], metric: [...]}`` with equal-length lists. Seeds are combined
as mean +/- one standard error across seeds; where their x values differ (always for wall-clock
time) each seed is linearly interpolated onto a common grid over the range all seeds cover.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 150
X_LABELS = {
    "step": "training step",
    "time": "training wall-clock time (s)",
    "cpu_time": "training CPU time (s, all threads)",
}
# metrics a reader meets in curves and tables, with their units
Y_LABELS = {
    "test_nll": "exact test NLL (nats per point)",
    "nll_gap": "exact NLL gap to the true model (nats per point)",
    "posterior_mae": "posterior-mean MAE",
    "mmd2": "MMD² to held-out data",
}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG at ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" keeps every label in the picture (equal-aspect panels can push
    # axis labels past a constrained layout's edge).
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.1)
    return path


def _to_numpy(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected numeric data, got {type(value).__name__}") from None


def _colors(names) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


# --- learning curves ---------------------------------------------------------------------------
def aggregate_curves(
    runs: Sequence[Mapping], x_key: str, metric: str, n_grid: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean and standard error across seeds of ``metric`` against ``x_key``.

    Returns (x, mean, stderr, n_seeds); stderr is 0 for a single seed. Points where the metric
    is NaN (not evaluated at that step) are dropped before combining.
    """
    series = []
    for i, run in enumerate(runs):
        if x_key not in run or metric not in run:
            raise ValueError(f"curve {i}: needs {x_key!r} and {metric!r}, has {sorted(run)}")
        xs, ys = _to_numpy(run[x_key], f"{x_key}"), _to_numpy(run[metric], metric)
        if xs.shape != ys.shape:
            raise ValueError(f"curve {i}: {x_key!r} and {metric!r} have different lengths")
        keep = np.isfinite(xs) & np.isfinite(ys)
        order = np.argsort(xs[keep], kind="stable")
        if keep.sum() > 0:
            series.append((xs[keep][order], ys[keep][order]))
    if not series:
        raise ValueError(f"metric: no finite values of {metric!r} in any curve")
    same_x = all(s[0].shape == series[0][0].shape and np.all(s[0] == series[0][0]) for s in series)
    if same_x:
        grid, values = series[0][0], np.stack([s[1] for s in series])
    else:
        low, high = max(s[0][0] for s in series), min(s[0][-1] for s in series)
        if not high > low:  # the seeds share no range: show the first seed alone
            return series[0][0], series[0][1], np.zeros_like(series[0][1]), 1
        grid = np.linspace(low, high, n_grid)
        values = np.stack([np.interp(grid, s[0], s[1]) for s in series])
    n = values.shape[0]
    stderr = values.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(values.shape[1])
    return grid, values.mean(0), stderr, n


def plot_learning_curves(
    curves: Mapping[str, Sequence[Mapping]],
    metric: str,
    x_axes: Sequence[str] = ("step", "time"),
    ylabel: str | None = None,
    title: str | None = None,
    log_x: bool = False,
    log_y: bool = False,
    path=None,
    dpi: int = DPI,
) -> Figure:
    """One panel per entry of ``x_axes`` ('step', 'time'), one line per algorithm.

    Args:
        curves: {algorithm: [curve dict per seed]} (module docstring).
        metric: the key of the y values, e.g. 'test_nll'.
        x_axes: which x keys get a panel, side by side.
        ylabel, title: labels (default: the metric name).
        log_x, log_y: logarithmic axes (points at x <= 0, or y <= 0 on a log y axis, are
            left out).
        path: save the PNG there.

    Each evaluation is marked where a curve has few enough to tell apart (60 or fewer); the
    band of one standard error and the legend's "mean ± s.e. across seeds" appear only where
    there are several seeds.
    """
    if not curves:
        raise ValueError("curves: expected at least one algorithm")
    x_axes = list(x_axes)
    colors = _colors(curves)
    fig = _new_figure(5.0 * len(x_axes) + 0.5, 4.0)
    axes = fig.subplots(1, len(x_axes), squeeze=False)[0]
    several = False
    for ax, x_key in zip(axes, x_axes):
        for name, runs in curves.items():
            grid, mean, se, n = aggregate_curves(runs, x_key, metric)
            keep = np.ones(grid.shape, dtype=bool)  # what a log axis can show
            if log_x:
                keep &= grid > 0
            if log_y:
                keep &= mean > 0
            grid, mean, se = grid[keep], mean[keep], se[keep]
            label = f"{name} (n={n} seed{'s' if n != 1 else ''})"
            marker = "o" if len(grid) <= 60 else None
            ax.plot(grid, mean, color=colors[name], lw=1.8, marker=marker, ms=3, label=label)
            if n > 1:
                several = True
                ax.fill_between(grid, mean - se, mean + se, color=colors[name], alpha=0.25, lw=0)
        ax.set_xlabel(X_LABELS.get(x_key, x_key))
        ax.set_ylabel(ylabel or metric)
        ax.set_title(f"against {X_LABELS.get(x_key, x_key).split(' (')[0]}", fontsize="medium")
        ax.grid(True, alpha=0.3)
        if log_x:
            ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
    for ax in axes:
        legend = "mean ± s.e. across seeds" if several else None
        ax.legend(fontsize="small", title=legend, title_fontsize="small")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


# --- samples ----------------------------------------------------------------------------------
def _image_shape(dim: int, image_shape):
    if image_shape is None:
        return None
    if image_shape == "auto":
        side = math.isqrt(dim)
        return (side, side) if side * side == dim and side >= 2 else None
    h, w = (int(s) for s in image_shape)
    if h * w != dim:
        raise ValueError(f"image_shape: {h} x {w} does not match the data dimension {dim}")
    return h, w


def _mosaic(images: np.ndarray, n_cols: int, pad_value: float) -> np.ndarray:
    """Tile (n, h, w) images into one array with a 1-pixel border between them."""
    n, h, w = images.shape
    n_rows = math.ceil(n / n_cols)
    out = np.full((n_rows * (h + 1) + 1, n_cols * (w + 1) + 1), pad_value)
    for i, image in enumerate(images):
        r, c = divmod(i, n_cols)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = image
    return out


def plot_samples(
    samples,
    image_shape="auto",
    n: int = 64,
    n_cols: int | None = None,
    title: str | None = None,
    path=None,
    dpi: int = DPI,
) -> Figure:
    """Sample grids, one panel per entry: ``samples`` is an (N, d) array or {label: array}.

    Args:
        image_shape: 'auto' draws each sample as an h x w image when d is a square (h = w);
            (h, w) forces that shape; None draws a raster (rows = samples, columns = units),
            which is also what non-square data get.
        n: samples shown per panel (the first n).
        n_cols: images per row of a mosaic (default ceil(sqrt(n))).
    Values in [0, 1] (binary data, pixel probabilities) are drawn in grey on a fixed 0-1 scale;
    other values on a diverging scale symmetric about 0 with a colour bar.
    """
    panels = dict(samples) if isinstance(samples, Mapping) else {"": samples}
    if not panels:
        raise ValueError("samples: expected at least one array")
    arrays = {}
    for label, value in panels.items():
        array = _to_numpy(value, f"samples[{label!r}]")
        if array.ndim != 2:
            raise ValueError(f"samples[{label!r}]: expected (N, d), got shape {array.shape}")
        arrays[label] = array[:n]
    dims = {a.shape[1] for a in arrays.values()}
    if len(dims) != 1:
        raise ValueError(f"samples: every panel needs the same dimension, got {sorted(dims)}")
    shape = _image_shape(dims.pop(), image_shape)
    unit_range = all(a.min() >= 0 and a.max() <= 1 for a in arrays.values())
    if unit_range:
        cmap, vmin, vmax = "gray", 0.0, 1.0
    else:
        bound = max(float(np.abs(a).max()) for a in arrays.values()) or 1.0
        cmap, vmin, vmax = "RdBu_r", -bound, bound

    width = 3.2 if shape is not None else 3.6
    fig = _new_figure(width * len(arrays) + (0.8 if not unit_range else 0), 3.6)
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    for ax, (label, array) in zip(axes, arrays.items()):
        if shape is not None:
            cols = n_cols or math.ceil(math.sqrt(array.shape[0]))
            pad = 0.5 if unit_range else 0.0  # mid-grey borders, distinct from 0 and 1 pixels
            mosaic = _mosaic(array.reshape(-1, *shape), cols, pad_value=pad)
            image = ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{array.shape[0]} samples, {shape[0]}x{shape[1]}")
        else:
            image = ax.imshow(
                array, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest"
            )
            ax.set_xlabel("unit")
            ax.set_ylabel("sample")
        if label:
            ax.set_title(label)
    if not unit_range:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="value")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


# --- posterior means --------------------------------------------------------------------------
def plot_posterior_scatter(
    exact_means,
    estimates: Mapping[str, Sequence],
    max_points: int = 4000,
    seed: int = 0,
    title: str | None = None,
    path=None,
    dpi: int = DPI,
) -> Figure:
    """Estimated vs exact E[z_lj | x], one panel per latent layer, one colour per method.

    Args:
        exact_means: list of (N, D_l) exact posterior means, one per layer.
        estimates: {method: list of (N, D_l) estimates}.
        max_points: (data point, unit) pairs drawn per panel (a seeded subsample).
    The legend gives each method's mean absolute error over all pairs (not only those drawn).
    """
    exact = [_to_numpy(e, f"exact_means[{l}]") for l, e in enumerate(exact_means)]
    if not exact or not estimates:
        raise ValueError("exact_means, estimates: expected at least one layer and one method")
    methods = {}
    for name, means in estimates.items():
        if len(means) != len(exact):
            raise ValueError(f"estimates[{name!r}]: {len(means)} layers, exact has {len(exact)}")
        methods[name] = [_to_numpy(m, f"estimates[{name!r}][{l}]") for l, m in enumerate(means)]
        for l, (m, e) in enumerate(zip(methods[name], exact)):
            if m.shape != e.shape:
                raise ValueError(f"estimates[{name!r}][{l}]: shape {m.shape}, exact is {e.shape}")
    colors = _colors(estimates)
    rng = np.random.default_rng(seed)
    fig = _new_figure(4.2 * len(exact), 4.4)
    axes = fig.subplots(1, len(exact), squeeze=False)[0]
    for l, (ax, e) in enumerate(zip(axes, exact), start=1):
        flat_e = e.reshape(-1)
        pick = rng.permutation(flat_e.size)[:max_points]
        # fewer points: bigger, more opaque markers, so sparse panels stay legible
        size, alpha = float(np.clip(4000 / pick.size, 6, 24)), (0.35 if pick.size > 1000 else 0.6)
        for name, means in methods.items():
            m = means[l - 1]
            mae = float(np.abs(m - e).mean())
            ax.scatter(
                flat_e[pick],
                m.reshape(-1)[pick],
                s=size,
                alpha=alpha,
                color=colors[name],
                edgecolors="none",
                label=f"{name} (MAE {mae:.3f})",
            )
        values = [e] + [means[l - 1] for means in methods.values()]
        low, high = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        if low >= 0 and high <= 1:  # probabilities of binary units: show the whole 0-1 square
            low, high = 0.0, 1.0
        margin = 0.02 * (high - low or 1.0)
        low, high = low - margin, high + margin
        ax.plot([low, high], [low, high], color="black", lw=1, ls="--", label="exact = estimate")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.set_xlabel(f"exact E[z{l} | x]")
        ax.set_ylabel(f"estimated E[z{l} | x]")
        ax.set_title(f"layer z{l} ({e.shape[1]} units, {e.shape[0]} points)")
        ax.grid(True, alpha=0.3)
        legend = ax.legend(fontsize="small", loc="upper left")
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([30.0])
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path, dpi)
    return fig
