"""How good is a learned model? Log-likelihood and MMD of any model, learned by any algorithm.

:func:`model_quality` is what ``ddchm evaluate RUN_DIR`` and ``ddchm reproduce`` report:

* ``exact_ll``: log p(x) by enumeration, averaged over held-out points (nats per point), when
  every latent layer is binary and small enough to enumerate (:func:`is_enumerable`). Where it
  is exact, nothing else estimates log p(x) unless asked (``importance=True``, ``ais_chains``).
* ``is_ll_fitted``: the importance-sampled log p(x) (:func:`~ddchm.evaluate.likelihood.\
importance_log_likelihood`) through a proposal fitted to the trained model by sleep-phase
  training (:func:`~ddchm.evaluate.likelihood.fit_proposal`). Every model is measured through a
  proposal made the same way, so the comparison favours no algorithm.
* ``is_ll_own``: the same through the algorithm's own q (for DDC-HM, a mean-field proposal read
  off its expected encodings: :func:`own_proposal`).
  Both are stochastic lower bounds of log p(x) in expectation: the higher, the tighter. Both
  measure the first ``is_points`` of the held-out points (``is_points``, ``n_particles``
  record the protocol; ``exact_ll_on_is_points``: the exact value on those points, where
  there is one and they are fewer).
  Each comes with ``_se`` (standard error over the held-out points), ``_mc_se`` (Monte Carlo
  standard error of the estimator), the effective sample size out of K (``_ess`` its mean,
  ``_ess_median``, ``_ess_q10`` its 10th percentile, ``_ess_min``), ``_low_ess`` (the fraction
  of points whose ESS is below ``min_ess``) and ``_cpu_s``. An estimate whose median ESS is
  below ``min_ess`` (10) rests on a handful of weights: its delta-method error is then itself
  unreliable and the bound may be loose by more than it says, so a line in ``warnings`` says so.
* ``ais_ll``: annealed importance sampling (:func:`~ddchm.evaluate.ais.ais_log_likelihood`,
  prior -> posterior, Gibbs on binary layers, HMC on continuous ones) on the first
  ``ais_points`` of the same held-out points, with ``ais_chains`` chains of ``ais_steps``
  temperatures each (``ais_chains=0``: none). It needs only the generative model, so every
  algorithm, DDC-HM included, is measured the same way. With ``_se``, ``_mc_se``, ``_ess``
  (of the chain weights), ``_log_w_std`` (spread of log w across a point's chains: the bias
  diagnostic, the gap of one chain being about var(log w) / 2; a line in ``warnings`` above
  ``MAX_LOG_W_SPREAD``, 2 nats), ``_cpu_s``, and
  ``exact_ll_on_ais_points`` (where log p(x) is exact: the figure to compare AIS with, on the
  same points), ``is_ll_fitted_on_ais_points`` and ``ais_minus_is`` / ``ais_minus_is_se``: the
  paired difference AIS - IS on those points and its standard error over them (both lower bounds:
  the larger estimate is the tighter one).
* ``log_likelihood`` and ``log_likelihood_estimator``: the estimate to report, the most
  trustworthy available: 'exact', else 'ais', else 'is' (the fitted proposal's), else
  'is_own' (the own q's); ``protocol``: one line naming every estimate with its points,
  particles and temperatures.
* ``mmd2``: unbiased MMD^2 (Gaussian kernel, bandwidths 0.25..4 x the median distance of the
  held-out points: :class:`HeldOutMMD`) between ``n`` model samples and ``n`` held-out points,
  with ``mmd_p_value`` from a permutation test (small: the model's samples are told apart
  from the data) and ``mmd2_floor``: the same statistic between the held-out points and ``n``
  training points, with the same bandwidths, i.e. what a model that reproduced the data
  distribution would score.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from ddchm.evaluate.ais import ais_log_likelihood
from ddchm.evaluate.likelihood import (
    exact_log_likelihood,
    fit_proposal,
    importance_log_likelihood,
)
from ddchm.evaluate.mmd import MULTI, mmd
from ddchm.models.hierarchical import HierarchicalModel
from ddchm.validation import check_positive_int, make_generator

MAX_ENUMERATED_UNITS = 24  # binary latent units in all; 2^24 joint configurations at most
MIN_ESS = 10.0  # below this median effective sample size an IS estimate is flagged
MAX_LOG_W_SPREAD = 2.0  # nats: above this mean spread of log w across chains AIS is flagged


def is_enumerable(model: HierarchicalModel) -> bool:
    """Whether log p(x) can be computed exactly: binary latents, few units in all."""
    latents = model.layers[1:]
    return all(layer.discrete for layer in latents) and (
        sum(layer.dim for layer in latents) <= MAX_ENUMERATED_UNITS
    )


# importance sampling sized to the model: multiply-adds (points x particles x 2 x parameters)
EVALUATE_WORK = 2e11  # ``ddchm evaluate``'s default
SUMMARY_WORK = 1e10  # the closing summary of ``ddchm train``
SUMMARY_POINTS = 100  # held-out points of the summary's importance sampling


def sized_particles(model: HierarchicalModel, n_points: int, work: float, most: int = 5000) -> int:
    """Particles per point so that importance sampling ``n_points`` points costs at most
    ``work`` multiply-adds, between 10 and ``most``. One particle costs log p(x, z) (a
    multiply-add per generative parameter) and about as much again for q(z | x)."""
    per_particle = 2 * n_points * sum(p.numel() for p in model.parameters())
    return int(min(most, max(10, work // max(per_particle, 1))))


def evaluate_particles(
    model: HierarchicalModel,
    n_test: int,
    n_points: int,
    is_points: int | None = None,
    n_particles: int | None = None,
) -> int:
    """The particles a point of ``ddchm evaluate``'s importance sampling: ``n_particles`` where
    given, else :func:`sized_particles` (``EVALUATE_WORK``) for the points it measures, the
    first ``is_points`` (None: all) of ``min(n_points, n_test)``."""
    if n_particles is not None:
        return n_particles
    points = min(n_points, n_test, is_points or n_points)
    return sized_particles(model, points, EVALUATE_WORK)


def summary_protocol(model: HierarchicalModel, algorithm, n_points: int) -> dict:
    """:func:`model_quality`'s arguments for a summary that costs little beside training: the
    exact value where the latents can be enumerated and nothing else; otherwise importance
    sampling through the algorithm's own q (a small fitted proposal, 50 sleep updates, where
    it has none) on the first ``SUMMARY_POINTS`` of the ``n_points`` held-out points, with
    particles sized to the model (:func:`sized_particles`, ``SUMMARY_WORK``); no permutation
    test. Every figure it gives names its estimator, points and particles."""
    points = min(SUMMARY_POINTS, n_points)
    own = algorithm is not None and own_proposal(algorithm) is not None
    return {
        "n_points": n_points,
        "is_points": points,
        "n_particles": sized_particles(model, points, SUMMARY_WORK, most=1000),
        "proposal_steps": 0 if own else 50,
        "proposal_samples": 200,
        "n_permutations": 0,
        "ais_chains": 0,
    }


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


def heldout_sets(test: torch.Tensor, n_points: int, mmd_samples: int, seed=0):
    """The held-out protocol: (points of the log-likelihoods, points of the MMD), seeded
    subsets of ``test`` (all of it when it is smaller); ``seed``: an int or a generator, which
    then moves on. Training's evaluations, the summary of ``ddchm train`` and ``ddchm
    evaluate`` all measure a run on these, so they agree."""
    generator = make_generator(seed)
    points = _rows(test, n_points, generator)
    return points, _rows(test, mmd_samples, generator)


def heldout_description(n_points: int, n_test: int, seed: int = 0) -> str:
    """'test split: N of M points (seed S)': the held-out points a figure was measured on."""
    return f"test split: {min(n_points, n_test)} of {n_test} points (seed {seed})"


class HeldOutMMD:
    """MMD^2 of a model's samples to fixed held-out points, with bandwidths (0.25..4 x the
    median distance) fixed on those points: one kernel for every model and every call, so
    the figures of one run, and of every run on the same data, are on one scale. A call
    draws ``len(points)`` model samples from the seed ``seed + 4``."""

    def __init__(self, points: torch.Tensor, seed: int = 0):
        from ddchm.evaluate.mmd import median_distance

        self.points, self.seed = points.double().cpu(), seed
        self.bandwidths = tuple(c * median_distance(self.points, generator=seed + 5) for c in MULTI)

    def samples(self, model) -> torch.Tensor:
        return model.sample(self.points.shape[0], generator=self.seed + 4)[0].double().cpu()

    def __call__(self, model, n_permutations: int = 0, progress: bool = False):
        """The :class:`~ddchm.evaluate.mmd.MMDResult` of ``model`` (with a permutation p-value
        when ``n_permutations`` > 0)."""
        return self.compare(self.samples(model), n_permutations, progress)

    def compare(self, samples: torch.Tensor, n_permutations: int = 0, progress: bool = False):
        """The :class:`~ddchm.evaluate.mmd.MMDResult` of ``samples`` (from :meth:`samples`)."""
        return mmd(
            samples,
            self.points,
            bandwidth=self.bandwidths,
            n_permutations=n_permutations,
            generator=self.seed + 5,
            permutation_max_points=1000,
            progress=progress,
        )


def ess_summary(ess: torch.Tensor, prefix: str, min_ess: float) -> dict[str, float]:
    """Mean, median, 10th percentile and minimum of per-point ESS, and the fraction below
    ``min_ess``."""
    values = ess.detach().double().cpu().numpy()
    return {
        f"{prefix}_ess": float(values.mean()),
        f"{prefix}_ess_median": float(np.median(values)),
        f"{prefix}_ess_q10": float(np.quantile(values, 0.1)),
        f"{prefix}_ess_min": float(values.min()),
        f"{prefix}_low_ess": float((values < min_ess).mean()),
    }


@torch.no_grad()
def _importance(model, x, proposal, n_particles, seed, progress, prefix, min_ess, description):
    """(figures, per-point log p^) of importance sampling through ``proposal``."""
    tic = time.process_time()
    result = importance_log_likelihood(
        model,
        x,
        proposal,
        n_particles=n_particles,
        generator=seed,
        progress=progress,
        description=description,
    )
    out = {
        prefix: result.mean,
        f"{prefix}_se": result.stderr,
        f"{prefix}_mc_se": result.mc_stderr,
        **ess_summary(result.ess, prefix, min_ess),
        f"{prefix}_cpu_s": time.process_time() - tic,
    }
    return out, result.log_px


def _low_ess_warning(out: dict, prefix: str, what: str, min_ess: float) -> str | None:
    if out[f"{prefix}_ess_median"] >= min_ess:
        return None
    return (
        f"{what}: median effective sample size {out[f'{prefix}_ess_median']:.1f} of "
        f"{int(out['n_particles'])} particles is below {min_ess:g} "
        f"({100 * out[f'{prefix}_low_ess']:.0f}% of points below it); the estimate is a loose "
        "lower bound and its standard error unreliable: use more particles or AIS "
        "(`ddchm evaluate --ais`)"
    )


def model_quality(
    model: HierarchicalModel,
    test,
    train=None,
    algorithm=None,
    *,
    n_points: int = 500,
    n_particles: int = 5000,
    importance: bool | None = None,
    is_points: int | None = None,
    proposal_steps: int = 500,
    proposal_samples: int = 500,
    mmd_samples: int = 1000,
    n_permutations: int = 100,
    measure_mmd: bool = True,
    ais_chains: int = 0,
    ais_steps: int = 200,
    ais_points: int = 100,
    min_ess: float = MIN_ESS,
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
        n_particles: K, importance samples per point (drawn in chunks of 100 particles x 100
            points, so memory does not grow with K).
        importance: whether to estimate log p(x) by importance sampling (through the fitted
            proposal and through the own q). None: only where it cannot be enumerated, since
            the exact value is then printed instead; True: also beside the exact value (to see
            how tight IS is); False: never.
        is_points: how many of the held-out points importance sampling measures (the first of
            the likelihood subset; None: all ``n_points``), so that a cheap protocol can
            measure fewer points than the exact value and the MMD of the same run.
        proposal_steps, proposal_samples: sleep-phase updates, and dreams per update, of the
            fitted proposal (0 steps: no fitted-proposal estimate).
        mmd_samples: model samples and held-out points of the MMD (each at most this many).
        n_permutations: of the MMD permutation test (0: no p-value).
        measure_mmd: False leaves the MMD out (e.g. where training's last evaluation measured
            it on the same points already).
        ais_chains, ais_steps: AIS chains per point and annealing temperatures (0 chains: no
            AIS); ais_points: how many of the held-out points AIS measures (the first of the
            likelihood subset). AIS costs about ais_chains x ais_steps Gibbs sweeps per point.
        min_ess: the median ESS below which an importance-sampled estimate is flagged.
        seed: every random draw (subsets, samples, particles, proposal fit) derives from it.
        progress: a progress bar (tqdm on a terminal, else periodic lines on stderr) naming
            each estimate as it is computed.

    Returns a flat dict of floats (keys in the module docstring) plus ``eval_cpu_s``, the CPU
    seconds the evaluation took, and four non-numbers: ``log_likelihood_estimator``,
    ``protocol``, ``heldout`` (which test points: :func:`heldout_description`) and
    ``warnings`` (a list of lines, each about an estimate the dict holds).
    """
    if not isinstance(model, HierarchicalModel):
        raise TypeError(f"model: expected a HierarchicalModel, got {type(model).__name__}")
    n_points = check_positive_int(n_points, "n_points")
    n_particles = check_positive_int(n_particles, "n_particles")
    if importance not in (None, True, False):
        raise ValueError(f"importance: expected None, True or False, got {importance!r}")
    if is_points is not None:
        is_points = check_positive_int(is_points, "is_points")
    proposal_steps = check_positive_int(proposal_steps, "proposal_steps", minimum=0)
    mmd_samples = check_positive_int(mmd_samples, "mmd_samples", minimum=2)
    ais_chains = check_positive_int(ais_chains, "ais_chains", minimum=0)
    ais_steps = check_positive_int(ais_steps, "ais_steps")
    ais_points = check_positive_int(ais_points, "ais_points")
    if not (isinstance(min_ess, (int, float)) and min_ess >= 1):
        raise ValueError(f"min_ess: expected a number >= 1, got {min_ess!r}")
    tic = time.process_time()
    reference = next(model.parameters())
    test = model.check_data(torch.as_tensor(test), "test").to(reference)
    generator = make_generator(seed)
    points, held_out = heldout_sets(test, n_points, mmd_samples, generator)
    out: dict = {"n_points": float(points.shape[0])}
    warnings: list[str] = []
    enumerable = is_enumerable(model)
    exact_log_px = None

    if enumerable:
        previous = reference.dtype
        try:  # enumeration in float64: sums of 2^D terms
            exact_log_px = exact_log_likelihood(model.double(), points.double()).log_px
        finally:
            model.to(previous)
        out["exact_ll"] = float(exact_log_px.mean())
    if importance is None:
        importance = not enumerable
    is_x = points[: is_points or points.shape[0]]
    fitted_log_px = None
    if importance:
        out.update(n_particles=float(n_particles), is_points=float(is_x.shape[0]))
        what = f"{is_x.shape[0]} points x {n_particles} particles"
        if proposal_steps > 0:
            if progress:
                print(
                    f"fitting the IS proposal: {proposal_steps} sleep updates of "
                    f"{proposal_samples} dreams",
                    file=sys.stderr,
                    flush=True,
                )
            proposal = fit_proposal(
                model, n_steps=proposal_steps, sleep_samples=proposal_samples, generator=seed + 1
            )
            figures, fitted_log_px = _importance(
                model,
                is_x,
                proposal,
                n_particles,
                seed + 2,
                progress,
                "is_ll_fitted",
                min_ess,
                f"IS, fitted proposal, {what}",
            )
            out.update(figures)
            warnings.append(
                _low_ess_warning(out, "is_ll_fitted", "IS through the fitted proposal", min_ess)
            )
        own = own_proposal(algorithm) if algorithm is not None else None
        if own is not None:
            figures, _ = _importance(
                model,
                is_x,
                own,
                n_particles,
                seed + 3,
                progress,
                "is_ll_own",
                min_ess,
                f"IS, own q, {what}",
            )
            out.update(figures)
            warnings.append(_low_ess_warning(out, "is_ll_own", "IS through the own q", min_ess))
        if exact_log_px is not None and is_x.shape[0] < points.shape[0]:
            out["exact_ll_on_is_points"] = float(exact_log_px[: is_x.shape[0]].mean())
    if ais_chains > 0:
        ais_x = points[:ais_points]
        ais_tic = time.process_time()
        result = ais_log_likelihood(
            model,
            ais_x,
            n_chains=ais_chains,
            n_steps=ais_steps,
            generator=seed + 6,
            progress=progress,
        )
        out.update(
            {
                "ais_ll": result.mean,
                "ais_ll_se": result.stderr,
                "ais_ll_mc_se": result.mc_stderr,
                "ais_ess": float(result.ess.mean()),
                "ais_log_w_std": result.info["log_w_std"],
                "ais_points": float(ais_x.shape[0]),
                "ais_chains": float(ais_chains),
                "ais_steps": float(ais_steps),
                "ais_cpu_s": time.process_time() - ais_tic,
            }
        )
        if out["ais_log_w_std"] > MAX_LOG_W_SPREAD:
            warnings.append(
                f"AIS: log w spreads by {out['ais_log_w_std']:.2f} nats across a point's chains "
                f"(above {MAX_LOG_W_SPREAD:g}): the chains disagree and the estimate may be loose "
                "by about the spread squared / 2; raise the temperatures (--ais-steps)"
            )
        n_ais = ais_x.shape[0]
        if exact_log_px is not None:  # the exact value on the very points AIS measured
            out["exact_ll_on_ais_points"] = float(exact_log_px[:n_ais].mean())
        if fitted_log_px is not None and fitted_log_px.shape[0] >= n_ais:
            paired = (result.log_px - fitted_log_px[:n_ais]).double()
            out["is_ll_fitted_on_ais_points"] = float(fitted_log_px[:n_ais].mean())
            out["ais_minus_is"] = float(paired.mean())
            out["ais_minus_is_se"] = (
                float(paired.std() / paired.numel() ** 0.5) if paired.numel() > 1 else 0.0
            )
    _headline(out)

    held_out = held_out.double().cpu()
    if measure_mmd:
        if progress:
            print(
                f"MMD^2: {held_out.shape[0]} model samples against {held_out.shape[0]} "
                "held-out points" + (" and the train floor" if train is not None else ""),
                file=sys.stderr,
                flush=True,
            )
        result = HeldOutMMD(held_out, seed)(model, n_permutations, progress)
        out["mmd2"] = result.mmd2
        if result.p_value is not None:
            out["mmd_p_value"] = result.p_value
        if train is not None:
            train = model.check_data(torch.as_tensor(train), "train").to(reference)
            reference_points = _rows(train, held_out.shape[0], generator).double()
            floor = mmd(reference_points, held_out, bandwidth=result.bandwidths)
            out["mmd2_floor"] = floor.mmd2
        out["mmd_samples"] = float(held_out.shape[0])
    out["heldout"] = heldout_description(n_points, test.shape[0], seed)
    out["eval_cpu_s"] = time.process_time() - tic
    out["warnings"] = [w for w in warnings if w]
    return out


def _headline(out: dict) -> None:
    """Add ``log_likelihood``, its estimator and a one-line protocol (every estimate the dict
    holds, each with its points) to ``out``."""
    n = int(out["n_points"])
    estimates = []
    if "exact_ll" in out:
        estimates.append(
            ("exact", "exact_ll", f"exact log p(x) by enumeration on {n} held-out points")
        )
    if "ais_ll" in out:
        estimates.append(
            (
                "ais",
                "ais_ll",
                f"AIS on {int(out['ais_points'])} held-out points, {int(out['ais_chains'])} "
                f"chains x {int(out['ais_steps'])} temperatures (prior -> posterior; the first "
                f"{int(out['ais_points'])} of the {n} points)",
            )
        )
    for key, estimator, q in (
        ("is_ll_fitted", "is", "fitted proposal"),
        ("is_ll_own", "is_own", "own q"),
    ):
        if key in out:
            m, k = int(out["is_points"]), int(out["n_particles"])
            first = f" (the first of the {n})" if m < n else ""
            estimates.append(
                (estimator, key, f"IS on {m} held-out points{first}, {k} particles ({q})")
            )
    if not estimates:
        return
    estimator, key, _ = estimates[0]  # the most trustworthy: exact, AIS, fitted IS, own-q IS
    out["log_likelihood"], out["log_likelihood_estimator"] = out[key], estimator
    out["protocol"] = "; ".join(line for _, _, line in estimates)
