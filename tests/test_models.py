"""Foundation: layers, the chain and exact inference, checked against ground truth."""

import math

import numpy as np
import pytest
import torch

from ddchm.data import make_truth
from ddchm.models import (
    Bernoulli,
    ExactInference,
    Gaussian,
    HierarchicalModel,
    Laplace,
    brute_force_log_marginal,
    enumerate_binary,
    gaussian_chain_log_marginal,
    make_layer,
)

OBSERVATION_FAMILIES = ["bernoulli", "gaussian", "laplace"]


def small_chain(observation: str, seed: int = 0) -> HierarchicalModel:
    """A 2-3-4 chain with Bernoulli latents, random non-trivial parameters, float64."""
    torch.manual_seed(seed)
    model = HierarchicalModel(
        [Bernoulli(2), Bernoulli(3, 2, init_scale=1.5), make_layer(observation, 4, 3)]
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("observation", OBSERVATION_FAMILIES)
def test_exact_log_marginal_equals_brute_force(observation):
    model = small_chain(observation)
    x = model.sample(25, generator=1)[0]
    exact = ExactInference(model).log_marginal(x)
    assert torch.allclose(exact, brute_force_log_marginal(model, x), atol=1e-6, rtol=0)
    assert torch.all(exact < 0) or observation != "bernoulli"


def test_exact_log_marginal_is_normalised_for_binary_data():
    model = small_chain("bernoulli")
    every_x = enumerate_binary(4, dtype=torch.float64)
    total = torch.logsumexp(ExactInference(model).log_marginal(every_x), 0)
    assert abs(float(total.detach())) < 1e-10


def test_exact_log_marginal_with_tiny_chunks_matches():
    model = small_chain("bernoulli")
    x = model.sample(17, generator=2)[0]
    whole = ExactInference(model).log_marginal(x)
    chunked = ExactInference(model, max_table=8).log_marginal(x)  # one data point per chunk
    assert torch.allclose(whole, chunked, atol=1e-12)


@pytest.mark.parametrize("observation", OBSERVATION_FAMILIES)
def test_expected_gradient_equals_autograd_of_log_marginal(observation):
    model = small_chain(observation, seed=3)
    x = model.sample(30, generator=4)[0]
    exact = ExactInference(model)
    expected = exact.expected_gradient(x)
    model.zero_grad()
    exact.log_marginal(x).mean().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(expected[name], p.grad, atol=1e-5, rtol=0), name
        assert p.grad.abs().max() > 1e-4, f"{name}: gradient unexpectedly zero"


def test_expected_gradient_equals_brute_force_posterior_average():
    """Fisher identity checked the long way: sum over configurations of p(z|x) grad log p(x,z)."""
    model = small_chain("gaussian", seed=5)
    x = model.sample(6, generator=6)[0]
    expected = ExactInference(model).expected_gradient(x)
    params = dict(model.named_parameters())
    log_px = brute_force_log_marginal(model, x).detach()
    total = {name: torch.zeros_like(p) for name, p in params.items()}
    for z2 in enumerate_binary(2, dtype=torch.float64):
        for z1 in enumerate_binary(3, dtype=torch.float64):
            latents = [z1.expand(6, 3), z2.expand(6, 2)]
            for n in range(6):
                log_joint = model.log_joint(x[n : n + 1], [z[n : n + 1] for z in latents])
                weight = float((log_joint.detach() - log_px[n]).exp()) / 6
                grads = torch.autograd.grad(log_joint.sum(), list(params.values()))
                for name, g in zip(params, grads):
                    total[name] += weight * g
    for name in params:
        assert torch.allclose(expected[name], total[name], atol=1e-8), name


def test_posterior_means_joint_expectation_and_samples_agree():
    model = small_chain("bernoulli", seed=7)
    x = model.sample(5, generator=8)[0]
    exact = ExactInference(model)
    means = exact.posterior_means(x)
    joint = exact.joint_expectation(x, lambda z1, z2: torch.cat([z1, z2], 1))
    assert torch.allclose(torch.cat(means, 1), joint, atol=1e-12)
    # second moments through `expectation` agree with the joint enumeration too
    pair = exact.joint_expectation(x, lambda z1, z2: z1[:, :1] * z2[:, :1])
    assert pair.shape == (5, 1)
    n = 20_000
    samples = exact.sample_posterior(x, n_samples=n, generator=9)
    for l, z in enumerate(samples):
        freq = z.reshape(5, n, -1).mean(1)
        p = means[l]
        bound = 5 * torch.sqrt(p * (1 - p) / n) + 1e-9
        assert torch.all((freq - p).abs() <= bound), f"z{l + 1}"


LAYERS = {
    "bernoulli": lambda parent: Bernoulli(3, parent, init_scale=1.0),
    "gaussian": lambda parent: Gaussian(3, parent, init_scale=1.0, init_std=0.7),
    "laplace": lambda parent: Laplace(3, parent, init_scale=1.0),
}


@pytest.mark.parametrize("family", sorted(LAYERS))
@pytest.mark.parametrize("parent_dim", [None, 2])
def test_sample_moments_match_mean_stats(family, parent_dim):
    """Sample means of S(z) fall within 5 standard errors of mu = grad Phi (per coordinate)."""
    torch.manual_seed(11)
    layer = LAYERS[family](parent_dim).double()
    n = 40_000
    parent = None
    if parent_dim is not None:
        parent = torch.tensor([[0.5, -1.0]], dtype=torch.float64).expand(n, 2)
    z = layer.sample(parent, n=n, generator=12)
    stats = layer.sufficient_stats(z)
    mu = layer.mean_stats(parent)[0]
    standard_error = stats.std(0) / math.sqrt(n)
    assert torch.all((stats.mean(0) - mu).abs() < 5 * standard_error), (stats.mean(0), mu)


@pytest.mark.parametrize("family", sorted(LAYERS))
def test_mean_stats_are_gradient_of_log_partition(family):
    layer = LAYERS[family](2).double()
    parent = torch.randn(4, 2, dtype=torch.float64)
    eta = layer.natural_params(parent).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(layer.log_partition(eta).sum(), eta)
    assert torch.allclose(grad, layer.mean_stats_from_natural(eta), atol=1e-10)


@pytest.mark.parametrize("family", sorted(LAYERS))
def test_log_prob_matches_torch_distributions(family):
    layer = LAYERS[family](2).double()
    parent = torch.randn(6, 2, dtype=torch.float64)
    z = layer.sample(parent, generator=0)
    eta = layer.natural_params(parent)
    if family == "bernoulli":
        ref = torch.distributions.Bernoulli(logits=eta).log_prob(z).sum(-1)
    elif family == "gaussian":
        mean, std = layer.mean_and_std(parent)
        ref = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
    else:
        ref = torch.distributions.Laplace(0.0, layer.scale(parent)).log_prob(z).sum(-1)
    assert torch.allclose(layer.log_prob(z, parent), ref, atol=1e-10)


def test_sampling_is_reproducible_from_seed():
    model = make_truth("sbn-hard").model
    a, b = model.sample(10, generator=3), model.sample(10, generator=3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], model.sample(10, generator=4)[0])


def test_state_dict_and_config_round_trip():
    model = make_truth("mixed").model
    clone = HierarchicalModel.from_config(model.config()).double()
    clone.load_state_dict(model.state_dict())
    x, *latents = model.sample(8, generator=0)
    assert torch.equal(model.log_joint(x, latents), clone.log_joint(x, latents))
    assert set(model.parameter_groups()) == {"x", "z1", "z2"}


@pytest.mark.parametrize("name", ["sbn-easy", "sbn-hard", "bars", "sparse-coding", "mixed"])
def test_synthetic_truths_are_fixed_and_sample_valid_data(name):
    truth = make_truth(name)
    again = make_truth(name)
    for p, q in zip(truth.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)
    splits = truth.splits(50, 10, 20, seed=5)
    assert {k: v.shape[0] for k, v in splits.items()} == {"train": 50, "valid": 10, "test": 20}
    truth.model.check_data(splits["train"])  # valid for the observation family
    if truth.enumerable:
        assert torch.isfinite(ExactInference(truth.model).log_marginal(splits["test"])).all()


def test_spec_truth_shapes():
    assert (
        make_truth("sbn-easy").model.describe() == "bernoulli(4) -> bernoulli(10) -> bernoulli(30)"
    )
    hard = make_truth("sbn-hard").model
    assert hard.describe() == "bernoulli(4) -> bernoulli(10) -> bernoulli(8)"
    # weights ~ N(0, 3^2): the sample sd of 80 + 40 weights is near 3
    weights = torch.cat([hard.layers[0].weight.flatten(), hard.layers[1].weight.flatten()])
    assert 2.3 < float(weights.detach().std()) < 3.7


# --- bad input --------------------------------------------------------------------------------


def test_bad_data_raises_named_errors():
    model = make_truth("sbn-hard").model
    exact = ExactInference(model)
    with pytest.raises(ValueError, match="x: expected 8 columns"):
        exact.log_marginal(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="x: expected a 2-D array"):
        exact.log_marginal(torch.zeros(8))
    bad = torch.zeros(3, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x: contains 1 NaN or infinite value\(s\); first at"):
        exact.log_marginal(bad)
    with pytest.raises(ValueError, match="Bernoulli layer needs binary values"):
        exact.log_marginal(torch.full((2, 8), 0.5))
    with pytest.raises(TypeError, match="x: expected numeric data"):
        model.check_data(np.array([["a"] * 8]))
    x, z1, z2 = model.sample(4, generator=0)
    with pytest.raises(ValueError, match="latents: expected 2 arrays"):
        model.log_joint(x, [z1])
    with pytest.raises(ValueError, match=r"latents\[0\] \(z1\): expected 10 columns"):
        model.log_joint(x, [z1[:, :3], z2])
    with pytest.raises(ValueError, match=r"latents\[1\] \(z2\): has 3 rows, x has 4"):
        model.log_joint(x, [z1, z2[:3]])


def test_bad_models_raise_named_errors():
    with pytest.raises(ValueError, match="family: unknown layer family 'poisson'"):
        make_layer("poisson", 3)
    with pytest.raises(ValueError, match="parent_dim=5 sits below a layer of 4 units"):
        HierarchicalModel([Bernoulli(4), Bernoulli(3, 5)])
    with pytest.raises(ValueError, match="first \\(top\\) layer must be a prior"):
        HierarchicalModel([Bernoulli(4, 2), Bernoulli(3, 4)])
    with pytest.raises(ValueError, match="z1 is a gaussian layer"):
        ExactInference(make_truth("mixed").model)
    with pytest.raises(ValueError, match="more than max_configs"):
        ExactInference(HierarchicalModel([Bernoulli(30), Bernoulli(2, 30)]))
    with pytest.raises(ValueError, match="n: a prior layer needs"):
        Bernoulli(3).sample()
    with pytest.raises(ValueError, match="missing key 'dim'"):
        HierarchicalModel.from_config([{"family": "bernoulli"}, {"family": "bernoulli", "dim": 2}])


def test_gaussian_chain_log_marginal_matches_quadrature():
    """Gaussian(1) -> Gaussian(2): log p(x) = log int p(z) p(x | z) dz on a fine grid."""
    torch.manual_seed(0)
    model = HierarchicalModel([Gaussian(1), Gaussian(2, 1)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn_like(p))
    x = model.sample(5, generator=1)[0]
    z = torch.linspace(-12, 12, 20_001, dtype=torch.float64).unsqueeze(1)
    log_joint = torch.stack([model.log_joint(x[i].expand(len(z), 2), [z]) for i in range(5)])
    log_px = torch.logsumexp(log_joint, dim=1) + math.log(float(z[1] - z[0]))
    assert torch.allclose(gaussian_chain_log_marginal(model, x), log_px, atol=1e-8)
    with pytest.raises(ValueError, match="needs every layer Gaussian, but layer 1 is Bernoulli"):
        gaussian_chain_log_marginal(small_chain("gaussian"), x[:, :1].expand(5, 4))


def test_log_prior_is_the_joint_without_the_observation_layer():
    model = make_truth("mixed").model
    x, *latents = model.sample(50, generator=2)
    expected = model.log_joint(x, latents) - model.observation.log_prob(x, latents[0])
    assert torch.allclose(model.log_prior(latents), expected, atol=1e-10, rtol=0)
