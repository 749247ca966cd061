"""Figures: every kind is drawn, saved as a PNG and has visible content."""

import numpy as np
import pytest
from matplotlib.image import imread

from ddchm.evaluate.plots import (
    aggregate_curves,
    plot_learning_curves,
    plot_posterior_scatter,
    plot_samples,
)


def check_png(path, min_bytes=8_000, min_side=300):
    assert path.exists() and path.stat().st_size > min_bytes
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert min(image.shape[:2]) >= min_side
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas


def fake_curves(n_seeds, rate, seed):
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(n_seeds):
        steps = np.arange(0, 1001, 50)
        time = np.cumsum(rng.uniform(0.8, 1.2, steps.size)) * rate
        loss = 10 + 3 * np.exp(-steps / 300) + rng.normal(0, 0.05, steps.size)
        runs.append({"step": steps, "time": time, "test_nll": loss})
    return runs


def test_aggregate_curves_mean_and_stderr():
    runs = [{"step": [0, 1, 2], "v": [1.0, 2.0, 3.0]}, {"step": [0, 1, 2], "v": [3.0, 4.0, 5.0]}]
    x, mean, se, n = aggregate_curves(runs, "step", "v")
    assert n == 2 and np.allclose(x, [0, 1, 2]) and np.allclose(mean, [2, 3, 4])
    assert np.allclose(se, 1.0)  # std (ddof 1) sqrt(2) over sqrt(2)
    # different x values: interpolated on the common range
    runs = [{"t": [0.0, 2.0], "v": [0.0, 2.0]}, {"t": [1.0, 3.0], "v": [2.0, 4.0]}]
    x, mean, se, n = aggregate_curves(runs, "t", "v", n_grid=5)
    assert np.allclose(x, np.linspace(1, 2, 5)) and np.allclose(mean, x + 0.5)
    with pytest.raises(ValueError, match="needs 'time'"):
        aggregate_curves(runs, "time", "v")


def test_learning_curves_png(tmp_path):
    curves = {"ddc-hm": fake_curves(3, 0.05, 0), "wake-sleep": fake_curves(3, 0.02, 1)}
    curves["rws"] = fake_curves(1, 0.1, 2)  # a single seed draws a line without a band
    path = tmp_path / "curves.png"
    fig = plot_learning_curves(curves, "test_nll", ylabel="test NLL (nats)", title="t", path=path)
    check_png(path)
    axes = fig.get_axes()
    assert [ax.get_xlabel() for ax in axes] == ["training step", "training wall-clock time (s)"]
    assert all(ax.get_legend() is not None for ax in axes)


@pytest.mark.parametrize("dim, shape", [(16, "auto"), (784, "auto"), (12, (3, 4)), (8, None)])
def test_sample_grid_png(tmp_path, dim, shape):
    rng = np.random.default_rng(0)
    panels = {"data": rng.random((49, dim)) < 0.3, "model": rng.random((49, dim)) < 0.4}
    path = tmp_path / f"samples_{dim}.png"
    plot_samples({k: v.astype(float) for k, v in panels.items()}, image_shape=shape, path=path)
    check_png(path, min_bytes=3_000)


def test_continuous_samples_get_a_colour_bar(tmp_path):
    samples = np.random.default_rng(0).normal(size=(30, 10))
    fig = plot_samples(samples, title="continuous", path=tmp_path / "c.png")
    check_png(tmp_path / "c.png", min_bytes=3_000)
    assert len(fig.get_axes()) == 2  # the panel and its colour bar
    with pytest.raises(ValueError, match="does not match"):
        plot_samples(samples, image_shape=(3, 4))


def test_posterior_scatter_png(tmp_path):
    rng = np.random.default_rng(0)
    exact = [rng.random((100, 6)), rng.random((100, 3))]
    estimates = {
        "good": [np.clip(e + rng.normal(0, 0.03, e.shape), 0, 1) for e in exact],
        "poor": [np.clip(e + rng.normal(0, 0.2, e.shape), 0, 1) for e in exact],
    }
    path = tmp_path / "posterior.png"
    fig = plot_posterior_scatter(exact, estimates, title="posterior means", path=path)
    check_png(path)
    labels = [t.get_text() for t in fig.get_axes()[0].get_legend().get_texts()]
    assert labels[0].startswith("good (MAE 0.0") and labels[1].startswith("poor (MAE 0.1")
    with pytest.raises(ValueError, match="shape"):
        plot_posterior_scatter(exact, {"bad": [exact[0][:, :2], exact[1]]})
