"""Every baseline's gradient estimators against the expectation they claim, computed exactly.

On a 2-2-3 sigmoid belief net the joint latent space has 16 configurations, so for K particles
every K-tuple (16^K of them) can be enumerated: E_q[L_K] = sum_tuples prod_k q(z_k | x) log
(1/K) sum_k w_k is then an exact, differentiable function of theta and phi, and autograd gives
the exact expected gradient. Monte Carlo means come from repeating x R times in one batch (rows
draw independently), over M batches; a coordinate passes when |mean - exact| < 5 standard
errors (for the ~70 coordinates checked at once, a false alarm has probability ~1e-3 for a
Gaussian mean), and the whole vector must also be close in norm, which shows the test has power.
"""

import itertools
import math

import pytest
import torch

from ddchm.algorithms.iwae import IWAE
from ddchm.algorithms.recognition import GaussianRecognition, RecognitionModel
from ddchm.algorithms.rws import ReweightedWakeSleep
from ddchm.algorithms.vae import VAE
from ddchm.algorithms.vimco import VIMCO, vimco_learning_signals
from ddchm.algorithms.wake_sleep import WakeSleep
from ddchm.models import Bernoulli, ExactInference, Gaussian, HierarchicalModel, Laplace
from ddchm.models.exact import enumerate_binary

Z_LIMIT = 5.0


def tiny_sbn(seed=0):
    """Bernoulli(2) -> Bernoulli(2) -> Bernoulli(3), float64, weights large enough to matter."""
    torch.manual_seed(seed)
    model = HierarchicalModel([Bernoulli(2), Bernoulli(2, 2), Bernoulli(3, 2)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.5 * torch.randn_like(p))
    return model


def spread_recognition(recognition, scale=1.5, seed=1):
    """Move q's parameters away from their small initial values, so q is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in recognition.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def joint_configs(model):
    """All joint latent configurations: [z1 (C, D1), z2 (C, D2)], C = prod_l 2^{D_l}."""
    per_layer = [enumerate_binary(model.layers[l].dim, torch.float64) for l in (1, 2)]
    pairs = list(itertools.product(range(len(per_layer[0])), range(len(per_layer[1]))))
    return [per_layer[l][[p[l] for p in pairs]] for l in (0, 1)]


def config_tables(model, recognition, x):
    """log p(x_n, c) and log q(c | x_n) for every configuration c, each (C, N)."""
    z1, z2 = joint_configs(model)
    c, n = z1.shape[0], x.shape[0]
    latents = [z1.unsqueeze(1).expand(c, n, -1), z2.unsqueeze(1).expand(c, n, -1)]
    flat_x = x.expand(c, n, -1).reshape(c * n, -1)
    log_p = model.log_joint(flat_x, [z.reshape(c * n, -1) for z in latents], validate=False)
    return log_p.reshape(c, n), recognition.log_prob(x, latents)


def tuple_tables(model, recognition, x, k):
    """Per K-tuple t of configurations: log prob of the tuple under q (T, N), log p and log q
    of each member (T, K, N)."""
    log_p, log_q = config_tables(model, recognition, x)
    c = log_p.shape[0]
    index = torch.cartesian_prod(*[torch.arange(c)] * k).reshape(-1, k)  # (T, K)
    member_p, member_q = log_p[index], log_q[index]
    return member_q.sum(1), member_p, member_q


def exact_bound(model, recognition, x, k):
    """mean_n E_q[log (1/K) sum_k w_k], differentiable in theta and phi."""
    log_tuple, member_p, member_q = tuple_tables(model, recognition, x, k)
    bound = torch.logsumexp(member_p - member_q, dim=1) - math.log(k)  # (T, N)
    return (log_tuple.exp() * bound).sum(0).mean()


def grad_dict(objective, module):
    names, params = zip(*module.named_parameters())
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return {
        n: (g if g is not None else torch.zeros_like(p)) for n, p, g in zip(names, params, grads)
    }


def monte_carlo(estimate, batch, m):
    """Mean and standard error per coordinate of ``estimate(batch)`` over m calls (flattened)."""
    draws = []
    for _ in range(m):
        g = estimate(batch)
        draws.append(torch.cat([v.detach().reshape(-1) for v in g.values()]))
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / math.sqrt(m)


def flat(grads):
    return torch.cat([v.detach().reshape(-1) for v in grads.values()])


def assert_matches(mean, stderr, target, rel=0.05):
    z = (mean - target).abs() / stderr.clamp_min(1e-12)
    assert float(z.max()) < Z_LIMIT, f"max z-score {float(z.max()):.2f}"
    assert float((mean - target).norm() / target.norm()) < rel


@pytest.fixture(scope="module")
def sbn_and_data():
    model = tiny_sbn()
    x = enumerate_binary(3, torch.float64)[[1, 3, 5, 6]]  # every unit both on and off
    return model, x


def make(cls, model, **kwargs):
    algorithm = cls(model, hidden=(4,), generator=0, **kwargs)
    spread_recognition(algorithm.recognition)
    return algorithm


@pytest.mark.parametrize("cls,k", [(ReweightedWakeSleep, 2), (VIMCO, 2), (VIMCO, 3)])
def test_multi_particle_theta_gradient_is_unbiased_for_k_sample_bound(sbn_and_data, cls, k):
    """RWS wake-theta and VIMCO's theta part: E[sum_k w~_k grad log p(x, z_k)] = grad E[L_K]."""
    model, x = sbn_and_data
    algorithm = make(cls, model, num_particles=k)
    target = flat(grad_dict(exact_bound(model, algorithm.recognition, x, k), model))
    mean, stderr = monte_carlo(algorithm.theta_gradient, x.repeat(200, 1), 30)
    assert_matches(mean, stderr, target)


@pytest.mark.parametrize("k", [2, 3])
def test_vimco_phi_gradient_is_unbiased_for_k_sample_bound(sbn_and_data, k):
    model, x = sbn_and_data
    algorithm = make(VIMCO, model, num_particles=k)
    target = flat(grad_dict(exact_bound(model, algorithm.recognition, x, k), algorithm.recognition))
    mean, stderr = monte_carlo(algorithm.phi_gradient, x.repeat(200, 1), 30)
    assert_matches(mean, stderr, target)


def test_wake_sleep_wake_theta_expectation_is_q_average_of_joint_gradient(sbn_and_data):
    """E[wake update] = mean_n sum_z q(z | x_n) grad_theta log p(x_n, z)."""
    model, x = sbn_and_data
    algorithm = make(WakeSleep, model)
    log_p, log_q = config_tables(model, algorithm.recognition, x)
    target = flat(grad_dict((log_q.detach().exp() * log_p).sum(0).mean(), model))
    mean, stderr = monte_carlo(algorithm.theta_gradient, x.repeat(200, 1), 30)
    assert_matches(mean, stderr, target)


@pytest.mark.parametrize("cls", [WakeSleep, ReweightedWakeSleep])
def test_sleep_phi_expectation_is_model_average_of_log_q_gradient(sbn_and_data, cls):
    """E[sleep-phi ascent] = sum_{x, z} p(x, z) grad_phi log q(z | x), x enumerated too."""
    model, _ = sbn_and_data
    kwargs = {"insomnia": 0.0} if cls is ReweightedWakeSleep else {}
    algorithm = make(cls, model, **kwargs)
    every_x = enumerate_binary(3, torch.float64)
    log_p, log_q = config_tables(model, algorithm.recognition, every_x)
    target = flat(grad_dict((log_p.detach().exp() * log_q).sum(), algorithm.recognition))
    batch = every_x[:1].repeat(800, 1)  # the sleep phase uses only the batch's size
    mean, stderr = monte_carlo(algorithm.phi_gradient, batch, 30)
    assert_matches(mean, stderr, target)


def test_rws_wake_phi_expectation_matches_enumeration(sbn_and_data):
    """E[sum_k w~_k grad_phi log q(z_k | x)] by enumerating every pair of particles."""
    model, x = sbn_and_data
    algorithm = make(ReweightedWakeSleep, model, num_particles=2, insomnia=1.0)
    log_tuple, member_p, member_q = tuple_tables(model, algorithm.recognition, x, 2)
    normalised = torch.softmax((member_p - member_q).detach(), dim=1)
    objective = (log_tuple.detach().exp() * (normalised * member_q).sum(1)).sum(0).mean()
    target = flat(grad_dict(objective, algorithm.recognition))
    mean, stderr = monte_carlo(algorithm.phi_gradient, x.repeat(200, 1), 30)
    assert_matches(mean, stderr, target)


def test_self_normalised_bias_shrinks_with_k_and_is_detectable(sbn_and_data):
    """grad E[L_K] -> grad log p(x) as K grows (exact, K = 1..4); at K = 2 RWS's Monte Carlo
    mean is measurably away from grad log p(x), i.e. the unbiasedness tests above have power."""
    model, x = sbn_and_data
    algorithm = make(ReweightedWakeSleep, model, num_particles=2)
    exact = flat(ExactInference(model).expected_gradient(x))
    errors = []
    for k in (1, 2, 3, 4):
        expected = flat(grad_dict(exact_bound(model, algorithm.recognition, x, k), model))
        errors.append(float((expected - exact).norm() / exact.norm()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.2  # q is far from the posterior, so the test is not vacuous
    mean, stderr = monte_carlo(algorithm.theta_gradient, x.repeat(200, 1), 30)
    assert float(((mean - exact).abs() / stderr).max()) > 3 * Z_LIMIT


def test_vimco_learning_signals_match_paper_definition():
    torch.manual_seed(0)
    log_w = torch.randn(4, 3, dtype=torch.float64)
    signals = vimco_learning_signals(log_w)
    k = 4
    for j in range(k):
        others = torch.cat([log_w[:j], log_w[j + 1 :]])
        geometric = others.mean(0)
        baseline = torch.log((others.exp().sum(0) + geometric.exp()) / k)
        expected = torch.log(log_w.exp().mean(0)) - baseline
        assert torch.allclose(signals[j], expected, atol=1e-12)


# --- continuous chains: pathwise (VAE / IWAE) estimators -------------------------------------
def gaussian_pair(seed=0):
    """Gaussian(2) -> Gaussian(3), one latent layer: the ELBO has a closed form."""
    torch.manual_seed(seed)
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn_like(p))
    return model


def closed_form_elbo(model, recognition, x):
    """mean_n E_q[log p(x_n, z) - log q(z | x_n)] for a Gaussian q and a linear-Gaussian pair."""
    obs, prior = model.layers[0], model.layers[1]
    layer = recognition.layers[0]
    assert isinstance(layer, GaussianRecognition)
    m, log_s = layer.loc_and_log_std(layer(x))
    s2 = (2 * log_s).exp()
    residual = x - m @ obs.weight.T - obs.bias
    spread = s2 @ obs.weight.square().T  # diag(W diag(s^2) W^T)
    var_x = (2 * obs.log_std).exp()
    log_lik = (
        -0.5 * math.log(2 * math.pi) - obs.log_std - (residual.square() + spread) / (2 * var_x)
    )
    var_z = (2 * prior.log_std).exp()
    log_prior = (
        -0.5 * math.log(2 * math.pi)
        - prior.log_std
        - ((m - prior.bias).square() + s2) / (2 * var_z)
    )
    entropy = 0.5 * math.log(2 * math.pi * math.e) + log_s
    return (log_lik.sum(-1) + log_prior.sum(-1) + entropy.sum(-1)).mean()


def test_vae_gradients_are_unbiased_for_closed_form_elbo():
    model = gaussian_pair()
    x = model.sample(3, generator=2)[0]
    algorithm = VAE(model, hidden=(4,), generator=0)
    spread_recognition(algorithm.recognition, scale=0.5)
    for estimate, module in (
        (algorithm.theta_gradient, model),
        (algorithm.phi_gradient, algorithm.recognition),
    ):
        target = flat(grad_dict(closed_form_elbo(model, algorithm.recognition, x), module))
        mean, stderr = monte_carlo(estimate, x.repeat(300, 1), 30)
        assert_matches(mean, stderr, target)


def test_iwae_and_vimco_phi_gradients_agree_on_gaussian_laplace_chain():
    """Both are unbiased for grad_phi E[L_K]: pathwise (IWAE, through the Laplace inverse CDF)
    and score-function (VIMCO) means must agree within their joint standard error."""
    torch.manual_seed(0)
    model = HierarchicalModel([Gaussian(2), Laplace(2, 2), Gaussian(3, 2)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn_like(p))
    x = model.sample(3, generator=1)[0]
    iwae = IWAE(model, hidden=(4,), num_particles=3, generator=0)
    vimco = VIMCO(model, hidden=(4,), num_particles=3, generator=0)
    vimco.recognition.load_state_dict(iwae.recognition.state_dict())
    batch = x.repeat(300, 1)
    mean_a, se_a = monte_carlo(iwae.phi_gradient, batch, 30)
    mean_b, se_b = monte_carlo(vimco.phi_gradient, batch, 30)
    z = (mean_a - mean_b).abs() / (se_a.square() + se_b.square()).sqrt()
    assert float(z.max()) < Z_LIMIT
    assert float((mean_a - mean_b).norm() / mean_a.norm()) < 0.1
    # the theta estimators are the same function of the draws
    assert torch.allclose(
        flat(IWAE(model, hidden=(4,), num_particles=3, generator=5).theta_gradient(x)),
        flat(VIMCO(model, hidden=(4,), num_particles=3, generator=5).theta_gradient(x)),
        atol=1e-12,
    )


def test_recognition_model_shared_helpers_are_consistent():
    """exact_bound with K=1 is the enumerated ELBO; a sanity check of the test's own tables."""
    model = tiny_sbn()
    recognition = RecognitionModel.for_model(model, hidden=(4,), generator=0)
    x = model.sample(3, generator=0)[0]
    log_p, log_q = config_tables(model, recognition, x)
    assert torch.allclose(log_q.exp().sum(0), torch.ones(3, dtype=torch.float64))
    elbo = (log_q.exp() * (log_p - log_q)).sum(0).mean()
    assert torch.allclose(exact_bound(model, recognition, x, 1), elbo)
    log_px = ExactInference(model).log_marginal(x).mean()
    bound_3 = exact_bound(model, recognition, x, 3)
    assert float(elbo.detach()) <= float(bound_3.detach()) <= float(log_px.detach())
