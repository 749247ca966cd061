"""One validation layer for configs: every bad value is named, through the CLI as one line on
stderr with exit code 2, never a traceback; generated configs load or raise ConfigError."""

import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddchm.cli import main
from ddchm.config_schema import ConfigError
from ddchm.experiment import DEFAULTS, load_config


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path, sections: dict):
    base = {
        "data": {"name": "sbn-hard", "n_train": 100, "n_test": 20},
        "algorithm": {"name": "ddc", "n_features": 10, "sleep_samples": 20, "hidden": [8]},
        "train": {"steps": 2, "batch_size": 10},
        "evaluate": {"posterior_points": 10},
    }
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    path.write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
            for section, values in base.items()
        )
    )
    return path


BAD_CONFIGS = [  # (sections, words the one-line error must contain)
    ({"train": {"log_every": 0}}, ["train.log_every", ">= 1", "got 0"]),
    ({"train": {"eval_every": 0}}, ["train.eval_every"]),
    ({"train": {"checkpoint_every": 0}}, ["train.checkpoint_every"]),
    ({"train": {"log_every": -3}}, ["train.log_every", "-3"]),
    ({"train": {"max_seconds": -1}}, ["train.max_seconds", "> 0"]),
    ({"train": {"steps": 1.5}}, ["train.steps", "integer"]),
    ({"train": {"device": "gpu"}}, ["train.device", "'gpu'"]),
    ({"train": {"stepz": 3}}, ["unknown key(s) ['stepz'] in [train]", "did you mean 'steps'"]),
    ({"trian": {"steps": 3}}, ["unknown section [trian]", "did you mean 'train'"]),
    ({"data": {"n_train": 0}}, ["data.n_train", ">= 1"]),
    ({"data": {"n_test": 0}}, ["data.n_test", ">= 1"]),
    ({"data": {"name": "sbn-hrd"}}, ["data.name", "did you mean 'sbn-hard'"]),
    ({"data": {"source": "arrays"}}, ["data.source", "did you mean 'array'"]),
    ({"data": {"source": "array"}}, ["data.path", "needs a file"]),
    ({"model": {"dtype": "float16"}}, ["model.dtype"]),
    ({"model": {"init_scale": -1.0}}, ["model.init_scale"]),
    (
        {
            "model": {
                "layers": [{"family": "bernoulli", "dim": 4}, {"family": "bernouli", "dim": 8}]
            }
        },
        ["model.layers[1].family", "did you mean 'bernoulli'"],
    ),
    (
        {
            "model": {
                "layers": [
                    {"family": "bernoulli", "dim": 4, "init_scael": 0.1},
                    {"family": "bernoulli", "dim": 8},
                ]
            }
        },
        ["model.layers[0]: unknown key 'init_scael'", "did you mean 'init_scale'"],
    ),
    (
        {
            "model": {
                "layers": [{"family": "bernoulli", "dim": 0}, {"family": "bernoulli", "dim": 8}]
            }
        },
        ["model.layers[0].dim", ">= 1"],
    ),
    (
        {
            "model": {
                "layers": [{"family": "bernoulli", "dim": 4}, {"family": "bernoulli", "dim": 5}]
            }
        },
        ["model.layers", "5 units", "8 columns"],
    ),
    ({"algorithm": {"lr": -0.1}}, ["algorithm.lr", "> 0", "-0.1"]),
    ({"algorithm": {"lr": "0.1"}}, ["algorithm.lr", "'0.1'"]),
    ({"algorithm": {"lr": math.inf}}, ["algorithm.lr", "inf"]),
    ({"algorithm": {"hidden": [0]}}, ["algorithm.hidden", ">= 1"]),
    ({"algorithm": {"hidden": [-5]}}, ["algorithm.hidden", "-5"]),
    ({"algorithm": {"hidden": 5}}, ["algorithm.hidden", "list"]),
    ({"algorithm": {"sleep_samples": 1}}, ["[algorithm] ddc: sleep_samples"]),
    ({"algorithm": {"learning_rate": 0.1}}, ["unknown argument(s) ['learning_rate']"]),
    ({"algorithm": {"name": "ddcc"}}, ["unknown algorithm 'ddcc'", "did you mean 'ddc'"]),
    ({"algorithm": {"name": "rws", "num_particles": 1}}, ["num_particles"]),
]


def assert_one_line_error(capsys, words):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ddchm: error: ")
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("sections, words", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_bad_config_is_one_named_line_and_exit_2(tmp_path, capsys, sections, words):
    config = write_config(tmp_path / "bad.toml", sections)
    code = main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert_one_line_error(capsys, words)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cuda_without_gpu_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config(tmp_path / "c.toml", {"train": {"device": "cuda"}})
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert_one_line_error(capsys, ["train.device", "no CUDA GPU"])


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--no-progress"]) == 2
    assert_one_line_error(capsys, ["is a directory"])
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    assert main(["train", str(binary), "--no-progress"]) == 2
    assert_one_line_error(capsys, ["binary.toml", "not a text file"])
    config = write_config(tmp_path / "c.toml", {})
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["train", str(config), "--out", str(a_file), "--no-progress"]) == 2
    assert_one_line_error(capsys, ["a-file", "is a file"])
    assert a_file.read_text() == "x"
    (tmp_path / "dir.npy").mkdir()
    assert main(["sample", "sbn-hard", "-n", "3", "-o", str(tmp_path / "dir.npy")]) == 2
    assert_one_line_error(capsys, ["-o/--output", "is a directory"])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_run_directory_is_one_line_error(tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", {})
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["train", str(config), "--out", str(locked / "run"), "--no-progress"]) == 2
        assert_one_line_error(capsys, ["locked", "Permission denied"])
    finally:
        locked.chmod(0o700)


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 300), max_size=3),
    st.lists(
        st.dictionaries(
            st.sampled_from(["family", "dim", "init_scale", "x"]),
            st.one_of(st.sampled_from(["bernoulli", "gaussian"]), st.integers(-1, 9), st.floats()),
        ),
        max_size=3,
    ),
)
KEYS = sorted({k for section in DEFAULTS.values() for k in section} | {"lr", "hidden", "name"})


@st.composite
def configs(draw):
    sections = draw(st.lists(st.sampled_from([*DEFAULTS, "trian"]), max_size=4, unique=True))
    config = {}
    for section in sections:
        if draw(st.integers(0, 9)) == 0:
            config[section] = draw(VALUES)  # not a table
            continue
        keys = draw(st.lists(st.sampled_from([*KEYS, "stepz"]), max_size=4, unique=True))
        config[section] = {key: draw(VALUES) for key in keys}
        if section == "algorithm":
            config[section]["name"] = draw(st.sampled_from(["ddc", "ws", "rws", "vimco", "x"]))
    return config


@settings(max_examples=200, deadline=None)
@given(raw=configs())
def test_generated_configs_load_or_raise_config_error(raw):
    try:
        config = load_config(raw, {"train": {"steps": 3}})  # as `ddchm train --steps 3`
    except ConfigError as error:
        assert str(error).startswith("config: ")
        return
    train = config["train"]
    assert all(train[k] >= 1 for k in ("log_every", "eval_every", "checkpoint_every"))
    assert train["max_seconds"] is None or train["max_seconds"] > 0
    assert config["data"]["n_train"] >= 1 and config["data"]["n_test"] >= 1
