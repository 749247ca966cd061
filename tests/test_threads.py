"""Threads (one rule: --threads / train.threads, default $OMP_NUM_THREADS else 1), the progress
of a CPU-budgeted run, and the learning curve of `ddchm train`."""

import matplotlib
import pytest
import torch

from ddchm.cli import _spans_decades, main
from ddchm.evaluate.plots import plot_learning_curves
from ddchm.experiment import ConfigError, load_config, run
from ddchm.progress import cpu_budget_bar
from ddchm.threads import default_threads, use_threads
from ddchm.train import early_steps, read_metrics

matplotlib.use("Agg")

SMALL = {
    "data": {"name": "sbn-hard", "n_train": 300, "n_test": 100},
    "algorithm": {"name": "ddc", "n_features": [30, 10], "sleep_samples": 200, "hidden": [32]},
    "train": {"steps": 4, "batch_size": 30, "log_every": 2, "eval_every": 2},
    "evaluate": {"posterior_points": 20, "points": 50},
}
SMALL_TOML = """
[data]
name = "sbn-hard"
n_train = 300
n_test = 100
[algorithm]
name = "ddc"
n_features = [30, 10]
sleep_samples = 200
hidden = [32]
[train]
steps = 4
batch_size = 30
eval_every = 2
[evaluate]
posterior_points = 20
points = 50
"""


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def small(**train):
    config = {k: dict(v) for k, v in SMALL.items()}
    config["train"].update(train)
    return load_config(config)


def test_the_suite_runs_on_the_default_thread_count():
    assert torch.get_num_threads() == default_threads()


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("", 1), ("0", 1), ("four", 1)])
def test_default_threads_follow_omp_num_threads_else_one(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_threads() == expected


def test_use_threads_sets_torch_and_refuses_nonsense(restore_threads):
    assert use_threads(2) == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads: expected an integer >= 1"):
            use_threads(bad)


def test_interop_threads_are_asked_for_once_and_a_second_ask_is_harmless(restore_threads):
    # conftest sized the pool; torch refuses (older torch: aborts) a second size
    pool = torch.get_num_interop_threads()
    assert use_threads(2, interop=True) == 2 and use_threads(3, interop=True) == 3
    assert torch.get_num_threads() == 3 and torch.get_num_interop_threads() == pool


def test_config_threads_are_checked_and_applied_by_run(tmp_path, restore_threads):
    with pytest.raises(ConfigError, match="train.threads"):
        small(threads=0)
    run(small(threads=2), out_dir=tmp_path / "a", progress=False)
    assert torch.get_num_threads() == 2
    run(small(threads=None), progress=False)  # unset: the default again
    assert torch.get_num_threads() == default_threads()


def test_cli_threads_set_the_run_and_may_change_on_resuming(tmp_path, capsys, restore_threads):
    config = tmp_path / "small.toml"
    config.write_text(SMALL_TOML)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--threads", "2", "--no-quality"]) == 0
    assert torch.get_num_threads() == 2
    assert "threads = 2" in (out / "config.toml").read_text()
    args = ["train", str(config), "--out", str(out), "--steps", "6", "--no-quality"]
    assert main(args) == 0  # another thread count resumes: it changes no step's result
    assert torch.get_num_threads() == default_threads()
    assert read_metrics(out)[-1]["step"] == 6
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["train", str(config), "--threads", "0"])
    assert stop.value.code == 2 and "--threads" in capsys.readouterr().err


def test_every_computing_command_takes_threads(capsys):
    commands = (["train"], ["evaluate", "x"], ["compare"], ["reproduce", "all"], ["sample", "x"])
    for command in commands:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "--threads N" in capsys.readouterr().out, command


def test_cpu_budget_progress_counts_cpu_seconds_and_shows_the_step(capsys):
    bar = cpu_budget_bar(25, 3.0, desc="ddc")  # stderr is not a terminal here: a line
    bar.update(9.34)
    bar.set_postfix({"step": 980}, refresh=False)
    bar.close()
    line = capsys.readouterr().err.strip()
    assert line.startswith("ddc: 12.3/25 CPU s (49%)") and line.endswith("step=980"), line


def test_a_cpu_budgeted_run_reports_its_budget_not_its_step_cap(capsys):
    config = small(steps=10**6, max_cpu_seconds=0.3, eval_every=10**9, log_every=10**9)
    records = run(config, progress=True)["records"]
    err = capsys.readouterr().err
    assert "/0.3 CPU s (100%)" in err and f"step={records[-1]['step']}" in err, err
    assert "1000000" not in err


def test_early_steps_are_one_two_five_below_eval_every():
    assert early_steps(100) == {1, 2, 5, 10, 20, 50}
    assert early_steps(6) == {1, 2, 5} and early_steps(1) == frozenset()


def test_eval_early_evaluates_on_a_log_schedule_besides_eval_every():
    records = run(small(steps=25, eval_every=10, eval_early=True), progress=False)["records"]
    assert [r["step"] for r in records if "test_nll" in r] == [0, 1, 2, 5, 10, 20, 25]
    plain = run(small(steps=25, eval_every=10), progress=False)["records"]
    assert [r["step"] for r in plain if "test_nll" in r] == [0, 10, 20, 25]


def test_one_seed_has_no_seed_band_legend_and_log_axes_leave_out_zero():
    curve = {"step": [0, 1, 10, 100], "cpu_time": [0.0, 0.1, 1.0, 10.0], "m": [3, 2, 1, 0.5]}
    fig = plot_learning_curves({"a": [curve]}, "m", x_axes=("step",), log_x=True)
    ax = fig.axes[0]
    assert ax.get_legend().get_title().get_text() == ""
    assert ax.get_xscale() == "log" and list(ax.lines[0].get_xdata()) == [1, 10, 100]
    twice = plot_learning_curves({"a": [curve, curve]}, "m", x_axes=("step",))
    assert twice.axes[0].get_legend().get_title().get_text() == "mean ± s.e. across seeds"


def test_log_axes_only_where_the_values_span_two_decades():
    assert _spans_decades([0, 1, 2, 5, 100, 2000])
    assert not _spans_decades([0, 100, 200, 2000])  # 100 .. 2000: 1.3 decades
    assert not _spans_decades([2.4, 0.3, 0.01, -0.001], everywhere=True)  # a log y axis: > 0


def test_train_writes_a_log_axis_learning_curve_for_an_early_evaluated_run(
    tmp_path, capsys, monkeypatch
):
    import ddchm.evaluate.plots as plots

    drawn = []
    original = plots.plot_learning_curves

    def spy(*args, **kwargs):
        drawn.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_learning_curves", spy)
    config = tmp_path / "small.toml"
    text = SMALL_TOML.replace("eval_every = 2", "eval_every = 100\neval_early = true")
    config.write_text(text.replace("steps = 4", "steps = 200"))
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-quality"]) == 0
    steps = [r["step"] for r in read_metrics(out) if "test_nll" in r]
    assert steps == [0, 1, 2, 5, 10, 20, 50, 100, 200]
    assert drawn[0]["log_x"] and (out / "learning_curve.png").stat().st_size > 0
