"""Fingerprint what a DDC-HM run learns: N training steps per config, the SHA-256 of every
parameter's bytes, and the wake phase each run chose.

A refactoring that preserves behaviour leaves every fingerprint unchanged; run it before and
after and compare the JSON (``--compare OLD.json`` does it and exits 1 on a difference).

    python benchmarks/behaviour_fingerprint.py --steps 200 > after.json
    python benchmarks/behaviour_fingerprint.py --steps 200 --compare before.json

Configs (the library's defaults for each model): the embedded default (``sbn-hard``),
``configs/learn-linear-gaussian-ddc.toml``, ``reproduce/mnist-sbn2.toml`` (20-100-784 on the
offline MNIST subset, ``ddchm data offline-mnist`` first), the same at 20-30-784, and that
chain with ``wake_encodings = 'collapsed'`` (the phase it had before the wake phase was chosen
by measurement).
The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "src/ddchm/configs/reproduce/mnist-sbn2.toml"
CASES = {
    "sbn-hard": (None, {}),
    "linear-gaussian": (ROOT / "configs/learn-linear-gaussian-ddc.toml", {}),
    "mnist-20-100-784": (MNIST, {}),
    "mnist-20-30-784": (
        MNIST,
        {
            "model": {
                "layers": [
                    {"family": "bernoulli", "dim": 20},
                    {"family": "bernoulli", "dim": 30},
                    {"family": "bernoulli", "dim": 784},
                ]
            }
        },
    ),
}
# the same chain with the wake phase the unit-count rule gave it before the named phases
CASES["mnist-20-30-784-collapsed"] = (
    MNIST,
    {**CASES["mnist-20-30-784"][1], "algorithm": {"wake_encodings": "collapsed"}},
)


def fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_case(name: str, steps: int) -> dict:
    from ddchm.experiment import load_config, run

    path, overrides = CASES[name]
    overrides = {**overrides, "train": {"steps": steps, "max_cpu_seconds": None}}
    config = load_config(path, overrides)
    start = time.process_time()
    result = run(config, out_dir=None, progress=False)
    algorithm = result["algorithm"]
    return {
        "params_sha256": fingerprint(result["model"]),
        "wake_phase": algorithm.wake_phase.name,
        "wake_decisions": algorithm.wake_phase.decisions,
        "cpu_s": round(time.process_time() - start, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--compare", default=None, help="an earlier run's JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {"steps": args.steps}
    for name in args.cases.split(","):
        out[name] = run_case(name, args.steps)
        print(name, out[name], file=sys.stderr, flush=True)
    print(json.dumps(out))
    if args.compare:
        old = json.loads(Path(args.compare).read_text().strip().splitlines()[-1])
        changed = [
            name
            for name in out
            if name != "steps"
            and name in old
            and old[name]["params_sha256"] != out[name]["params_sha256"]
        ]
        print(json.dumps({"changed": changed}))
        return 1 if changed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
