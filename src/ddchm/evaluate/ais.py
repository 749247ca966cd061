"""Annealed importance sampling (Neal 2001) of log p(x) for any chain of layers.

The path runs over the latents of the whole chain z = (z_1..z_L), annealing the observation term
only (a geometric path from the prior to the posterior):

    log pi_t(z) = beta_t log p(x | z_1) + log p(z),   0 = beta_0 < beta_1 < ... < beta_T = 1

Each chain starts with an exact ancestral sample of p(z) (pi_0, normalised) and accumulates

    log w = sum_{t=1}^T (beta_t - beta_{t-1}) log p(x | z_1^{(t-1)}),

with z^{(t)} drawn by a transition that leaves pi_t invariant. E[w] = p(x) (Neal 2001), so as
for importance sampling the average of w over independent chains is unbiased and its log a
stochastic lower bound; per data point we report the log-mean-exp over ``n_chains`` chains, a
delta-method standard error sqrt(1/ESS - 1/K) and the ESS of the chain weights.

Transitions, one sweep over the latent layers per annealing step (``n_sweeps`` to repeat); under
pi_t the conditional of z_l involves only log p(z_l | z_{l+1}) + c_l log p(z_{l-1} | z_l), with
c_1 = beta_t (the observation term) and c_l = 1 above:

- Bernoulli layers, ``binary_move='gibbs'`` (default): systematic-scan single-site Gibbs, each
  unit drawn from its exact conditional. The own term's log-odds for unit j is its natural
  parameter eta_j (S(z) = z), the child term needs one child evaluation per unit: cost D_l
  child-layer evaluations per sweep. ``'flip'``: one Metropolis-Hastings proposal per sweep
  that flips each unit independently with probability 1 / D_l (symmetric); two evaluations per
  sweep, slower mixing, for wide layers.
- Continuous layers (Gaussian, Laplace), ``continuous_move='hmc'`` (default): one Hamiltonian
  Monte Carlo move on all continuous layers jointly (``n_leapfrog`` leapfrog steps, gradients
  of log pi_t by autograd), after the binary layers' moves. ``'rwm'``: random-walk Metropolis,
  one proposal z' = z + s eps, eps ~ N(0, I), per continuous layer. Both work in coordinates
  scaled unit by unit by the prior standard deviation of the layer (from 1000 ancestral
  samples drawn once), a diagonal preconditioner for layers on different scales.
  Step sizes (per data point; per layer for 'rwm', shared for 'hmc') start at D^(-1/4) (HMC)
  or 2.38 / sqrt(D) (random walk) and adapt after every move by
  log s += ``adapt_rate`` (acceptance - ``target_accept``), acceptance averaged over the
  point's chains (``adapt_rate`` 0.3; targets 0.5 for HMC, 0.3 for the random walk: measured,
  HMC targets of 0.65-0.8 are no better on a linear-Gaussian chain and far worse on the
  sparse-coding truth, whose Laplace kink and scale hierarchy favour bigger steps; slower
  adaptation, 0.05, left short schedules far from equilibrium). Adaptation makes a kernel
  depend on the chains' past, a departure from the strict AIS construction whose bias is
  negligible in practice (adaptive HMC is used the same way by Wu et al. 2017, "On the
  quantitative analysis of decoder-based generative models"); pass ``adapt_rate=0`` with a
  fixed ``step_size`` for the textbook estimator.

Accuracy is set mostly by the number of annealing steps T (the variance of log w falls roughly
as 1/T once the chains mix); raise ``n_sweeps`` or ``n_leapfrog`` when acceptance is low or the
posterior is strongly correlated. The delta-method standard error from K chains is itself noisy
(it misses rare large weights); treat it as a guide, and check a new model class against a
closed form or :class:`ExactInference` as the tests do.

Cost: (T n_sweeps) x (K N) x (sum_l cost of a sweep of layer l); memory O(K x batch_size rows).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddchm.evaluate.likelihood import LogLikelihoodResult, weights_summary
from ddchm.models.hierarchical import HierarchicalModel
from ddchm.models.layers import Bernoulli
from ddchm.progress import progress_bar
from ddchm.validation import check_positive_int, make_generator

BINARY_MOVES = ("gibbs", "flip")
CONTINUOUS_MOVES = ("hmc", "rwm")


def annealing_schedule(n_steps: int, kind: str = "sigmoid", sharpness: float = 4.0) -> np.ndarray:
    """beta_0 = 0 < ... < beta_T = 1 as an array of T + 1 values.

    'linear': evenly spaced. 'sigmoid' (a common choice, e.g. Wu et al. 2017): beta_t
    proportional to sigmoid(sharpness (2t/T - 1)), rescaled to [0, 1]; denser at both ends.
    """
    n_steps = check_positive_int(n_steps, "n_steps")
    t = np.linspace(0.0, 1.0, n_steps + 1)
    if kind == "linear":
        return t
    if kind == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-sharpness * (2 * t - 1)))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"schedule: expected 'linear', 'sigmoid' or an array of betas, got {kind!r}")


def _check_schedule(schedule, n_steps: int) -> np.ndarray:
    if isinstance(schedule, str):
        return annealing_schedule(n_steps, schedule)
    betas = np.asarray(schedule, dtype=float).reshape(-1)
    if betas.size < 2 or betas[0] != 0 or betas[-1] != 1 or np.any(np.diff(betas) < 0):
        raise ValueError("schedule: an array of betas must rise monotonically from 0 to 1")
    return betas


class _AnnealedChain:
    """State and transitions of K x n chains for a batch of n data points (rows k * n + i)."""

    sbn_fast_path = True  # Gibbs on a layer with a Bernoulli child: :meth:`_gibbs_sbn`

    def __init__(self, model, x, n_chains, generator, moves: dict):
        self.layers, self.g = model.layers, generator
        self.n, self.k = x.shape[0], n_chains
        self.x = x.repeat(n_chains, 1)
        self.moves = moves
        rows = self.x.shape[0]
        self.z = [None] * len(self.layers)  # z[0] = x, z[l] for l >= 1, prior samples
        self.z[0] = self.x
        self.z[-1] = self.layers[-1].sample(n=rows, generator=generator)
        for l in range(len(self.layers) - 2, 0, -1):
            self.z[l] = self.layers[l].sample(self.z[l + 1], generator=generator)
        self.binary = [l for l in range(1, len(self.layers)) if self.layers[l].discrete]
        self.continuous = [l for l in range(1, len(self.layers)) if not self.layers[l].discrete]
        self.spread = moves["spread"]  # {l: (D_l,)} prior spread per unit of continuous layers
        # Step sizes per data point (n,), in units of the spread: one per layer for random-walk
        # Metropolis, one shared by all continuous layers for HMC. Defaults: 2.38 / sqrt(D) for
        # a random walk (Roberts et al. 1997), D^(-1/4) for leapfrog steps.
        if moves["continuous"] == "rwm":
            sizes = {f"z{l}": self.layers[l].dim for l in self.continuous}
        else:
            sizes = (
                {"hmc": sum(self.layers[l].dim for l in self.continuous)} if self.continuous else {}
            )
        self.step, self.accepted, self.proposed = {}, {}, {}
        for key, dim in sizes.items():
            if moves["step_size"] is not None:
                first = moves["step_size"]
            elif moves["continuous"] == "hmc":
                first = dim**-0.25
            else:
                first = 2.38 / math.sqrt(dim)
            self.step[key] = torch.full((self.n,), first, dtype=x.dtype, device=x.device)
            self.accepted[key], self.proposed[key] = 0.0, 0

    def log_likelihood(self) -> torch.Tensor:
        """log p(x | z_1) for every chain, (K n,)."""
        return self.layers[0].log_prob(self.x, self.z[1])

    def _own(self, l, value):
        parent = self.z[l + 1] if l + 1 < len(self.z) else None
        return self.layers[l].log_prob(value, parent)

    def _child(self, l, value):
        return self.layers[l - 1].log_prob(self.z[l - 1], value)

    def _uniform(self, shape):
        return torch.rand(shape, generator=self.g, dtype=self.x.dtype, device=self.x.device)

    def sweep(self, beta: float) -> None:
        """One transition leaving pi_beta invariant: binary layers, then continuous ones."""
        for l in self.binary:
            c = beta if l == 1 else 1.0
            if isinstance(self.layers[l], Bernoulli) and self.moves["binary"] == "gibbs":
                self._gibbs(l, c)
            else:
                self._flip(l, c)
        if not self.continuous:
            return
        if self.moves["continuous"] == "hmc":
            self._hmc(beta)
        else:
            for l in self.continuous:
                self._random_walk(l, beta if l == 1 else 1.0)

    # --- binary layers -----------------------------------------------------------------------
    def _gibbs(self, l, c):
        if self.sbn_fast_path and isinstance(self.layers[l - 1], Bernoulli):
            self._gibbs_sbn(l, c)
            return
        z = self.z[l]
        parent = self.z[l + 1] if l + 1 < len(self.z) else None
        eta = self.layers[l].natural_params(parent).expand_as(z)  # log-odds of the own term
        child_now = self._child(l, z)
        for j in range(z.shape[1]):
            flipped = z.clone()
            flipped[:, j] = 1 - z[:, j]
            child_flip = self._child(l, flipped)
            on = z[:, j] > 0
            # log pi(z_j = 1) - log pi(z_j = 0), the other units fixed
            child_diff = torch.where(on, child_now - child_flip, child_flip - child_now)
            new = (self._uniform(on.shape) < torch.sigmoid(eta[:, j] + c * child_diff)).to(z.dtype)
            changed = new != z[:, j]
            z[:, j] = new
            child_now = torch.where(changed, child_flip, child_now)

    def _gibbs_sbn(self, l, c):
        """The Gibbs scan of :meth:`_gibbs` for a Bernoulli child (a sigmoid belief net layer):
        the child's logits a = W z_l + b move by +-W[:, j] when unit j flips, so its log p
        changes by +-x_c . W[:, j] - sum_i [softplus(a_i +- W_ij) - softplus(a_i)]. Keeping a
        and sum_i softplus(a_i) up to date costs O(D_child) per unit instead of a child
        evaluation, O(D_l D_child); the conditionals are the same to rounding."""
        z, child = self.z[l], self.layers[l - 1]
        parent = self.z[l + 1] if l + 1 < len(self.z) else None
        eta = self.layers[l].natural_params(parent).expand_as(z)  # log-odds of the own term
        x_child = self.z[l - 1]
        weight = child.weight.T  # (D_l, D_child)
        logits = child.linear(z)  # (rows, D_child)
        softplus_now = torch.nn.functional.softplus(logits).sum(1)
        x_dot_w = x_child @ child.weight  # (rows, D_l): x_c . W[:, j]
        for j in range(z.shape[1]):
            sign = 1 - 2 * z[:, j]  # +1 turns the unit on, -1 off
            flipped = torch.addcmul(logits, sign.unsqueeze(1), weight[j].unsqueeze(0))
            softplus_flip = torch.nn.functional.softplus(flipped).sum(1)
            child_diff = sign * x_dot_w[:, j] - (softplus_flip - softplus_now)  # flip - now
            # log pi(z_j = 1) - log pi(z_j = 0), the other units fixed
            log_odds = eta[:, j] + c * sign * child_diff
            new = (self._uniform(log_odds.shape) < torch.sigmoid(log_odds)).to(z.dtype)
            changed = new != z[:, j]
            z[:, j] = new
            logits.addcmul_((changed * sign).unsqueeze(1), weight[j].unsqueeze(0))
            softplus_now = torch.where(changed, softplus_flip, softplus_now)

    def _flip(self, l, c):
        z = self.z[l]
        proposal = torch.where(self._uniform(z.shape) < 1.0 / z.shape[1], 1 - z, z)
        self._metropolis(l, c, proposal)

    def _metropolis(self, l, c, proposal) -> torch.Tensor:
        """Accept or reject a symmetric proposal for layer l in every chain; returns accepts."""
        z = self.z[l]
        log_ratio = (
            self._own(l, proposal)
            - self._own(l, z)
            + c * (self._child(l, proposal) - self._child(l, z))
        )
        accept = torch.log(self._uniform(log_ratio.shape)) < log_ratio
        self.z[l] = torch.where(accept.unsqueeze(1), proposal, z)
        return accept

    # --- continuous layers -------------------------------------------------------------------
    def _random_walk(self, l, c):
        z, key = self.z[l], f"z{l}"
        noise = torch.randn(z.shape, generator=self.g, dtype=z.dtype, device=z.device)
        step = self.step[key].repeat(self.k).unsqueeze(1) * self.spread[l]
        self._adapt(key, self._metropolis(l, c, z + step * noise))

    def _log_target_and_grad(self, beta, values: dict):
        """The annealed log target of every chain and its gradient in the continuous layers."""
        with torch.enable_grad():
            values = {l: v.detach().requires_grad_(True) for l, v in values.items()}
            z = [values.get(l, v) for l, v in enumerate(self.z)]
            terms = [
                layer.log_prob(z[l], z[l + 1] if l + 1 < len(z) else None)
                for l, layer in enumerate(self.layers)
            ]
            log_target = beta * terms[0] + torch.stack(terms[1:]).sum(0)
            grads = torch.autograd.grad(log_target.sum(), list(values.values()))
        return log_target.detach(), dict(zip(values, grads))

    def _hmc(self, beta):
        """Leapfrog HMC on all continuous layers jointly, in coordinates u = z / spread."""
        eps = self.step["hmc"].repeat(self.k).unsqueeze(1)  # (K n, 1)
        z_now = {l: self.z[l] for l in self.continuous}
        p_now = {
            l: torch.randn(z.shape, generator=self.g, dtype=z.dtype, device=z.device)
            for l, z in z_now.items()
        }
        log_target, grad = self._log_target_and_grad(beta, z_now)
        h_now = -log_target + sum(0.5 * p.square().sum(1) for p in p_now.values())
        z_new = dict(z_now)
        p = {l: p_now[l] + 0.5 * eps * self.spread[l] * grad[l] for l in z_now}
        for i in range(self.moves["n_leapfrog"]):
            z_new = {l: z_new[l] + eps * self.spread[l] * p[l] for l in z_now}
            new_target, grad = self._log_target_and_grad(beta, z_new)
            half = 0.5 if i == self.moves["n_leapfrog"] - 1 else 1.0
            p = {l: p[l] + half * eps * self.spread[l] * grad[l] for l in z_now}
        h_new = -new_target + sum(0.5 * q.square().sum(1) for q in p.values())
        log_ratio = torch.nan_to_num(h_now - h_new, nan=-math.inf)
        accept = torch.log(self._uniform(log_ratio.shape)) < log_ratio
        for l in z_now:
            self.z[l] = torch.where(accept.unsqueeze(1), z_new[l], z_now[l])
        self._adapt("hmc", accept)

    def _adapt(self, key, accept):
        rate = accept.to(self.x.dtype).reshape(self.k, self.n).mean(0)  # per data point
        self.accepted[key] += float(accept.sum())
        self.proposed[key] += accept.numel()
        if self.moves["adapt_rate"] > 0:
            target = self.moves["target_accept"]
            self.step[key] = self.step[key] * torch.exp(self.moves["adapt_rate"] * (rate - target))

    def acceptance(self) -> dict[str, float]:
        return {
            f"accept_{key}": self.accepted[key] / max(1, self.proposed[key]) for key in self.step
        }


@torch.no_grad()
def prior_spread(model: HierarchicalModel, generator, n_samples: int = 1000) -> dict:
    """{l: (D_l,)} standard deviation of each unit of the continuous layers under p(z).

    It does not depend on x, so one set of ancestral samples, separate from the chains, serves
    every data point and keeps the chains independent.
    """
    values = model.sample(n_samples, generator=generator)
    return {
        l: values[l].std(0).clamp_min(1e-3)
        for l in range(1, len(model.layers))
        if not model.layers[l].discrete
    }


@torch.no_grad()
def ais_log_likelihood(
    model: HierarchicalModel,
    x,
    n_chains: int = 16,
    n_steps: int = 1000,
    schedule="sigmoid",
    n_sweeps: int = 1,
    binary_move: str = "gibbs",
    continuous_move: str = "hmc",
    n_leapfrog: int = 5,
    step_size: float | None = None,
    adapt_rate: float = 0.3,
    target_accept: float | None = None,
    batch_size: int = 100,
    generator: torch.Generator | int | None = 0,
    progress: bool = False,
) -> LogLikelihoodResult:
    """AIS estimate of log p(x_n) for each row of ``x`` (module docstring for the maths).

    Args:
        model: any chain of Bernoulli, Gaussian and Laplace layers.
        x: (N, data_dim) data.
        n_chains: K independent chains per data point.
        n_steps: T annealing steps (ignored if ``schedule`` is an array of betas).
        schedule: 'sigmoid' (default), 'linear', or an array rising from 0 to 1.
        n_sweeps: transition sweeps over all latent layers per annealing step.
        binary_move: 'gibbs' (single-site Gibbs) or 'flip' (one MH flip proposal) for Bernoulli
            layers.
        continuous_move: 'hmc' (default) or 'rwm' (random-walk Metropolis) for continuous layers.
        n_leapfrog: leapfrog steps per HMC move.
        step_size: initial step of continuous moves; None scales it to the prior spread.
        adapt_rate: step-size adaptation rate (0 disables adaptation).
        target_accept: acceptance rate the adaptation aims at; None: 0.5 for HMC, 0.3 for
            random-walk Metropolis.
        batch_size: data points annealed together (memory ~ K x batch_size rows).
        generator: seed or torch.Generator for every draw.
        progress: tqdm bar over annealing steps.

    Returns a :class:`LogLikelihoodResult` with method 'ais'; ``info`` holds the schedule length,
    the acceptance rates of the continuous moves per layer (averaged over batches) and the
    spread of log w across a point's chains (``log_w_std``: its mean over points, and
    ``log_w_std_max``): a bias diagnostic, since the bound's gap E[log w] - log p(x) is about
    var(log w) / 2 when log w is near Gaussian, so a spread well below 1 nat means the chains
    agree and the estimate is close; a spread of several nats means too few temperatures.
    """
    x = model.check_data(x)
    k = check_positive_int(n_chains, "n_chains")
    n_sweeps = check_positive_int(n_sweeps, "n_sweeps")
    batch = check_positive_int(batch_size, "batch_size")
    if binary_move not in BINARY_MOVES:
        raise ValueError(f"binary_move: expected one of {BINARY_MOVES}, got {binary_move!r}")
    if continuous_move not in CONTINUOUS_MOVES:
        raise ValueError(
            f"continuous_move: expected one of {CONTINUOUS_MOVES}, got {continuous_move!r}"
        )
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size: expected a positive number or None, got {step_size!r}")
    if target_accept is None:
        target_accept = 0.5 if continuous_move == "hmc" else 0.3
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept: expected a rate in (0, 1), got {target_accept!r}")
    if adapt_rate < 0:
        raise ValueError(f"adapt_rate: expected a non-negative number, got {adapt_rate!r}")
    moves = {
        "binary": binary_move,
        "continuous": continuous_move,
        "n_leapfrog": check_positive_int(n_leapfrog, "n_leapfrog"),
        "step_size": None if step_size is None else float(step_size),
        "adapt_rate": float(adapt_rate),
        "target_accept": float(target_accept),
    }
    betas = _check_schedule(schedule, n_steps)
    generator = make_generator(generator, device=x.device)
    moves["spread"] = prior_spread(model, generator)

    n = x.shape[0]
    log_w_sum = torch.empty(n, dtype=x.dtype, device=x.device)
    log_w2_sum = torch.empty_like(log_w_sum)
    log_w_std = torch.empty_like(log_w_sum)
    acceptance: dict[str, list[float]] = {}
    for start in range(0, n, batch):
        rows = slice(start, min(n, start + batch))
        chain = _AnnealedChain(model, x[rows], k, generator, moves)
        log_w = torch.zeros(chain.x.shape[0], dtype=x.dtype, device=x.device)
        desc = f"AIS points {rows.start}-{rows.stop - 1}"
        for t in progress_bar(range(1, len(betas)), desc=desc, disable=not progress):
            log_w += (betas[t] - betas[t - 1]) * chain.log_likelihood()
            for _ in range(n_sweeps):
                chain.sweep(float(betas[t]))
        log_w = log_w.reshape(k, -1)  # (K, n): chain k of point i is row k * n + i
        log_w_sum[rows] = torch.logsumexp(log_w, 0)
        log_w2_sum[rows] = torch.logsumexp(2 * log_w, 0)
        log_w_std[rows] = log_w.std(0) if k > 1 else torch.zeros_like(log_w[0])
        for key, value in chain.acceptance().items():
            acceptance.setdefault(key, []).append(value)
    log_px, stderr, ess = weights_summary(log_w_sum, log_w2_sum, k)
    info = {
        "n_steps": len(betas) - 1,
        "n_sweeps": n_sweeps,
        "log_w_std": float(log_w_std.mean()),
        "log_w_std_max": float(log_w_std.max()),
    }
    info.update({key: float(np.mean(v)) for key, v in acceptance.items()})
    return LogLikelihoodResult(log_px, stderr, ess, "ais", k, info)
