"""Test log-likelihood: exact (enumerable models) and importance sampling (any model).

Importance sampling with a proposal q(z | x) over the whole chain z = (z_1..z_L):

    w_k = p(x, z^k) / q(z^k | x),  z^k ~ q(. | x),   log p^(x) = log (1/K sum_k w_k)

p^(x) is unbiased for p(x), so log p^(x) is a stochastic lower bound of log p(x) in expectation
(Jensen; Burda et al. 2016, the IWAE bound), tight as K grows and exact for q = p(z | x).
Per data point we report the estimate, the effective sample size ESS = (sum w)^2 / sum w^2
(Kong 1992), and a delta-method standard error of log p^, sqrt(1/ESS - 1/K), which is only
meaningful when the weights' variance is finite and well estimated (ESS not tiny).

A proposal is any object with

    sample_with_log_prob(x, n_particles, generator) -> (latents, log_q)

returning ``latents = [z_1, ..., z_L]`` with ``z_l`` of shape (K, N, D_l) and ``log_q`` (K, N),
the log density of the whole latent chain under q. Two ship here: :class:`PriorProposal`
(ancestral samples, log_q = log p(z); honest but needs very many particles for peaked posteriors)
and :class:`ExactPosteriorProposal` (tests). For a model learned by the DDC-HM, whose recognition
model outputs expected encodings rather than a density, fit a recognition network q(z | x) by
sleep-phase training on the trained model (``ddchm.algorithms.recognition.RecognitionModel``,
wake-sleep style, trained on dreams (x, z) ~ p) and use it as the proposal; its quality only
changes the variance, never the expectation of p^. Models without a good proposal: AIS
(:mod:`ddchm.evaluate.ais`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ddchm.models.exact import ExactInference
from ddchm.models.hierarchical import HierarchicalModel
from ddchm.progress import progress_bar
from ddchm.validation import check_positive_int, make_generator


@dataclass
class LogLikelihoodResult:
    """Per-point log p(x) estimates and their summary.

    Attributes:
        log_px: (N,) estimates of log p(x_n).
        log_px_stderr: (N,) Monte Carlo standard error of each estimate (zeros when exact).
        ess: (N,) effective sample size of the weights (None when exact).
        method: 'exact', 'importance' or 'ais'.
        n_particles: particles (IS) or chains (AIS) per data point; 0 when exact.
        info: extra method-specific numbers (e.g. AIS acceptance rates).
    """

    log_px: torch.Tensor
    log_px_stderr: torch.Tensor
    ess: torch.Tensor | None
    method: str
    n_particles: int = 0
    info: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Average log-likelihood per data point."""
        return float(self.log_px.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` across data points (sampling of the test set)."""
        n = self.log_px.numel()
        return float(self.log_px.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")

    @property
    def mc_stderr(self) -> float:
        """Monte Carlo standard error of :attr:`mean` from the estimator itself."""
        return float(self.log_px_stderr.square().sum().sqrt() / self.log_px.numel())

    def summary(self) -> dict[str, float]:
        out = {
            "log_likelihood": self.mean,
            "stderr": self.stderr,
            "mc_stderr": self.mc_stderr,
            "n_points": float(self.log_px.numel()),
            "n_particles": float(self.n_particles),
        }
        if self.ess is not None:
            out["ess_mean"] = float(self.ess.mean())
            out["ess_min"] = float(self.ess.min())
        return out


@torch.no_grad()
def exact_log_likelihood(model_or_exact, x) -> LogLikelihoodResult:
    """log p(x) by enumeration (:meth:`ExactInference.log_marginal`), for all-Bernoulli latents."""
    exact = (
        model_or_exact
        if isinstance(model_or_exact, ExactInference)
        else ExactInference(model_or_exact)
    )
    log_px = exact.log_marginal(x)
    return LogLikelihoodResult(log_px, torch.zeros_like(log_px), None, "exact")


def weights_summary(log_w_sum: torch.Tensor, log_w2_sum: torch.Tensor, k: int):
    """From logsumexp_k log w and logsumexp_k 2 log w: (log p^, delta-method s.e., ESS)."""
    log_px = log_w_sum - math.log(k)
    ess = torch.exp(2 * log_w_sum - log_w2_sum)
    stderr = (1 / ess - 1 / k).clamp_min(0).sqrt()
    return log_px, stderr, ess


@torch.no_grad()
def importance_log_likelihood(
    model: HierarchicalModel,
    x,
    proposal,
    n_particles: int = 1000,
    particle_chunk: int = 100,
    batch_size: int = 100,
    generator: torch.Generator | int | None = 0,
    progress: bool = False,
    description: str = "importance sampling",
) -> LogLikelihoodResult:
    """Importance-sampling estimate of log p(x_n) for each row of ``x``.

    Args:
        model: the generative model p(x, z).
        x: (N, data_dim) data.
        proposal: object with ``sample_with_log_prob(x, n_particles, generator)`` (module doc).
        n_particles: K, particles per data point.
        particle_chunk: particles drawn per call to the proposal (memory ~ chunk x batch rows).
        batch_size: data points per call.
        generator: seed or torch.Generator; every draw goes through it.
        progress: tqdm bar over (data batch, particle chunk) pairs.
        description: the bar's label (what is being computed).

    Cost: K N evaluations of log p(x, z) plus the proposal's, in chunks of
    ``particle_chunk x batch_size`` rows.
    """
    x = model.check_data(x)
    k = check_positive_int(n_particles, "n_particles")
    chunk = check_positive_int(particle_chunk, "particle_chunk")
    batch = check_positive_int(batch_size, "batch_size")
    if not callable(getattr(proposal, "sample_with_log_prob", None)):
        raise TypeError(
            "proposal: expected an object with sample_with_log_prob(x, n_particles, generator), "
            f"got {type(proposal).__name__}"
        )
    generator = make_generator(generator, device=x.device)
    n, n_latent = x.shape[0], model.n_latent_layers
    log_w_sum = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
    log_w2_sum = log_w_sum.clone()
    jobs = [(s, c) for s in range(0, n, batch) for c in range(0, k, chunk)]
    for start, c_start in progress_bar(jobs, desc=description, disable=not progress):
        rows = slice(start, min(n, start + batch))
        xb, kc = x[rows], min(chunk, k - c_start)
        latents, log_q = proposal.sample_with_log_prob(xb, kc, generator)
        if len(latents) != n_latent:
            raise ValueError(
                f"proposal: returned {len(latents)} latent layers, the model has {n_latent}"
            )
        nb = xb.shape[0]
        if tuple(log_q.shape) != (kc, nb):
            raise ValueError(f"proposal: log_q has shape {tuple(log_q.shape)}, expected {(kc, nb)}")
        flat = [z.reshape(kc * nb, -1).to(x.dtype) for z in latents]  # row k * nb + n
        log_joint = model.log_joint(xb.repeat(kc, 1), flat, validate=False).reshape(kc, nb)
        log_w = log_joint - log_q.to(x.dtype)
        log_w_sum[rows] = torch.logaddexp(log_w_sum[rows], torch.logsumexp(log_w, 0))
        log_w2_sum[rows] = torch.logaddexp(log_w2_sum[rows], torch.logsumexp(2 * log_w, 0))
    log_px, stderr, ess = weights_summary(log_w_sum, log_w2_sum, k)
    return LogLikelihoodResult(log_px, stderr, ess, "importance", k)


class PriorProposal:
    """q(z | x) = p(z): ancestral samples of the latent chain, ignoring x.

    log_q = log p(z_L) + sum_{l<L} log p(z_l | z_{l+1}), so the weights are p(x | z_1).
    """

    def __init__(self, model: HierarchicalModel):
        self.model = model

    @torch.no_grad()
    def sample_with_log_prob(self, x, n_particles: int, generator):
        layers, n = self.model.layers, x.shape[0]
        rows = n_particles * n
        values = [None] * len(layers)
        values[-1] = layers[-1].sample(n=rows, generator=generator)
        log_q = layers[-1].log_prob(values[-1])
        for l in range(len(layers) - 2, 0, -1):
            values[l] = layers[l].sample(values[l + 1], generator=generator)
            log_q = log_q + layers[l].log_prob(values[l], values[l + 1])
        latents = [v.reshape(n_particles, n, -1) for v in values[1:]]
        return latents, log_q.reshape(n_particles, n)


class ExactPosteriorProposal:
    """q(z | x) = p(z | x) by enumeration (tests: every weight equals p(x) exactly).

    Samples z_1 from the posterior table and z_{l+1} from the (data-independent) transitions
    p(z_{l+1} | z_l); log_q is read from the same tables, not from log p(x, z) - log p(x).
    """

    def __init__(self, exact: ExactInference):
        if not isinstance(exact, ExactInference):
            raise TypeError(f"exact: expected ExactInference, got {type(exact).__name__}")
        self.exact = exact

    @torch.no_grad()
    def sample_with_log_prob(self, x, n_particles: int, generator):
        posteriors = self.exact.layer_posteriors(x)
        transitions = self.exact.transitions()
        configs = self.exact.configs
        n = x.shape[0]
        index = torch.multinomial(posteriors[1], n_particles, replacement=True, generator=generator)
        index = index.T  # (K, N)
        log_q = posteriors[1].log().gather(1, index.T).T
        latents = [configs[1][index]]
        for l in range(1, self.exact.n_latent_layers):
            table = transitions[l][index.reshape(-1)]  # (K N, C_{l+1})
            nxt = torch.multinomial(table, 1, generator=generator).reshape(n_particles, n)
            log_q = log_q + table.log().gather(1, nxt.reshape(-1, 1)).reshape(n_particles, n)
            index = nxt
            latents.append(configs[l + 1][index])
        return latents, log_q


def fit_proposal(
    model,
    n_steps: int = 2000,
    sleep_samples: int = 1000,
    hidden=(200,),
    recognition_lr: float = 1e-3,
    generator=0,
):
    """An importance-sampling proposal for a model learned without a density q (DDC-HM).

    DDC-HM's recogniser outputs expected encodings, not a density, so it cannot weight
    particles. We fit a bottom-up recognition density q(z_1|x) q(z_2|z_1)... to the trained
    model by the sleep phase of wake-sleep (maximise log q(z|x) on dreams (x, z) ~ p_theta, theta
    fixed): any q with full support gives an unbiased estimate of p(x); the better it fits, the
    fewer particles are needed. Returns the recognition model (it has ``sample_with_log_prob``).
    """
    from ddchm.algorithms.wake_sleep import WakeSleep

    sleeper = WakeSleep(
        model,
        hidden=hidden,
        recognition_lr=recognition_lr,
        sleep_samples=sleep_samples,
        generator=generator,
    )
    sleeper.fit_recognition(n_steps, batch_size=sleep_samples)  # sleep_samples dreams a step
    return sleeper.recognition
