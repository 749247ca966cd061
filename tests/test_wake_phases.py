"""Named wake phases: the measured 'auto' rule, the 'paper' preset, the ablation, the regime in
the metrics, and the side-effect-free probes."""

import json

import pytest
import torch

from ddchm.cli import main
from ddchm.data import make_truth
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.ddc.wake_phase import blend
from ddchm.experiment import load_config, run
from ddchm.models import Bernoulli, HierarchicalModel, exact_reference
from ddchm.train import read_metrics


def wide_chain(seed=0, sd=1.0):
    """A 20-30-784 sigmoid belief net with weights N(0, sd^2): MNIST's shape."""
    torch.manual_seed(seed)
    model = HierarchicalModel([Bernoulli(20), Bernoulli(30, 20), Bernoulli(784, 30)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, sd)
    return model


def test_a_20_30_784_chain_chooses_the_amortised_wake_phase():
    """50 binary units could be collapsed, but on 784-pixel data the prior draws' importance
    targets rest on a handful of effective particles: 'auto' measures that on the first step
    and reads the recogniser's r from then on."""
    model = wide_chain()
    x = model.sample(100, generator=1)[0]
    ddc = DDCHelmholtzMachine.from_options(model, n_features=20, sleep_samples=300, hidden=(16,))
    assert ddc.wake_phase.name == "collapsed" and ddc.wake_phase.auto  # the candidate
    metrics = ddc.step(x)
    ((step, median_ess, chosen),) = ddc.wake_phase.decisions
    assert step == 0 and median_ess < ddc.wake_phase.min_ess and chosen == "amortised"
    assert metrics["wake_phase"] == "amortised" and metrics["importance_share"] == 0.0
    assert not ddc.wake_phase.auto  # decided for good
    assert ddc.recognition_every == 1 and ddc.recognition_dreams == 300
    assert all(
        torch.equal(a, b)
        for a, b in zip(ddc.wake_phase_encodings(x[:5]), ddc.expected_encodings(x[:5]))
    )


def test_a_chain_too_wide_to_collapse_is_amortised_with_the_papers_recogniser():
    """Over 62 binary latent units (MNIST 20-100-784's 120) the default needs no measurement:
    no wake rows, so amortised from the start, Adam heads, standardised x, calibrated once;
    each choice says why, and an explicit option wins."""
    model = HierarchicalModel([Bernoulli(20), Bernoulli(50, 20), Bernoulli(30, 50)])
    ddc = DDCHelmholtzMachine.from_options(model, n_features=20, sleep_samples=200, hidden=(8,))
    o = ddc.options
    assert ddc.wake_phase.name == "amortised" and not ddc.wake_phase.auto
    assert not o.recogniser.wake_recognition and o.recogniser.recognition_readout == "adam"
    assert o.recogniser.input_scaling and o.encodings.recalibrate_every == 0
    assert o.encodings.max_products == 0 and not any(e.use_products for e in ddc.encodings)
    assert {"wake_recognition", "recognition_readout", "input_scaling", "recalibrate_every"} <= set(
        o.reasons
    )
    assert "70 latent units" in o.reasons["wake_recognition"]
    x = model.sample(30, generator=1)[0]
    assert ddc.step(x)["wake_phase"] == "amortised"
    mine = DDCHelmholtzMachine.from_options(
        model, n_features=20, sleep_samples=200, recognition_readout="ridge", recalibrate_every=3
    ).options
    assert mine.recogniser.recognition_readout == "ridge" and mine.encodings.recalibrate_every == 3
    # importance targets asked for by name keep the data rows that make them
    asked = DDCHelmholtzMachine.from_options(model, wake_encodings="importance").options
    assert asked.recogniser.wake_recognition and asked.encodings.recalibrate_every == 1
    assert asked.recogniser.recognition_readout == "ridge" and not asked.recogniser.input_scaling
    # at 62 units or fewer the measured rule still decides, with the dense defaults
    narrow = DDCHelmholtzMachine.from_options(
        HierarchicalModel([Bernoulli(20), Bernoulli(42, 20), Bernoulli(30, 42)])
    ).options
    assert narrow.recogniser.wake_recognition and narrow.wake.wake_encodings == "auto"
    assert narrow.encodings.max_products == 300
    with pytest.raises(TypeError, match="max_products"):
        DDCHelmholtzMachine.from_options(model, max_products=2.5)


def test_sbn_hard_chooses_the_collapsed_wake_phase_and_records_its_ess():
    truth = make_truth("sbn-hard")
    x = truth.model.sample(100, generator=1)[0]
    ddc = DDCHelmholtzMachine.from_options(truth.model, n_features=[30, 10], sleep_samples=300)
    metrics = ddc.step(x)
    assert ddc.wake_phase.decisions[0][2] == "collapsed" and ddc.wake_phase.auto
    assert metrics["wake_phase"] == "collapsed"
    assert metrics["wake_ess_min"] >= ddc.wake_phase.min_ess  # the measured quantity
    assert metrics["wake_ess_median"] >= metrics["wake_ess_min"]
    assert metrics["importance_share"] == 1.0  # every r is importance-sampled
    assert ddc.recognition_every == 2


def test_auto_turns_amortised_when_a_later_check_finds_too_few_particles():
    """The rule is checked every ``wake_check_every`` steps; a failing check ends the
    importance phase for good and is recorded with its step and ESS."""
    truth = make_truth("sbn-hard")
    x = truth.model.sample(40, generator=1)[0]
    ddc = DDCHelmholtzMachine.from_options(
        truth.model,
        n_features=[30, 10],
        sleep_samples=200,
        wake_check_every=2,
        wake_min_ess=1e9,  # no batch reaches it
    )
    ddc.step(x)
    assert ddc.wake_phase.decisions == [
        (0, pytest.approx(ddc.wake_phase.decisions[0][1]), "amortised")
    ]
    ddc.wake_phase = type(ddc.wake_phase)("auto", "collapsed", 1.0, 2)  # a passing rule
    for _ in range(3):
        ddc.step(x)
    assert [d[0] for d in ddc.wake_phase.decisions] == [2]  # steps 1..3: checked at 2 only
    assert ddc.wake_phase.name == "collapsed"


def test_named_phases_are_checked():
    model = wide_chain()
    with pytest.raises(ValueError, match="wake_encodings = 'collapsed'.*784|70|50 units"):
        DDCHelmholtzMachine.from_options(
            HierarchicalModel([Bernoulli(40), Bernoulli(30, 40), Bernoulli(8, 30)]),
            wake_encodings="collapsed",
        )
    with pytest.raises(ValueError, match="wake_encodings: expected one of"):
        DDCHelmholtzMachine.from_options(model, wake_encodings="exact")
    with pytest.raises(ValueError, match="needs the importance targets"):
        DDCHelmholtzMachine.from_options(model, wake_encodings="importance", recognition="ridge")
    with pytest.raises(ValueError, match="wake_gradient = 'particles'"):
        DDCHelmholtzMachine.from_options(
            model, wake_encodings="amortised", wake_gradient="particles"
        )
    with pytest.raises(TypeError, match="unknown DDC-HM option"):
        DDCHelmholtzMachine.from_options(model, importance_encodings=True)
    with pytest.raises(ValueError, match="preset"):
        DDCHelmholtzMachine.from_options(model, preset="nature")
    # 'importance' on a collapsible chain asks for plain draws
    plain = DDCHelmholtzMachine.from_options(
        make_truth("sbn-hard").model, wake_encodings="importance"
    )
    assert plain.particles.state_bits is None and plain.options.wake.wake_dreams == 2000


def test_the_paper_preset_is_the_algorithm_as_stated():
    ddc = DDCHelmholtzMachine.from_options(make_truth("sbn-gauss").model, preset="paper")
    o = ddc.options
    assert ddc.wake_phase.name == "amortised" and not ddc.wake_phase.auto
    assert o.recogniser.recognition_readout == "adam" and not o.recogniser.wake_recognition
    assert not o.recogniser.moment_heads and o.wake.wake_particles == 0
    assert all(not e.use_products for e in ddc.encodings)
    assert o.maps.exact_ridge is None and o.encodings.recalibrate_every == 0
    # an explicit option overrides the preset
    other = DDCHelmholtzMachine.from_options(
        make_truth("sbn-gauss").model, preset="paper", recognition_readout="ridge"
    )
    assert other.options.recogniser.recognition_readout == "ridge"


PAPER = {
    "data": {"name": "sbn-hard", "n_train": 500, "n_valid": 10, "n_test": 200},
    "algorithm": {
        "name": "ddc",
        "preset": "paper",
        "n_features": [30, 10],
        "sleep_samples": 200,
        "hidden": [32],
    },
    "train": {
        "steps": 10,
        "batch_size": 50,
        "log_every": 5,
        "eval_every": 10,
        "checkpoint_every": 5,
    },
    "evaluate": {"posterior_points": 50},
}


def paper_config(steps):
    config = {k: dict(v) for k, v in PAPER.items()}
    config["train"]["steps"] = steps
    return load_config(config)


def test_the_paper_preset_runs_resumes_and_evaluates(tmp_path, capsys):
    straight = run(paper_config(10), out_dir=tmp_path / "a", progress=False)
    run(paper_config(5), out_dir=tmp_path / "b", progress=False)
    resumed = run(paper_config(10), out_dir=tmp_path / "b", progress=False)
    for p, q in zip(straight["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(p, q)
    records = read_metrics(tmp_path / "b")
    assert {r["wake_phase"] for r in records if "grad_norm" in r} == {"amortised"}
    assert main(["evaluate", str(tmp_path / "b")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 10 and "nll_gap" in summary


def test_the_auto_decision_survives_a_resume(tmp_path):
    config = {k: dict(v) for k, v in PAPER.items()}
    config["algorithm"] = {k: v for k, v in config["algorithm"].items() if k != "preset"}
    config["algorithm"]["wake_check_every"] = 3
    straight = run(load_config(config), out_dir=tmp_path / "a", progress=False)
    config["train"]["steps"] = 5
    run(load_config(config), out_dir=tmp_path / "b", progress=False)
    config["train"]["steps"] = 10
    resumed = run(load_config(config), out_dir=tmp_path / "b", progress=False)
    a, b = straight["algorithm"].wake_phase, resumed["algorithm"].wake_phase
    assert a.decisions == b.decisions and [d[0] for d in a.decisions] == [0, 3, 6, 9]
    for p, q in zip(straight["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(p, q)


def test_the_particle_gradient_ablation_is_the_self_normalised_gradient():
    """wake_gradient = 'particles' with collapsed draws that cover the whole prior is the exact
    gradient of mean log p(x): the states' p / pi weights make the sum over states exact."""
    truth = make_truth("sbn-hard")
    model = truth.model
    x = truth.model.sample(50, generator=1)[0]
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[30, 10], sleep_samples=2000, wake_gradient="particles", lr=1e-3
    )
    before = [p.detach().clone() for p in model.parameters()]
    exact = exact_reference(model)
    model.zero_grad()
    (-exact.log_marginal(x).mean()).backward()
    exact_grad = torch.cat([-p.grad.flatten() for p in model.parameters()])
    captured = {}

    def capture(optimizer, params, ascent, names):
        captured.update(ascent)
        return 0.0

    import ddchm.ddc.machine as machine

    original, machine.apply_ascent = machine.apply_ascent, capture
    try:
        ddc.step(x)
    finally:
        machine.apply_ascent = original
    estimate = torch.cat([captured[n].flatten() for n in ddc.param_names])
    cosine = torch.nn.functional.cosine_similarity(estimate, exact_grad, dim=0)
    assert cosine > 0.99, float(cosine)  # flipping a term's sign drops it far below
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_probes_do_not_change_the_run():
    """wake_phase_encodings and theta_gradient draw from generators of their own."""
    truth = make_truth("sbn-hard")
    x = truth.model.sample(60, generator=1)[0]
    machines = [
        DDCHelmholtzMachine.from_options(m, n_features=[30, 10], sleep_samples=200)
        for m in (truth.model, make_truth("sbn-hard").model)
    ]
    for step in range(3):
        if step == 1:
            machines[1].wake_phase_encodings(x[:10])
            machines[1].theta_gradient(x[:10])
        for machine in machines:
            machine.step(x[20 * step : 20 * step + 20])
    for p, q in zip(machines[0].model.parameters(), machines[1].model.parameters()):
        assert torch.equal(p, q)


def test_blend_never_leaks_a_non_finite_side():
    t, r = [torch.ones(3, 2)], [torch.full((3, 2), float("nan"))]
    out = blend(r, t, torch.tensor([10.0, 20.0, 5.0]), 10.0)[0]
    assert torch.equal(out[:2], torch.ones(2, 2)) and torch.isnan(out[2]).all()
    out = blend(
        [torch.zeros(2, 1)], [torch.full((2, 1), float("inf"))], torch.tensor([0.0, 0.0]), 10.0
    )[0]
    assert torch.equal(out, torch.zeros(2, 1))


def test_mps_is_refused_with_the_reason():
    from ddchm.experiment import ConfigError, resolve_device

    with pytest.raises(ConfigError, match="'mps' is not supported: .*float64"):
        resolve_device("mps")
