"""Checkpoints: nothing in one can run code, every algorithm round-trips through the safe loader,
damaged or mismatched ones are refused with a message naming the file and the way out."""

import io
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddchm.cli import main
from ddchm.data import make_truth
from ddchm.experiment import build_algorithm, load_config, run
from ddchm.models import HierarchicalModel
from ddchm.train import (
    CHECKPOINT,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

TINY = {
    "data": {"name": "sbn-hard", "n_train": 200, "n_valid": 10, "n_test": 50},
    "algorithm": {"name": "ddc", "n_features": [20, 10], "sleep_samples": 50, "hidden": [8]},
    "train": {"steps": 4, "batch_size": 20, "log_every": 2, "eval_every": 4},
    "evaluate": {"posterior_points": 20},
}


def tiny_run(out, **train):
    config = {k: dict(v) for k, v in TINY.items()}
    config["train"].update(train)
    return run(load_config(config), out_dir=out, progress=False)


class Payload:
    """Unpickling this runs ``exec``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def poison(run_dir, marker):
    """Replace a genuine checkpoint by one whose algorithm state is a code-running payload."""
    state = torch.load(run_dir / CHECKPOINT, weights_only=True)
    state["algorithm"] = Payload(marker)
    torch.save(state, run_dir / CHECKPOINT)


def test_poisoned_checkpoint_runs_nothing_under_train_evaluate_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out)
    marker = tmp_path / "pwned"
    poison(out, marker)
    config = tmp_path / "tiny.toml"
    config.write_text(
        '[data]\nname = "sbn-hard"\nn_train = 200\nn_valid = 10\nn_test = 50\n'
        '[algorithm]\nname = "ddc"\nn_features = [20, 10]\nsleep_samples = 50\nhidden = [8]\n'
        "[train]\nsteps = 8\nbatch_size = 20\nlog_every = 2\neval_every = 4\n"
        "[evaluate]\nposterior_points = 20\n"
    )
    commands = [
        ["train", str(config), "--out", str(out), "--no-progress"],
        ["evaluate", str(out)],
        ["sample", str(out), "-n", "3", "-o", str(tmp_path / "s.npy")],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "refused to load" in err and "checkpoint.pt" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not marker.exists(), command
    assert not (tmp_path / "s.npy").exists()


ALGORITHMS = [
    ("ddc", {"n_features": [20, 10], "sleep_samples": 50, "hidden": [8]}, "sbn-hard"),
    ("ddc", {"n_features": [20, 10], "sleep_samples": 50, "recognition": "ridge"}, "sbn-hard"),
    (
        "ddc",
        {
            "n_features": [20, 10],
            "sleep_samples": 50,
            "hidden": [8],
            "recognition_readout": "ridge",
            "recognition_lr_final": 1e-4,
            "recognition_decay_steps": 10,
        },
        "sbn-hard",
    ),
    ("ddc", {"n_features": 20, "sleep_samples": 50, "hidden": [8], "ema": 0.9}, "sbn-hard"),
    ("ws", {"hidden": [8]}, "sbn-hard"),
    ("rws", {"hidden": [8]}, "sbn-hard"),
    ("vimco", {"hidden": [8]}, "sbn-hard"),
    ("vae", {"hidden": [8]}, "gaussian"),
    ("iwae", {"hidden": [8]}, "gaussian"),
]


@pytest.mark.parametrize("name, arguments, truth", ALGORITHMS)
def test_every_algorithm_round_trips_through_the_safe_loader(tmp_path, name, arguments, truth):
    section = load_config({"algorithm": {"name": name, **arguments}})["algorithm"]
    if truth == "gaussian":  # reparameterisable latents for the VAE and IWAE
        layers = [{"family": "gaussian", "dim": 2}, {"family": "gaussian", "dim": 3}]
        data = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    else:
        truth_model = make_truth(truth).model
        layers = truth_model.config()
        data = truth_model.sample(40, generator=0)[0]

    def fresh():
        torch.manual_seed(0)  # layer initialisation
        model = HierarchicalModel.from_config(layers)
        return {"train": data}, model, build_algorithm(section, model, 3)

    data, model, algorithm = fresh()
    batch = data["train"][:20]
    for _ in range(2):
        algorithm.step(batch)
    path = tmp_path / CHECKPOINT
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "algorithm": algorithm.state_dict(),
            "step": 2,
            "data_generator": {},
        },
    )
    state = load_checkpoint(path)  # weights_only=True
    assert state["format_version"] == FORMAT_VERSION
    _, model2, algorithm2 = fresh()
    model2.load_state_dict(state["model"])
    algorithm2.load_state_dict(state["algorithm"])
    metrics = algorithm.step(batch)
    metrics2 = algorithm2.step(batch)
    assert metrics == metrics2
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_of_other_shapes_is_refused_by_evaluate_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(3, 3)
    torch.save(state, out / CHECKPOINT)
    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not match this run's model" in err and "checkpoint.pt" in err
    with pytest.raises(CheckpointError, match="does not match this run's model"):
        tiny_run(out, steps=8)


def test_newer_format_version_is_refused(tmp_path):
    out = tmp_path / "run"
    tiny_run(out)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    state["format_version"] = FORMAT_VERSION + 1
    torch.save(state, out / CHECKPOINT)
    with pytest.raises(CheckpointError, match="format version 2.*upgrade ddchm"):
        load_checkpoint(out / CHECKPOINT)


def test_save_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path / CHECKPOINT, {"model": {}, "algorithm": {}, "step": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


def test_evaluate_ignores_records_logged_after_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out)
    with open(out / "metrics.jsonl", "a") as handle:  # as a run killed after logging step 6
        handle.write(json.dumps({"step": 6, "time": 1.0, "test_nll": 123.0}) + "\n")
    assert main(["evaluate", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 4 and summary["test_nll"] != 123.0


def genuine_checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "format_version": 1,
            "model": {"w": torch.arange(6.0).reshape(2, 3)},
            "algorithm": {"generator": torch.Generator().get_state(), "steps": 3},
            "step": 3,
            "data_generator": {"position": 0},
        },
        buffer,
    )
    return buffer.getvalue()


GENUINE = genuine_checkpoint_bytes()


@st.composite
def damaged(draw):
    """Genuine bytes cut short, overwritten in places, or replaced by noise."""
    kind = draw(st.sampled_from(["truncate", "flip", "noise"]))
    data = bytearray(GENUINE)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    return draw(st.binary(max_size=2000))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=damaged())
def test_any_checkpoint_bytes_load_or_raise_checkpoint_error(tmp_path, blob):
    path = tmp_path / CHECKPOINT
    path.write_bytes(blob)
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        assert str(path) in str(error)
    else:
        assert isinstance(state, dict) and {"model", "algorithm", "step"} <= set(state)


def test_checkpoint_with_nan_is_refused_by_resume_evaluate_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    tiny_run(out)
    state = torch.load(out / CHECKPOINT, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, out / CHECKPOINT)
    for command in (["evaluate", str(out)], ["sample", str(out), "-o", str(tmp_path / "s.npy")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"tensor model.{name} is NaN or infinite" in err, err
    assert not (tmp_path / "s.npy").exists()
    with pytest.raises(CheckpointError, match="is NaN or infinite"):
        tiny_run(out, steps=8)


def test_checkpoint_is_fsynced_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    import os

    import ddchm.train as train_module

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        train_module.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd)
    )
    monkeypatch.setattr(
        train_module.os, "replace", lambda a, b: events.append("replace") or real_replace(a, b)
    )
    save_checkpoint(tmp_path / CHECKPOINT, {"model": {}, "algorithm": {}, "step": 0})
    assert events[:2] == ["fsync", "replace"]  # the data is on disk before the rename
    assert events.count("fsync") == 2  # and the directory entry after it
