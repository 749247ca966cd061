"""Accuracy of learning signals: an algorithm's theta-update against the exact gradient, or,
where the latents cannot be enumerated, against a many-particle importance estimate of it
(:func:`importance_gradient`)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ddchm.models import HierarchicalModel
from ddchm.validation import check_positive_int, make_generator


def flatten(grads: dict[str, torch.Tensor], names) -> torch.Tensor:
    return torch.cat([grads[name].reshape(-1).double() for name in names])


def compare_gradients(estimate: dict, exact: dict) -> dict[str, float]:
    """Cosine similarity and relative error ||estimate - exact|| / ||exact|| over all parameters."""
    names = list(exact)
    a, b = flatten(estimate, names), flatten(exact, names)
    return {
        "cosine": float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300)),
        "rel_error": float((a - b).norm() / b.norm().clamp_min(1e-300)),
    }


def perturbed_model(model: HierarchicalModel, sd: float = 0.5, seed: int = 0) -> HierarchicalModel:
    """A copy of ``model`` with N(0, sd^2) added to every parameter (not the truth any more)."""
    generator = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(sd * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return out


def oracle_encodings(exact, encodings, x) -> list[torch.Tensor]:
    """[E[T_1(z_1) | x], ..., E[T_L(z_L) | x]] from an exact reference (enumeration, quadrature or
    the linear-Gaussian closed form: anything with ``expectation``, see models.exact_reference)."""
    return [
        exact.expectation(x, encoding, layer=l) for l, encoding in enumerate(encodings, start=1)
    ]


@dataclass
class ImportanceGradient:
    """A self-normalised importance estimate of the gradient of mean log p(x), and what the same
    weights give besides.

    Attributes:
        gradient: {parameter name: estimate of grad_theta (1/N) sum_n log p(x_n)}, i.e. of
            mean_n E_{p(z | x_n)}[grad_theta log p(x_n, z)] (Fisher's identity).
        expectations: [E[T_l(z_l) | x] per layer, each (N, ...)] for the ``statistics`` given
            (else None): the posterior expected encodings under the same weights.
        ess: (N,) effective sample size of each point's weights, out of ``n_particles``.
        n_particles: K, particles per point.
    """

    gradient: dict[str, torch.Tensor]
    expectations: list[torch.Tensor] | None
    ess: torch.Tensor
    n_particles: int


def importance_gradient(
    model: HierarchicalModel,
    x: torch.Tensor,
    proposal,
    n_particles: int = 10_000,
    particle_chunk: int = 1000,
    batch_size: int = 10,
    statistics: Sequence | None = None,
    generator: torch.Generator | int | None = 0,
) -> ImportanceGradient:
    """grad_theta mean_n log p(x_n) where the latents cannot be enumerated: for each point, K
    particles from ``proposal`` (``sample_with_log_prob(x, K, generator)``, as for
    :func:`~ddchm.evaluate.likelihood.importance_log_likelihood`), self-normalised weights
    w_k ~ p(x, z_k) / q(z_k | x), and sum_k w_k grad log p(x, z_k). Consistent in K (biased at
    finite K like every self-normalised estimate); its accuracy is checked against the exact
    gradient on enumerable chains (tests) and, on wide ones, by the agreement of two
    independent estimates.

    Memory stays at ``particle_chunk x batch_size`` rows: each point batch is swept twice with
    the same random numbers (the generator's state replayed), once for the weights' normaliser,
    once for the weighted gradient. ``statistics``: one callable per latent layer, T_l(z_l) ->
    (rows, D), whose posterior expectations are returned too (None: none).
    """
    x = model.check_data(x)
    k = check_positive_int(n_particles, "n_particles")
    chunk = check_positive_int(particle_chunk, "particle_chunk")
    batch = check_positive_int(batch_size, "batch_size")
    if statistics is not None and len(statistics) != model.n_latent_layers:
        raise ValueError(
            f"statistics: expected one callable per latent layer ({model.n_latent_layers}), got "
            f"{len(statistics)}"
        )
    generator = make_generator(generator, device=x.device)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    totals = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    expectations, ess = [], torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    n = x.shape[0]

    def draw(xb, kc):
        latents, log_q = proposal.sample_with_log_prob(xb, kc, generator)
        nb = xb.shape[0]
        flat = [z.reshape(kc * nb, -1).to(x.dtype) for z in latents]  # row k * nb + n
        return flat, log_q.to(x.dtype)

    for start in range(0, n, batch):
        xb = x[start : start + batch]
        nb = xb.shape[0]
        state = generator.get_state()
        log_w = []
        with torch.no_grad():  # pass 1: every particle's log weight
            for c in range(0, k, chunk):
                kc = min(chunk, k - c)
                flat, log_q = draw(xb, kc)
                joint = model.log_joint(xb.repeat(kc, 1), flat, validate=False).reshape(kc, nb)
                log_w.append((joint - log_q).double())
        log_w = torch.cat(log_w)  # (K, nb)
        weights = torch.softmax(log_w, 0)
        ess[start : start + nb] = 1.0 / weights.pow(2).sum(0)
        generator.set_state(state)  # pass 2: the same particles, weighted gradients
        sums = None
        for c in range(0, k, chunk):
            kc = min(chunk, k - c)
            flat, _ = draw(xb, kc)
            w = weights[c : c + kc].to(x.dtype)  # (kc, nb)
            joint = model.log_joint(xb.repeat(kc, 1), flat, validate=False).reshape(kc, nb)
            grads = torch.autograd.grad((w * joint).sum() / n, params, allow_unused=True)
            for total, g in zip(totals, grads):
                if g is not None:
                    total.add_(g.double())
            if statistics is not None:
                with torch.no_grad():
                    parts = [
                        (w.reshape(kc * nb, 1) * f(z).to(x.dtype)).reshape(kc, nb, -1).sum(0)
                        for f, z in zip(statistics, flat)
                    ]
                sums = parts if sums is None else [a + b for a, b in zip(sums, parts)]
        if sums is not None:
            expectations.append(sums)
    gradient = {name: total.to(p.dtype) for name, total, p in zip(names, totals, params)}
    stacked = (
        [torch.cat([e[l] for e in expectations]) for l in range(model.n_latent_layers)]
        if statistics is not None
        else None
    )
    return ImportanceGradient(gradient, stacked, ess, k)
