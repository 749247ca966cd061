"""What the DDC-HM defaults do on MNIST: each suspect of the 2026-11-25 -> 12-03 regression
(issue 24) switched off alone, at a matched CPU budget, measured by AIS.

The setting is ``src/ddchm/configs/reproduce/mnist-sbn2.toml`` (SBN 20-100-784 on the offline
10,000-digit subset) at ``--cpu-seconds`` of one thread (25: the RESULTS setting). Variants:
``default`` (on this chain, since issue 24: amortised from the start, the paper's recogniser
on standardised x, calibrated once); ``dense-default`` (the default before that change);
``no-wake-rows`` (wake_recognition = false: the recogniser trained on dreams only);
``adam-readout`` (recognition_readout = 'adam' instead of the ridge readout); ``one-ridge``
(exact_ridge = ridge: no separate ridge level on the exact features); ``paper`` (the paper
preset: all of these and the rest); the preset's other switches one at a time
(``no-moment-heads``, ``no-recalibration``, ``no-input-scaling``, ``no-products``); and
wake-sleep (``ws``) beside them; and the other way round, the paper preset with one default
switch turned back on (``paper+wake-rows``, ``paper+ridge-readout``, ...). Every model is measured
on the same held-out points with the same random numbers: AIS (``--ais-points`` points, 16
chains x 200 temperatures) and IS through a fitted proposal.
Usage: python benchmarks/ddc_ablation_mnist.py [--cpu-seconds 25] [--seeds 2] [--quick]
The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import resources

import torch

from ddchm.evaluate.quality import model_quality
from ddchm.experiment import load_config, run

VARIANTS = {
    "default": {"name": "ddc"},
    "no-wake-rows": {"name": "ddc", "wake_recognition": False},
    "adam-readout": {"name": "ddc", "recognition_readout": "adam"},
    "one-ridge": {"name": "ddc", "exact_ridge": 1e-3},
    "paper": {"name": "ddc", "preset": "paper"},
    "no-moment-heads": {"name": "ddc", "moment_heads": False},
    "no-recalibration": {"name": "ddc", "recalibrate_every": 0},
    "no-input-scaling": {"name": "ddc", "input_scaling": False},
    "no-products": {"name": "ddc", "max_products": 0},
    "ws": {"name": "ws"},
    "plug-in": {"name": "ddc", "plug_in": "mean"},
    "plug-in-sample": {"name": "ddc", "plug_in": "sample"},
    # the default on wide binary chains before issue 24 made them amortised from the start
    "dense-default": {
        "name": "ddc",
        "wake_recognition": True,
        "recognition_readout": "ridge",
        "input_scaling": False,
        "recalibrate_every": 1,
    },
}
# the other way round: the paper preset with one of the defaults' switches turned back on
PAPER = {"name": "ddc", "preset": "paper"}
VARIANTS.update(
    {
        "paper+wake-rows": {**PAPER, "wake_recognition": True},
        "paper+ridge-readout": {**PAPER, "recognition_readout": "ridge"},
        "paper+moment-heads": {**PAPER, "moment_heads": True},
        "paper+products": {**PAPER, "max_products": 300},
        "paper+exact-ridge": {**PAPER, "exact_ridge": 1e-6},
        "paper+recalibration": {**PAPER, "recalibrate_every": 1},
        "paper+input-scaling": {**PAPER, "input_scaling": True},
        "paper+input-scaling+plug-in": {**PAPER, "input_scaling": True, "plug_in": "mean"},
        "paper+input-scaling+recalibration": {
            **PAPER,
            "input_scaling": True,
            "recalibrate_every": 1,
        },
    }
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=25.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--ais-points", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2 CPU s, 1 seed, 10 AIS points")
    args = parser.parse_args()
    if args.quick:
        args.cpu_seconds, args.seeds, args.ais_points = 2.0, 1, 10
    torch.set_num_threads(1)
    path = str(resources.files("ddchm") / "configs" / "reproduce" / "mnist-sbn2.toml")
    base = load_config(path)
    shared = {k: base["algorithm"][k] for k in ("lr", "hidden", "recognition_lr")}
    out = {}
    for seed in range(
        args.first_seed, args.first_seed + args.seeds
    ):  # seeds outermost: the variants of a seed run close in time
        for name in args.variants.split(","):
            variant = {**VARIANTS[name]}
            algorithm = (
                {**shared, **variant}
                if variant["name"] != "ddc"
                else {
                    **base["algorithm"],
                    **variant,
                }
            )
            if variant["name"] != "ddc":
                algorithm.pop("sleep_samples", None)
            config = load_config(
                path,
                {"train": {"seed": seed, "max_cpu_seconds": args.cpu_seconds}},
            )
            config["algorithm"] = algorithm
            config = load_config(config)
            tic = time.process_time()
            result = run(config, progress=False)
            train_cpu = time.process_time() - tic
            q = model_quality(
                result["model"],
                result["data"]["test"],
                result["data"]["train"],
                None,
                n_points=200,
                n_particles=1000,
                proposal_steps=300,
                n_permutations=0,
                ais_chains=16,
                ais_steps=200,
                ais_points=args.ais_points,
                seed=0,
            )
            phase = getattr(result["algorithm"], "wake_phase", None)
            row = {
                "seed": seed,
                "steps": result["final"]["step"],
                "train_cpu_s": round(train_cpu, 1),
                "ais_ll": round(q["ais_ll"], 3),
                "ais_ll_se": round(q["ais_ll_se"], 3),
                "ais_log_w_std": round(q["ais_log_w_std"], 3),
                "is_ll_fitted": round(q["is_ll_fitted"], 3),
                "mmd2": q["mmd2"],
                "wake_phase": None if phase is None else phase.name,
            }
            out.setdefault(name, []).append(row)
            print(f"{name}: {json.dumps(row)}", flush=True)
    summary = {
        name: {
            "ais_ll_mean": round(sum(r["ais_ll"] for r in rows) / len(rows), 3),
            "steps_mean": round(sum(r["steps"] for r in rows) / len(rows)),
        }
        for name, rows in out.items()
    }
    print(
        json.dumps(
            {
                "summary": summary,
                "runs": out,
                "settings": vars(args),
                "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread",
            }
        )
    )


if __name__ == "__main__":
    main()
