"""Generative models: exponential-family layers, the hierarchical chain, exact inference."""

from ddchm.models.exact import (
    ExactInference,
    brute_force_log_marginal,
    enumerate_binary,
    gaussian_chain_log_marginal,
)
from ddchm.models.hierarchical import HierarchicalModel
from ddchm.models.layers import (
    FAMILIES,
    Bernoulli,
    ExponentialFamilyLayer,
    Gaussian,
    Laplace,
    make_layer,
)

__all__ = [
    "FAMILIES",
    "Bernoulli",
    "ExactInference",
    "ExponentialFamilyLayer",
    "Gaussian",
    "HierarchicalModel",
    "Laplace",
    "brute_force_log_marginal",
    "enumerate_binary",
    "gaussian_chain_log_marginal",
    "make_layer",
]
