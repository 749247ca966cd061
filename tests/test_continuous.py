"""Continuous latents: exact references (closed form, quadrature) and the DDC gradient on them."""

import copy
import math

import pytest
import torch

from ddchm.data import make_truth
from ddchm.ddc import DDCHelmholtzMachine, LayerEncoding, wake_terms
from ddchm.ddc.recogniser_training import sleep_targets
from ddchm.evaluate.gradients import perturbed_model
from ddchm.models import (
    ExactInference,
    Gaussian,
    HierarchicalModel,
    Laplace,
    LinearGaussianInference,
    exact_reference,
)


def small_chain(middle="gaussian"):
    torch.manual_seed(0)
    layer = Gaussian(1, 1, init_scale=1.0, init_std=0.7) if middle == "gaussian" else None
    if middle == "laplace":
        layer = Laplace(1, 1, init_scale=1.0)
    return HierarchicalModel(
        [Gaussian(1), layer, Gaussian(2, 1, init_scale=1.0, init_std=0.5)]
    ).double()


def test_quadrature_equals_closed_form_on_a_linear_gaussian_chain():
    model = small_chain()
    x = model.sample(40, generator=1)[0]
    closed, grid = LinearGaussianInference(model), ExactInference(model, grid_points=800)
    assert torch.allclose(closed.log_marginal(x), grid.log_marginal(x), atol=1e-5, rtol=0)
    a, b = closed.expected_gradient(x), grid.expected_gradient(x)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
    for m1, m2 in zip(closed.posterior_means(x), grid.posterior_means(x)):
        assert torch.allclose(m1, m2, atol=1e-5, rtol=0)
    # a nonlinear expectation: Monte Carlo over exact posterior samples vs quadrature
    fn = lambda z: torch.sigmoid(2 * z)  # noqa: E731
    assert torch.allclose(closed.expectation(x, fn, 1), grid.expectation(x, fn, 1), atol=1e-3)


def test_closed_form_posterior_matches_brute_force_conditioning():
    """Posterior mean and covariance of z_1 from the joint against a Monte Carlo regression."""
    truth = make_truth("linear-gaussian").model
    exact = LinearGaussianInference(truth)
    x, z1 = truth.sample(200_000, generator=3)[:2]
    # E[z_1 | x] is linear in x: least squares on joint samples recovers it
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    coef = torch.linalg.lstsq(design, z1).solution
    mean, cov = exact.layer_posteriors(x[:500])[1]
    assert torch.allclose(design[:500] @ coef, mean, atol=0.02)
    residual = z1 - design @ coef
    assert torch.allclose(torch.cov(residual.T), cov, atol=0.01)


def test_quadrature_log_marginal_on_a_laplace_chain_matches_importance_sampling():
    model = small_chain("laplace")
    x = model.sample(5, generator=2)[0]
    quadrature = ExactInference(model).log_marginal(x)
    # prior proposal over the 2-D latent space: 400,000 draws per point is plenty here
    n = 400_000
    _, z1, z2 = model.sample(n, generator=5)
    log_lik = torch.stack([model.layers[0].log_prob(xi.expand(n, 2), z1) for xi in x])
    estimate = torch.logsumexp(log_lik, 1) - math.log(n)
    # delta-method standard error of log(mean w): sd(w) / (mean(w) sqrt(n))
    weights = (log_lik - log_lik.max(1, keepdim=True).values).exp()
    standard_error = weights.std(1) / (weights.mean(1) * math.sqrt(n))
    assert bool(((quadrature - estimate).abs() < 4 * standard_error + 1e-3).all())
    # and the grid has converged: a 4x coarser one agrees to 1e-3
    coarse = ExactInference(model, grid_points=200).log_marginal(x)
    assert torch.allclose(quadrature, coarse, atol=1e-3)


def test_exact_reference_refuses_what_it_cannot_do():
    model = HierarchicalModel([Gaussian(3), Laplace(3, 3), Gaussian(4, 3)])
    with pytest.raises(ValueError, match="quadrature handles continuous layers of at most 2"):
        exact_reference(model)


def test_encodings_of_a_continuous_layer_contain_its_statistics():
    z = 3 + 5 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    encoding = LayerEncoding(2, 20, family="laplace", generator=1).double().calibrate(z.double())
    t = encoding(z.double())
    # standardised z (2), |z| / s (2), products u_i u_j with i <= j (3), 20 random, constant
    assert t.shape[1] == 2 + 2 + 3 + 20 + 1
    u = (z.double() - z.double().mean(0)) / z.double().std(0)
    assert torch.allclose(t[:, :2], u, atol=1e-12)
    assert torch.allclose(
        t[:, 4:7], torch.stack([u[:, 0] ** 2, u[:, 0] * u[:, 1], u[:, 1] ** 2], 1)
    )
    # recalibration follows a moved layer: features keep their standardised meaning
    before = encoding.random_features(z.double())
    moved = 10 * z.double() - 7
    assert encoding.drift(moved) > 1
    encoding.calibrate(moved)
    assert encoding.drift(moved) < 1e-6
    assert torch.allclose(encoding.random_features(moved), before, atol=1e-9)


def oracle_gradient(
    truth_name, n_points=100, n_dreams=20_000, negate=None, ridge=1e-6, exact_ridge=None
):
    """DDC gradient with exact E[T|x] at a perturbed truth; optionally one wake term negated."""
    truth = make_truth(truth_name)
    x = truth.splits(n_points, 0, 0, seed=7)["train"]
    model = perturbed_model(truth.model, 0.5, seed=1)
    reference = exact_reference(model)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[100, 50], ridge=ridge, exact_ridge=exact_ridge, generator=2
    )
    dreams = ddc.dream(n_dreams)
    solvers = [None, *ddc.map_solvers(ddc.encode(dreams[1:]))]
    r = [None] + [reference.expectation(x, e, layer=l) for l, e in enumerate(ddc.encodings, 1)]
    terms = wake_terms(model, dreams, solvers, r, x)
    objective = sum(-v if k == negate else v for k, v in terms.items())
    return model.gradients(objective), reference.expected_gradient(x)


def worst_tensor_error(estimate, exact):
    """max over parameter tensors of ||estimate - exact|| / ||exact gradient, all tensors||."""
    total = torch.cat([g.reshape(-1) for g in exact.values()]).norm()
    return max(float((estimate[k] - exact[k]).norm() / total) for k in exact)


@pytest.mark.parametrize("truth", ["linear-gaussian", "laplace-chain"])
def test_oracle_ddc_gradient_is_exact_per_tensor_on_continuous_chains(truth):
    estimate, exact = oracle_gradient(truth)
    assert worst_tensor_error(estimate, exact) < 0.03


def test_exact_features_escape_the_random_features_ridge():
    """On a linear-Gaussian chain every map target is linear in the exact features: a strong
    ridge on the random features alone (exact_ridge small) keeps the oracle gradient exact,
    while the same ridge on every column biases it."""
    assert (
        worst_tensor_error(*oracle_gradient("linear-gaussian", ridge=1e-2, exact_ridge=1e-8)) < 0.03
    )
    assert worst_tensor_error(*oracle_gradient("linear-gaussian", ridge=1e-2)) > 0.1


def own_relative_errors(estimate, exact):
    return {k: float((estimate[k] - exact[k]).norm() / exact[k].norm()) for k in exact}


@pytest.mark.parametrize("term", ["observation", "latent_stats", "latent_partition", "prior"])
def test_negating_any_wake_term_breaks_the_oracle_gradient(term):
    """The oracle check is sensitive to every term of the wake objective: negated, each term
    makes some tensor that is accurate to 5% of its own norm wrong by more than 100%."""
    baseline = own_relative_errors(*oracle_gradient("linear-gaussian"))
    negated = own_relative_errors(*oracle_gradient("linear-gaussian", negate=term))
    broken = [k for k in baseline if baseline[k] < 0.05 and negated[k] > 1.0]
    assert broken, (term, negated)


def test_fit_proposal_draws_sleep_samples_dreams_per_step(monkeypatch):
    from ddchm.evaluate import fit_proposal

    model = make_truth("mixed").model.float()
    sizes = []
    original = HierarchicalModel.sample

    def counting(self, n, generator=None):
        sizes.append(n)
        return original(self, n, generator=generator)

    monkeypatch.setattr(HierarchicalModel, "sample", counting)
    fit_proposal(model, n_steps=3, sleep_samples=321)
    assert sizes and set(sizes) == {321}


def test_diagnostics_do_not_change_the_run():
    model = make_truth("sbn-hard").model.float()
    x = model.sample(100, generator=1)[0]
    runs = []
    for every in (0, 2):
        ddc = DDCHelmholtzMachine.from_options(
            copy.deepcopy(model),
            n_features=[20, 10],
            sleep_samples=100,
            hidden=(16,),
            diagnostic_every=every,
            generator=0,
        )
        for _ in range(4):
            ddc.step(x)
        runs.append(torch.cat([p.detach().reshape(-1) for p in ddc.model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_moment_heads_give_consistent_second_moments_and_survive_rescaling():
    """A continuous layer's head predicts E[u u^T] - E[u] E[u]^T positive semi-definite, and
    re-scaling the recogniser's input or recalibrating the encoding keeps what it computes."""
    from ddchm.ddc.recognition import MomentHead

    model = make_truth("linear-gaussian").model.float()
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=500, recognition_readout="adam", generator=0
    )
    heads = ddc.recognition.heads
    assert all(isinstance(head, MomentHead) for head in heads)
    with torch.no_grad():  # random weights everywhere: consistency must not depend on training
        for p in ddc.recognition.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = model.sample(300, generator=1)[0]
    for r, encoding in zip(ddc.expected_encodings(x), ddc.encodings):
        D = encoding.dim
        mean = r[:, :D]
        second = torch.zeros(r.shape[0], D, D)
        second[:, encoding.pairs[0], encoding.pairs[1]] = r[:, D : D + encoding.pairs.shape[1]]
        second = second + second.transpose(1, 2) - torch.diag_embed(second.diagonal(0, 1, 2))
        covariance = second - mean.unsqueeze(2) * mean.unsqueeze(1)
        assert float(torch.linalg.eigvalsh(covariance.double()).min()) > -1e-4
    before = ddc.expected_encodings(x)
    ddc.recognition.set_input_scaling(3 * x + 5)  # new centring and scale, same function
    for a, b in zip(before, ddc.expected_encodings(x)):
        assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max()), float((a - b).abs().max())
    # recalibration: the posterior covariance in z units is carried across exactly
    sleep = [v.clone() for v in model.sample(2000, generator=2)]
    sleep[1] = 4 * sleep[1] - 2  # as if the layer had moved

    def covariance_in_z(r, encoding):
        D = encoding.dim
        head_out = r[:, D : D + encoding.pairs.shape[1]]
        diag = torch.stack(
            [
                head_out[:, k]
                for k in range(encoding.pairs.shape[1])
                if encoding.pairs[0, k] == encoding.pairs[1, k]
            ],
            1,
        )
        return (diag - r[:, :D] ** 2) * encoding.unit_scale**2

    old = covariance_in_z(ddc.expected_encodings(x)[0], ddc.encodings[0])
    ddc.recalibrate(sleep, force=True)
    new = covariance_in_z(ddc.expected_encodings(x)[0], ddc.encodings[0])
    assert torch.allclose(old, new, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("truth_name", ["sbn-gauss", "laplace-chain"])
def test_wake_targets_converge_to_exact_expected_encodings(truth_name):
    """Importance-weighted dream encodings estimate E[T_l(z_l) | x] for data x."""
    truth = make_truth(truth_name)
    model = truth.model
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=100, generator=0
    )
    x = truth.splits(20, 0, 0, seed=3)["train"]
    dreams = model.sample(200_000, generator=4)
    targets, ess, *_ = ddc.wake_targets(x, dreams)
    reference = exact_reference(model)
    for l, (target, encoding) in enumerate(zip(targets, ddc.encodings), start=1):
        exact = reference.expectation(x, encoding, layer=l)
        spread = exact.std(0).clamp_min(1e-3)
        assert float(((target - exact).abs() / spread).median()) < 0.1, l
    assert float(ess.min()) > 10


def test_sleep_targets_estimate_the_posterior_expectation_at_each_dream():
    """SNIS sleep targets are E[T_l | x^s] at the dreams' own x^s (up to Monte Carlo error) and
    far closer to it than the dreams' raw encodings T_l(z_l^s), whose spread is the posterior's."""
    model = make_truth("sbn-hard").model
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=100, generator=0
    )
    dreams = model.sample(20_000, generator=5)
    features = ddc.encode(dreams[1:])
    targets, ess = sleep_targets(ddc.model, dreams, features, chunk=4096)
    assert ess > 20
    reference = exact_reference(model)
    rows = slice(0, 300)
    for l, (target, raw, encoding) in enumerate(zip(targets, features, ddc.encodings), start=1):
        exact = reference.expectation(dreams[0][rows], encoding, layer=l).to(target.dtype)
        smoothed_error = float(((target[rows] - exact) ** 2).sum(1).mean())
        raw_error = float(((raw[rows] - exact) ** 2).sum(1).mean())
        assert smoothed_error < 0.05 * raw_error, (l, smoothed_error, raw_error)


def test_sleep_targets_option_is_checked_and_samples_mode_regresses_raw_encodings():
    model = make_truth("sbn-hard").model
    with pytest.raises(ValueError, match="sleep_targets"):
        DDCHelmholtzMachine.from_options(model, sleep_targets="smooth")
    raw = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=50, sleep_targets="samples"
    )
    raw.recogniser_training.fit(raw.dream())
    assert (
        raw.recogniser_training.last_sleep_ess != raw.recogniser_training.last_sleep_ess
    )  # NaN: no SNIS table was built


def test_centred_products_round_trip_and_equal_the_residual_outer_product():
    """The ridge readout regresses a continuous layer's products centred at the predicted mean:
    for one sample the centred target is (u_i - m_i)(u_j - m_j), and adding m_i m_j back at the
    output's own mean recovers E[u_i u_j] exactly."""
    from ddchm.ddc.recognition import centre_products, uncentre_products

    generator = torch.Generator().manual_seed(0)
    D, n_extra, rest = 3, 3, 5
    u = torch.randn(50, D, generator=generator, dtype=torch.float64)
    i, j = torch.triu_indices(D, D)
    extra, tail = u.abs(), torch.randn(50, rest, generator=generator, dtype=torch.float64)
    t = torch.cat([u, extra, u[:, i] * u[:, j], tail], 1)
    m = torch.randn(50, D, generator=generator, dtype=torch.float64)
    centred = centre_products(t, m, D, n_extra)
    expected = (u - m)[:, i] * (u - m)[:, j]
    assert torch.allclose(centred[:, 2 * D : 2 * D + 6], expected, atol=1e-12)
    assert torch.equal(centred[:, : 2 * D], t[:, : 2 * D]) and torch.equal(centred[:, -rest:], tail)
    average = t.mean(0, keepdim=True)  # averaged targets: centred at their own mean, the
    back = uncentre_products(centre_products(average, average[:, :D], D, n_extra), D, n_extra)
    assert torch.allclose(back, average, atol=1e-12)  # round trip is exact
    covariance = centre_products(average, average[:, :D], D, n_extra)[0, 2 * D : 2 * D + 6]
    assert torch.allclose(covariance, torch.cov(u.T, correction=0)[i, j], atol=1e-12)


def _moment_encodings(ddc, model, n, generator):
    """Expected encodings with valid moments: each point's mean of T over 50 ancestral draws."""
    latents = model.sample(50 * n, generator=generator)[1:]
    return [f.reshape(n, 50, -1).mean(1) for f in ddc.encode(latents)]


def test_mean_field_proposal_reads_moments_and_its_densities_match_torch():
    from ddchm.ddc.proposal import MeanFieldProposal

    model = make_truth("mixed").model
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[10, 10], sleep_samples=100, generator=0
    )
    r = _moment_encodings(ddc, model, 6, generator=1)
    proposal = MeanFieldProposal(ddc.encodings, r, inflation=1.5)
    # continuous layer 1: mean E[z], sd 1.5 sqrt(Var z), both from the exact block
    encoding, (family, loc, sd) = ddc.encodings[0], proposal.layers[0]
    dim = encoding.dim
    mean_u = r[0][:, :dim]
    diagonal = (encoding.pairs[0] == encoding.pairs[1]).nonzero().squeeze(1)
    var_u = r[0][:, dim + diagonal] - mean_u**2
    assert family == "gaussian"
    assert torch.allclose(loc, encoding.unit_centre + encoding.unit_scale * mean_u)
    assert torch.allclose(sd, 1.5 * encoding.unit_scale * var_u.sqrt())
    assert torch.allclose(proposal.layers[1][1], r[1][:, :4].clamp(0.02, 0.98))
    # densities: own particles against torch.distributions, pairs against own
    m = 7
    own = proposal.sample(m, torch.Generator().manual_seed(2))
    expected = 0.0
    for (family, loc, sd), z in zip(proposal.layers, own):
        loc = loc.repeat_interleave(m, 0)
        if family == "bernoulli":
            dist = torch.distributions.Bernoulli(probs=loc)
        else:
            dist = torch.distributions.Normal(loc, sd.repeat_interleave(m, 0))
        expected = expected + dist.log_prob(z).sum(1)
    assert torch.allclose(proposal.log_prob(own, m).reshape(-1), expected, atol=1e-9)
    pairs = proposal.pair_log_prob(own)  # (6, 6 m): point n's own particles on its diagonal block
    own_block = pairs.reshape(6, 6, m)[torch.arange(6), torch.arange(6)]
    assert torch.allclose(own_block.reshape(-1), expected, atol=1e-9)


def test_wake_particles_reach_data_the_dreams_miss(monkeypatch):
    """On laplace-chain's heavy-tailed data, the points farthest out are where prior dreams
    rarely go. With the proposal's particles (here from the exact E[T|x], as a well-trained
    recogniser would give) and the mixture weights, the targets match E[T|x] there; the dreams
    alone do not. (The median over the points: a Gaussian proposal is lighter-tailed than this
    posterior, and one point in ten can still rest on a couple of heavy particles.) On typical
    points dreams and particles share the weight, and the mixture is exact there too."""
    truth = make_truth("laplace-chain")
    model = perturbed_model(truth.model, 0.5, seed=1)
    x = truth.splits(2000, 0, 0, seed=7)["train"]
    far = x[x.norm(dim=1).argsort(descending=True)[:10]]  # the 10 farthest out
    reference = exact_reference(model)

    def errors(points, particles, dreams=1000, seed=3):
        ddc = DDCHelmholtzMachine.from_options(
            model, n_features=[20, 10], wake_particles=particles, generator=seed
        )
        exact = [reference.expectation(points, e, layer=l) for l, e in enumerate(ddc.encodings, 1)]
        monkeypatch.setattr(ddc, "expected_encodings", lambda data: exact)
        targets, ess, *_ = ddc.wake_targets(points, ddc.dream(dreams))
        out = []
        for target, truth_r, encoding in zip(targets, exact, ddc.encodings):
            block = slice(0, encoding.n_exact)
            spread = truth_r[:, block].abs().clamp_min(1.0)
            out.append(((target - truth_r)[:, block].abs() / spread).amax(1))
        return float(torch.stack(out).amax(0).median()), float(ess.median())

    dreams_only, dreams_ess = errors(far, 0)
    with_particles, particles_ess = errors(far, 2000)
    assert dreams_only > 0.5, dreams_only
    assert with_particles < 0.03, with_particles
    assert particles_ess > 20 * dreams_ess
    typical, _ = errors(x[:10], 4000, dreams=4000)
    assert typical < 0.03, typical


def test_whitened_encodings_give_back_their_exact_block():
    model = make_truth("mixed").model
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[10, 10], whiten=True, generator=0)
    latents = model.sample(40, generator=1)[1:]
    for encoding, z in zip(ddc.encodings, latents):
        assert encoding.whitened
        r = encoding(z).reshape(8, 5, -1).mean(1)  # averages of T, as expected encodings are
        exact = encoding.exact_features(z).reshape(8, 5, -1).mean(1)
        assert torch.allclose(encoding.expected_exact_features(r), exact, atol=1e-6, rtol=1e-6)


def test_wake_particles_default_to_continuous_models_and_are_checked():
    def particles(name, **kwargs):
        model = make_truth(name).model
        return DDCHelmholtzMachine.from_options(
            model, n_features=[10, 10], **kwargs
        ).options.wake.wake_particles

    assert particles("sbn-hard") == 0
    assert particles("sbn-gauss") == particles("laplace-chain") == 100
    assert particles("sbn-gauss", wake_recognition=False, recognition="ridge") == 0
    with pytest.raises(ValueError, match="wake_particles"):
        particles("sbn-gauss", wake_particles=-1)
    with pytest.raises(ValueError, match="input_scaling"):
        particles("sbn-gauss", recognition="ridge", input_scaling=True)


def test_recognition_proposal_estimates_log_px_where_its_moments_are_right(monkeypatch):
    """Through the mean-field proposal of exact expected encodings, importance sampling
    recovers laplace-chain's log p(x) (quadrature) within its standard error; through the
    prior it needs far more particles than it gets."""
    from ddchm.evaluate.likelihood import PriorProposal, importance_log_likelihood

    truth = make_truth("laplace-chain")
    model = perturbed_model(truth.model, 0.5, seed=1)
    x = truth.splits(40, 0, 0, seed=7)["train"]
    reference = exact_reference(model)
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[20, 10], generator=0)
    exact_r = [reference.expectation(x, e, layer=l) for l, e in enumerate(ddc.encodings, 1)]
    monkeypatch.setattr(ddc, "expected_encodings", lambda data: exact_r)
    truth_lp = reference.log_marginal(x).detach()
    ours = importance_log_likelihood(model, x, ddc.proposal(), n_particles=2000, batch_size=40)
    prior = importance_log_likelihood(model, x, PriorProposal(model), 2000, batch_size=40)
    assert float((ours.log_px - truth_lp).abs().mean()) < 0.03
    assert float(ours.ess.median()) > 100
    assert float((prior.log_px - truth_lp).abs().mean()) > 5 * float(
        (ours.log_px - truth_lp).abs().mean()
    )


def test_importance_encodings_replace_r_where_the_targets_rest_on_enough_particles():
    truth = make_truth("sbn-gauss")
    ddc = DDCHelmholtzMachine.from_options(
        truth.model, n_features=[20, 10], sleep_samples=500, generator=0
    )
    assert ddc.wake_phase.reads_targets  # the default on a model with a continuous layer
    x = truth.splits(30, 0, 0, seed=2)["train"]
    sleep = ddc.dream()
    draws = torch.Generator().manual_seed(5)
    blended = ddc.wake_phase_encodings(x, sleep, generator=draws)
    targets, ess, *_ = ddc.wake_targets(x, sleep, generator=torch.Generator().manual_seed(5))
    r = ddc.expected_encodings(x)
    alpha = (ess / ddc.wake_phase.min_ess).clamp(max=1.0).unsqueeze(1)
    assert (alpha == 1).any() and (alpha < 1).any()
    for got, t, rl in zip(blended, targets, r):
        assert torch.allclose(got, alpha * t + (1 - alpha) * rl)
    # the machine's own step takes the same path; without the option r is the recogniser's
    ddc.step(x)
    plain = DDCHelmholtzMachine.from_options(
        truth.model, n_features=[20, 10], wake_encodings="amortised"
    )
    assert not plain.wake_phase.reads_targets
    got = plain.wake_phase_encodings(x)
    assert all(torch.equal(a, b) for a, b in zip(got, plain.expected_encodings(x)))
    # on by default on small binary chains too (tests/test_wake_targets.py), off on the ridge
    assert DDCHelmholtzMachine.from_options(make_truth("sbn-hard").model).wake_phase.reads_targets
    ridge = DDCHelmholtzMachine.from_options(make_truth("sbn-hard").model, recognition="ridge")
    assert not ridge.wake_phase.reads_targets
    with pytest.raises(ValueError, match="wake_encodings"):
        DDCHelmholtzMachine.from_options(
            truth.model, wake_encodings="importance", wake_recognition=False
        )
