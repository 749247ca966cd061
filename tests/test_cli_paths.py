"""Small faults of the command line, each one named line with exit code 2 and nothing made that
the user did not ask for: output files in missing or unwritable places, a run directory under
a file, an edited config.toml, a batch larger than the data, and under torchrun one line only."""

import numpy as np
import pytest

from ddchm.cli import EXIT_USER_ERROR, main

SMALL_TOML = """
[data]
name = "sbn-hard"
n_train = 300
n_test = 100
[algorithm]
name = "ws"
hidden = [8]
[train]
steps = 2
batch_size = 30
eval_every = 2
"""


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ddchm: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "[Errno" not in err, err
    return lines[0]


def test_sample_into_a_missing_folder_is_refused_and_makes_no_folder(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "x.npy"
    assert main(["sample", "sbn-hard", "-n", "5", "-o", str(target)]) == EXIT_USER_ERROR
    line = error_line(capsys)
    assert "-o/--output" in line and "does not exist" in line
    assert not (tmp_path / "no").exists()


def test_sample_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "x.npy"
    assert main(["sample", "sbn-hard", "-n", "5", "-o", str(target)]) == EXIT_USER_ERROR
    assert "is a file, not a folder" in error_line(capsys)


def test_sample_that_cannot_be_written_is_one_named_line(tmp_path, capsys, monkeypatch):
    def refuse(path, *args, **kwargs):  # what a read-only file system answers
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "save", refuse)
    target = tmp_path / "x.npy"
    assert main(["sample", "sbn-hard", "-n", "5", "-o", str(target)]) == EXIT_USER_ERROR
    line = error_line(capsys)
    assert f"-o/--output: {target}: cannot write (Permission denied)" in line


def test_run_directory_under_a_file_is_one_named_line(tmp_path, capsys):
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sub"
    args = ["train", str(tmp_path / "small.toml"), "--out", str(out), "--no-quality"]
    assert main(args) == EXIT_USER_ERROR
    line = error_line(capsys)
    assert f"{tmp_path / 'file'} is a file, not a folder" in line and "--out" in line


def test_batch_larger_than_the_training_set_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "small.toml").write_text(SMALL_TOML.replace("batch_size = 30", "batch_size = 301"))
    args = ["train", str(tmp_path / "small.toml"), "--out", str(tmp_path / "run")]
    assert main(args) == EXIT_USER_ERROR
    line = error_line(capsys)
    assert "train.batch_size: 301 is more than the 300 training points" in line
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_a_config_toml_that_differs_from_the_checkpoint(tmp_path, capsys):
    (tmp_path / "small.toml").write_text(SMALL_TOML)
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "small.toml"), "--out", str(out), "--no-quality"]) == 0
    written = (out / "config.toml").read_text()
    edited = written.replace("\npoints = 500", "\npoints = 40")
    edited = edited.replace("n_train = 300", "n_train = 299")
    assert edited != written
    (out / "config.toml").write_text(edited)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--particles", "10", "--no-progress"]) == EXIT_USER_ERROR
    line = error_line(capsys)
    assert "config.toml: differs from the config the run's checkpoint was trained with" in line
    assert "data.n_train: 300 -> 299" in line and "evaluate.points: 500 -> 40" in line
    # how long or how often (what may change on resuming) is no difference to a measurement
    (out / "config.toml").write_text(written.replace("steps = 2", "steps = 50"))
    args = ["evaluate", str(out), "--particles", "10", "--points", "20", "--permutations", "0"]
    assert main([*args, "--no-progress", "--proposal-steps", "0"]) == 0


@pytest.mark.parametrize(("rank", "lines"), [("1", 0), ("0", 1)])
def test_under_torchrun_only_rank_zero_prints_the_error(tmp_path, capsys, monkeypatch, rank, lines):
    monkeypatch.setenv("RANK", rank)
    (tmp_path / "bad.toml").write_text("[train]\nstepz = 3\n")
    assert main(["train", str(tmp_path / "bad.toml")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    if lines:
        assert err.count("ddchm: error:") == 1 and "'stepz'" in err
    else:
        assert err == ""


def test_a_torch_that_cannot_use_this_numpy_is_one_named_line(capsys, monkeypatch):
    import torch

    def unavailable(self):  # what torch 2.1 (built against NumPy 1) does under NumPy 2
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", unavailable)
    assert main(["data", "list"]) == EXIT_USER_ERROR
    assert "install numpy<2 beside it" in error_line(capsys)
