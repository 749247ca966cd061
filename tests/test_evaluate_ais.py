"""AIS against closed forms (linear-Gaussian chain, binary over Gaussian) and enumeration."""

import math

import numpy as np
import pytest
import torch

from ddchm.evaluate.ais import ais_log_likelihood, annealing_schedule
from ddchm.models import (
    Bernoulli,
    ExactInference,
    Gaussian,
    HierarchicalModel,
    enumerate_binary,
    gaussian_chain_log_marginal,
)


def randomise(model, sd=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(sd * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return model


def linear_gaussian_chain():
    """Gaussian(2) -> Gaussian(3) -> Gaussian(4), fixed parameters, noise sds 0.5 and 0.4."""
    model = randomise(HierarchicalModel([Gaussian(2), Gaussian(3, 2), Gaussian(4, 3)]).double())
    with torch.no_grad():
        model.layers[2].log_std.zero_()
        model.layers[1].log_std.fill_(math.log(0.5))
        model.layers[0].log_std.fill_(math.log(0.4))
    return model


def check_against(result, exact, tolerance):
    """Every point within ``tolerance`` nats and 4 standard errors; the mean within 3."""
    errors = (result.log_px - exact).detach()
    assert float(errors.abs().max()) < tolerance, errors
    # the delta-method s.e. from K chains is itself noisy: allow 0.02 nats on top of it
    z = errors / (result.log_px_stderr.square() + 0.02**2).sqrt()
    assert float(z.abs().max()) < 4, z
    assert abs(float(errors.mean())) < 3 * result.mc_stderr + 0.02
    return errors


def test_linear_gaussian_chain_matches_closed_form():
    model = linear_gaussian_chain()
    x = model.sample(8, generator=1)[0].detach()
    exact = gaussian_chain_log_marginal(model, x).detach()
    result = ais_log_likelihood(model, x, n_chains=32, n_steps=600, generator=0)
    check_against(result, exact, tolerance=0.5)
    assert 0.35 < result.info["accept_hmc"] < 0.7
    assert result.method == "ais" and result.n_particles == 32


def test_random_walk_moves_also_match_closed_form():
    model = linear_gaussian_chain()
    x = model.sample(6, generator=2)[0].detach()
    exact = gaussian_chain_log_marginal(model, x).detach()
    result = ais_log_likelihood(
        model, x, n_chains=16, n_steps=600, n_sweeps=2, continuous_move="rwm", generator=0
    )
    check_against(result, exact, tolerance=0.5)
    assert 0.15 < result.info["accept_z1"] < 0.5 and 0.15 < result.info["accept_z2"] < 0.5


def test_binary_over_gaussian_matches_closed_form_mixture():
    model = randomise(
        HierarchicalModel([Bernoulli(2), Gaussian(3, 2), Gaussian(4, 3)]).double(), seed=2
    )
    with torch.no_grad():
        model.layers[1].log_std.fill_(math.log(0.6))
        model.layers[0].log_std.fill_(math.log(0.4))
    x = model.sample(6, generator=1)[0].detach()
    top, middle, obs = model.layers[2], model.layers[1], model.layers[0]
    configs = enumerate_binary(2, dtype=torch.float64)
    cov = obs.weight @ torch.diag(middle.log_std.exp().square()) @ obs.weight.T + torch.diag(
        obs.log_std.exp().square()
    )
    components = torch.stack(
        [
            torch.distributions.MultivariateNormal(
                obs.weight @ (middle.weight @ c + middle.bias) + obs.bias, cov
            ).log_prob(x)
            for c in configs
        ],
        dim=1,
    )
    exact = torch.logsumexp(components + top.log_prob(configs), dim=1).detach()
    result = ais_log_likelihood(model, x, n_chains=32, n_steps=400, generator=0)
    check_against(result, exact, tolerance=0.5)


@pytest.mark.parametrize(
    "move, steps, sweeps, tolerance", [("gibbs", 500, 1, 0.1), ("flip", 300, 3, 0.25)]
)
def test_sigmoid_belief_net_matches_exact_inference(move, steps, sweeps, tolerance):
    model = randomise(
        HierarchicalModel([Bernoulli(3), Bernoulli(6, 3), Bernoulli(12, 6)]).double(), sd=2.0
    )
    x = model.sample(10, generator=1)[0]
    exact = ExactInference(model).log_marginal(x).detach()
    result = ais_log_likelihood(
        model, x, n_chains=16, n_steps=steps, n_sweeps=sweeps, binary_move=move, batch_size=4
    )
    check_against(result, exact, tolerance)


def test_schedule_and_arguments():
    for kind in ("linear", "sigmoid"):
        betas = annealing_schedule(50, kind)
        assert betas.shape == (51,) and betas[0] == 0 and betas[-1] == 1
        assert np.all(np.diff(betas) > 0)
    model = linear_gaussian_chain()
    x = model.sample(2, generator=1)[0].detach()
    custom = ais_log_likelihood(model, x, n_chains=2, schedule=[0.0, 0.5, 1.0])
    assert custom.info["n_steps"] == 2
    with pytest.raises(ValueError, match="schedule"):
        ais_log_likelihood(model, x, schedule=[0.0, 0.7, 0.5, 1.0])
    with pytest.raises(ValueError, match="continuous_move"):
        ais_log_likelihood(model, x, continuous_move="langevin")
    with pytest.raises(ValueError, match="n_chains"):
        ais_log_likelihood(model, x, n_chains=0)
