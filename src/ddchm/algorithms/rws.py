"""Reweighted wake-sleep (Bornschein & Bengio 2015) on the shared hierarchical model."""

from __future__ import annotations

import math

import torch

from ddchm.algorithms.recognition import RecognitionAlgorithm, check_unit_interval
from ddchm.models import HierarchicalModel
from ddchm.validation import check_positive_int


class ReweightedWakeSleep(RecognitionAlgorithm):
    r"""Reweighted wake-sleep: importance sampling with q_phi as proposal, K particles.

    For each data point x_n draw z^{(k)} ~ q_phi(z | x_n), k = 1..K, with log-weights
    log w_k = log p_theta(x_n, z^{(k)}) - log q_phi(z^{(k)} | x_n) and normalised weights
    w~_k = w_k / sum_j w_j (constants under autograd).

    Wake-theta, the self-normalised importance-sampling estimate of grad log p(x_n):

        wake_theta_loss = -mean_n [ log (1/K) sum_k w_k ]       (q held fixed)
        grad_theta      =  mean_n sum_k w~_k grad_theta log p_theta(x_n, z^{(k)})

    It is the gradient of the K-sample bound L_K = E[log (1/K) sum_k w_k], so its expectation is
    grad_theta L_K, a biased estimate of grad log p(x) whose bias falls as K grows (K=1 is
    wake-sleep's wake phase).

    Wake-phi, the same weights fitting q in the KL(p(z|x) || q) direction on real data:

        wake_phi_loss = -mean_n sum_k w~_k log q_phi(z^{(k)} | x_n)

    Sleep-phi, on dreams (x^s, z^s) ~ p_theta:  sleep_phi_loss = -mean_s log q_phi(z^s | x^s).

    The phi loss mixes them as in Pyro's ``ReweightedWakeSleep``:

        phi_loss = insomnia * wake_phi_loss + (1 - insomnia) * sleep_phi_loss

    so ``insomnia=1`` is wake-phi only and ``insomnia=0`` sleep-phi only. Bornschein & Bengio
    (2015) propose both q-updates and use them together; the default 0.5 weighs them equally
    (Pyro's default is 1.0; Le et al. 2019 favour wake-phi).

    Cost per step: N K draws from q, N K evaluations of log p and log q; if insomnia < 1, S
    dreams from the model and S evaluations of log q.

    Args:
        model: the generative chain; updated in place.
        lr, optimizer: theta's learning rate and optimiser (see :class:`RecognitionAlgorithm`).
        recognition_lr, recognition_optimizer: phi's.
        hidden: q's tanh MLP hidden sizes, ``()`` for affine links.
        num_particles: K >= 2 (self-normalisation needs two particles to be informative).
        insomnia: in [0, 1], weight of wake-phi against sleep-phi (Pyro's convention).
        sleep_samples: S, dreams per sleep-phi term; None uses as many as the data batch.
        generator: seed or torch.Generator.

    Metrics: ``wake_theta_loss``, ``bound`` (= -wake_theta_loss, the K-sample bound estimate),
    ``wake_phi_loss`` (if insomnia > 0), ``sleep_phi_loss`` (if insomnia < 1), ``grad_norm``,
    ``recognition_grad_norm``.

    :meth:`fit_recognition` minimises phi_loss with theta frozen, wake-phi on minibatches of
    ``data`` (or on x ~ p_theta(x) when ``data`` is None).

    References:
        J. Bornschein, Y. Bengio, "Reweighted Wake-Sleep", ICLR 2015 (arXiv:1406.2751).
        T. A. Le, A. R. Kosiorek, N. Siddharth, Y. W. Teh, F. Wood, "Revisiting Reweighted
        Wake-Sleep for Models with Stochastic Control Flow", UAI 2019.
    """

    name = "rws"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        num_particles: int = 5,
        insomnia: float = 0.5,
        sleep_samples: int | None = None,
        **shared,
    ):
        self.num_particles = check_positive_int(num_particles, "num_particles", minimum=2)
        self.insomnia = check_unit_interval(insomnia, "insomnia")
        self.sleep_samples = (
            None if sleep_samples is None else check_positive_int(sleep_samples, "sleep_samples")
        )
        super().__init__(model, **shared)

    def _objectives(self, x, theta=True, phi=True):
        metrics, theta_objective, phi_loss = {}, None, None
        need_particles = theta or (phi and self.insomnia > 0)
        if need_particles:
            latents, log_q = self.sample_q(x, self.num_particles)
            with torch.set_grad_enabled(theta and torch.is_grad_enabled()):
                log_p = self.log_joint(x, latents)  # (K, N)
            log_w = log_p - log_q.detach()
            bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # (N,)
            theta_objective = bound.mean()
            metrics["wake_theta_loss"] = -float(theta_objective.detach())
            metrics["bound"] = float(theta_objective.detach())
        if phi:
            phi_loss = 0.0
            if self.insomnia > 0:
                normalised = torch.softmax(log_w.detach(), dim=0)  # w~_k, (K, N)
                wake_phi_loss = -(normalised * log_q).sum(0).mean()
                metrics["wake_phi_loss"] = float(wake_phi_loss.detach())
                phi_loss = self.insomnia * wake_phi_loss
            if self.insomnia < 1:
                sleep_phi_loss = self.sleep_phi_loss(self.sleep_samples or self.batch_rows(x))
                metrics["sleep_phi_loss"] = float(sleep_phi_loss.detach())
                phi_loss = phi_loss + (1 - self.insomnia) * sleep_phi_loss
        return (theta_objective if theta else None), phi_loss, metrics
