"""Side-by-side comparison of algorithms: a Markdown report with tables and figures.

Input, one entry per algorithm, one dict per seed::

    results = {
        "ddc-hm": [
            {"seed": 0,
             "curve": {"step": [...], "time": [...], "test_nll": [...], ...},
             "final": {"test_nll": 12.7, "mmd2": 1e-4, ...},
             "samples": (n, d) array or None,            # model samples for the grid
             "posterior_means": [(N, D_1), ...] or None}, # estimates of E[z_l | x] on a test set
            ...],
        "wake-sleep": [...],
    }

:func:`write_comparison` writes ``comparison.md`` with the final metrics as mean +/- standard
error across seeds, learning curves against steps and wall-clock time, sample grids and (given
the exact posterior means on the same test points) the posterior accuracy of each algorithm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ddchm.evaluate.plots import (
    DPI,
    Y_LABELS,
    plot_learning_curves,
    plot_posterior_scatter,
    plot_samples,
    save_figure,
)
from ddchm.evaluate.posterior import posterior_mean_errors

CURVE_X_KEYS = ("cpu_time", "step", "time")
LOG_Y = ("mmd2",)  # falls by orders of magnitude early: a log axis shows the rest of the curve


def mean_stderr(values) -> tuple[float, float, int]:
    """(mean, standard error of the mean, n) of the finite values; s.e. is NaN for n < 2."""
    array = np.asarray([float(v) for v in np.ravel(np.asarray(values, dtype=float))])
    array = array[np.isfinite(array)]
    n = array.size
    if n == 0:
        return float("nan"), float("nan"), 0
    se = float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return float(array.mean()), se, n


def format_mean_stderr(mean: float, stderr: float, n: int | None = None) -> str:
    """'12.603 ± 0.012': the standard error to 2 significant digits, the mean to match."""
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(stderr):  # a single seed
        text = f"{mean:.4g}"
    elif stderr == 0:
        text = f"{mean:.4g} ± 0"
    else:
        decimals = min(10, max(0, 1 - math.floor(math.log10(stderr))))
        text = f"{mean:.{decimals}f} ± {stderr:.{decimals}f}"
    return text if n is None else f"{text} (n={n})"


def markdown_table(
    table: Mapping[str, Mapping[str, Sequence[float]]],
    metrics: Sequence[str] | None = None,
    first_column: str = "algorithm",
) -> str:
    """Markdown table of mean ± s.e. across seeds: rows = algorithms, columns = metrics.

    Args:
        table: {algorithm: {metric: [value per seed]}}.
        metrics: columns in this order (default: every metric, in order of first appearance).
    A 'seeds' column gives the number of seeds; a cell whose metric has fewer finite values
    than that says so with (n=...).
    """
    if not table:
        raise ValueError("table: expected at least one algorithm")
    if metrics is None:
        metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    header = f"| {first_column} | seeds | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for name, row in table.items():
        seeds = max((len(np.ravel(v)) for v in row.values()), default=0)
        cells = []
        for metric in metrics:
            mean, se, n = mean_stderr(row.get(metric, []))
            cells.append(format_mean_stderr(mean, se, n if n != seeds else None))
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect_final(results: Mapping[str, Sequence[Mapping]]) -> dict[str, dict[str, list[float]]]:
    """{algorithm: {metric: [final value per seed]}} from the ``results`` structure."""
    table = {}
    for name, runs in _check_results(results).items():
        row: dict[str, list[float]] = {}
        for run in runs:
            for metric, value in (run.get("final") or {}).items():
                row.setdefault(metric, []).append(float(value))
        table[name] = row
    return table


def _check_results(results) -> dict[str, list[Mapping]]:
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results: expected {algorithm: [run dict per seed]} with an entry")
    checked = {}
    for name, runs in results.items():
        if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not runs:
            raise ValueError(f"results[{name!r}]: expected a non-empty list of run dicts per seed")
        for i, run in enumerate(runs):
            if not isinstance(run, Mapping):
                raise ValueError(f"results[{name!r}][{i}]: expected a dict, got {type(run)}")
        checked[str(name)] = list(runs)
    return checked


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "metric"


def write_comparison(
    results: Mapping[str, Sequence[Mapping]],
    out_dir,
    title: str = "Comparison of algorithms",
    metrics: Sequence[str] | None = None,
    exact_posterior_means: Sequence | None = None,
    data_samples=None,
    image_shape="auto",
    n_samples: int = 64,
    notes: str | None = None,
    dpi: int = DPI,
) -> Path:
    """Write ``out_dir/comparison.md`` and its PNG figures; returns the Markdown path.

    Args:
        results: {algorithm: [run dict per seed]} (module docstring).
        out_dir: folder to write into (created).
        title: the report's heading.
        metrics: final-metric columns in order (default: all).
        exact_posterior_means: exact [E[z_1 | x], ...] on the points the runs'
            ``posterior_means`` were computed on; enables the posterior-accuracy section.
        data_samples: (n, d) data shown next to the model samples.
        image_shape: passed to :func:`plot_samples` ('auto', (h, w) or None for a raster).
        n_samples: samples per panel.
        notes: free text placed under the title (setup, dataset, budget).
    """
    results = _check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    seeds = {name: len(runs) for name, runs in results.items()}
    lines += [
        "Values are mean ± standard error across seeds "
        f"({', '.join(f'{k}: {v}' for k, v in seeds.items())} seeds).",
        "",
    ]

    final = collect_final(results)
    if any(final.values()):
        lines += ["## Final metrics", "", markdown_table(final, metrics), ""]

    curve_metrics = _curve_metrics(results)
    if curve_metrics:
        lines += ["## Learning curves", ""]
        for metric in curve_metrics:
            curves = {
                name: [run["curve"] for run in runs if metric in (run.get("curve") or {})]
                for name, runs in results.items()
            }
            curves = {name: c for name, c in curves.items() if c}
            x_axes = [k for k in CURVE_X_KEYS if all(k in c for cs in curves.values() for c in cs)]
            if not x_axes:
                continue
            fig = plot_learning_curves(
                curves,
                metric,
                x_axes=x_axes[:2],
                ylabel=Y_LABELS.get(metric, metric),
                log_y=metric in LOG_Y and _all_positive(curves, metric),
            )
            name = f"curve_{_slug(metric)}.png"
            save_figure(fig, out_dir / name, dpi)
            lines += [f"![{metric} against {' and '.join(x_axes[:2])}]({name})", ""]

    panels = {}
    if data_samples is not None:
        panels["data"] = data_samples
    for name, runs in results.items():
        run = next((r for r in runs if r.get("samples") is not None), None)
        if run is not None:
            panels[f"{name} (seed {run.get('seed', '?')})"] = run["samples"]
    if len(panels) > int(data_samples is not None):
        fig = plot_samples(panels, image_shape=image_shape, n=n_samples, title="Samples")
        save_figure(fig, out_dir / "samples.png", dpi)
        lines += ["## Samples", "", "![samples](samples.png)", ""]

    if exact_posterior_means is not None:
        lines += _posterior_section(results, exact_posterior_means, out_dir, dpi)

    path = out_dir / "comparison.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _all_positive(curves, metric) -> bool:
    values = [v for cs in curves.values() for c in cs for v in c[metric]]
    return all(v > 0 for v in values if math.isfinite(v))


def _curve_metrics(results) -> list[str]:
    names = []
    for runs in results.values():
        for run in runs:
            for key in run.get("curve") or {}:
                if key not in CURVE_X_KEYS and key not in names:
                    names.append(key)
    return names


def _posterior_section(results, exact_means, out_dir: Path, dpi: int) -> list[str]:
    table, scatter, drawn = {}, {}, set()
    for name, runs in results.items():
        row: dict[str, list[float]] = {}
        for run in runs:
            means = run.get("posterior_means")
            if means is None:
                continue
            for metric, value in posterior_mean_errors(exact_means, means).as_dict().items():
                row.setdefault(metric, []).append(value)
            if name not in drawn:  # the scatter shows each algorithm's first seed
                drawn.add(name)
                scatter[f"{name} (seed {run.get('seed', '?')})"] = means
        if row:
            table[name] = row
    if not table:
        return []
    fig = plot_posterior_scatter(exact_means, scatter, title="Posterior means: estimate vs exact")
    save_figure(fig, out_dir / "posterior_scatter.png", dpi)
    return [
        "## Posterior accuracy",
        "",
        "Errors of the estimated posterior means E[z_l | x] against exact enumeration "
        "(mean absolute error and RMSE over test points and units).",
        "",
        markdown_table(table),
        "",
        "![posterior means](posterior_scatter.png)",
        "",
    ]
