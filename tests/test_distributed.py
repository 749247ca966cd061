"""Data-parallel training (ddchm.distributed): 2 local processes on gloo against 1 process.

Each 2-process run is started with torch.multiprocessing (spawn) on a free loopback port and
goes through ``ddchm.experiment.run`` as ``torchrun`` would (RANK, WORLD_SIZE, ... in the
environment), so the whole path is exercised: process group, sharded step, rank-0 checkpoint
and evaluation.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from ddchm.distributed import (
    LOCAL,
    DistributedError,
    Shard,
    free_loopback_port,
    set_local_process_env,
)
from ddchm.experiment import build_algorithm, load_config, run
from ddchm.models import HierarchicalModel

BASE = {
    "data": {"n_train": 1000, "n_valid": 100, "n_test": 200},
    "model": {"dtype": "float64"},  # float64: summation order then moves nothing beyond 1e-12
    "train": {
        "steps": 6,
        "batch_size": 20,
        "log_every": 1,
        "eval_every": 3,
        "checkpoint_every": 3,
        "device": "cpu",
    },
    "evaluate": {"posterior_points": 50},
}
DDC = {"name": "ddc", "sleep_samples": 200, "n_features": [40, 20], "diagnostic_every": 0}
CASES = {
    "ddc-collapsed": DDC,  # sbn-hard: 'auto' keeps the collapsed importance phase
    "ddc-amortised": {**DDC, "wake_encodings": "amortised"},
    # 'auto' turns amortised on the first step (the ESS cannot reach 1e9) while the recogniser
    # reads only half the batch's rows: the step's targets are not the recogniser's rows
    "ddc-auto-to-amortised": {**DDC, "wake_min_ess": 1e9, "recognition_points": 10},
    "rws": {"name": "rws", "num_particles": 5, "hidden": [20]},
}


def config_for(case: str, steps: int = 6) -> dict:
    return load_config(
        {**BASE, "algorithm": CASES[case], "train": {**BASE["train"], "steps": steps}}
    )


def snapshot(result: dict) -> dict:
    algorithm = result["algorithm"]
    out = {f"model.{k}": v.detach().clone() for k, v in result["model"].state_dict().items()}
    for k, v in algorithm.recognition.state_dict().items():
        out[f"recognition.{k}"] = v.detach().clone()
    return {"tensors": out, "final": result["final"]}


def _worker(rank, world, port, config, out_dir, path):
    set_local_process_env(rank, world, port)
    torch.set_num_threads(1)
    result = run(config, out_dir=out_dir, progress=False)
    torch.save(snapshot(result), f"{path}.{rank}")


def run_processes(config, tmp_path, world=2, out_dir=None, tag="run") -> list[dict]:
    """Every rank's snapshot after ``run(config)`` in ``world`` spawned processes."""
    path = str(tmp_path / tag)
    mp.start_processes(
        _worker,
        args=(world, free_loopback_port(), config, out_dir, path),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return [torch.load(f"{path}.{rank}", weights_only=True) for rank in range(world)]


def run_one(config) -> dict:
    assert "WORLD_SIZE" not in os.environ
    return snapshot(run(config, progress=False))


def max_difference(a: dict, b: dict, relative: bool = False) -> float:
    """The largest |a - b| over the tensors (``relative``: over each tensor's largest |a|;
    the recogniser's running normal equations are sums of order 1e3)."""
    assert a.keys() == b.keys()
    scale = {k: float(a[k].abs().max()) + 1e-300 if relative else 1.0 for k in a}
    return max(float((a[k] - b[k]).abs().max()) / scale[k] for k in a)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_processes_take_the_steps_of_one_with_the_whole_batch(case, tmp_path):
    """2 processes, each with half the batch and half the dreams, end where 1 process with the
    whole batch and dreams ends: to float64 rounding (a missing all-reduce or a wrong average
    moves the parameters by ~lr = 1e-3 or more after 6 steps)."""
    config = config_for(case)
    one = run_one(config)
    ranks = run_processes(config, tmp_path)
    for rank in ranks:  # every process holds the same model
        assert max_difference(rank["tensors"], ranks[0]["tensors"]) == 0.0
    model = {k: v for k, v in one["tensors"].items() if k.startswith("model.")}
    assert max_difference(model, {k: ranks[0]["tensors"][k] for k in model}) < 1e-10
    # the recogniser: its heads are solved from ill-conditioned normal equations
    assert max_difference(one["tensors"], ranks[0]["tensors"], relative=True) < 1e-8
    for key in ("test_nll", "grad_norm"):
        assert ranks[0]["final"][key] == pytest.approx(one["final"][key], rel=1e-9)
    assert ranks[0]["final"].get("wake_phase") == one["final"].get("wake_phase")


@pytest.mark.parametrize(
    "case",
    ["ddc-collapsed", pytest.param("rws", marks=pytest.mark.slow)],  # 20 s each
)
def test_two_processes_stopped_and_resumed_equal_an_uninterrupted_run(case, tmp_path):
    """A 2-process run to step 3 (checkpoint by rank 0), then run again to 6 from the
    checkpoint, ends bit for bit where a 2-process run straight to 6 ends."""
    straight = run_processes(config_for(case, 6), tmp_path, tag="straight")[0]
    out = str(tmp_path / "run")
    run_processes(config_for(case, 3), tmp_path, out_dir=out, tag="first")
    resumed = run_processes(config_for(case, 6), tmp_path, out_dir=out, tag="resumed")[0]
    assert max_difference(straight["tensors"], resumed["tensors"]) == 0.0
    assert resumed["final"]["step"] == 6
    assert not any(tmp_path.joinpath("run").glob(".write-test*"))


def test_shard_draws_are_the_whole_batch_draws():
    generator = torch.Generator().manual_seed(3)
    whole = torch.rand((5, 12, 3), generator=generator)
    for rank in range(3):
        generator.manual_seed(3)
        part = Shard(rank, 3).draw(torch.rand, (5, 4, 3), -2, 12, generator=generator)
        assert torch.equal(part, whole[:, 4 * rank : 4 * rank + 4])
    generator.manual_seed(3)
    assert torch.equal(LOCAL.draw(torch.rand, (5, 12, 3), -2, 12, generator=generator), whole)


def model_and_ddc(**options):
    config = load_config({**BASE, "algorithm": {**DDC, **options}})
    from ddchm.data import make_truth

    model = HierarchicalModel.from_config(make_truth("sbn-hard").model.config())
    return build_algorithm(config["algorithm"], model, seed=0)


def test_sizes_that_do_not_split_are_refused_by_name():
    ddc = model_and_ddc()
    with pytest.raises(DistributedError, match=r"train.batch_size: 20 cannot be split .* 3"):
        ddc.use_shard(Shard(0, 3), 20)
    with pytest.raises(DistributedError, match="algorithm.sleep_samples: 200"):
        ddc.use_shard(Shard(0, 3), 30)
    with pytest.raises(DistributedError, match="sleep_targets = 'snis'"):
        model_and_ddc(sleep_targets="snis").use_shard(Shard(0, 2), 20)
    ddc.use_shard(Shard(1, 2), 20)  # splits: accepted
    assert ddc.shard == Shard(1, 2)


def test_nccl_with_a_cpu_model_is_refused(monkeypatch):
    import torch.distributed as dist

    from ddchm import distributed

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    with pytest.raises(DistributedError, match="nccl, which carries CUDA tensors only"):
        distributed.shard_for(torch.device("cpu"))


def test_world_size_without_torchrun_variables_is_refused(monkeypatch):
    from ddchm import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedError, match="torchrun --nproc-per-node"):
        distributed.init_from_env(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ["ddc-collapsed", "ddc-amortised", "rws"])
def test_a_short_run_on_cuda_stays_on_cuda_and_follows_the_cpu_run(case):
    """Every parameter and state tensor of the model and the recogniser lives on the GPU, the
    result is finite, and it follows the CPU run from the same start (float64: the random
    draws differ between the devices' generators, so only closely, not to rounding)."""
    config = config_for(case, steps=3)
    config["train"]["device"] = "cuda"
    result = run(config, progress=False)
    tensors = snapshot(result)["tensors"]
    off = [k for k, v in tensors.items() if v.device.type != "cuda"]
    assert not off, f"left on the CPU: {off}"
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())
    assert result["final"]["step"] == 3 and torch.isfinite(
        torch.tensor(result["final"]["test_nll"])
    )
    config["train"]["device"] = "cpu"
    cpu = run(config, progress=False)
    assert result["final"]["test_nll"] == pytest.approx(cpu["final"]["test_nll"], abs=0.5)


def test_the_gpu_config_loads_and_splits_over_up_to_8_processes():
    from importlib import resources

    path = resources.files("ddchm") / "configs" / "gpu-mnist-sbn-200-200.toml"
    config = load_config(str(path))
    assert config["train"]["device"] == "cuda" and config["data"]["subset"] is None
    torch.manual_seed(0)
    model = HierarchicalModel.from_config(config["model"]["layers"])
    ddc = build_algorithm(config["algorithm"], model, seed=0)
    for world in (2, 4, 8):
        ddc.use_shard(Shard(world - 1, world), config["train"]["batch_size"])


def test_python_dash_m_ddchm_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ddchm", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "train" in done.stdout


TORCHRUN_CONFIG = """
[data]
name = "sbn-hard"
n_train = 1000
n_valid = 100
n_test = 200
[model]
dtype = "float64"
[algorithm]
name = "ddc"
sleep_samples = 200
n_features = [40, 20]
diagnostic_every = 0
[train]
steps = 60
batch_size = 20
log_every = 1
eval_every = 30
checkpoint_every = 4
device = "cpu"
[evaluate]
posterior_points = 50
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_torchrun_run_killed_by_sigkill_resumes_to_the_uninterrupted_run(tmp_path):
    """`torchrun --nproc-per-node 2 -m ddchm train`, every process SIGKILLed after a checkpoint,
    then the same command again: the same checkpoint, bit for bit, as a run never stopped."""
    import signal
    import subprocess
    import sys
    import time

    from ddchm.train import CHECKPOINT, load_checkpoint

    config = tmp_path / "c.toml"
    config.write_text(TORCHRUN_CONFIG)

    def torchrun(out):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", "2", "-m", "ddchm", "train", str(config)]
        command += ["--out", str(out), "--no-quality", "--no-progress"]
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: one SIGKILL reaches every rank
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    straight = torchrun(tmp_path / "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    killed = torchrun(tmp_path / "killed")
    deadline, step = time.monotonic() + 300, 0
    while step < 8 and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.1)
        try:
            step = load_checkpoint(tmp_path / "killed" / CHECKPOINT)["step"]
        except Exception:  # not written yet
            step = 0
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    stopped_at = load_checkpoint(tmp_path / "killed" / CHECKPOINT)["step"]
    assert 8 <= stopped_at < 60, stopped_at  # killed mid-run, after a checkpoint
    resumed = torchrun(tmp_path / "killed")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    b = load_checkpoint(tmp_path / "killed" / CHECKPOINT)
    assert a["step"] == b["step"] == 60
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    records = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == list(range(61))
