"""The training loop: minibatches, metrics, checkpoints, resumption, progress.

It knows nothing of wake, sleep or particles: it calls ``algorithm.step(batch)`` and records the
named metrics it returns. A run directory holds::

    checkpoint.pt   model, algorithm state, data-order generator, step, elapsed time, config
                    (tensors, numbers and strings only: read with weights_only=True; written
                    atomically and fsynced)
    metrics.jsonl   one JSON object per logged step: step, time (training seconds), metrics

and a run started again in the same directory resumes from its checkpoint and reproduces the
uninterrupted run exactly (every random draw goes through saved generators), however it was
stopped: SIGKILL, or SIGINT / SIGTERM, which the loop honours only between whole steps.

Failures are named: :class:`CheckpointError` (a checkpoint that is damaged, unsafe or does not
fit), :class:`DivergenceError` (a step refused by the :class:`DivergenceGuard`; nothing of it is
kept) and :class:`TrainingInterrupted` (a signal; the checkpoint is saved).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pickle
import pickletools
import re
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from ddchm import distributed
from ddchm.algorithms.base import Algorithm
from ddchm.progress import cpu_budget_bar, progress_bar
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
    except Exception as error:  # torch raises several types for refused or damaged files
        # a refusal is told from damage by what the intact pickle refers to, read without
        # running it, not by the wording of torch's message
        objects = _pickled_globals(path) or set()
        foreign = sorted(g for g in objects if not g.startswith(SAFE_GLOBAL_PREFIXES))
        if foreign:
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects, which could run code, "
                f"not only tensors and numbers ({', '.join(foreign)}). A ddchm checkpoint never "
                f"does; do not use this file. {recover}"
            ) from None
        if isinstance(error, pickle.UnpicklingError):
            detail = _unpickler_detail(str(error))
        else:
            first = str(error).splitlines()[0][:200] if str(error) else ""
            detail = f"{type(error).__name__}: {first}"
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({detail}). It is damaged or not a ddchm "
            f"checkpoint. {recover}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not a ddchm checkpoint (holds a {type(state).__name__}). {recover}"
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a ddchm checkpoint (missing {missing}). {recover}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(
            f"{path}: its step is {step!r}, not a whole number >= 0: damaged or not written by "
            f"ddchm. {recover}"
        )
    for key in ("elapsed", "cpu_elapsed"):
        value = state.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise CheckpointError(
                f"{path}: its {key} is {value!r}, not a number of seconds >= 0: damaged or not "
                f"written by ddchm. {recover}"
            )
    version = state.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, this ddchm reads up to "
            f"{FORMAT_VERSION}; upgrade ddchm to resume it"
        )
    return state


# what torch itself pickles in a tensors-only checkpoint (tensor rebuilders, dtypes, storages,
# OrderedDict); any other global is a Python object
SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")


def _pickled_globals(path: Path) -> set[str] | None:
    """The globals ('module.name') the checkpoint's pickle refers to, read without running it
    (pickletools), or None if the file is not an intact torch zip archive with a pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                return None
            payload = archive.read(name)
    except Exception:  # not a zip archive, or a damaged one (zipfile raises many types)
        return None
    found, strings = set(), []
    try:
        for opcode, argument, _ in pickletools.genops(payload):
            if opcode.name == "GLOBAL":
                found.add(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            if isinstance(argument, str):
                strings.append(argument)
    except Exception:  # a torn pickle: damage, not a refusal
        return None
    return found


def _unpickler_detail(text: str) -> str:
    """The informative part of torch's weights-only refusal, on one short line."""
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.?\s*Please use|\n\n|$)", text, re.S)
    detail = match.group(1) if match else text
    return " ".join(detail.split())[:200]


def restore_state(path: Path, state: dict, model, algorithm=None, batches=None) -> None:
    """Load a checkpoint's model (and algorithm and data order) state; a checkpoint of another
    architecture or algorithm raises :class:`CheckpointError` naming the mismatch, and so does
    one holding NaN or infinite values (from a diverged run of an older ddchm, or tampered)."""
    parts = {"model": state.get("model"), "algorithm": state.get("algorithm")}
    problem = _first_non_finite(list(_floating_tensors(parts)), "tensor")
    if problem is not None:
        raise CheckpointError(
            f"{path}: {problem.replace('became', 'is')}; resuming or sampling from it would give "
            "nonsense. Delete it to start afresh."
        )
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


def prepare_run_directory(out: Path, probe_name: str = ".write-test") -> None:
    """Create the run directory, or fail with a named error if it is a file or not writable
    (``probe_name``: the empty file written and removed to find out; one per process)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: is a file; the run directory must be a folder")
    blocking = next((p for p in out.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise NotADirectoryError(
            f"{out}: {blocking} is a file, not a folder, so the run directory cannot be made "
            "there; choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / probe_name
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError as error:
        raise PermissionError(
            f"{out}: cannot write in the run directory ({error.strerror}); choose another --out"
        ) from None
    except OSError as error:  # a read-only file system, a full disk, a name too long, ...
        raise OSError(
            f"{out}: cannot make or write the run directory ({error.strerror}); choose another "
            "--out"
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


class DivergenceError(FloatingPointError):
    """A step made the model or algorithm state NaN/inf, or training blew up; the message names
    the tensor or figure and the step (also ``step``). The failing step was not applied."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run between two whole steps, after saving a checkpoint."""

    def __init__(self, signal_number: int, step: int, out_dir: Path):
        self.signal_number, self.step, self.out_dir = signal_number, step, out_dir
        self.exit_code = 128 + signal_number  # the shell's convention: 130 SIGINT, 143 SIGTERM
        name = signal.Signals(signal_number).name
        super().__init__(
            f"{name} at step {step}: checkpoint saved in {out_dir}; run the same command again "
            "to resume exactly"
        )


class DivergenceGuard:
    """Decides, after each step, whether training has gone wrong.

    A step is refused when any model parameter, any floating tensor of the algorithm's state or
    any returned metric is NaN/inf; when it moved the parameters by more than
    ``max_relative_update`` times their norm (+1); or when ``grad_norm`` exceeds ``factor``
    times its running median (over the last ``window`` steps, once ``warmup`` are seen). At an
    evaluation, a ``test_nll`` more than ``max(nll_tolerance, |best|/2)`` nats above the best so
    far means the run has diverged. Thresholds are orders of magnitude beyond what a healthy run
    does, so they do not fire on noise.
    """

    def __init__(
        self, factor=1e4, window=100, warmup=10, max_relative_update=1e3, nll_tolerance=10.0
    ):
        self.factor, self.window, self.warmup = factor, window, warmup
        self.max_relative_update, self.nll_tolerance = max_relative_update, nll_tolerance
        self.grad_norms: list[float] = []
        self.best_nll: tuple[float, int] | None = None
        self.steps = 0  # steps taken through :meth:`step`

    def check_step(self, step, model, metrics, before: list[torch.Tensor]) -> str | None:
        """The problem with the step just taken (``before``: the parameters before it), or None."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not math.isfinite(value):
                return f"metric {key} = {value}"
        params = [p.detach() for p in model.parameters()]
        problem = _first_non_finite(
            [(f"model parameter {n}", p.detach()) for n, p in model.named_parameters()],
            "model parameter",
        )
        if problem is not None:
            return problem
        change = torch.stack([(p - b).double().pow(2).sum() for p, b in zip(params, before)])
        size = torch.stack([b.double().pow(2).sum() for b in before])
        relative = float(change.sum().sqrt() / (size.sum().sqrt() + 1))
        if relative > self.max_relative_update:
            return (
                f"the update moved the model parameters by {relative:.3g} times their norm "
                f"(limit {self.max_relative_update:g})"
            )
        norm = metrics.get("grad_norm")
        if isinstance(norm, (int, float)):
            history = self.grad_norms[-self.window :]
            if len(history) >= self.warmup:
                median = sorted(history)[len(history) // 2]
                if norm > self.factor * max(median, 1e-12):
                    return (
                        f"grad_norm {norm:.4g} is {norm / max(median, 1e-12):.3g} times its "
                        f"running median {median:.4g}"
                    )
            self.grad_norms = [*history, float(norm)]
        return None

    def step(self, algorithm: Algorithm, batch: torch.Tensor) -> dict:
        """``algorithm.step(batch)`` for Python users who write their own loop: the step's
        metrics, or, if the checks above refuse it, :class:`DivergenceError` with the model and
        the algorithm restored to before the step. (It copies their state every step; `train`
        does this at checkpoints only.)"""
        model = algorithm.model
        before = [p.detach().clone() for p in model.parameters()]
        saved = copy.deepcopy((model.state_dict(), algorithm.state_dict()))
        self.steps += 1
        metrics = algorithm.step(batch)
        problem = self.check_step(self.steps, model, metrics, before)
        if problem is None:
            problem = self.check_state(algorithm.state_dict())
        if problem is not None:
            model.load_state_dict(saved[0])
            algorithm.load_state_dict(saved[1])
            self.steps -= 1
            raise DivergenceError(
                f"step {self.steps + 1} diverged: {problem}; it was undone (the model and the "
                "algorithm are as before it). Try a lower learning rate or a smaller "
                "init_scale.",
                self.steps + 1,
            )
        return metrics

    @staticmethod
    def check_state(algorithm_state: dict) -> str | None:
        """Whether every floating tensor of an algorithm's state is finite (before a save)."""
        return _first_non_finite(list(_floating_tensors(algorithm_state)), "algorithm state")

    def check_evaluation(self, step, record) -> str | None:
        nll = record.get("test_nll")
        if not isinstance(nll, (int, float)):
            return None
        if not math.isfinite(nll):
            return f"the test NLL is {nll}"
        if self.best_nll is not None and step > 0:
            best, at = self.best_nll
            if nll > best + max(self.nll_tolerance, abs(best) / 2):
                return f"the test NLL rose to {nll:.4g} from its best {best:.4g} (step {at})"
        if self.best_nll is None or nll < self.best_nll[0]:
            self.best_nll = (nll, step)
        return None


def _first_non_finite(named: list[tuple[str, torch.Tensor]], what: str) -> str | None:
    flags: dict[torch.device, list[torch.Tensor]] = {}  # one sync per device, not per tensor
    for _, tensor in named:  # (optimiser step counts stay on the CPU under a CUDA model)
        flags.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    if all(bool(torch.stack(group).all()) for group in flags.values()):
        return None
    name, tensor = next((n, t) for n, t in named if not bool(torch.isfinite(t).all()))
    bad = int((~torch.isfinite(tensor)).sum())
    label = name if name.startswith(what) else f"{what} {name}"
    return f"{label} became NaN or infinite ({bad} of {tensor.numel()} values)"


def _floating_tensors(state, prefix=""):
    """(dotted name, tensor) for every floating-point tensor in a nested state dict."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point():
            yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _floating_tensors(value, f"{prefix}[{i}]")


@contextlib.contextmanager
def _stop_on_signals(enabled: bool):
    """Within: SIGINT and SIGTERM only append their number to the yielded list, which the loop
    reads between whole steps, so a step is never saved half done and the data order saved is
    the one the next step draws from. Outside the main thread signals are left alone."""
    interrupted: list[int] = []
    previous = {}
    try:
        if enabled:
            for number in (signal.SIGINT, signal.SIGTERM):
                try:
                    previous[number] = signal.signal(number, lambda n, _: interrupted.append(n))
                except ValueError:  # not the main thread
                    break
        yield interrupted
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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
    max_cpu_seconds: float | None = None,
    guard: DivergenceGuard | None = None,
    eval_every_cpu_s: float | None = None,
    eval_early: bool = False,
) -> list[dict]:
    """Run ``algorithm.step`` for ``steps`` minibatches of ``data``; returns the logged records.

    ``evaluate()`` (optional) is called every ``eval_every`` steps and at the end; its figures
    join the log, and its time is not counted as training time. With ``out_dir`` the run is
    checkpointed at the start, every ``checkpoint_every`` steps and at the end, and resumes from
    an existing checkpoint there. ``max_seconds`` stops after that much training wall-clock
    time; ``max_cpu_seconds`` after that much CPU time of this process in training steps
    (``time.process_time()``: robust to other processes sharing the machine, so comparisons at a
    matched budget stay fair; give the process one thread). Records carry both, as ``time``
    and ``cpu_time``. ``eval_every_cpu_s`` also evaluates each time the training CPU time
    passes another multiple of it (a learning curve with points spread over the budget,
    whatever ``eval_every``). ``eval_early`` also evaluates after steps 1, 2, 5, 10, 20, 50, ...
    below ``eval_every`` (:func:`early_steps`), for a curve read on a logarithmic step axis,
    where the first steps often hold most of the change.

    Failures: a step that ``guard`` (default :class:`DivergenceGuard`) refuses is undone (model,
    algorithm and data order restored to before it) and :class:`DivergenceError` is raised; no
    checkpoint is written, so the last good one stays. With ``out_dir``, SIGINT (Ctrl-C) and
    SIGTERM stop the run between two whole steps: it saves a checkpoint and raises
    :class:`TrainingInterrupted`; running again resumes bit for bit.

    Inside an initialised ``torch.distributed`` process group (torchrun) every process calls
    ``train`` with the same arguments: each takes its rows of every step
    (:mod:`ddchm.distributed`), rank 0 alone writes ``out_dir`` and runs ``evaluate``, and the
    decisions to stop (signals, budgets, divergence) are taken together.
    """
    steps = check_positive_int(steps, "steps", minimum=0)
    for name, value in (
        ("log_every", log_every),
        ("checkpoint_every", checkpoint_every),
        ("eval_every", eval_every),
    ):
        check_positive_int(value, name)
    for name, value in (
        ("max_seconds", max_seconds),
        ("max_cpu_seconds", max_cpu_seconds),
        ("eval_every_cpu_s", eval_every_cpu_s),
    ):
        if value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        ):
            raise ValueError(f"{name}: expected a number > 0 or None, got {value!r}")
    guard = DivergenceGuard() if guard is None else guard
    model = algorithm.model
    data = model.check_data(data, "data")
    batches = Minibatches(data, batch_size, seed)
    # data-parallel (ddchm.distributed): every rank draws the same batches, the algorithm
    # keeps its rows; rank 0 writes, every rank reads; rank 0 evaluates
    shard = distributed.shard_for(algorithm.device)
    algorithm.use_shard(shard, batches.batch_size)
    writer = shard.rank == 0
    evaluate = distributed.on_rank_zero(evaluate, shard)
    progress = progress and writer
    records: list[dict] = []
    start_step, elapsed, cpu_elapsed = 0, 0.0, 0.0
    out = Path(out_dir) if out_dir is not None else None

    with _stop_on_signals(enabled=out is not None) as interrupted:
        if out is not None:
            prepare_run_directory(out, probe_name=f".write-test{shard.rank}")
            if (out / CHECKPOINT).exists():
                state = load_checkpoint(out / CHECKPOINT)
                restore_state(out / CHECKPOINT, state, model, algorithm, batches)
                start_step, elapsed = state["step"], state["elapsed"]
                cpu_elapsed = float(state.get("cpu_elapsed", 0.0))
                records = _read_records(out / METRICS, upto=start_step)
            shard.barrier()  # every rank has read the run directory before rank 0 writes
            if writer:
                _write_records(out / METRICS, records)
        last_checkpoint = start_step if out is not None and (out / CHECKPOINT).exists() else None

        good = {}  # the state of the last checkpoint, in memory: what a refused step rolls back to

        def checkpoint(step):
            """Save (with out_dir) and remember the state as the last good one, if it is finite."""
            nonlocal last_checkpoint
            algorithm_state = algorithm.state_dict()
            problem = guard.check_state(algorithm_state)
            if problem is not None:
                rollback()
                diverged(step, problem, undone=False)
            state = {
                "model": model.state_dict(),
                "model_config": model.config(),
                "algorithm": algorithm_state,
                "algorithm_name": algorithm.name,
                "data_generator": batches.state_dict(),
                "step": step,
                "elapsed": elapsed,
                "cpu_elapsed": cpu_elapsed,
                **(extra_state or {}),
            }
            if out is not None:
                if writer:
                    save_checkpoint(out / CHECKPOINT, state)
                last_checkpoint = step
            good.clear()
            good.update(
                copy.deepcopy({k: state[k] for k in ("model", "algorithm", "data_generator")})
            )

        def rollback():
            if good:
                model.load_state_dict(good["model"])
                algorithm.load_state_dict(copy.deepcopy(good["algorithm"]))
                batches.load_state_dict(copy.deepcopy(good["data_generator"]))

        def log(record):
            records.append(record)
            if out is not None and writer:
                with open(out / METRICS, "a") as handle:
                    handle.write(json.dumps(record) + "\n")

        def diverged(step, problem, undone):
            kept = (
                f"the last checkpoint (step {last_checkpoint}) is intact"
                if last_checkpoint is not None
                else "no checkpoint was written"
            )
            what = "the step was not applied" if undone else "training stopped"
            raise DivergenceError(
                f"training diverged at step {step}: {problem}; {what} and {kept}. Try a lower "
                "learning rate (algorithm.lr), a smaller init_scale, or check the data; start a "
                "fresh run directory for the new settings.",
                step,
            )

        def out_of_budget():
            return (max_seconds is not None and elapsed >= max_seconds) or (
                max_cpu_seconds is not None and cpu_elapsed >= max_cpu_seconds
            )

        step = start_step
        early = early_steps(eval_every) if eval_early else frozenset()
        next_cpu_eval = (
            math.inf
            if eval_every_cpu_s is None
            else (math.floor(cpu_elapsed / eval_every_cpu_s) + 1) * eval_every_cpu_s
        )
        # a CPU-budgeted run's bar counts CPU seconds of the budget (its step cap is a guard
        # against runaways, often far off); the step count rides in the postfix
        by_cpu = max_cpu_seconds is not None
        look = {"disable": not progress, "desc": algorithm.name, "dynamic_ncols": True}
        if by_cpu:
            bar = cpu_budget_bar(max_cpu_seconds, cpu_elapsed, **look)
        else:
            bar = progress_bar(total=steps, initial=start_step, **look)
        shown: dict = {}  # the last record's figures in the bar
        try:
            if start_step == 0 and not records and evaluate is not None:
                log({"step": 0, "time": 0.0, "cpu_time": 0.0, **evaluate()})
            for record in records:  # the guard's reference: the best NLL so far
                guard.check_evaluation(record["step"], record)
            if out is None or last_checkpoint is None:
                checkpoint(step)  # a run always has a good state to fall back on
            else:  # resumed: the checkpoint just loaded is the last good state
                good.update(
                    copy.deepcopy(
                        {
                            "model": model.state_dict(),
                            "algorithm": algorithm.state_dict(),
                            "data_generator": batches.state_dict(),
                        }
                    )
                )
            while step < steps:
                stop, spent = shard.any(bool(interrupted), out_of_budget())
                if stop and not interrupted:  # a signal reached another rank: stop together
                    interrupted.append(signal.SIGTERM)
                if stop or spent:
                    break
                before = [p.detach().clone() for p in model.parameters()]
                tic, cpu_tic = time.perf_counter(), time.process_time()
                metrics = algorithm.step(batches.next())
                elapsed += time.perf_counter() - tic
                cpu_elapsed += time.process_time() - cpu_tic
                problem = guard.check_step(step + 1, model, metrics, before)
                if problem is not None:
                    rollback()
                    diverged(step + 1, problem, undone=True)
                step += 1
                if by_cpu:
                    bar.update(min(cpu_elapsed, max_cpu_seconds) - bar.n)
                    bar.set_postfix({"step": step, **shown}, refresh=False)
                else:
                    bar.update(1)
                record = None
                last = step == steps or shard.any(out_of_budget())[0]
                times = {"time": round(elapsed, 4), "cpu_time": round(cpu_elapsed, 4)}
                if step % log_every == 0 or last:
                    record = {"step": step, **times, **metrics}
                on_cpu_schedule = cpu_elapsed >= next_cpu_eval
                if shard.sharded and eval_every_cpu_s is not None:  # evaluate together
                    on_cpu_schedule = shard.any(on_cpu_schedule)[0]
                if on_cpu_schedule:
                    next_cpu_eval = (
                        math.floor(cpu_elapsed / eval_every_cpu_s) + 1
                    ) * eval_every_cpu_s
                scheduled = step % eval_every == 0 or step in early or last or on_cpu_schedule
                if evaluate is not None and scheduled:
                    record = {"step": step, **times, **metrics, **evaluate()}
                    problem = guard.check_evaluation(step, record)
                    if problem is not None:
                        log(record)
                        rollback()
                        diverged(step, problem, undone=False)
                if record is not None:
                    log(record)
                    shown = {
                        k: f"{v:.4g}" for k, v in list(record.items())[3:6] if isinstance(v, float)
                    }
                    bar.set_postfix({"step": step, **shown} if by_cpu else shown)
                if step % checkpoint_every == 0:
                    checkpoint(step)
        finally:
            bar.close()
        if interrupted:
            checkpoint(step)
            raise TrainingInterrupted(interrupted[0], step, out)
        checkpoint(step)
        return records


def early_steps(below: int) -> frozenset[int]:
    """1, 2, 5, 10, 20, 50, ... up to (not including) ``below``: evenly spaced on a log axis."""
    steps, decade = set(), 1
    while decade < below:
        steps.update(m * decade for m in (1, 2, 5) if m * decade < below)
        decade *= 10
    return frozenset(steps)


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
