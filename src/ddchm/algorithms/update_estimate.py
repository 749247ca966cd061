"""The expected theta-update of an algorithm, for comparing it with the exact gradient."""

from __future__ import annotations

import torch

from ddchm.validation import check_positive_int


def expected_theta_update(algorithm, x, n_draws: int) -> dict[str, torch.Tensor]:
    """mean over ``n_draws`` calls of ``algorithm.theta_gradient(x)``, keyed by parameter name.

    Each call is the ascent direction the algorithm would apply to theta for the batch ``x``
    (with fresh draws), so the mean approximates its expected update; its Monte Carlo error
    falls as 1/sqrt(n_draws). Consumes the algorithm's random draws, changes no parameter.
    Compare it with :meth:`ddchm.models.ExactInference.expected_gradient` via
    :func:`cosine_similarity`.
    """
    n_draws = check_positive_int(n_draws, "n_draws")
    total = None
    for _ in range(n_draws):
        grad = algorithm.theta_gradient(x)
        if total is None:
            total = {name: g.detach().clone() for name, g in grad.items()}
        else:
            for name, g in grad.items():
                total[name] += g.detach()
    return {name: g / n_draws for name, g in total.items()}


def cosine_similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine between two gradients given as name -> tensor dicts, over the names of ``a``."""
    missing = set(a) - set(b)
    if missing:
        raise ValueError(f"b: has no entries for {sorted(missing)}")
    flat_a = torch.cat([a[name].reshape(-1) for name in a])
    flat_b = torch.cat([b[name].reshape(-1).to(flat_a) for name in a])
    return float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
