"""Experiments from a config: data, model, algorithm, training and evaluation, all by name.

A config is a TOML file (or dict) with the sections below. Unknown sections or keys are errors
that name the key, because a misspelt hyper-parameter that is silently ignored wastes a run::

    [data]       source = "synthetic" | "array" | "mnist" | "patches", and its options
    [model]      layers (top first) or architecture = "truth"; init_scale; seed; dtype
    [algorithm]  name = "ddc" | "ws" | "rws" | "vimco" | "vae" | "iwae", then its own arguments
    [train]      steps, batch_size, seed, log_every, eval_every, eval_early, checkpoint_every,
                 max_seconds (wall-clock budget), max_cpu_seconds (CPU-time budget), device,
                 threads (torch's CPU threads per process; default $OMP_NUM_THREADS, else 1)
    [evaluate]   points (the held-out protocol: how many test points every log-likelihood
                 and MMD of the run uses, in training, in its summary and in `ddchm evaluate`),
                 posterior_points

Relative paths in a config file (``data.path``) are read from the file's folder, so a config
works from any directory; a config given as a dict reads them from the working directory. The
config a run records (``config.toml`` in its directory, and in the checkpoint) holds them
absolute.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ddchm.config_schema import (
    SCHEMA,
    ConfigError,
    check_algorithm_arguments,
    choice,
    did_you_mean,
)
from ddchm.models import HierarchicalModel, exact_reference

DEFAULTS = {
    "data": {
        "source": "synthetic",
        "name": "sbn-hard",
        "n_train": 10_000,
        "n_valid": 1_000,
        "n_test": 1_000,
        "seed": 1,
        "path": None,
        "key": None,
        "binarize": "dynamic",
        "subset": None,
        "patch_size": 8,
        "whiten": None,
        "n_components": None,
    },
    "model": {
        "architecture": "truth",
        "layers": None,
        "init_scale": 0.1,
        "seed": 0,
        "dtype": "float32",
    },
    "algorithm": {"name": "ddc"},
    "train": {
        "steps": 2000,
        "batch_size": 100,
        "seed": 0,
        "log_every": 50,
        "eval_every": 500,
        "eval_early": False,  # also at steps 1, 2, 5, 10, 20, 50, ... below eval_every
        "checkpoint_every": 500,
        "max_seconds": None,
        "max_cpu_seconds": None,
        "device": "auto",
        "threads": None,  # torch CPU threads; None: $OMP_NUM_THREADS, else 1 (ddchm.threads)
    },
    "evaluate": {"points": 500, "posterior_points": 500},
}

RUN_CONFIG = "config.toml"  # beside checkpoint.pt in a run directory

# name -> "module:Class"; imported on demand so a missing optional piece fails only when used
ALGORITHMS = {
    "ddc": "ddchm.ddc.machine:DDCHelmholtzMachine",
    "ws": "ddchm.algorithms.wake_sleep:WakeSleep",
    "rws": "ddchm.algorithms.rws:ReweightedWakeSleep",
    "vimco": "ddchm.algorithms.vimco:VIMCO",
    "vae": "ddchm.algorithms.vae:VAE",
    "iwae": "ddchm.algorithms.iwae:IWAE",
}


def algorithm_class(name: str):
    try:
        module, cls = ALGORITHMS[name].split(":")
    except (KeyError, TypeError):
        raise ConfigError(
            f"algorithm.name: unknown algorithm {name!r}{did_you_mean(name, ALGORITHMS)}; "
            f"expected one of {sorted(ALGORITHMS)}"
        ) from None
    return getattr(importlib.import_module(module), cls)


def default_config_path() -> Path:
    return Path(str(resources.files("ddchm") / "configs" / "default.toml"))


def load_config(source: str | Path | dict | None = None, overrides: dict | None = None) -> dict:
    """Read a config (path, dict or None for the embedded default), fill defaults, check keys."""
    if source is None:
        source = default_config_path()
    if isinstance(source, dict):
        raw = copy.deepcopy(source)
        origin = "config"
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: config file not found")
        if not path.is_file():
            raise ConfigError(f"{path}: is a directory, expected a TOML config file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file; expected a TOML config") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
        origin = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a table of sections, got {type(raw).__name__}")
    for section, values in (overrides or {}).items():
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        raw[section].update(values)
    config = {}
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(
                f"{origin}: unknown section [{section}]{did_you_mean(section, DEFAULTS)}; "
                f"expected {sorted(DEFAULTS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        if section != "algorithm":
            unknown = sorted(set(values) - set(DEFAULTS[section]), key=str)
            if unknown:
                raise ConfigError(
                    f"{origin}: unknown key(s) {unknown} in [{section}]"
                    f"{did_you_mean(unknown[0], DEFAULTS[section])}; "
                    f"expected some of {sorted(DEFAULTS[section])}"
                )
    model_section = raw.get("model", {})
    if (
        origin != "config"  # a resolved config (a dict) holds both, the default architecture
        and model_section.get("layers") is not None
        and "architecture" in model_section
    ):
        raise ConfigError(
            f"{origin}: [model] gives both layers and architecture; give one (layers for your "
            "own architecture, architecture = 'truth' for the synthetic truth's)"
        )
    for section, defaults in DEFAULTS.items():
        config[section] = {**defaults, **raw.get(section, {})}
    base = Path(origin).parent if origin != "config" else Path.cwd()
    if isinstance(config["data"]["path"], str) and config["data"]["path"]:
        # a run directory stands alone: the path it records is absolute, found from anywhere
        config["data"]["path"] = str((base / Path(config["data"]["path"]).expanduser()).resolve())
    try:
        for section, checks in SCHEMA.items():
            for key, check in checks.items():
                config[section][key] = check(config[section][key], f"{section}.{key}")
        data = config["data"]
        if data["source"] == "synthetic":
            from ddchm.data.synthetic import TRUTHS

            choice(*TRUTHS)(data["name"], "data.name")
        _check_algorithm_arguments(config["algorithm"], origin)
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None
    return config


def keyword_arguments(cls) -> set[str]:
    """The keyword-only arguments ``cls(...)`` accepts: its constructor's, and those of each
    base class its constructor forwards ``**kwargs`` to."""
    if hasattr(cls, "option_defaults"):  # options in groups, given by their flat names
        return set(cls.option_defaults())
    allowed = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        allowed |= {p.name for p in parameters if p.kind == p.KEYWORD_ONLY}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return allowed


def _check_algorithm_arguments(section: dict, origin: str) -> None:
    cls = algorithm_class(section["name"])
    allowed = keyword_arguments(cls) - {"generator"}  # the run's train.seed seeds it
    unknown = sorted(set(section) - allowed - {"name"}, key=str)
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {unknown} for algorithm {section['name']!r}"
            f"{did_you_mean(unknown[0], allowed)}; it takes {sorted(allowed)}"
        )
    check_algorithm_arguments(section, cls, allowed)


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N', checked to exist; 'mps' is
    refused with the reason."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "mps":
        raise ConfigError(
            "train.device: 'mps' is not supported: the gradient maps and the ridge readout "
            "solve in float64, which MPS does not provide; use 'cpu' or 'cuda'"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device: {name!r} asked for, but torch sees no CUDA GPU "
                "(torch.cuda.is_available() is False); use 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device: {name!r} asked for, but there are only "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


# --- data --------------------------------------------------------------------------------------
def build_data(section: dict) -> dict:
    """{'train', 'valid', 'test': float64 tensors, 'truth': SyntheticTruth or None}."""
    source = section["source"]
    if source == "synthetic":
        from ddchm.data import make_truth

        truth = make_truth(section["name"])
        splits = truth.splits(
            section["n_train"], section["n_valid"], section["n_test"], seed=section["seed"]
        )
        return {**splits, "truth": truth}
    if source == "array":
        from ddchm.data.arrays import load_array, split_train_valid_test

        if section["path"] is None:
            raise ConfigError("data.path: the 'array' source needs a file (.npy, .npz, .csv)")
        array = load_array(section["path"], key=section["key"], dtype=np.float64)
        splits = split_train_valid_test(array, seed=section["seed"])
        if min(part.shape[0] for part in splits.values()) == 0:
            raise ConfigError(
                f"data.path: {section['path']} has {array.shape[0]} rows; the 80/10/10 "
                "train/valid/test split needs at least 10"
            )
        return {
            **{split: torch.as_tensor(part) for split, part in splits.items()},
            "truth": None,
        }
    if source == "mnist":
        from ddchm.data.mnist import load_mnist

        out = {}
        for split in ("train", "valid", "test"):
            images = load_mnist(
                split, binarize=section["binarize"], seed=section["seed"], subset=section["subset"]
            )
            out[split] = torch.as_tensor(images, dtype=torch.float64)
        return {**out, "truth": None}
    if source == "patches":
        from ddchm.data.patches import image_patches

        n = section["n_train"] + section["n_valid"] + section["n_test"]
        patches, _ = image_patches(
            n,
            patch_size=section["patch_size"],
            whiten=section["whiten"],
            n_components=section["n_components"],
            seed=section["seed"],
        )
        patches = torch.as_tensor(patches, dtype=torch.float64)
        a, b = section["n_train"], section["n_train"] + section["n_valid"]
        return {"train": patches[:a], "valid": patches[a:b], "test": patches[b:], "truth": None}
    raise ConfigError(
        f"data.source: unknown source {source!r}; expected 'synthetic', 'array', 'mnist' "
        "or 'patches'"
    )


def build_model(section: dict, data: dict) -> HierarchicalModel:
    """A model of the configured architecture from small random weights (seeded)."""
    torch.manual_seed(section["seed"])  # layer initialisation draws from the global generator
    if section["layers"] is not None:
        layers = [dict(entry) for entry in section["layers"]]
    elif section["architecture"] == "truth" and data.get("truth") is not None:
        layers = data["truth"].model.config()
    else:
        raise ConfigError(
            "model.layers: give the layers (top first), e.g. [{family='bernoulli', dim=10}, ...]; "
            "architecture='truth' only works with synthetic data"
        )
    for entry in layers:
        if "init_scale" not in entry and entry.get("family") in (
            "bernoulli",
            "gaussian",
            "laplace",
        ):
            entry["init_scale"] = section["init_scale"]
    model = HierarchicalModel.from_config(layers)
    if model.data_dim != data["train"].shape[1]:
        raise ConfigError(
            f"model.layers: the bottom layer has {model.data_dim} units but the data has "
            f"{data['train'].shape[1]} columns"
        )
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(section["dtype"])
    if dtype is None:
        raise ConfigError(f"model.dtype: expected 'float32' or 'float64', got {section['dtype']!r}")
    return model.to(dtype)


def build_algorithm(section: dict, model: HierarchicalModel, seed: int):
    arguments = {k: v for k, v in section.items() if k != "name"}
    for key in ("hidden", "n_features"):
        if isinstance(arguments.get(key), list):
            arguments[key] = tuple(arguments[key])
    try:
        cls = algorithm_class(section["name"])
        build = getattr(cls, "from_options", cls)
        return build(model, generator=seed, **arguments)
    except (ValueError, TypeError) as error:  # the constructor's own checks name the argument
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"[algorithm] {section['name']}: {error}") from None


# --- evaluation ----------------------------------------------------------------------------
class Evaluator:
    """What a run reports as it learns, on the run's held-out protocol (the points
    :func:`~ddchm.evaluate.quality.heldout_sets` draws from the test split, the same that the
    summary of ``ddchm train`` and ``ddchm evaluate`` measure). Enumerable models: exact test
    NLL on ``points`` held-out points, its gap to the true model (on the same points), and
    posterior accuracy (the algorithm's E[z|x] against the current model's exact posterior
    means, mean absolute error over units and the first ``posterior_points`` test points).
    Other models: ``mmd2`` (:class:`~ddchm.evaluate.quality.HeldOutMMD`, ``mmd_samples``
    points). Each result names its points under ``heldout``."""

    def __init__(
        self,
        model,
        algorithm,
        data: dict,
        posterior_points: int = 500,
        points: int = 500,
        mmd_samples: int = 1000,
    ):
        from ddchm.evaluate.quality import heldout_description, heldout_sets

        self.model, self.algorithm = model, algorithm
        test = data["test"].to(next(model.parameters()))
        self.test, mmd_x = heldout_sets(test, points, mmd_samples, seed=0)
        self.heldout = heldout_description(points, test.shape[0])
        self.posterior_x = test[:posterior_points]
        self.truth_nll = None
        truth = data.get("truth")
        if truth is not None and truth.enumerable:
            with torch.no_grad():
                self.truth_nll = float(
                    -exact_reference(truth.model).log_marginal(self.test.double()).mean()
                )
        latents = model.layers[1:]
        self.enumerable = (
            all(layer.discrete for layer in latents) and sum(layer.dim for layer in latents) <= 24
        ) or (truth is not None and truth.enumerable and truth.model.config() == model.config())
        self.mmd = None
        if not self.enumerable:
            from ddchm.evaluate.quality import HeldOutMMD

            try:
                self.mmd = HeldOutMMD(mmd_x)
            except ValueError:  # fewer than 2 distinct held-out points: no MMD to report
                self.mmd = None

    @torch.no_grad()
    def __call__(self) -> dict:
        out = {}
        if self.enumerable:
            exact = exact_reference(self.model.double())
            try:
                out["test_nll"] = float(-exact.log_marginal(self.test.double()).mean())
                if self.truth_nll is not None:
                    out["nll_gap"] = out["test_nll"] - self.truth_nll
                exact_means = exact.posterior_means(self.posterior_x.double())
            finally:
                self.model.to(self.test.dtype)
            estimated = self.algorithm.posterior_means(self.posterior_x)
            errors = [(e.double() - m).abs().mean() for e, m in zip(estimated, exact_means)]
            out["posterior_mae"] = float(torch.stack(errors).mean())
        elif self.mmd is not None:
            samples = self.mmd.samples(self.model)
            if bool(torch.isfinite(samples).all()):
                out["mmd2"] = self.mmd.compare(samples).mmd2
        if out:
            out["heldout"] = self.heldout
        return out


# may differ between a run and its resumption: how long and how often, not what is learned
RESUMABLE = {
    "train": {
        "steps",
        "log_every",
        "eval_every",
        "eval_early",
        "checkpoint_every",
        "max_seconds",
        "max_cpu_seconds",
        "device",
        "threads",
    },
    "evaluate": {"posterior_points"},  # not evaluate.points: one held-out protocol per run
}


def config_differences(saved: dict, config: dict) -> list[str]:
    """'section.key: saved -> new' for each setting that changes what a resumed run learns."""

    def plain(value):  # TOML gives lists, the Python API may give tuples
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    out = []
    for section in sorted(set(saved) | set(config)):
        old, new = saved.get(section, {}), config.get(section, {})
        for key in sorted(set(old) | set(new)):
            if key in RESUMABLE.get(section, ()):
                continue
            a, b = plain(old.get(key, "(unset)")), plain(new.get(key, "(unset)"))
            if (section, key) == ("data", "path") and isinstance(a, str) and isinstance(b, str):
                a, b = str(Path(a).resolve()), str(Path(b).resolve())  # older runs: relative
            if a != b:
                out.append(f"{section}.{key}: {a!r} -> {b!r}")
    return out


def data_fingerprint(data: dict) -> dict:
    """{split: {'shape': [...], 'sha256': hex}} of the train, valid and test splits (their
    float64 values, row-major): what a resumed run must train on again."""
    out = {}
    for split in ("train", "valid", "test"):
        tensor = data.get(split)
        if isinstance(tensor, torch.Tensor):
            values = np.ascontiguousarray(tensor.detach().cpu().double().numpy())
            out[split] = {
                "shape": list(values.shape),
                "sha256": hashlib.sha256(values.tobytes()).hexdigest(),
            }
    return out


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """'split: shape ... -> ..., SHA-256 ... -> ...' for each split whose data changed."""
    out = []
    for split in sorted(set(saved) | set(current)):
        old, new = saved.get(split, {}), current.get(split, {})
        if old == new:
            continue
        parts = []
        if old.get("shape") != new.get("shape"):
            parts.append(f"shape {old.get('shape')} -> {new.get('shape')}")
        parts.append(
            f"SHA-256 {str(old.get('sha256', '(none)'))[:12]}... -> "
            f"{str(new.get('sha256', '(none)'))[:12]}..."
        )
        out.append(f"{split} split: {', '.join(parts)}")
    return out


def check_resume(out_dir: str | Path, config: dict, data: dict | None = None) -> dict | None:
    """Refuse to resume a run directory whose checkpoint was made with other hyper-parameters
    (the optimiser would keep the old ones while the checkpoint recorded the new) or, given
    ``data``, on other data (the learning curve would mix two data sets): a
    :class:`ConfigError` lists each difference. Returns the checkpoint (None: there is none)."""
    from ddchm.train import CHECKPOINT, load_checkpoint

    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    saved = state.get("config")
    if isinstance(saved, dict):  # a checkpoint written by the Python API may hold none
        changed = config_differences(saved, config)
        if changed:
            raise ConfigError(
                f"{path}: this run was made with a different config, so it cannot be resumed "
                f"with this one ({'; '.join(changed)}). Use the original settings to resume, or "
                "another run directory (--out) for the new ones. Only train.steps, log_every, "
                "eval_every, eval_early, checkpoint_every, max_seconds, max_cpu_seconds, device, "
                "threads and "
                "evaluate.posterior_points may change on resuming."
            )
    if data is not None:
        check_same_data(path, state, data_fingerprint(data), config, RESUMING)
    return state


# check_same_data's (since when, what the change would do), on resuming and on loading a run
RESUMING = (
    "since this run was checkpointed",
    "resuming would mix two data sets in one run. Restore the original data to resume, or "
    "train on the new data in another run directory (--out).",
)
EVALUATING = (
    "since this run",
    "its model would be measured on other data; restore the original data",
)


def check_same_data(path: Path, state: dict, fingerprint: dict, config: dict, why) -> None:
    """ConfigError naming each split whose data differ from the fingerprint the checkpoint
    ``state`` recorded (nothing to check in a checkpoint without one). ``why``: (since when,
    what the change would do), :data:`RESUMING` or :data:`EVALUATING`."""
    saved = state.get("data_fingerprint")
    if not isinstance(saved, dict):
        return
    changed = fingerprint_differences(saved, fingerprint)
    if changed:
        since, consequence = why
        where = config.get("data", {}).get("path") or config.get("data", {}).get("source")
        raise ConfigError(
            f"{path}: the data changed {since} ({'; '.join(changed)}; data: {where}), so "
            f"{consequence}"
        )


def check_batch_size(batch_size: int, train: torch.Tensor) -> None:
    """ConfigError when a minibatch would need more rows than the training split has."""
    if batch_size > train.shape[0]:
        raise ConfigError(
            f"train.batch_size: {batch_size} is more than the {train.shape[0]} training points; "
            f"use at most {train.shape[0]} (or more data)"
        )


def write_run_config(out_dir: str | Path, config: dict) -> Path:
    """Write ``config.toml`` (the resolved config, data paths absolute) into the run
    directory, atomically; ``ddchm train OUT/config.toml`` repeats the run."""
    import tomli_w

    def plain(value):  # TOML has no null (an unset key takes its default) and no tuple
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    config = copy.deepcopy(config)
    if config["model"].get("layers") is not None:  # the layers say it all; both are refused
        config["model"].pop("architecture", None)
    path = Path(out_dir) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = "# the resolved config of this run, written by ddchm; unset keys take defaults\n"
    tmp.write_text(header + tomli_w.dumps(plain(config)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def run(
    config: dict,
    out_dir: str | Path | None = None,
    progress: bool = True,
    curve_points: int | None = None,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Train as configured; returns {'records', 'final', 'model', 'algorithm', 'data'}.

    ``say(line)`` (optional) hears 'resuming OUT from step N of M' once the checkpoint in
    ``out_dir`` has passed the config and data checks.

    An ``out_dir`` holding a checkpoint is resumed if its saved config matches (see
    :func:`check_resume`). ``curve_points``: with a CPU-time budget (``train.max_cpu_seconds``),
    also evaluate every budget / ``curve_points`` CPU seconds, so the learning curve has at
    least that many points besides the start, whatever ``train.eval_every``."""
    from ddchm.threads import use_threads

    use_threads(config["train"]["threads"])  # per process, under torchrun too
    device = resolve_device(config["train"]["device"])
    from ddchm import distributed  # torchrun: join the group; on CUDA, this rank's device

    device = distributed.init_from_env(device)
    # the config is checked before the data are built (a config error is cheap), the data after
    resumed = check_resume(out_dir, config) if out_dir is not None else None
    data = build_data(config["data"])
    check_batch_size(config["train"]["batch_size"], data["train"])
    fingerprint = data_fingerprint(data)
    if out_dir is not None:
        from ddchm.train import CHECKPOINT, prepare_run_directory

        if resumed is not None:
            check_same_data(Path(out_dir) / CHECKPOINT, resumed, fingerprint, config, RESUMING)
        lead = distributed.rank() == 0  # under torchrun, one process writes and speaks
        prepare_run_directory(Path(out_dir), probe_name=f".write-test{distributed.rank()}")
        if lead:
            write_run_config(out_dir, config)
        if lead and say is not None and resumed is not None:
            say(f"resuming {out_dir} from step {resumed['step']} of {config['train']['steps']}")
    model = build_model(config["model"], data).to(device)
    algorithm = build_algorithm(config["algorithm"], model, config["train"]["seed"])
    evaluator = Evaluator(
        model,
        algorithm,
        data,
        config["evaluate"]["posterior_points"],
        points=config["evaluate"]["points"],
    )
    from ddchm.train import train

    train_cfg = config["train"]
    records = train(
        algorithm,
        data["train"],
        steps=train_cfg["steps"],
        batch_size=train_cfg["batch_size"],
        seed=train_cfg["seed"],
        out_dir=out_dir,
        log_every=train_cfg["log_every"],
        checkpoint_every=train_cfg["checkpoint_every"],
        evaluate=evaluator,
        eval_every=train_cfg["eval_every"],
        eval_early=train_cfg["eval_early"],
        progress=progress,
        extra_state={"config": config, "data_fingerprint": fingerprint},
        max_seconds=train_cfg["max_seconds"],
        max_cpu_seconds=train_cfg["max_cpu_seconds"],
        eval_every_cpu_s=(
            train_cfg["max_cpu_seconds"] / curve_points
            if curve_points and train_cfg["max_cpu_seconds"]
            else None
        ),
    )
    rank = distributed.rank()
    distributed.finish()  # the group init_from_env started, if any
    final = records[-1] if records else {}
    return {
        "records": records,
        "final": final,
        "model": model,
        "algorithm": algorithm,
        "data": data,
        "truth_nll": evaluator.truth_nll,
        "rank": rank,  # data-parallel: only rank 0 reports and writes figures
    }


def check_run_config(run_dir: Path, saved: dict) -> None:
    """ConfigError naming each setting in which ``run_dir``'s ``config.toml`` differs from the
    config its checkpoint recorded (``saved``), leaving out those that may change on resuming
    (:data:`RESUMABLE`). A run is loaded with the checkpoint's config; an edited config.toml
    would otherwise be ignored without a word. Nothing to check without a config.toml."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return
    written = load_config(path)
    filled = {
        section: {**DEFAULTS.get(section, {}), **values}  # older checkpoints lack newer keys
        for section, values in saved.items()
        if isinstance(values, dict)
    }
    changed = config_differences(filled, written)
    if changed:
        raise ConfigError(
            f"{path}: differs from the config the run's checkpoint was trained with "
            f"({'; '.join(changed)}; checkpoint -> config.toml); the run is measured with the "
            "checkpoint's, so restore config.toml, or train the new settings in another run "
            "directory (ddchm train CONFIG --out NEW)"
        )


# --- a run directory, back in Python --------------------------------------------------------
@dataclass
class Run:
    """A trained run, loaded from its directory by :func:`load_run`.

    ``model`` and ``algorithm`` are in the state of the checkpoint (``step`` steps trained);
    ``data`` holds the train / valid / test splits the run trained and was measured on (and
    ``truth`` for synthetic data); ``records`` the logged metrics up to ``step``; ``config`` the
    resolved config; ``checkpoint`` the rest of the checkpoint (elapsed and CPU time, ...).
    """

    path: Path
    config: dict
    model: HierarchicalModel
    algorithm: object
    data: dict
    step: int
    records: list[dict]
    checkpoint: dict


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Load a run directory written by ``ddchm train`` (or :func:`run` with ``out_dir``): its
    data rebuilt from the recorded config (checked against the fingerprint the run recorded),
    its model and algorithm restored from ``checkpoint.pt``. Works from any directory.

    Raises FileNotFoundError (no checkpoint there), CheckpointError (damaged, unsafe, or
    written without a config) or ConfigError (the data changed since the run, or the run's
    ``config.toml`` no longer says what its checkpoint was trained with: :func:`check_run_config`).
    """
    from ddchm.train import (
        CHECKPOINT,
        CheckpointError,
        load_checkpoint,
        read_metrics,
        restore_state,
    )

    path = Path(run_dir)
    if not (path / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{path}: no {CHECKPOINT} here; is it a ddchm run directory?")
    state = load_checkpoint(path / CHECKPOINT)
    config = state.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path / CHECKPOINT}: holds no config (written by the Python API's train()?), so "
            "its data cannot be rebuilt; train it with `ddchm train CONFIG` or "
            "ddchm.experiment.run(config, out_dir)"
        )
    check_run_config(path, config)
    data = build_data(config["data"])
    check_same_data(path, state, data_fingerprint(data), config, EVALUATING)
    model = build_model(config["model"], data)
    algorithm = build_algorithm(config["algorithm"], model, config["train"]["seed"])
    restore_state(path / CHECKPOINT, state, model, algorithm)
    model.to(resolve_device(device))
    records = [r for r in read_metrics(path) if r.get("step", 0) <= state["step"]]
    rest = {k: v for k, v in state.items() if k not in ("model", "algorithm", "config")}
    return Run(path, config, model, algorithm, data, state["step"], records, rest)
