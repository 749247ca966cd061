"""Encoding functions T_l(z) (spec section 2, eq 4), chosen so the wake gradient is linear in them.

    T(z) = [ exact features E(z),  phi(gain_k ((d_k^T z - m_k) / s_k - t_k)) for k = 1..K,  1 ]

The DDC of a posterior is E_q[T(z)]; any function near span(T) has a posterior expectation linear
in it (eq 5), and the wake gradient needs exactly such expectations (spec section 3b): for a layer
z_l it regresses the layer's sufficient statistics S_l(z_l), the child's natural parameters
g_{l-1}(z_l) (linear in z_l for every family here) and log-partition Phi_{l-1}(g_{l-1}(z_l))
(quadratic in z_l when the child is Gaussian), and E[g_l(z_{l+1})^T S_l(z_l) | z_l].

Why the two kinds of features (measured, see docs/RESULTS.md):

- **Exact features** put the polynomial part of those targets in span(T) by construction: z
  itself, the layer's own statistics (|z| for Laplace; z^2 for Gaussian through the squares),
  and the pairwise products z_i z_j (squares too for continuous layers) when there are at most
  ``max_products`` of them. On a linear-Gaussian chain every target is then exactly linear in T
  and the oracle update is exact; with random sigmoid features alone its cosine to the exact
  gradient was 0.10 (K = 100). Continuous units are centred and scaled on calibration samples
  first (u = (z - m) / s), so the features are O(1) whatever the layer's scale; binary ones stay
  0/1.
- **Random features** cover the rest (the Bernoulli log-partition, the Laplace scale's softplus,
  posterior-dependent conditional expectations). Each is a sigmoid (or tanh) of a standardised
  random projection with its own gain, log-uniform over ``gain`` = (low, high), so some features
  resolve fine structure and others stay unsaturated far out; thresholds t_k are the standardised
  projections of random calibration samples, so they sit where the samples are.

Encodings follow the model (:meth:`LayerEncoding.calibrate` again on fresh samples): the
centring and scaling (m, s, m_k, s_k) are refreshed while the random directions, gains and
standardised thresholds stay, so a feature keeps its meaning relative to the layer's current
distribution instead of saturating as theta moves. Optionally the features are whitened
(centred and mapped through the inverse square root of their covariance, null directions
dropped; spec section 9).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddchm.validation import check_matrix, make_generator

# binary layers of at most this many units can tabulate T over all their states (state_table)
TABLE_MAX_UNITS = 12

NONLINEARITIES = {"sigmoid": torch.sigmoid, "tanh": torch.tanh}


def binary_states(codes: torch.Tensor, units: int, dtype) -> torch.Tensor:
    """The binary rows whose unit k is bit k of each code, (len(codes), units)."""
    bits = torch.arange(units, device=codes.device)
    return ((codes.unsqueeze(1) >> bits) & 1).to(dtype)


FAMILY_STATS = {"bernoulli": (), "gaussian": (), "laplace": ("abs",)}


def _gain_range(gain) -> tuple[float, float]:
    low, high = (gain, gain) if isinstance(gain, (int, float)) else tuple(gain)
    if not 0 < low <= high:
        raise ValueError(f"gain: expected a positive number or (low, high), got {gain!r}")
    return float(low), float(high)


class LayerEncoding(nn.Module):
    """T(z) for one latent layer: exact features, K random features, and a constant (last).

    Args:
        dim: units of the encoded layer.
        n_features: K, the number of random features.
        family: the layer's family ('bernoulli', 'gaussian', 'laplace'): which exact features.
        nonlinearity: 'sigmoid' or 'tanh' for the random features.
        gain: slope of each random feature in standard deviations of its projection: a number,
            or (low, high) for gains log-uniform in that range.
        max_products: include the pairwise products when there are at most this many (0: never).
        generator: seed or torch.Generator for directions, gains and thresholds (then frozen).
    """

    def __init__(
        self,
        dim: int,
        n_features: int = 100,
        family: str = "bernoulli",
        nonlinearity: str = "sigmoid",
        gain=(0.5, 8.0),
        max_products: int = 300,
        generator=None,
    ):
        super().__init__()
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity: expected one of {sorted(NONLINEARITIES)}, got {nonlinearity!r}"
            )
        if family not in FAMILY_STATS:
            raise ValueError(f"family: expected one of {sorted(FAMILY_STATS)}, got {family!r}")
        if n_features < 0:
            raise ValueError(f"n_features: expected a non-negative integer, got {n_features}")
        low, high = _gain_range(gain)
        generator = make_generator(generator)
        self.dim, self.n_features, self.family = dim, n_features, family
        self.nonlinearity, self.gain = nonlinearity, (low, high)
        self.continuous = family != "bernoulli"
        # pairwise products: i < j for binary units (z_i^2 = z_i), i <= j for continuous ones
        pairs = torch.triu_indices(dim, dim, offset=0 if self.continuous else 1)
        self.use_products = 0 < pairs.shape[1] <= max_products
        self.register_buffer("pairs", pairs if self.use_products else pairs[:, :0])
        direction = torch.randn(n_features, dim, generator=generator)
        self.register_buffer("direction", direction / direction.norm(dim=1, keepdim=True))
        log_gain = math.log(low) + (math.log(high) - math.log(low)) * torch.rand(
            n_features, generator=generator
        )
        self.register_buffer("slope", log_gain.exp())
        self.register_buffer(
            "threshold_index", torch.randint(2**31 - 1, (n_features,), generator=generator)
        )
        # calibration state: unit centring/scaling, projection centring/scaling, thresholds
        self.register_buffer("unit_centre", torch.zeros(dim))
        self.register_buffer("unit_scale", torch.ones(dim))
        self.register_buffer("projection_centre", torch.zeros(n_features))
        self.register_buffer("projection_scale", torch.ones(n_features))
        self.register_buffer("threshold", torch.zeros(n_features))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        # whitening (identity until `whiten` is called): T = [(features - centre) @ whitener, 1]
        self.register_buffer("centre", torch.zeros(0))
        self.register_buffer("whitener", torch.zeros(0, 0))
        # bumped whenever T changes (calibrate, whiten, load_state_dict): keys state_table's cache
        self._revision = 0
        self._table, self._table_key = None, None

    # --- sizes -------------------------------------------------------------------------------
    @property
    def n_exact(self) -> int:
        """Number of exact features: z, the family's extra statistics, the products."""
        return self.dim * (1 + len(FAMILY_STATS[self.family])) + self.pairs.shape[1]

    @property
    def size(self) -> int:
        """Length of T(z), the constant included."""
        out = self.whitener.shape[1] if self.whitened else self.n_exact + self.n_features
        return out + 1

    @property
    def whitened(self) -> bool:
        return self.whitener.numel() > 0

    def moment_layout(self) -> tuple[int, int] | None:
        """(dim, number of extra statistics) when T starts with [u, extra, all products u_i u_j
        (i <= j)] of a continuous layer, unwhitened (a moment head can then predict it);
        else None."""
        if not (self.continuous and self.use_products) or self.whitened:
            return None
        return self.dim, self.dim * len(FAMILY_STATS[self.family])

    def map_ridge(self, ridge: float, exact_ridge: float | None = None) -> torch.Tensor:
        """Per-column penalties (lambda / N) of a gradient map on T: ``exact_ridge`` on the exact
        features and the constant, ``ridge`` on the random ones (all ``ridge`` when whitened,
        where the blocks mix, or when ``exact_ridge`` is None)."""
        device = self.unit_scale.device
        penalty = torch.full((self.size,), float(ridge), dtype=torch.float64, device=device)
        if exact_ridge is not None and not self.whitened:
            penalty[: self.n_exact] = float(exact_ridge)
            penalty[-1] = float(exact_ridge)
        return penalty

    def expected_exact_features(self, r: torch.Tensor) -> torch.Tensor:
        """The exact block E[exact_features(z)] read off expected encodings r = E[T(z)], (N, E).
        Unwhitened, it is r's first E columns; whitened, T = (features - centre) W, so the
        features are recovered with W's pseudo-inverse (exact on the kept directions; the
        dropped ones have no variance on the calibration samples)."""
        if not self.whitened:
            return r[:, : self.n_exact]
        whitener = self.whitener.to(r.dtype)
        features = r[:, :-1] @ torch.linalg.pinv(whitener) + self.centre.to(r.dtype)
        return features[:, : self.n_exact]

    # --- calibration -------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, samples: torch.Tensor) -> LayerEncoding:
        """Centre and scale the features on ``samples`` of z (N, dim). The first call also fixes
        each random feature's standardised threshold (the projection of a random sample)."""
        check_matrix(samples, "samples", self.dim)
        samples = samples.to(self.direction.dtype)
        if self.continuous:
            self.unit_centre.copy_(samples.mean(0))
            self.unit_scale.copy_(samples.std(0).clamp_min(1e-6))
        pre = samples @ self.direction.T
        self.projection_centre.copy_(pre.mean(0))
        self.projection_scale.copy_(pre.std(0).clamp_min(1e-6))
        if not bool(self.calibrated):
            rows = self.threshold_index % samples.shape[0]
            standardised = (pre - self.projection_centre) / self.projection_scale
            columns = torch.arange(self.n_features, device=samples.device)
            self.threshold.copy_(standardised[rows, columns])
            self.calibrated.fill_(True)
        self._revision += 1
        return self

    @torch.no_grad()
    def drift(self, samples: torch.Tensor) -> float:
        """How far ``samples`` have moved from the calibration: the median over random features
        of ``|log(sd ratio)| + |mean shift| / sd`` of their projections (and over continuous units
        the same for z). 0 when nothing moved; recalibrate when it is large."""
        samples = samples.to(self.direction.dtype)
        parts = []
        if self.n_features and samples.shape[1] < self.n_features:
            # the projections' mean and sd from the samples' own (d x d) moments: the same
            # numbers to rounding, for N d^2 products in place of N d K
            mean = samples.mean(0)
            centred = samples - mean
            cov = centred.T @ centred / max(1, samples.shape[0] - 1)
            variance = ((self.direction @ cov) * self.direction).sum(1).clamp_min(0.0)
            parts.append(
                _moment_shift(
                    self.direction @ mean,
                    variance.sqrt(),
                    self.projection_centre,
                    self.projection_scale,
                )
            )
        elif self.n_features:
            pre = samples @ self.direction.T
            parts.append(_shift(pre, self.projection_centre, self.projection_scale))
        if self.continuous:
            parts.append(_shift(samples, self.unit_centre, self.unit_scale))
        return float(torch.cat(parts).median()) if parts else 0.0

    # --- features ----------------------------------------------------------------------------
    def exact_features(self, z: torch.Tensor) -> torch.Tensor:
        """z (standardised if continuous), the family's statistics, pairwise products, (N, E)."""
        return torch.cat(self._exact_parts(z), dim=1)

    def _exact_parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        if self.continuous:
            u = (z - self.unit_centre.to(z.dtype)) / self.unit_scale.to(z.dtype)
        else:
            u = z
        parts = [u]
        if "abs" in FAMILY_STATS[self.family]:
            parts.append(z.abs() / self.unit_scale.to(z.dtype))
        if self.use_products:
            parts.append(u[:, self.pairs[0]] * u[:, self.pairs[1]])
        return parts

    def random_features(self, z: torch.Tensor) -> torch.Tensor:
        """phi(gain_k ((d_k^T z - m_k) / s_k - t_k)), (N, K)."""
        dtype = z.dtype
        # gain_k ((d_k^T z - m_k) / s_k - t_k) = z^T a_k + c_k, folded into one product (4x faster
        # than the step-by-step form on (2000 x 200), equal to rounding)
        gain = (self.slope / self.projection_scale).to(dtype)
        weight = self.direction.to(dtype).T * gain
        offset = -(
            self.projection_centre.to(dtype) * gain + (self.slope * self.threshold).to(dtype)
        )
        return NONLINEARITIES[self.nonlinearity](torch.addmm(offset, z, weight))

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """[exact features, random features] without whitening or constant, (N, E + K)."""
        return torch.cat([self.exact_features(z), self.random_features(z)], dim=1)

    @torch.no_grad()
    def whiten(self, samples: torch.Tensor, tolerance: float = 1e-6) -> LayerEncoding:
        """Whiten the features on ``samples`` of z, keeping directions whose variance exceeds
        ``tolerance`` times the largest (binary layers have many null directions)."""
        feats = self.features(samples.to(self.direction.dtype)).double()
        centre = feats.mean(0)
        cov = torch.cov((feats - centre).T)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        keep = eigenvalues > tolerance * eigenvalues.max()
        whitener = eigenvectors[:, keep] / eigenvalues[keep].sqrt()
        self.centre = centre.to(self.direction.dtype)
        self.whitener = whitener.to(self.direction.dtype)
        self._revision += 1
        return self

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """T(z), (N, size): features (whitened if set up) and a trailing constant 1."""
        ones = z.new_ones(z.shape[0], 1)
        if not self.whitened:  # one concatenation, not two
            return torch.cat([*self._exact_parts(z), self.random_features(z), ones], dim=1)
        feats = (self.features(z) - self.centre.to(z.dtype)) @ self.whitener.to(z.dtype)
        return torch.cat([feats, ones], dim=1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, {self.family}, exact={self.n_exact}, random={self.n_features} "
            f"{self.nonlinearity} gains {self.gain[0]:g}-{self.gain[1]:g}"
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # whitening buffers change shape when set: take the saved shapes
        self.centre = torch.empty_like(state_dict["centre"])
        self.whitener = torch.empty_like(state_dict["whitener"])
        self._revision += 1
        return super().load_state_dict(state_dict, strict=strict)

    @property
    def tabulated(self) -> bool:
        """Whether T has a table over the layer's states (:meth:`state_table`): a binary layer
        of at most ``TABLE_MAX_UNITS`` units."""
        return not self.continuous and self.dim <= TABLE_MAX_UNITS

    @torch.no_grad()
    def state_table(self) -> torch.Tensor:
        """T(z) of every state of a binary layer of at most ``TABLE_MAX_UNITS`` units, (2^dim,
        size): row c is the state whose unit k is bit k of c (as ``ddc.proposal.state_codes``).
        Computed once and reused until the encoding changes (calibrate, whiten,
        load_state_dict, or a new dtype or device). A sum over many particles' T then costs a
        sum over the layer's own states: the particles' weights are first added up by state."""
        if not self.tabulated:
            raise ValueError(
                f"state_table: needs a binary layer of at most {TABLE_MAX_UNITS} units, "
                f"got a {self.family} layer of {self.dim}"
            )
        key = (self._revision, self.direction.dtype, self.direction.device)
        if self._table_key != key:
            codes = torch.arange(2**self.dim, device=self.direction.device)
            states = binary_states(codes, self.dim, self.direction.dtype)
            self._table, self._table_key = self(states), key
        return self._table


def _shift(values, centre, scale) -> torch.Tensor:
    """Per column |log(sd / scale)| + |mean - centre| / scale."""
    # the sd in two passes (mean, then mean square of the centred values): the same number as
    # Tensor.std to rounding, 7x faster on the CPU, where std took ~10% of a DDC-HM step
    mean = values.mean(0)
    centred = values - mean
    sd = ((centred * centred).sum(0) / max(1, values.shape[0] - 1)).sqrt()
    return _moment_shift(mean, sd, centre, scale)


def _moment_shift(mean, sd, centre, scale) -> torch.Tensor:
    """|log(sd / scale)| + |mean - centre| / scale, the sd floored at 1e-6."""
    return (sd.clamp_min(1e-6) / scale).log().abs() + (mean - centre).abs() / scale


def make_encodings(
    model,
    n_features,
    nonlinearity="sigmoid",
    gain=(0.5, 8.0),
    n_calibration=5000,
    whiten=False,
    max_products=300,
    seed: int = 0,
) -> nn.ModuleList:
    """One calibrated encoding per latent layer: index l-1 encodes z_l.

    ``n_features`` is an int or a sequence (z_1 first). Calibration uses prior samples of the
    model as it is now, on the model's device (the random features are drawn on the CPU, from
    ``seed``, so they do not depend on the device)."""
    generator = make_generator(seed)
    device = next(model.parameters()).device
    L = model.n_latent_layers
    sizes = [n_features] * L if isinstance(n_features, int) else list(n_features)
    if len(sizes) != L:
        raise ValueError(f"n_features: expected {L} sizes (one per latent layer), got {sizes}")
    samples = model.sample(n_calibration, generator=make_generator(seed, device))
    encodings = nn.ModuleList()
    for l in range(1, L + 1):
        layer = model.layers[l]
        encoding = LayerEncoding(
            layer.dim, sizes[l - 1], layer.family, nonlinearity, gain, max_products, generator
        )
        encoding = encoding.to(device=device, dtype=samples[l].dtype).calibrate(samples[l])
        if whiten:
            encoding.whiten(samples[l])
        encodings.append(encoding)
    return encodings
