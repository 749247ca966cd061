"""The paper's three settings in one command: ``ddchm reproduce {synthetic,patches,mnist,all}``.

Protocol (ours: the paper's own hyper-parameters are not published with it):

* **Settings.** synthetic: the ``sbn-easy``, ``sbn-hard``, ``sbn-gauss`` and ``mixed`` truths,
  a model of the truth's shape from small random weights; patches: a sparse-coding hierarchy
  Gaussian(10) -> Laplace(50, scale softplus(B z)) -> Gaussian(64) on 8x8 patches of the
  photographs bundled with scikit-image, each patch's mean removed, then ZCA-whitened;
  mnist: sigmoid belief nets with two (20-100-784) and three (10-50-100-784) latent layers on
  dynamically binarised MNIST (the offline 10,000-digit subset; remove the ``data.subset`` line in
  a copy of the config for full MNIST). Configs: ``src/ddchm/configs/reproduce/``.
* **Methods.** DDC-HM with the config's ``[algorithm]``; wake-sleep, RWS and VIMCO (and VAE and
  IWAE where every latent layer is continuous) with the same generative architecture, data,
  batch size, theta learning rate and recogniser trunk; every other hyper-parameter is the
  baseline's own default.
* **Matched compute.** Every run gets the same budget of CPU seconds of a one-thread process
  (``train.max_cpu_seconds``, measured with ``time.process_time()``: a shared machine stays
  fair); wall-clock is reported beside it. Seeds 0..N-1 pair the runs: for seed s every method
  starts from the same model initialisation and sees the same minibatches.
* **Metrics** (:func:`ddchm.evaluate.quality.model_quality`, on held-out data): exact
  log-likelihood where the latents can be enumerated, else AIS (``ais_points`` points,
  ``ais_chains`` chains x ``ais_steps`` temperatures; it needs only the generative model, so
  every method is measured alike) beside importance sampling with ``n_particles`` particles
  through a proposal fitted to the trained model (the same for every method; the baselines'
  own q too), with its effective sample sizes;
  MMD^2 between model samples and held-out data, its held-out-vs-train floor and permutation
  p-value; posterior accuracy on the enumerable truths. The learning curves are evaluated
  about ``CURVE_POINTS`` times over each run's CPU budget (exact NLL, else MMD^2) on the table's
  held-out points, so a curve's last point is its row's figure. Every run, and the true model,
  is measured on the same held-out points with the same random numbers. A
  run that diverges is recorded as such and the others go on. Run again with the same
  ``--out``, the runs resume from their checkpoints (a spent budget is not trained again) and
  are measured afresh.

Each setting writes ``OUT/SETTING/results.json``, ``table.md`` and figures.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ddchm.evaluate.plots import Y_LABELS, plot_learning_curves, plot_samples, save_figure
from ddchm.evaluate.quality import is_enumerable, model_quality
from ddchm.evaluate.report import format_mean_stderr, mean_stderr
from ddchm.experiment import ConfigError, load_config, run
from ddchm.threads import use_threads
from ddchm.train import DivergenceError

SETTINGS = {
    "synthetic": ("sbn-easy", "sbn-hard", "sbn-gauss", "mixed"),
    "patches": ("patches",),
    "mnist": ("mnist-sbn2", "mnist-sbn3"),
}
DISCRETE_BASELINES = ("ws", "rws", "vimco")
CONTINUOUS_BASELINES = ("vae", "iwae")  # need every latent layer reparameterisable
SHARED = ("lr", "hidden", "recognition_lr")  # what every method takes from the config
# DDC-HM beside its default, on the synthetic truths (whose default wake phase reads importance
# targets): the paper's amortised wake phase in the same machine, the paper preset, and the
# ablation that keeps the default's particles but drops the maps (docs/wake-phase.md)
DDC_VARIANTS = {
    "ddc-amortised": {"wake_encodings": "amortised"},
    "ddc-paper": {"preset": "paper"},
    "ddc-particles": {"wake_gradient": "particles"},
}

# evaluation sizes: (full, quick). The learning curves measure the same held-out points
# (``evaluate.points`` is set to ``n_points``, and the curves' MMD takes 1,000 points), so a
# curve's last point is its table row's figure.
EVALUATION = {
    "full": {
        "n_points": 500,
        "n_particles": 5000,
        "proposal_steps": 500,
        "proposal_samples": 500,
        "mmd_samples": 1000,
        "n_permutations": 100,
        "ais_chains": 16,
        "ais_steps": 200,
        "ais_points": 100,
    },
    "quick": {
        "n_points": 100,
        "n_particles": 20,
        "proposal_steps": 30,
        "proposal_samples": 200,
        "mmd_samples": 1000,  # the learning curves' MMD points (Evaluator): the same figure
        "n_permutations": 20,
        "ais_chains": 2,
        "ais_steps": 5,
        "ais_points": 10,
    },
}
CURVE_POINTS = 12  # learning-curve evaluations over a run's CPU budget
QUICK_CPU_SECONDS = 0.5


def config_path(name: str) -> Path:
    return Path(str(resources.files("ddchm") / "configs" / "reproduce" / f"{name}.toml"))


def methods_for(config: dict, model) -> list[str]:
    """DDC-HM (and on synthetic truths its variants), then every baseline that applies to the
    model's latent layers."""
    names = ["ddc"]
    if config["data"]["source"] == "synthetic":
        names += list(DDC_VARIANTS)
    names += list(DISCRETE_BASELINES)
    if all(not layer.discrete for layer in model.layers[1:]):
        names += list(CONTINUOUS_BASELINES)
    return names


def method_config(base: dict, method: str, seed: int, quick: bool) -> dict:
    config = json.loads(json.dumps(base))  # a deep copy of plain data
    if method in DDC_VARIANTS:
        config["algorithm"].update(DDC_VARIANTS[method])
    elif method != "ddc":
        shared = {k: base["algorithm"][k] for k in SHARED if k in base["algorithm"]}
        config["algorithm"] = {"name": method, **shared}
    config["train"]["seed"] = config["model"]["seed"] = seed
    # the curves' held-out points are the table's: one set of points per figure
    config["evaluate"]["points"] = EVALUATION["quick" if quick else "full"]["n_points"]
    if quick:
        config["train"]["max_cpu_seconds"] = QUICK_CPU_SECONDS
        config["train"]["eval_every"] = config["train"]["log_every"] = 10**9
        data = config["data"]
        if data["source"] in ("synthetic", "patches"):
            data.update(n_train=2000, n_valid=0, n_test=300)
    return load_config(config)


def run_one(config: dict, out_dir: Path, evaluation: dict, seed: int, progress: bool) -> dict:
    """Train one method with one seed and measure it; a divergence is recorded, not raised."""
    wall = time.perf_counter()
    try:
        result = run(config, out_dir=out_dir, progress=progress, curve_points=CURVE_POINTS)
    except DivergenceError as error:
        return {"status": "diverged", "message": str(error), "seed": seed}
    final = result["final"]
    model, data = result["model"], result["data"]
    # every run is measured with the same random numbers (held-out points, particles, MMD
    # permutations), as the true model is: differences between runs are then the models'
    quality = model_quality(
        model,
        data["test"],
        data["train"],
        result["algorithm"],
        importance=True,  # beside the exact value too: how tight each IS bound is
        seed=0,
        **_sizes(model, evaluation),
    )
    curve = [
        {k: r[k] for k in ("step", "time", "cpu_time", "test_nll", "mmd2") if k in r}
        for r in result["records"]
        if "test_nll" in r or "mmd2" in r
    ]
    phase = getattr(result["algorithm"], "wake_phase", None)
    return {
        "status": "ok",
        "seed": seed,
        **({} if phase is None else {"wake_phase": phase.name, "wake_decisions": phase.decisions}),
        "steps": final.get("step", 0),
        "train_cpu_s": final.get("cpu_time", 0.0),
        "train_wall_s": final.get("time", 0.0),
        "total_wall_s": time.perf_counter() - wall,
        **{k: final[k] for k in ("posterior_mae",) if k in final},
        **quality,
        "curve": curve,
        "samples": model.sample(64, generator=seed)[0].cpu().numpy().tolist(),
        "dictionary": _dictionary(model),
    }


def _sizes(model, evaluation: dict) -> dict:
    """The evaluation sizes for ``model``: no AIS where log p(x) can be enumerated."""
    return {**evaluation, "ais_chains": 0} if is_enumerable(model) else evaluation


def _dictionary(model):
    """The observation layer's weights (D_x, D_1) as a list, for the patches figure."""
    weight = getattr(model.observation, "weight", None)
    return None if weight is None else weight.detach().cpu().numpy().T.tolist()


def reference_quality(data: dict, evaluation: dict) -> dict | None:
    """The true model's figures on the same held-out points (synthetic truths only)."""
    truth = data.get("truth")
    if truth is None:
        return None
    sizes = _sizes(truth.model, evaluation)
    return model_quality(truth.model, data["test"], data["train"], importance=True, seed=0, **sizes)


def reproduce_experiment(
    name: str, out: Path, seeds: int, quick: bool, progress: bool, log=print, threads: int = 1
) -> dict:
    """Every method x seed on one config, each run with ``threads`` torch threads; returns
    {'name', 'budget', 'methods': {...}}."""
    from ddchm.experiment import build_data, build_model

    base = load_config(config_path(name))
    if quick:
        base = method_config(base, "ddc", 0, quick=True)
    data = build_data(base["data"])
    model = build_model(base["model"], data)
    evaluation = EVALUATION["quick" if quick else "full"]
    methods = {}
    for method in methods_for(base, model):
        methods[method] = []
        for seed in range(seeds):
            config = method_config(load_config(config_path(name)), method, seed, quick)
            config["train"]["threads"] = threads
            log(f"[{name}] {method} seed {seed}: {config['train']['max_cpu_seconds']} CPU s")
            record = run_one(config, out / name / f"{method}-seed{seed}", evaluation, seed, False)
            if record["status"] == "ok":
                log(
                    f"[{name}] {method} seed {seed}: {record['steps']} steps, "
                    f"{record['train_cpu_s']:.1f} CPU s ({record['train_wall_s']:.1f} s wall), "
                    f"log p(x) {_ll(record):.4f}, MMD^2 {record['mmd2']:.4g}"
                )
            else:
                log(f"[{name}] {method} seed {seed}: DIVERGED: {record['message'][:200]}")
            methods[method].append(record)
    budget = method_config(base, "ddc", 0, quick)["train"]["max_cpu_seconds"]
    return {
        "name": name,
        "description": _describe(base),
        "budget_cpu_s": budget,
        "evaluation": evaluation,
        "reference": reference_quality(data, evaluation),
        "data_samples": data["test"][:64].cpu().numpy().tolist(),
        "methods": methods,
    }


def _describe(config: dict) -> str:
    data = config["data"]
    if data["source"] == "synthetic":
        return f"synthetic truth `{data['name']}`, {data['n_train']} training points"
    if data["source"] == "patches":
        return (
            f"{data['n_train']} {data['patch_size']}x{data['patch_size']} patches, "
            f"whitening {data['whiten']}"
        )
    return f"binarised MNIST (subset {data['subset'] or 'full'})"


def _ll(record: dict) -> float:
    """The headline log p(x): exact, else AIS, else IS (``log_likelihood`` of model_quality)."""
    return record.get("log_likelihood", math.nan)


# --- tables and figures -----------------------------------------------------------------------
COLUMNS = (
    ("log p(x)", _ll),
    ("AIS − IS, same points", lambda r: r.get("ais_minus_is", math.nan)),
    ("IS fitted q", lambda r: r.get("is_ll_fitted", math.nan)),
    ("IS ESS median", lambda r: r.get("is_ll_fitted_ess_median", math.nan)),
    ("IS own q", lambda r: r.get("is_ll_own", math.nan)),
    ("MMD² ×10³", lambda r: 1e3 * r["mmd2"]),
    ("p < 0.05", None),  # seeds whose samples the permutation test tells from the data
    ("posterior MAE", lambda r: r.get("posterior_mae", math.nan)),
    ("steps", lambda r: r["steps"]),
    ("CPU s", lambda r: r["train_cpu_s"]),
    ("wall s", lambda r: r["train_wall_s"]),
)


WARNINGS = {  # the start of a model_quality warning -> its summary in a table's notes
    "AIS:": "AIS chains disagree (log w spread > 2 nats)",
    "IS through the fitted proposal:": "IS fitted q median ESS < 10",
    "IS through the own q:": "IS own q median ESS < 10",
}


def experiment_table(result: dict) -> str:
    """Markdown: one row per method, mean ± s.e. across seeds; diverged runs counted; the
    log-likelihood's estimator, protocol and cost in the notes."""
    reference = result.get("reference")
    records_ok = [r for rs in result["methods"].values() for r in rs if r["status"] == "ok"]
    first = reference or (records_ok[0] if records_ok else {})
    ll_kind = {
        "exact": "exact",
        "ais": "AIS",
        "is": "importance-sampled",
        "is_own": "importance-sampled (own q)",
    }.get(first.get("log_likelihood_estimator"), "–")
    header = "| method | seeds | " + " | ".join(name for name, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for method, records in result["methods"].items():
        ok = [r for r in records if r["status"] == "ok"]
        cells = []
        for name, get in COLUMNS:
            if get is None:
                flagged = sum(1 for r in ok if r.get("mmd_p_value", 1.0) < 0.05)
                cells.append(f"{flagged}/{len(ok)}" if ok else "–")
                continue
            mean, se, n = mean_stderr([get(r) for r in ok])
            cells.append(format_mean_stderr(mean, se) if n else "–")
        diverged = len(records) - len(ok)
        phases = sorted({r["wake_phase"] for r in ok if "wake_phase" in r})
        label = method + (f" [{'/'.join(phases)}]" if phases else "")
        label += f" ({diverged} diverged)" if diverged else ""
        lines.append(f"| {label} | {len(ok)}/{len(records)} | " + " | ".join(cells) + " |")
    if reference:
        floor = 1e3 * reference.get("mmd2_floor", math.nan)
        cells = []
        for name, get in COLUMNS:
            if get is None:
                cells.append(f"{int(reference.get('mmd_p_value', 1) < 0.05)}/1")
            elif name in ("log p(x)", "IS fitted q", "IS ESS median", "MMD² ×10³"):
                value = get(reference)
                cells.append(f"{value:.4f}" if math.isfinite(value) else "–")
            else:
                cells.append("–")
        lines.append("| true model | – | " + " | ".join(cells) + " |")
    else:
        floor = np.nanmean([1e3 * r.get("mmd2_floor", math.nan) for r in records_ok])
    cost = np.nanmean([r.get("eval_cpu_s", math.nan) for r in records_ok]) if records_ok else 0
    ais_cost = [r["ais_cpu_s"] / r["ais_points"] * 1000 for r in records_ok if "ais_cpu_s" in r]
    is_cost = [
        r["is_ll_fitted_cpu_s"] / r["n_points"] * 1000
        for r in records_ok
        if "is_ll_fitted_cpu_s" in r
    ]
    per_1000 = "".join(
        f"; {what} {np.mean(values):.0f} CPU s per 1,000 points"
        for what, values in (("AIS", ais_cost), ("IS", is_cost))
        if values
    )
    notes = (
        f"\nlog p(x): {ll_kind} log-likelihood of held-out data, nats per point (higher is "
        f"better); protocol: {first.get('protocol', '–')}. AIS − IS: the paired difference "
        "on the AIS points (both are lower bounds in expectation: the larger is the tighter; "
        "the IS column is on all the IS points). IS fitted q: importance sampling "
        "through a proposal fitted to each model the same way (a lower bound in expectation), "
        "with the median effective sample size of its weights; IS own q: through the "
        "method's own recognition model. "
        f"MMD² between model samples and held-out data (lower is better); held-out-vs-train "
        f"floor {floor:.3f} ×10⁻³. Budget {result['budget_cpu_s']:g} CPU s per run; the "
        f"evaluation took {cost:.0f} CPU s per run{per_1000}."
    )
    warned = []
    for method, records in result["methods"].items():
        ok = [r for r in records if r["status"] == "ok"]
        for kind, label in WARNINGS.items():
            n = sum(any(w.startswith(kind) for w in r.get("warnings", [])) for r in ok)
            if n:
                warned.append(f"{method}: {label} in {n}/{len(ok)} seeds")
    if warned:
        notes += " Warnings: " + "; ".join(warned) + "."
    return "\n".join(lines) + "\n" + notes


def write_figures(result: dict, out: Path) -> list[str]:
    """samples.png (data beside each method), curve.png (exact NLL, else MMD^2, against CPU
    time), dictionary.png (patches)."""
    names = []
    panels = {"held-out data": np.asarray(result["data_samples"])}
    for method, records in result["methods"].items():
        first = next((r for r in records if r["status"] == "ok"), None)
        if first is not None:
            panels[f"{method} (seed {first['seed']})"] = np.asarray(first["samples"])
    data = panels["held-out data"]
    square = math.isqrt(data.shape[1]) ** 2 == data.shape[1]
    title = "Samples"
    if not (data.min() >= 0 and data.max() <= 1):  # real values: one colour scale, the data's
        bound = float(np.abs(data).max())
        panels = {k: np.clip(v, -bound, bound) for k, v in panels.items()}
        title = f"Samples (colour scale clipped to the data's range, ±{bound:.3g})"
    fig = plot_samples(
        panels, image_shape="auto" if square else None, n=64 if square else 32, title=title
    )
    save_figure(fig, out / "samples.png")
    names.append("samples.png")
    for metric in ("test_nll", "mmd2"):  # exact NLL where enumerable, else MMD^2
        curves = {
            method: [
                {k: [p[k] for p in r["curve"] if metric in p] for k in ("cpu_time", metric)}
                for r in records
                if r["status"] == "ok" and sum(metric in p for p in r.get("curve", [])) > 1
            ]
            for method, records in result["methods"].items()
        }
        curves = {k: v for k, v in curves.items() if v}
        if curves:
            positive = all(v > 0 for cs in curves.values() for c in cs for v in c[metric])
            fig = plot_learning_curves(
                curves,
                metric,
                x_axes=("cpu_time",),
                ylabel=Y_LABELS[metric],
                log_y=metric == "mmd2" and positive,
            )
            save_figure(fig, out / "curve.png")
            names.append("curve.png")
            break
    if result["name"] == "patches":
        ddc = next((r for r in result["methods"].get("ddc", []) if r["status"] == "ok"), None)
        if ddc is not None and ddc.get("dictionary") is not None:
            atoms = np.asarray(ddc["dictionary"])  # (D_1, 64): each row one basis function
            atoms = atoms / (np.abs(atoms).max(1, keepdims=True) + 1e-12)
            fig = plot_samples(
                {"DDC-HM dictionary (columns of W, ZCA space)": atoms}, n=atoms.shape[0]
            )
            save_figure(fig, out / "dictionary.png")
            names.append("dictionary.png")
    return names


def reproduce(
    setting: str,
    out: Path,
    seeds: int = 3,
    quick: bool = False,
    progress: bool = False,
    log=print,
    threads: int = 1,
) -> dict[str, Path]:
    """Run a setting ('synthetic', 'patches', 'mnist' or 'all'); returns {setting: table path}.

    Torch gets ``threads`` threads (default one, so CPU seconds measure one core's work)."""
    if setting != "all" and setting not in SETTINGS:
        raise ValueError(f"setting: expected one of {[*SETTINGS, 'all']}, got {setting!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds: expected an integer >= 1, got {seeds!r}")
    threads = use_threads(threads)
    out = Path(out)
    written = {}
    for name in SETTINGS if setting == "all" else (setting,):
        tic, cpu = time.perf_counter(), time.process_time()
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        results = []
        for experiment in SETTINGS[name]:
            try:
                results.append(
                    reproduce_experiment(experiment, folder, seeds, quick, progress, log, threads)
                )
            except (FileNotFoundError, ConfigError, ImportError) as error:
                raise type(error)(f"reproduce {name}: {experiment}: {error}") from None
        sections = [
            f"# {name}: {'quick smoke run' if quick else 'reproduction'}",
            "",
            f"`ddchm reproduce {name}{' --quick' if quick else ''} --seeds {seeds}`, "
            f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {_threads(threads)}; "
            f"took {time.perf_counter() - tic:.0f} s wall, "
            f"{time.process_time() - cpu:.0f} CPU s.",
            "",
        ]
        for result in results:
            figures = write_figures(result, folder / result["name"])
            sections += [f"## {result['name']}: {result['description']}", ""]
            sections += [experiment_table(result), ""]
            sections += [f"![{f}]({result['name']}/{f})" for f in figures] + [""]
        table = folder / "table.md"
        table.write_text("\n".join(sections))
        slim = [
            {
                **r,
                "data_samples": None,
                "methods": {
                    m: [
                        {k: v for k, v in x.items() if k not in ("samples", "dictionary")}
                        for x in v
                    ]
                    for m, v in r["methods"].items()
                },
            }
            for r in results
        ]
        (folder / "results.json").write_text(json.dumps(slim, indent=1, default=float))
        log(f"[{name}] table in {table}")
        written[name] = table
    return written


def _threads(n: int) -> str:
    return "one thread" if n == 1 else f"{n} threads"
