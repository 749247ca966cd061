"""Maximum mean discrepancy between two samples, with a permutation test.

The paper compares learned models with data by MMD between model samples and data (Gretton et
al. 2012). With a kernel k, samples X = {x_i}_{i<m} and Y = {y_j}_{j<n}, the unbiased estimate is

    MMD^2_u = 1/(m(m-1)) sum_{i != i'} k(x_i, x_i') + 1/(n(n-1)) sum_{j != j'} k(y_j, y_j')
              - 2/(mn) sum_{i,j} k(x_i, y_j)                             (Gretton et al., eq. 3)

It is zero in expectation when both samples come from one distribution, so it can be negative.
The kernel is Gaussian, k(a, b) = sum_s exp(-||a - b||^2 / (2 h_s^2)), with bandwidths
h_s = multiplier_s * median pairwise distance of the pooled sample (the median heuristic); one
multiplier gives the single-kernel MMD, several (e.g. 0.25..4) a kernel that sees several scales.

Memory: kernel sums are accumulated over (chunk_size x chunk_size) blocks, so no n x n matrix is
ever held; 10^4 samples of 784 dimensions need ~chunk_size^2 numbers at a time. The cost is still
O((m + n)^2 d) time.

Permutation test: the statistic under B relabellings of the pooled sample is computed for a batch
of B permutations in one pass over the kernel blocks (sum_ij K_ij u_i u_j for B membership
vectors u at once): memory O(chunk_size (m + n) + (m + n) B), time O((m + n)^2 (d + B)) per batch
of ``permutation_batch`` permutations. To keep that affordable it runs on a seeded subsample of
at most ``permutation_max_points`` points per sample (default 2000); the reported MMD^2 always
uses all points, the p-value then refers to the subsample (a test on fewer points has less
power, never a wrong size).

To read a model-vs-data MMD, compare it with :func:`mmd_floor`, the MMD between two disjoint
halves of the data: a model cannot be told apart from the data by this kernel once its MMD is at
that floor (at equal sample sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddchm.progress import progress_bar
from ddchm.validation import (
    as_tensor,
    check_finite,
    check_matrix,
    check_positive_int,
    make_generator,
)

SINGLE = (1.0,)
MULTI = (0.25, 0.5, 1.0, 2.0, 4.0)


@dataclass
class MMDResult:
    """An MMD^2 estimate.

    Attributes:
        mmd2: unbiased MMD^2 over all points (can be slightly negative).
        bandwidths: the Gaussian bandwidths h_s used (the kernel is their sum).
        p_value: permutation-test p-value, (1 + #{permuted >= observed}) / (1 + P); None if no
            test was run.
        n_x, n_y: sample sizes.
        n_permutations: P (0 if no test).
        n_test_points: points per sample the permutation test used (after subsampling).
    """

    mmd2: float
    bandwidths: tuple[float, ...]
    p_value: float | None
    n_x: int
    n_y: int
    n_permutations: int = 0
    n_test_points: tuple[int, int] | None = None

    @property
    def mmd(self) -> float:
        """sqrt(max(MMD^2, 0)), on the scale of a distance."""
        return math.sqrt(max(self.mmd2, 0.0))


def _as_samples(value, name: str, dtype=torch.float64) -> torch.Tensor:
    tensor = as_tensor(value, name).to(dtype)
    check_matrix(tensor, name)
    check_finite(tensor, name)
    if tensor.shape[0] < 2:
        raise ValueError(f"{name}: the unbiased MMD needs at least 2 points, got {tensor.shape[0]}")
    return tensor


def _subsample(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n]]


def median_distance(
    x, y=None, max_points: int = 1000, generator: torch.Generator | int | None = 0
) -> float:
    """Median pairwise Euclidean distance of the pooled sample (x with y), for the bandwidth.

    At most ``max_points`` pooled points (a seeded subsample) are used, so the cost is bounded.
    If more than half the pairs coincide (e.g. binary data with few distinct values) the median
    is 0; the median of the non-zero distances is returned instead.
    """
    pooled = _as_samples(x, "x")
    if y is not None:
        pooled = torch.cat([pooled, _as_samples(y, "y").to(pooled.dtype)])
    generator = make_generator(generator)
    pooled = _subsample(pooled, check_positive_int(max_points, "max_points", minimum=2), generator)
    i, j = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1)
    distances = torch.cdist(pooled, pooled)[i, j]
    median = float(distances.median())
    if median <= 0:
        positive = distances[distances > 0]
        if positive.numel() == 0:
            raise ValueError("x, y: every point is identical; the MMD bandwidth is undefined")
        median = float(positive.median())
    return median


def _block_kernel(a, b, inv_two_h2: torch.Tensor) -> torch.Tensor:
    """sum_s exp(-||a_i - b_j||^2 / (2 h_s^2)) for one block, (len(a), len(b))."""
    sq = a.square().sum(1, keepdim=True) + b.square().sum(1).unsqueeze(0) - 2 * a @ b.T
    sq = sq.clamp_min_(0.0)
    out = torch.zeros_like(sq)
    for c in inv_two_h2:
        out.add_(torch.exp(-c * sq))
    return out


def kernel_sum(a, b, bandwidths: Sequence[float], chunk_size: int = 2048) -> float:
    """sum_{i,j} k(a_i, b_j) over all pairs, computed in (chunk_size x chunk_size) blocks.

    For ``a is b`` only the blocks on and above the diagonal are computed (k is symmetric).
    """
    inv = torch.tensor([0.5 / h**2 for h in bandwidths], dtype=a.dtype)
    symmetric = a is b
    total = torch.zeros((), dtype=a.dtype)
    for i in range(0, a.shape[0], chunk_size):
        for j in range(i if symmetric else 0, b.shape[0], chunk_size):
            block = _block_kernel(a[i : i + chunk_size], b[j : j + chunk_size], inv).sum()
            total += 2 * block if symmetric and j != i else block
    return float(total)


def mmd2_unbiased(x, y, bandwidths: Sequence[float], chunk_size: int = 2048) -> float:
    """The unbiased MMD^2 of eq. 3 with fixed bandwidths, memory bounded by ``chunk_size``^2.

    The diagonal terms k(x_i, x_i) equal the number of bandwidths for a Gaussian kernel, so the
    off-diagonal sums are the full block sums minus that constant times m.
    """
    x, y = _as_samples(x, "x"), _as_samples(y, "y")
    _check_same_dim(x, y)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    m, n, s = x.shape[0], y.shape[0], len(bandwidths)
    kxx = kernel_sum(x, x, bandwidths, chunk_size) - s * m
    kyy = kernel_sum(y, y, bandwidths, chunk_size) - s * n
    kxy = kernel_sum(x, y, bandwidths, chunk_size)
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2 * kxy / (m * n)


def _permutation_statistics(
    pooled: torch.Tensor, m: int, memberships: torch.Tensor, bandwidths, chunk_size: int
) -> torch.Tensor:
    """MMD^2_u for each column u of ``memberships`` ((m + n) x P, u_i = 1 if point i is in X).

    With K the pooled kernel matrix, k = K 1, S = 1^T K 1, a_p = k^T u_p and b_p = u_p^T K u_p:
    sum_XX = b, sum_XY = a - b, sum_YY = S - 2a + b (then remove the constant diagonals).
    """
    total, n = pooled.shape[0], pooled.shape[0] - m
    inv = torch.tensor([0.5 / h**2 for h in bandwidths], dtype=pooled.dtype)
    row_sums = torch.zeros(total, dtype=pooled.dtype)
    quad = torch.zeros(memberships.shape[1], dtype=pooled.dtype)
    for i in range(0, total, chunk_size):
        rows = slice(i, min(total, i + chunk_size))
        k_u = torch.zeros(rows.stop - rows.start, memberships.shape[1], dtype=pooled.dtype)
        for j in range(0, total, chunk_size):
            block = _block_kernel(pooled[rows], pooled[j : j + chunk_size], inv)
            row_sums[rows] += block.sum(1)
            k_u += block @ memberships[j : j + chunk_size]
        quad += (memberships[rows] * k_u).sum(0)
    s_all, lin = row_sums.sum(), row_sums @ memberships
    diag = len(bandwidths)
    kxx = quad - diag * m
    kyy = s_all - 2 * lin + quad - diag * n
    kxy = lin - quad
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2 * kxy / (m * n)


def _check_same_dim(x, y):
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x, y: samples must have the same dimension, got {x.shape[1]} and {y.shape[1]}"
        )


def mmd(
    x,
    y,
    bandwidth: float | Sequence[float] | None = None,
    multipliers: Sequence[float] = SINGLE,
    n_permutations: int = 0,
    generator: torch.Generator | int | None = 0,
    chunk_size: int = 2048,
    bandwidth_max_points: int = 1000,
    permutation_max_points: int = 2000,
    permutation_batch: int = 200,
    progress: bool = False,
) -> MMDResult:
    """Unbiased MMD^2 between samples ``x`` (m, d) and ``y`` (n, d), numpy or torch.

    Args:
        bandwidth: a base bandwidth h, or a sequence of bandwidths used as given (then
            ``multipliers`` is ignored); None (default) takes the median heuristic on the pooled
            sample (:func:`median_distance`).
        multipliers: base bandwidth multipliers; the kernel is the sum of the Gaussian kernels.
            :data:`SINGLE` = (1,), :data:`MULTI` = (0.25, 0.5, 1, 2, 4).
        n_permutations: P for the permutation test; 0 skips it (p_value None). The smallest
            attainable p-value is 1 / (P + 1).
        generator: seed or torch.Generator for the bandwidth subsample and the permutations.
        chunk_size: block size of the kernel sums (memory ~ chunk_size^2 numbers).
        bandwidth_max_points: pooled points for the median heuristic.
        permutation_max_points: the test runs on at most this many points per sample.
        permutation_batch: permutations evaluated per pass over the kernel blocks.
        progress: show a tqdm bar over the permutation batches.
    """
    x, y = _as_samples(x, "x"), _as_samples(y, "y")
    _check_same_dim(x, y)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    n_permutations = check_positive_int(n_permutations, "n_permutations", minimum=0)
    generator = make_generator(generator)
    bandwidths = _bandwidths(x, y, bandwidth, multipliers, bandwidth_max_points, generator)
    mmd2 = mmd2_unbiased(x, y, bandwidths, chunk_size)
    if n_permutations == 0:
        return MMDResult(mmd2, bandwidths, None, x.shape[0], y.shape[0])

    cap = check_positive_int(permutation_max_points, "permutation_max_points", minimum=2)
    xs, ys = _subsample(x, cap, generator), _subsample(y, cap, generator)
    pooled, m = torch.cat([xs, ys]), xs.shape[0]
    observed_labels = torch.zeros(pooled.shape[0], 1, dtype=pooled.dtype)
    observed_labels[:m] = 1.0
    batch = check_positive_int(permutation_batch, "permutation_batch")
    observed, exceed = None, 0
    starts = range(0, n_permutations, batch)
    for start in progress_bar(starts, desc="MMD permutations", disable=not progress):
        size = min(batch, n_permutations - start)
        # Each column: a uniformly random choice of which m pooled points form "X".
        order = torch.argsort(torch.rand(pooled.shape[0], size, generator=generator), dim=0)
        labels = (order < m).to(pooled.dtype)
        if observed is None:
            labels = torch.cat([observed_labels, labels], dim=1)
        stats = _permutation_statistics(pooled, m, labels, bandwidths, chunk_size)
        if observed is None:
            observed, stats = stats[0], stats[1:]
        # A small tolerance so that permutations tying with the observed value count as >=.
        exceed += int((stats >= observed - 1e-12 * abs(float(observed))).sum())
    p_value = (1 + exceed) / (1 + n_permutations)
    return MMDResult(
        mmd2, bandwidths, p_value, x.shape[0], y.shape[0], n_permutations, (m, ys.shape[0])
    )


def _bandwidths(x, y, bandwidth, multipliers, max_points, generator) -> tuple[float, ...]:
    if bandwidth is not None and np.ndim(bandwidth) > 0:
        values = tuple(float(h) for h in np.asarray(bandwidth, dtype=float).reshape(-1))
    else:
        multipliers = tuple(float(c) for c in multipliers)
        if not multipliers or min(multipliers) <= 0:
            raise ValueError(f"multipliers: expected positive numbers, got {multipliers!r}")
        base = median_distance(x, y, max_points, generator) if bandwidth is None else bandwidth
        values = tuple(c * float(base) for c in multipliers)
    if not values or min(values) <= 0 or not all(math.isfinite(h) for h in values):
        raise ValueError(f"bandwidth: expected positive finite bandwidths, got {values!r}")
    return values


def mmd_floor(
    data, n: int | None = None, generator: torch.Generator | int | None = 0, **kwargs
) -> MMDResult:
    """MMD between two disjoint random halves of ``data``: the value a perfect model reaches.

    Args:
        data: (N, d) samples.
        n: points per half (default N // 2); compare with a model-vs-data MMD computed on ``n``
            model samples and ``n`` data points, since the estimator's spread depends on n.
        generator: seed or generator for the split (also passed on to :func:`mmd`).
        kwargs: passed to :func:`mmd` (bandwidth, multipliers, n_permutations, ...). Pass the
            bandwidths of the model-vs-data comparison to read the two on one scale.
    """
    data = _as_samples(data, "data")
    generator = make_generator(generator)
    half = data.shape[0] // 2 if n is None else check_positive_int(n, "n", minimum=2)
    if 2 * half > data.shape[0] or half < 2:
        raise ValueError(
            f"n: need 2 disjoint halves of {half} points, but data has {data.shape[0]} points"
        )
    order = torch.randperm(data.shape[0], generator=generator)
    return mmd(data[order[:half]], data[order[half : 2 * half]], generator=generator, **kwargs)
