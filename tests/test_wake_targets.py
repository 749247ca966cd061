"""The wake targets' prior particles on small binary chains: draws collapsed to distinct states,
weighted by p(z) / pi(z) (Horvitz-Thompson), and the extra wake dreams (issue 14)."""

import decimal
import math

import pytest
import torch

from ddchm.data.synthetic import make_truth
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.ddc.encodings import LayerEncoding
from ddchm.ddc.proposal import (
    decode_states,
    distinct_codes,
    expected_distinct,
    group_by_bottom,
    layer_codes,
    log_inclusion_probability,
    state_codes,
)
from ddchm.models import Bernoulli, HierarchicalModel, exact_reference
from ddchm.models.exact import pair_log_prob


def target_error(targets, reference, encodings, x):
    """Mean over points of the squared error of the targets to the exact E[T_l | x], summed
    over layers."""
    total = 0.0
    for l, (target, encoding) in enumerate(zip(targets, encodings), start=1):
        exact = reference.expectation(x, encoding, layer=l)
        total += float(((target.detach().double() - exact) ** 2).sum(1).mean())
    return total


def test_state_codes_round_trip():
    generator = torch.Generator().manual_seed(0)
    latents = [(torch.rand(500, k, generator=generator) < 0.5).float() for k in (10, 4)]
    codes = state_codes(latents)
    back = decode_states(codes, [10, 4], torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(back, latents))
    assert torch.unique(codes).numel() == torch.unique(torch.cat(latents, 1), dim=0).shape[0]


def test_codes_of_wide_states_and_of_each_layer():
    generator = torch.Generator().manual_seed(1)
    wide = [(torch.rand(300, k, generator=generator) < 0.5).float() for k in (40, 20)]
    codes = state_codes(wide)  # 60 bits: the int64 path (float64 is exact to 52 only)
    assert all(
        torch.equal(a, b) for a, b in zip(decode_states(codes, [40, 20], torch.float32), wide)
    )
    assert int(codes.max()) > 2**52
    small = [(torch.rand(300, k, generator=generator) < 0.5).float() for k in (10, 4)]
    for z, code in zip(small, layer_codes(state_codes(small), [10, 4])):
        assert torch.equal(code, state_codes([z]))


def test_distinct_codes_by_counting_equal_unique():
    generator = torch.Generator().manual_seed(2)
    for bits in (14, 20, 30):
        codes = torch.randint(2**bits, (5000,), generator=generator) % 3000 * (2 ** (bits - 12))
        assert torch.equal(distinct_codes(codes, bits), torch.unique(codes)), bits


def test_state_table_matches_the_encoding_and_follows_its_calibration():
    encoding = LayerEncoding(6, n_features=20, generator=0)
    z = (torch.rand(400, 6, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    encoding.calibrate(z)
    table = encoding.state_table()
    assert table.shape == (64, encoding.size) and encoding.state_table() is table  # cached
    codes = state_codes([z])
    assert torch.allclose(table[codes], encoding(z), atol=1e-6)
    encoding.calibrate(z[:100])  # a new calibration: a new table, equal to the new T
    assert encoding.state_table() is not table
    assert torch.allclose(encoding.state_table()[codes], encoding(z), atol=1e-6)
    moved = LayerEncoding(6, n_features=20, generator=0)
    moved.load_state_dict(encoding.state_dict())
    assert torch.allclose(moved.state_table(), encoding.state_table(), atol=0)
    with pytest.raises(ValueError, match="binary layer of at most 12"):
        LayerEncoding(13, n_features=5, generator=0).state_table()
    with pytest.raises(ValueError, match="gaussian layer"):
        LayerEncoding(3, n_features=5, family="gaussian", generator=0).state_table()


def test_samples_encoded_through_the_tables_equal_their_encodings():
    for layers in (
        [Bernoulli(4), Bernoulli(10, 4), Bernoulli(8, 10)],
        [Bernoulli(3), Bernoulli(14, 3), Bernoulli(6, 14)],  # 14 units: no table
    ):
        model = HierarchicalModel(layers)
        ddc = DDCHelmholtzMachine.from_options(model, n_features=[20, 10], generator=0)
        sleep = model.sample(500, generator=1)
        for fast, slow in zip(ddc.particles.encode_samples(sleep[1:]), ddc.encode(sleep[1:])):
            assert torch.allclose(fast, slow, atol=1e-6)


def ungrouped_targets(ddc, x, codes, log_mass, draws, sizes):
    """The collapsed wake targets and ESS summed state by state, N x U (no grouping)."""
    latents = decode_states(codes, sizes, x.dtype)
    log_w = pair_log_prob(ddc.model.observation, x, latents[0]) + log_mass
    w = torch.softmax(log_w.double(), 1)
    stands_for = (log_mass.double().exp() * draws).clamp(min=1.0)
    ess = 1.0 / ((w * w) / stands_for).sum(1)
    return [w @ encoding(z).double() for encoding, z in zip(ddc.encodings, latents)], ess


@pytest.mark.parametrize("dims", [(8, 10, 4), (6, 5, 14, 3)])
def test_grouping_by_the_bottom_state_is_an_exact_regrouping(dims):
    """(8, 10, 4): the upper layer through its table; (6, 5, 14, 3): a 14-unit layer without a
    table, and a 3-unit one above it."""
    torch.manual_seed(0)
    layers = [Bernoulli(dims[-1], init_scale=1.5)]  # top down
    layers += [
        Bernoulli(dims[i], dims[i + 1], init_scale=1.5) for i in reversed(range(len(dims) - 1))
    ]
    model = HierarchicalModel(layers)
    x = model.sample(40, generator=1)[0]
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[20] * (len(dims) - 1), generator=0)
    codes, _, _, _, draws = drawn = ddc.particles.distinct_states(
        model.sample(3000, generator=2), None
    )
    log_mass = drawn.log_mass
    sizes = list(dims[1:])
    particles = group_by_bottom(ddc.encodings, codes, sizes, log_mass, draws, x.dtype)
    assert particles.latents[0].shape[0] < codes.shape[0]  # fewer bottom states than states
    targets, ess, *_ = ddc.importance(x, particles, ddc.expected_encodings, None)
    expected, expected_ess = ungrouped_targets(ddc, x, codes, log_mass, draws, sizes)
    for got, want in zip(targets, expected):
        assert torch.allclose(got.double(), want, atol=2e-5, rtol=1e-4)
    assert torch.allclose(ess.double(), expected_ess, rtol=1e-4)
    # the ESS is not the states' own: a state of weight p / pi stands for S p / pi draws
    assert (
        float((ess.double() - 1.0 / (torch.softmax(log_mass.double(), 0) ** 2).sum()).abs().max())
        > 1
    )


def test_log_inclusion_probability():
    decimal.getcontext().prec = 60
    p = [0.9, 0.3, 1e-3, 1e-7, 1e-12]
    for draws in (1, 10, 2000):  # log(1 - (1 - p)^S) to 60 digits
        expected = [float((1 - (1 - decimal.Decimal(v)) ** draws).ln()) for v in p]
        got = log_inclusion_probability(torch.tensor(p, dtype=torch.float64).log(), draws)
        assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9), draws
    # a state whose probability underflows keeps the weight of one draw: log pi = log S + log p
    assert float(log_inclusion_probability(torch.tensor([-1000.0]), 50)) == pytest.approx(
        math.log(50) - 1000.0
    )


def test_collapsed_targets_are_closer_to_the_exact_ones_than_plain_draws():
    """Same draws, two estimators: collapsing to distinct states with p / pi weights leaves
    2x-9x less squared error to the exact E[T_l | x] on sbn-hard (measured 0.03 against 0.065
    with 2,000 draws); dropping the weights (a state counted once whatever its probability),
    or weighting by p alone, is biased."""
    model = make_truth("sbn-hard").model
    x = model.sample(300, generator=3)[0]
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[20, 10], generator=0)
    assert ddc.particles.state_bits == 14 and ddc.wake_phase.reads_targets
    reference = exact_reference(model)
    errors = {"collapsed": [], "plain": [], "unweighted": [], "prior only": []}
    for seed in range(3):
        sleep = model.sample(2000, generator=10 + seed)
        ddc.particles.wake_dreams = 2000  # no extra dreams: the step's own
        drawn = ddc.particles.distinct_states(sleep, None)
        codes, log_mass, draws = drawn.codes, drawn.log_mass, drawn.draws
        assert codes.shape[0] < 600 and draws == 2000
        targets, _, *_ = ddc.importance(
            x, ddc.particles.prior(sleep, ddc.generator), ddc.expected_encodings, None
        )
        errors["collapsed"].append(target_error(targets, reference, ddc.encodings, x))
        for name, biased in (
            ("unweighted", torch.zeros_like(log_mass)),
            ("prior only", model.log_prior(decode_states(codes, [10, 4], x.dtype)).detach()),
        ):
            particles = group_by_bottom(ddc.encodings, codes, [10, 4], biased, draws, x.dtype)
            targets, _, *_ = ddc.importance(x, particles, ddc.expected_encodings, None)
            errors[name].append(target_error(targets, reference, ddc.encodings, x))
        ddc.particles.state_bits = None
        targets, _, *_ = ddc.wake_targets(x, sleep)
        ddc.particles.state_bits = 14
        errors["plain"].append(target_error(targets, reference, ddc.encodings, x))
    mean = {name: sum(values) / len(values) for name, values in errors.items()}
    assert mean["collapsed"] < 0.7 * mean["plain"], mean
    assert mean["unweighted"] > 3 * mean["collapsed"], mean
    assert mean["prior only"] > 1.5 * mean["collapsed"], mean


def test_extra_wake_dreams_converge_and_keep_the_draws_ess():
    model = make_truth("sbn-hard").model
    x = model.sample(300, generator=3)[0]
    ddc = DDCHelmholtzMachine.from_options(model, n_features=[20, 10], generator=0)
    assert ddc.options.wake.wake_dreams == 20_000  # 10 N_sleep on a small binary chain
    sleep = model.sample(2000, generator=4)
    particles = ddc.particles.prior(sleep, torch.Generator().manual_seed(5))
    assert particles.draws == 20_000  # the truth's prior sits on ~1,100 states: all drawn
    targets, ess, *_ = ddc.importance(x, particles, ddc.expected_encodings, None)
    reference = exact_reference(model)
    assert target_error(targets, reference, ddc.encodings, x) < 0.003  # measured 0.0009
    # the collapsed ESS counts draws: as the plain ESS of 20,000 draws (median ~4,000)
    ddc.particles.state_bits = None
    ddc.particles.wake_dreams = 20_000
    _, plain_ess, *_ = ddc.wake_targets(x, model.sample(20_000, generator=6))
    assert float(ess.median()) == pytest.approx(float(plain_ess.median()), rel=0.15)


def test_expected_distinct_predicts_the_states_of_more_draws():
    model = make_truth("sbn-hard").model
    sleep = model.sample(2000, generator=7)
    codes = torch.unique(state_codes(sleep[1:]))
    log_p = model.log_prior(decode_states(codes, [10, 4], sleep[1].dtype)).detach()
    for more in (5000, 20_000):
        seen = torch.unique(state_codes(model.sample(more, generator=8)[1:])).numel()
        assert expected_distinct(log_p, 2000, more) == pytest.approx(seen, rel=0.15), more
    # no repeats: the linear extrapolation
    assert expected_distinct(torch.full((100,), -60.0), 100, 400) == pytest.approx(400)


def test_extra_dreams_stop_at_the_distinct_state_budget():
    """A flat prior over 2^14 states: 20,000 draws would reach ~11,000 distinct states, more
    than 4 N_sleep, so fewer are drawn."""
    model = HierarchicalModel([Bernoulli(4), Bernoulli(10, 4), Bernoulli(8, 10)])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], sleep_samples=1000, generator=0
    )
    drawn = ddc.particles.distinct_states(ddc.dream(), None)
    codes, draws = drawn.codes, drawn.draws
    assert draws < ddc.options.wake.wake_dreams
    assert codes.shape[0] <= 4 * 1000 * 1.1


def test_defaults_follow_the_chain():
    small = make_truth("sbn-easy").model
    ddc = DDCHelmholtzMachine.from_options(small, sleep_samples=500, generator=0)
    assert (
        ddc.wake_phase.reads_targets
        and ddc.options.wake.wake_dreams == 5000
        and ddc.particles.state_bits == 14
    )
    wide = HierarchicalModel([Bernoulli(30), Bernoulli(40, 30), Bernoulli(20, 40)])
    ddc = DDCHelmholtzMachine.from_options(wide, sleep_samples=500, generator=0)
    # 70 latent units: no codes, and amortised from the start (no data rows, no targets)
    assert ddc.particles.state_bits is None and ddc.options.wake.wake_dreams == 500
    assert ddc.wake_phase.name == "amortised" and not ddc.wake_phase.auto
    # asked for, its importance phase has plain draws until the first step measures their ESS
    ddc = DDCHelmholtzMachine.from_options(
        wide, sleep_samples=500, generator=0, wake_recognition=True
    )
    assert ddc.particles.state_bits is None and ddc.options.wake.wake_dreams == 500
    assert ddc.wake_phase.name == "importance" and ddc.wake_phase.auto
    with pytest.raises(ValueError, match="wake_dreams"):
        DDCHelmholtzMachine.from_options(small, sleep_samples=500, wake_dreams=100)


def test_reused_draws_are_reweighted_to_the_current_prior():
    """Between redraws (``wake_redraw_every``) a step's particles are the last draw's states
    with weights p_theta(z) / pi(z): theta's current prior, the draw's inclusion chances. After
    theta moves, the targets stay as close to the exact ones as a fresh draw's; keeping the old
    weights does not."""
    model = make_truth("sbn-hard").model
    x = model.sample(300, generator=3)[0]
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[20, 10], wake_redraw_every=3, generator=0
    )
    first = ddc.particles.for_step(model.sample(2000, generator=4), ddc.steps, ddc.generator)
    drawn, groups = ddc.particles.last
    with torch.no_grad():  # theta moves
        generator = torch.Generator().manual_seed(6)
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    reference = exact_reference(model)
    ddc.steps = 1
    reused = ddc.particles.for_step(
        model.sample(2000, generator=5), ddc.steps, ddc.generator
    )  # these dreams are not read
    assert ddc.particles.last[0] is drawn
    assert torch.equal(reused.latents[0], first.latents[0])
    log_mass = model.log_prior(drawn.latents).detach() - drawn.log_inclusion
    manual = group_by_bottom(
        ddc.encodings, drawn.codes, [10, 4], log_mass.float(), drawn.draws, x.dtype
    )
    assert torch.allclose(reused.log_mass, manual.log_mass)
    errors = {}
    for name, particles in (("reused", reused), ("old weights", first)):
        targets, _, *_ = ddc.importance(x, particles, ddc.expected_encodings, None)
        errors[name] = target_error(targets, reference, ddc.encodings, x)
    ddc.steps = 3  # a redraw step
    fresh = ddc.particles.for_step(model.sample(2000, generator=7), ddc.steps, ddc.generator)
    assert ddc.particles.last[0] is not drawn
    targets, _, *_ = ddc.importance(x, fresh, ddc.expected_encodings, None)
    errors["fresh"] = target_error(targets, reference, ddc.encodings, x)
    assert errors["reused"] < 2 * errors["fresh"], errors  # measured 0.00066 / 0.00045
    assert errors["old weights"] > 5 * errors["reused"], errors


def test_a_run_that_reuses_draws_resumes_bit_for_bit():
    """The reused draw travels in the state dict: 2 + 3 steps through a checkpoint, with a
    redraw every 3rd, equal 5 straight steps."""
    truth = make_truth("sbn-hard")
    x = truth.model.sample(200, generator=1)[0]

    def machine(seed_model):
        torch.manual_seed(seed_model)
        model = HierarchicalModel([Bernoulli(4), Bernoulli(10, 4), Bernoulli(8, 10)])
        return DDCHelmholtzMachine.from_options(
            model, n_features=[20, 10], sleep_samples=300, wake_redraw_every=3, generator=4
        )

    straight, first = machine(0), machine(0)
    for step in range(5):
        straight.step(x[40 * step : 40 * step + 40])
    for step in range(2):
        first.step(x[40 * step : 40 * step + 40])
    resumed = machine(0)
    resumed.model.load_state_dict(first.model.state_dict())
    resumed.load_state_dict(first.state_dict())
    for step in range(2, 5):
        resumed.step(x[40 * step : 40 * step + 40])
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    # without the saved draw the resumed run would redraw at step 2 and part ways
    lost = machine(0)
    lost.model.load_state_dict(first.model.state_dict())
    state = first.state_dict()
    state["wake_states"] = None
    lost.load_state_dict(state)
    for step in range(2, 5):
        lost.step(x[40 * step : 40 * step + 40])
    assert any(
        not torch.equal(a, b) for a, b in zip(straight.model.parameters(), lost.model.parameters())
    )
