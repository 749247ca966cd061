"""Accuracy of learning signals: an algorithm's theta-update against the exact gradient."""

from __future__ import annotations

import copy

import torch

from ddchm.models import HierarchicalModel


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
