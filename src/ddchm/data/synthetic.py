"""Named, seeded ground-truth generative models with fixed parameters.

A truth is a :class:`HierarchicalModel` whose parameters are drawn once from a fixed seed, so
``make_truth("sbn-hard")`` is the same model on every machine; ``truth.splits(...)`` draws
train/valid/test sets from it with their own seed. Learned models are judged against the truth
(exact NLL gap, posterior accuracy) where it is enumerable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddchm.models import Bernoulli, Gaussian, HierarchicalModel, Laplace
from ddchm.validation import check_positive_int, make_generator


@dataclass
class SyntheticTruth:
    name: str
    description: str
    model: HierarchicalModel
    enumerable: bool  # exact log p(x) and gradient: enumeration, quadrature or closed form

    def splits(
        self, n_train: int = 10_000, n_valid: int = 1_000, n_test: int = 1_000, seed: int = 1
    ) -> dict[str, torch.Tensor]:
        """Observed data only: {'train', 'valid', 'test'}, each (n, data_dim), one seeded draw."""
        sizes = {"train": n_train, "valid": n_valid, "test": n_test}
        for key, n in sizes.items():
            check_positive_int(n, f"n_{key}", minimum=0)
        generator = make_generator(seed)
        x = self.model.sample(sum(sizes.values()), generator=generator)[0]
        out, start = {}, 0
        for key, n in sizes.items():
            out[key] = x[start : start + n]
            start += n
        return out


def _normal(generator, *shape, sd=1.0, mean=0.0):
    return mean + sd * torch.randn(*shape, generator=generator, dtype=torch.float64)


def _sbn(sizes_top_down, weight_sd, bias_shift, seed) -> HierarchicalModel:
    """Sigmoid belief net with weights N(0, sd^2), biases N(0, 1), lower biases shifted."""
    generator = torch.Generator().manual_seed(seed)
    layers = [Bernoulli(sizes_top_down[0])]
    for parent, dim in zip(sizes_top_down, sizes_top_down[1:]):
        layers.append(Bernoulli(dim, parent))
    model = HierarchicalModel(layers).double()
    with torch.no_grad():
        for l, layer in enumerate(model.layers):
            layer.bias.copy_(_normal(generator, layer.dim))
            if not layer.is_prior:
                layer.weight.copy_(_normal(generator, layer.dim, layer.parent_dim, sd=weight_sd))
                layer.bias.add_(bias_shift)
    return model


def sbn_easy(seed: int = 0) -> SyntheticTruth:
    """Spec section 9 `easy`: 4-10-30, weights N(0, 2^2); observations nearly pin the posterior."""
    return SyntheticTruth(
        "sbn-easy",
        "3-layer sigmoid belief net 4-10-30, weights N(0,2^2), biases N(0,1)",
        _sbn([4, 10, 30], weight_sd=2.0, bias_shift=0.0, seed=seed),
        enumerable=True,
    )


def sbn_hard(seed: int = 0) -> SyntheticTruth:
    """Spec section 9 `hard`: 4-10-8, weights N(0, 3^2), lower biases shifted by -1.5.

    Only 8 observed units for 10 latent causes: posteriors are uncertain and correlated
    (explaining away), where a factorised recognition model is badly biased."""
    return SyntheticTruth(
        "sbn-hard",
        "3-layer sigmoid belief net 4-10-8, weights N(0,3^2), biases N(0,1) - 1.5 below the top",
        _sbn([4, 10, 8], weight_sd=3.0, bias_shift=-1.5, seed=seed),
        enumerable=True,
    )


def bars(side: int = 4, bar_prob: float = 0.25, seed: int = 0) -> SyntheticTruth:
    """The Helmholtz machine's bars problem (Dayan et al. 1995), as a 3-layer SBN.

    Top: one unit picks the orientation (horizontal when on). Middle: 2*side bars, each on with
    probability ``bar_prob`` if it has the chosen orientation, almost never otherwise. Bottom:
    side x side pixels, on (p ~ 0.993) when any bar covering them is on, else p ~ 0.007.
    """
    del seed  # the bars truth has no random parameters; kept for a uniform signature
    n_bars, n_pix = 2 * side, side * side
    model = HierarchicalModel(
        [Bernoulli(1), Bernoulli(n_bars, 1), Bernoulli(n_pix, n_bars)]
    ).double()
    logit = math.log(bar_prob / (1 - bar_prob))
    with torch.no_grad():
        model.layers[2].bias.fill_(0.0)
        horizontal = torch.tensor([1.0] * side + [0.0] * side, dtype=torch.float64)
        # bars with the chosen orientation get logit(bar_prob); the others logit ~ -9
        model.layers[1].weight.copy_((2 * horizontal - 1).unsqueeze(1) * (logit + 9.0))
        model.layers[1].bias.copy_(torch.where(horizontal > 0, torch.tensor(-9.0), logit * 1.0))
        mask = torch.zeros(n_pix, n_bars, dtype=torch.float64)
        for b in range(side):
            for c in range(side):
                mask[b * side + c, b] = 1.0  # horizontal bar b covers row b
                mask[c * side + b, side + b] = 1.0  # vertical bar b covers column b
        model.layers[0].weight.copy_(10.0 * mask)
        model.layers[0].bias.fill_(-5.0)
    return SyntheticTruth(
        "bars",
        f"bars problem, {side}x{side} pixels, 2x{side} bars, one orientation unit",
        model,
        enumerable=True,
    )


def sparse_coding(seed: int = 0) -> SyntheticTruth:
    """Hierarchical sparse coding: Gaussian top (4) sets the Laplace scales of 16 sparse causes,
    which generate 16 observed values linearly with Gaussian noise (sd 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    model = HierarchicalModel([Gaussian(4), Laplace(16, 4), Gaussian(16, 16)]).double()
    with torch.no_grad():
        top, sparse, obs = model.layers[2], model.layers[1], model.layers[0]
        top.bias.zero_()
        top.log_std.zero_()
        sparse.scale_weight.copy_(_normal(generator, 16, 4, sd=1.0))
        sparse.scale_bias.fill_(-1.0)
        dictionary = _normal(generator, 16, 16)
        obs.weight.copy_(dictionary / dictionary.norm(dim=0, keepdim=True))
        obs.bias.zero_()
        obs.log_std.fill_(math.log(0.1))
    return SyntheticTruth(
        "sparse-coding",
        "Gaussian(4) -> Laplace(16) with scale softplus(Bz+c) -> Gaussian(16), noise sd 0.1",
        model,
        enumerable=False,
    )


def mixed(seed: int = 0) -> SyntheticTruth:
    """A binary top layer (4 units) over continuous layers: Gaussian(8) -> Gaussian(16)."""
    generator = torch.Generator().manual_seed(seed)
    model = HierarchicalModel([Bernoulli(4), Gaussian(8, 4), Gaussian(16, 8)]).double()
    with torch.no_grad():
        top, middle, obs = model.layers[2], model.layers[1], model.layers[0]
        top.bias.copy_(_normal(generator, 4))
        middle.weight.copy_(_normal(generator, 8, 4, sd=2.0))
        middle.bias.copy_(_normal(generator, 8))
        middle.log_std.fill_(math.log(0.5))
        obs.weight.copy_(_normal(generator, 16, 8, sd=1.0 / math.sqrt(8)))
        obs.bias.zero_()
        obs.log_std.fill_(math.log(0.2))
    return SyntheticTruth(
        "mixed",
        "Bernoulli(4) -> Gaussian(8) -> Gaussian(16): binary causes over continuous layers",
        model,
        enumerable=False,
    )


def linear_gaussian(seed: int = 0) -> SyntheticTruth:
    """Linear-Gaussian chain 2-3-4: every conditional Gaussian with mean W z + b, so log p(x), its
    gradient and the posterior are closed forms (:class:`LinearGaussianInference`)."""
    generator = torch.Generator().manual_seed(seed)
    model = HierarchicalModel([Gaussian(2), Gaussian(3, 2), Gaussian(4, 3)]).double()
    with torch.no_grad():
        top, middle, obs = model.layers[2], model.layers[1], model.layers[0]
        top.bias.copy_(_normal(generator, 2))
        top.log_std.zero_()
        middle.weight.copy_(_normal(generator, 3, 2))
        middle.bias.copy_(_normal(generator, 3))
        middle.log_std.fill_(math.log(0.5))
        obs.weight.copy_(_normal(generator, 4, 3))
        obs.bias.copy_(_normal(generator, 4))
        obs.log_std.fill_(math.log(0.3))
    return SyntheticTruth(
        "linear-gaussian",
        "Gaussian(2) -> Gaussian(3) -> Gaussian(4), weights N(0,1), noise sd 1 / 0.5 / 0.3",
        model,
        enumerable=True,
    )


def sbn_gauss(seed: int = 0) -> SyntheticTruth:
    """The `sbn-hard` latent layers (4-10, weights N(0, 3^2)) over 16 real-valued observations:
    x = W z_1 + b + noise, weights N(0, 1.5^2), noise sd 1. Enumerable (binary latents)."""
    generator = torch.Generator().manual_seed(seed)
    model = HierarchicalModel([Bernoulli(4), Bernoulli(10, 4), Gaussian(16, 10)]).double()
    with torch.no_grad():
        top, middle, obs = model.layers[2], model.layers[1], model.layers[0]
        top.bias.copy_(_normal(generator, 4))
        middle.weight.copy_(_normal(generator, 10, 4, sd=3.0))
        middle.bias.copy_(_normal(generator, 10) - 1.5)
        obs.weight.copy_(_normal(generator, 16, 10, sd=1.5))
        obs.bias.copy_(_normal(generator, 16))
        obs.log_std.zero_()
    return SyntheticTruth(
        "sbn-gauss",
        "Bernoulli(4) -> Bernoulli(10) -> Gaussian(16): binary causes, real-valued observations",
        model,
        enumerable=True,
    )


def laplace_chain(seed: int = 0) -> SyntheticTruth:
    """Gaussian(1) -> Laplace(1) with scale softplus(b z_2 + c) -> Gaussian(2), noise sd 0.3: a
    one-unit hierarchical sparse-coding chain whose posterior is computed by quadrature."""
    generator = torch.Generator().manual_seed(seed)
    model = HierarchicalModel([Gaussian(1), Laplace(1, 1), Gaussian(2, 1)]).double()
    with torch.no_grad():
        top, sparse, obs = model.layers[2], model.layers[1], model.layers[0]
        top.bias.zero_()
        top.log_std.zero_()
        sparse.scale_weight.fill_(1.5)
        sparse.scale_bias.fill_(0.0)
        obs.weight.copy_(_normal(generator, 2, 1))
        obs.bias.zero_()
        obs.log_std.fill_(math.log(0.3))
    return SyntheticTruth(
        "laplace-chain",
        "Gaussian(1) -> Laplace(1), scale softplus(1.5 z) -> Gaussian(2), noise sd 0.3",
        model,
        enumerable=True,
    )


TRUTHS: dict[str, Callable[..., SyntheticTruth]] = {
    "sbn-easy": sbn_easy,
    "sbn-hard": sbn_hard,
    "bars": bars,
    "sparse-coding": sparse_coding,
    "mixed": mixed,
    "linear-gaussian": linear_gaussian,
    "sbn-gauss": sbn_gauss,
    "laplace-chain": laplace_chain,
}


def make_truth(name: str, seed: int = 0) -> SyntheticTruth:
    """The named ground-truth model (see :data:`TRUTHS`), parameters fixed by ``seed``."""
    try:
        factory = TRUTHS[name]
    except KeyError:
        raise ValueError(
            f"model: unknown synthetic truth {name!r}; expected one of {sorted(TRUTHS)}"
        ) from None
    return factory(seed=seed)
