"""The importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2016)."""

from __future__ import annotations

import math

import torch

from ddchm.algorithms.vae import VAE
from ddchm.models import HierarchicalModel


class IWAE(VAE):
    r"""Maximise the K-sample importance-weighted bound with reparameterised draws.

    With z^{(k)} = z(eps^{(k)}; x_n, phi) ~ q_phi(z | x_n), k = 1..K, and
    log w_k = log p_theta(x_n, z^{(k)}) - log q_phi(z^{(k)} | x_n),

        bound = mean_n [ log (1/K) sum_k w_k ]

    an unbiased estimate of mean_n L_K(x_n), where L_1 (the ELBO) <= L_K <= L_{K+1} <= log p(x_n)
    and L_K -> log p(x_n) as K grows (Burda et al. 2016, theorem 1). Gradients are pathwise in
    phi; the theta-gradient is mean_n sum_k w~_k grad_theta log p(x_n, z^{(k)}) with
    w~ = softmax(log w), the same as RWS's wake-theta and VIMCO's. K = 1 is the VAE.

    Cost per step: N K draws from q, N K evaluations of log p and log q, and their backward pass.

    Args:
        model: the generative chain, every latent layer Gaussian or Laplace; updated in place.
        lr, optimizer: theta's learning rate and optimiser (see :class:`RecognitionAlgorithm`).
        recognition_lr, recognition_optimizer: phi's.
        hidden: q's tanh MLP hidden sizes, ``()`` for affine links.
        num_particles: K >= 1.
        generator: seed or torch.Generator.

    Raises:
        ValueError: if a latent layer is discrete (use VIMCO or RWS there).

    Metrics: ``bound``, ``grad_norm``, ``recognition_grad_norm``.

    References:
        Y. Burda, R. Grosse, R. Salakhutdinov, "Importance weighted autoencoders", ICLR 2016
        (arXiv:1509.00519).
    """

    name = "iwae"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        num_particles: int = 5,
        **shared,
    ):
        super().__init__(model, num_particles=num_particles, **shared)

    def _objectives(self, x, theta=True, phi=True):
        latents, log_q = self.sample_q(x, self.num_particles, reparameterize=True)
        log_w = self.log_joint(x, latents) - log_q  # (K, N)
        bound = (torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).mean()
        metrics = {"bound": float(bound.detach())}
        return (bound if theta else None), (-bound if phi else None), metrics
