"""The DDC Helmholtz machine: encodings, recognition, sleep regressions, wake gradients."""

from ddchm.ddc.encodings import LayerEncoding, make_encodings
from ddchm.ddc.machine import DDCHelmholtzMachine
from ddchm.ddc.recognition import NetworkRecognition, RidgeRecognition
from ddchm.ddc.wake import (
    RidgeSolver,
    explicit_wake_gradient,
    wake_gradient,
    wake_objective,
    wake_terms,
)

__all__ = [
    "DDCHelmholtzMachine",
    "NetworkRecognition",
    "LayerEncoding",
    "RidgeRecognition",
    "RidgeSolver",
    "explicit_wake_gradient",
    "make_encodings",
    "wake_gradient",
    "wake_objective",
    "wake_terms",
]
