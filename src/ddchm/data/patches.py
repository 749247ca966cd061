"""Natural image patches from the photographs bundled with scikit-image, optionally whitened.

:func:`image_patches` cuts square patches at random positions from grey-scale photographs,
removes each patch's mean (the DC component; a patch model then describes local structure,
not brightness), and optionally whitens them (PCA or ZCA) or scales them to unit variance. The
returned :class:`PatchTransform` holds the mean and matrices, so a user can map model samples
back to pixel space for display (:meth:`PatchTransform.inverse`).

scikit-image is an optional dependency (``pip install ddchm[images]``). Only images shipped in
the scikit-image wheel are used, so nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["BUNDLED_IMAGES", "DEFAULT_IMAGES", "PatchTransform", "image_patches", "load_images"]

# Photographs that ship inside the scikit-image wheel (checked with 0.26: no pooch download).
BUNDLED_IMAGES = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "grass",
    "gravel",
    "hubble_deep_field",
    "moon",
    "rocket",
)
# Natural scenes and textures; the default set of image_patches.
DEFAULT_IMAGES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "grass", "gravel", "brick")


@dataclass(frozen=True)
class PatchTransform:
    """The preprocessing applied by :func:`image_patches`, as an invertible affine map.

    ``y = (c - mean) @ matrix.T`` where ``c`` is a patch (flattened, row-major) with its own mean
    subtracted if ``remove_patch_mean``; ``inverse(y) = y @ inverse_matrix.T + mean``
    reconstructs ``c`` (the per-patch mean is lost, so inverses have zero mean per patch, and
    directions dropped by whitening are lost too). ``eigenvalues`` are the covariance eigenvalues
    of the kept directions (descending), None without whitening.
    """

    method: str | None
    patch_size: int
    remove_patch_mean: bool
    mean: np.ndarray
    matrix: np.ndarray
    inverse_matrix: np.ndarray
    eigenvalues: np.ndarray | None = None
    epsilon: float = 0.0

    def __call__(self, patches) -> np.ndarray:
        """Apply the transform to raw patches, shape (n, patch_size**2) or (n, p, p)."""
        x = np.asarray(patches, dtype=np.float64).reshape(-1, self.patch_size**2)
        if self.remove_patch_mean:
            x = x - x.mean(axis=1, keepdims=True)
        return ((x - self.mean) @ self.matrix.T).astype(np.float32)

    def inverse(self, y) -> np.ndarray:
        """Map transformed patches (n, n_out) back to centred pixel patches (n, patch_size**2)."""
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != self.matrix.shape[0]:
            raise ValueError(f"y: expected shape (n, {self.matrix.shape[0]}), got {y.shape}")
        return (y @ self.inverse_matrix.T + self.mean).astype(np.float32)


def _import_skimage():
    try:
        import skimage.color
        import skimage.data
        import skimage.util
    except ImportError as error:
        raise ImportError(
            "image patches need scikit-image, an optional dependency of ddchm: "
            "pip install 'ddchm[images]' (or pip install scikit-image)"
        ) from error
    return skimage


def _to_grey(image: np.ndarray, name: str, skimage) -> np.ndarray:
    image = np.asarray(image)
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise TypeError(f"{name}: expected a numeric image, got dtype {image.dtype}")
    image = skimage.util.img_as_float(image)  # integer types -> [0, 1]
    if image.ndim == 3 and image.shape[2] == 4:
        image = skimage.color.rgba2rgb(image)
    if image.ndim == 3 and image.shape[2] == 3:
        image = skimage.color.rgb2gray(image)
    if image.ndim != 2:
        raise ValueError(
            f"{name}: expected a grey (h, w) or colour (h, w, 3|4) image, got shape {image.shape}"
        )
    if not np.isfinite(image).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return np.asarray(image, dtype=np.float64)


@functools.lru_cache(maxsize=len(BUNDLED_IMAGES))
def _bundled_grey(name: str) -> np.ndarray:
    """A bundled photograph in grey, read once per process (read-only; callers do not mutate)."""
    skimage = _import_skimage()
    grey = _to_grey(getattr(skimage.data, name)(), f"images={name}", skimage)
    grey.flags.writeable = False
    return grey


def load_images(images=DEFAULT_IMAGES) -> list[np.ndarray]:
    """Grey-scale float64 images in [0, 1]: names from BUNDLED_IMAGES, or arrays (h, w[, 3|4]).

    Bundled photographs are read and converted once per process and returned read-only.
    """
    skimage = _import_skimage()
    if isinstance(images, (str, np.ndarray)):
        images = (images,)
    out = []
    for index, item in enumerate(images):
        if isinstance(item, str):
            if item not in BUNDLED_IMAGES:
                raise ValueError(
                    f"images: {item!r} is not one of the photographs bundled with scikit-image "
                    f"that ddchm uses without downloading: {', '.join(BUNDLED_IMAGES)}"
                )
            out.append(_bundled_grey(item))
        else:
            out.append(_to_grey(item, f"images[{index}]", skimage))
    if not out:
        raise ValueError("images: expected at least one image")
    return out


def _sample_patches(
    grey: list[np.ndarray], n: int, patch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` patches, uniform over all patch positions in all images (bigger images more often)."""
    positions = np.array(
        [
            max(0, h - patch_size + 1) * max(0, w - patch_size + 1)
            for h, w in (g.shape for g in grey)
        ],
        dtype=float,
    )
    if (positions <= 0).any():
        small = [i for i, p in enumerate(positions) if p <= 0]
        raise ValueError(f"patch_size: {patch_size} is larger than image(s) {small}")
    which = rng.choice(len(grey), size=n, p=positions / positions.sum())
    offsets = np.arange(patch_size)
    patches = np.empty((n, patch_size, patch_size))
    for index, image in enumerate(grey):
        rows = np.flatnonzero(which == index)
        if rows.size == 0:
            continue
        top = rng.integers(0, image.shape[0] - patch_size + 1, size=rows.size)
        left = rng.integers(0, image.shape[1] - patch_size + 1, size=rows.size)
        patches[rows] = image[
            (top[:, None] + offsets)[:, :, None], (left[:, None] + offsets)[:, None, :]
        ]
    return patches.reshape(n, patch_size * patch_size)


def image_patches(
    n: int,
    patch_size: int = 8,
    images=DEFAULT_IMAGES,
    whiten: str | None = None,
    n_components: int | None = None,
    seed: int | np.random.Generator | None = 0,
    *,
    remove_patch_mean: bool = True,
    normalize: bool = True,
    epsilon: float = 1e-6,
    min_eigenvalue_ratio: float = 1e-6,
    return_transform: bool = True,
):
    """``n`` random ``patch_size`` x ``patch_size`` grey patches as float32 rows.

    Steps: images -> grey in [0, 1]; patch positions drawn uniformly over all positions of all
    images with ``numpy.random.default_rng(seed)`` (same seed, same patches); each patch's own
    mean removed (``remove_patch_mean``); then

    * ``whiten=None``: if ``normalize``, divide by the overall standard deviation, so the pixels
      have unit variance on average (one scalar; correlations kept). Output (n, patch_size**2).
    * ``whiten='pca'``: project onto the covariance eigenvectors and scale each by
      ``1/sqrt(eigenvalue + epsilon)``. Output (n, k): k = ``n_components`` or every kept
      direction.
    * ``whiten='zca'``: the same, rotated back to pixel space (``U diag U^T``), so whitened patches
      still look like (edge-enhanced) patches. Output (n, patch_size**2), rank k.

    Directions whose eigenvalue is below ``min_eigenvalue_ratio`` times the largest are dropped
    before whitening: they carry no signal, only rounding noise (removing the patch mean makes the
    constant direction's variance exactly 0, so with the default settings k = patch_size**2 - 1).
    ``epsilon`` (pixel units squared, images in [0, 1]) regularises the scaling; the default
    1e-6 is small next to the smallest kept eigenvalue of natural 8x8 patches (about 4e-4), so
    the whitened covariance is the identity to within about 0.3%.

    Returns ``(patches, transform)`` (a :class:`PatchTransform`) or only the patches if
    ``return_transform=False``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n: expected an integer >= 2, got {n!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)):
        raise TypeError(f"patch_size: expected an integer, got {patch_size!r}")
    if patch_size < 2:
        raise ValueError(f"patch_size: expected an integer >= 2, got {patch_size}")
    if whiten not in (None, "pca", "zca"):
        raise ValueError(f"whiten: expected None, 'pca' or 'zca', got {whiten!r}")
    if n_components is not None and whiten is None:
        raise ValueError("n_components: only meaningful with whiten='pca' or 'zca'")
    if epsilon < 0 or not np.isfinite(epsilon):
        raise ValueError(f"epsilon: expected a finite value >= 0, got {epsilon!r}")
    if not 0 <= min_eigenvalue_ratio < 1:
        raise ValueError(
            f"min_eigenvalue_ratio: expected a value in [0, 1), got {min_eigenvalue_ratio!r}"
        )
    rng = np.random.default_rng(seed)
    grey = load_images(images)
    raw = _sample_patches(grey, int(n), int(patch_size), rng)
    dim = raw.shape[1]
    x = raw - raw.mean(axis=1, keepdims=True) if remove_patch_mean else raw

    if whiten is None:
        scale = 1.0 / x.std() if normalize and x.std() > 0 else 1.0
        transform = PatchTransform(
            method=None,
            patch_size=int(patch_size),
            remove_patch_mean=remove_patch_mean,
            mean=np.zeros(dim),
            matrix=scale * np.eye(dim),
            inverse_matrix=np.eye(dim) / scale,
        )
    else:
        mean = x.mean(axis=0)
        centred = x - mean
        covariance = centred.T @ centred / (x.shape[0] - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        kept = int(np.sum(eigenvalues > min_eigenvalue_ratio * eigenvalues[0]))
        if n_components is not None:
            if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
                raise TypeError(f"n_components: expected an integer, got {n_components!r}")
            if not 1 <= n_components <= kept:
                raise ValueError(
                    f"n_components: expected 1..{kept} (the directions with non-negligible "
                    f"variance; {dim - kept} of {dim} were dropped), got {n_components}"
                )
            kept = int(n_components)
        values, vectors = eigenvalues[:kept], eigenvectors[:, :kept]
        scales = np.sqrt(values + epsilon)
        matrix = vectors.T / scales[:, None]  # (k, dim): PCA whitening
        inverse = vectors * scales[None, :]  # (dim, k)
        if whiten == "zca":
            matrix, inverse = vectors @ matrix, inverse @ vectors.T
        transform = PatchTransform(
            method=whiten,
            patch_size=int(patch_size),
            remove_patch_mean=remove_patch_mean,
            mean=mean,
            matrix=matrix,
            inverse_matrix=inverse,
            eigenvalues=values,
            epsilon=float(epsilon),
        )
    out = ((x - transform.mean) @ transform.matrix.T).astype(np.float32)
    return (out, transform) if return_transform else out
