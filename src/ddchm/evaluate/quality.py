"""How good is a learned model? Log-likelihood and MMD of any model, learned by any algorithm.

:func:`model_quality` is what ``ddchm evaluate RUN_DIR`` and ``ddchm reproduce`` report:

* ``exact_ll``: log p(x) by enumeration, averaged over held-out points (nats per point), when
  every latent layer is binary and small enough to enumerate (:func:`is_enumerable`).
* ``is_ll_fitted``: the importance-sampled log p(x) (:func:`~ddchm.evaluate.likelihood.\
importance_log_likelihood`) through a proposal fitted to the trained model by sleep-phase
  training (:func:`~ddchm.evaluate.likelihood.fit_proposal`). Every model is measured through a
  proposal made the same way, so the comparison favours no algorithm.
* ``is_ll_own``: the same through the algorithm's own q (for DDC-HM, a mean-field proposal read
  off its expected encodings: :func:`own_proposal`).
  Both are stochastic lower bounds of log p(x) in expectation: the higher, the tighter.
  Each comes with ``_se`` (standard error over the held-out points), ``_mc_se`` (Monte Carlo
  standard error of the estimator) and ``_ess`` (mean effective sample size out of K).
* ``mmd2``: unbiased MMD^2 (Gaussian kernel, median-heuristic bandwidths 0.25..4 x) between
  ``n`` model samples and ``n`` held-out data points, with ``mmd_p_value`` from a permutation
  test (small: the model's samples are told apart from the data) and ``mmd2_floor``: the same
  statistic between the held-out points and ``n`` training points, with the same bandwidths,
  i.e. what a model that reproduced the data distribution would score.
"""

from __future__ import annotations

import time

import torch

from ddchm.evaluate.likelihood import (
    exact_log_likelihood,
    fit_proposal,
    importance_log_likelihood,
)
from ddchm.evaluate.mmd import MULTI, mmd
from ddchm.models.hierarchical import HierarchicalModel
from ddchm.validation import check_positive_int, make_generator

MAX_ENUMERATED_UNITS = 24  # binary latent units in all; 2^24 joint configurations at most


def is_enumerable(model: HierarchicalModel) -> bool:
    """Whether log p(x) can be computed exactly: binary latents, few units in all."""
    latents = model.layers[1:]
    return all(layer.discrete for layer in latents) and (
        sum(layer.dim for layer in latents) <= MAX_ENUMERATED_UNITS
    )


def own_proposal(algorithm):
    """The algorithm's own density q(z | x): the baselines' recognition model; for DDC-HM, whose
    recogniser outputs expected encodings rather than a density, the mean-field proposal read
    off them (``DDCHelmholtzMachine.proposal``). None if there is neither."""
    if callable(getattr(algorithm, "proposal", None)):
        return algorithm.proposal()
    recognition = getattr(algorithm, "recognition", None)
    return recognition if callable(getattr(recognition, "sample_with_log_prob", None)) else None


def _rows(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n]]


@torch.no_grad()
def _importance(model, x, proposal, n_particles, seed, progress, prefix) -> dict:
    result = importance_log_likelihood(
        model, x, proposal, n_particles=n_particles, generator=seed, progress=progress
    )
    return {
        prefix: result.mean,
        f"{prefix}_se": result.stderr,
        f"{prefix}_mc_se": result.mc_stderr,
        f"{prefix}_ess": float(result.ess.mean()),
    }


def model_quality(
    model: HierarchicalModel,
    test,
    train=None,
    algorithm=None,
    *,
    n_points: int = 500,
    n_particles: int = 200,
    proposal_steps: int = 500,
    proposal_samples: int = 500,
    mmd_samples: int = 1000,
    n_permutations: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Log-likelihood and MMD of ``model`` on held-out data ``test`` (module docstring).

    Args:
        model: the learned generative model (left unchanged).
        test: (N, D) held-out data; ``train``: (M, D) training data, for the MMD floor (None:
            no floor).
        algorithm: the algorithm that learned it, for its own proposal (None: none).
        n_points: held-out points for the log-likelihoods (a seeded subset).
        n_particles: K, importance samples per point.
        proposal_steps, proposal_samples: sleep-phase updates, and dreams per update, of the
            fitted proposal (0 steps: no fitted-proposal estimate).
        mmd_samples: model samples and held-out points of the MMD (each at most this many).
        n_permutations: of the MMD permutation test (0: no p-value).
        seed: every random draw (subsets, samples, particles, proposal fit) derives from it.
        progress: tqdm bars on the importance sampling and the permutation test.

    Returns a flat dict of floats (keys in the module docstring) plus ``eval_cpu_s``, the CPU
    seconds the evaluation took.
    """
    if not isinstance(model, HierarchicalModel):
        raise TypeError(f"model: expected a HierarchicalModel, got {type(model).__name__}")
    n_points = check_positive_int(n_points, "n_points")
    n_particles = check_positive_int(n_particles, "n_particles")
    proposal_steps = check_positive_int(proposal_steps, "proposal_steps", minimum=0)
    mmd_samples = check_positive_int(mmd_samples, "mmd_samples", minimum=2)
    tic = time.process_time()
    reference = next(model.parameters())
    test = model.check_data(torch.as_tensor(test), "test").to(reference)
    generator = make_generator(seed)
    points = _rows(test, n_points, generator)
    out: dict[str, float] = {"n_points": float(points.shape[0]), "n_particles": float(n_particles)}

    if is_enumerable(model):
        previous = reference.dtype
        try:  # enumeration in float64: sums of 2^D terms
            out["exact_ll"] = exact_log_likelihood(model.double(), points.double()).mean
        finally:
            model.to(previous)
    if proposal_steps > 0:
        proposal = fit_proposal(
            model, n_steps=proposal_steps, sleep_samples=proposal_samples, generator=seed + 1
        )
        out.update(
            _importance(model, points, proposal, n_particles, seed + 2, progress, "is_ll_fitted")
        )
    own = own_proposal(algorithm) if algorithm is not None else None
    if own is not None:
        out.update(_importance(model, points, own, n_particles, seed + 3, progress, "is_ll_own"))

    held_out = _rows(test, mmd_samples, generator).double()
    samples = model.sample(held_out.shape[0], generator=seed + 4)[0].double()
    result = mmd(
        samples,
        held_out,
        multipliers=MULTI,
        n_permutations=n_permutations,
        generator=seed + 5,
        permutation_max_points=1000,
        progress=progress,
    )
    out["mmd2"] = result.mmd2
    if result.p_value is not None:
        out["mmd_p_value"] = result.p_value
    if train is not None:
        train = model.check_data(torch.as_tensor(train), "train").to(reference)
        reference_points = _rows(train, held_out.shape[0], generator).double()
        floor = mmd(reference_points, held_out, bandwidth=result.bandwidths)
        out["mmd2_floor"] = floor.mmd2
    out["mmd_samples"] = float(held_out.shape[0])
    out["eval_cpu_s"] = time.process_time() - tic
    return out
