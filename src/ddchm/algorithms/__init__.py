"""Learning algorithms sharing one interface: ``algorithm.step(batch) -> metrics``."""

from ddchm.algorithms.base import OPTIMIZERS, Algorithm, make_optimizer

__all__ = ["OPTIMIZERS", "Algorithm", "make_optimizer"]
