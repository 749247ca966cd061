"""The importance-weighted bound against a closed-form log p(x), and errors at the boundary."""

import math

import pytest
import torch

from ddchm.algorithms.iwae import IWAE
from ddchm.algorithms.rws import ReweightedWakeSleep
from ddchm.algorithms.vae import VAE
from ddchm.algorithms.vimco import VIMCO
from ddchm.algorithms.wake_sleep import WakeSleep
from ddchm.data import make_truth
from ddchm.models import Bernoulli, Gaussian, HierarchicalModel, gaussian_chain_log_marginal

ALGORITHMS = [WakeSleep, ReweightedWakeSleep, VIMCO, VAE, IWAE]


def linear_gaussian_chain(seed=0, noise=0.5):
    """Gaussian(2) -> Gaussian(3) -> Gaussian(4), unit-scale weights, float64."""
    torch.manual_seed(seed)
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2), Gaussian(4, 3)]).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.copy_(torch.randn_like(layer.bias))
            if layer.weight is not None:
                layer.weight.copy_(torch.randn_like(layer.weight))
        model.layers[0].log_std.fill_(math.log(noise))
    return model


def test_closed_form_marginal_matches_importance_sampling_from_the_prior():
    """A check of the test's own reference: log mean_s p(x | z_1^s), z ~ p, many draws."""
    model = linear_gaussian_chain(noise=1.0)
    x = model.sample(2, generator=0)[0]
    with torch.no_grad():
        _, z1, _ = model.sample(200_000, generator=1)
        log_lik = torch.stack([model.layers[0].log_prob(xn.expand(len(z1), -1), z1) for xn in x])
        estimate = torch.logsumexp(log_lik, dim=1) - math.log(len(z1))
        exact = gaussian_chain_log_marginal(model, x)
    assert torch.allclose(estimate, exact, atol=0.02)


def test_iwae_bound_is_below_log_marginal_and_rises_with_k():
    """E[L_1] < E[L_5] < E[L_50] <= log p(x) (Burda et al. 2016, theorem 1), per data point,
    each expectation a mean of 200 independent bound draws; margins are 4 standard errors."""
    model = linear_gaussian_chain()
    x = model.sample(3, generator=0)[0]
    algorithm = IWAE(model, hidden=(8,), num_particles=5, generator=0)
    algorithm.fit_recognition(200, data=x, batch_size=3)  # q not trivial, not exact
    log_px = gaussian_chain_log_marginal(model, x).detach()
    means, errors = [], []
    for k in (1, 5, 50):
        draws = torch.stack([algorithm.bound(x, k, generator=s) for s in range(200)])  # (S, N)
        means.append(draws.mean(0))
        errors.append(draws.std(0) / math.sqrt(200))
    for (m_a, e_a), (m_b, e_b) in zip(zip(means, errors), zip(means[1:], errors[1:])):
        assert torch.all(m_b - m_a > 4 * (e_a.square() + e_b.square()).sqrt())
    assert torch.all(means[-1] - 4 * errors[-1] <= log_px)
    assert torch.all(log_px - means[0] > 4 * errors[0])  # the ELBO's gap is real
    assert torch.all(log_px - means[-1] < 0.5 * (log_px - means[0]))  # and K closes it


@pytest.mark.parametrize("cls,name", [(VAE, "VAE"), (IWAE, "IWAE")])
def test_pathwise_algorithms_refuse_discrete_layers(cls, name):
    with pytest.raises(
        ValueError,
        match=f"{name} needs reparameterisable latent layers, but z1 is Bernoulli; "
        "use 'vimco' or 'rws' for discrete layers",
    ):
        cls(make_truth("sbn-hard").model)
    with pytest.raises(ValueError, match="but z2 is Bernoulli"):
        cls(make_truth("mixed").model)  # Bernoulli top over Gaussian layers


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_bad_hyper_parameters_raise_named_errors(cls):
    model = linear_gaussian_chain()
    with pytest.raises(ValueError, match="num_particles"):
        cls(model, num_particles=0)
    with pytest.raises(TypeError, match="num_particles"):
        cls(model, num_particles=2.5)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="^lr"):
            cls(model, lr=bad)
        with pytest.raises(ValueError, match="recognition_lr"):
            cls(model, recognition_lr=bad)
    with pytest.raises(ValueError, match="optimizer"):
        cls(model, optimizer="newton")
    with pytest.raises(TypeError, match="hidden"):
        cls(model, hidden=200)
    with pytest.raises(TypeError, match="model"):
        cls(torch.nn.Linear(2, 2))
    algorithm = cls(model, hidden=(4,), num_particles=2, generator=0)
    with pytest.raises(ValueError, match="n_steps"):
        algorithm.fit_recognition(0)
    with pytest.raises(ValueError, match="missing entries"):
        algorithm.load_state_dict({"recognition": {}})


@pytest.mark.parametrize("cls", [ReweightedWakeSleep, VIMCO])
def test_particle_methods_need_two_particles(cls):
    with pytest.raises(ValueError, match="num_particles: expected an integer >= 2"):
        cls(make_truth("sbn-hard").model, num_particles=1)


def test_insomnia_and_sleep_samples_are_checked():
    model = make_truth("sbn-hard").model
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"insomnia: expected a number in \[0, 1\]"):
            ReweightedWakeSleep(model, insomnia=bad)
    with pytest.raises(TypeError, match="insomnia"):
        ReweightedWakeSleep(model, insomnia="wake")
    for cls in (WakeSleep, ReweightedWakeSleep):
        with pytest.raises(ValueError, match="sleep_samples"):
            cls(model, sleep_samples=0)


@pytest.mark.parametrize("cls", [WakeSleep, ReweightedWakeSleep, VIMCO])
def test_bad_batches_raise_named_errors(cls):
    algorithm = cls(make_truth("sbn-hard").model, hidden=(4,), num_particles=2, generator=0)
    good = torch.zeros(5, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="batch: a Bernoulli layer needs binary values"):
        algorithm.step(good + 0.5)
    with pytest.raises(ValueError, match="batch: expected 8 columns"):
        algorithm.step(torch.zeros(5, 7))
    with pytest.raises(ValueError, match="batch: contains 5 NaN"):
        algorithm.theta_gradient(torch.where(torch.arange(8) == 3, float("nan"), good))
    with pytest.raises(ValueError, match="data: a Bernoulli layer"):
        algorithm.fit_recognition(1, data=good + 0.5)


def test_bernoulli_observations_under_gaussian_latents_are_allowed():
    """Only latent layers must be reparameterisable; the observation may be discrete."""
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2), Bernoulli(4, 3)]).double()
    x = model.sample(6, generator=0)[0]
    for cls in (VAE, IWAE):
        metrics = cls(model, hidden=(4,), generator=0).step(x)
        assert math.isfinite(metrics["bound"])
