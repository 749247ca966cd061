"""What an evaluation computes, what it costs and on which points: exact alone where log p(x)
can be enumerated, a cheap named summary at the end of `ddchm train`, exact and AIS on the same
points, and learning curves that end on their table row."""

import json
import math
import re

import pytest
import torch

from ddchm.cli import main
from ddchm.evaluate.quality import (
    SUMMARY_POINTS,
    SUMMARY_WORK,
    model_quality,
    sized_particles,
    summary_protocol,
)
from ddchm.models import Bernoulli, HierarchicalModel

SBN_HARD = (
    '[data]\nname = "sbn-hard"\nn_train = 300\nn_test = 200\n'
    '[algorithm]\nname = "ddc"\nn_features = [20, 10]\nsleep_samples = 100\nhidden = [16]\n'
    "[train]\nsteps = 20\nbatch_size = 30\neval_every = 20\n"
)
MIXED_WS = (  # continuous latents: no enumeration
    '[data]\nname = "mixed"\nn_train = 1000\nn_test = 300\n'
    '[algorithm]\nname = "ws"\nhidden = [32]\n[train]\nsteps = 40\nbatch_size = 50\n'
)


def trained(tmp_path, toml, capsys, *flags):
    config = tmp_path / "c.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress", *flags]) == 0
    return out, capsys.readouterr()


def test_evaluate_on_an_enumerable_model_gives_the_exact_value_and_nothing_else(tmp_path, capsys):
    out, _ = trained(tmp_path, SBN_HARD, capsys)
    assert main(["evaluate", str(out), "--no-progress", "--permutations", "0"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["log_likelihood_estimator"] == "exact"
    assert not [k for k in summary if k.startswith("is_ll") or k.startswith("ais")]
    assert ": exact log p(x) on 200 of 200 held-out points; MMD^2" in captured.err
    assert summary["eval_cpu_s"] < 5  # enumeration and one MMD: no proposal fit, no particles
    # importance sampling beside the exact value only when asked, on the points it names
    flags = ["--importance-sampling", "--particles", "50", "--is-points", "30"]
    assert main(["evaluate", str(out), "--no-progress", "--permutations", "0", *flags]) == 0
    asked = json.loads(capsys.readouterr().out)
    assert asked["exact_ll"] == summary["exact_ll"]
    assert asked["is_points"] == 30 and asked["n_particles"] == 50
    assert math.isfinite(asked["is_ll_fitted"]) and math.isfinite(asked["is_ll_own"])
    assert "exact_ll_on_is_points" in asked
    assert "IS on 30 held-out points (the first of the 200), 50 particles" in asked["protocol"]


def test_exact_and_ais_are_reported_on_the_same_points(tmp_path, capsys):
    """`evaluate --ais` on an enumerable model: AIS measures the first --ais-points points, and
    the exact value on those very points sits beside it. Compared with the exact value on all
    the points instead, the two differ by more than the tolerance: the test catches a points
    mismatch (the issue's -3.146 against -2.976)."""
    out, _ = trained(tmp_path, SBN_HARD, capsys)
    flags = ["--ais", "--ais-steps", "1000", "--ais-points", "40", "--permutations", "0"]
    assert main(["evaluate", str(out), "--no-progress", *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ais_points"] == 40 and summary["n_points"] == 200
    same_points = summary["ais_ll"] - summary["exact_ll_on_ais_points"]
    assert abs(same_points) < 0.05, same_points
    assert summary["ais_ll_mc_se"] < 0.02  # the tolerance is not swamped by noise
    assert abs(summary["ais_ll"] - summary["exact_ll"]) > 0.05  # what a mismatch would give
    assert "AIS on 40 held-out points" in summary["protocol"]
    assert "the first 40 of the 200 points" in summary["protocol"]


def test_train_summary_is_cheap_named_and_warns_only_about_what_it_prints(tmp_path, capsys):
    out, captured = trained(tmp_path, MIXED_WS, capsys)
    line = next(s for s in captured.out.splitlines() if s.startswith("held-out log p(x)"))
    k = re.search(r"\[IS through the algorithm's own q, (\d+) particles\]", line)
    assert k is not None, line
    assert "median ESS" in line and "the first 100 of the 300 points of test split" in line
    assert not any("fitted" in s for s in captured.out.splitlines() if s.startswith("held-out"))
    warnings = [s for s in captured.err.splitlines() if "warning:" in s]
    assert all("own q" in w for w in warnings), warnings  # none about an unprinted estimate
    assert re.search(r"\(a summary: [\d.]+ CPU s; `--full-evaluation`", captured.out)
    # the MMD is training's last evaluation's, on the run's held-out points
    last = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()][-1]
    printed = float(re.search(r"MMD\^2 to held-out data: (\S+)", captured.out).group(1))
    assert printed == pytest.approx(last["mmd2"], rel=1e-5)


def test_full_evaluation_flag_gives_the_evaluate_protocol(tmp_path, capsys):
    _, captured = trained(tmp_path, MIXED_WS, capsys, "--full-evaluation")
    lines = [s for s in captured.out.splitlines() if s.startswith("held-out log p(x)")]
    assert any("[IS through a fitted proposal," in s for s in lines), lines
    assert any("[IS through the algorithm's own q," in s for s in lines), lines
    assert all("(test split: 300 of 300 points (seed 0))" in s for s in lines), lines
    assert "`ddchm evaluate`'s protocol" in captured.out and "floor" in captured.out


def test_particles_are_sized_so_importance_sampling_cost_stays_bounded():
    narrow = HierarchicalModel([Bernoulli(4), Bernoulli(10, 4), Bernoulli(8, 10)])
    wide = HierarchicalModel([Bernoulli(20), Bernoulli(100, 20), Bernoulli(784, 100)])
    assert sized_particles(narrow, 500, 2e11) == 5000  # small models keep the full protocol
    parameters = sum(p.numel() for p in wide.parameters())
    k = sized_particles(wide, SUMMARY_POINTS, SUMMARY_WORK, most=1000)
    assert 10 <= k < 1000 and 2 * SUMMARY_POINTS * k * parameters <= SUMMARY_WORK
    protocol = summary_protocol(wide, None, 500)  # no own q: a small fitted proposal
    assert protocol["is_points"] == SUMMARY_POINTS and 0 < protocol["proposal_steps"] <= 50
    assert protocol["n_particles"] == k and protocol["n_permutations"] == 0


def test_importance_sampling_is_only_where_needed_unless_asked():
    torch.manual_seed(0)
    model = HierarchicalModel([Bernoulli(3), Bernoulli(6, 3)])
    x = model.sample(60, generator=1)[0]
    sizes = dict(n_points=40, n_particles=20, proposal_steps=5, mmd_samples=30, n_permutations=0)
    plain = model_quality(model, x, **sizes)
    assert "exact_ll" in plain and "is_ll_fitted" not in plain and "n_particles" not in plain
    asked = model_quality(model, x, importance=True, is_points=10, **sizes)
    assert asked["exact_ll"] == plain["exact_ll"] and asked["is_points"] == 10
    assert asked["log_likelihood_estimator"] == "exact" and "is_ll_fitted" in asked
    with pytest.raises(ValueError, match="importance"):
        model_quality(model, x, importance="yes", **sizes)
    with pytest.raises(ValueError, match="is_points"):
        model_quality(model, x, is_points=0, **sizes)


def test_reproduce_curves_end_on_their_table_rows(tmp_path):
    """`reproduce --quick`: each method's learning curve ends on the figure its table row
    reports, measured by the same estimator on the same held-out points."""
    import ddchm.reproduce as reproduce

    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(reproduce.SETTINGS, "synthetic", ("sbn-hard",))
            patch.setattr(reproduce, "methods_for", lambda config, model: ["ddc", "ws"])
            reproduce.reproduce("synthetic", tmp_path, seeds=1, quick=True, log=print)
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "synthetic" / "results.json").read_text())
    for method, records in results[0]["methods"].items():
        record = records[0]
        assert record["log_likelihood_estimator"] == "exact", method
        end = record["curve"][-1]
        assert -end["test_nll"] == pytest.approx(record["log_likelihood"], abs=1e-6), method
        assert record["heldout"].startswith(f"test split: {int(record['n_points'])} of")
