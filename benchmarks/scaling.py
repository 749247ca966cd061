"""Data-parallel scaling: training steps per second with 1 and 2 processes, and the efficiency.

Each process runs one thread and ``algorithm.step`` on the same seeded batches, sharded as
``torchrun --nproc-per-node N -m ddchm train`` shards them (``ddchm.distributed``: gloo on the
CPU, nccl with ``--device cuda``); the whole batch and the whole dream set are the same for
every N, so the steps compute the same thing and only the time differs. Parallel efficiency
is steps/s with N processes over N times steps/s with one.

Model: a 200-200-784 sigmoid belief net (the GPU config's shape) on random binary pixels (a
step's cost does not depend on the pixels), batch ``--batch``; DDC-HM in its amortised wake
phase (what 'auto' settles on for MNIST nets) with ``--dreams`` dreams, and RWS-5. Protocol:
``--warmup`` untimed steps, then ``--steps`` timed ones (wall-clock of rank 0 between two
barriers); the configurations take turns, ``--repeats`` times, and the median is reported.
On a shared machine read the load average printed beside the figures: with fewer free cores
than processes the wall-clock efficiency measures the contention. ``work_efficiency`` is
the same ratio in CPU seconds per step and process (rank 0's ``time.process_time``): the share
of the work that is not repeated on every process or spent in the collectives, which is what
the wall-clock efficiency approaches when each process has a core of its own.

Usage: python benchmarks/scaling.py [--quick] [--processes 1,2] [--device cpu]
The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ddchm.distributed import free_loopback_port, set_local_process_env

LAYERS = [
    {"family": "bernoulli", "dim": 200},
    {"family": "bernoulli", "dim": 200},
    {"family": "bernoulli", "dim": 784},
]


def algorithm_section(name: str, dreams: int) -> dict:
    if name == "ddc":
        return {"name": "ddc", "sleep_samples": dreams, "wake_encodings": "amortised"}
    return {"name": "rws", "num_particles": 5}


def _worker(rank, world, port, name, args, path):
    set_local_process_env(rank, world, port)
    torch.set_num_threads(1)
    from ddchm import distributed
    from ddchm.experiment import build_algorithm
    from ddchm.models import HierarchicalModel
    from ddchm.train import Minibatches

    device = distributed.init_from_env(torch.device(args.device))
    torch.manual_seed(0)
    model = HierarchicalModel.from_config([dict(layer) for layer in LAYERS]).to(device)
    algorithm = build_algorithm(algorithm_section(name, args.dreams), model, seed=0)
    data = (torch.rand(5000, 784, generator=torch.Generator().manual_seed(1)) < 0.2).float()
    batches = Minibatches(data.to(device), args.batch, seed=0)
    shard = distributed.shard_for(device)
    algorithm.use_shard(shard, args.batch)
    for _ in range(args.warmup):
        algorithm.step(batches.next())
    shard.barrier()
    tic, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        algorithm.step(batches.next())
    if device.type == "cuda":
        torch.cuda.synchronize()
    shard.barrier()
    wall, cpu = time.perf_counter() - tic, time.process_time() - cpu
    if rank == 0:
        Path(path).write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}))
    distributed.finish()


def measure(name: str, world: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "timing.json")
        mp.start_processes(
            _worker,
            args=(world, free_loopback_port(), name, args, path),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        return json.loads(Path(path).read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default="ddc,rws")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dreams", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per algo)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat, few steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 1, 1
    worlds = [int(w) for w in args.processes.split(",")]
    names = args.algorithms.split(",")
    default_steps = {"ddc": 5 if args.quick else 20, "rws": 20 if args.quick else 200}
    times: dict[tuple[str, int], list[float]] = {}
    cpu_times: dict[tuple[str, int], list[float]] = {}  # CPU s per step of rank 0
    for repeat in range(args.repeats):
        for name in names:
            for world in worlds if repeat % 2 == 0 else worlds[::-1]:
                run_args = argparse.Namespace(**vars(args))
                run_args.steps = args.steps or default_steps.get(name, 20)
                timing = measure(name, world, run_args)
                rate = run_args.steps / timing["wall_s"]
                times.setdefault((name, world), []).append(rate)
                cpu_times.setdefault((name, world), []).append(timing["cpu_s"] / run_args.steps)
                print(
                    f"repeat {repeat} {name} x{world}: {rate:.2f} steps/s "
                    f"(load {os.getloadavg()[0]:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "torch": torch.__version__,
        "device": args.device,
        "model": "sbn 200-200-784, random binary pixels",
        "batch": args.batch,
        "dreams": args.dreams,
        "repeats": args.repeats,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    for name in names:
        entry = {}
        for world in worlds:
            entry[f"steps_per_s_{world}"] = round(statistics.median(times[(name, world)]), 3)
            cpu = statistics.median(cpu_times[(name, world)])
            entry[f"cpu_ms_per_step_per_process_{world}"] = round(1e3 * cpu, 2)
        base = entry[f"steps_per_s_{worlds[0]}"]
        base_cpu = entry[f"cpu_ms_per_step_per_process_{worlds[0]}"]
        for world in worlds[1:]:
            speedup = entry[f"steps_per_s_{world}"] / base
            entry[f"speedup_{world}"] = round(speedup, 3)
            entry[f"efficiency_{world}"] = round(speedup * worlds[0] / world, 3)
            # what the efficiency would be with a free core per process: the CPU work of a
            # step (redundant draws, collectives) over N processes against one
            work = base_cpu * worlds[0] / (world * entry[f"cpu_ms_per_step_per_process_{world}"])
            entry[f"work_efficiency_{world}"] = round(work, 3)
        out[name] = entry
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
