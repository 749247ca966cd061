"""Short training runs raise the exact log-likelihood; steps, gradients and resumes agree."""

import copy
import math

import pytest
import torch

from ddchm.algorithms.iwae import IWAE
from ddchm.algorithms.rws import ReweightedWakeSleep
from ddchm.algorithms.update_estimate import cosine_similarity, expected_theta_update
from ddchm.algorithms.vae import VAE
from ddchm.algorithms.vimco import VIMCO
from ddchm.algorithms.wake_sleep import WakeSleep
from ddchm.data import make_truth
from ddchm.models import ExactInference, Gaussian, HierarchicalModel, gaussian_chain_log_marginal

DISCRETE = [
    (WakeSleep, {}),
    (ReweightedWakeSleep, {"num_particles": 5}),
    (VIMCO, {"num_particles": 5}),
]
CONTINUOUS = [(VAE, {}), (IWAE, {"num_particles": 5})]


def linear_gaussian_truth():
    """Gaussian(2) -> Gaussian(3) -> Gaussian(4), unit-scale weights, observation noise 0.3."""
    torch.manual_seed(0)
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2), Gaussian(4, 3)]).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.copy_(torch.randn_like(layer.bias))
            if layer.weight is not None:
                layer.weight.copy_(torch.randn_like(layer.weight))
        model.layers[0].log_std.fill_(math.log(0.3))
    return model


def train(algorithm, data, steps=200, batch_size=100):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        metrics = algorithm.step(data[torch.randint(len(data), (batch_size,), generator=g)])
    return metrics


@pytest.mark.parametrize("cls,kwargs", DISCRETE)
def test_short_run_on_sbn_hard_approaches_the_truth(cls, kwargs):
    """200 steps from a small random start: exact test log-likelihood rises by > 1.5 nats (from
    -5.53, near the uniform model, towards the truth's -3.18) and ends within 0.6 nats of the
    truth (measured: 0.30-0.37 nats)."""
    truth = make_truth("sbn-hard").model
    data = truth.sample(3000, generator=1)[0]
    train_x, test_x = data[:2000], data[2000:]
    torch.manual_seed(0)
    model = HierarchicalModel.from_config(truth.config()).double()
    exact = ExactInference(model)
    before = float(exact.log_marginal(test_x).mean().detach())
    algorithm = cls(model, lr=0.02, recognition_lr=3e-3, hidden=(16,), generator=0, **kwargs)
    metrics = train(algorithm, train_x)
    after = float(exact.log_marginal(test_x).mean().detach())
    best = float(ExactInference(truth).log_marginal(test_x).mean().detach())
    assert after - before > 1.5
    assert best - after < 0.6
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("cls,kwargs", CONTINUOUS)
def test_short_run_on_linear_gaussian_chain_approaches_the_truth(cls, kwargs):
    """300 steps from -29.7 nats (default init) to within 1.5 nats of the truth's -5.9, log p(x)
    in closed form."""
    truth = linear_gaussian_truth()
    data = truth.sample(3000, generator=1)[0]
    train_x, test_x = data[:2000], data[2000:]
    torch.manual_seed(1)
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2), Gaussian(4, 3)]).double()
    before = float(gaussian_chain_log_marginal(model, test_x).mean().detach())
    algorithm = cls(model, lr=0.02, recognition_lr=3e-3, hidden=(16,), generator=0, **kwargs)
    train(algorithm, train_x, steps=300)
    after = float(gaussian_chain_log_marginal(model, test_x).mean().detach())
    best = float(gaussian_chain_log_marginal(truth, test_x).mean().detach())
    assert after - before > 15
    assert best - after < 1.5


def setup(cls, kwargs, optimizer="adam", generator=0):
    if cls in (VAE, IWAE):
        model = linear_gaussian_truth()
    else:
        model = make_truth("sbn-hard").model
    x = model.sample(40, generator=7)[0]
    algorithm = cls(model, hidden=(8,), optimizer=optimizer, lr=0.01, generator=generator, **kwargs)
    return model, x, algorithm


@pytest.mark.parametrize("cls,kwargs", DISCRETE + CONTINUOUS)
def test_state_dict_round_trip_resumes_bit_for_bit(cls, kwargs):
    model_a, x, a = setup(cls, kwargs)
    for _ in range(3):
        a.step(x)
    model_state, algorithm_state = copy.deepcopy(model_a.state_dict()), a.state_dict()
    model_b, _, b = setup(cls, kwargs, generator=123)  # different q, different draws
    model_b.load_state_dict(model_state)
    b.load_state_dict(algorithm_state)
    for alg in (a, b):
        for _ in range(3):
            alg.step(x)
        alg.fit_recognition(2, data=x, batch_size=10)
        alg.step(x)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(a.recognition.parameters(), b.recognition.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls,kwargs", DISCRETE + CONTINUOUS)
def test_theta_gradient_is_the_direction_step_applies(cls, kwargs):
    """With plain SGD (lr 0.01) from the same state, step moves theta by lr * theta_gradient."""
    model, x, algorithm = setup(cls, kwargs, optimizer="sgd")
    state = algorithm.state_dict()
    ascent = algorithm.theta_gradient(x)
    algorithm.load_state_dict(state)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = algorithm.step(x)
    for name, p in model.named_parameters():
        assert torch.allclose(p - before[name], 0.01 * ascent[name], atol=1e-12)
    norm = math.sqrt(sum(float(g.square().sum()) for g in ascent.values()))
    assert metrics["grad_norm"] == pytest.approx(norm)


@pytest.mark.parametrize("cls,kwargs", DISCRETE + CONTINUOUS)
def test_fit_recognition_freezes_theta_and_improves_q(cls, kwargs):
    model, x, algorithm = setup(cls, kwargs)
    theta = copy.deepcopy(model.state_dict())
    data = None if cls is WakeSleep else x
    first = algorithm.fit_recognition(10, data=data, batch_size=40)
    last = algorithm.fit_recognition(150, data=data, batch_size=40)
    for name, value in model.state_dict().items():
        assert torch.equal(value, theta[name])
    if cls is WakeSleep:
        assert last["sleep_phi_loss"] < first["sleep_phi_loss"]
    else:
        assert last["bound"] > first["bound"]
    means = algorithm.posterior_means(x)
    assert [m.shape for m in means] == [(40, model.layers[l].dim) for l in (1, 2)]


def test_expected_theta_update_averages_theta_gradient_draws():
    model, x, algorithm = setup(VIMCO, {"num_particles": 3})
    state = algorithm.state_dict()
    mean = expected_theta_update(algorithm, x, 4)
    algorithm.load_state_dict(state)
    draws = [algorithm.theta_gradient(x) for _ in range(4)]
    for name, value in mean.items():
        assert torch.allclose(value, sum(d[name] for d in draws) / 4, atol=1e-14)
    assert cosine_similarity(mean, mean) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_draws"):
        expected_theta_update(algorithm, x, 0)
