"""Posterior accuracy: errors of posterior means and of expected encodings against exact values."""

import pytest
import torch

from ddchm.evaluate.posterior import (
    encoding_accuracy,
    encoding_errors,
    posterior_accuracy,
    posterior_mean_errors,
)
from ddchm.models import Bernoulli, ExactInference, HierarchicalModel


@pytest.fixture(scope="module")
def setup():
    model = HierarchicalModel([Bernoulli(3), Bernoulli(5, 3), Bernoulli(8, 5)]).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    x = model.sample(40, generator=1)[0]
    exact = ExactInference(model)
    return model, x, exact, exact.posterior_means(x)


def test_exact_means_have_zero_error(setup):
    _, x, exact, means = setup
    errors = posterior_accuracy(exact, x, [m.clone() for m in means])
    assert errors.mae == 0 and errors.rmse == 0
    assert [e.layer for e in errors.layers] == [1, 2]
    assert errors.layers[0].unit_mae.shape == (5,) and errors.layers[1].unit_rmse.shape == (3,)


def test_errors_of_a_known_perturbation(setup):
    _, _, _, means = setup
    shifted = [means[0] + 0.1, means[1].clone()]
    shifted[1][:, 0] -= 0.3  # one unit of z2 off by 0.3
    errors = posterior_mean_errors(means, [s.numpy() for s in shifted])
    assert errors.layers[0].mae == pytest.approx(0.1)
    assert errors.layers[0].rmse == pytest.approx(0.1)
    assert errors.layers[1].mae == pytest.approx(0.1)  # 0.3 on 1 of 3 units
    assert errors.layers[1].rmse == pytest.approx((0.09 / 3) ** 0.5)
    assert errors.layers[1].max_abs == pytest.approx(0.3)
    assert torch.allclose(
        errors.layers[1].unit_mae, torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)
    )
    n = means[0].shape[0]
    assert errors.mae == pytest.approx((0.1 * 5 * n + 0.3 * n) / (8 * n))
    flat = errors.as_dict()
    assert set(flat) == {
        "posterior_mae",
        "posterior_rmse",
        "posterior_mae_z1",
        "posterior_rmse_z1",
        "posterior_mae_z2",
        "posterior_rmse_z2",
    }


def test_encoding_accuracy_against_exact_expectations(setup):
    model, x, exact, _ = setup
    generator = torch.Generator().manual_seed(5)
    weights = [torch.randn(d, 6, generator=generator, dtype=torch.float64) for d in (5, 3)]

    def features(w):
        # sigmoid random features plus the constant feature, as in eq. 4
        return lambda z: torch.cat([torch.sigmoid(z @ w - 0.5), torch.ones(len(z), 1)], dim=1)

    maps = [features(w) for w in weights]
    truth = [exact.expectation(x, fn=maps[l - 1], layer=l) for l in (1, 2)]

    perfect = encoding_accuracy(exact, x, truth, maps)
    assert [e.layer for e in perfect] == [1, 2]
    assert all(e.mse == 0 and e.r2 == 1 for e in perfect)
    assert torch.isnan(perfect[0].feature_r2[-1])  # the constant feature does not vary

    # noise at 20% of each feature's spread across x: R^2 near 1 - 0.2^2
    noise = [
        0.2 * t.std(0) * torch.randn(t.shape, generator=generator, dtype=torch.float64)
        for t in truth
    ]
    noisy = encoding_errors(truth, [t + e for t, e in zip(truth, noise)])
    for error, e in zip(noisy, noise):
        assert error.mse == pytest.approx(float(e.square().mean()))
        assert 0.9 < error.r2 < 1

    average = encoding_errors(truth, [t.mean(0).expand_as(t) for t in truth])
    assert all(abs(e.r2) < 1e-12 for e in average)

    only_top = encoding_accuracy(exact, x, [truth[1]], [maps[1]], layers=[2])
    assert only_top[0].layer == 2 and only_top[0].r2 == 1


def test_mismatches_are_named(setup):
    _, _, _, means = setup
    with pytest.raises(ValueError, match="has 1 layers"):
        posterior_mean_errors(means, means[:1])
    with pytest.raises(ValueError, match=r"estimated_means\[0\] \(z1\): shape"):
        posterior_mean_errors(means, [means[0][:, :2], means[1]])
    with pytest.raises(TypeError, match="one \\(N, D_l\\) array per latent layer"):
        posterior_mean_errors(means, means[0])
