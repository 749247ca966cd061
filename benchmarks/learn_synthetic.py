"""Learning from data of a known truth: exact test NLL gap to the true model (issues 3 and 4).

Each algorithm learns a model of the truth's shape from small random weights on 10,000 points
of `sbn-easy` and `sbn-hard` (configs/learn-{easy,hard}-ddc.toml). DDC-HM runs its configured
steps; every baseline (``--algorithms``) then gets the same architecture, data and batch size and
the same training CPU time as DDC-HM took, with a generous step cap. The budget is CPU seconds
of this single-threaded process (``time.process_time``, ``train.max_cpu_seconds``), which other
processes on a shared machine do not eat into as they do wall-clock; wall-clock is reported
beside it (``wall_s``).

With ``--seeds N`` every run is repeated with model-initialisation and training seeds
0..N-1 (each baseline gets the CPU time of DDC-HM's run with the same seed); gaps are then
reported as the mean over seeds, with their standard errors under ``gap_se``.

With ``--cpu-seconds B`` every algorithm, DDC-HM included, trains for B CPU seconds (the
comparison at a fixed budget, whatever a step costs).

Usage: python benchmarks/learn_synthetic.py [--algorithms ws,rws,vimco] [--steps N] [--seeds N]
    [--first-seed K] [--cpu-seconds B]
The last line of output is JSON: {"ddc_gap_nats": {...}, "gaps": {model: {algorithm: gap}},
"time_s" (CPU seconds), "wall_s", "budget" (the clock that matched the runs), ...}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from ddchm.experiment import load_config, run

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("easy", "hard")


def run_seed(key: str, seed: int, args, baselines) -> tuple[dict, dict, dict]:
    """Gap, CPU time, wall-clock and steps of DDC-HM and of each baseline at DDC-HM's CPU time,
    one seed."""
    config = load_config(ROOT / "configs" / f"learn-{key}-ddc.toml")
    if args.steps:
        config["train"]["steps"] = args.steps
    if args.seeds > 1 or args.first_seed:
        config["model"]["seed"] = config["train"]["seed"] = seed
    config["train"]["log_every"] = config["train"]["eval_every"]
    if args.cpu_seconds:  # DDC-HM too runs to the budget, not to its configured steps
        config["train"].update(
            steps=100 * config["train"]["steps"], max_cpu_seconds=args.cpu_seconds
        )
    ddc = run(config, progress=False)
    budget = args.cpu_seconds or ddc["final"]["cpu_time"]
    gaps = {"ddc": round(ddc["final"]["nll_gap"], 4)}
    times = {"ddc": round(budget, 1)}
    walls = {"ddc": round(ddc["final"]["time"], 1)}
    steps = {"ddc": ddc["final"]["step"]}
    print(
        f"{key} seed {seed} ddc: gap {gaps['ddc']} nats after {steps['ddc']} steps, "
        f"{budget:.1f} CPU s ({walls['ddc']} s wall)",
        flush=True,
    )
    for name in baselines:
        # the same architecture, data, batch, theta optimiser and recogniser trunk as DDC-HM;
        # every other hyper-parameter is the baseline's own default
        shared = {k: config["algorithm"][k] for k in ("lr", "hidden", "recognition_lr")}
        baseline = load_config({**config, "algorithm": {"name": name, **shared}})
        baseline["train"].update(
            steps=100 * config["train"]["steps"],
            max_cpu_seconds=budget,
            eval_every=10**9,
            log_every=10**9,
        )
        out = run(baseline, progress=False)
        gaps[name] = round(out["final"]["nll_gap"], 4)
        times[name] = round(out["final"]["cpu_time"], 1)
        walls[name] = round(out["final"]["time"], 1)
        steps[name] = out["final"]["step"]
        print(
            f"{key} seed {seed} {name}: gap {gaps[name]} nats after {steps[name]} steps, "
            f"{times[name]} CPU s ({walls[name]} s wall)",
            flush=True,
        )
    return gaps, times, steps, walls


def summarise(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean over seeds and its standard error (0 for one seed), per algorithm."""
    means, errors = {}, {}
    for name in per_seed[0]:
        values = [record[name] for record in per_seed]
        means[name] = round(statistics.fmean(values), 4)
        spread = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        errors[name] = round(spread, 4)
    return means, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", default="", help="baselines to add, e.g. ws,rws,vimco")
    parser.add_argument("--steps", type=int, default=None, help="DDC-HM steps (config default)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds K..K+N-1 (split a run across processes)"
    )
    parser.add_argument(
        "--cpu-seconds",
        type=float,
        default=None,
        help="every algorithm, DDC-HM included, trains for this many CPU seconds "
        "(default: DDC-HM runs its configured steps and the baselines get its CPU time)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU seconds then measure one core's work, the same for all
    baselines = [n for n in args.algorithms.split(",") if n]
    result = {
        "ddc_gap_nats": {},
        "gaps": {},
        "gap_se": {},
        "time_s": {},  # CPU seconds, the clock the budgets are matched on
        "wall_s": {},
        "steps": {},
    }
    for key in args.models.split(","):
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = [run_seed(key, seed, args, baselines) for seed in seeds]
        gaps, errors = summarise([r[0] for r in runs])
        times, _ = summarise([r[1] for r in runs])
        steps, _ = summarise([r[2] for r in runs])
        walls, _ = summarise([r[3] for r in runs])
        result["ddc_gap_nats"][key] = gaps["ddc"]
        result["gaps"][key], result["gap_se"][key] = gaps, errors
        result["time_s"][key], result["wall_s"][key] = times, walls
        result["steps"][key] = steps
    result["budget"] = (
        f"cpu_seconds (time.process_time, 1 thread): every algorithm gets {args.cpu_seconds:g}"
        if args.cpu_seconds
        else "cpu_seconds (time.process_time, 1 thread): baselines get DDC-HM's"
    )
    result["seeds"], result["first_seed"] = args.seeds, args.first_seed
    result["machine"] = (
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
