"""VIMCO, variational inference for Monte Carlo objectives (Mnih & Rezende 2016)."""

from __future__ import annotations

import math

import torch

from ddchm.algorithms.recognition import RecognitionAlgorithm
from ddchm.models import HierarchicalModel
from ddchm.validation import check_positive_int


def vimco_learning_signals(log_w: torch.Tensor) -> torch.Tensor:
    r"""Per-particle learning signals L^ - L^_{-j} of VIMCO (Mnih & Rezende 2016, eqs 8-10).

    With L^ = log (1/K) sum_i w_i, the baseline of particle j replaces w_j by the geometric mean
    of the others, w^_{-j} = exp( 1/(K-1) sum_{i != j} log w_i ):

        L^_{-j} = log (1/K) ( sum_{i != j} w_i + w^_{-j} )

    The baseline does not depend on z_j, so the score-function term stays unbiased.

    Args:
        log_w: (K, N) log-weights, K >= 2; treated as constants.

    Returns:
        (K, N) signals, detached.
    """
    log_w = log_w.detach()
    k = log_w.shape[0]
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # (N,)
    left_out_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # log w^_{-j}, (K, N)
    # replaced[j, i] = log w_i for i != j and log w^_{-j} for i == j; (K, K, N)
    replaced = log_w.unsqueeze(0).repeat(k, 1, 1)
    diagonal = torch.arange(k, device=log_w.device)
    replaced[diagonal, diagonal] = left_out_mean
    baseline = torch.logsumexp(replaced, dim=1) - math.log(k)  # (K, N)
    return bound.unsqueeze(0) - baseline


class VIMCO(RecognitionAlgorithm):
    r"""VIMCO: the K-sample bound for theta and phi, score-function gradients with
    leave-one-out control variates.

    For each data point x_n draw z^{(k)} ~ q_phi(z | x_n), k = 1..K (no reparameterisation, so
    Bernoulli, Gaussian and Laplace layers are all handled alike), and maximise

        L^K(x_n) = log (1/K) sum_k w_k,    w_k = p_theta(x_n, z^{(k)}) / q_phi(z^{(k)} | x_n)

    whose expectation is the multi-sample bound E_q[L^K] <= log p(x_n). The gradient estimator
    (paper eq. 10) is

        grad L^K ~= sum_j (L^K - L^K_{-j}) grad_phi log q(z^{(j)} | x_n)  +  sum_j w~_j grad log w_j

    with w~_j = w_j / sum_i w_i and L^K_{-j} from :func:`vimco_learning_signals`. It is unbiased
    for grad_{theta, phi} E_q[L^K]. The theta part is sum_j w~_j grad_theta log p(x_n, z^{(j)}),
    the same as reweighted wake-sleep's wake-theta. It is computed as autograd of the surrogate

        mean_n [ L^K(x_n) + sum_j signal_j.detach() * log q_phi(z^{(j)} | x_n) ].

    Cost per step: N K draws from q, N K evaluations of log p and log q, and O(K^2 N) for the
    baselines.

    Args:
        model: the generative chain; updated in place.
        lr, optimizer: theta's learning rate and optimiser (see :class:`RecognitionAlgorithm`).
        recognition_lr, recognition_optimizer: phi's.
        hidden: q's tanh MLP hidden sizes, ``()`` for affine links.
        num_particles: K >= 2 (the leave-one-out baseline needs another particle).
        generator: seed or torch.Generator.

    Metrics: ``bound`` (batch mean of L^K), ``grad_norm``, ``recognition_grad_norm``.

    :meth:`fit_recognition` maximises the bound in phi alone on minibatches of ``data`` (or on
    x ~ p_theta(x) when ``data`` is None).

    References:
        A. Mnih, D. J. Rezende, "Variational inference for Monte Carlo objectives", ICML 2016
        (arXiv:1602.06725).
    """

    name = "vimco"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        num_particles: int = 5,
        **shared,
    ):
        self.num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
        super().__init__(model, **shared)

    def _objectives(self, x, theta=True, phi=True):
        latents, log_q = self.sample_q(x, self.num_particles)
        with torch.set_grad_enabled(theta and torch.is_grad_enabled()):
            log_p = self.log_joint(x, latents)  # (K, N)
        log_w = log_p - log_q
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # (N,)
        signals = vimco_learning_signals(log_w)
        surrogate = (bound + (signals * log_q).sum(0)).mean()
        metrics = {"bound": float(bound.detach().mean())}
        return (surrogate if theta else None), (-surrogate if phi else None), metrics
