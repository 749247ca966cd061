"""Model quality of any run: `ddchm evaluate` (IS / exact log-likelihood, MMD) and CPU budgets."""

import json
import math

import numpy as np
import torch

from ddchm.cli import main
from ddchm.data import make_truth
from ddchm.evaluate.quality import is_enumerable, model_quality
from ddchm.experiment import load_config, run

FAST = ["--particles", "50", "--points", "100", "--proposal-steps", "100", "--no-progress"]


def test_cli_trains_on_a_real_valued_array_file_and_evaluates_it(tmp_path, capsys):
    x = make_truth("mixed").model.sample(400, generator=3)[0].numpy()
    np.save(tmp_path / "x.npy", x)
    config = tmp_path / "array.toml"
    config.write_text(
        f'[data]\nsource = "array"\npath = "{tmp_path / "x.npy"}"\n'
        '[model]\nlayers = [{family = "gaussian", dim = 3}, {family = "gaussian", dim = 16}]\n'
        '[algorithm]\nname = "vae"\nhidden = [16]\n'
        "[train]\nsteps = 30\nbatch_size = 40\neval_every = 30\n"
    )
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 30 and "exact_ll" not in summary  # continuous latents
    for key in ("is_ll_fitted", "is_ll_own", "mmd2", "mmd2_floor", "mmd_p_value"):
        assert math.isfinite(summary[key]), key
    # a 30-step model is far from the data: its MMD is well above the floor and significant
    assert summary["mmd2"] > 10 * abs(summary["mmd2_floor"]) and summary["mmd_p_value"] < 0.05
    assert 1 <= summary["is_ll_fitted_ess"] <= 50 and summary["is_ll_fitted_se"] > 0


def test_evaluate_reports_importance_sampled_likelihood_and_mmd_when_not_enumerable(
    tmp_path, capsys
):
    config = tmp_path / "mixed.toml"
    config.write_text(
        '[data]\nname = "mixed"\nn_train = 1000\nn_test = 300\n'
        '[algorithm]\nname = "ws"\nhidden = [32]\n[train]\nsteps = 40\nbatch_size = 50\n'
    )
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["algorithm"] == "ws" and "exact_ll" not in summary
    for key in ("is_ll_fitted", "is_ll_own", "is_ll_own_ess", "mmd2", "mmd_p_value"):
        assert math.isfinite(summary[key]), key
    assert summary["train_cpu_s"] > 0


def test_fitted_proposal_estimate_matches_exact_likelihood_and_truth_sits_at_the_floor():
    truth = make_truth("sbn-hard")
    data = truth.splits(2000, 0, 400, seed=1)
    assert is_enumerable(truth.model)
    quality = model_quality(
        truth.model,
        data["test"],
        data["train"],
        n_points=200,
        n_particles=100,
        importance=True,  # beside the exact value: IS is measured against it
        proposal_steps=300,
        n_permutations=100,
        mmd_samples=400,
    )
    # IS with K particles is a lower bound in expectation, and close with a fitted q
    gap = quality["exact_ll"] - quality["is_ll_fitted"]
    assert -4 * quality["is_ll_fitted_mc_se"] - 1e-3 < gap < 0.05
    # the true model's samples are not told apart from held-out data
    assert quality["mmd_p_value"] > 0.05
    assert abs(quality["mmd2"] - quality["mmd2_floor"]) < 0.01


def test_max_cpu_seconds_stops_training_and_records_cpu_time(tmp_path):
    config = load_config(
        {
            "data": {"name": "sbn-hard", "n_train": 500, "n_test": 100},
            "algorithm": {"name": "ws", "hidden": [16]},
            "train": {
                "steps": 10**6,
                "max_cpu_seconds": 0.3,
                "eval_every": 10**9,
                "log_every": 10**9,
            },
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # process time then counts one thread's work
    try:
        result = run(config, out_dir=tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert 0.3 <= result["final"]["cpu_time"] < 3 and result["final"]["step"] < 10**6


def test_reproduce_records_a_diverged_method_and_goes_on(tmp_path, monkeypatch):
    import ddchm.reproduce as reproduce
    from ddchm.train import DivergenceError

    real_run = reproduce.run

    def run_or_diverge(config, **kwargs):
        if config["algorithm"]["name"] == "ddc":
            raise DivergenceError("training diverged at step 3: metric grad_norm = nan")
        return real_run(config, **kwargs)

    monkeypatch.setattr(reproduce, "run", run_or_diverge)
    monkeypatch.setitem(reproduce.SETTINGS, "synthetic", ("sbn-hard",))
    threads = torch.get_num_threads()
    try:
        tables = reproduce.reproduce("synthetic", tmp_path, seeds=1, quick=True, log=lambda _: 0)
    finally:
        torch.set_num_threads(threads)
    table = tables["synthetic"].read_text()
    assert "| ddc (1 diverged) | 0/1 |" in table
    assert "| ws | 1/1 |" in table and "| vimco | 1/1 |" in table and "true model" in table
    results = json.loads((tmp_path / "synthetic" / "results.json").read_text())
    assert results[0]["methods"]["ddc"][0]["status"] == "diverged"
    assert (tmp_path / "synthetic" / "sbn-hard" / "samples.png").stat().st_size > 5000


SMALL_TOML = (
    '[data]\nname = "sbn-hard"\nn_train = 300\nn_test = 100\n'
    '[algorithm]\nname = "ddc"\nn_features = [20, 10]\nsleep_samples = 100\nhidden = [16]\n'
    "[train]\nsteps = 40\nbatch_size = 30\neval_every = 10\n"
)


def test_train_ends_with_figures_and_held_out_quality(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "held-out log p(x) [exact]" in printed and "MMD^2 to held-out data" in printed
    for name in ("learning_curve.png", "samples.png"):
        assert (out / name).stat().st_size > 5000


def test_compare_matches_cpu_budgets_and_keeps_the_table_compact(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML)
    out = tmp_path / "cmp"
    threads = torch.get_num_threads()
    try:
        args = ["compare", str(config), "--algorithms", "ddc,ws", "--seeds", "1", "--out"]
        assert main([*args, str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    finals = json.loads((out / "comparison.json").read_text())
    ddc, ws = finals["ddc"][0], finals["ws"][0]
    assert ddc["step"] == 40 and ws["step"] != 40  # ws ran for DDC-HM's CPU time, not its steps
    assert ddc["cpu_time"] <= ws["cpu_time"] < ddc["cpu_time"] + 0.1
    header = next(line for line in (out / "comparison.md").read_text().splitlines() if "|" in line)
    assert "map_r2" not in header and "recognition_loss" not in header
    assert "nll_gap" in header and "cpu_time" in header and header.count("|") <= 10
    assert "recognition_loss" in ddc  # internal diagnostics stay in the JSON


def test_ddc_runs_are_also_measured_through_their_own_recogniser():
    """DDC-HM's own q (the mean-field proposal of its expected encodings) gives an importance-
    sampled log-likelihood that sits just below the exact one on an enumerable model."""
    from ddchm.ddc import DDCHelmholtzMachine

    truth = make_truth("sbn-hard")
    data = truth.splits(2000, 0, 400, seed=1)
    model = truth.model.float()
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[50, 20], sleep_samples=500, generator=0
    )
    ddc.fit_recognition(200, data=data["train"].float())
    quality = model_quality(
        model,
        data["test"],
        n_points=200,
        n_particles=200,
        importance=True,  # beside the exact value: the own q is measured against it
        proposal_steps=0,
        mmd_samples=100,
        n_permutations=1,
        algorithm=ddc,
    )
    # a mean-field q over explaining-away binary units: a few hundredths of a nat below
    gap = quality["exact_ll"] - quality["is_ll_own"]
    assert -4 * quality["is_ll_own_mc_se"] - 1e-3 < gap < 0.15, gap
    assert quality["is_ll_own_ess"] > 20
