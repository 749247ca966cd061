"""Learning from data of a known truth: exact test NLL gap to the true model (issues 3 and 4).

Each algorithm learns a model of the truth's shape from small random weights on 10,000 points
of `sbn-easy` and `sbn-hard` (configs/learn-{easy,hard}-ddc.toml). DDC-HM runs its configured
steps; every baseline (``--algorithms``) then gets the same architecture, data and batch size and
the same training wall-clock as DDC-HM took (reported), with a generous step cap.

Usage: python benchmarks/learn_synthetic.py [--algorithms ws,rws,vimco] [--steps N]
The last line of output is JSON: {"ddc_gap_nats": {...}, "gaps": {model: {algorithm: gap}}, ...}.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from ddchm.experiment import load_config, run

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("easy", "hard")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", default="", help="baselines to add, e.g. ws,rws,vimco")
    parser.add_argument("--steps", type=int, default=None, help="DDC-HM steps (config default)")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    baselines = [n for n in args.algorithms.split(",") if n]
    result = {"ddc_gap_nats": {}, "gaps": {}, "time_s": {}, "steps": {}}
    for key in args.models.split(","):
        config = load_config(ROOT / "configs" / f"learn-{key}-ddc.toml")
        if args.steps:
            config["train"]["steps"] = args.steps
        config["train"]["log_every"] = config["train"]["eval_every"]
        ddc = run(config, progress=False)
        budget = ddc["final"]["time"]
        gaps = {"ddc": round(ddc["final"]["nll_gap"], 4)}
        times = {"ddc": round(budget, 1)}
        steps = {"ddc": ddc["final"]["step"]}
        print(
            f"{key} ddc: gap {gaps['ddc']} nats after {steps['ddc']} steps, {budget:.1f} s",
            flush=True,
        )
        for name in baselines:
            # the same architecture, data, batch, theta optimiser and recogniser trunk as DDC-HM;
            # every other hyper-parameter is the baseline's own default
            shared = {k: config["algorithm"][k] for k in ("lr", "hidden", "recognition_lr")}
            baseline = load_config({**config, "algorithm": {"name": name, **shared}})
            baseline["train"].update(
                steps=100 * config["train"]["steps"],
                max_seconds=budget,
                eval_every=10**9,
                log_every=10**9,
            )
            out = run(baseline, progress=False)
            gaps[name] = round(out["final"]["nll_gap"], 4)
            times[name] = round(out["final"]["time"], 1)
            steps[name] = out["final"]["step"]
            print(
                f"{key} {name}: gap {gaps[name]} nats after {steps[name]} steps, {times[name]} s",
                flush=True,
            )
        result["ddc_gap_nats"][key] = gaps["ddc"]
        result["gaps"][key], result["time_s"][key], result["steps"][key] = gaps, times, steps
    result["machine"] = (
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
