"""The reference gradient where enumeration is impossible (evaluate.gradients.importance_gradient),
checked on chains that can be enumerated: against the exact gradient and exact posterior means."""

import pytest
import torch

from ddchm.data import make_truth
from ddchm.evaluate.gradients import compare_gradients, importance_gradient, perturbed_model
from ddchm.evaluate.likelihood import ExactPosteriorProposal, PriorProposal
from ddchm.models import exact_reference


@pytest.fixture(scope="module")
def setting():
    truth = make_truth("sbn-hard")  # 4-10-8: its posteriors are uncertain and correlated
    x = truth.splits(40, 0, 0, seed=7)["train"]
    model = perturbed_model(truth.model, 0.5, seed=1)  # not the truth: a non-zero gradient
    exact = exact_reference(model)
    return model, x, exact, exact.expected_gradient(x)


@pytest.mark.parametrize(
    "proposal, cosine, rel_error", [("prior", 0.995, 0.1), ("exact", 0.999, 0.05)]
)
def test_importance_gradient_matches_the_exact_gradient(setting, proposal, cosine, rel_error):
    model, x, exact, target = setting
    q = PriorProposal(model) if proposal == "prior" else ExactPosteriorProposal(exact)
    estimate = importance_gradient(model, x, q, n_particles=20_000, particle_chunk=5000)
    figures = compare_gradients(estimate.gradient, target)
    assert figures["cosine"] > cosine and figures["rel_error"] < rel_error, figures
    assert set(estimate.gradient) == set(target)
    assert estimate.ess.shape == (40,) and bool((estimate.ess <= 20_000 + 1e-6).all())
    if proposal == "exact":  # every weight is equal: the ESS is K
        assert estimate.ess.min() == pytest.approx(20_000, rel=1e-6)


def test_importance_gradient_gives_the_posterior_expectations_of_the_statistics(setting):
    model, x, exact, _ = setting
    identity = [lambda z: z, lambda z: z]
    for q, mean_error, max_error in (
        (PriorProposal(model), 0.01, 0.1),
        (ExactPosteriorProposal(exact), 0.005, 0.03),
    ):
        estimate = importance_gradient(
            model, x, q, n_particles=10_000, statistics=identity, generator=3
        )
        for got, want in zip(estimate.expectations, exact.posterior_means(x)):
            assert got.shape == want.shape
            error = (got - want).abs()
            assert error.mean() < mean_error and error.max() < max_error, (
                error.mean(),
                error.max(),
            )


def test_importance_gradient_is_reproducible_and_chunking_does_not_change_it(setting):
    model, x, _, _ = setting
    a = importance_gradient(model, x[:5], PriorProposal(model), 3000, particle_chunk=3000)
    b = importance_gradient(model, x[:5], PriorProposal(model), 3000, particle_chunk=3000)
    assert all(torch.equal(a.gradient[k], b.gradient[k]) for k in a.gradient)
    with pytest.raises(ValueError, match="one callable per latent layer"):
        importance_gradient(model, x, PriorProposal(model), 10, statistics=[lambda z: z])
