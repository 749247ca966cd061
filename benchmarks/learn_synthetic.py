"""Learning from data of a known truth: exact test NLL gap to the true model (issues 3 and 4).

Each algorithm learns a model of the truth's shape from small random weights on 10,000 points
of `sbn-easy` and `sbn-hard` (configs/learn-{easy,hard}-ddc.toml). DDC-HM runs its configured
steps; every baseline (``--algorithms``) then gets the same architecture, data and batch size and
the same training CPU time as DDC-HM took, with a generous step cap. The budget is CPU seconds
of this single-threaded process (``time.process_time``, ``train.max_cpu_seconds``), which other
processes on a shared machine do not eat into as they do wall-clock; wall-clock is reported
beside it (``wall_s``).

A run's gap is the mean of the exact test NLL gap over its last 5 of 20 evaluations spread
over the run (at Adam 0.02 a single reading moves by ~0.01 nats);
a baseline's spacing comes from timing 30 of its steps first. The last reading alone is under
``final_gaps``. With ``--seeds N`` every run is repeated with model-initialisation and training
seeds 0..N-1 (each baseline gets the CPU time of DDC-HM's run with the same seed); gaps are then
reported as the mean over seeds, with their standard errors under ``gap_se``, and per seed
under ``per_seed``.

With ``--cpu-seconds B`` every algorithm, DDC-HM included, trains for B CPU seconds (the
comparison at a fixed budget, whatever a step costs). ``--lr`` sets every algorithm's theta
learning rate (Adam; default the config's 0.02), ``--batch-size`` every algorithm's batch.

Usage: python benchmarks/learn_synthetic.py [--algorithms ws,rws,vimco] [--steps N] [--seeds N]
    [--first-seed K] [--cpu-seconds B] [--batch-size B] [--lr R]
The last line of output is JSON: {"ddc_gap_nats": {...}, "gaps": {model: {algorithm: gap}},
"time_s" (CPU seconds), "wall_s", "budget" (the clock that matched the runs), ...}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ddchm.experiment import build_algorithm, build_data, build_model, load_config, run

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("easy", "hard")


EVALUATIONS = 20  # per run, evenly spaced; a run's gap is the mean of the last LAST of them
LAST = 5


def steps_in(config, cpu_seconds: float) -> int:
    """About how many steps of this run fit in ``cpu_seconds``: 30 steps timed after 20."""
    data = build_data(config["data"])
    train = data["train"].float()
    algorithm = build_algorithm(config["algorithm"], build_model(config["model"], data), 0)
    generator = torch.Generator().manual_seed(0)
    size = config["train"]["batch_size"]
    for repeat in range(2):
        tic = time.process_time()
        for _ in range(20 if repeat == 0 else 30):
            algorithm.step(train[torch.randint(train.shape[0], (size,), generator=generator)])
    return max(1, int(cpu_seconds / ((time.process_time() - tic) / 30)))


def train_and_read(config, label: str) -> tuple[dict, float]:
    """Run a config; (its final record, the mean gap over its last LAST evaluations)."""
    out = run(config, progress=False)
    gaps = [record["nll_gap"] for record in out["records"] if "nll_gap" in record]
    final = out["final"]
    last = round(statistics.fmean(gaps[-LAST:]), 4)
    print(
        f"{label}: gap {last} nats (mean of the last {LAST} of {len(gaps)} evaluations; final "
        f"{final['nll_gap']:.4f}) after {final['step']} steps, {final['cpu_time']:.1f} CPU s "
        f"({final['time']:.1f} s wall)",
        flush=True,
    )
    return final, last


def run_seed(key: str, seed: int, args, baselines) -> tuple[dict, ...]:
    """Gaps (mean of the last five evaluations, and final), CPU time, steps and wall-clock of
    DDC-HM and of each baseline at DDC-HM's CPU time (or at ``--cpu-seconds``), one seed."""
    config = load_config(ROOT / "configs" / f"learn-{key}-ddc.toml")
    if args.steps:
        config["train"]["steps"] = args.steps
    if args.batch_size:
        config["train"]["batch_size"] = args.batch_size
    if args.lr:
        config["algorithm"]["lr"] = args.lr
    if args.seeds > 1 or args.first_seed:
        config["model"]["seed"] = config["train"]["seed"] = seed
    expected = config["train"]["steps"]
    if args.cpu_seconds:  # DDC-HM too runs to the budget, not to its configured steps
        expected = steps_in(config, args.cpu_seconds)
        config["train"].update(
            steps=100 * config["train"]["steps"], max_cpu_seconds=args.cpu_seconds
        )
    every = max(1, expected // EVALUATIONS)
    config["train"].update(eval_every=every, log_every=every, checkpoint_every=10**9)
    final, last = train_and_read(config, f"{key} seed {seed} ddc")
    budget = args.cpu_seconds or final["cpu_time"]
    gaps, finals = {"ddc": last}, {"ddc": round(final["nll_gap"], 4)}
    times, walls = {"ddc": round(budget, 1)}, {"ddc": round(final["time"], 1)}
    steps = {"ddc": final["step"]}
    for name in baselines:
        # the same architecture, data, batch, theta optimiser and recogniser trunk as DDC-HM;
        # every other hyper-parameter is the baseline's own default
        shared = {k: config["algorithm"][k] for k in ("lr", "hidden", "recognition_lr")}
        baseline = load_config({**config, "algorithm": {"name": name, **shared}})
        every = max(1, steps_in(baseline, budget) // EVALUATIONS)
        baseline["train"].update(
            steps=100 * expected, max_cpu_seconds=budget, eval_every=every, log_every=every
        )
        final, gaps[name] = train_and_read(baseline, f"{key} seed {seed} {name}")
        finals[name] = round(final["nll_gap"], 4)
        times[name], walls[name] = round(final["cpu_time"], 1), round(final["time"], 1)
        steps[name] = final["step"]
    return gaps, finals, times, steps, walls


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
        "--batch-size", type=int, default=None, help="every algorithm's batch (config default)"
    )
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds K..K+N-1 (split a run across processes)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="every algorithm's theta rate (config default)"
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
        "final_gaps": {},  # the last evaluation alone
        "final_gap_se": {},
        "per_seed": {},
        "time_s": {},  # CPU seconds, the clock the budgets are matched on
        "wall_s": {},
        "steps": {},
    }
    for key in args.models.split(","):
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        runs = [run_seed(key, seed, args, baselines) for seed in seeds]
        gaps, errors = summarise([r[0] for r in runs])
        finals, final_errors = summarise([r[1] for r in runs])
        times, _ = summarise([r[2] for r in runs])
        steps, _ = summarise([r[3] for r in runs])
        walls, _ = summarise([r[4] for r in runs])
        result["ddc_gap_nats"][key] = gaps["ddc"]
        result["gaps"][key], result["gap_se"][key] = gaps, errors
        result["final_gaps"][key], result["final_gap_se"][key] = finals, final_errors
        result["per_seed"][key] = [r[0] for r in runs]
        result["time_s"][key], result["wall_s"][key] = times, walls
        result["steps"][key] = steps
    result["budget"] = (
        f"cpu_seconds (time.process_time, 1 thread): every algorithm gets {args.cpu_seconds:g}"
        if args.cpu_seconds
        else "cpu_seconds (time.process_time, 1 thread): baselines get DDC-HM's"
    )
    result["batch_size"] = args.batch_size or "config"
    result["lr"] = args.lr or "config"
    result["seeds"], result["first_seed"] = args.seeds, args.first_seed
    result["machine"] = (
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
