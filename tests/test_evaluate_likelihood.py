"""Log-likelihood: exact wrapper and importance sampling against exact enumeration."""

import math

import pytest
import torch

from ddchm.evaluate.likelihood import (
    ExactPosteriorProposal,
    PriorProposal,
    exact_log_likelihood,
    importance_log_likelihood,
)
from ddchm.models import Bernoulli, ExactInference, HierarchicalModel


def random_sbn(sizes=(3, 5, 10), sd=1.5, seed=0) -> HierarchicalModel:
    """A sigmoid belief net, top layer first, with N(0, sd^2) parameters, float64."""
    layers = [Bernoulli(sizes[0])] + [Bernoulli(d, p) for p, d in zip(sizes, sizes[1:])]
    model = HierarchicalModel(layers).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(sd * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return model


@pytest.fixture(scope="module")
def sbn():
    model = random_sbn()
    x = model.sample(30, generator=1)[0]
    exact = ExactInference(model)
    return model, x, exact, exact.log_marginal(x).detach()


def test_exact_wrapper(sbn):
    model, x, exact, log_px = sbn
    result = exact_log_likelihood(model, x)
    assert torch.equal(result.log_px, log_px)
    assert result.method == "exact" and result.ess is None
    assert result.mean == pytest.approx(float(log_px.mean()))
    assert result.stderr == pytest.approx(float(log_px.std() / math.sqrt(30)))
    assert result.mc_stderr == 0
    assert torch.equal(exact_log_likelihood(exact, x).log_px, log_px)


def test_exact_posterior_proposal_gives_the_exact_value(sbn):
    model, x, exact, log_px = sbn
    # odd chunk sizes: every data batch and particle chunk must pair each x with its own z
    result = importance_log_likelihood(
        model, x, ExactPosteriorProposal(exact), n_particles=9, particle_chunk=4, batch_size=7
    )
    assert torch.allclose(result.log_px, log_px, atol=1e-10, rtol=0)
    assert torch.allclose(result.ess, torch.full_like(result.ess, 9.0), atol=1e-8)
    assert float(result.log_px_stderr.max()) < 1e-6


def test_prior_proposal_converges_to_the_exact_value(sbn):
    model, x, exact, log_px = sbn
    errors, results = {}, {}
    for k in (10, 2000):
        result = importance_log_likelihood(
            model, x, PriorProposal(model), n_particles=k, particle_chunk=500, generator=k
        )
        errors[k] = (result.log_px - log_px).abs()
        results[k] = result
    assert float(errors[2000].mean()) < 0.2 * float(errors[10].mean())
    assert float(errors[2000].mean()) < 0.05
    # the delta-method standard errors describe the actual errors at large K
    big = results[2000]
    assert float((errors[2000] < 3 * big.log_px_stderr + 1e-3).double().mean()) >= 0.9
    assert float(big.log_px_stderr.mean()) < float(results[10].log_px_stderr.mean())
    assert torch.all(big.ess <= 2000 + 1e-6) and torch.all(big.ess >= 1 - 1e-9)
    summary = big.summary()
    assert summary["n_particles"] == 2000 and summary["ess_min"] <= summary["ess_mean"]
    assert abs(summary["log_likelihood"] - float(log_px.mean())) < 4 * summary["mc_stderr"] + 0.01


def test_importance_sampling_is_seeded(sbn):
    model, x, _, _ = sbn
    a = importance_log_likelihood(model, x, PriorProposal(model), n_particles=50, generator=3)
    b = importance_log_likelihood(model, x, PriorProposal(model), n_particles=50, generator=3)
    assert torch.equal(a.log_px, b.log_px)


def test_bad_proposals_are_named(sbn):
    model, x, _, _ = sbn

    class WrongShape:
        def sample_with_log_prob(self, x, n_particles, generator):
            latents, log_q = PriorProposal(model).sample_with_log_prob(x, n_particles, generator)
            return latents, log_q[0]

    with pytest.raises(TypeError, match="proposal"):
        importance_log_likelihood(model, x, object())
    with pytest.raises(ValueError, match="log_q has shape"):
        importance_log_likelihood(model, x, WrongShape(), n_particles=4)
    with pytest.raises(ValueError, match="n_particles"):
        importance_log_likelihood(model, x, PriorProposal(model), n_particles=0)


def test_fitted_proposal_for_a_ddc_model_beats_the_prior():
    """The sleep-fitted proposal used for DDC-HM models gives a tighter IS estimate."""
    import torch

    from ddchm.data import make_truth
    from ddchm.evaluate.likelihood import (
        PriorProposal,
        exact_log_likelihood,
        fit_proposal,
        importance_log_likelihood,
    )

    model = make_truth("sbn-easy").model  # 30 observed units pin the posterior: prior is poor
    x = model.sample(50, generator=torch.Generator().manual_seed(3))[0]
    exact = exact_log_likelihood(model, x).mean
    proposal = fit_proposal(model, n_steps=1000, sleep_samples=500, hidden=(64,))
    fitted = importance_log_likelihood(model, x, proposal, n_particles=50)
    prior = importance_log_likelihood(model, x, PriorProposal(model), n_particles=50)
    assert abs(fitted.mean - exact) < abs(prior.mean - exact)
    assert abs(fitted.mean - exact) < 0.2
