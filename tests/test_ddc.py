"""The DDC Helmholtz machine: section-7 algebra, gradient accuracy, learning."""

import copy

import pytest
import torch

from ddchm.data import make_truth
from ddchm.ddc import (
    DDCHelmholtzMachine,
    LayerEncoding,
    NetworkRecognition,
    explicit_wake_gradient,
    wake_gradient,
)
from ddchm.evaluate.gradients import compare_gradients, oracle_encodings, perturbed_model
from ddchm.models import Bernoulli, ExactInference, Gaussian, HierarchicalModel, make_layer


def machine_pieces(ddc, x, n_sleep=None):
    sleep = ddc.dream(n_sleep)
    solvers = [None, *ddc.map_solvers(ddc.encode(sleep[1:]))]
    return sleep, solvers


@pytest.mark.parametrize("observation", ["bernoulli", "gaussian", "laplace"])
def test_section7_weighted_form_equals_explicit_regressions(observation):
    """Weights on sleep samples (section 7) equal dense per-sample Jacobian regressions."""
    torch.manual_seed(0)
    model = HierarchicalModel(
        [
            Bernoulli(2),
            Gaussian(3, 2, init_scale=1.0),
            make_layer(observation, 4, 3, init_scale=1.0),
        ]
    ).double()
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[15, 6], sleep_samples=40, generator=1)
    x = model.sample(9, generator=2)[0]
    sleep, solvers = machine_pieces(ddc, x)
    r = [None] + ddc.expected_encodings(x)
    fast = wake_gradient(model, sleep, solvers, r, x)
    slow = explicit_wake_gradient(model, sleep, solvers, r, x)
    for name in fast:
        scale = slow[name].abs().max().clamp_min(1.0)
        assert torch.allclose(fast[name], slow[name], atol=1e-10 * scale, rtol=0), name


def tiny_sbn(seed=0):
    torch.manual_seed(seed)
    model = HierarchicalModel(
        [Bernoulli(2), Bernoulli(3, 2, init_scale=2.0), Bernoulli(5, 3, init_scale=2.0)]
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def test_oracle_wake_gradient_matches_exact_gradient_on_tiny_model():
    """With r = exact E[T|x] the DDC gradient is within a few percent of the exact gradient.

    A sign or index error in any term moves the cosine far below 0.995."""
    model = tiny_sbn()
    x = model.sample(200, generator=3)[0]
    exact = ExactInference(model)
    target = exact.expected_gradient(x)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[40, 20], sleep_samples=20_000, ridge=1e-6, generator=4
    )
    sleep, solvers = machine_pieces(ddc, x)
    r = oracle_encodings(exact, ddc.encodings, x)
    result = compare_gradients(wake_gradient(model, sleep, solvers, [None, *r], x), target)
    assert result["cosine"] > 0.995, result
    assert result["rel_error"] < 0.1, result
    # the machine's own entry point with supplied encodings computes the same update
    through_machine = ddc.theta_gradient(x, sleep, encodings=r)
    assert compare_gradients(through_machine, target) == result


def test_plug_in_partition_terms_are_exact_for_a_point_mass_posterior():
    """With r_l = T_l(z_l*) (a posterior that is one state), the plug-in log-partition terms
    are the exact ones, whatever the maps' residual; the maps alone are not."""
    from ddchm.ddc.wake import plug_in_points, wake_terms

    model = tiny_sbn(1)
    x, z1, z2 = model.sample(50, generator=5)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[6, 3], sleep_samples=500, max_products=0, generator=6
    )
    sleep, solvers = machine_pieces(ddc, x)
    r = [None, ddc.encodings[0](z1), ddc.encodings[1](z2)]
    obs, latent = model.layers[0], model.layers[1]
    exact_obs = model.gradients(obs.log_prob(x, z1).mean())
    exact_partition = model.gradients(-latent.log_partition(latent.natural_params(z2)).mean())

    def error(plug_in):
        terms = wake_terms(model, sleep, solvers, r, x, plug_in=plug_in)
        got_obs = model.gradients(terms["observation"])
        got_partition = model.gradients(terms["latent_partition"])
        return max(
            float((got_obs[k] - exact_obs[k]).abs().max() / exact_obs[k].abs().max())
            for k in ("layers.0.weight", "layers.0.bias")
        ), max(
            float((got_partition[k] - exact_partition[k]).abs().max())
            for k in ("layers.1.weight", "layers.1.bias")
        )

    points = plug_in_points(ddc.encodings, r)
    assert torch.equal(points[1][0], z1) and torch.equal(points[2][1], r[2])
    obs_error, partition_error = error(points)
    assert obs_error < 1e-4 and partition_error < 1e-4
    plain_obs, plain_partition = error(None)
    assert plain_obs > 1e-2 and plain_partition > 3e-4  # the residual the plug-in removes
    # 'sample': a binary state per point, drawn with r's means
    encoding = ddc.encodings[0]
    means = torch.full((20_000, encoding.dim), 0.3, dtype=torch.float64)
    r_half = [None, torch.cat([means, torch.zeros(20_000, encoding.size - encoding.dim)], 1)]
    drawn, features = plug_in_points([encoding], r_half, torch.Generator().manual_seed(0))[1]
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert abs(drawn.mean().item() - 0.3) < 0.005 and torch.equal(features, encoding(drawn))


def test_oracle_gradient_is_per_parameter_accurate():
    """Every parameter tensor, not just the whole vector, is right: its error is a small
    fraction of the gradient's norm and shrinks with the number of dreams (Monte Carlo)."""
    model = tiny_sbn(seed=1)
    x = model.sample(200, generator=5)[0]
    exact = ExactInference(model)
    target = exact.expected_gradient(x)
    total = torch.cat([g.reshape(-1) for g in target.values()]).norm()
    errors = {}
    for n_sleep in (5_000, 80_000):
        ddc = DDCHelmholtzMachine.from_options(
            model, n_features=[40, 20], sleep_samples=n_sleep, ridge=1e-6, generator=6
        )
        sleep, solvers = machine_pieces(ddc, x)
        r = [None] + oracle_encodings(exact, ddc.encodings, x)
        estimate = wake_gradient(model, sleep, solvers, r, x)
        errors[n_sleep] = {n: float((estimate[n] - target[n]).norm() / total) for n in target}
    for name, error in errors[80_000].items():
        assert error < 0.08, (name, error)  # a sign error in any tensor gives > 0.3 here
    assert sum(errors[80_000].values()) < sum(errors[5_000].values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "readout",
    # at a fixed theta the ridge readout may forget slowly (0.9, the default, follows a moving
    # theta and keeps ~5,000 dreams here: cosine 0.965)
    [{"recognition_readout": "adam"}, {"recognition_readout": "ridge", "readout_forget": 0.99}],
)
def test_learned_recogniser_gives_accurate_gradient_on_tiny_model(readout):
    model = tiny_sbn(seed=2)
    x = model.sample(200, generator=7)[0]
    target = ExactInference(model).expected_gradient(x)
    ddc = DDCHelmholtzMachine.from_options(
        model,
        n_features=[40, 20],
        sleep_samples=500,
        ridge=1e-3,
        hidden=(64,),
        whiten=True,
        recognition_lr=3e-3,
        recognition_lr_final=1e-4,
        recognition_decay_steps=1500,
        generator=8,
        **readout,
    )
    ddc.fit_recognition(1500)
    sleep, solvers = machine_pieces(ddc, x, n_sleep=20_000)
    r = [None] + ddc.expected_encodings(x)
    result = compare_gradients(wake_gradient(model, sleep, solvers, r, x), target)
    assert result["cosine"] > 0.97, result


def test_short_training_run_raises_exact_log_likelihood():
    """300 DDC-HM steps on sbn-hard data lift the exact test log-likelihood by > 1.5 nats."""
    truth = make_truth("sbn-hard")
    data = truth.splits(2000, 0, 500, seed=1)
    torch.manual_seed(0)
    model = HierarchicalModel.from_config(
        [
            {"family": "bernoulli", "dim": 4},
            {"family": "bernoulli", "dim": 10},
            {"family": "bernoulli", "dim": 8},
        ]
    )
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[100, 30], sleep_samples=500, generator=0
    )
    exact = ExactInference(model)
    test = data["test"].float()
    with torch.no_grad():
        before = float(exact.log_marginal(test).mean())
    generator = torch.Generator().manual_seed(0)
    train = data["train"].float()
    for _ in range(300):
        ddc.step(train[torch.randint(len(train), (100,), generator=generator)])
    with torch.no_grad():
        after = float(exact.log_marginal(test).mean())
    assert after - before > 1.5, (before, after)


def test_posterior_means_close_to_exact_after_recognition_training():
    model = tiny_sbn(seed=3)
    x = model.sample(100, generator=9)[0]
    ddc = DDCHelmholtzMachine.from_options(
        model,
        n_features=[40, 20],
        sleep_samples=500,
        hidden=(64,),
        recognition_lr=3e-3,
        generator=10,
    )
    ddc.fit_recognition(800)
    exact_means = ExactInference(model).posterior_means(x)
    estimated = ddc.posterior_means(x)
    for e, m in zip(estimated, exact_means):
        assert float((e - m).abs().mean()) < 0.06


def test_encodings_are_neither_saturated_nor_constant():
    truth = make_truth("sbn-easy").model
    z = truth.sample(5000, generator=0)[1]
    encoding = LayerEncoding(10, 100, generator=1).double().calibrate(z)
    features = encoding.random_features(z)
    sd = features.std(0)
    assert float(sd.min()) > 0.02  # none constant
    assert float(((features > 0.99) | (features < 0.01)).float().mean()) < 0.3  # few saturated
    assert torch.equal(encoding(z)[:, -1], torch.ones(5000, dtype=torch.float64))
    # binary layer: z and the 45 products z_i z_j (i < j) come first
    assert encoding.n_exact == 10 + 45 and encoding.size == 10 + 45 + 100 + 1
    assert torch.equal(encoding(z)[:, :10], z)


def test_whitened_encodings_have_identity_covariance():
    z = make_truth("sbn-hard").model.sample(20_000, generator=0)[1]
    encoding = LayerEncoding(10, 60, generator=1).double().calibrate(z).whiten(z)
    features = encoding(z)[:, :-1]
    cov = torch.cov(features.T)
    assert torch.allclose(cov, torch.eye(cov.shape[0], dtype=cov.dtype), atol=1e-6)


def test_ridge_recogniser_runs_and_learns():
    model = tiny_sbn(seed=4)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=500, recognition="ridge", generator=0
    )
    first = ddc.recognition.fit_step(*_sleep_pair(ddc))
    for _ in range(20):
        last = ddc.recognition.fit_step(*_sleep_pair(ddc))
    assert last < first
    metrics = ddc.step(model.sample(50, generator=1)[0])
    assert set(metrics) >= {"recognition_loss", "grad_norm"}


def _sleep_pair(ddc):
    sleep = ddc.dream()
    return sleep[0], ddc.encode(sleep[1:])


def test_mixed_continuous_chain_steps_and_reports_diagnostics():
    truth = make_truth("sparse-coding").model.float()
    model = HierarchicalModel.from_config(truth.config())
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=50, sleep_samples=300, diagnostic_every=2, lr=1e-3, generator=0
    )
    x = truth.sample(64, generator=1)[0]
    ddc.step(x)
    metrics = ddc.step(x)
    assert metrics["wake_phase"] == "importance"
    numbers = [v for v in metrics.values() if not isinstance(v, str)]
    assert all(torch.isfinite(torch.tensor(v)) for v in numbers)
    assert {"recognition_r2_z1", "map_r2_S_z1", "map_r2_mu_zx"} <= set(metrics)


def test_bad_arguments_and_data_raise_clear_errors():
    model = tiny_sbn()
    with pytest.raises(ValueError, match="recognition: expected 'network' or 'ridge'"):
        DDCHelmholtzMachine.from_options(model, recognition="mlp")
    with pytest.raises(ValueError, match="ridge: expected lambda / N_sleep > 0"):
        DDCHelmholtzMachine.from_options(model, ridge=0)
    with pytest.raises(ValueError, match="n_features: expected 2 sizes"):
        DDCHelmholtzMachine.from_options(model, n_features=[10, 10, 10])
    ddc = DDCHelmholtzMachine.from_options(model, n_features=10, sleep_samples=50)
    with pytest.raises(ValueError, match="batch: a Bernoulli layer needs binary values"):
        ddc.step(torch.full((4, 5), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch: expected 5 columns"):
        ddc.step(torch.zeros(4, 6, dtype=torch.float64))


def test_oracle_accuracy_on_perturbed_spec_truth_easy():
    """Spec section 9 `easy` at a perturbed model: oracle cosine >= 0.99 with 20k dreams."""
    truth = make_truth("sbn-easy")
    model = perturbed_model(truth.model, 0.5, seed=1)
    x = truth.splits(200, 0, 0, seed=7)["train"]
    exact = ExactInference(model)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[200, 50], sleep_samples=20_000, ridge=1e-6, generator=2
    )
    sleep, solvers = machine_pieces(ddc, x)
    r = [None] + oracle_encodings(exact, ddc.encodings, x)
    result = compare_gradients(
        wake_gradient(model, sleep, solvers, r, x), exact.expected_gradient(x)
    )
    assert result["cosine"] > 0.99, result


def test_state_dict_round_trip_with_whitened_encodings():
    model = tiny_sbn(seed=5)
    x = model.sample(40, generator=1)[0]
    a = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=100, whiten=True, generator=3
    )
    a.step(x)
    # same config (as on resume); a has stepped, so its recogniser and generator differ from b's
    b = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=100, whiten=True, generator=3
    )
    assert not torch.equal(a.generator.get_state(), b.generator.get_state())
    b.load_state_dict(a.state_dict())
    z = model.sample(30, generator=2)[1:]
    for ea, eb in zip(a.encode(z), b.encode(z)):
        assert torch.equal(ea, eb)
    for ra, rb in zip(a.expected_encodings(x), b.expected_encodings(x)):
        assert torch.equal(ra, rb)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_ridge_readout_heads_are_the_closed_form_ridge_solution():
    """With no forgetting, the heads after a step solve ridge regression of the targets on
    [h(x), 1] for that batch exactly; the statistics stay float64 under a float32 network."""
    torch.manual_seed(0)
    recogniser = NetworkRecognition(
        6, [5, 3], (16,), readout="ridge", readout_forget=0.0, readout_ridge=1e-3, generator=1
    ).to(dtype=torch.float32)
    statistics = recogniser.normal_equations
    assert statistics.gram.dtype == torch.float64 and statistics.cross0.dtype == torch.float64
    x = (torch.rand(400, 6) < 0.5).float()
    targets = [torch.randn(400, 5), torch.randn(400, 3)]
    recogniser.fit_step(x, targets)
    # a step solves the heads on the trunk's features, then moves the trunk: keep the features
    trunk_before = copy.deepcopy(recogniser.trunk)
    recogniser.fit_step(x, targets)
    with torch.no_grad():
        h = trunk_before(x).double()
    h1 = torch.cat([h, torch.ones(400, 1, dtype=torch.float64)], 1)
    a = h1.T @ h1 + 1e-3 * 400 * torch.eye(17, dtype=torch.float64)
    for head, t in zip(recogniser.heads, targets):
        solution = torch.linalg.solve(a, h1.T @ t.double())
        assert torch.allclose(head.weight.double(), solution[:-1].T, atol=5e-4)  # float32 h^T h
        assert torch.allclose(head.bias.double(), solution[-1], atol=5e-4)
    assert all(not p.requires_grad for p in recogniser.heads.parameters())


def test_ridge_readout_learns_posterior_means_and_round_trips():
    model = tiny_sbn(seed=3)
    x = model.sample(100, generator=9)[0]
    settings = dict(
        n_features=[40, 20],
        sleep_samples=500,
        hidden=(64,),
        recognition_lr=3e-3,
        recognition_readout="ridge",
        generator=10,
    )
    ddc = DDCHelmholtzMachine.from_options(model, **settings)
    ddc.fit_recognition(800)
    exact_means = ExactInference(model).posterior_means(x)
    for e, m in zip(ddc.posterior_means(x), exact_means):
        assert float((e - m).abs().mean()) < 0.06
    ddc.step(x)
    other = DDCHelmholtzMachine.from_options(model, **settings)
    other.load_state_dict(ddc.state_dict())
    for a, b in zip(ddc.expected_encodings(x), other.expected_encodings(x)):
        assert torch.equal(a, b)
    assert torch.equal(
        ddc.recognition.normal_equations.gram, other.recognition.normal_equations.gram
    )


def test_bad_readout_arguments_raise_clear_errors():
    model = tiny_sbn()
    with pytest.raises(ValueError, match="recognition_readout: expected 'auto', 'adam' or 'ridge'"):
        DDCHelmholtzMachine.from_options(model, recognition_readout="sgd")
    with pytest.raises(ValueError, match="readout_forget: expected a number in"):
        DDCHelmholtzMachine.from_options(model, recognition_readout="ridge", readout_forget=1.0)
    with pytest.raises(ValueError, match=r"ema: expected a number in \(0, 1\) or None"):
        DDCHelmholtzMachine.from_options(model, ema=1.0)


def test_default_readout_is_ridge_for_every_family():
    from ddchm.ddc.recognition import MomentHead

    binary = DDCHelmholtzMachine.from_options(make_truth("sbn-hard").model, n_features=[20, 10])
    assert binary.recognition.readout == "ridge"
    averaged = DDCHelmholtzMachine.from_options(
        make_truth("sbn-hard").model, n_features=[20, 10], ema=0.99
    )
    assert averaged.recognition.readout == "ridge"  # the heads read the averaged trunk
    real_valued_x = DDCHelmholtzMachine.from_options(
        make_truth("sbn-gauss").model, n_features=[20, 10]
    )
    assert real_valued_x.recognition.readout == "ridge"  # its heads see the data rows too
    assert real_valued_x.recognition.readout_wake_rows
    continuous = DDCHelmholtzMachine.from_options(
        make_truth("laplace-chain").model, n_features=[20, 10]
    )
    assert continuous.recognition.readout == "ridge"
    assert not any(isinstance(head, MomentHead) for head in continuous.recognition.heads)
    trained = DDCHelmholtzMachine.from_options(
        make_truth("laplace-chain").model, n_features=[20, 10], recognition_readout="adam"
    )
    assert any(isinstance(head, MomentHead) for head in trained.recognition.heads)


def test_ridge_readout_with_wake_rows_solves_the_weighted_ridge_problem():
    """Dreams weigh 1 each and the data rows wake_weight * n_sleep / n_wake each (the loss's
    weights): the heads are that weighted ridge solution. Unweighted rows would miss it."""
    recogniser = NetworkRecognition(
        6,
        [5, 3],
        (16,),
        readout="ridge",
        readout_forget=0.0,
        readout_ridge=1e-3,
        readout_wake_rows=True,
        generator=1,
    ).double()
    generator = torch.Generator().manual_seed(0)
    x, wake_x = torch.rand(300, 6, generator=generator), torch.rand(30, 6, generator=generator)
    targets = [torch.randn(300, k, generator=generator).double() for k in (5, 3)]
    wake_targets = [3.0 + torch.randn(30, k, generator=generator).double() for k in (5, 3)]
    wake_weight = torch.rand(30, generator=generator).double()
    trunk_before = copy.deepcopy(recogniser.trunk)
    recogniser.fit_step(x.double(), targets, wake_x.double(), wake_targets, wake_weight)
    with torch.no_grad():
        h = trunk_before(torch.cat([x, wake_x]).double())
    h1 = torch.cat([h, torch.ones(330, 1, dtype=torch.float64)], 1)
    w = torch.cat([torch.ones(300, dtype=torch.float64), wake_weight * 300 / 30])
    a = (h1 * w[:, None]).T @ h1 + 1e-3 * float(w.sum()) * torch.eye(17, dtype=torch.float64)
    for head, t, wt in zip(recogniser.heads, targets, wake_targets):
        solution = torch.linalg.solve(a, (h1 * w[:, None]).T @ torch.cat([t, wt]))
        assert torch.allclose(head.weight, solution[:-1].T, atol=1e-8)
        assert torch.allclose(head.bias, solution[-1], atol=1e-8)


def test_ridge_readout_with_ema_reads_the_averaged_trunk():
    """With ``ema`` the ridge heads are solved on, and read, the features of an exponential
    moving average of the trunk; the live trunk is what Adam trains."""
    model = make_truth("sbn-hard").model
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[20, 10], ema=0.9, generator=5)
    rec = ddc.recognition
    start = [p.detach().clone() for p in rec.trunk.parameters()]
    for _ in range(5):
        ddc.recogniser_training.fit(ddc.dream(200))
    live = [p.detach() for p in rec.trunk.parameters()]
    averaged = [p.detach() for p in rec.averaged[0].parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(live, start))  # the live trunk trains
    # the average lags the live trunk and has moved from the start
    assert all((a - s).norm() < (b - s).norm() for a, b, s in zip(averaged, live, start))
    assert all((a - s).norm() > 0 for a, s in zip(averaged, start))
    x = ddc.dream(50)[0]
    with torch.no_grad():
        h = rec.averaged[0](rec._scaled(x))
        expected = [head(h) for head in rec.heads]
        other = [head(rec.trunk(rec._scaled(x))) for head in rec.heads]
    got = rec(x)
    assert all(torch.allclose(g, e) for g, e in zip(got, expected))
    assert not all(torch.allclose(g, o) for g, o in zip(got, other))
    # a checkpoint carries the averaged trunk (the heads stay shared after loading)
    restored = DDCHelmholtzMachine.from_options(model, n_features=[20, 10], ema=0.9, generator=6)
    restored.load_state_dict(ddc.state_dict())
    assert restored.recognition.averaged[1] is restored.recognition.heads
    assert all(torch.allclose(a, b) for a, b in zip(restored.recognition(x), got))
