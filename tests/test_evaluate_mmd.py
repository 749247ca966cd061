"""MMD: zero for one distribution, clearly positive for two, chunking changes nothing."""

import numpy as np
import pytest
import torch

from ddchm.evaluate.mmd import (
    MULTI,
    _permutation_statistics,
    median_distance,
    mmd,
    mmd2_unbiased,
    mmd_floor,
)


def gaussian(n, d, shift=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64) + shift


def binary(n, d, p, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=generator, dtype=torch.float64) < p).double()


def dense_mmd2(x, y, bandwidths):
    """The textbook estimator with whole kernel matrices (reference)."""

    def kernel(a, b):
        sq = torch.cdist(a, b).square()
        return sum(torch.exp(-sq / (2 * h**2)) for h in bandwidths)

    m, n = len(x), len(y)
    kxx, kyy = kernel(x, x), kernel(y, y)
    return float(
        (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        - 2 * kernel(x, y).mean()
    )


@pytest.mark.parametrize("multipliers", [(1.0,), MULTI])
def test_chunked_equals_dense(multipliers):
    x, y = gaussian(53, 4, seed=1), gaussian(41, 4, shift=0.3, seed=2)
    result = mmd(x, y, multipliers=multipliers, chunk_size=7)
    assert len(result.bandwidths) == len(multipliers)
    assert result.mmd2 == pytest.approx(dense_mmd2(x, y, result.bandwidths), abs=1e-13, rel=1e-10)
    whole = mmd2_unbiased(x, y, result.bandwidths, chunk_size=10_000)
    assert result.mmd2 == pytest.approx(whole, abs=1e-13, rel=1e-10)


def test_permutation_statistics_match_direct_splits():
    pooled, m = gaussian(30, 3, seed=3), 12
    generator = torch.Generator().manual_seed(0)
    order = torch.argsort(torch.rand(30, 5, generator=generator), dim=0)
    labels = (order < m).double()
    stats = _permutation_statistics(pooled, m, labels, (0.7, 2.0), chunk_size=4)
    for p in range(5):
        inside = labels[:, p] > 0
        expected = dense_mmd2(pooled[inside], pooled[~inside], (0.7, 2.0))
        assert float(stats[p]) == pytest.approx(expected, abs=1e-13)


def test_p_value_does_not_depend_on_chunk_size():
    x, y = gaussian(40, 3, seed=4), gaussian(40, 3, shift=0.2, seed=5)
    a = mmd(x, y, n_permutations=50, chunk_size=9, generator=7)
    b = mmd(x, y, n_permutations=50, chunk_size=1000, generator=7)
    assert a.p_value == b.p_value
    assert a.mmd2 == pytest.approx(b.mmd2, abs=1e-13)


@pytest.mark.parametrize("kind", ["gaussian", "binary"])
def test_one_distribution_is_consistent_with_zero(kind):
    estimates, p_values = [], []
    for seed in range(10):
        if kind == "gaussian":
            x, y = gaussian(100, 5, seed=2 * seed), gaussian(100, 5, seed=2 * seed + 1)
        else:
            x, y = binary(100, 10, 0.5, seed=2 * seed), binary(100, 10, 0.5, seed=2 * seed + 1)
        result = mmd(x, y, n_permutations=200, generator=seed)
        estimates.append(result.mmd2)
        p_values.append(result.p_value)
    estimates = np.array(estimates)
    # unbiased: the estimates straddle zero and their mean is within 3 s.e. of it
    assert estimates.min() < 0 < estimates.max()
    assert abs(estimates.mean()) < 3 * estimates.std(ddof=1) / np.sqrt(len(estimates))
    # p-values of a true null are uniform: few small ones
    assert sum(p < 0.05 for p in p_values) <= 2
    assert np.median(p_values) > 0.2


@pytest.mark.parametrize("kind", ["gaussian", "binary"])
@pytest.mark.parametrize("multipliers", [(1.0,), MULTI])
def test_two_distributions_are_told_apart(kind, multipliers):
    if kind == "gaussian":
        x, y = gaussian(200, 5, seed=1), gaussian(200, 5, shift=0.5, seed=2)
    else:
        x, y = binary(200, 10, 0.5, seed=1), binary(200, 10, 0.65, seed=2)
    result = mmd(x, y, multipliers=multipliers, n_permutations=200, generator=0)
    assert result.p_value < 0.01
    assert result.mmd2 > 0
    assert (result.n_x, result.n_y, result.n_permutations) == (200, 200, 200)


def test_numpy_input_and_subsampled_permutation_test():
    x = np.asarray(gaussian(300, 4, seed=1))
    y = np.asarray(gaussian(250, 4, shift=1.0, seed=2))
    result = mmd(x, y, n_permutations=100, permutation_max_points=80, generator=0)
    assert result.n_test_points == (80, 80)
    assert (result.n_x, result.n_y) == (300, 250)
    assert result.mmd2 == pytest.approx(
        dense_mmd2(torch.as_tensor(x), torch.as_tensor(y), result.bandwidths), abs=1e-12
    )
    assert result.p_value < 0.02


def test_median_heuristic_and_fixed_bandwidths():
    x, y = gaussian(200, 3, seed=1), gaussian(200, 3, seed=2)
    h = median_distance(x, y)
    # squared distance of two independent N(0, I_3) points is 2 chi^2_3: median ~ 2 * 2.37
    assert h**2 == pytest.approx(2 * 2.366, rel=0.1)
    assert mmd(x, y).bandwidths == (h,)
    assert mmd(x, y, bandwidth=2.0, multipliers=(0.5, 1.0)).bandwidths == (1.0, 2.0)
    assert mmd(x, y, bandwidth=[0.3, 3.0]).bandwidths == (0.3, 3.0)


def test_floor_uses_disjoint_halves():
    data = gaussian(201, 3, seed=1)
    floor = mmd_floor(data, n_permutations=50)
    assert (floor.n_x, floor.n_y) == (100, 100)
    assert floor.p_value > 0.01
    model = gaussian(100, 3, shift=0.6, seed=9)
    versus = mmd(model, data[:100], bandwidth=floor.bandwidths)
    assert versus.mmd2 > floor.mmd2 + 0.05


def test_bad_inputs_are_named():
    x = gaussian(10, 3)
    with pytest.raises(ValueError, match="same dimension"):
        mmd(x, gaussian(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x, x[:1])
    with pytest.raises(ValueError, match="multipliers"):
        mmd(x, x, multipliers=(0.0,))
    with pytest.raises(ValueError, match="x: contains"):
        mmd(torch.full((5, 3), float("nan")), x)
    with pytest.raises(ValueError, match="n:"):
        mmd_floor(x, n=8)
