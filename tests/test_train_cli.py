"""The training loop, configs and the command line: resumption, bad input, outputs."""

import json

import numpy as np
import pytest
import torch

from ddchm.cli import main
from ddchm.experiment import ConfigError, load_config, run
from ddchm.train import CheckpointError, read_metrics

SMALL = {
    "data": {"name": "sbn-hard", "n_train": 500, "n_valid": 10, "n_test": 200},
    "algorithm": {"name": "ddc", "n_features": [30, 10], "sleep_samples": 200, "hidden": [32]},
    "train": {
        "steps": 20,
        "batch_size": 50,
        "log_every": 5,
        "eval_every": 10,
        "checkpoint_every": 10,
    },
    "evaluate": {"posterior_points": 50},
}


def small_config(**train):
    config = {k: dict(v) for k, v in SMALL.items()}
    config["train"].update(train)
    return load_config(config)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = run(small_config(steps=20), out_dir=tmp_path / "a", progress=False)
    run(small_config(steps=10), out_dir=tmp_path / "b", progress=False)
    resumed = run(small_config(steps=20), out_dir=tmp_path / "b", progress=False)
    for p, q in zip(straight["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(p, q)
    steps = [r["step"] for r in read_metrics(tmp_path / "b")]
    assert steps == [r["step"] for r in read_metrics(tmp_path / "a")]
    assert steps == sorted(set(steps))  # no step logged twice after resuming
    assert "nll_gap" in straight["final"] and "posterior_mae" in straight["final"]


def test_corrupt_checkpoint_is_reported_and_not_overwritten(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="checkpoint.pt: cannot read the checkpoint"):
        run(small_config(), out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_unknown_config_keys_are_named():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stepz'\] in \[train\]"):
        load_config({"train": {"stepz": 10}})
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]"):
        load_config({"trian": {}})
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['learning_rate'\]"):
        load_config({"algorithm": {"name": "ddc", "learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="unknown algorithm 'ddcc'"):
        load_config({"algorithm": {"name": "ddcc"}})


def test_bad_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.toml: config file not found"):
        load_config(tmp_path / "missing.toml")


def test_cli_train_evaluate_sample_and_list(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(
        '[data]\nname = "sbn-hard"\nn_train = 300\nn_test = 100\n'
        '[algorithm]\nname = "ddc"\nn_features = [20, 10]\nsleep_samples = 100\nhidden = [16]\n'
        "[train]\nsteps = 10\nbatch_size = 30\neval_every = 10\n"
    )
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "exact NLL gap to the true model" in printed and "posterior accuracy" in printed
    assert "DDC-HM wake phase: auto" in printed and "wake phase: collapsed (step 0" in printed
    assert main(["evaluate", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 10 and "nll_gap" in summary
    assert (
        main(["sample", "sbn-easy", "-n", "7", "--seed", "3", "-o", str(tmp_path / "s.npz")]) == 0
    )
    arrays = np.load(tmp_path / "s.npz")
    assert arrays["x"].shape == (7, 30) and arrays["z2"].shape == (7, 4)
    assert main(["sample", str(out), "-n", "4", "-o", str(tmp_path / "m.npy")]) == 0
    assert np.load(tmp_path / "m.npy").shape == (4, 8)
    assert main(["data", "list"]) == 0
    assert "sbn-hard" in capsys.readouterr().out


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["sample", "no-such-model", "-n", "3", "-o", str(tmp_path / "x.npy")]) == 2
    assert "neither a synthetic truth" in capsys.readouterr().err
    assert main(["sample", "bars", "-n", "3", "-o", str(tmp_path / "x.txt")]) == 2
    assert "expected a .npy, .npz or .csv" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2


def test_nan_in_training_data_is_rejected_before_training(tmp_path):
    from ddchm.ddc import DDCHelmholtzMachine
    from ddchm.models import HierarchicalModel
    from ddchm.train import train

    model = HierarchicalModel.from_config(
        [{"family": "gaussian", "dim": 2}, {"family": "gaussian", "dim": 3}]
    )
    data = torch.randn(20, 3)
    data[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"data: contains 1 NaN or infinite value\(s\)"):
        train(
            DDCHelmholtzMachine.from_options(model, sleep_samples=20), data, steps=2, progress=False
        )


def test_cli_compare_writes_table_and_figures(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text(
        '[data]\nname = "sbn-hard"\nn_train = 300\nn_test = 100\n'
        '[algorithm]\nname = "ddc"\nn_features = [20, 10]\nsleep_samples = 100\nhidden = [16]\n'
        "[train]\nsteps = 10\nbatch_size = 30\neval_every = 5\n"
    )
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            str(config),
            "--algorithms",
            "ddc,ws",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    table = (out / "comparison.md").read_text()
    assert "ddc" in table and "ws" in table and "nll_gap" in table
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "samples.png" in pngs and any(name.startswith("curve_") for name in pngs)
    assert all((out / name).stat().st_size > 5000 for name in pngs)


def test_max_seconds_stops_training_early(tmp_path):
    result = run(
        small_config(steps=10**6, max_seconds=0.5, eval_every=10**9, log_every=10**9),
        progress=False,
    )
    assert 0.5 <= result["final"]["time"] < 5 and result["final"]["step"] < 10**6
    assert "nll_gap" in result["final"]


def test_cli_trains_on_an_array_file(tmp_path, capsys):
    from ddchm.data import make_truth

    x = make_truth("sbn-hard").model.sample(300, generator=5)[0].numpy()
    np.save(tmp_path / "x.npy", x)
    config = tmp_path / "array.toml"
    config.write_text(
        f'[data]\nsource = "array"\npath = "{tmp_path / "x.npy"}"\n'
        '[model]\nlayers = [{family = "bernoulli", dim = 4}, {family = "bernoulli", dim = 8}]\n'
        '[algorithm]\nname = "ddc"\nn_features = 20\nsleep_samples = 100\nhidden = [16]\n'
        "[train]\nsteps = 6\nbatch_size = 30\neval_every = 6\n[evaluate]\nposterior_points = 20\n"
    )
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    assert "array data" in capsys.readouterr().out
    assert main(["evaluate", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 6 and np.isfinite(summary["test_nll"])
    np.save(tmp_path / "x.npy", x[:5])  # too few rows for a test split
    assert main(["train", str(config), "--out", str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "has 5 rows" in capsys.readouterr().err


def test_resume_under_a_changed_config_is_refused_with_the_difference(tmp_path, capsys):
    config = tmp_path / "c.toml"
    text = (
        '[data]\nname = "sbn-hard"\nn_train = 300\nn_test = 100\n'
        '[algorithm]\nname = "ddc"\nn_features = 20\nsleep_samples = 100\nhidden = [16]\n'
        "lr = 0.02\n[train]\nsteps = 4\nbatch_size = 30\neval_every = 4\n"
    )
    config.write_text(text)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    saved = (out / "checkpoint.pt").read_bytes()
    for old, new, shown in [
        ("lr = 0.02", "lr = 0.05", "algorithm.lr: 0.02 -> 0.05"),
        ("n_train = 300", "n_train = 200", "data.n_train: 300 -> 200"),
        ("steps = 4\n", "steps = 4\nseed = 7\n", "train.seed: 0 -> 7"),
    ]:
        config.write_text(text.replace(old, new))
        assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert shown in err and "different config" in err and len(err.strip().splitlines()) == 1
        assert (out / "checkpoint.pt").read_bytes() == saved  # nothing touched
    # --seed on the command line is a change too; more steps and another log rhythm are not
    assert main(["train", str(config), "--out", str(out), "--seed", "3", "--no-progress"]) == 2
    config.write_text(text.replace("steps = 4", "steps = 8\nlog_every = 2"))
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 8


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for line in ("0    success", "2    bad input", "3    training diverged", "130  interrupted"):
        assert line in text
    assert "143 by SIGTERM" in text
