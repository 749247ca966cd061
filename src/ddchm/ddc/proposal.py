"""A proposal q(z_1..z_L | x) read off the DDC itself, for importance-weighted wake targets.

The exact block of an expected encoding r_l(x) ~= E[T_l(z_l) | x] holds the posterior's first
moments (and, for continuous layers with products, its second moments), so it defines a
mean-field proposal with no extra parameters:

    Bernoulli layer:   q(z_li = 1 | x) = E[z_li | x], clipped to [floor, 1 - floor]
    continuous layer:  q(z_li | x) = N(E[z_li | x], inflation^2 Var[z_li | x])

The variance comes from E[u_i^2] - E[u_i]^2 (u the standardised unit) where the encoding has
products, else the calibration's (prior) variance; it is floored so that a collapsed prediction
still proposes a spread. Sampled particles land where the recogniser believes the posterior is,
which is where prior dreams of a model far from the data rarely go (issue 10: on laplace-chain
the data reach |x| = 17 while 99% of dreams stay within 3).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ddchm.ddc.encodings import binary_states

_LOG_2PI = math.log(2 * math.pi)


class MeanFieldProposal:
    """q(z_1..z_L | x_n) for a batch of points, from their expected encodings.

    Args:
        encodings: the machine's LayerEncodings, one per latent layer.
        r: expected encodings [r_1(x), ..., r_L(x)], each (N, size).
        inflation: the continuous layers' proposal sd as a multiple of the predicted one.
        floor: smallest Bernoulli probability; the smallest continuous variance, as a fraction
            of the calibration's.
    """

    def __init__(self, encodings, r, inflation: float = 1.5, floor: float = 0.02):
        self.layers = []
        for encoding, rl in zip(encodings, r):
            rl = encoding.expected_exact_features(rl)
            dim = encoding.dim
            if not encoding.continuous:
                self.layers.append(("bernoulli", rl[:, :dim].clamp(floor, 1 - floor), None))
                continue
            centre = encoding.unit_centre.to(rl.dtype)
            scale = encoding.unit_scale.to(rl.dtype)
            mean_u = rl[:, :dim]
            if not encoding.use_products:
                var_u = torch.ones_like(mean_u)
            else:
                # position of u_i u_i among the products (i <= j, row-major upper triangle),
                # which follow u and the family's extra statistics
                pairs = encoding.pairs
                diagonal = (pairs[0] == pairs[1]).nonzero().squeeze(1)
                second = rl[:, encoding.n_exact - pairs.shape[1] + diagonal]
                var_u = (second - mean_u**2).clamp_min(floor)
            sd = inflation * scale * var_u.sqrt()
            self.layers.append(("gaussian", centre + scale * mean_u, sd))

    @property
    def n(self) -> int:
        return self.layers[0][1].shape[0]

    def sample(self, m: int, generator: torch.Generator) -> list[torch.Tensor]:
        """m particles per point: [z_1, ..., z_L], each (N * m, dim), point-major."""
        out = []
        for family, loc, sd in self.layers:
            loc = loc.repeat_interleave(m, 0)
            noise = torch.rand if family == "bernoulli" else torch.randn
            draw = noise(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
            if family == "bernoulli":
                out.append((draw < loc).to(loc.dtype))
            else:
                out.append(loc + sd.repeat_interleave(m, 0) * draw)
        return out

    def log_prob(self, latents: list[torch.Tensor], m: int) -> torch.Tensor:
        """log q(z | x_n) of each point's own m particles (from :meth:`sample`), (N, m)."""
        total = 0.0
        for (family, loc, sd), z in zip(self.layers, latents):
            z = z.reshape(self.n, m, -1)
            total = total + _log_density(family, loc.unsqueeze(1), sd, z, pair=False)
        return total

    def pair_log_prob(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """log q(z^s | x_n) for every point n and every shared particle s, (N, S)."""
        total = 0.0
        for (family, loc, sd), z in zip(self.layers, latents):
            total = total + _log_density(family, loc, sd, z, pair=True)
        return total


def _log_density(family, loc, sd, z, pair: bool) -> torch.Tensor:
    """Sum over units of the log density. pair=False: loc (N, 1, D), z (N, m, D) -> (N, m);
    pair=True: loc (N, D), z (S, D) -> (N, S) as matrix products."""
    z = z.to(loc.dtype)
    if family == "bernoulli":
        logit, log_off = torch.logit(loc), torch.log1p(-loc)
        if pair:
            return log_off.sum(1, keepdim=True) + logit @ z.T
        return (z * logit + log_off).sum(-1)
    if pair:  # -0.5 sum_d (z_d - loc_d)^2 / sd_d^2 expanded into products
        precision = sd.reciprocal() ** 2
        quadratic = (z**2) @ precision.T - 2 * z @ (loc * precision).T
        constant = (loc**2 * precision).sum(1, keepdim=True)
        log_norm = -(sd.log().sum(1, keepdim=True)) - 0.5 * loc.shape[1] * _LOG_2PI
        return log_norm - 0.5 * (quadratic.T + constant)
    sd = sd.unsqueeze(1)
    return (-0.5 * ((z - loc) / sd) ** 2 - sd.log() - 0.5 * _LOG_2PI).sum(-1)


class RecognitionProposal:
    """The DDC recogniser as an importance-sampling proposal for evaluation: for each x, the
    :class:`MeanFieldProposal` of its expected encodings (``evaluate.importance_log_likelihood``
    protocol: latents (K, N, D_l), log q (K, N)). Any proposal with full support gives an
    unbiased estimate of p(x); this one costs no extra fitting and sits where the recogniser
    puts each point's posterior. A mean-field Gaussian is lighter-tailed than many posteriors,
    so compare its ESS with a fitted proposal's (``evaluate.fit_proposal``)."""

    def __init__(self, machine, inflation: float = 1.5, floor: float = 0.02):
        self.machine, self.inflation, self.floor = machine, inflation, floor

    @torch.no_grad()
    def sample_with_log_prob(self, x: torch.Tensor, n_particles: int, generator):
        r = self.machine.expected_encodings(x.to(self.machine.dtype))
        proposal = MeanFieldProposal(self.machine.encodings, r, self.inflation, self.floor)
        latents = proposal.sample(n_particles, generator)
        log_q = proposal.log_prob(latents, n_particles)  # (N, K)
        n = x.shape[0]
        return [z.reshape(n, n_particles, -1).transpose(0, 1) for z in latents], log_q.T


class PriorParticles(NamedTuple):
    """The prior's particles of the wake targets (``DDCHelmholtzMachine.prior_particles``).

    Plain draws: one row per draw; latents [z_1, ..., z_L], features [T_1(z_1), ..., T_L(z_L)],
    log_mass and square_share None.

    Collapsed draws (:func:`group_by_bottom`): one row per distinct bottom state z_1 among the
    distinct states drawn. latents: [z_1]; features: T_1(z_1) and, for l >= 2, the mean of
    T_l(z_l) over the row's states weighted by their mass; log_mass: log of the row's total
    mass (its states' p / pi); square_share: sum over the row's states of (mass share)^2 / (the
    draws a state stands for), for Kish's ESS.

    draws: S, the prior draws behind them.
    """

    latents: list
    features: list
    log_mass: torch.Tensor | None
    draws: int
    square_share: torch.Tensor | None = None


class DrawnStates(NamedTuple):
    """Distinct binary states drawn from the prior (``DDCHelmholtzMachine._distinct_states``):
    their :func:`state_codes`, the decoded latents [z_1, ..., z_L], log p and log pi (the chance
    that the S draws include each), and S. A state's weight in a sum over states is p / pi."""

    codes: torch.Tensor
    latents: list
    log_p: torch.Tensor
    log_inclusion: torch.Tensor
    draws: int

    @property
    def log_mass(self) -> torch.Tensor:
        return (self.log_p - self.log_inclusion).to(self.latents[0].dtype)


class BottomGroups(NamedTuple):
    """Distinct states grouped by their bottom layer (:func:`bottom_groups`): each layer's own
    codes, the distinct bottom codes, each state's group and the decoded bottom states."""

    per_layer: list
    bottom: torch.Tensor
    group: torch.Tensor
    z1: torch.Tensor


def bottom_groups(codes: torch.Tensor, sizes: list[int], dtype) -> BottomGroups:
    per_layer = layer_codes(codes, sizes)
    bottom, group = torch.unique(per_layer[0], return_inverse=True)
    return BottomGroups(per_layer, bottom, group, decode_states(bottom, sizes[:1], dtype)[0])


def group_by_bottom(
    encodings, codes, sizes, log_mass, draws: int, dtype, groups: BottomGroups | None = None
) -> PriorParticles:
    """Distinct binary states (their :func:`state_codes`; layer sizes ``sizes``; log_mass the
    log of each state's weight p / pi) as :class:`PriorParticles` grouped by the bottom layer
    (``groups``: the states' :func:`bottom_groups` if at hand).

    A data point's weight on a state is p(x | z_1) times the state's mass: it depends on the
    state through z_1 only. So the N x U sums of the wake targets regroup exactly into N x U_1
    sums over the distinct z_1 (U_1 <= 2^d_1), each with its group's total mass and the
    mass-weighted mean of the upper layers' encodings, computed once for all data points."""
    per_layer, bottom, group, z1 = groups or bottom_groups(codes, sizes, dtype)
    n_groups = bottom.shape[0]
    log_mass = log_mass.double()
    top = log_mass.max()
    mass = (log_mass - top).exp()
    group_mass = mass.new_zeros(n_groups).index_add_(0, group, mass)
    share = mass / group_mass[group].clamp_min(torch.finfo(torch.float64).tiny)
    stands_for = (log_mass.exp() * draws).clamp(min=1.0)  # a state stands for >= 1 draw
    square_share = share.new_zeros(n_groups).index_add_(0, group, share**2 / stands_for)
    features = [encode_states(encodings[0], bottom, z1)]
    for l in range(1, len(sizes)):
        encoding, states, width = encodings[l], per_layer[l], 2 ** sizes[l]
        if encoding.tabulated and n_groups * width <= codes.shape[0] * encoding.size:
            # the mass share of each (group, state of layer l) pair, times the layer's table
            pairs = share.new_zeros(n_groups * width).index_add_(0, group * width + states, share)
            table = encoding.state_table()
            features.append(pairs.view(n_groups, width).to(table.dtype) @ table)
        else:
            t = encode_states(encoding, states, None, sizes[l], dtype)
            weighted = share.to(t.dtype).unsqueeze(1) * t
            features.append(t.new_zeros(n_groups, t.shape[1]).index_add_(0, group, weighted))
    log_group_mass = (group_mass.log() + top).to(dtype)
    return PriorParticles([z1], features, log_group_mass, draws, square_share.to(dtype))


def encode_states(encoding, states, z=None, dim=None, dtype=None) -> torch.Tensor:
    """T(z) of a binary layer's states given by their codes (:func:`state_codes` of the layer
    alone): from the layer's table where it has one, else encoded (``z``: the decoded states if
    at hand, else decoded from the codes as ``dim`` units of ``dtype``)."""
    if encoding.tabulated:
        return encoding.state_table()[states]
    if z is None:
        z = decode_states(states, [dim], dtype)[0]
    return encoding(z)


def state_codes(latents: list[torch.Tensor]) -> torch.Tensor:
    """One int64 code per row of binary latents [z_1, ..., z_L] (at most 62 units in all):
    unit k of the concatenated row is bit k."""
    z = torch.cat(latents, 1)
    if z.shape[1] <= 52:  # a float64 product is exact below 2^53, and 3x faster than int64
        powers = 2.0 ** torch.arange(z.shape[1], dtype=torch.float64, device=z.device)
        return (z.to(torch.float64) @ powers).to(torch.int64)
    powers = 2 ** torch.arange(z.shape[1], dtype=torch.int64, device=z.device)
    return (z.to(torch.int64) * powers).sum(1)


def layer_codes(codes: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Each layer's own state code (bits of that layer only) from :func:`state_codes`."""
    out, shift = [], 0
    for size in sizes:
        out.append((codes >> shift) & ((1 << size) - 1))
        shift += size
    return out


def distinct_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """torch.unique(codes) (sorted) for codes below 2^bits; by counting where that is cheap."""
    if bits <= 20:  # a count over the 2^bits states: 10x faster than unique's sort
        return torch.bincount(codes, minlength=2**bits).nonzero().squeeze(1)
    return torch.unique(codes)


def decode_states(codes: torch.Tensor, sizes: list[int], dtype) -> list[torch.Tensor]:
    """The binary latents [z_1, ..., z_L] (layer sizes ``sizes``) of :func:`state_codes`."""
    return list(binary_states(codes, sum(sizes), dtype).split(sizes, 1))


def log_inclusion_probability(log_p: torch.Tensor, draws: int) -> torch.Tensor:
    """log pi = log(1 - (1 - p)^S): the chance that S independent draws include a state of
    probability p, to float64 rounding; for S p < e^-700, where p would underflow, it is
    log S + log p."""
    log_p = log_p.double()
    tiny = log_p + math.log(draws) < -700.0
    exact = torch.log(-torch.expm1(draws * torch.log1p(-log_p.clamp(max=0.0).exp())))
    return torch.where(tiny, log_p + math.log(draws), exact)


def expected_distinct(log_p: torch.Tensor, draws: int, more_draws: int) -> float:
    """The expected number of distinct states among ``more_draws`` prior draws, estimated from
    the distinct states (log-probabilities ``log_p``) seen in ``draws`` draws: the Horvitz-
    Thompson sum over them of pi(more_draws) / pi(draws). Where no state repeats it is the
    linear extrapolation U more_draws / draws, where the mass sits on few states it saturates."""
    ratio = log_inclusion_probability(log_p, more_draws) - log_inclusion_probability(log_p, draws)
    return float(ratio.exp().sum())
