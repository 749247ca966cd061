"""The non-finite and divergence guard: a bad step is not applied, the last checkpoint stays
finite, the run stops with a diagnosis and exit code 3."""

import math

import pytest
import torch

from ddchm.cli import EXIT_DIVERGED, main
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.models import HierarchicalModel
from ddchm.train import CHECKPOINT, DivergenceError, DivergenceGuard, load_checkpoint, train


def write_config(path, truth="sbn-hard", lr=0.02, steps=40, checkpoint_every=1, eval_every=20):
    path.write_text(
        f'[data]\nname = "{truth}"\nn_train = 300\nn_test = 100\n'
        '[algorithm]\nname = "ddc"\nn_features = 20\nsleep_samples = 100\nhidden = [16]\n'
        f"lr = {lr}\n"
        f"[train]\nsteps = {steps}\nbatch_size = 30\neval_every = {eval_every}\n"
        f"checkpoint_every = {checkpoint_every}\n[evaluate]\nposterior_points = 20\n"
    )
    return path


def assert_finite_checkpoint(run_dir):
    state = load_checkpoint(run_dir / CHECKPOINT)
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor).all(), name
    return state


@pytest.mark.parametrize(
    "truth, lr, words",
    [
        ("sbn-hard", "1e6", ["step 1", "moved the model parameters", "step was not applied"]),
        ("mixed", "10", ["grad_norm", "step was not applied"]),
        ("sbn-hard", "100", ["step 20", "test NLL rose"]),  # lr 10 sometimes learns
    ],
)
def test_divergence_stops_with_exit_3_and_a_finite_checkpoint(tmp_path, capsys, truth, lr, words):
    config = write_config(tmp_path / "c.toml", truth=truth, lr=lr)
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "training diverged at" in err and "last checkpoint (step" in err
    for word in words:
        assert word in err, (word, err)
    state = assert_finite_checkpoint(out)
    assert main(["sample", str(out), "-n", "50", "-o", str(tmp_path / "s.npy")]) == 0
    if lr == "1e6":
        assert state["step"] == 0  # nothing of the bad step was saved


def test_lr_inf_is_refused_by_the_config_and_rolled_back_by_the_loop(tmp_path, capsys):
    for lr in ("inf", "1e300"):  # 1e300 overflowed Adam's float32 step with a traceback
        config = write_config(tmp_path / "c.toml", lr=lr)
        assert main(["train", str(config), "--out", str(tmp_path / "a"), "--no-progress"]) == 2
        assert "algorithm.lr: expected a finite number > 0 and <= 1e+06" in capsys.readouterr().err
    # through the Python API the loop itself refuses the step
    torch.manual_seed(0)
    model = HierarchicalModel.from_config(
        [{"family": "bernoulli", "dim": 2}, {"family": "bernoulli", "dim": 5}]
    )
    data = (torch.rand(40, 5, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    machine = DDCHelmholtzMachine.from_options(
        model, lr=math.inf, n_features=10, sleep_samples=50, hidden=(8,)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DivergenceError, match=r"at step 1: .*not applied"):
        train(machine, data, steps=5, batch_size=10, out_dir=tmp_path / "b", checkpoint_every=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # rolled back in memory too
    assert assert_finite_checkpoint(tmp_path / "b")["step"] == 0


def test_empty_batch_is_a_named_error_and_changes_nothing():
    torch.manual_seed(0)
    model = HierarchicalModel.from_config(
        [{"family": "bernoulli", "dim": 2}, {"family": "bernoulli", "dim": 5}]
    )
    machine = DDCHelmholtzMachine.from_options(model, n_features=10, sleep_samples=50, hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="batch: has no rows"):
        machine.step(torch.empty(0, 5))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_guard_rules():
    guard = DivergenceGuard(warmup=5)
    model = HierarchicalModel.from_config(
        [{"family": "gaussian", "dim": 2}, {"family": "gaussian", "dim": 3}]
    )
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 20):
        assert guard.check_step(step, model, {"grad_norm": 1.0 + step % 3}, before) is None
    problem = guard.check_step(20, model, {"grad_norm": 1e5}, before)
    assert "grad_norm 1e+05" in problem and "running median" in problem
    assert "metric loss = nan" in guard.check_step(21, model, {"loss": float("nan")}, before)
    with torch.no_grad():
        model.layers[0].bias[1] = float("inf")
    assert "model parameter layers.0.bias became NaN or infinite (1 of 3" in guard.check_step(
        22, model, {}, before
    )
    assert "algorithm state opt.m" in guard.check_state(
        {"opt": {"m": torch.tensor([float("nan")])}}
    )
    assert guard.check_state({"g": torch.zeros(3, dtype=torch.uint8), "m": torch.ones(2)}) is None
    assert guard.check_evaluation(0, {"test_nll": 5.0}) is None
    assert guard.check_evaluation(10, {"test_nll": 14.0}) is None  # within 10 nats of the best
    assert "rose to 16" in guard.check_evaluation(20, {"test_nll": 16.0})
    assert "is nan" in guard.check_evaluation(30, {"test_nll": float("nan")})
