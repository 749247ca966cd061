"""DDC-HM learns a chain of continuous latent layers, measured against the truth that made the data.

What it shows: a synthetic ground truth from ``ddchm.data.make_truth`` with real-valued latents
(``linear-gaussian``: Gaussian(2) -> Gaussian(3) -> Gaussian(4); ``laplace-chain``: Gaussian(1)
-> Laplace(1) -> Gaussian(2), sparse causes; ``mixed``: Bernoulli(4) -> Gaussian(8) ->
Gaussian(16)) draws train and test data; the DDC Helmholtz machine learns a model of the same
shape from small random weights for a CPU-second budget on one thread (or ``--steps``), and the
learned model's held-out log-likelihood is printed beside the truth's on the same points, with
its gap. How each is computed is named in the output: in closed form for the all-Gaussian
chain, by quadrature for the one-unit Laplace chain, and importance-sampled through a proposal
fitted to each model (a stochastic lower bound) for ``mixed``, which has no exact form. A step
the divergence guard refuses ends training early with its message; the model before that step
is measured.

Run::

    python examples/continuous_chain.py                           # linear-gaussian, 20 CPU s
    python examples/continuous_chain.py --truth laplace-chain --cpu-seconds 60
    python examples/continuous_chain.py --truth mixed --steps 500

The last line of output is JSON with every printed figure.
"""

from __future__ import annotations

import argparse
import json

import torch

from ddchm.data import make_truth
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.evaluate.quality import model_quality
from ddchm.models import HierarchicalModel, exact_reference
from ddchm.train import DivergenceError, train

TRUTHS = ("linear-gaussian", "laplace-chain", "mixed")


def heldout_log_likelihood(model: HierarchicalModel, test: torch.Tensor, exact: bool, seed: int):
    """(mean log p(x) over ``test``, how it was computed)."""
    if exact:  # closed form (all-Gaussian) or enumeration / quadrature
        model = model.double()
        with torch.no_grad():
            log_px = exact_reference(model).log_marginal(test.double())
        name = "closed form" if all(l.family == "gaussian" for l in model.layers) else "quadrature"
        return float(log_px.mean()), name
    quality = model_quality(
        model, test, n_points=test.shape[0], n_particles=2000, n_permutations=0, seed=seed
    )
    return quality["is_ll_fitted"], "importance sampling, fitted proposal (lower bound)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--truth", choices=TRUTHS, default="linear-gaussian")
    parser.add_argument(
        "--cpu-seconds", type=float, default=20.0, help="training CPU seconds (one thread)"
    )
    parser.add_argument("--steps", type=int, default=10**9, help="at most this many steps")
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=500, help="held-out points measured")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and training")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    truth = make_truth(args.truth)  # parameters fixed by the truth's own seed
    data = truth.splits(n_train=args.n_train, n_valid=0, n_test=args.n_test, seed=1)
    print(f"truth: {truth.name}: {truth.description}")

    torch.manual_seed(args.seed)  # the layers' initial weights come from the global generator
    model = HierarchicalModel.from_config(
        [dict(layer, init_scale=0.1) for layer in truth.model.config()]
    ).double()
    # the settings of configs/learn-linear-gaussian-ddc.toml; the rest are the library's defaults
    ddc = DDCHelmholtzMachine.from_options(model, lr=0.02, generator=args.seed)
    stopped = None
    try:
        records = train(
            ddc,
            data["train"],
            steps=args.steps,
            batch_size=100,
            seed=args.seed,
            max_cpu_seconds=args.cpu_seconds,
            log_every=10**9,
            progress=False,
        )
        steps, cpu_s = records[-1]["step"], records[-1]["cpu_time"]
    except DivergenceError as error:  # the guard undid the step: the model is the one before it
        stopped = str(error)
        steps, cpu_s = error.step, None
        print(f"training stopped: {stopped}")

    learned, how = heldout_log_likelihood(model, data["test"], truth.enumerable, args.seed)
    reference, _ = heldout_log_likelihood(truth.model, data["test"], truth.enumerable, args.seed)
    result = {
        "truth": truth.name,
        "steps": steps,
        "train_cpu_s": cpu_s,
        "estimator": how,
        "learned_log_likelihood": learned,
        "truth_log_likelihood": reference,
        "gap": reference - learned,
        "diverged": stopped,
    }
    spent = f" in {cpu_s:.1f} CPU s" if cpu_s is not None else ""
    print(f"DDC-HM: {steps} steps{spent}; wake phase {ddc.wake_phase.name}")
    print(f"held-out log-likelihood ({how}, {data['test'].shape[0]} test points):")
    print(f"  learned {learned:.4f}  truth {reference:.4f}  gap {reference - learned:.4f} nats/pt")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
