"""Fixed random encoding functions T_l(z) (spec section 2, eq 4).

    T(z) = [ phi(W_T z + b_T), 1 ]      phi = sigmoid or tanh, K random features plus a constant

The DDC of a posterior is E_q[T(z)]; any function near span(T) then has a posterior expectation
linear in it (eq 5). W_T and b_T are drawn once from a seed and then scaled on samples of z so
that each pre-activation has standard deviation ``gain`` and a random offset: features are
neither saturated nor constant on typical z. Optionally the features are whitened (centred and
mapped through the inverse square root of their covariance, null directions dropped), which
makes squared error in T the metric the downstream regressions care about (spec section 9).
"""

from __future__ import annotations

import torch
from torch import nn

from ddchm.validation import check_matrix, make_generator

NONLINEARITIES = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


class RandomEncoding(nn.Module):
    """K random nonlinear features of a layer's values, plus a constant (last column).

    Args:
        dim: units of the encoded layer.
        n_features: K, the number of random features (the constant is extra).
        nonlinearity: 'sigmoid' or 'tanh'.
        gain: standard deviation of each pre-activation on the calibration samples.
        generator: seed or torch.Generator for W_T, b_T (features are frozen afterwards).
    """

    def __init__(
        self,
        dim: int,
        n_features: int = 100,
        nonlinearity: str = "sigmoid",
        gain: float = 1.5,
        generator=None,
    ):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity: expected one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}"
            )
        if n_features < 1:
            raise ValueError(f"n_features: expected a positive integer, got {n_features}")
        generator = make_generator(generator)
        self.dim, self.n_features, self.nonlinearity, self.gain = (
            dim,
            n_features,
            nonlinearity,
            gain,
        )
        self.register_buffer("weight", torch.randn(n_features, dim, generator=generator))
        # offsets spread the features' operating points over the nonlinearity
        self.register_buffer("offset", gain * (2 * torch.rand(n_features, generator=generator) - 1))
        self.register_buffer("bias", self.offset.clone())
        # whitening (identity until `whiten` is called): T = [(phi - centre) @ whitener, 1]
        self.register_buffer("centre", torch.zeros(0))
        self.register_buffer("whitener", torch.zeros(0, 0))

    @property
    def size(self) -> int:
        """Length of T(z), the constant included."""
        out = self.whitener.shape[1] if self.whitened else self.n_features
        return out + 1

    @property
    def whitened(self) -> bool:
        return self.whitener.numel() > 0

    @torch.no_grad()
    def calibrate(self, samples: torch.Tensor) -> RandomEncoding:
        """Scale each random projection to sd ``gain`` on ``samples`` of z (N, dim)."""
        check_matrix(samples, "samples", self.dim)
        samples = samples.to(self.weight.dtype)
        direction = self.weight / self.weight.norm(dim=1, keepdim=True)
        pre = samples @ direction.T
        sd = pre.std(0).clamp_min(1e-6)
        self.weight.copy_(direction * (self.gain / sd).unsqueeze(1))
        self.bias.copy_(self.offset - pre.mean(0) * self.gain / sd)
        return self

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """phi(W_T z + b_T) without whitening or constant, (N, K)."""
        weight = self.weight.to(z.dtype)
        return NONLINEARITIES[self.nonlinearity](z @ weight.T + self.bias.to(z.dtype))

    @torch.no_grad()
    def whiten(self, samples: torch.Tensor, tolerance: float = 1e-6) -> RandomEncoding:
        """Whiten the features on ``samples`` of z, keeping directions whose variance exceeds
        ``tolerance`` times the largest (binary layers have many null directions)."""
        feats = self.features(samples.to(self.weight.dtype)).double()
        centre = feats.mean(0)
        cov = torch.cov((feats - centre).T)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        keep = eigenvalues > tolerance * eigenvalues.max()
        whitener = eigenvectors[:, keep] / eigenvalues[keep].sqrt()
        self.centre = centre.to(self.weight.dtype)
        self.whitener = whitener.to(self.weight.dtype)
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """T(z), (N, size): features (whitened if set up) and a trailing constant 1."""
        feats = self.features(z)
        if self.whitened:
            feats = (feats - self.centre.to(z.dtype)) @ self.whitener.to(z.dtype)
        return torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_features={self.n_features}, {self.nonlinearity}, gain={self.gain}"
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # whitening buffers change shape when set: take the saved shapes
        self.centre = torch.empty_like(state_dict["centre"])
        self.whitener = torch.empty_like(state_dict["whitener"])
        return super().load_state_dict(state_dict, strict=strict)


def make_encodings(
    model,
    n_features,
    nonlinearity="sigmoid",
    gain=1.5,
    n_calibration=5000,
    whiten=False,
    seed: int = 0,
) -> nn.ModuleList:
    """One calibrated encoding per latent layer: index l-1 encodes z_l.

    ``n_features`` is an int or a sequence (z_1 first). Calibration uses prior samples of the
    model as it is now (drawn on the model's device; the features are drawn on the CPU)."""
    generator = make_generator(seed)
    device = next(model.parameters()).device
    L = model.n_latent_layers
    sizes = [n_features] * L if isinstance(n_features, int) else list(n_features)
    if len(sizes) != L:
        raise ValueError(f"n_features: expected {L} sizes (one per latent layer), got {sizes}")
    samples = [s.cpu() for s in model.sample(n_calibration, generator=make_generator(seed, device))]
    encodings = nn.ModuleList()
    for l in range(1, L + 1):
        encoding = RandomEncoding(model.layers[l].dim, sizes[l - 1], nonlinearity, gain, generator)
        encoding = encoding.to(samples[l].dtype).calibrate(samples[l])
        if whiten:
            encoding.whiten(samples[l])
        encodings.append(encoding)
    return encodings
