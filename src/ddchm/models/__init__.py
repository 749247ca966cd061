"""Generative models: exponential-family layers, the hierarchical chain, exact inference."""

from ddchm.models.exact import (
    ExactInference,
    brute_force_log_marginal,
    enumerate_binary,
    gaussian_chain_log_marginal,
    quadrature_grid,
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
from ddchm.models.linear_gaussian import LinearGaussianInference

__all__ = [
    "FAMILIES",
    "Bernoulli",
    "ExactInference",
    "ExponentialFamilyLayer",
    "Gaussian",
    "HierarchicalModel",
    "Laplace",
    "LinearGaussianInference",
    "brute_force_log_marginal",
    "enumerate_binary",
    "gaussian_chain_log_marginal",
    "exact_reference",
    "make_layer",
    "quadrature_grid",
]


def exact_reference(model: HierarchicalModel, **kwargs):
    """The exact-inference object for ``model``: closed form for all-Gaussian chains, else
    enumeration / quadrature (:class:`ExactInference`, which names what it cannot handle).
    Both give ``log_marginal``, ``expected_gradient``, ``expectation`` and ``posterior_means``."""
    if all(layer.family == "gaussian" for layer in model.layers):
        return LinearGaussianInference(model, **kwargs)
    return ExactInference(model, **kwargs)
