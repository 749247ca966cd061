"""Data-parallel training on ``torch.distributed``: what each process computes, and the sums.

Launch with ``torchrun --nproc-per-node N -m ddchm train CONFIG`` (or initialise a process
group yourself and call :func:`ddchm.train.train`): gloo on the CPU, nccl on CUDA devices.

How a step is shared. Every process holds the same generators, seeded from the one seed, and
advances them identically: each draws the step's whole minibatch and every random tensor of the
step, and keeps its own rows of them (:meth:`Shard.rows`, :meth:`Shard.draw`). The work per row
(likelihoods, encodings, the recogniser's and q's forward and backward passes, the Gram
matrices) is done on those rows only, and the sums a step needs are all-reduced:

- DDC-HM: F^T F and N of the gradient maps, the batch sums of r and of R^T S(x), the
  recogniser's loss, gradient and readout normal equations, and the wake gradient (a sum over
  dreams); the wake phase's choice reads every process's ESS (gathered); the decisions taken
  on the dreams (recalibration, the collapsed draws and their redraws) are taken by every
  process on the whole dream set it holds, so they agree;
- the baselines: the gradients of theta and phi (each process's are means over its rows of
  equal size, so the average is the whole batch's mean) and the metrics.

So every process takes the same step, the result does not depend on the number of processes
beyond floating-point summation order, and a run with N processes is reproducible; the
checkpoint of rank 0 holds everything every rank needs to resume. Draws are made in full on
every process (the random numbers are a small part of a step's cost), so no process needs
another's stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class DistributedError(ValueError):
    """A process group or a sharded run that cannot work as set up (a setup error, like a bad
    config value: the CLI exits with 2); the message says why."""


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel step: ``rank`` of ``world`` processes.

    With ``world == 1`` (:data:`LOCAL`) every method returns its input unchanged, so a single
    process computes exactly what it computes without this class."""

    rank: int = 0
    world: int = 1

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def rows(self, n: int, what: str = "rows") -> slice:
        """This process's rows of ``n`` (contiguous, equal parts; ``n`` must divide evenly)."""
        if n % self.world:
            raise DistributedError(
                f"{what}: {n} cannot be split evenly over {self.world} processes; use a "
                f"multiple of {self.world}"
            )
        part = n // self.world
        return slice(self.rank * part, (self.rank + 1) * part)

    def draw(self, sample, shape, dim: int, total: int | None, **kwargs) -> torch.Tensor:
        """``sample(shape, **kwargs)`` (``torch.rand``, ``torch.randn``) for this process's rows:
        with ``total`` given, the draw is made for all ``total`` rows along ``dim`` and this
        process's part kept, so the draws equal those of one process with the whole batch."""
        if total is None or not self.sharded:
            return sample(shape, **kwargs)
        shape = list(shape)
        shape[dim] = total
        return sample(shape, **kwargs).narrow(dim, self.rows(total).start, total // self.world)

    def sum_(self, *tensors: torch.Tensor) -> None:
        """All-reduce (sum) the tensors in place, in one collective per dtype."""
        if not self.sharded:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            if len(group) == 1:
                dist.all_reduce(group[0])
                continue
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            start = 0
            for t in group:
                t.copy_(flat[start : start + t.numel()].view_as(t))
                start += t.numel()

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes of ``tensor`` (a new tensor; the input is unchanged)."""
        if not self.sharded:
            return tensor
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    def reduce_gradients(self, gradients: dict, mean: bool) -> dict:
        """{name: gradient} summed (``mean``: averaged) over processes, in one collective."""
        if not self.sharded:
            return gradients
        out = {k: g.detach().clone() for k, g in gradients.items()}
        self.sum_(*out.values())
        if mean:
            for g in out.values():
                g.div_(self.world)
        return out

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``tensor`` (equal shapes) concatenated along dim 0 in rank order."""
        if not self.sharded:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def mean_metrics(self, metrics: dict) -> dict:
        """Float metrics averaged over processes (one collective); others unchanged."""
        if not self.sharded:
            return metrics
        keys = [k for k, v in metrics.items() if isinstance(v, float)]
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        values = values.to(_collective_device())
        dist.all_reduce(values)
        return {**metrics, **dict(zip(keys, (values / self.world).tolist()))}

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any process (one collective)."""
        if not self.sharded:
            return [bool(f) for f in flags]
        values = torch.tensor([float(bool(f)) for f in flags], dtype=torch.float64)
        values = values.to(_collective_device())
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v > 0) for v in values.tolist()]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (picklable objects)."""
        if not self.sharded:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()


LOCAL = Shard()


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: nccl needs CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a local process group's
    MASTER_PORT; nothing holds it afterwards, so a connection to it is refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_local_process_env(rank: int, world: int, port: int) -> None:
    """Set the variables torchrun would give process ``rank`` of ``world`` on this machine
    (loopback, ``port``), for processes started from Python (torch.multiprocessing); then
    :func:`init_from_env` (or :func:`ddchm.experiment.run`) joins the group."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )


def world_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE: expected an integer, got {value!r}") from None


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT), gloo for a CPU ``device`` and nccl for CUDA; returns the device this process
    trains on (``cuda:LOCAL_RANK`` on CUDA). Without torchrun's variables (or with one process)
    nothing is initialised and ``device`` is returned. A group already initialised is kept."""
    if dist.is_available() and dist.is_initialized():
        return _local_device(device)
    if world_from_env() <= 1:
        return device
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE is {world_from_env()} but {missing} are not set; launch with "
            "torchrun --nproc-per-node N -m ddchm train CONFIG"
        )
    device = _local_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    global _OWN_GROUP
    _OWN_GROUP = True
    return device


_OWN_GROUP = False  # whether init_from_env started the process group (finish() ends it)


def finish() -> None:
    """End the process group :func:`init_from_env` started (after a barrier); no-op else."""
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _OWN_GROUP = False


def rank() -> int:
    """This process's rank in the default process group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _local_device(device: torch.device) -> torch.device:
    """This process's CUDA device (``cuda:LOCAL_RANK``) when training on CUDA."""
    if device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", device.index or 0))
    if local >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} CUDA "
            "device(s); start at most that many processes per node"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def shard_for(device: torch.device) -> Shard:
    """This process's :class:`Shard` in the initialised default process group (:data:`LOCAL`
    when there is none or it has one process). Raises :class:`DistributedError` when the
    group's backend cannot carry tensors of ``device`` (nccl with a CPU model)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return LOCAL
    backend = dist.get_backend()
    if backend == "nccl" and device.type != "cuda":
        raise DistributedError(
            f"the process group uses nccl, which carries CUDA tensors only, but the model is on "
            f"{device}; train on CUDA (--device cuda) or initialise the group with gloo"
        )
    return Shard(dist.get_rank(), dist.get_world_size())


def on_rank_zero(evaluate, shard: Shard):
    """``evaluate`` run on rank 0 only, its result handed to every rank (the others wait), so
    the decisions taken from it (the divergence guard's) agree everywhere."""
    if evaluate is None or not shard.sharded:
        return evaluate

    def shared() -> dict:
        return shard.broadcast(evaluate() if shard.rank == 0 else None)

    return shared
