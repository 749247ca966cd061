"""Kill a training subprocess with SIGKILL, SIGTERM or SIGINT at a random (seeded) moment, run
the same command again, and get the uninterrupted run bit for bit."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddchm.cli import EXIT_SIGINT, EXIT_SIGTERM, main
from ddchm.experiment import load_config, run
from ddchm.train import CHECKPOINT, load_checkpoint

STEPS = 70
CONFIG = f"""
[data]
name = "sbn-hard"
n_train = 200
n_valid = 10
n_test = 50
[algorithm]
name = "ddc"
n_features = [10, 6]
sleep_samples = 50
hidden = [8]
diagnostic_every = 7
[train]
steps = {STEPS}
batch_size = 20
log_every = 1
eval_every = 25
checkpoint_every = 13
[evaluate]
posterior_points = 20
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its final checkpoint and its metrics without timings."""
    root = tmp_path_factory.mktemp("reference")
    (root / "c.toml").write_text(CONFIG)
    run(load_config(root / "c.toml"), out_dir=root / "run", progress=False)
    return load_checkpoint(root / "run" / CHECKPOINT), records(root / "run")


def records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("time", "cpu_time")}
        for line in lines
    ]


def assert_same(a, b, where="state"):
    """Nested checkpoint contents equal bit for bit (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def last_logged_step(path):
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return -1
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):
            continue
    return -1


SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT")
# two of each signal by default (about 4 s each on 2 busy cores), six more of each with -m slow
TRIALS = [(sig, trial) for sig in SIGNALS for trial in range(2)]
TRIALS += [
    pytest.param(sig, trial, marks=pytest.mark.slow) for sig in SIGNALS for trial in range(2, 8)
]


@pytest.mark.parametrize("sig, trial", TRIALS)
def test_killed_run_resumes_bitwise(tmp_path, reference, sig, trial):
    rng = random.Random(f"{sig}-{trial}")
    kill_after = rng.randrange(1, STEPS - 20)  # a step the run has logged ...
    extra_delay = rng.uniform(0, 0.02)  # ... and a random moment after it
    (tmp_path / "c.toml").write_text(CONFIG)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ddchm.cli", "train", str(tmp_path / "c.toml")]
    command += ["--out", str(out), "--no-progress"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    deadline = time.monotonic() + 120
    while last_logged_step(out / "metrics.jsonl") < kill_after and process.poll() is None:
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.002)
    time.sleep(extra_delay)
    process.send_signal(getattr(signal, sig))
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0, "the run finished before the signal: lengthen it"
    if sig == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
    else:
        expected = EXIT_SIGINT if sig == "SIGINT" else EXIT_SIGTERM
        assert process.returncode == expected, err
        assert f"interrupted: {sig} at step" in err and "Traceback" not in err, err
        saved = load_checkpoint(out / CHECKPOINT)["step"]
        assert kill_after <= saved < STEPS
    # the same command again, in this process
    assert main(["train", str(tmp_path / "c.toml"), "--out", str(out), "--no-progress"]) == 0
    final, logged = reference
    resumed = load_checkpoint(out / CHECKPOINT)
    for part in ("model", "algorithm", "data_generator", "step"):
        assert_same(final[part], resumed[part], part)
    assert records(out) == logged


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_signal_handlers_are_restored_after_training(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    (tmp_path / "c.toml").write_text(CONFIG.replace(f"steps = {STEPS}", "steps = 2"))
    assert (
        main(["train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
