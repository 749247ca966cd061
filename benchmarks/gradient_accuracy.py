"""How accurate is each algorithm's learning signal? (spec section 9; issues 3 and 4)

At a model that is not the truth (the truth with N(0, 0.5^2) added to every parameter), on 300
data points from the truth, compare with the exact gradient of mean log p(x) over all parameters:

- DDC wake gradient with oracle encodings r = exact E[T|x] (the representation's own error);
- DDC wake gradient with the learned recogniser, trained with theta fixed for a stated budget
  (``learned``: its r; ``learned_wake_phase``: the r a training step uses, with
  ``importance_encodings`` blended with importance-sampled targets);
- every baseline's expected theta-update, its own recognition trained with theta fixed
  (``--algorithms``; averaged over many draws).

Models: easy = sbn-easy (4-10-30, weights sd 2), hard = sbn-hard (4-10-8, sd 3), sbn-gauss
(hard's latents over 16 Gaussian observations), linear-gaussian (2-3-4, closed form), laplace
(laplace-chain, Gaussian(1) -> Laplace(1) -> Gaussian(2), quadrature). The learned recogniser
uses the library's default settings on every model (no per-model tuning); the protocol (theta
fixed, Adam decayed 2e-3 -> 2e-5 over the budget, 1,000 dreams a step) is the same for all.
Wide models, where nothing can be enumerated (``--models mnist-sbn2,mnist-sbn-200-200``: the
20-100-784 and 200-200-784 SBNs of ``src/ddchm/configs/reproduce/`` on the offline MNIST subset):
theta is taken from an RWS-5 run of ``--theta-cpu-s`` CPU seconds, and the reference is
:func:`~ddchm.evaluate.gradients.importance_gradient` with ``--reference-particles`` particles a
point from that run's trained q, on ``--wide-points`` held-out digits; a second, independent
reference gives ``reference_self_cosine`` (how sharp the reference is: a cosine above it cannot
be told from it). At that theta, ``oracle_cosine`` is DDC-HM's wake gradient with r = the
reference's own E[T | x] (the maps' error alone), ``learned_cosine`` with the recogniser's r
after ``--recognition-steps`` at theta fixed (maps and recognition), and ``update_cosine`` each
baseline's expected update with its own q fitted for as many steps.
Usage: python benchmarks/gradient_accuracy.py [--quick] [--algorithms ws,rws,vimco]
       python benchmarks/gradient_accuracy.py --models mnist-sbn2 --algorithms ws,rws,vimco
The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import tomllib

import torch

from ddchm.data import make_truth
from ddchm.ddc import DDCHelmholtzMachine, RidgeSolver, wake_gradient
from ddchm.ddc.wake import plug_in_points
from ddchm.evaluate.gradients import compare_gradients, oracle_encodings, perturbed_model
from ddchm.models import exact_reference

WIDE = {  # configs under src/ddchm/configs/reproduce/
    "mnist-sbn2": "mnist-sbn2.toml",
    "mnist-sbn-200-200": "mnist-sbn-200-200.toml",
}
MODELS = {
    "easy": "sbn-easy",
    "hard": "sbn-hard",
    "sbn-gauss": "sbn-gauss",
    "linear-gaussian": "linear-gaussian",
    "laplace": "laplace-chain",
}


def ddc_cosines(truth_name, args):
    truth = make_truth(truth_name)
    x = truth.splits(args.points, 0, 0, seed=7)["train"]
    model = perturbed_model(truth.model, 0.5, seed=1)
    exact = exact_reference(model)
    target = exact.expected_gradient(x)
    out = {}
    # (a) oracle encodings: the gradient maps' own error
    ddc = DDCHelmholtzMachine.from_options(
        model, n_features=[200, 50], ridge=args.oracle_ridge, generator=2
    )
    dreams = ddc.dream(args.map_samples)
    solvers = [None] + [RidgeSolver(f, args.oracle_ridge) for f in ddc.encode(dreams[1:])]
    r = [None] + oracle_encodings(exact, ddc.encodings, x)
    out["oracle"] = compare_gradients(wake_gradient(model, dreams, solvers, r, x), target)
    points = plug_in_points(ddc.encodings, r)
    out["oracle_plug_in"] = compare_gradients(
        wake_gradient(model, dreams, solvers, r, x, plug_in=points), target
    )
    # (b) learned recogniser, theta fixed; float32 as in training
    model32 = perturbed_model(truth.model, 0.5, seed=1).float()
    for label, whiten in (("learned", False), ("learned_whitened", True)):
        ddc = DDCHelmholtzMachine.from_options(
            model32,
            n_features=[200, 50],
            sleep_samples=1000,
            whiten=whiten,
            recognition_lr_final=2e-5,
            recognition_decay_steps=args.recognition_steps,
            generator=3,
            **args.overrides,
        )
        tic = time.perf_counter()
        # on dreams, and (wake recognition) on the data points, as in training
        ddc.fit_recognition(args.recognition_steps, data=x.float())
        seconds = time.perf_counter() - tic
        dreams = ddc.dream(args.map_samples)
        solvers = [None, *ddc.map_solvers(ddc.encode(dreams[1:]))]
        r = [None] + ddc.expected_encodings(x.float())
        estimate = wake_gradient(model32, dreams, solvers, r, x.float())
        out[label] = {**compare_gradients(estimate, target), "fit_seconds": round(seconds, 1)}
        if label == "learned":  # the r a training step takes (importance_encodings: blended)
            draws = torch.Generator().manual_seed(11)
            r = [None] + ddc.wake_phase_encodings(x.float(), generator=draws)
            estimate = wake_gradient(model32, dreams, solvers, r, x.float())
            out["learned_wake_phase"] = compare_gradients(estimate, target)
    return out, model, exact, x, target


def baseline_cosines(model, x, target, names, args):
    from ddchm.algorithms.update_estimate import expected_theta_update
    from ddchm.experiment import algorithm_class

    out = {}
    for name in names:
        cls = algorithm_class(name)
        kwargs = {"num_particles": args.particles} if name in ("rws", "vimco") else {}
        algorithm = cls(model, generator=4, **kwargs)
        tic = time.perf_counter()
        # ws learns q on dreams; the others learn it on the data points, as they would in training
        algorithm.fit_recognition(args.recognition_steps, data=None if name == "ws" else x)
        update = expected_theta_update(algorithm, x, args.draws)
        out[name] = {
            **compare_gradients(update, target),
            "seconds": round(time.perf_counter() - tic, 1),
        }
    return out


def wide_cosines(key, names, args):
    """Cosines to a many-particle importance reference at a theta learned by RWS-5."""
    import copy
    from importlib import resources

    from ddchm.algorithms.update_estimate import expected_theta_update
    from ddchm.evaluate.gradients import importance_gradient
    from ddchm.experiment import algorithm_class, load_config, run

    path = resources.files("ddchm") / "configs" / "reproduce" / WIDE[key]
    config = load_config(
        str(path),
        {
            "algorithm": {"name": "rws", "num_particles": 5, "lr": 0.005, "hidden": [200]},
            "train": {"max_cpu_seconds": args.theta_cpu_s, "log_every": 10**6},
        },
    )
    tic = time.process_time()
    result = run(config, progress=False)
    model, data = result["model"], result["data"]
    theta_cpu = time.process_time() - tic
    x = data["test"][: args.wide_points].float()
    train_rows = data["train"][:2000].float()
    out = {"theta_steps": result["final"]["step"], "theta_cpu_s": round(theta_cpu, 1)}

    ddc = DDCHelmholtzMachine.from_options(copy.deepcopy(model), generator=3, **args.overrides)
    statistics = list(ddc.encodings)
    tic = time.process_time()
    references = [
        importance_gradient(
            model,
            x,
            result["algorithm"].recognition,
            n_particles=args.reference_particles,
            particle_chunk=1000,
            statistics=statistics,
            generator=seed,
        )
        for seed in (0, 1)
    ]
    reference = references[0]
    out["reference_cpu_s"] = round(time.process_time() - tic, 1)
    out["reference_self_cosine"] = compare_gradients(references[1].gradient, reference.gradient)[
        "cosine"
    ]
    out["reference_ess_median"] = float(reference.ess.median())
    target = reference.gradient

    tic = time.process_time()
    ddc.fit_recognition(args.recognition_steps, data=train_rows)
    out["recognition_cpu_s"] = round(time.process_time() - tic, 1)
    dreams = ddc.dream(args.map_samples)
    solvers = [None, *ddc.map_solvers(ddc.encode(dreams[1:]))]
    oracle_r = [None] + [e.to(x.dtype) for e in reference.expectations]
    out["oracle"] = compare_gradients(
        wake_gradient(ddc.model, dreams, solvers, oracle_r, x), target
    )
    learned_r = [None] + ddc.expected_encodings(x)
    out["learned"] = compare_gradients(
        wake_gradient(ddc.model, dreams, solvers, learned_r, x), target
    )
    # the log-partition maps as corrections of a plug-in at the posterior means, or at draws
    # from Bernoulli(means) (the expected update over 20 draws) (wake.py)
    for name, r in (("oracle", oracle_r), ("learned", learned_r)):
        points = plug_in_points(ddc.encodings, r)
        out[f"{name}_plug_in"] = compare_gradients(
            wake_gradient(ddc.model, dreams, solvers, r, x, plug_in=points), target
        )
        draws, total = torch.Generator().manual_seed(12), None
        for _ in range(20):
            points = plug_in_points(ddc.encodings, r, generator=draws)
            update = wake_gradient(ddc.model, dreams, solvers, r, x, plug_in=points)
            total = update if total is None else {k: total[k] + v for k, v in update.items()}
        out[f"{name}_plug_in_sample"] = compare_gradients(total, target)
    out["recogniser_r2_on_reference"] = [
        float(1 - (r - t).pow(2).sum() / (t - t.mean(0)).pow(2).sum().clamp_min(1e-12))
        for r, t in zip(learned_r[1:], oracle_r[1:])
    ]
    # the maps' error against the number of random features K (r: the reference's E[T | x])
    sweep = {}
    for k in args.oracle_features:
        probe = DDCHelmholtzMachine.from_options(
            copy.deepcopy(model), generator=3, **{**args.overrides, "n_features": k}
        )
        expected = importance_gradient(
            model,
            x,
            result["algorithm"].recognition,
            n_particles=args.reference_particles,
            particle_chunk=1000,
            statistics=list(probe.encodings),
            generator=0,  # the same particles and weights as the reference
        ).expectations
        dreams_k = probe.dream(args.map_samples)
        solvers_k = [None, *probe.map_solvers(probe.encode(dreams_k[1:]))]
        r_k = [None] + [e.to(x.dtype) for e in expected]
        sweep[str(k)] = compare_gradients(
            wake_gradient(probe.model, dreams_k, solvers_k, r_k, x), target
        )["cosine"]
    out["oracle_cosine_by_features"] = sweep
    updates = {}
    for name in names:
        cls = algorithm_class(name)
        kwargs = {"num_particles": args.particles} if name in ("rws", "vimco") else {}
        algorithm = cls(copy.deepcopy(model), generator=4, hidden=(200,), **kwargs)
        algorithm.fit_recognition(args.recognition_steps, data=None if name == "ws" else train_rows)
        updates[name] = compare_gradients(expected_theta_update(algorithm, x, args.draws), target)
    out["updates"] = updates
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke test)")
    parser.add_argument("--algorithms", default="", help="baselines, e.g. ws,rws,vimco")
    parser.add_argument("--skip-ddc", action="store_true", help="only the baselines' updates")
    parser.add_argument("--models", default=",".join(MODELS), help=f"some of {','.join(MODELS)}")
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--map-samples", type=int, default=50_000)
    parser.add_argument("--recognition-steps", type=int, default=6000)
    parser.add_argument("--oracle-ridge", type=float, default=1e-6)
    parser.add_argument("--particles", type=int, default=10)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--theta-cpu-s", type=float, default=120.0, help="wide models: RWS-5 run")
    parser.add_argument("--reference-particles", type=int, default=10_000)
    parser.add_argument("--wide-points", type=int, default=100, help="wide models: test digits")
    parser.add_argument(
        "--oracle-features",
        type=lambda text: [int(v) for v in text.split(",") if v],
        default=[],
        help="wide models: also the oracle cosine with K random features a layer, e.g. 100,400",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DDCHelmholtzMachine argument of the learned runs (TOML value)",
    )
    args = parser.parse_args()
    args.overrides = tomllib.loads("\n".join(args.set))
    wide = [m for m in args.models.split(",") if m in WIDE]
    unknown = [m for m in args.models.split(",") if m not in WIDE and m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {[*MODELS, *WIDE]}")
    if args.quick:
        args.map_samples, args.recognition_steps, args.draws = 10_000, 500, 20
        args.theta_cpu_s, args.reference_particles, args.wide_points = 10.0, 1000, 20
    elif wide and args.recognition_steps == 6000:  # a wide model's step costs ~10x a small one's
        args.recognition_steps = 2000
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {
        "oracle_cosine": {},
        "oracle_rel_error": {},
        "learned_cosine": {},
        "learned_rel_error": {},
        "learned_whitened_cosine": {},
        "learned_wake_phase_cosine": {},
        "update_cosine": {},
    }
    names = [n for n in args.algorithms.split(",") if n]
    for key in args.models.split(","):
        if key in WIDE:
            torch.set_num_threads(1)
            wide_result = wide_cosines(key, names, args)
            result["oracle_cosine"][key] = round(wide_result["oracle"]["cosine"], 4)
            result["oracle_rel_error"][key] = round(wide_result["oracle"]["rel_error"], 4)
            result["learned_cosine"][key] = round(wide_result["learned"]["cosine"], 4)
            result.setdefault("plug_in_cosine", {})[key] = {
                name: round(wide_result[name]["cosine"], 4)
                for name in (
                    "oracle_plug_in",
                    "learned_plug_in",
                    "oracle_plug_in_sample",
                    "learned_plug_in_sample",
                )
            }
            result["learned_rel_error"][key] = round(wide_result["learned"]["rel_error"], 4)
            result["update_cosine"][key] = {
                "ddc": round(wide_result["learned"]["cosine"], 4),
                **{n: round(v["cosine"], 4) for n, v in wide_result["updates"].items()},
            }
            result.setdefault("reference", {})[key] = {
                k: wide_result[k]
                for k in (
                    "reference_self_cosine",
                    "reference_ess_median",
                    "reference_cpu_s",
                    "theta_steps",
                    "theta_cpu_s",
                    "recognition_cpu_s",
                    "recogniser_r2_on_reference",
                    "oracle_cosine_by_features",
                )
            }
            print(f"{key}: {json.dumps(wide_result)}", flush=True)
            continue
        truth_name = MODELS[key]
        if args.skip_ddc:
            truth = make_truth(truth_name)
            x = truth.splits(args.points, 0, 0, seed=7)["train"]
            model = perturbed_model(truth.model, 0.5, seed=1)
            target = exact_reference(model).expected_gradient(x)
            update = baseline_cosines(model.float(), x.float(), target, names, args)
            result["update_cosine"][key] = {n: round(v["cosine"], 4) for n, v in update.items()}
            print(f"{key}: update cosines {update}", flush=True)
            continue
        ddc, model, exact, x, target = ddc_cosines(truth_name, args)
        result["oracle_cosine"][key] = round(ddc["oracle"]["cosine"], 4)
        result["oracle_rel_error"][key] = round(ddc["oracle"]["rel_error"], 4)
        result["learned_cosine"][key] = round(ddc["learned"]["cosine"], 4)
        result["learned_rel_error"][key] = round(ddc["learned"]["rel_error"], 4)
        result["learned_whitened_cosine"][key] = round(ddc["learned_whitened"]["cosine"], 4)
        result["learned_wake_phase_cosine"][key] = round(ddc["learned_wake_phase"]["cosine"], 4)
        update = {"ddc": round(ddc["learned"]["cosine"], 4)}
        for name, values in baseline_cosines(model.float(), x.float(), target, names, args).items():
            update[name] = round(values["cosine"], 4)
        result["update_cosine"][key] = update
        print(f"{key}: {json.dumps(ddc)}", flush=True)
        print(f"{key}: update cosines {update}", flush=True)
    result["settings"] = {k: v for k, v in vars(args).items()}
    result["machine"] = (
        f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
