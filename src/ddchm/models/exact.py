"""Exact inference in small chains: Bernoulli latent layers enumerated, low-dimensional continuous
latent layers (one or two units) integrated on a quadrature grid.

The chain structure keeps this cheap: with C_l configurations of layer l (2^{D_l} binary vectors,
or the G^{D_l} nodes of a midpoint grid with cell volumes v_l), the tables are

    factor_0[n, c_1]        = log p(x_n | z_1 = c_1)                          (N x C_1, chunked)
    factor_l[c_l, c_{l+1}]  = log p(z_l = c_l | z_{l+1} = c_{l+1}) + log v_l[c_l]   (C_l x C_{l+1})
    factor_L[c_L]           = log p(z_L = c_L) + log v_L[c_L]

(v = 1 for binary layers), so a sum over grid nodes is the midpoint rule for the integral, and
every quantity below is exact for binary layers and converges at O(h^2) in the grid spacing h for
continuous ones (the Laplace kink at 0 sits on a cell boundary, and Laplace grids are dense near
0, see :func:`quadrature_grid`). Grids span the layer's prior range (quantiles 1e-5 and 1 - 1e-5
of 20,000 ancestral samples, widened by a quarter on each side).

The prior marginals log p(z_l) follow top-down; given z_l, z_{l+1} is independent of x, so the
posterior is p(z_1 | x) times data-independent transitions p(z_{l+1} | z_l) = p(z_l | z_{l+1})
p(z_{l+1}) / p(z_l). Every exact quantity below is built from these tables; memory is bounded by
``max_table`` entries per chunk, never by N x prod_l C_l.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from ddchm.models.hierarchical import HierarchicalModel
from ddchm.validation import make_generator


def enumerate_binary(dim: int, dtype=None, device=None) -> torch.Tensor:
    """All 2^dim binary vectors as a (2^dim, dim) tensor, first unit most significant."""
    codes = torch.arange(2**dim, device=device)
    bits = 2 ** torch.arange(dim - 1, -1, -1, device=device)
    return ((codes.unsqueeze(1) & bits) > 0).to(dtype or torch.get_default_dtype())


def quadrature_grid(
    samples: torch.Tensor, points: int, dense_at_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint grid over the range of ``samples`` (N, D), D <= 2: nodes (points^D, D) and log
    cell volumes (points^D,). The range is widened by a quarter on each side. With
    ``dense_at_zero`` (Laplace layers, whose density can be a spike at 0 much narrower than a
    uniform cell) the grid is uniform in u with z = a sinh(u / a'), a = 1e-3 of the range: cells
    of relative width ~1% far out and ~1e-5 of the range at 0; a cell boundary sits at 0."""
    low = torch.quantile(samples, 1e-5, dim=0)
    high = torch.quantile(samples, 1 - 1e-5, dim=0)
    width = high - low
    low, high = low - width / 4, high + width / 4
    axes, volumes = [], []
    for d in range(samples.shape[1]):
        lo, hi = float(low[d]), float(high[d])
        if dense_at_zero:
            a = 1e-3 * max(abs(lo), abs(hi))
            u_lo, u_hi = math.asinh(min(lo, 0.0) / a), math.asinh(max(hi, 0.0) / a)
            step = (u_hi - u_lo) / points
            u_lo = -step * math.ceil(-u_lo / step)  # a boundary at u = 0
            u = u_lo + step * (torch.arange(points, dtype=samples.dtype) + 0.5)
            axes.append(a * torch.sinh(u))
            volumes.append(a * torch.cosh(u) * step)
            continue
        step = (hi - lo) / points
        start = -step * math.ceil(-lo / step) if lo < 0 < hi else lo  # a boundary at 0
        axes.append(start + step * (torch.arange(points, dtype=samples.dtype) + 0.5))
        volumes.append(torch.full((points,), step, dtype=samples.dtype))
    nodes = torch.cartesian_prod(*axes).reshape(-1, samples.shape[1])
    log_volume = torch.cartesian_prod(*[v.log() for v in volumes]).reshape(-1, samples.shape[1])
    return nodes.to(samples.device), log_volume.sum(1).to(samples.device)


class ExactInference:
    """Exact log p(x), posteriors, posterior expectations and the expected gradient.

    Args:
        model: a chain whose latent layers are Bernoulli (enumerated) or continuous with at most
            two units (quadrature); the observation layer may be any family.
        max_configs: refuse layers with more configurations than this (2^20 by default).
        max_table: entries per chunk of the N x C_1 table (bounds memory).
        grid_points: quadrature nodes per continuous unit (a layer of D units gets
            grid_points^D nodes).
    """

    def __init__(
        self,
        model: HierarchicalModel,
        max_configs: int = 2**20,
        max_table: int = 2**22,
        grid_points: int = 800,
    ):
        reference = next(model.parameters())
        dtype, device = reference.dtype, reference.device
        samples = None
        self.configs, self.log_volumes = [None], [None]
        for l in range(1, len(model.layers)):
            layer = model.layers[l]
            if layer.discrete:
                if 2**layer.dim > max_configs:
                    raise ValueError(
                        f"model: z{l} has 2^{layer.dim} configurations, more than max_configs="
                        f"{max_configs}; exact inference is for small models"
                    )
                self.configs.append(enumerate_binary(layer.dim, dtype, device))
                self.log_volumes.append(None)
                continue
            if layer.dim > 2 or grid_points**layer.dim > max_configs:
                raise ValueError(
                    f"model: z{l} is a {layer.family} layer of {layer.dim} units; quadrature "
                    "handles continuous layers of at most 2 units (grid_points^D <= max_configs). "
                    "Use importance sampling or AIS (ddchm.evaluate), or the closed form of "
                    "LinearGaussianInference for all-Gaussian chains"
                )
            if samples is None:
                samples = model.sample(20_000, generator=make_generator(0, device=device))
            nodes, log_volume = quadrature_grid(
                samples[l], grid_points, dense_at_zero=layer.family == "laplace"
            )
            self.configs.append(nodes)
            self.log_volumes.append(log_volume)
        self.model = model
        self.max_table = max_table

    @property
    def n_latent_layers(self) -> int:
        return self.model.n_latent_layers

    # --- tables ------------------------------------------------------------------------------
    def _latent_factors(self) -> list[torch.Tensor]:
        """[None, factor_1 (C_1 x C_2), ..., factor_L (C_L)]; differentiable in theta."""
        layers, configs, L = self.model.layers, self.configs, self.n_latent_layers
        factors = [None]
        for l in range(1, L):
            factors.append(
                self._with_volume(l, pair_log_prob(layers[l], configs[l], configs[l + 1]))
            )
        factors.append(self._with_volume(L, layers[L].log_prob(configs[L])))
        return factors

    def _with_volume(self, l: int, table: torch.Tensor) -> torch.Tensor:
        """Add log cell volumes of layer l along the table's first axis (grid layers only)."""
        if self.log_volumes[l] is None:
            return table
        volume = self.log_volumes[l]
        return table + (volume.unsqueeze(1) if table.dim() == 2 else volume)

    def _observation_factor(self, x: torch.Tensor) -> torch.Tensor:
        """factor_0[n, c_1] = log p(x_n | z_1 = c_1), (N x C_1); differentiable in theta."""
        return pair_log_prob(self.model.layers[0], x, self.configs[1])

    @staticmethod
    def _prior_marginals(factors) -> list[torch.Tensor]:
        """[None, log p(z_1), ..., log p(z_L)] over configurations, top-down."""
        L = len(factors) - 1
        marginals = [None] * (L + 1)
        marginals[L] = factors[L]
        for l in range(L - 1, 0, -1):
            marginals[l] = torch.logsumexp(factors[l] + marginals[l + 1].unsqueeze(0), dim=1)
        return marginals

    def _chunks(self, n: int):
        size = max(1, self.max_table // self.configs[1].shape[0])
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))

    # --- public API --------------------------------------------------------------------------
    def log_marginal(self, x) -> torch.Tensor:
        """Exact log p(x_n) for every row, shape (N,). Differentiable in theta."""
        x = self.model.check_data(x)
        marginals = self._prior_marginals(self._latent_factors())
        out = [
            torch.logsumexp(self._observation_factor(x[rows]) + marginals[1], dim=1)
            for rows in self._chunks(x.shape[0])
        ]
        return torch.cat(out)

    @torch.no_grad()
    def transitions(self) -> list[torch.Tensor]:
        """[None, p(z_2 | z_1), ..., p(z_L | z_{L-1})] as (C_l x C_{l+1}) row-stochastic tables.

        Given z_l these are also the posterior transitions, whatever x is (Markov chain)."""
        factors = self._latent_factors()
        marginals = self._prior_marginals(factors)
        out = [None]
        for l in range(1, self.n_latent_layers):
            log_t = factors[l] + marginals[l + 1].unsqueeze(0) - marginals[l].unsqueeze(1)
            out.append(log_t.exp())
        return out

    @torch.no_grad()
    def layer_posteriors(self, x) -> list[torch.Tensor]:
        """[None, p(z_1 | x), ..., p(z_L | x)] as (N x C_l) tables over ``self.configs[l]``."""
        x = self.model.check_data(x)
        factors = self._latent_factors()
        marginals = self._prior_marginals(factors)
        q1 = torch.cat(
            [
                torch.softmax(self._observation_factor(x[rows]) + marginals[1], dim=1)
                for rows in self._chunks(x.shape[0])
            ]
        )
        posteriors = [None, q1]
        for transition in self.transitions()[1:]:
            posteriors.append(posteriors[-1] @ transition)
        return posteriors

    @torch.no_grad()
    def expectation(self, x, fn: Callable[[torch.Tensor], torch.Tensor], layer: int):
        """E[fn(z_layer) | x_n] for each n; ``fn`` maps (C, D_layer) configs to (C, P)."""
        if not 1 <= layer <= self.n_latent_layers:
            raise ValueError(f"layer: expected 1..{self.n_latent_layers}, got {layer}")
        values = fn(self.configs[layer])
        return self.layer_posteriors(x)[layer] @ values.reshape(values.shape[0], -1)

    def posterior_means(self, x) -> list[torch.Tensor]:
        """[E[z_1 | x], ..., E[z_L | x]], each (N x D_l)."""
        posteriors = self.layer_posteriors(x)
        return [posteriors[l] @ self.configs[l] for l in range(1, self.n_latent_layers + 1)]

    @torch.no_grad()
    def joint_expectation(self, x, fn: Callable[..., torch.Tensor], max_joint: int = 2**20):
        """E[fn(z_1, ..., z_L) | x_n] over the full joint (small models only).

        ``fn`` takes L tensors of shape (M, D_l), one row per joint configuration, and returns
        (M, P). Configurations are streamed in blocks of the top layers, so memory stays bounded.
        """
        x = self.model.check_data(x)
        posteriors = self.layer_posteriors(x)
        transitions = self.transitions()
        sizes = [c.shape[0] for c in self.configs[1:]]
        total = 1
        for s in sizes:
            total *= s
        if total > max_joint:
            raise ValueError(f"joint_expectation: {total} joint configurations > max_joint")
        device = posteriors[1].device
        grids = torch.cartesian_prod(*[torch.arange(s, device=device) for s in sizes])
        grids = grids.reshape(total, -1)
        # p(z_1..z_L | x) = p(z_1 | x) prod_l p(z_{l+1} | z_l)
        weights = posteriors[1][:, grids[:, 0]]
        for l in range(1, self.n_latent_layers):
            weights = weights * transitions[l][grids[:, l - 1], grids[:, l]]
        values = fn(*[self.configs[l + 1][grids[:, l]] for l in range(self.n_latent_layers)])
        return weights @ values.reshape(total, -1)

    def expected_gradient_objective(self, x) -> torch.Tensor:
        """A scalar whose theta-gradient is mean_n E_{p(z|x_n)}[grad log p(x_n, z)].

        The posterior weights are constants (computed without gradient), so autograd of this
        returns the exact expected gradient (Fisher's identity: it equals grad mean_n log p(x_n)).
        """
        x = self.model.check_data(x)
        posteriors = self.layer_posteriors(x)
        transitions = self.transitions()
        factors = self._latent_factors()
        objective = (
            sum(
                (posteriors[1][rows] * self._observation_factor(x[rows])).sum()
                for rows in self._chunks(x.shape[0])
            )
            / x.shape[0]
        )
        for l in range(1, self.n_latent_layers):
            pair = posteriors[l].mean(0).unsqueeze(1) * transitions[l]  # mean_n p(z_l, z_{l+1}|x_n)
            objective = objective + (pair * factors[l]).sum()
        L = self.n_latent_layers
        return objective + (posteriors[L].mean(0) * factors[L]).sum()

    def expected_gradient(self, x) -> dict[str, torch.Tensor]:
        """Exact mean_n E_{p(z|x_n)}[grad_theta log p(x_n, z)], keyed by parameter name."""
        return self.model.gradients(self.expected_gradient_objective(x))

    @torch.no_grad()
    def sample_posterior(self, x, n_samples: int = 1, generator=None) -> list[torch.Tensor]:
        """Exact posterior samples [z_1, ..., z_L], each (N * n_samples, D_l), rows grouped by x."""
        generator = make_generator(generator, device=self.configs[1].device)
        posteriors = self.layer_posteriors(x)
        transitions = self.transitions()
        index = torch.multinomial(posteriors[1], n_samples, replacement=True, generator=generator)
        index = index.reshape(-1)
        samples = [self.configs[1][index]]
        for l in range(1, self.n_latent_layers):
            index = torch.multinomial(transitions[l][index], 1, generator=generator).squeeze(1)
            samples.append(self.configs[l + 1][index])
        return samples


def pair_log_prob(layer, values: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """log p(values_i | parents_j) for all pairs, (len(values) x len(parents)).

    Uses the exponential-family form S(v)^T eta(p) - Phi(eta(p)) + log h(v): one matrix product.
    """
    eta = layer.natural_params(parents)
    stats = layer.sufficient_stats(values)
    return (
        stats @ eta.T
        - layer.log_partition(eta).unsqueeze(0)
        + layer.log_base_measure(values).unsqueeze(1)
    )


def brute_force_log_marginal(model: HierarchicalModel, x: torch.Tensor) -> torch.Tensor:
    """log p(x) by summing log_joint over every joint configuration (for tests; tiny models)."""
    dims = [model.layers[l].dim for l in range(1, len(model.layers))]
    terms = []
    for bits in itertools.product([0.0, 1.0], repeat=sum(dims)):
        latents, start = [], 0
        for d in dims:
            z = torch.tensor(bits[start : start + d], dtype=x.dtype, device=x.device)
            z = z.expand(x.shape[0], d)
            latents.append(z)
            start += d
        terms.append(model.log_joint(x, latents, validate=False))
    return torch.logsumexp(torch.stack(terms), dim=0)


def gaussian_chain_log_marginal(model: HierarchicalModel, x: torch.Tensor) -> torch.Tensor:
    """Exact log p(x) of a chain whose every layer is Gaussian (a linear-Gaussian model).

    x is then Gaussian: pushing the top layer's N(b_L, diag s_L^2) down the chain,
    m_l = W_l m_{l+1} + b_l and C_l = W_l C_{l+1} W_l^T + diag(s_l^2).
    """
    for l, layer in enumerate(model.layers):
        if layer.family != "gaussian":
            raise ValueError(
                f"model: the closed-form marginal needs every layer Gaussian, but layer {l} "
                f"is {layer.family.capitalize()}"
            )
    top = model.layers[-1]
    mean, cov = top.bias, torch.diag((2 * top.log_std).exp())
    for layer in reversed(list(model.layers)[:-1]):
        mean = layer.weight @ mean + layer.bias
        cov = layer.weight @ cov @ layer.weight.T + torch.diag((2 * layer.log_std).exp())
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
