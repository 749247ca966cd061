"""What limits DDC-HM learning on a truth: its update against the exact gradient, during learning.

Runs from the same initialisation, minibatches and theta optimiser (configs/learn-{model}-ddc.toml),
at equal steps:

- ``exact``: theta follows the exact gradient of log p(x) (enumeration or closed form): the ideal
  learner every signal is judged against;
- ``oracle``: DDC-HM with oracle encodings r_l = exact E[T_l(z_l) | x] (spec s. 9);
- ``learned``: DDC-HM as configured. Every ``--probe-every`` steps, on ``--points`` training
  points and ``--dreams`` fresh dreams for the maps, the cosine with the exact gradient of the
  update from the learned r, from the oracle r, and from the oracle r_1 with the learned r_2..
  (which layer's recognition error costs most). The same learned and oracle updates are also
  summed over the ``--probe-window`` steps ending at each probe and compared with the sum of
  the exact gradients there (``learned_window``): Adam integrates its updates, so noise that
  is independent from step to step averages out of the trajectory while a lag or bias does not;
  the windowed cosine separates the two;
- ``rws``: reweighted wake-sleep with 5 particles, the config's theta rate, trunk and
  recogniser rate (the baseline that learns like the exact gradient per step).

The exact test NLL gap to the truth is evaluated every ``--every`` steps; a run's result is the
mean of its last five evaluations (single readings at Adam 0.02 move by ~0.01 nats). With
``--seeds N`` every run is repeated with model and minibatch seeds 0..N-1 (``--first-seed K``:
K..K+N-1), paired: each seed's runs share one start and one minibatch sequence; figures are
means over seeds with s.e.

Models: easy, hard (configs/learn-{easy,hard}-ddc.toml) and sbn-gauss, linear-gaussian (library
defaults). Usage: python benchmarks/learning_signal.py [--models easy,hard] [--seeds 3]
The last line of output is JSON: {"gap": {model: {run: {seed: {step: gap}}}}, "cosine": {...},
"gap_to_exact_training_nats": {model: learned minus exact}, "learned_cosine_during_learning":
{model: median of the learned update's cosines along the runs},
"learned_window_cosine_during_learning" {model: the same for the windowed cosines},
"ddc_minus_rws_nats": {model:
learned minus rws}, and "*_se" standard errors over seeds}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tomllib
from pathlib import Path

import torch

from ddchm.algorithms.base import apply_ascent
from ddchm.evaluate.gradients import compare_gradients, oracle_encodings
from ddchm.experiment import Evaluator, build_algorithm, build_data, build_model, load_config
from ddchm.models import exact_reference
from ddchm.train import Minibatches

ROOT = Path(__file__).resolve().parent.parent


def run(model_key: str, mode: str, seed: int | None, args) -> dict:
    config = load_config(ROOT / "configs" / f"learn-{model_key}-ddc.toml")
    if seed is not None:
        config["model"]["seed"] = config["train"]["seed"] = seed
    if mode != "rws":
        config["algorithm"].update(args.overrides)
        config = load_config(config)  # the overrides are checked like a config's own keys
    steps = args.steps or config["train"]["steps"]
    data = build_data(config["data"])
    model = build_model(config["model"], data)
    section = config["algorithm"]
    if mode == "rws":  # the baseline shares the theta rate, trunk and recogniser rate
        shared = {k: section[k] for k in ("lr", "hidden", "recognition_lr") if k in section}
        rws = {"name": "rws", "num_particles": 5, **shared, **args.rws_overrides}
        section = load_config({**config, "algorithm": rws})["algorithm"]
    machine = build_algorithm(section, model, config["train"]["seed"])
    dtype = next(model.parameters()).dtype
    train = data["train"].to(dtype)
    evaluate = Evaluator(model, machine, data)  # exact test NLL gap (and posterior accuracy)
    batches = Minibatches(train, config["train"]["batch_size"], config["train"]["seed"])
    probe = train[: args.points]
    gaps, cosines, window = {}, {}, {}
    for step in range(1, steps + 1):
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
        if step % args.every == 0:
            gaps[step] = round(evaluate()["nll_gap"], 4)
        if mode == "learned" and (-step) % args.probe_every < args.probe_window:
            # the probe: updates on the probe points from the learned r, the oracle r and (at
            # the probe step itself) the oracle r_1 with the learned r_2.., all with the same
            # large set of fresh dreams for the maps (only r differs); inside the window the
            # learned and oracle updates and the exact gradient are summed over its steps
            exact = exact_reference(model)
            with torch.no_grad():
                oracle = [r.to(dtype) for r in oracle_encodings(exact, machine.encodings, probe)]
                # the r of the machine's own wake phase (with importance_encodings, blended
                # with importance-sampled targets on a training-size set of dreams drawn by a
                # generator of the probe's own, so the run is not changed)
                probe_draws = torch.Generator().manual_seed(10**6 + step)
                learned = machine.wake_phase_encodings(probe, generator=probe_draws)
            target = exact.expected_gradient(probe)
            variants = {"learned": learned, "oracle": oracle}
            if step % args.probe_every == 0:
                variants["oracle_r1"] = [oracle[0], *learned[1:]]
            sleep = model.sample(args.dreams, generator=torch.Generator().manual_seed(step))
            updates = {
                name: machine.theta_gradient(probe, sleep, r) for name, r in variants.items()
            }
            summed = {"learned": updates["learned"], "oracle": updates["oracle"], "target": target}
            for name, update in summed.items():
                window[name] = {
                    k: window.get(name, {}).get(k, 0) + v.double() for k, v in update.items()
                }
            if step % args.probe_every == 0:
                cosines[step] = {
                    name: round(compare_gradients(u, target)["cosine"], 4)
                    for name, u in updates.items()
                }
                for name in ("learned", "oracle"):
                    cosine = compare_gradients(window[name], window["target"])["cosine"]
                    cosines[step][f"{name}_window"] = round(cosine, 4)
                window = {}
        if step % args.every == 0 or step in cosines:
            print(model_key, mode, seed, step, gaps.get(step), cosines.get(step, ""), flush=True)
    return {"gap": gaps, "cosine": cosines}


def last_five(gaps: dict) -> float:
    """A run's result: the mean of its last five evaluations."""
    values = list(gaps.values())[-5:]
    return sum(values) / len(values)


def mean_se(values: list[float]) -> tuple[float, float]:
    spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return round(statistics.fmean(values), 4), round(spread, 4)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="easy,hard")
    parser.add_argument("--runs", default="exact,oracle,learned,rws")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--every", type=int, default=100, help="steps between gap evaluations")
    parser.add_argument("--probe-every", type=int, default=500, help="steps between cosines")
    parser.add_argument("--seeds", type=int, default=1, help="model and minibatch seeds 0..N-1")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds K..K+N-1 (split a run across processes)"
    )
    parser.add_argument(
        "--probe-window",
        type=int,
        default=10,
        help="steps up to each probe whose updates are summed for the windowed cosine",
    )
    parser.add_argument("--points", type=int, default=2000, help="training points for cosines")
    parser.add_argument("--dreams", type=int, default=20_000, help="dreams for the probe's maps")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an [algorithm] key of the DDC-HM runs (TOML value), e.g. hidden=[500]",
    )
    parser.add_argument(
        "--rws-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the RWS run, e.g. insomnia=1.0",
    )
    args = parser.parse_args()
    args.overrides = tomllib.loads("\n".join(args.set))
    args.rws_overrides = tomllib.loads("\n".join(args.rws_set))
    torch.set_num_threads(1)
    runs = args.runs.split(",")
    if args.seeds > 1 or args.first_seed:
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    else:
        seeds = [None]  # the config's own seeds
    result = {"gap": {}, "cosine": {}}
    for key in args.models.split(","):
        result["gap"][key] = {mode: {} for mode in runs}
        result["cosine"][key] = {}
        for seed in seeds:
            for mode in runs:
                out = run(key, mode, seed, args)
                result["gap"][key][mode][seed or 0] = out["gap"]
                if out["cosine"]:
                    result["cosine"][key][seed or 0] = out["cosine"]
    # paired differences per seed (each a difference of last-five means), then mean and s.e.
    for name, (a, b) in {
        "gap_to_exact_training_nats": ("learned", "exact"),
        "oracle_gap_to_exact_training_nats": ("oracle", "exact"),
        "ddc_minus_rws_nats": ("learned", "rws"),
        "rws_gap_to_exact_training_nats": ("rws", "exact"),
    }.items():
        result[name], result[name + "_se"] = {}, {}
        for key, by_run in result["gap"].items():
            if a in by_run and b in by_run:
                diffs = [last_five(by_run[a][s]) - last_five(by_run[b][s]) for s in by_run[a]]
                result[name][key], result[name + "_se"][key] = mean_se(diffs)
    result["final_gap_nats"] = {
        key: {
            mode: mean_se([last_five(g) for g in by_seed.values()]) for mode, by_seed in r.items()
        }
        for key, r in result["gap"].items()
    }
    for name, probe in (
        ("learned_cosine_during_learning", "learned"),
        ("learned_window_cosine_during_learning", "learned_window"),
    ):
        result[name] = {
            key: round(
                statistics.median(c[probe] for probes in by_seed.values() for c in probes.values()),
                4,
            )
            for key, by_seed in result["cosine"].items()
            if by_seed
        }
    result["machine"] = (
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
