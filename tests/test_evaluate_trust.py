"""Issue 26: held-out log-likelihoods a researcher can trust where latents cannot be enumerated.

AIS and importance sampling at the default 5,000 particles against exact enumeration on the
``sbn-hard`` and ``sbn-easy`` truths and briefly trained models of them; the SBN Gibbs fast path
against the generic one; AIS against IS with 10^5 particles on a wide model (slow); the ESS
diagnostics and warning; the CLI flags, the compare table's log-likelihood column and the
CPU-time evaluation schedule.
"""

import json
import math

import pytest
import torch

from ddchm.cli import main
from ddchm.data import make_truth
from ddchm.evaluate.ais import _AnnealedChain, ais_log_likelihood, prior_spread
from ddchm.evaluate.likelihood import fit_proposal, importance_log_likelihood
from ddchm.evaluate.quality import model_quality
from ddchm.experiment import load_config, run
from ddchm.models import Bernoulli, ExactInference, HierarchicalModel

TOLERANCE = 0.05  # nats per point: the bar for AIS and IS against the exact value


def truth_and_points(name, n=50):
    truth = make_truth(name)
    model = truth.model.double()
    x = truth.splits(2000, 0, n, seed=3)["test"].double()
    with torch.no_grad():
        exact = ExactInference(model).log_marginal(x)
    return truth, model, x, exact


def briefly_trained(truth, steps=300):
    """A wake-sleep model of the truth's shape, trained for a few hundred steps (seeded)."""
    config = load_config(
        {
            "data": {"name": truth.name, "n_train": 2000, "n_test": 50},
            "model": {"dtype": "float64"},
            "algorithm": {"name": "ws", "hidden": [32]},
            "train": {"steps": steps, "eval_every": 10**6, "log_every": 10**6},
        }
    )
    return run(config, progress=False)["model"]


def check_close(result, exact, tolerance=TOLERANCE):
    """The mean over points within ``tolerance`` of the exact mean and within 4 Monte Carlo
    standard errors of it; every point within 4 of its own (plus 0.05 nats: the per-point
    delta-method error is itself noisy)."""
    errors = (result.log_px - exact).detach()
    assert abs(float(errors.mean())) < tolerance, float(errors.mean())
    assert abs(float(errors.mean())) < 4 * result.mc_stderr + 0.01, (errors.mean(), result)
    z = errors / (result.log_px_stderr.square() + 0.05**2).sqrt()
    assert float(z.abs().max()) < 4, z
    return errors


@pytest.mark.parametrize("name", ["sbn-hard", "sbn-easy"])
def test_ais_matches_exact_log_likelihood_of_the_truth(name):
    _, model, x, exact = truth_and_points(name)
    result = ais_log_likelihood(model, x, n_chains=16, n_steps=1000, generator=0)
    check_close(result, exact)
    assert result.info["log_w_std"] < 1.0  # the chains agree: the bias diagnostic is small


@pytest.mark.parametrize("name", ["sbn-hard", "sbn-easy"])
def test_importance_sampling_at_5000_particles_matches_exact_log_likelihood(name):
    _, model, x, exact = truth_and_points(name)
    proposal = fit_proposal(model, n_steps=300, sleep_samples=500, generator=1)
    result = importance_log_likelihood(model, x, proposal, n_particles=5000, generator=2)
    check_close(result, exact)
    assert float(result.ess.median()) > 100


def test_sbn_gibbs_fast_path_draws_what_the_generic_scan_draws():
    """The incremental-logit Gibbs scan and the one that re-evaluates the child layer per unit,
    fed the same uniforms, make the same moves (a wrong sign in a conditional would not)."""
    torch.manual_seed(0)
    model = HierarchicalModel([Bernoulli(5), Bernoulli(12, 5), Bernoulli(30, 12)]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(15.0)  # strong weights: conditionals far from 1/2, so errors show
    x = model.sample(20, generator=1)[0]
    moves = {"binary": "gibbs", "continuous": "hmc", "n_leapfrog": 1, "step_size": None}
    moves.update(adapt_rate=0.0, target_accept=0.5, spread=prior_spread(model, 0))
    states = []
    for fast in (True, False):
        chain = _AnnealedChain(model, x, 4, torch.Generator().manual_seed(5), moves)
        chain.sbn_fast_path = fast
        for beta in (0.3, 0.7, 1.0):
            chain.sweep(beta)
        states.append([z.clone() for z in chain.z[1:]])
    for fast, slow in zip(*states):
        assert torch.equal(fast, slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sbn-hard", "sbn-easy"])
def test_ais_and_is_match_exact_log_likelihood_of_a_briefly_trained_model(name):
    truth, _, x, _ = truth_and_points(name)
    model = briefly_trained(truth)
    with torch.no_grad():
        exact = ExactInference(model).log_marginal(x)
    check_close(ais_log_likelihood(model, x, n_chains=16, n_steps=1000, generator=0), exact)
    proposal = fit_proposal(model, n_steps=300, sleep_samples=500, generator=1)
    check_close(importance_log_likelihood(model, x, proposal, n_particles=5000), exact)


def test_a_briefly_trained_model_is_measured_by_ais_within_tolerance():
    """A short wake-sleep run (fast version of the slow test above; sbn-hard only)."""
    truth, _, x, _ = truth_and_points("sbn-hard", n=30)
    model = briefly_trained(truth, steps=150)
    with torch.no_grad():
        exact = ExactInference(model).log_marginal(x)
    check_close(ais_log_likelihood(model, x, n_chains=16, n_steps=1000, generator=0), exact)


@pytest.mark.slow
def test_ais_agrees_with_importance_sampling_at_10_5_particles_on_a_wide_model():
    """No enumeration on 10-40-200: IS with 100,000 particles through a fitted proposal is the
    reference; AIS with 16 chains x 2,000 temperatures must agree within the two estimators'
    errors (both are lower bounds in expectation, so neither may sit far above the other)."""
    torch.manual_seed(0)
    model = HierarchicalModel.from_config(
        [
            {"family": "bernoulli", "dim": 10, "init_scale": 1.0},
            {"family": "bernoulli", "dim": 40, "init_scale": 1.0},
            {"family": "bernoulli", "dim": 200, "init_scale": 0.5},
        ]
    ).double()
    x = model.sample(20, generator=1)[0]
    proposal = fit_proposal(model, n_steps=1000, sleep_samples=1000, generator=1)
    reference = importance_log_likelihood(
        model, x, proposal, n_particles=100_000, particle_chunk=2000, generator=2
    )
    assert float(reference.ess.median()) > 50
    ais = ais_log_likelihood(model, x, n_chains=16, n_steps=2000, generator=0)
    difference = float((ais.log_px - reference.log_px).mean())
    allowed = 4 * math.hypot(ais.mc_stderr, reference.mc_stderr) + 0.02
    assert abs(difference) < max(allowed, TOLERANCE), (difference, allowed)


def test_quality_reports_ess_spread_ais_and_names_its_estimator():
    truth = make_truth("mixed")  # continuous latents: no enumeration
    data = truth.splits(500, 0, 100, seed=1)
    few = model_quality(
        truth.model,
        data["test"],
        n_points=40,
        n_particles=3,
        proposal_steps=20,
        mmd_samples=50,
        n_permutations=0,
        ais_chains=4,
        ais_steps=3,
        ais_points=10,
    )
    for key in ("ess", "ess_median", "ess_q10", "ess_min", "low_ess", "cpu_s"):
        assert math.isfinite(few[f"is_ll_fitted_{key}"]), key
    assert few["is_ll_fitted_ess_min"] <= few["is_ll_fitted_ess_median"] <= 3
    assert few["is_ll_fitted_low_ess"] == 1.0  # 3 particles: every point below 10
    assert any("median effective sample size" in w for w in few["warnings"])
    # 3 temperatures: the chains disagree by many nats, and the output says so
    assert few["ais_log_w_std"] > 2 and any("AIS: log w spreads" in w for w in few["warnings"])
    assert few["log_likelihood_estimator"] == "ais" and few["log_likelihood"] == few["ais_ll"]
    assert "AIS on 10 held-out points, 4 chains x 3 temperatures" in few["protocol"]
    assert few["ais_points"] == 10 and math.isfinite(few["ais_minus_is"])
    assert few["ais_log_w_std"] > 0 and few["ais_cpu_s"] > 0
    many = model_quality(
        truth.model,
        data["test"],
        n_points=40,
        n_particles=2000,
        proposal_steps=200,
        mmd_samples=50,
        n_permutations=0,
    )
    assert many["warnings"] == [] and many["log_likelihood_estimator"] == "is"
    assert many["is_ll_fitted_ess_median"] > 10
    with pytest.raises(ValueError, match="ais_steps"):
        model_quality(truth.model, data["test"], ais_chains=2, ais_steps=0)
    with pytest.raises(ValueError, match="min_ess"):
        model_quality(truth.model, data["test"], min_ess=0.5)


@pytest.mark.parametrize(
    "flag, value", [("--ais-steps", "0"), ("--ais-chains", "-1"), ("--particles", "0")]
)
def test_bad_evaluation_flags_are_named(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "some-run", "--ais", flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}: expected a positive integer, got {value}" in capsys.readouterr().err


def test_cpu_schedule_gives_a_learning_curve_of_at_least_ten_points(tmp_path):
    config = load_config(
        {
            "data": {"name": "mixed", "n_train": 500, "n_test": 100},
            "algorithm": {"name": "ws", "hidden": [16]},
            "train": {"steps": 10**6, "max_cpu_seconds": 1.0, "eval_every": 10**9},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = run(config, progress=False, curve_points=12)["records"]
    finally:
        torch.set_num_threads(threads)
    evaluated = [r for r in records if "mmd2" in r]
    assert len(evaluated) >= 11  # the start, about 12 on the CPU schedule, the end
    cpu = [r["cpu_time"] for r in evaluated]
    assert cpu == sorted(cpu) and max(b - a for a, b in zip(cpu, cpu[1:])) < 0.3


def test_compare_on_a_model_without_enumeration_tabulates_ais_and_is(tmp_path, capsys):
    config = tmp_path / "mixed.toml"
    config.write_text(
        '[data]\nname = "mixed"\nn_train = 400\nn_test = 100\n'
        '[algorithm]\nname = "ws"\nhidden = [16]\n'
        "[train]\nsteps = 1000000\nbatch_size = 50\neval_every = 1000000\n"
    )
    out = tmp_path / "cmp"
    threads = torch.get_num_threads()
    try:
        code = main(
            [
                "compare",
                str(config),
                "--algorithms",
                "ws,rws",
                "--seeds",
                "1",
                "--cpu-seconds",
                "0.6",
                "--points",
                "30",
                "--particles",
                "200",
                "--ais-points",
                "10",
                "--ais-steps",
                "20",
                "--ais-chains",
                "4",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    report = (out / "comparison.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| algorithm"))
    assert "log p(x) [AIS]" in header and "log p(x) [IS]" in header and "IS ESS median" in header
    assert "AIS on 10 held-out points, 4 chains x 20 temperatures" in report
    finals = json.loads((out / "comparison.json").read_text())
    assert all(math.isfinite(finals[a][0]["log p(x) [AIS]"]) for a in ("ws", "rws"))
    metrics = (out / "ws-seed0" / "metrics.jsonl").read_text().splitlines()
    assert sum("mmd2" in line for line in metrics) >= 11


def test_reproduce_names_ais_as_the_estimator_where_latents_are_continuous(tmp_path):
    import ddchm.reproduce as reproduce

    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(reproduce.SETTINGS, "synthetic", ("mixed",))
            patch.setattr(reproduce, "methods_for", lambda config, model: ["ddc", "ws"])
            tables = reproduce.reproduce("synthetic", tmp_path, seeds=1, quick=True, log=print)
    finally:
        torch.set_num_threads(threads)
    table = tables["synthetic"].read_text()
    assert "log p(x): AIS log-likelihood" in table and "2 chains x 5 temperatures" in table
    assert "CPU s per 1,000 points" in table
    results = json.loads((tmp_path / "synthetic" / "results.json").read_text())
    for record in results[0]["methods"]["ws"]:
        assert record["log_likelihood_estimator"] == "ais"
        assert record["log_likelihood"] == record["ais_ll"]
        assert len(record["curve"]) >= 2 and all("mmd2" in p for p in record["curve"])
        # the curve's MMD points are the table's: its last point is the row's figure
        assert record["curve"][-1]["mmd2"] == pytest.approx(record["mmd2"], rel=1e-6)
