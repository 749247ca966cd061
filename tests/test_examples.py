"""The examples/ scripts run as a researcher runs them (a fresh process, one thread, a tiny
budget) and print real figures; every config in configs/ loads."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from ddchm.data import make_truth
from ddchm.experiment import load_config, run
from ddchm.models import gaussian_chain_log_marginal

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_every_example_says_how_to_run_it():
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert {p.name for p in scripts} >= {"own_binary_data.py", "continuous_chain.py", "plot_run.py"}
    for path in scripts:
        source = path.read_text()
        docstring = source.split('"""')[1]
        assert "Run::" in docstring and f"examples/{path.name}" in docstring, path.name
        assert "argparse" in source, path.name


def test_own_binary_data_prints_exact_likelihoods_below_the_generating_process():
    done = run_example(
        "own_binary_data.py", "--cpu-seconds", 1, "--points", 1000, "--eval-points", 100
    )
    result = last_json(done.stdout)
    truth = result.pop("truth_log_likelihood")
    assert math.isfinite(truth) and -16 * math.log(2) < truth < 0  # 16 binary pixels
    assert set(result) == {"ddc", "rws"}
    for name, figures in result.items():
        assert figures["estimator"] == "exact", name
        assert figures["steps"] > 0 and figures["train_cpu_s"] >= 1.0, name
        # one CPU second of training does not reach the process that drew the data
        assert -16 * math.log(2) - 5 < figures["log_likelihood"] < truth, name
        assert math.isfinite(figures["mmd2"]) and math.isfinite(figures["mmd2_floor"]), name
        assert f"{name}: {figures['steps']} steps" in done.stdout


def test_own_binary_data_reads_a_file_and_refuses_a_non_binary_one(tmp_path):
    rng = np.random.default_rng(0)
    good = (rng.random((400, 6)) < 0.3).astype(np.float32)
    np.save(tmp_path / "mine.npy", good)
    done = run_example(
        "own_binary_data.py",
        *("--data", tmp_path / "mine.npy", "--latents", "3", "--cpu-seconds", 0.5),
        "--eval-points",
        40,
    )
    result = last_json(done.stdout)
    assert set(result) == {"ddc", "rws"}  # no generating process to compare with
    assert "train 320, test 40 rows of 6 units" in done.stdout
    for figures in result.values():
        assert figures["estimator"] == "exact"
        assert -6 * math.log(2) - 5 < figures["log_likelihood"] < 0

    good[3, 2] = 0.5
    np.save(tmp_path / "grey.npy", good)
    done = run_example("own_binary_data.py", "--data", tmp_path / "grey.npy", check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "grey.npy" in lines[0] and "row 4, column 3" in lines[0]


def test_continuous_chain_prints_the_closed_form_likelihoods_of_learned_and_truth():
    done = run_example(
        "continuous_chain.py", "--cpu-seconds", 1, "--n-train", 1000, "--n-test", 100
    )
    result = last_json(done.stdout)
    assert result["truth"] == "linear-gaussian" and result["estimator"] == "closed form"
    assert result["diverged"] is None and result["steps"] > 0
    # the truth's figure is its closed-form log-likelihood of the same held-out draw
    truth = make_truth("linear-gaussian")
    test = truth.splits(n_train=1000, n_valid=0, n_test=100, seed=1)["test"]
    with torch.no_grad():
        expected = float(gaussian_chain_log_marginal(truth.model, test).mean())
    assert result["truth_log_likelihood"] == pytest.approx(expected, abs=1e-9)
    assert math.isfinite(result["learned_log_likelihood"])
    assert result["gap"] == pytest.approx(
        result["truth_log_likelihood"] - result["learned_log_likelihood"]
    )
    assert result["gap"] > 0  # a second of training from small random weights


TINY_RUN = """
[data]
source = "synthetic"
name = "sbn-easy"
n_train = 500
n_test = 200

[model]
architecture = "truth"

[algorithm]
name = "rws"

[train]
steps = 40
batch_size = 50
log_every = 10
eval_every = 20
checkpoint_every = 40

[evaluate]
points = 100
"""


def test_plot_run_draws_the_curves_of_a_run_directory(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_RUN)
    run(load_config(tmp_path / "tiny.toml"), out_dir=tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]

    png = tmp_path / "figures" / "curves.png"
    done = run_example("plot_run.py", tmp_path / "run", "--metric", "bound", "--out", png)
    summary = last_json(done.stdout)
    assert summary["png"] == str(png.resolve()) and f"wrote {png.resolve()}" in done.stdout
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600 and image[..., :3].std() > 0.05
    plotted = summary["runs"][str(tmp_path / "run")]
    assert plotted["points"] == {
        "test_nll": sum("test_nll" in r for r in records),
        "bound": sum("bound" in r for r in records),
    }
    assert plotted["points"]["test_nll"] >= 3 and plotted["points"]["bound"] >= 4
    last_nll = [r["test_nll"] for r in records if "test_nll" in r][-1]
    assert plotted["last_test_nll"] == pytest.approx(last_nll)

    done = run_example("plot_run.py", tmp_path / "run", "--metric", "bund", check=False)
    assert done.returncode != 0 and "no run logged 'bund'" in done.stderr
    assert "bound" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_config_in_configs_loads(path):
    config = load_config(path)
    assert config["algorithm"]["name"] in ("ddc", "ws", "rws", "vimco", "vae", "iwae")


def test_the_mnist_config_has_the_reproduce_settings():
    mine = load_config(ROOT / "configs" / "mnist-ddc.toml")
    reproduce = load_config(ROOT / "src" / "ddchm" / "configs" / "reproduce" / "mnist-sbn2.toml")
    for section in ("data", "model", "algorithm"):
        assert mine[section] == reproduce[section], section
    assert mine["train"]["batch_size"] == reproduce["train"]["batch_size"]
    assert mine["train"]["max_cpu_seconds"] == 600
