"""The training loop: minibatches, metrics, checkpoints, resumption, progress.

It knows nothing of wake, sleep or particles: it calls ``algorithm.step(batch)`` and records the
named metrics it returns. A run directory holds

    checkpoint.pt   model, algorithm state, data-order generator, step, elapsed time (atomic)
    metrics.jsonl   one JSON object per logged step: step, time (training seconds), metrics

and a run started again in the same directory resumes from its checkpoint and reproduces the
uninterrupted run exactly (every random draw goes through saved generators).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddchm.algorithms.base import Algorithm
from ddchm.validation import check_positive_int, make_generator

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a killed process leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({type(error).__name__}: {error}). "
            "It is damaged or not a ddchm checkpoint; delete it to start the run afresh."
        ) from None
    missing = {"model", "algorithm", "step", "data_generator"} - set(state)
    if missing:
        raise CheckpointError(f"{path}: not a ddchm checkpoint (missing {sorted(missing)})")
    return state


class Minibatches:
    """Shuffled minibatches of the rows of ``data``, epoch after epoch, from a seeded generator."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed: int = 0):
        self.data = data
        self.batch_size = min(check_positive_int(batch_size, "batch_size"), data.shape[0])
        self.generator = make_generator(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.order.numel():
            self.order = torch.randperm(self.data.shape[0], generator=self.generator)
            self.position = 0
        rows = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.data[rows.to(self.data.device)]

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "order": self.order,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


def train(
    algorithm: Algorithm,
    data: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 100,
    seed: int = 0,
    out_dir: str | Path | None = None,
    log_every: int = 50,
    checkpoint_every: int = 500,
    evaluate: Callable[[], dict] | None = None,
    eval_every: int = 500,
    progress: bool = True,
    extra_state: dict | None = None,
    max_seconds: float | None = None,
) -> list[dict]:
    """Run ``algorithm.step`` for ``steps`` minibatches of ``data``; returns the logged records.

    ``evaluate()`` (optional) is called every ``eval_every`` steps and at the end; its figures
    join the log, and its time is not counted as training time. With ``out_dir`` the run is
    checkpointed every ``checkpoint_every`` steps, on SIGTERM/Ctrl-C, and at the end, and
    resumes from an existing checkpoint there. ``max_seconds`` stops after that much training
    time (for comparisons at a matched wall-clock budget).
    """
    steps = check_positive_int(steps, "steps", minimum=0)
    model = algorithm.model
    data = model.check_data(data, "data")
    batches = Minibatches(data, batch_size, seed)
    records: list[dict] = []
    start_step, elapsed = 0, 0.0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if (out / CHECKPOINT).exists():
            state = load_checkpoint(out / CHECKPOINT)
            model.load_state_dict(state["model"])
            algorithm.load_state_dict(state["algorithm"])
            batches.load_state_dict(state["data_generator"])
            start_step, elapsed = state["step"], state["elapsed"]
            records = _read_records(out / METRICS, upto=start_step)
        _write_records(out / METRICS, records)

    def checkpoint(step):
        if out is not None:
            save_checkpoint(
                out / CHECKPOINT,
                {
                    "model": model.state_dict(),
                    "model_config": model.config(),
                    "algorithm": algorithm.state_dict(),
                    "algorithm_name": algorithm.name,
                    "data_generator": batches.state_dict(),
                    "step": step,
                    "elapsed": elapsed,
                    **(extra_state or {}),
                },
            )

    def log(record):
        records.append(record)
        if out is not None:
            with open(out / METRICS, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    interrupted = []
    previous_handler = None
    if out is not None:
        try:
            previous_handler = signal.signal(signal.SIGTERM, lambda *_: interrupted.append(1))
        except ValueError:  # not the main thread
            previous_handler = None

    step = start_step
    bar = tqdm(
        total=steps,
        initial=start_step,
        disable=not progress,
        desc=algorithm.name,
        dynamic_ncols=True,
    )
    try:
        if start_step == 0 and evaluate is not None:
            log({"step": 0, "time": 0.0, **evaluate()})
        while step < steps and not interrupted:
            if max_seconds is not None and elapsed >= max_seconds:
                break
            tic = time.perf_counter()
            metrics = algorithm.step(batches.next())
            elapsed += time.perf_counter() - tic
            step += 1
            bar.update(1)
            bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad:
                raise FloatingPointError(
                    f"step {step}: {', '.join(bad)} became NaN or infinite; lower the learning "
                    "rate or check the data. The last checkpoint is intact."
                )
            record = None
            out_of_time = max_seconds is not None and elapsed >= max_seconds
            last = step == steps or out_of_time
            if step % log_every == 0 or last:
                record = {"step": step, "time": round(elapsed, 4), **metrics}
            if evaluate is not None and (step % eval_every == 0 or last):
                record = {"step": step, "time": round(elapsed, 4), **metrics, **evaluate()}
            if record is not None:
                log(record)
                bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in list(record.items())[2:5] if isinstance(v, float)}
                )
            if step % checkpoint_every == 0:
                checkpoint(step)
    except KeyboardInterrupt:
        checkpoint(step)
        bar.close()
        raise
    bar.close()
    checkpoint(step)
    if previous_handler is not None:
        signal.signal(signal.SIGTERM, previous_handler)
    return records


def _read_records(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step", 0) <= upto:
            out.append(record)
    return out


def _write_records(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The logged records of a run directory."""
    return _read_records(Path(run_dir) / METRICS, upto=math.inf)
