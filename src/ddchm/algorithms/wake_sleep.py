"""Classic wake-sleep (Hinton, Dayan, Frey & Neal 1995) on the shared hierarchical model."""

from __future__ import annotations

import torch

from ddchm.algorithms.recognition import RecognitionAlgorithm
from ddchm.models import HierarchicalModel
from ddchm.validation import check_positive_int


class WakeSleep(RecognitionAlgorithm):
    r"""The wake-sleep algorithm with a recognition chain q_phi(z | x).

    Wake phase (theta), with z^{(k)} ~ q_phi(z | x_n) and no gradient through the draw:

        wake_theta_loss = -1/(N K) sum_{n,k} log p_theta(x_n, z^{(k)})

    whose expected gradient is -mean_n E_{q(z|x_n)}[grad_theta log p(x_n, z)]: the free-energy
    gradient with q in place of the true posterior (exact when q is).

    Sleep phase (phi), on dreams (x^s, z^s) ~ p_theta(x, z):

        sleep_phi_loss = -1/S sum_s log q_phi(z^s | x^s)

    which fits q to the model's posterior in the KL(p || q) direction, averaged over p_theta(x).
    Both gradients are taken at the current (theta, phi), then both optimisers step.

    Cost per step: N K draws from q and N K evaluations of log p; S ancestral draws from the
    model and S evaluations of log q.

    Args:
        model: the generative chain; updated in place.
        lr, optimizer: theta's learning rate and optimiser (see :class:`RecognitionAlgorithm`).
        recognition_lr, recognition_optimizer: phi's.
        hidden: q's tanh MLP hidden sizes, ``()`` for affine links.
        num_particles: K, draws from q per data point in the wake phase (1 in the paper).
        sleep_samples: S, dreams per sleep phase; None uses as many as the data batch.
        generator: seed or torch.Generator.

    Metrics: ``wake_theta_loss``, ``sleep_phi_loss``, ``bound`` (the ELBO estimated from the
    wake draws), ``grad_norm``, ``recognition_grad_norm``.

    :meth:`fit_recognition` runs the sleep phase alone on ``batch_size`` dreams per step; it
    ignores ``data``, since the sleep phase never looks at data.

    References:
        G. E. Hinton, P. Dayan, B. J. Frey, R. M. Neal, "The wake-sleep algorithm for
        unsupervised neural networks", Science 268 (1995).
    """

    name = "ws"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        num_particles: int = 1,
        sleep_samples: int | None = None,
        **shared,
    ):
        self.num_particles = check_positive_int(num_particles, "num_particles")
        self.sleep_samples = (
            None if sleep_samples is None else check_positive_int(sleep_samples, "sleep_samples")
        )
        super().__init__(model, **shared)

    def _objectives(self, x, theta=True, phi=True):
        metrics, theta_objective, phi_loss = {}, None, None
        if theta:
            with torch.no_grad():
                latents, log_q = self.sample_q(x, self.num_particles)
            log_p = self.log_joint(x, latents)  # (K, N)
            theta_objective = log_p.mean()
            metrics["wake_theta_loss"] = -float(theta_objective.detach())
            metrics["bound"] = float((log_p - log_q).detach().mean())
        if phi:
            phi_loss = self.sleep_phi_loss(self.sleep_samples or self.batch_rows(x))
            metrics["sleep_phi_loss"] = float(phi_loss.detach())
        return theta_objective, phi_loss, metrics

    def _recognition_loss(self, x, batch_size):
        phi_loss = self.sleep_phi_loss(batch_size)
        return phi_loss, {"sleep_phi_loss": float(phi_loss.detach())}
