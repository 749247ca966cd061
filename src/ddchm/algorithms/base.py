"""What every learning algorithm shares: the step interface and optimiser construction.

The training loop calls ``algorithm.step(batch)`` and gets named metrics back; it knows nothing
of wake, sleep or particles. Every algorithm learns the same :class:`HierarchicalModel`, so
comparisons are fair by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ddchm.models import HierarchicalModel
from ddchm.validation import make_generator

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adamw": torch.optim.AdamW,
}

OptimizerSpec = str | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def make_optimizer(params, optimizer: OptimizerSpec = "adam", lr: float = 1e-3, **kwargs):
    """An optimiser from a name in :data:`OPTIMIZERS` or any ``params -> torch.optim.Optimizer``."""
    params = list(params)
    if callable(optimizer):
        return optimizer(params)
    try:
        cls = OPTIMIZERS[optimizer]
    except KeyError:
        raise ValueError(
            f"optimizer: unknown optimiser {optimizer!r}; expected one of {sorted(OPTIMIZERS)} "
            "or a callable params -> torch.optim.Optimizer"
        ) from None
    return cls(params, lr=lr, **kwargs)


class Algorithm:
    """Base class: a learning rule for ``model`` with one method that matters, :meth:`step`.

    Subclasses set ``name`` and implement :meth:`step`, :meth:`posterior_means`,
    :meth:`state_dict` and :meth:`load_state_dict` (everything needed to resume exactly).
    """

    name: str = ""

    def __init__(self, model: HierarchicalModel, generator: torch.Generator | int | None = None):
        if not isinstance(model, HierarchicalModel):
            raise TypeError(f"model: expected a HierarchicalModel, got {type(model).__name__}")
        self.model = model
        reference = next(model.parameters())
        self.device, self.dtype = reference.device, reference.dtype
        self.generator = make_generator(generator, device=self.device)

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One update of theta (and of any recognition model) from a data batch."""
        raise NotImplementedError

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The algorithm's estimate of [E[z_1 | x], ..., E[z_L | x]], each (N, D_l)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def generator_state(self) -> torch.Tensor:
        return self.generator.get_state()


def apply_ascent(
    optimizer: torch.optim.Optimizer, params, ascent: dict[str, torch.Tensor], names: list[str]
) -> float:
    """Hand an estimated ascent direction of log-likelihood to a (minimising) torch optimiser.

    Returns the norm of the direction. ``names`` and ``params`` are aligned."""
    optimizer.zero_grad(set_to_none=True)
    sq = 0.0
    for name, p in zip(names, params):
        g = ascent[name]
        p.grad = -g.detach().to(p.dtype)
        sq += float(g.detach().pow(2).sum())
    optimizer.step()
    return sq**0.5
