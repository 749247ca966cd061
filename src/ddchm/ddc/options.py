"""The DDC Helmholtz machine's options: four small groups, two presets, one flat spelling.

Each group is a frozen dataclass whose fields are the options of one part of the machine:

- :class:`EncodingOptions`: the random encodings T_l (eq 4) and their recalibration;
- :class:`MapOptions`: the ridge levels of the gradient maps (section 3b);
- :class:`RecogniserOptions`: the recogniser r(x) (eq 7), its readout and its schedule;
- :class:`WakeOptions`: which expected encodings the wake phase uses and how its targets are
  drawn (docs/wake-phase.md).

A field left ``None`` has a default that depends on the model; :func:`resolve` fills it in and
says why (the reasons are logged by ``ddchm train``). Configs and ``DDCHelmholtzMachine.
from_options`` spell the options flat (``ridge = 1e-3`` rather than ``maps.ridge``): every
field name is unique across the groups.

Presets: ``"default"`` is the library's tuned machine; ``"paper"`` is the algorithm as the
paper states it (docs/decisions/paper-preset.md): an amortised wake phase reading the
recogniser's r, a recogniser trained by Adam on dreams only (eq 7, linear heads), the random
encodings without pairwise products and one ridge level, calibrated once. Options given
explicitly override the preset.

On a *wide binary chain* (Bernoulli layers throughout, more latent units than a collapsed
wake phase can code, a network recogniser, wake_encodings 'auto' or 'amortised') the
default's model-dependent fields take the paper's recogniser instead: no wake rows (so the
wake phase is amortised from the start), Adam heads, standardised x, calibrated once, and
random features without pairwise products.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace

from ddchm.validation import check_positive_int

WAKE_ENCODINGS = ("auto", "amortised", "importance", "collapsed")
WAKE_GRADIENTS = ("maps", "particles")
PLUG_IN = ("off", "mean", "sample")
STATE_CODE_BITS = 62  # a binary chain's joint state is one int64 code (ddc/proposal.py)


@dataclass(frozen=True)
class EncodingOptions:
    """n_features: K_l random features per latent layer (int or one per layer); encoding:
    'sigmoid' or 'tanh'; encoding_gain: the pre-activation sd on prior samples (a number or a
    log-uniform range); max_products: pairwise products of units as exact features when there
    are at most this many (0: none); whiten: whiten T on prior samples (spec s. 9);
    recalibrate_every: every this many steps, recalibrate the layers whose dreams drifted more
    than recalibrate_tolerance from the calibration (0: calibrate once; None: 1, or 0 on a
    wide binary chain, see :func:`resolve`). max_products None: 300, or 0 on a wide binary
    chain."""

    n_features: int | tuple = 100
    encoding: str = "sigmoid"
    encoding_gain: float | tuple = (0.5, 8.0)
    max_products: int | None = None
    whiten: bool = False
    recalibrate_every: int | None = None
    recalibrate_tolerance: float = 0.1


@dataclass(frozen=True)
class MapOptions:
    """ridge: lambda / N_sleep of the gradient maps on the random features (spec s. 9);
    exact_ridge: lambda / N_sleep on the exact features and the constant (None: ``ridge``).
    The maps' polynomial targets lie in the exact features' span, so they need little
    shrinkage, and shrinking them biases the maps (docs/lab/2026-11-26.md, exact_ridge).
    plug_in: 'off'; 'mean': the log-partition terms as Phi(g(m)) at the posterior means m
    read off r, with the maps correcting only r - T(m) (:func:`ddchm.ddc.wake.wake_terms`);
    'sample': the same at one draw z ~ Bernoulli(m) a point on binary layers."""

    ridge: float = 1e-3
    exact_ridge: float | None = 1e-6
    plug_in: str = "off"


@dataclass(frozen=True)
class RecogniserOptions:
    """The recogniser r(x) ~= E[T(z) | x] and how it is trained.

    recognition: 'network' (a tanh MLP trunk) or 'ridge' (random features of x, running normal
    equations). hidden: trunk sizes; recognition_lr: its Adam rate, decayed to
    recognition_lr_final over recognition_decay_steps if given. recognition_readout: 'ridge'
    (heads solved in closed form each step on forgotten running normal equations,
    ``readout_forget``, ``readout_ridge``) or 'adam' (heads trained with the trunk;
    ``moment_heads`` gives continuous layers consistent second moments); 'auto': 'adam' on a
    wide binary chain, else 'ridge'. Adam leaves SGD
    noise in the heads that the section-7 weights amplify. sleep_targets: 'samples' (eq 7) or
    'snis' (each dream's target averaged over all dreams by importance weights). ema: Polyak
    factor of the recogniser's weights (None: off). input_scaling: standardise x by the dreams
    (None: for the network, on real-valued x or a wide binary chain).

    wake_recognition: also fit the recogniser on the data batch, towards importance-weighted
    targets (weight ``wake_weight`` relative to the dreams; None: on for the network, except
    on a wide binary chain); dreams of a model far from the data never show it where the data
    are. readout_wake_rows: those
    rows enter the ridge readout's normal equations too. recognition_points: the data rows used
    where the wake phase does not read the targets (the first this many of the batch).

    recognition_steps: recogniser updates per step; recognition_every / recognition_dreams:
    update it every this many steps on this many of the step's dreams (None: every 2nd step on
    half the dreams where the wake phase is 'collapsed' and never reads the recogniser, else
    every step on all of them).
    """

    recognition: str = "network"
    hidden: tuple = (200,)
    recognition_lr: float = 2e-3
    recognition_lr_final: float | None = None
    recognition_decay_steps: int = 1
    recognition_readout: str = "auto"
    readout_forget: float = 0.9
    readout_ridge: float = 1e-4
    readout_wake_rows: bool = True
    moment_heads: bool = True
    sleep_targets: str = "samples"
    ema: float | None = None
    input_scaling: bool | None = None
    wake_recognition: bool | None = None
    wake_weight: float = 3.0
    recognition_points: int = 100
    recognition_steps: int = 1
    recognition_every: int | None = None
    recognition_dreams: int | None = None


@dataclass(frozen=True)
class WakeOptions:
    """Which expected encodings r the wake phase applies the gradient maps to.

    wake_encodings: 'amortised' (the paper: the recogniser's r(x)); 'importance' (self-
    normalised importance estimates of E[T | x] from prior draws and, on continuous layers,
    ``wake_particles`` draws per point from the recogniser's own mean-field proposal, blended
    with the recogniser's r below ``wake_min_ess`` effective particles); 'collapsed' (the same
    on a binary chain of at most 62 latent units from distinct prior states with
    Horvitz-Thompson weights, ``wake_dreams`` draws reused for ``wake_redraw_every`` steps);
    'auto' (the default): 'collapsed' where the chain allows it, else 'importance', as long as
    the median effective sample size of the targets on the step's batch is at least
    ``wake_min_ess``, measured on the first step and every ``wake_check_every`` steps; once it
    is not, 'amortised' for the rest of the run. wake_gradient: 'maps' (the DDC gradient) or
    'particles' (an ablation: the plain self-normalised gradient sum_j w_j grad log p(x, z_j)
    over the same particles, no maps). None fields: wake_particles 100 where a layer is
    continuous, else 0; wake_dreams 10 N_sleep on a collapsible chain, else N_sleep.
    """

    wake_encodings: str = "auto"
    wake_gradient: str = "maps"
    wake_min_ess: float = 10.0
    wake_check_every: int = 100
    wake_particles: int | None = None
    wake_dreams: int | None = None
    wake_redraw_every: int = 4


# the machine's own arguments beside the groups (DDCHelmholtzMachine.__init__)
MACHINE_DEFAULTS = {
    "lr": 0.02,
    "optimizer": "adam",
    "sleep_samples": 2000,
    "diagnostic_every": 50,
    "generator": 0,
}

GROUPS = {
    "encodings": EncodingOptions,
    "maps": MapOptions,
    "recogniser": RecogniserOptions,
    "wake": WakeOptions,
}

PRESETS = {
    "default": {},
    "paper": {
        "wake_encodings": "amortised",
        "recognition_readout": "adam",
        "moment_heads": False,
        "wake_recognition": False,
        "wake_particles": 0,
        "max_products": 0,
        "exact_ridge": None,
        "recalibrate_every": 0,
        "input_scaling": False,
    },
}


def flat_defaults() -> dict:
    """{option name: its default} over every group."""
    return {f.name: f.default for group in GROUPS.values() for f in fields(group)}


def grouped(preset: str = "default", **flat) -> dict:
    """The four option groups from flat names: the preset's values, then ``flat`` over them.
    An unknown name raises a TypeError naming it."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    known = flat_defaults()
    unknown = sorted(set(flat) - set(known))
    if unknown:
        raise TypeError(f"unknown DDC-HM option(s) {unknown}")
    values = {**PRESETS[preset], **flat}
    return {
        name: group(**{f.name: values[f.name] for f in fields(group) if f.name in values})
        for name, group in GROUPS.items()
    }


@dataclass
class Resolved:
    """The options as a given model runs them, with the reasons for each model-dependent
    choice (``reasons``: option -> one line)."""

    encodings: EncodingOptions
    maps: MapOptions
    recogniser: RecogniserOptions
    wake: WakeOptions
    collapsible: bool = False
    reasons: dict = field(default_factory=dict)


def resolve(model, sleep_samples: int, encodings, maps, recogniser, wake) -> Resolved:
    """Fill the ``None`` fields that depend on ``model`` and check the combinations."""
    reasons = {}
    rec, wk = recogniser, wake
    if rec.recognition not in ("network", "ridge"):
        raise ValueError(f"recognition: expected 'network' or 'ridge', got {rec.recognition!r}")
    if rec.recognition_readout not in ("auto", "adam", "ridge"):
        raise ValueError(
            "recognition_readout: expected 'auto', 'adam' or 'ridge', "
            f"got {rec.recognition_readout!r}"
        )
    if wk.wake_encodings not in WAKE_ENCODINGS:
        raise ValueError(
            f"wake_encodings: expected one of {list(WAKE_ENCODINGS)}, got {wk.wake_encodings!r}"
        )
    if wk.wake_gradient not in WAKE_GRADIENTS:
        raise ValueError(
            f"wake_gradient: expected one of {list(WAKE_GRADIENTS)}, got {wk.wake_gradient!r}"
        )
    if maps.plug_in not in PLUG_IN:
        raise ValueError(f"plug_in: expected one of {list(PLUG_IN)}, got {maps.plug_in!r}")
    if rec.sleep_targets not in ("samples", "snis"):
        raise ValueError(f"sleep_targets: expected 'samples' or 'snis', got {rec.sleep_targets!r}")
    network = rec.recognition == "network"
    units = sum(layer.dim for layer in model.layers[1:])
    binary = all(layer.discrete for layer in model.layers[1:])
    # A binary chain too wide to collapse: importance weights from prior draws degenerate there
    # (docs/wake-phase.md), so the wake phase is amortised, and the recogniser is the paper's
    # (dreams only, Adam heads) on standardised x, calibrated once: the set that learned MNIST
    # 20-100-784 best (docs/RESULTS.md, issue 24).
    wide = (
        network
        and binary
        and model.observation.discrete
        and units > STATE_CODE_BITS
        and wk.wake_encodings in ("auto", "amortised")
    )

    def model_default(name, value, otherwise, on_wide, why):  # a None field's default
        if value is not None:
            return value
        if wide:
            reasons[name] = why
            return on_wide
        return otherwise

    wake_recognition = model_default(
        "wake_recognition",
        rec.wake_recognition,
        network,
        False,
        f"off: a binary chain of {units} latent units (> {STATE_CODE_BITS}), where importance "
        "targets degenerate",
    )
    if wake_recognition and not network:
        raise ValueError("wake_recognition: needs recognition = 'network'")
    scalable = network
    input_scaling = model_default(
        "input_scaling",
        rec.input_scaling,
        scalable and not model.observation.discrete,
        True,
        "on: a wide binary chain",
    )
    recalibrate = model_default(
        "recalibrate_every",
        encodings.recalibrate_every,
        1,
        0,
        "0: a wide binary chain (recalibrating moves the input scaling under the trunk)",
    )
    products = model_default(
        "max_products",
        encodings.max_products,
        300,
        0,
        "0: a wide binary chain (random features only, as the paper)",
    )
    encodings = replace(encodings, recalibrate_every=recalibrate, max_products=products)
    if input_scaling and not scalable:
        raise ValueError("input_scaling: needs recognition = 'network'")
    continuous = any(not layer.discrete for layer in model.layers)
    particles = wk.wake_particles
    if particles is None:
        particles = 100 if continuous and wake_recognition else 0
        reasons["wake_particles"] = f"{particles}: " + (
            "a continuous layer" if particles else "binary layers only"
        )
    collapsible = binary and units <= STATE_CODE_BITS and not particles
    phase = wk.wake_encodings
    if phase != "amortised" and not wake_recognition:
        if phase != "auto":
            raise ValueError(
                f"wake_encodings = {phase!r}: needs the importance targets of wake_recognition"
            )
        phase = "amortised"
        reasons["wake_encodings"] = "amortised: no importance targets (wake_recognition off)"
    if phase == "collapsed" and not collapsible:
        raise ValueError(
            "wake_encodings = 'collapsed': needs binary latent layers of at most "
            f"{STATE_CODE_BITS} units in all and wake_particles = 0 (this chain: {units} units, "
            f"{'binary' if binary else 'not binary'}, wake_particles {particles})"
        )
    if phase == "importance":
        collapsible = False  # plain draws, as asked
    dreams = wk.wake_dreams
    if dreams is None:
        dreams = 10 * sleep_samples if collapsible else sleep_samples
    if dreams < sleep_samples:
        raise ValueError(
            f"wake_dreams: expected at least sleep_samples ({sleep_samples}), got {dreams}"
        )
    readout = rec.recognition_readout
    if readout == "auto":  # 'auto' is this field's None
        readout = model_default(
            "recognition_readout", None, "ridge", "adam", "adam: a wide binary chain"
        )
    rec = replace(
        rec,
        recognition_readout=readout,
        wake_recognition=bool(wake_recognition),
        input_scaling=bool(input_scaling),
    )
    wk = replace(wk, wake_encodings=phase, wake_particles=particles, wake_dreams=dreams)
    if wk.wake_gradient == "particles" and phase == "amortised":
        raise ValueError("wake_gradient = 'particles': needs an importance-sampled wake phase")
    return Resolved(encodings, maps, rec, wk, collapsible, reasons)


def as_flat(resolved: Resolved) -> dict:
    """Every option's value, flat."""
    out = {}
    for name in GROUPS:
        out.update(dataclasses.asdict(getattr(resolved, name)))
    return out


def check_ranges(sleep_samples: int, maps, enc, rec, wk) -> None:
    """Ranges the option groups' types do not carry; each error names the option."""
    if not tuple(rec.hidden):
        raise ValueError(
            "hidden: an empty list; the recogniser's trunk needs at least one hidden layer, "
            "e.g. [200]"
        )
    if not maps.ridge > 0:
        raise ValueError(f"ridge: expected lambda / N_sleep > 0, got {maps.ridge}")
    if maps.exact_ridge is not None and not maps.exact_ridge > 0:
        raise ValueError(
            f"exact_ridge: expected lambda / N_sleep > 0 or None, got {maps.exact_ridge}"
        )
    if not enc.recalibrate_tolerance > 0:
        raise ValueError(
            f"recalibrate_tolerance: expected a number > 0, got {enc.recalibrate_tolerance}"
        )
    check_positive_int(enc.recalibrate_every, "recalibrate_every", minimum=0)
    check_positive_int(enc.max_products, "max_products", minimum=0)
    for name in (
        "recognition_steps",
        "recognition_points",
        "recognition_every",
        "recognition_dreams",
    ):
        if getattr(rec, name) is not None:
            check_positive_int(getattr(rec, name), name)
    if (rec.recognition_dreams or 0) > sleep_samples:
        raise ValueError(
            f"recognition_dreams: expected at most sleep_samples ({sleep_samples}), "
            f"got {rec.recognition_dreams}"
        )
    for name in ("wake_redraw_every", "wake_check_every", "wake_dreams"):
        check_positive_int(getattr(wk, name), name)
    check_positive_int(wk.wake_particles, "wake_particles", minimum=0)
    if not wk.wake_min_ess > 0:
        raise ValueError(f"wake_min_ess: expected a number > 0, got {wk.wake_min_ess}")
