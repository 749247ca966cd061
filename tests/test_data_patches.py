"""Natural image patches: centring, whitening statistics, determinism, inversion, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("skimage")

from ddchm.data.patches import image_patches, load_images  # noqa: E402

N = 4000


def test_centred_patches_have_zero_mean_and_unit_variance():
    x, transform = image_patches(N, patch_size=6, seed=0)
    assert x.shape == (N, 36) and x.dtype == np.float32
    assert np.abs(x.mean(axis=1)).max() < 1e-5
    assert abs(x.std() - 1) < 1e-4  # normalised: one scale for all pixels
    raw = image_patches(N, patch_size=6, seed=0, normalize=False, return_transform=False)
    assert np.abs(raw.mean(axis=1)).max() < 1e-6
    assert np.allclose(transform(raw), x, atol=1e-4)


def test_pca_whitening_gives_identity_covariance():
    y, transform = image_patches(N, whiten="pca", seed=1)
    d = y.shape[1]
    assert d == 63  # the constant direction has no variance after mean removal and is dropped
    assert np.abs(np.cov(y.T) - np.eye(d)).max() < 0.01
    assert np.abs(y.mean(axis=0)).max() < 1e-4
    assert np.all(np.diff(transform.eigenvalues) <= 0)
    y10, _ = image_patches(N, whiten="pca", n_components=10, seed=1)
    assert y10.shape == (N, 10)
    assert np.allclose(y10, y[:, :10], atol=1e-4)
    assert np.abs(np.cov(y10.T) - np.eye(10)).max() < 0.01


def test_zca_whitening_gives_identity_on_the_kept_subspace():
    y, transform = image_patches(N, whiten="zca", seed=2)
    assert y.shape == (N, 64)
    # Identity on the 63 directions orthogonal to the constant patch, 0 along it.
    projector = np.eye(64) - np.full((64, 64), 1 / 64)
    assert np.abs(np.cov(y.T) - projector).max() < 0.01
    assert np.allclose(transform.matrix, transform.matrix.T, atol=1e-8)  # ZCA is symmetric
    full, _ = image_patches(N, whiten="zca", seed=2, remove_patch_mean=False)
    assert np.abs(np.cov(full.T) - np.eye(64)).max() < 0.01


def test_epsilon_shrinks_the_weak_directions():
    y, transform = image_patches(N, whiten="pca", seed=3, epsilon=1e-3)
    variances = np.var(y, axis=0, ddof=1)
    expected = transform.eigenvalues / (transform.eigenvalues + 1e-3)
    assert np.allclose(variances, expected, rtol=1e-3)
    assert variances[-1] < 0.5 < variances[0]


def test_patches_are_deterministic_given_the_seed():
    a, _ = image_patches(500, whiten="zca", seed=7)
    b, _ = image_patches(500, whiten="zca", seed=7)
    c, _ = image_patches(500, whiten="zca", seed=8)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    d, _ = image_patches(500, whiten="zca", seed=np.random.default_rng(7))
    assert np.array_equal(a, d)


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_whitening_inverts_for_display(method):
    centred = image_patches(N, seed=4, normalize=False, return_transform=False)
    y, transform = image_patches(N, whiten=method, seed=4)
    assert np.allclose(transform.inverse(y), centred, atol=1e-5)
    assert np.allclose(transform(centred), y, atol=1e-4)


def test_user_images_and_colour_conversion():
    rng = np.random.default_rng(0)
    grey = rng.random((40, 50))
    colour = np.stack([grey, grey, grey], axis=-1)
    a = image_patches(100, patch_size=4, images=[grey], normalize=False, return_transform=False)
    b = image_patches(100, patch_size=4, images=[colour], normalize=False, return_transform=False)
    assert np.allclose(a, b, atol=1e-6)
    assert len(load_images(("camera", "astronaut"))) == 2


def test_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="bundled with scikit-image"):
        image_patches(10, images=("eagle",))
    with pytest.raises(ValueError, match="larger than image"):
        image_patches(10, patch_size=20, images=[np.zeros((10, 10))])
    with pytest.raises(ValueError, match="n_components: expected 1..63"):
        image_patches(100, whiten="pca", n_components=64)
    with pytest.raises(ValueError, match="whiten"):
        image_patches(10, whiten="ica")
    with pytest.raises(ValueError, match="n_components"):
        image_patches(10, n_components=3)
    with pytest.raises(ValueError, match="grey"):
        image_patches(10, images=[np.zeros((3, 10, 10, 2))])
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ImportError, match=r"ddchm\[images\]"):
        image_patches(10)
