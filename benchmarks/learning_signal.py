"""What limits DDC-HM learning on a truth: its update against the exact gradient, during learning.

Three runs from the same initialisation, data and theta optimiser (configs/learn-{model}-ddc.toml):

- ``exact``: theta follows the exact gradient of log p(x) (enumeration): the reference curve;
- ``oracle``: DDC-HM with oracle encodings r_l = exact E[T_l(z_l) | x] (spec s. 9);
- ``learned``: DDC-HM as configured. Every ``--every`` steps, on ``--points`` training points and
  ``--dreams`` fresh dreams for the maps, the cosine with the exact gradient of the update from
  the learned r, from the oracle r, and from the oracle r_1 with the learned r_2.. (which layer's
  recognition error costs most).

Models: easy, hard (configs/learn-{easy,hard}-ddc.toml) and sbn-gauss, linear-gaussian (library
defaults). Exact references: enumeration, or the closed form for linear-Gaussian chains.
Usage: python benchmarks/learning_signal.py [--models easy] [--steps 3000] [--every 500]
The last line of output is JSON: {"gap": {model: {run: {step: gap}}}, "cosine": {...},
"gap_to_exact_training_nats": {model: learned minus exact, means of the last five evaluations}}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from ddchm.algorithms.base import apply_ascent
from ddchm.evaluate.gradients import compare_gradients, oracle_encodings
from ddchm.experiment import Evaluator, build_algorithm, build_data, build_model, load_config
from ddchm.models import exact_reference
from ddchm.train import Minibatches

ROOT = Path(__file__).resolve().parent.parent


def run(model_key: str, mode: str, args) -> dict:
    config = load_config(ROOT / "configs" / f"learn-{model_key}-ddc.toml")
    data = build_data(config["data"])
    model = build_model(config["model"], data)
    machine = build_algorithm(config["algorithm"], model, config["train"]["seed"])
    dtype = next(model.parameters()).dtype
    train = data["train"].to(dtype)
    evaluate = Evaluator(model, machine, data)  # exact test NLL gap (and posterior accuracy)
    batches = Minibatches(train, config["train"]["batch_size"], config["train"]["seed"])
    probe = train[: args.points]
    gaps, cosines = {}, {}
    for step in range(1, args.steps + 1):
        batch = batches.next()
        if mode == "exact":
            ascent = exact_reference(model).expected_gradient(batch)
            apply_ascent(machine.optimizer, machine.params, ascent, machine.param_names)
        elif mode == "oracle":
            with torch.no_grad():
                oracle = oracle_encodings(exact_reference(model), machine.encodings, batch)
            ascent = machine.theta_gradient(batch, encodings=[r.to(dtype) for r in oracle])
            apply_ascent(machine.optimizer, machine.params, ascent, machine.param_names)
        else:
            machine.step(batch)
        if step % args.every:
            continue
        gaps[step] = round(evaluate()["nll_gap"], 4)
        if mode == "learned":
            exact = exact_reference(model)
            with torch.no_grad():
                oracle = [r.to(dtype) for r in oracle_encodings(exact, machine.encodings, probe)]
                learned = machine.expected_encodings(probe)
            target = exact.expected_gradient(probe)
            variants = {
                "learned": learned,
                "oracle": oracle,
                "oracle_r1": [oracle[0], *learned[1:]],
            }
            # the same large set of dreams for every variant: only r differs
            sleep = model.sample(args.dreams, generator=torch.Generator().manual_seed(step))
            cosines[step] = {
                name: round(
                    compare_gradients(machine.theta_gradient(probe, sleep, r), target)["cosine"], 4
                )
                for name, r in variants.items()
            }
        print(model_key, mode, step, gaps[step], cosines.get(step, ""), flush=True)
    return {"gap": gaps, "cosine": cosines}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="easy")
    parser.add_argument("--runs", default="exact,oracle,learned")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--points", type=int, default=2000, help="training points for cosines")
    parser.add_argument("--dreams", type=int, default=20_000, help="dreams for the probe's maps")
    args = parser.parse_args()
    result = {"gap": {}, "cosine": {}}
    for key in args.models.split(","):
        result["gap"][key], result["cosine"][key] = {}, {}
        for mode in args.runs.split(","):
            out = run(key, mode, args)
            result["gap"][key][mode] = out["gap"]
            if out["cosine"]:
                result["cosine"][key] = out["cosine"]
    # learned DDC-HM minus the exact-gradient learner, each averaged over its last five evaluations
    result["gap_to_exact_training_nats"] = {}
    for key, runs in result["gap"].items():
        if "exact" in runs and "learned" in runs:
            last = {mode: list(runs[mode].values())[-5:] for mode in ("exact", "learned")}
            mean = {mode: sum(v) / len(v) for mode, v in last.items()}
            result["gap_to_exact_training_nats"][key] = round(mean["learned"] - mean["exact"], 4)
    result["machine"] = (
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
