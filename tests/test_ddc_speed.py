"""The faster DDC-HM step (issue 13) computes what the slower one did."""

import copy

import pytest
import torch

from ddchm.algorithms.base import apply_ascent
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.ddc.encodings import LayerEncoding, _shift
from ddchm.models import Bernoulli, Gaussian, HierarchicalModel
from ddchm.models.exact import pair_log_prob


def sbn(dims=(3, 6, 12), seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers, parent = [], None
    for dim in dims:
        layers.append(Bernoulli(dim, parent, init_scale=1.0))
        parent = dim
    return HierarchicalModel(layers).to(dtype)


def old_step(ddc, batch):
    """The step as it was before issue 13: the dreams encoded twice, once by the recognition
    update and once by the gradient maps."""
    sleep = ddc.dream()
    if (
        ddc.options.encodings.recalibrate_every
        and ddc.steps % ddc.options.encodings.recalibrate_every == 0
        and ddc.steps
    ):
        ddc.recalibrate(sleep)
    ddc.recogniser_training.fit(sleep, batch)
    ascent = ddc.theta_gradient(batch, sleep)
    apply_ascent(ddc.optimizer, ddc.params, ascent, ddc.param_names)
    ddc.steps += 1
    return ascent


def test_step_with_shared_encodings_matches_the_two_encoding_path():
    model = sbn()
    x = model.sample(50, generator=3)[0]
    machines = [  # the recogniser's r in the wake phase, as old_step uses; fresh wake draws
        DDCHelmholtzMachine.from_options(
            m,
            n_features=[30, 10],
            sleep_samples=300,
            wake_encodings="amortised",
            wake_redraw_every=1,
            generator=5,
        )
        for m in (model, copy.deepcopy(model))
    ]
    # the step reads a small binary layer's encodings off its table, which differ from the
    # direct ones by rounding (6e-8) that four Adam steps grow to 2e-5: encode alike
    machines[1].particles.encode = machines[1].particles.encode_samples
    for step in range(4):  # steps after the first also check the encodings' drift
        batch = x[10 * step : 10 * step + 10]
        machines[0].step(batch)
        old_step(machines[1], batch)
        for (name, new), old in zip(
            machines[0].model.named_parameters(), machines[1].model.parameters()
        ):
            assert torch.allclose(new, old, atol=1e-6, rtol=0), (step, name)


def test_theta_gradient_with_given_features_equals_its_own_encoding():
    model = sbn(seed=1, dtype=torch.float64)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[30, 10], sleep_samples=300, generator=2
    )
    x = model.sample(20, generator=4)[0]
    sleep = ddc.dream()
    shared = ddc.theta_gradient(x, sleep, features=ddc.encode(sleep[1:]))
    own = ddc.theta_gradient(x, sleep)
    for name in own:
        assert torch.allclose(shared[name], own[name], atol=1e-12, rtol=1e-9), name
    with pytest.raises(ValueError, match="features"):
        ddc.theta_gradient(x, features=ddc.encode(sleep[1:]))


def test_wake_targets_without_subnormal_weights_match_the_exact_weighted_sum():
    # a wide observation layer makes the importance weights span hundreds of orders of
    # magnitude, as on MNIST: the flushed weights must not move the targets
    model = sbn(dims=(5, 60, 300), seed=2)  # 65 latent units: plain draws, not collapsed
    with torch.no_grad():
        model.layers[0].weight.mul_(3.0)
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=500, generator=1
    )
    x = model.sample(40, generator=6)[0]
    sleep = ddc.dream()
    features = ddc.encode(sleep[1:])
    with torch.no_grad():  # the same weights, subnormals kept
        w = torch.softmax(pair_log_prob(model.observation, x, sleep[1]), dim=1)
    assert ((w > 0) & (w < torch.finfo(w.dtype).tiny)).any()  # the case the flush is for
    w = w.double()
    targets, ess, *_ = ddc.wake_targets(x, sleep, features)
    for got, f in zip(targets, features):
        exact = w @ f.double()
        assert torch.allclose(got.double(), exact, atol=1e-6, rtol=1e-5)
    assert torch.allclose(ess.double(), 1 / (w**2).sum(1), rtol=1e-5)


def test_drift_shift_equals_the_std_formula():
    torch.manual_seed(0)
    values = 3.0 + 2.0 * torch.randn(2000, 40)
    centre, scale = torch.randn(40), torch.rand(40) + 0.5
    expected = (values.std(0) / scale).log().abs() + (values.mean(0) - centre).abs() / scale
    assert torch.allclose(_shift(values, centre, scale), expected, atol=1e-5, rtol=1e-5)


def test_gaussian_chain_step_matches_the_two_encoding_path():
    # continuous layers: recalibration refits moment heads and input scaling between steps
    torch.manual_seed(0)
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2, init_scale=1.0)])
    x = model.sample(40, generator=1)[0]
    # the wake phase from the recogniser, as old_step's (importance encodings have a test of
    # their own in test_continuous.py)
    machines = [
        DDCHelmholtzMachine.from_options(
            m, n_features=20, sleep_samples=200, wake_encodings="amortised", generator=3
        )
        for m in (model, copy.deepcopy(model))
    ]
    for step in range(3):
        batch = x[10 * step : 10 * step + 10]
        machines[0].step(batch)
        old_step(machines[1], batch)
    for new, old in zip(machines[0].model.parameters(), machines[1].model.parameters()):
        assert torch.allclose(new, old, atol=1e-6, rtol=0)


def test_folded_random_features_equal_the_step_by_step_formula():
    from ddchm.ddc import LayerEncoding

    for family in ("bernoulli", "gaussian"):
        encoding = LayerEncoding(6, 40, family, gain=(0.5, 8.0), generator=1)
        z = torch.randn(500, 6) * 2 + 1 if family == "gaussian" else (torch.rand(500, 6) < 0.3)
        z = z.float()
        encoding.calibrate(z[:250])
        pre = (z @ encoding.direction.T - encoding.projection_centre) / encoding.projection_scale
        expected = torch.sigmoid(encoding.slope * (pre - encoding.threshold))
        assert torch.allclose(encoding.random_features(z), expected, atol=1e-5, rtol=0)
        full = encoding(z)
        assert torch.equal(full[:, :-1], encoding.features(z))
        assert torch.equal(full[:, -1], torch.ones(500))


def test_recogniser_loss_is_the_sleep_mean_plus_weighted_wake_mean():
    from ddchm.ddc import NetworkRecognition

    torch.manual_seed(0)
    recogniser = NetworkRecognition(5, [7, 4], (16,), generator=0)
    x, wake_x = torch.randn(30, 5), torch.randn(6, 5)
    targets = [torch.rand(30, 7), torch.rand(30, 4)]
    wake_targets = [torch.rand(6, 7), torch.rand(6, 4)]
    weight = torch.rand(6)
    with torch.no_grad():
        sleep_r, wake_r = recogniser(x), recogniser(wake_x)
    expected = sum(((r - t) ** 2).sum(1).mean() for r, t in zip(sleep_r, targets))
    expected += sum((weight * ((r - t) ** 2).sum(1)).mean() for r, t in zip(wake_r, wake_targets))
    loss = recogniser.fit_step(x, targets, wake_x, wake_targets, weight)
    assert abs(loss - float(expected)) < 1e-5 * float(expected)
    with torch.no_grad():
        no_wake = float(sum(((r - t) ** 2).sum(1).mean() for r, t in zip(recogniser(x), targets)))
    assert abs(recogniser.fit_step(x, targets) - no_wake) < 1e-5 * no_wake


def test_throughput_breakdown_replays_the_step_it_times():
    """benchmarks/throughput.py times a DDC-HM step piece by piece: the pieces must be the step."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput_benchmark", path)
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    model = sbn(seed=3)
    x = model.sample(60, generator=2)[0]
    machines = [
        DDCHelmholtzMachine.from_options(m, n_features=[20, 8], sleep_samples=200, generator=4)
        for m in (model, copy.deepcopy(model))
    ]
    assert machines[0].recognition_every == 2  # a small binary chain: see below
    clock = {}
    for step in range(6):
        batch = x[10 * step : 10 * step + 10]
        machines[0].step(batch)
        throughput.ddc_phases(machines[1], batch, clock)
    for new, old in zip(machines[0].model.parameters(), machines[1].model.parameters()):
        assert torch.allclose(new, old, atol=1e-6, rtol=0)
    for new, old in zip(machines[0].recognition.parameters(), machines[1].recognition.parameters()):
        assert torch.allclose(new, old, atol=1e-6, rtol=0)
    assert {"dreams", "recogniser", "wake_targets", "wake_gradient", "optimiser"} <= set(clock)


def test_sample_latents_are_the_samples_latents():
    model = sbn()
    full, latents = model.sample(200, generator=7), model.sample_latents(200, generator=7)
    assert all(torch.equal(a, b) for a, b in zip(full[1:], latents))


def recogniser_updates(machine):
    """Wrap the recogniser's fit_step to record the rows of every update."""
    rows, fit_step = [], machine.recognition.fit_step

    def recorded(x, targets, **wake):
        rows.append((x.shape[0], targets[0].shape[0]))
        return fit_step(x, targets, **wake)

    machine.recognition.fit_step = recorded
    return rows


def test_a_recogniser_the_wake_phase_does_not_read_is_updated_every_kth_step():
    """On a small binary chain the wake phase's r is the importance-sampled E[T | x] wherever it
    rests on wake_min_ess effective draws (here: every point): updating the recogniser every
    third step, on 100 of the dreams, leaves theta's path exactly as it was."""
    model = sbn(dims=(3, 5, 8), seed=1)
    x = model.sample(60, generator=2)[0]
    machines = {
        k: DDCHelmholtzMachine.from_options(
            m,
            n_features=[20, 8],
            sleep_samples=300,
            recognition_every=k,
            recognition_dreams=300 if k == 1 else 100,
            generator=4,
        )
        for k, m in ((1, model), (3, copy.deepcopy(model)))
    }
    rows = recogniser_updates(machines[3])
    for step in range(6):
        batch = x[10 * step : 10 * step + 10]
        for machine in machines.values():
            machine.step(batch)
            targets, ess, *_ = machine.wake_estimates
            assert float(ess.min()) >= machine.wake_phase.min_ess  # r is all importance-sampled
    assert rows == [(100, 100), (100, 100)]  # steps 0 and 3, 100 dreams each
    for (name, a), b in zip(machines[1].model.named_parameters(), machines[3].model.parameters()):
        assert torch.equal(a, b), name
    trunk = [p for p in machines[3].recognition.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(machines[1].recognition.parameters(), trunk))


def test_recogniser_schedule_defaults_and_errors():
    small = DDCHelmholtzMachine.from_options(sbn(), sleep_samples=200, generator=0)
    assert small.recognition_every == 2 and small.recognition_dreams == 100
    wide = DDCHelmholtzMachine.from_options(
        sbn(dims=(30, 40, 30)), sleep_samples=200, wake_encodings="amortised", generator=0
    )
    plain = DDCHelmholtzMachine.from_options(
        sbn(), sleep_samples=200, wake_encodings="amortised", generator=0
    )
    for machine in (wide, plain):
        assert machine.recognition_every == 1 and machine.recognition_dreams == 200
    with pytest.raises(ValueError, match="recognition_dreams: expected at most sleep_samples"):
        DDCHelmholtzMachine.from_options(sbn(), sleep_samples=200, recognition_dreams=500)
    with pytest.raises(ValueError, match="recognition_every"):
        DDCHelmholtzMachine.from_options(sbn(), recognition_every=0)


def test_ridge_solver_on_distinct_rows_equals_the_one_on_every_row():
    """The dreams of a small binary layer repeat their states: a solver on the distinct rows
    with a count-weighted Gram is the same solver."""
    from ddchm.ddc.wake import RidgeSolver

    generator = torch.Generator().manual_seed(0)
    rows = torch.rand(40, 12, generator=generator)
    index = torch.randint(40, (500,), generator=generator)
    index[:40] = torch.arange(40)  # every row used
    ridge = torch.full((12,), 1e-3)
    plain, distinct = (
        RidgeSolver(rows[index], ridge),
        RidgeSolver(rows[index], ridge, (rows, index)),
    )
    rhs = torch.rand(12, 3, generator=generator)
    targets = torch.rand(500, 4, generator=generator)
    assert torch.allclose(distinct.sample_weights(rhs), plain.sample_weights(rhs), atol=1e-6)
    assert torch.allclose(distinct.fit(targets), plain.fit(targets), atol=1e-5)
    wrong = RidgeSolver(rows[index], ridge, (rows, index.flip(0)))  # the index matters
    assert not torch.allclose(wrong.sample_weights(rhs), plain.sample_weights(rhs), atol=1e-3)


def test_affine_sum_through_the_maps_equals_the_sum_over_samples():
    """affine_sum: sum_s w_s^T (W z_s + b) with w = sample_weights(rhs), through the K rows of
    the map; value and gradients as the explicit sum's, on a plain and a distinct-row solver."""
    from ddchm.ddc.wake import RidgeSolver

    generator = torch.Generator().manual_seed(1)
    rows = torch.rand(30, 10, generator=generator, dtype=torch.float64)
    index = torch.randint(30, (400,), generator=generator)
    inputs = (torch.rand(30, 6, generator=generator) < 0.5).double()[index]
    ridge = torch.full((10,), 1e-3, dtype=torch.float64)
    rhs = torch.randn(10, 9, generator=generator, dtype=torch.float64)
    weight = torch.randn(9, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=generator, dtype=torch.float64, requires_grad=True)
    plain = RidgeSolver(rows[index], ridge)
    explicit = (plain.sample_weights(rhs) * (inputs @ weight.T + bias)).sum()
    expected = torch.autograd.grad(explicit, [weight, bias])
    for solver in (plain, RidgeSolver(rows[index], ridge, (rows, index))):
        value = solver.affine_sum(rhs, inputs, weight, bias)
        assert float(value.detach()) == pytest.approx(float(explicit.detach()), rel=1e-10)
        for got, want in zip(torch.autograd.grad(value, [weight, bias]), expected):
            assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    # the bias enters once per sample: dropping the counts would be wrong
    assert float(expected[1].abs().sum()) > 1e-3


@pytest.mark.parametrize("family", ["bernoulli", "gaussian"])
def test_drift_from_the_samples_moments_equals_the_projections(family):
    """A layer narrower than its features measures drift through the samples' d x d moments;
    the number is the projections' own (computed here from the projections)."""
    generator = torch.Generator().manual_seed(0)
    if family == "bernoulli":
        calibration = (torch.rand(3000, 10, generator=generator) < 0.3).double()
        moved = (torch.rand(2000, 10, generator=generator) < 0.6).double()
    else:
        calibration = torch.randn(3000, 10, generator=generator, dtype=torch.float64)
        moved = 1.5 * torch.randn(2000, 10, generator=generator, dtype=torch.float64) + 0.4
    encoding = LayerEncoding(10, 50, family=family, generator=1).double().calibrate(calibration)
    projections = _shift(
        moved @ encoding.direction.T, encoding.projection_centre, encoding.projection_scale
    )
    if family == "gaussian":
        units = _shift(moved, encoding.unit_centre, encoding.unit_scale)
        projections = torch.cat([projections, units])
    expected = float(projections.median())
    assert expected > 0.1  # it moved
    assert encoding.drift(moved) == pytest.approx(expected, rel=1e-9)
    assert encoding.drift(calibration) < 1e-9


WIDE_WITH_DATA_ROWS = {"wake_encodings": "amortised", "wake_recognition": True}


def test_a_wide_chains_recogniser_trains_on_the_first_recognition_points_of_the_batch():
    """Where the wake phase reads the recogniser (a wide chain) its data rows are the first
    ``recognition_points`` of the batch; where it reads the importance targets (a small chain)
    they are computed for every point and all of them train it."""
    for dims, subsampled in (((30, 40, 30), True), ((3, 5, 8), False)):
        model = sbn(dims=dims, seed=1)
        x = model.sample(50, generator=2)[0]
        machines = [
            DDCHelmholtzMachine.from_options(
                copy.deepcopy(model), n_features=20, sleep_samples=200, generator=4, **kwargs
            )
            for kwargs in ({"recognition_points": 10}, {"recognition_points": 50}, {})
            # data rows asked for: by default a wide chain's recogniser trains on dreams only
            for kwargs in [{**kwargs, **(WIDE_WITH_DATA_ROWS if subsampled else {})}]
        ]
        assert machines[0].wake_phase.reads_targets != subsampled
        sleep = model.sample(200, generator=5)  # no machine's generator moves
        machines[0].recogniser_training.fit(sleep, x)
        machines[1].recogniser_training.fit(sleep, x[:10] if subsampled else x)
        machines[2].recogniser_training.fit(sleep, x)
        first = list(machines[0].recognition.parameters())
        for other, equal in ((machines[1], True), (machines[2], not subsampled)):
            same = all(torch.equal(a, b) for a, b in zip(first, other.recognition.parameters()))
            assert same == equal, (dims, equal)
    with pytest.raises(ValueError, match="recognition_points"):
        DDCHelmholtzMachine.from_options(sbn(), recognition_points=0)
