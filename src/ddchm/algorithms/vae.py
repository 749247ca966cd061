"""The variational autoencoder (Kingma & Welling 2014) on the shared hierarchical model."""

from __future__ import annotations

from ddchm.algorithms.recognition import RecognitionAlgorithm, require_reparameterizable
from ddchm.models import HierarchicalModel
from ddchm.validation import check_positive_int


class VAE(RecognitionAlgorithm):
    r"""Maximise the evidence lower bound in theta and phi with reparameterised draws.

    With z^{(k)} = z(eps^{(k)}; x_n, phi) ~ q_phi(z | x_n) drawn ancestrally through the chain
    (Gaussian: m + s eps; Laplace: inverse CDF of uniform noise), k = 1..K,

        elbo = mean_{n,k} [ log p_theta(x_n, z^{(k)}) - log q_phi(z^{(k)} | x_n) ]

    an unbiased estimate of mean_n E_q[log p(x_n, z) - log q(z | x_n)] <= mean_n log p(x_n).
    Gradients flow through the draws (pathwise) into phi; the theta-gradient is
    mean_{n,k} grad_theta log p_theta(x_n, z^{(k)}), wake-sleep's wake phase.

    No analytic KL term is used: the chain's KL has no closed form in general.

    Cost per step: N K draws from q, N K evaluations of log p and log q, and their backward pass.

    Args:
        model: the generative chain, every latent layer Gaussian or Laplace; updated in place.
        lr, optimizer: theta's learning rate and optimiser (see :class:`RecognitionAlgorithm`).
        recognition_lr, recognition_optimizer: phi's.
        hidden: q's tanh MLP hidden sizes, ``()`` for affine links.
        num_particles: K, draws per data point averaged in the estimate (1 in the paper).
        generator: seed or torch.Generator.

    Raises:
        ValueError: if a latent layer is discrete (use VIMCO or RWS there).

    Metrics: ``elbo``, ``bound`` (the same number), ``grad_norm``, ``recognition_grad_norm``.

    References:
        D. P. Kingma, M. Welling, "Auto-encoding variational Bayes", ICLR 2014
        (arXiv:1312.6114).
    """

    name = "vae"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        num_particles: int = 1,
        **shared,
    ):
        self.num_particles = check_positive_int(num_particles, "num_particles")
        super().__init__(model, **shared)
        require_reparameterizable(model, type(self).__name__)

    def _objectives(self, x, theta=True, phi=True):
        latents, log_q = self.sample_q(x, self.num_particles, reparameterize=True)
        elbo = (self.log_joint(x, latents) - log_q).mean()
        metrics = {"elbo": float(elbo.detach()), "bound": float(elbo.detach())}
        return (elbo if theta else None), (-elbo if phi else None), metrics
