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
import pickle
import re
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
# Version 1: a dict of tensors, numbers, strings, lists and dicts (loadable with
# weights_only=True); checkpoints written before versioning load as version 0.
FORMAT_VERSION = 1
REQUIRED = ("model", "algorithm", "step", "data_generator")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run."""


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically and durably: a killed process or a power cut leaves either the previous
    checkpoint or the new one, never a torn file (write to a temporary, fsync, rename, fsync the
    directory)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save({"format_version": FORMAT_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint without executing anything it contains (``weights_only=True``: only
    tensors, numbers, strings and containers of them are accepted, so a pickled payload is
    refused, not run). Raises :class:`CheckpointError` naming the file and how to recover."""
    path = Path(path)
    recover = (
        "Delete it (or the run directory) to start the run afresh, or restore a copy of the "
        "checkpoint."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(str(error))
        if re.search(r"global|unsupported class|reduce", detail, re.IGNORECASE):
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects, which could run code, "
                f"not only tensors and numbers ({detail}). A ddchm checkpoint never does; do not "
                f"use this file. {recover}"
            ) from None
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({detail}). It is damaged or not a ddchm "
            f"checkpoint. {recover}"
        ) from None
    except Exception as error:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}). It is damaged or not a "
            f"ddchm checkpoint. {recover}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not a ddchm checkpoint (holds a {type(state).__name__}). {recover}"
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ddchm checkpoint (missing {missing}). {recover}")
    version = state.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this ddchm reads up to "
            f"{FORMAT_VERSION}; upgrade ddchm to resume it"
        )
    return state


def _unpickler_detail(text: str) -> str:
    """The informative part of torch's weights-only refusal, on one short line."""
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.?\s*Please use|\n\n|$)", text, re.S)
    detail = match.group(1) if match else text
    return " ".join(detail.split())[:200]


def restore_state(path: Path, state: dict, model, algorithm=None, batches=None) -> None:
    """Load a checkpoint's model (and algorithm and data order) state; a checkpoint of another
    architecture or algorithm raises :class:`CheckpointError` naming the mismatch."""
    try:
        model.load_state_dict(state["model"])
        if algorithm is not None:
            saved = state.get("algorithm_name")
            if saved is not None and saved != algorithm.name:
                raise ValueError(f"it was written by algorithm {saved!r}, not {algorithm.name!r}")
            algorithm.load_state_dict(state["algorithm"])
        if batches is not None:
            batches.load_state_dict(state["data_generator"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
        raise CheckpointError(
            f"{path}: does not match this run's model or algorithm ({first}). Use another run "
            "directory (--out), or delete the checkpoint to start afresh."
        ) from None


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
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out}: is a file; the run directory must be a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except PermissionError as error:
            raise PermissionError(
                f"{out}: cannot write in the run directory ({error.strerror}); choose another --out"
            ) from None
        if (out / CHECKPOINT).exists():
            state = load_checkpoint(out / CHECKPOINT)
            restore_state(out / CHECKPOINT, state, model, algorithm, batches)
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
