"""Recognition chains q(z_1..z_L | x): shapes, densities, reparameterisation, means."""

import math

import pytest
import torch

from ddchm.algorithms.recognition import (
    BernoulliRecognition,
    GaussianRecognition,
    LaplaceRecognition,
    RecognitionModel,
)
from ddchm.models import Bernoulli, Gaussian, HierarchicalModel, Laplace
from ddchm.models.exact import enumerate_binary


def mixed_chain():
    """Bernoulli(2) -> Gaussian(3) -> Laplace(2) -> Bernoulli(4): every q family once."""
    torch.manual_seed(0)
    return HierarchicalModel(
        [Bernoulli(2), Gaussian(3, 2), Laplace(2, 3), Bernoulli(4, 2)]
    ).double()


def test_for_model_mirrors_families_dtype_and_is_seeded():
    model = mixed_chain()
    q = RecognitionModel.for_model(model, hidden=(8, 5), generator=3)
    assert [type(layer) for layer in q.layers] == [
        LaplaceRecognition,
        GaussianRecognition,
        BernoulliRecognition,
    ]
    assert [(layer.input_dim, layer.dim) for layer in q.layers] == [(4, 2), (2, 3), (3, 2)]
    assert all(p.dtype == torch.float64 for p in q.parameters())
    same = RecognitionModel.for_model(model, hidden=(8, 5), generator=3)
    for a, b in zip(q.parameters(), same.parameters()):
        assert torch.equal(a, b)
    linear = RecognitionModel.for_model(model, hidden=(), generator=0)
    assert all(len(layer.net) == 1 for layer in linear.layers)
    assert q.layers[0].net[1].__class__.__name__ == "Tanh"


def test_sample_shapes_and_log_prob_agree():
    model = mixed_chain()
    q = RecognitionModel.for_model(model, hidden=(8,), generator=0)
    x = model.sample(5, generator=1)[0]
    latents, log_q = q.sample(x, n_particles=7, generator=2)
    assert [tuple(z.shape) for z in latents] == [(7, 5, 2), (7, 5, 3), (7, 5, 2)]
    assert log_q.shape == (7, 5)
    assert torch.allclose(log_q, q.log_prob(x, latents), atol=1e-12)
    assert set(latents[2].unique().tolist()) <= {0.0, 1.0}
    single = q.log_prob(x, [z[0] for z in latents])  # (N, D_l) latents give (N,)
    assert torch.allclose(single, log_q[0], atol=1e-12)
    again, log_again = q.sample(x, n_particles=7, generator=2)
    assert torch.equal(log_again, log_q)
    with torch.no_grad():
        assert q.sample_with_log_prob(x, 3, generator=0)[1].shape == (3, 5)
    assert not q.sample_with_log_prob(x, 3, generator=0)[1].requires_grad


@pytest.mark.parametrize(
    "cls,reference",
    [
        (
            GaussianRecognition,
            lambda raw, d: torch.distributions.Normal(raw[..., :d], raw[..., d:].exp()),
        ),
        (
            LaplaceRecognition,
            lambda raw, d: torch.distributions.Laplace(
                raw[..., :d], torch.nn.functional.softplus(raw[..., d:]) + 1e-4
            ),
        ),
    ],
)
def test_continuous_layers_match_torch_distributions_and_reparameterise(cls, reference):
    torch.manual_seed(0)
    layer = cls(3, 2, hidden=(6,)).double()
    parent = torch.randn(4, 2, dtype=torch.float64)
    raw = layer(parent)
    value = torch.randn(4, 3, dtype=torch.float64)
    expected = reference(raw, 3).log_prob(value).sum(-1)
    assert torch.allclose(layer.log_prob(value, parent), expected, atol=1e-12)
    # moments of many reparameterised draws: mean m, variance s^2 (Gaussian) or 2 b^2 (Laplace)
    g = torch.Generator().manual_seed(1)
    draws = layer.sample_raw(raw.expand(20_000, -1, -1), g, reparameterize=True)
    dist = reference(raw.detach(), 3)
    se = (dist.variance / 20_000).sqrt()
    assert float(((draws.detach().mean(0) - dist.mean).abs() / se).max()) < 5
    assert torch.allclose(draws.detach().var(0), dist.variance, rtol=0.1)
    draws.sum().backward()  # pathwise: draws depend on phi
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_bernoulli_layer_is_normalised_and_cannot_be_reparameterised():
    torch.manual_seed(0)
    layer = BernoulliRecognition(3, 2, hidden=(4,)).double()
    parent = torch.randn(2, 2, dtype=torch.float64)
    configs = enumerate_binary(3, torch.float64).unsqueeze(1).expand(8, 2, 3)
    total = layer.log_prob(configs, parent).exp().sum(0)
    assert torch.allclose(total, torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="Bernoulli recognition layer has no reparameterisation"):
        layer.sample_raw(layer(parent), torch.Generator(), reparameterize=True)
    model = mixed_chain()
    q = RecognitionModel.for_model(model, hidden=(4,), generator=0)
    with pytest.raises(ValueError, match="z3 is a bernoulli layer"):
        q.sample(model.sample(2, generator=0)[0], 2, reparameterize=True)


def test_means_first_layer_exact_higher_layers_match_sampling():
    model = mixed_chain()
    q = RecognitionModel.for_model(model, hidden=(8,), generator=0)
    x = model.sample(3, generator=1)[0]
    means = q.means(x, n_samples=2000)
    assert torch.allclose(means[0], q.layers[0].mean_raw(q.layers[0](x)).detach())
    assert torch.equal(means[1], q.means(x, n_samples=2000)[1])  # fixed default seed
    with torch.no_grad():
        latents, _ = q.sample(x, n_particles=20_000, generator=5)
    for l in (1, 2):
        sampled = latents[l].mean(0)
        se = latents[l].std(0) / math.sqrt(20_000)
        # the Rao-Blackwellised estimate from 2000 draws has variance at most 10x that of the
        # 20,000-draw plain mean, so the difference has standard error at most se * sqrt(11)
        assert float(((means[l] - sampled).abs() / (se * math.sqrt(1 + 10))).max()) < 5
    propagated = q.means(x, n_samples=0)
    assert [m.shape for m in propagated] == [m.shape for m in means]


def test_bad_inputs_raise_named_errors():
    model = mixed_chain()
    with pytest.raises(TypeError, match="hidden"):
        RecognitionModel.for_model(model, hidden=200)
    with pytest.raises(ValueError, match="hidden"):
        RecognitionModel.for_model(model, hidden=(0,))
    q = RecognitionModel.for_model(model, hidden=(), generator=0)
    with pytest.raises(ValueError, match="x: expected 4 columns"):
        q.sample(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_particles"):
        q.sample(torch.zeros(3, 4, dtype=torch.float64), n_particles=0)
    with pytest.raises(ValueError, match="latents: expected 3"):
        q.log_prob(torch.zeros(3, 4, dtype=torch.float64), [torch.zeros(3, 2)])
