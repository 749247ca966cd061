"""AIS against importance sampling on trained models whose latents cannot be enumerated (issue 26).

For each run directory (written by ``ddchm train`` or ``ddchm compare``): the held-out points of
its test split (a seeded subset, the same for every run), then

- IS with ``--particles`` particles through a proposal fitted to the model by 500 sleep-phase
  updates (what ``ddchm evaluate`` does), with the spread of its effective sample sizes;
- AIS (prior -> posterior, Gibbs on binary layers, HMC on continuous ones) with ``--chains``
  chains for each number of temperatures in ``--steps``, on the first ``--ais-points`` points;

and on the AIS points the paired difference AIS - IS with its standard error over points (both
estimators are stochastic lower bounds: the larger is the tighter), the spread of log w across
chains (AIS's bias diagnostic) and the CPU seconds per 1,000 points of each estimator. One
process, one thread; CPU time by ``time.process_time``.

``--truths sbn-hard,sbn-easy`` instead checks both estimators against exact enumeration on
each synthetic truth and on a model of its shape trained briefly by wake-sleep (300 steps):
the mean error per point of AIS (``--chains`` x each of ``--steps``) and of IS (``--particles``)
on ``--ais-points`` held-out points, the largest error of a point, and the CPU seconds.

Usage: python benchmarks/likelihood_estimators.py RUN_DIR [RUN_DIR ...]
       [--points 200] [--ais-points 50] [--particles 5000] [--chains 16] [--steps 200,1000]
       python benchmarks/likelihood_estimators.py --truths sbn-hard,sbn-easy --steps 1000
The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ddchm.evaluate.ais import ais_log_likelihood
from ddchm.evaluate.likelihood import fit_proposal, importance_log_likelihood
from ddchm.evaluate.quality import ess_summary
from ddchm.experiment import build_algorithm, build_data, build_model
from ddchm.train import CHECKPOINT, load_checkpoint, restore_state


def load_run(run_dir: str):
    state = load_checkpoint(f"{run_dir}/{CHECKPOINT}")
    config = state["config"]
    data = build_data(config["data"])
    model = build_model(config["model"], data)
    algorithm = build_algorithm(config["algorithm"], model, config["train"]["seed"])
    restore_state(f"{run_dir}/{CHECKPOINT}", state, model, algorithm)
    return model, data, state


def measure(run_dir: str, args) -> dict:
    model, data, state = load_run(run_dir)
    test = data["test"].to(next(model.parameters()))
    points = test[torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))]
    points = points[: args.points]
    out = {
        "run": run_dir,
        "algorithm": state.get("algorithm_name"),
        "steps": state["step"],
        "train_cpu_s": state.get("cpu_elapsed"),
    }
    tic = time.process_time()
    proposal = fit_proposal(model, n_steps=500, sleep_samples=500, generator=1)
    fit_s = time.process_time() - tic
    tic = time.process_time()
    is_result = importance_log_likelihood(
        model, points, proposal, n_particles=args.particles, generator=2
    )
    is_s = time.process_time() - tic
    out["is"] = {
        "particles": args.particles,
        "points": points.shape[0],
        "ll": is_result.mean,
        "se_points": is_result.stderr,
        "mc_se": is_result.mc_stderr,
        **ess_summary(is_result.ess, "is", 10.0),
        "proposal_fit_cpu_s": fit_s,
        "cpu_s_per_1000_points": 1000 * is_s / points.shape[0],
    }
    ais_x = points[: args.ais_points]
    is_on_ais = is_result.log_px[: ais_x.shape[0]].double()
    out["is_on_ais_points"] = float(is_on_ais.mean())
    out["ais"] = []
    for n_steps in args.steps:
        tic = time.process_time()
        result = ais_log_likelihood(
            model, ais_x, n_chains=args.chains, n_steps=n_steps, generator=3
        )
        seconds = time.process_time() - tic
        paired = result.log_px.double() - is_on_ais
        out["ais"].append(
            {
                "steps": n_steps,
                "chains": args.chains,
                "points": ais_x.shape[0],
                "ll": result.mean,
                "mc_se": result.mc_stderr,
                "ess": float(result.ess.mean()),
                "log_w_std": result.info["log_w_std"],
                "ais_minus_is": float(paired.mean()),
                "ais_minus_is_se": float(paired.std() / paired.numel() ** 0.5),
                "cpu_s_per_1000_points": 1000 * seconds / ais_x.shape[0],
            }
        )
        print(json.dumps({"run": run_dir, **out["ais"][-1]}), flush=True)
    return out


def against_exact(name: str, args) -> list[dict]:
    """AIS and IS against enumeration on the truth ``name`` and a briefly trained model."""
    from ddchm.data import make_truth
    from ddchm.experiment import load_config, run
    from ddchm.models import ExactInference

    truth = make_truth(name)
    x = truth.splits(2000, 0, args.ais_points, seed=3)["test"].double()
    config = load_config(
        {
            "data": {"name": name, "n_train": 2000, "n_test": 50},
            "model": {"dtype": "float64"},
            "algorithm": {"name": "ws", "hidden": [32]},
            "train": {"steps": 300, "eval_every": 10**6, "log_every": 10**6},
        }
    )
    trained = run(config, progress=False)["model"]
    rows = []
    for label, model in (("truth", truth.model.double()), ("ws 300 steps", trained)):
        with torch.no_grad():
            exact = ExactInference(model).log_marginal(x)
        row = {"truth": name, "model": label, "points": x.shape[0], "exact": float(exact.mean())}
        for n_steps in args.steps:
            tic = time.process_time()
            result = ais_log_likelihood(
                model, x, n_chains=args.chains, n_steps=n_steps, generator=0
            )
            errors = result.log_px - exact
            row[f"ais_{n_steps}"] = {
                "mean_error": float(errors.mean()),
                "mc_se": result.mc_stderr,
                "max_abs_error": float(errors.abs().max()),
                "log_w_std": result.info["log_w_std"],
                "cpu_s": time.process_time() - tic,
            }
        tic = time.process_time()
        proposal = fit_proposal(model, n_steps=300, sleep_samples=500, generator=1)
        result = importance_log_likelihood(
            model, x, proposal, n_particles=args.particles, generator=2
        )
        errors = result.log_px - exact
        row[f"is_{args.particles}"] = {
            "mean_error": float(errors.mean()),
            "mc_se": result.mc_stderr,
            "max_abs_error": float(errors.abs().max()),
            "ess_median": float(result.ess.median()),
            "cpu_s": time.process_time() - tic,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (with checkpoint.pt)")
    parser.add_argument(
        "--truths", default=None, help="comma-separated synthetic truths: check against exact"
    )
    parser.add_argument("--points", type=int, default=200, help="held-out points for IS")
    parser.add_argument("--ais-points", type=int, default=50, help="the first of them for AIS")
    parser.add_argument("--particles", type=int, default=5000, help="IS particles per point")
    parser.add_argument("--chains", type=int, default=16, help="AIS chains per point")
    parser.add_argument(
        "--steps",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[200, 1000],
        help="comma-separated numbers of AIS temperatures",
    )
    args = parser.parse_args()
    for name in ("points", "ais_points", "particles", "chains"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer")
    if not args.steps or min(args.steps) < 1:
        parser.error("--steps: expected positive integers, e.g. 200,1000")
    if not args.runs and not args.truths:
        parser.error("give run directories or --truths")
    torch.set_num_threads(1)
    results = []
    for name in args.truths.split(",") if args.truths else []:
        results += against_exact(name, args)
    for run_dir in args.runs:
        results.append(measure(run_dir, args))
        print(json.dumps(results[-1]), flush=True)
    print(
        json.dumps(
            {
                "machine": platform.machine(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
