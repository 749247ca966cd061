"""DDC-HM against VAE and IWAE on continuous hierarchies, at matched CPU time (issue 10).

On `sparse-coding` (Gaussian(4) -> Laplace(16) -> Gaussian(16)) DDC-HM meets VAE and IWAE-5;
on `mixed` (Bernoulli(4) -> Gaussian(8) -> Gaussian(16)), whose binary top layer VAE and IWAE
cannot reparameterise, it meets RWS-5 and VIMCO-5. Each algorithm learns a model of the truth's
shape from small random weights (init_scale 0.1) on 10,000 points, batch 100, Adam 0.02 on
theta, with the library's default settings otherwise, for the same budget of CPU seconds of one
thread (``time.process_time``; wall-clock reported beside it). Test log-likelihood on held-out
points by importance sampling with ``--particles`` particles a point:

- ``fitted``: through a bottom-up proposal fitted to the trained model by the sleep phase
  (``evaluate.fit_proposal``, theta fixed), the same procedure for every algorithm, so the
  comparison favours none;
- ``own_q``: through each algorithm's own recognition model q; for DDC-HM, the mean-field
  proposal read off its expected encodings (``DDCHelmholtzMachine.proposal``).

The truth's own log-likelihood is estimated the same way (fitted proposal), as a reference.
Usage: python benchmarks/continuous_compare.py [--budget 40] [--seeds 2] [--particles 5000]
       [--truths sparse-coding] [--algorithms ddc] [--set wake_particles=5]
The last line of output is JSON: {"test_loglik": {truth: {algorithm: [mean, s.e.]}}, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import tomllib

import torch

from ddchm.data import make_truth
from ddchm.evaluate.likelihood import fit_proposal, importance_log_likelihood
from ddchm.experiment import build_algorithm, build_data, build_model, load_config
from ddchm.train import Minibatches

TRUTHS = ("sparse-coding", "mixed")
ALGORITHMS = {
    "ddc": {},
    "vae": {},
    "iwae": {"num_particles": 5},
    "rws": {"num_particles": 5},
    "vimco": {"num_particles": 5},
}
# VAE / IWAE need reparameterisable latents: `mixed` has a Bernoulli top layer, so there the
# score-function methods (RWS-5, VIMCO-5) stand in for them.
PER_TRUTH = {"sparse-coding": ("ddc", "vae", "iwae"), "mixed": ("ddc", "rws", "vimco")}


def loglik(model, x, proposal, particles, seed):
    result = importance_log_likelihood(model, x, proposal, n_particles=particles, generator=seed)
    return float(result.log_px.mean()), float(result.ess.median())


def run_one(truth_name, name, seed, args):
    config = load_config(
        {
            "data": {"source": "synthetic", "name": truth_name, "n_test": args.points},
            "model": {"architecture": "truth", "init_scale": 0.1, "seed": seed},
            "algorithm": {
                "name": name,
                "lr": 0.02,
                **ALGORITHMS[name],
                **(args.overrides if name == "ddc" else {}),
            },
        }
    )
    data = build_data(config["data"])
    model = build_model(config["model"], data)
    algorithm = build_algorithm(config["algorithm"], model, seed)
    batches = Minibatches(data["train"].float(), 100, seed)
    cpu, wall, steps = time.process_time(), time.perf_counter(), 0
    status = "ok"
    while time.process_time() - cpu < args.budget:
        metrics = algorithm.step(batches.next())
        steps += 1
        if not all(math.isfinite(v) for v in metrics.values()) or not all(
            bool(torch.isfinite(p).all()) for p in model.parameters()
        ):
            status = f"diverged at step {steps}"
            break
    out = {"steps": steps, "cpu_s": round(time.process_time() - cpu, 1), "status": status}
    out["wall_s"] = round(time.perf_counter() - wall, 1)
    if status != "ok":
        return out
    x = data["test"].float()
    proposal = fit_proposal(model, n_steps=args.proposal_steps, sleep_samples=1000, generator=seed)
    out["fitted"], out["fitted_ess"] = loglik(model, x, proposal, args.particles, seed)
    own_q = algorithm.proposal() if name == "ddc" else algorithm.recognition
    out["own_q"], out["own_q_ess"] = loglik(model, x, own_q, args.particles, seed)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=40.0, help="CPU seconds per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--particles", type=int, default=5000)
    parser.add_argument("--points", type=int, default=500, help="held-out points")
    parser.add_argument("--proposal-steps", type=int, default=2000)
    parser.add_argument("--truths", default=",".join(TRUTHS))
    parser.add_argument("--algorithms", default="", help="a subset of each truth's algorithms")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an [algorithm] key of the DDC-HM runs (TOML value)",
    )
    args = parser.parse_args()
    args.overrides = tomllib.loads("\n".join(args.set))
    chosen = [name for name in args.algorithms.split(",") if name]
    torch.set_num_threads(1)
    result = {"test_loglik": {}, "runs": {}}
    for truth_name in args.truths.split(","):
        truth = make_truth(truth_name)
        x = truth.splits(10, 0, args.points, seed=1)["test"]
        proposal = fit_proposal(truth.model, n_steps=args.proposal_steps, sleep_samples=1000)
        truth_ll, _ = loglik(truth.model, x, proposal, args.particles, 0)
        result["test_loglik"][truth_name] = {"truth": [round(truth_ll, 3), 0.0]}
        result["runs"][truth_name] = {}
        for name in PER_TRUTH[truth_name]:
            if chosen and name not in chosen:
                continue
            runs = [run_one(truth_name, name, seed, args) for seed in range(args.seeds)]
            result["runs"][truth_name][name] = runs
            print(truth_name, name, runs, flush=True)
            for key in ("fitted", "own_q"):
                values = [r[key] for r in runs if key in r]
                if len(values) == len(runs):
                    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
                    label = name if key == "fitted" else f"{name}_own_q"
                    result["test_loglik"][truth_name][label] = [
                        round(statistics.mean(values), 3),
                        round(se, 3),
                    ]
    result["settings"] = vars(args)
    result["machine"] = f"{platform.machine()}, torch {torch.__version__}, 1 thread"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
