"""What every learning algorithm shares: the step interface and optimiser construction.

The training loop calls ``algorithm.step(batch)`` and gets named metrics back; it knows nothing
of wake, sleep or particles. Every algorithm learns the same :class:`HierarchicalModel`, so
comparisons are fair by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ddchm.distributed import LOCAL, DistributedError, Shard
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
        self.shard = LOCAL  # this process's part of a data-parallel step (ddchm.distributed)

    def use_shard(self, shard: Shard, batch_size: int) -> None:
        """Take this process's part of every step from now on (``LOCAL``: the whole step).
        Raises :class:`~ddchm.distributed.DistributedError` when ``batch_size`` or another
        per-step count cannot be split evenly, or the algorithm cannot be sharded."""
        if shard.sharded:
            shard.rows(batch_size, "train.batch_size")
            self.check_shard(shard, batch_size)
        self.shard = shard

    def check_shard(self, shard: Shard, batch_size: int) -> None:
        """Raise :class:`~ddchm.distributed.DistributedError` if a step cannot be shared out
        over ``shard.world`` processes; an algorithm that shards its steps overrides this."""
        raise DistributedError(
            f"{type(self).__name__} cannot train data-parallel; run it in one process"
        )

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

    Returns the norm of the direction (one host sync, after the step is queued). ``names`` and
    ``params`` are aligned."""
    optimizer.zero_grad(set_to_none=True)
    squares = []
    for name, p in zip(names, params):
        g = ascent[name].detach()
        p.grad = -g.to(p.dtype)
        squares.append(g.pow(2).sum().double())  # exact: float32 -> float64
    optimizer.step()
    sq = 0.0
    for value in torch.stack(squares).tolist():  # summed in float64, in order, as before
        sq += value
    return sq**0.5
