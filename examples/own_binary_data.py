"""Your own binary data, learned by DDC-HM and by reweighted wake-sleep side by side.

What it shows: the path a researcher takes with a data matrix of their own. The data are a
(points x units) array of 0/1 values: by default noisy 4x4 "bars" images drawn in this script
from a seeded generator (each of the 8 horizontal and vertical bars is on with probability
0.25, then every pixel flips with probability 0.05); ``--data FILE.npy`` (or .npz / .csv)
reads yours instead, checked by ``ddchm.data.load_array``. The rows are split 80/10/10 into
train / valid / test. Both algorithms learn the same sigmoid belief net (same layers, same
initial weights) for the same CPU seconds on one thread, and each is measured on the same
held-out points: the log-likelihood (exact by enumeration when the binary latents have at most
24 units in all, else importance-sampled through a proposal fitted to the trained model; the
estimator is named in the output) and MMD^2 between model samples and held-out data, beside
the floor a model that reproduced the data would score.

Run::

    python examples/own_binary_data.py                       # bars, 20 CPU s per algorithm
    python examples/own_binary_data.py --cpu-seconds 60 --latents 4,8
    python examples/own_binary_data.py --data my_binary.npy --latents 10,30

The last line of output is JSON with every printed figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
import torch

from ddchm.algorithms import ReweightedWakeSleep
from ddchm.data import load_array, split_train_valid_test
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.evaluate.quality import heldout_sets, is_enumerable, model_quality
from ddchm.models import HierarchicalModel
from ddchm.train import train


def noisy_bars(n: int, side: int = 4, bar_prob: float = 0.25, flip: float = 0.05, seed: int = 0):
    """(n, side * side) binary images: each row and each column bar on with ``bar_prob``,
    then every pixel flipped with probability ``flip``; one seeded numpy generator."""
    rng = np.random.default_rng(seed)
    rows = rng.random((n, side)) < bar_prob  # horizontal bars
    cols = rng.random((n, side)) < bar_prob  # vertical bars
    images = rows[:, :, None] | cols[:, None, :]  # (n, side, side)
    flips = rng.random(images.shape) < flip
    return (images ^ flips).reshape(n, side * side).astype(np.float32)


def noisy_bars_log_likelihood(
    x: np.ndarray, side: int = 4, bar_prob: float = 0.25, flip: float = 0.05
) -> float:
    """Mean exact log p(x) under the process :func:`noisy_bars` draws from: a sum over the
    2^(2 side) bar patterns, the reference a perfect model of the default data would reach."""
    patterns = ((np.arange(2 ** (2 * side))[:, None] >> np.arange(2 * side)) & 1).astype(bool)
    rows, cols = patterns[:, :side], patterns[:, side:]
    clean = (rows[:, :, None] | cols[:, None, :]).reshape(len(patterns), -1)  # (P, D)
    on = patterns.sum(1)
    log_prior = on * np.log(bar_prob) + (2 * side - on) * np.log1p(-bar_prob)  # (P,)
    differ = (x[:, None, :] != clean[None]).sum(-1)  # (N, P) pixels flipped
    log_lik = differ * np.log(flip) + (x.shape[1] - differ) * np.log1p(-flip)
    joint = log_prior[None] + log_lik
    top = joint.max(1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(joint - top).sum(1))).mean())


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 4,8, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 4,8, got {text!r}")
    return sizes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a binary .npy / .npz / .csv file (default: noisy bars)")
    parser.add_argument("--points", type=int, default=5000, help="bars drawn (default data)")
    parser.add_argument(
        "--latents",
        type=parse_sizes,
        default=[4, 8],
        help="latent layer sizes, top first (default 4,8)",
    )
    parser.add_argument(
        "--cpu-seconds",
        type=float,
        default=20.0,
        help="training CPU seconds per algorithm (one thread)",
    )
    parser.add_argument(
        "--eval-points", type=int, default=500, help="held-out points of the log-likelihood and MMD"
    )
    parser.add_argument("--seed", type=int, default=0, help="data, initial weights, training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # CPU seconds then mean the same for both algorithms

    # --- data: a 0/1 matrix, split 80/10/10 with a seeded permutation ------------------------
    if args.data:
        try:
            array = load_array(args.data, observation="bernoulli")
        except (OSError, ValueError, TypeError) as error:
            sys.exit(f"error: {error}")
        source = args.data
    else:
        array = noisy_bars(args.points, seed=args.seed)
        source = f"noisy 4x4 bars, {args.points} points (seed {args.seed})"
    parts = split_train_valid_test(array, seed=args.seed)
    splits = {name: torch.from_numpy(part) for name, part in parts.items()}
    print(
        f"data: {source}; train {len(splits['train'])}, test {len(splits['test'])} rows of "
        f"{array.shape[1]} units"
    )

    # --- one model shape and one initial state for both --------------------------------------
    torch.manual_seed(args.seed)  # the layers' initial weights come from the global generator
    layers = [{"family": "bernoulli", "dim": d} for d in [*args.latents, array.shape[1]]]
    start = HierarchicalModel.from_config(layers)
    print(f"model: {start.describe()}")

    # DDC-HM with the settings of the synthetic benchmarks (configs/learn-hard-ddc.toml); RWS
    # with K = 5 particles and the same learning rates and recognition network sizes.
    shared = {"lr": 0.02, "hidden": (200,), "recognition_lr": 2e-3}
    learners = {
        "ddc": lambda m: DDCHelmholtzMachine.from_options(
            m, sleep_samples=2000, ridge=1e-3, generator=args.seed, **shared
        ),
        "rws": lambda m: ReweightedWakeSleep(m, num_particles=5, generator=args.seed, **shared),
    }
    enumerable = is_enumerable(start)
    results = {}
    for name, build in learners.items():
        model = copy.deepcopy(start)
        algorithm = build(model)
        records = train(
            algorithm,
            splits["train"],
            steps=10**9,
            batch_size=100,
            seed=args.seed,
            max_cpu_seconds=args.cpu_seconds,
            log_every=10**9,
            progress=False,
        )
        quality = model_quality(
            model,
            splits["test"],
            splits["train"],
            n_points=args.eval_points,
            mmd_samples=args.eval_points,
            n_permutations=0,
            n_particles=1000,
            proposal_steps=0 if enumerable else 300,
            seed=args.seed,
        )
        results[name] = {
            "steps": records[-1]["step"],
            "train_cpu_s": records[-1]["cpu_time"],
            "log_likelihood": quality["log_likelihood"],
            "estimator": quality["log_likelihood_estimator"],
            "mmd2": quality["mmd2"],
            "mmd2_floor": quality["mmd2_floor"],
        }
        r = results[name]
        print(
            f"{name}: {r['steps']} steps in {r['train_cpu_s']:.1f} CPU s; held-out "
            f"log-likelihood ({r['estimator']}) {r['log_likelihood']:.4f} nats/point; "
            f"MMD^2 {r['mmd2']:.5f} (floor {r['mmd2_floor']:.5f})"
        )
        for warning in quality["warnings"]:
            print(f"  warning: {warning}")
    print(f"held-out points: {quality['heldout']}")
    if not args.data:
        # the held-out points model_quality measured both models on
        points, _ = heldout_sets(splits["test"], args.eval_points, args.eval_points, args.seed)
        results["truth_log_likelihood"] = noisy_bars_log_likelihood(points.numpy())
        print(
            f"the process that drew the bars: log-likelihood (exact) "
            f"{results['truth_log_likelihood']:.4f} nats/point on the same points"
        )
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
