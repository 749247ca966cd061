"""Exact inference in linear-Gaussian chains (every layer Gaussian with mean W z + b).

The whole chain is one Gaussian vector. Writing each layer as z_l = W_l z_{l+1} + b_l + s_l e_l
with independent standard normals e, the stacked vector v = (z_L, ..., z_1, x) is v = m + M e,
so its covariance is M M^T. Conditioning on x gives the posterior of every latent layer in closed
form (mean depends on x, covariance does not):

    E[u | x] = m_u + C_ux C_xx^{-1} (x - m_x),    Cov[u | x] = C_uu - C_ux C_xx^{-1} C_xu.

log p(x) and its gradient are closed forms (autograd); expectations of nonlinear functions of z_l
(the random encodings) are Monte Carlo over exact posterior samples, with antithetic pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddchm.models.exact import gaussian_chain_log_marginal
from ddchm.models.hierarchical import HierarchicalModel
from ddchm.validation import check_positive_int, make_generator


class LinearGaussianInference:
    """Closed-form log p(x), gradient, and exact posteriors of an all-Gaussian chain.

    Args:
        model: a chain whose every layer (observation included) is Gaussian.
        n_samples: exact posterior samples per data point for :meth:`expectation` (antithetic
            pairs, so the odd part of fn is integrated exactly).
        seed: seed of those samples (the same draws on every call).
    """

    def __init__(self, model: HierarchicalModel, n_samples: int = 4000, seed: int = 0):
        for l, layer in enumerate(model.layers):
            if layer.family != "gaussian":
                raise ValueError(
                    f"model: LinearGaussianInference needs every layer Gaussian, but layer {l} "
                    f"is {layer.family}"
                )
        self.model = model
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        self.seed = seed

    @property
    def n_latent_layers(self) -> int:
        return self.model.n_latent_layers

    def joint(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Mean and covariance of v = (z_L, ..., z_1, x), and the block sizes in that order."""
        layers = list(self.model.layers)[::-1]  # top first
        top = layers[0]
        means = [top.bias]
        noise_sizes = [layer.dim for layer in layers]
        total = sum(noise_sizes)
        offsets = [sum(noise_sizes[:i]) for i in range(len(layers))]

        def noise_block(i, layer):
            block = torch.zeros(layer.dim, total, dtype=top.bias.dtype, device=top.bias.device)
            block[:, offsets[i] : offsets[i] + layer.dim] = torch.diag(layer.log_std.exp())
            return block

        loadings = [noise_block(0, top)]
        for i, layer in enumerate(layers[1:], start=1):
            means.append(layer.weight @ means[-1] + layer.bias)
            loadings.append(layer.weight @ loadings[-1] + noise_block(i, layer))
        M = torch.cat(loadings)
        return torch.cat(means), M @ M.T, noise_sizes

    def log_marginal(self, x) -> torch.Tensor:
        """Exact log p(x_n), (N,). Differentiable in theta."""
        return gaussian_chain_log_marginal(self.model, self.model.check_data(x))

    def expected_gradient(self, x) -> dict[str, torch.Tensor]:
        """Exact grad_theta mean_n log p(x_n), keyed by parameter name."""
        return self.model.gradients(self.log_marginal(x).mean())

    @torch.no_grad()
    def layer_posteriors(self, x) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """[None, (mean (N, D_1), cov (D_1, D_1)), ..., (mean_L, cov_L)]: exact p(z_l | x)."""
        x = self.model.check_data(x)
        mean, cov, sizes = self.joint()
        d = x.shape[1]
        m_u, m_x = mean[:-d], mean[-d:]
        c_uu, c_ux, c_xx = cov[:-d, :-d], cov[:-d, -d:], cov[-d:, -d:]
        gain = torch.linalg.solve(c_xx, c_ux.T).T  # C_ux C_xx^{-1}
        post_mean = m_u + (x - m_x) @ gain.T  # (N, sum D_l), top first
        post_cov = c_uu - gain @ c_ux.T
        out, start = [None] * (self.n_latent_layers + 1), 0
        for i, size in enumerate(sizes[:-1]):
            l = self.n_latent_layers - i
            block = slice(start, start + size)
            out[l] = (post_mean[:, block], post_cov[block, block])
            start += size
        return out

    def posterior_means(self, x) -> list[torch.Tensor]:
        """[E[z_1 | x], ..., E[z_L | x]], each (N, D_l)."""
        return [mean for mean, _ in self.layer_posteriors(x)[1:]]

    @torch.no_grad()
    def expectation(self, x, fn: Callable[[torch.Tensor], torch.Tensor], layer: int):
        """E[fn(z_layer) | x_n] for each n, by ``n_samples`` exact posterior samples per point;
        ``fn`` maps (M, D_layer) values to (M, P)."""
        if not 1 <= layer <= self.n_latent_layers:
            raise ValueError(f"layer: expected 1..{self.n_latent_layers}, got {layer}")
        mean, cov = self.layer_posteriors(x)[layer]
        D = mean.shape[1]
        jitter = 1e-12 * torch.eye(D, dtype=cov.dtype, device=cov.device)
        root = torch.linalg.cholesky(cov + jitter)
        generator = make_generator(self.seed, device=mean.device)
        half = self.n_samples // 2
        noise = torch.randn(half, D, generator=generator, dtype=mean.dtype, device=mean.device)
        offsets = torch.cat([noise, -noise]) @ root.T  # (2 half, D)
        chunk = max(1, 2**22 // (2 * half * max(D, 1)))
        out = []
        for start in range(0, mean.shape[0], chunk):
            values = (mean[start : start + chunk].unsqueeze(1) + offsets).reshape(-1, D)
            out.append(fn(values).reshape(-1, 2 * half, fn(values[:1]).shape[-1]).mean(1))
        return torch.cat(out)
