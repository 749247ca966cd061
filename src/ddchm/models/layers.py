"""Exponential-family conditional layers (spec section 1).

Every layer is a conditional density in exponential-family form

    p(z | parent) = h(z) exp( g(parent; theta)^T S(z) - Phi(g(parent; theta)) )

and exposes each piece separately, because the DDC machine needs them separately: the wake
gradient of section 7 is autograd of
``sum_s w_s g(parent_s)^T S(z_s) - sum_s w'_s Phi(g(parent_s))``.

Shapes: values and parents are ``(N, units)``; natural parameters and sufficient statistics are
``(N, n_stats)``; log-partition, log-base-measure and log-prob are ``(N,)`` (summed over units).
A prior layer (``parent_dim=None``) returns natural parameters of shape ``(1, n_stats)``, which
broadcast against any batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ddchm.validation import check_binary, check_finite, check_matrix, make_generator

LOG_2PI = math.log(2 * math.pi)
_LAPLACE_MIN_SCALE = 1e-4


class ExponentialFamilyLayer(nn.Module):
    """Base class. Subclasses define the natural-parameter map and the family's pieces."""

    family: str = ""
    discrete: bool = False
    stats_per_unit: int = 1

    def __init__(self, dim: int, parent_dim: int | None = None):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive integer number of units, got {dim!r}")
        if parent_dim is not None and (not isinstance(parent_dim, int) or parent_dim < 1):
            raise ValueError(f"parent_dim: expected a positive integer or None, got {parent_dim!r}")
        self.dim = dim
        self.parent_dim = parent_dim

    @property
    def is_prior(self) -> bool:
        return self.parent_dim is None

    @property
    def n_stats(self) -> int:
        return self.dim * self.stats_per_unit

    # --- the exponential-family pieces -------------------------------------------------------
    def natural_params(self, parent: torch.Tensor | None = None) -> torch.Tensor:
        """eta = g(parent; theta), shape (N, n_stats), or (1, n_stats) for a prior."""
        raise NotImplementedError

    def sufficient_stats(self, value: torch.Tensor) -> torch.Tensor:
        """S(z), shape (N, n_stats)."""
        raise NotImplementedError

    def log_partition(self, eta: torch.Tensor) -> torch.Tensor:
        """Phi(eta) summed over units, shape (N,)."""
        raise NotImplementedError

    def log_base_measure(self, value: torch.Tensor) -> torch.Tensor:
        """log h(z) summed over units, shape (N,)."""
        return value.new_zeros(value.shape[0])

    def mean_stats_from_natural(self, eta: torch.Tensor) -> torch.Tensor:
        """mu = grad Phi(eta) = E[S(z)], shape (N, n_stats)."""
        raise NotImplementedError

    def _sample_from_natural(self, eta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    # --- derived operations ------------------------------------------------------------------
    def mean_stats(self, parent: torch.Tensor | None = None) -> torch.Tensor:
        """mu(parent) = E[S(z) | parent]."""
        return self.mean_stats_from_natural(self.natural_params(parent))

    def log_prob(self, value: torch.Tensor, parent: torch.Tensor | None = None) -> torch.Tensor:
        """log p(value | parent), shape (N,)."""
        eta = self.natural_params(parent)
        stats = self.sufficient_stats(value)
        return (
            (eta * stats).sum(-1)
            - self.log_partition(eta).expand(stats.shape[0])
            + self.log_base_measure(value)
        )

    def sample(
        self,
        parent: torch.Tensor | None = None,
        n: int | None = None,
        generator: torch.Generator | int | None = None,
    ) -> torch.Tensor:
        """Draw z ~ p(z | parent); a prior layer needs ``n``. Returns (N, dim)."""
        eta = self.natural_params(parent)
        if self.is_prior:
            if n is None:
                raise ValueError("n: a prior layer needs the number of samples to draw")
            eta = eta.expand(n, -1)
        generator = make_generator(generator, device=eta.device)
        return self._sample_from_natural(eta, generator)

    def check_values(self, value: torch.Tensor, name: str = "value") -> None:
        """Raise ValueError if ``value`` is not a valid (N, dim) array for this family."""
        check_matrix(value, name, self.dim)
        check_finite(value, name)

    def check_parent(self, parent: torch.Tensor | None) -> None:
        if self.is_prior:
            return
        if parent is None:
            raise ValueError(f"parent: a conditional {self.family} layer needs its parent values")
        check_matrix(parent, "parent", self.parent_dim)

    def config(self) -> dict:
        """What is needed to rebuild the layer (parameters come from the state dict)."""
        return {"family": self.family, "dim": self.dim, "parent_dim": self.parent_dim}

    def extra_repr(self) -> str:
        parent = "prior" if self.is_prior else f"parent_dim={self.parent_dim}"
        return f"dim={self.dim}, {parent}"


class _LinearLink(ExponentialFamilyLayer):
    """A layer whose natural parameters come from one affine map of the parent (W z + b)."""

    def __init__(self, dim, parent_dim=None, init_scale=0.1, init_bias=0.0):
        super().__init__(dim, parent_dim)
        self.bias = nn.Parameter(torch.full((dim,), float(init_bias)))
        if parent_dim is not None:
            self.weight = nn.Parameter(init_scale * torch.randn(dim, parent_dim))
        else:
            self.register_parameter("weight", None)

    def linear(self, parent: torch.Tensor | None) -> torch.Tensor:
        if self.weight is None:
            return self.bias.unsqueeze(0)
        return parent @ self.weight.T + self.bias


class Bernoulli(_LinearLink):
    """Sigmoid belief net layer: logits W z + b (or a prior with logits b). S(z) = z."""

    family = "bernoulli"
    discrete = True

    def natural_params(self, parent=None):
        return self.linear(parent)

    def sufficient_stats(self, value):
        return value

    def log_partition(self, eta):
        return F.softplus(eta).sum(-1)

    def mean_stats_from_natural(self, eta):
        return torch.sigmoid(eta)

    def _sample_from_natural(self, eta, generator):
        uniform = torch.rand(eta.shape, generator=generator, dtype=eta.dtype, device=eta.device)
        return (uniform < torch.sigmoid(eta)).to(eta.dtype)

    def check_values(self, value, name="value"):
        super().check_values(value, name)
        check_binary(value, name)


class Gaussian(_LinearLink):
    """Gaussian with mean W z + b and a learned diagonal variance. S(z) = (z, z^2).

    Natural parameters (m / s^2, -1 / (2 s^2)); log-partition m^2 / (2 s^2) + log s;
    h = (2 pi)^(-1/2).
    """

    family = "gaussian"
    stats_per_unit = 2

    def __init__(self, dim, parent_dim=None, init_scale=0.1, init_bias=0.0, init_std=1.0):
        super().__init__(dim, parent_dim, init_scale, init_bias)
        self.log_std = nn.Parameter(torch.full((dim,), math.log(init_std)))

    def mean_and_std(self, parent=None):
        return self.linear(parent), self.log_std.exp()

    def natural_params(self, parent=None):
        mean, std = self.mean_and_std(parent)
        precision = std.pow(-2)
        eta_mean = mean * precision
        return torch.cat([eta_mean, (-0.5 * precision).expand_as(eta_mean)], dim=-1)

    def sufficient_stats(self, value):
        return torch.cat([value, value.square()], dim=-1)

    def _split(self, eta):
        return eta[..., : self.dim], eta[..., self.dim :]

    def log_partition(self, eta):
        eta1, eta2 = self._split(eta)
        return (-eta1.square() / (4 * eta2) - 0.5 * torch.log(-2 * eta2)).sum(-1)

    def log_base_measure(self, value):
        return value.new_full((value.shape[0],), -0.5 * LOG_2PI * self.dim)

    def mean_stats_from_natural(self, eta):
        eta1, eta2 = self._split(eta)
        variance = -0.5 / eta2
        mean = eta1 * variance
        return torch.cat([mean, mean.square() + variance], dim=-1)

    def _sample_from_natural(self, eta, generator):
        eta1, eta2 = self._split(eta)
        variance = -0.5 / eta2
        noise = torch.randn(eta1.shape, generator=generator, dtype=eta.dtype, device=eta.device)
        return eta1 * variance + variance.sqrt() * noise


class Laplace(ExponentialFamilyLayer):
    """Zero-mean Laplace with scale softplus(B z + c) (hierarchical sparse coding). ``S(z) = |z|``.

    Natural parameter -1 / scale; log-partition log(2 scale); h = 1. A prior has scale softplus(c).
    """

    family = "laplace"

    def __init__(self, dim, parent_dim=None, init_scale=0.1, init_bias_scale=1.0):
        super().__init__(dim, parent_dim)
        # softplus(c) = init_bias_scale at initialisation.
        c = math.log(math.expm1(init_bias_scale))
        self.scale_bias = nn.Parameter(torch.full((dim,), c))
        if parent_dim is not None:
            self.scale_weight = nn.Parameter(init_scale * torch.randn(dim, parent_dim))
        else:
            self.register_parameter("scale_weight", None)

    def scale(self, parent=None):
        if self.scale_weight is None:
            pre = self.scale_bias.unsqueeze(0)
        else:
            pre = parent @ self.scale_weight.T + self.scale_bias
        return F.softplus(pre) + _LAPLACE_MIN_SCALE

    def natural_params(self, parent=None):
        return -1.0 / self.scale(parent)

    def sufficient_stats(self, value):
        return value.abs()

    def log_partition(self, eta):
        return torch.log(-2.0 / eta).sum(-1)

    def mean_stats_from_natural(self, eta):
        return -1.0 / eta

    def _sample_from_natural(self, eta, generator):
        scale = -1.0 / eta
        # Inverse CDF: u ~ U(-1/2, 1/2), z = -scale sign(u) log(1 - 2|u|).
        u = torch.rand(eta.shape, generator=generator, dtype=eta.dtype, device=eta.device) - 0.5
        tiny = torch.finfo(eta.dtype).tiny
        return -scale * torch.sign(u) * torch.log((1 - 2 * u.abs()).clamp_min(tiny))


FAMILIES = {cls.family: cls for cls in (Bernoulli, Gaussian, Laplace)}


def make_layer(family: str, dim: int, parent_dim: int | None = None, **kwargs):
    """Build a layer by family name ('bernoulli', 'gaussian', 'laplace')."""
    try:
        cls = FAMILIES[family]
    except KeyError:
        raise ValueError(
            f"family: unknown layer family {family!r}; expected one of {sorted(FAMILIES)}"
        ) from None
    return cls(dim, parent_dim, **kwargs)
