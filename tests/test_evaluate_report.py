"""The comparison report: tables of mean ± s.e. and a Markdown file with its figures."""

import math
import re

import numpy as np
import pytest

from ddchm.evaluate.report import (
    format_mean_stderr,
    markdown_table,
    mean_stderr,
    write_comparison,
)


def test_mean_stderr_and_format():
    mean, se, n = mean_stderr([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3) and se == pytest.approx(1 / math.sqrt(3))
    assert format_mean_stderr(12.6034, 0.0123) == "12.603 ± 0.012"
    assert format_mean_stderr(0.000123, 0.0000456) == "0.000123 ± 0.000046"
    assert format_mean_stderr(5.0, float("nan")) == "5"
    assert format_mean_stderr(float("nan"), float("nan")) == "–"


def test_markdown_table():
    table = {
        "ddc-hm": {"nll": [12.0, 12.2, 12.4], "mmd2": [1e-3, 2e-3, 3e-3]},
        "wake-sleep": {"nll": [13.0, 13.5], "mmd2": [0.01]},
    }
    text = markdown_table(table).splitlines()
    assert text[0] == "| algorithm | seeds | nll | mmd2 |"
    assert text[1] == "|---|---|---|---|"
    assert text[2] == "| ddc-hm | 3 | 12.20 ± 0.12 | 0.00200 ± 0.00058 |"
    assert text[3] == "| wake-sleep | 2 | 13.25 ± 0.25 | 0.01 (n=1) |"
    assert markdown_table(table, metrics=["mmd2"]).splitlines()[0].endswith("| mmd2 |")


def make_results(with_posterior=True):
    rng = np.random.default_rng(0)
    exact = [rng.random((50, 5)), rng.random((50, 2))]
    results = {}
    for a, (name, noise) in enumerate([("ddc-hm", 0.03), ("wake-sleep", 0.15)]):
        runs = []
        for seed in range(3):
            steps = np.arange(0, 501, 25)
            runs.append(
                {
                    "seed": seed,
                    "curve": {
                        "step": steps.tolist(),
                        "time": (steps * (0.01 + 0.01 * a) + rng.uniform(0, 0.1)).tolist(),
                        "test_nll": (12 + 2 * np.exp(-steps / (100 + 50 * a))).tolist(),
                    },
                    "final": {"test_nll": 12 + 0.1 * a + 0.01 * seed, "mmd2": 1e-3 * (1 + a)},
                    "samples": (rng.random((36, 16)) < 0.3).astype(float),
                    "posterior_means": (
                        [np.clip(e + rng.normal(0, noise, e.shape), 0, 1) for e in exact]
                        if with_posterior
                        else None
                    ),
                }
            )
        results[name] = runs
    return results, exact


def test_write_comparison(tmp_path):
    results, exact = make_results()
    data = (np.random.default_rng(1).random((36, 16)) < 0.3).astype(float)
    path = write_comparison(
        results, tmp_path / "out", exact_posterior_means=exact, data_samples=data, notes="setup"
    )
    text = path.read_text()
    assert path.name == "comparison.md"
    for heading in (
        "## Final metrics",
        "## Learning curves",
        "## Samples",
        "## Posterior accuracy",
    ):
        assert heading in text
    assert "| ddc-hm | 3 | 12.0100 ± 0.0058 |" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert set(images) == {"curve_test_nll.png", "samples.png", "posterior_scatter.png"}
    for name in images:
        assert (tmp_path / "out" / name).stat().st_size > 5_000
    assert "posterior_mae_z1" in text


def test_write_comparison_without_optional_parts(tmp_path):
    results, _ = make_results(with_posterior=False)
    for runs in results.values():
        for run in runs:
            run["samples"] = None
    text = write_comparison(results, tmp_path).read_text()
    assert "## Samples" not in text and "## Posterior accuracy" not in text
    with pytest.raises(ValueError, match="results"):
        write_comparison({}, tmp_path)
    with pytest.raises(ValueError, match=r"results\['x'\]"):
        write_comparison({"x": {"seed": 0}}, tmp_path)
