"""The DDC Helmholtz machine (Vertes & Sahani, NeurIPS 2018): one step is sleep, then wake.

    sleep:  (x^s, z_1^s..z_L^s) ~ p_theta,  s = 1..N_sleep                       (dreams)
            recognition: minimise sum_s sum_l ||T_l(z_l^s) - r_l(x^s)||^2            (eq 7)
            gradient maps: ridge regressions of eqs 9-11 on T_l(z_l^s)              (section 3b)
    wake:   expected encodings r_l(x) for the data batch                           (eq 2)
            grad_theta F ~= weighted autograd of the sleep samples' log-probabilities (section 7)
            one ascent step of any torch optimiser on theta                          (section 4)

Which r the wake phase uses is a named choice (``wake_encodings``; ``ddc/wake_phase.py``,
docs/wake-phase.md): the recogniser's ('amortised', the paper) or importance-sampled ones.

Cost per step: N_sleep ancestral samples, N_sleep (K^2 + sum_l D_l D_{l+1}) for the maps, the
recogniser's forward/backward pass on N_sleep + N_batch inputs, and for an importance wake
phase N_batch x (particles) likelihoods; the dreams are encoded once and shared.
"""

from __future__ import annotations

import contextlib
import time

import torch

from ddchm.algorithms.base import Algorithm, OptimizerSpec, apply_ascent, make_optimizer
from ddchm.ddc import options as opt
from ddchm.ddc.diagnostics import regression_r2
from ddchm.ddc.encodings import make_encodings
from ddchm.ddc.particles import WakeParticles
from ddchm.ddc.proposal import RecognitionProposal
from ddchm.ddc.recalibration import load_machine_state, machine_state, recalibrate
from ddchm.ddc.recogniser_training import RecogniserTraining
from ddchm.ddc.recognition import make_recogniser
from ddchm.ddc.wake import plug_in_points, wake_gradient
from ddchm.ddc.wake_phase import (
    ImportanceTargets,
    Targets,
    WakePhaseChoice,
    blend,
    particle_objective,
    phase_encodings,
    phase_metrics,
)
from ddchm.distributed import DistributedError
from ddchm.models import HierarchicalModel
from ddchm.validation import check_positive_int, make_generator


class DDCHelmholtzMachine(Algorithm):
    """Learn ``model`` with the DDC Helmholtz machine.

    Args:
        model: the generative chain (any mix of Bernoulli, Gaussian and Laplace layers).
        preset: 'default' (the library's machine) or 'paper' (the algorithm as the paper states
            it; ``ddc/options.py``). The groups below override the preset's values.
        lr, optimizer: the theta optimiser (a name or a callable), default Adam at 0.02.
        sleep_samples: N_sleep dreams drawn per step, shared by recognition and the maps.
        encodings, maps, recogniser, wake: option groups (``EncodingOptions``, ``MapOptions``,
            ``RecogniserOptions``, ``WakeOptions``); None: the preset's. Use
            :meth:`from_options` to give any option by its flat name.
        diagnostic_every: add held-out R^2 of the regressions to the metrics every this many
            steps (0: never).
        generator: seed or torch.Generator; every random draw of a step goes through it.

    Reference: E. Vertes and M. Sahani, "Flexible and accurate inference and learning for deep
    generative models", NeurIPS 2018.
    """

    name = "ddc"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        preset: str = "default",
        lr: float = 0.02,
        optimizer: OptimizerSpec = "adam",
        sleep_samples: int = 2000,
        encodings: opt.EncodingOptions | None = None,
        maps: opt.MapOptions | None = None,
        recogniser: opt.RecogniserOptions | None = None,
        wake: opt.WakeOptions | None = None,
        diagnostic_every: int = 50,
        generator=0,
    ):
        super().__init__(model, generator)
        self.sleep_samples = check_positive_int(sleep_samples, "sleep_samples", minimum=2)
        given = dict(encodings=encodings, maps=maps, recogniser=recogniser, wake=wake)
        groups = {**opt.grouped(preset), **{k: v for k, v in given.items() if v is not None}}
        self.options, self.preset = opt.resolve(model, self.sleep_samples, **groups), preset
        enc, rec, wk = self.options.encodings, self.options.recogniser, self.options.wake
        opt.check_ranges(self.sleep_samples, self.options.maps, enc, rec, wk)
        self.diagnostic_every = diagnostic_every
        init_seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
        self.diagnostic_seed = init_seed + 2
        shape = dict(whiten=enc.whiten, max_products=enc.max_products, seed=init_seed)
        self.encodings = make_encodings(
            model, enc.n_features, enc.encoding, enc.encoding_gain, **shape
        ).to(self.device)
        self.recognition = make_recogniser(model.data_dim, self.encodings, rec, init_seed + 1)
        self.recognition.to(device=self.device, dtype=self.dtype)
        self.recalibrations = 0
        collapsible = self.options.collapsible
        self.particles = WakeParticles(model, self.encodings, self.sleep_samples, wk, collapsible)
        self.importance = ImportanceTargets(model, self.encodings, wk.wake_particles)
        self.wake_phase = WakePhaseChoice.for_options(wk, collapsible)
        self.recogniser_training = RecogniserTraining(self, rec, wk.wake_min_ess)
        self.wake_estimates: Targets | None = None  # this step's wake targets
        if rec.input_scaling:
            calibration = model.sample(5000, generator=make_generator(init_seed, self.device))
            self.recognition.set_input_scaling(calibration[0])
        self.param_names, self.params = map(list, zip(*model.named_parameters()))
        self.optimizer = make_optimizer(self.params, optimizer, lr)
        self.steps = 0
        self.timings: dict[str, float] | None = None  # CPU seconds per phase, when profiling

    @classmethod
    def from_options(cls, model, *, preset: str = "default", **options):
        """The machine with its options given by their flat names (``ridge=1e-3``,
        ``wake_encodings='amortised'``, ...): the spelling configs use."""
        own = {k: options.pop(k) for k in opt.MACHINE_DEFAULTS if k in options}
        return cls(model, preset=preset, **own, **opt.grouped(preset, **options))

    @classmethod
    def option_defaults(cls) -> dict:
        """{flat option name: default} that :meth:`from_options` and configs accept."""
        return {"preset": "default", **opt.MACHINE_DEFAULTS, **opt.flat_defaults()}

    # --- the schedule, resolved for the phase in force -------------------------------------
    @property
    def recognition_every(self) -> int:
        every = self.options.recogniser.recognition_every
        return every or (2 if self.wake_phase.name == "collapsed" else 1)

    @property
    def recognition_dreams(self) -> int:
        n = self.options.recogniser.recognition_dreams
        half = self.wake_phase.name == "collapsed"
        return n or (max(1, self.sleep_samples // 2) if half else self.sleep_samples)

    # --- the pieces --------------------------------------------------------------------------
    def dream(self, n: int | None = None, generator=None) -> list[torch.Tensor]:
        """Sleep samples [x^s, z_1^s, ..., z_L^s] from the current model."""
        return self.model.sample(n or self.sleep_samples, generator=generator or self.generator)

    def encode(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """[T_1(z_1), ..., T_L(z_L)] for latents [z_1, ..., z_L]."""
        return self.particles.encode(latents)

    def map_ridges(self) -> list[torch.Tensor]:
        """Per-column penalties (lambda / N_sleep) of each layer's gradient maps."""
        m = self.options.maps
        return [e.map_ridge(m.ridge, m.exact_ridge) for e in self.encodings]

    def map_solvers(self, features, latents=None):
        """The gradient maps' solvers on the dreams' encodings (``WakeParticles.map_solvers``)."""
        return self.particles.map_solvers(features, self.map_ridges(), latents)

    @torch.no_grad()
    def expected_encodings(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The recogniser's DDC of the posterior: [r_1(x), ..., r_L(x)] ~= [E[T_l(z_l) | x]]."""
        return self.recognition(x)

    @torch.no_grad()
    def wake_targets(self, x, sleep, features=None, generator=None, particles=None) -> Targets:
        """Importance estimates of E[T_l(z_l) | x_n] on the prior particles of the dreams
        ``sleep`` (or the given ``particles``) and the recogniser's proposal draws
        (``ddc/wake_phase.py``); ``generator``: for extra draws (default: the machine's)."""
        generator = generator or self.generator
        if particles is None:
            particles = self.particles.prior(sleep, generator, features)
        return self.importance(x, particles, self.expected_encodings, generator)

    def wake_phase_encodings(self, x, sleep=None, generator=None, chunk: int = 256):
        """The r the wake phase in force uses for data x (``wake_phase.phase_encodings``);
        draws from ``generator``, by default one of its own: a call never changes the run."""
        generator = generator or make_generator(self.diagnostic_seed + 1 + self.steps, self.device)
        return phase_encodings(self, x, sleep, generator, chunk)

    def theta_gradient(self, batch, sleep=None, encodings=None, features=None):
        """The DDC estimate of mean_n grad_theta log p(x_n) (no step taken) from the dreams
        ``sleep`` (default: fresh ones from a generator of its own) and expected encodings
        (default: the recogniser's; pass exact ones for the oracle update of spec s. 9)."""
        batch = self.model.check_data(batch, "batch")
        if features is not None and sleep is None:
            raise ValueError("features: the encodings of given dreams; pass those dreams as sleep")
        if sleep is None:
            sleep = self.dream(
                generator=make_generator(self.diagnostic_seed + 3 + self.steps, self.device)
            )
        features = self.encode(sleep[1:]) if features is None else features
        solvers = [None, *self.particles.map_solvers(features, self.map_ridges())]
        r = self.expected_encodings(batch) if encodings is None else encodings
        draws = None  # a generator of its own, as for the dreams above, where one is drawn
        if self.options.maps.plug_in == "sample":
            draws = make_generator(self.diagnostic_seed + 5 + self.steps, self.device)
        plug_in = self.plug_in(r, draws)
        return wake_gradient(self.model, sleep, solvers, [None, *r], batch, plug_in=plug_in)

    def plug_in(self, r, generator):
        """The points and their encodings of the plug-in log-partition terms (``plug_in``;
        wake.py), or None where it is 'off'."""
        mode = self.options.maps.plug_in
        if mode == "off":
            return None
        return plug_in_points(self.encodings, [None, *r], generator if mode == "sample" else None)

    # --- the algorithm -----------------------------------------------------------------------
    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One sleep phase (recognition + maps) and one wake update of theta.

        Data-parallel (``self.shard``, ``ddchm.distributed``): every process draws the whole
        step's dreams (and holds the whole batch), and takes its rows of the batch and of the
        dreams for the wake targets, the recogniser's fit, the maps' Grams and the wake
        gradient, whose sums are all-reduced; the phase decision reads every process's ESS."""
        batch, n = self.model.check_data(batch, "batch"), self.steps
        shard, whole = self.shard, batch
        if shard.sharded:  # this process's rows of the batch
            batch = batch[shard.rows(batch.shape[0], "batch")]
        with self._phase("dreams"):
            sleep = self.dream()
        with self._phase("recalibration"):
            every = self.options.encodings.recalibrate_every
            if every and n % every == 0 and n:
                self.recalibrate(sleep)
            features = self.particles.encode_samples(sleep[1:])
        phase, update = self.wake_phase, n % self.recognition_every == 0
        wake_recognition = self.options.recogniser.wake_recognition
        with self._phase("wake_targets"):
            prior, found = None, None
            needs = phase.reads_targets or (update and wake_recognition)
            if self.particles.state_bits and needs:
                prior = self.particles.for_step(sleep, n, self.generator)
            if phase.due(n):  # the measured rule of wake_encodings = 'auto'
                found = self.wake_targets(batch, sleep, features, particles=prior)
                phase.decide(n, shard.gather(found.ess))
                rows = self.recogniser_training.rows(whole).shape[0]
                if not shard.sharded:
                    found = found.first(rows)
                elif rows != whole.shape[0]:  # the recogniser's rows are not this batch's
                    found = None
        self.wake_estimates = None
        with self._phase("recogniser"):
            if update:
                self.recogniser_training.fit(sleep, whole, features, prior, found)
            elif phase.reads_targets:
                self.wake_estimates = found or self.wake_targets(
                    batch, sleep, features, particles=prior
                )
        with self._phase("wake_gradient"):
            r = self.expected_encodings(batch)
            if phase.reads_targets and self.wake_estimates is not None:
                e = self.wake_estimates
                r = blend(r, e.targets, e.ess, phase.min_ess)
            if self.options.wake.wake_gradient == "particles":
                drawn = self.particles.last[0] if self.particles.state_bits else None
                objective = particle_objective(self.model, batch, self.wake_estimates, drawn)
                grads = torch.autograd.grad(objective, self.params)
                ascent = dict(zip(self.param_names, grads))
            else:
                ridges = self.map_ridges()
                dreams = sleep
                if shard.sharded:  # this process's dreams for the maps and the gradient
                    mine = shard.rows(sleep[0].shape[0], "sleep_samples")
                    dreams, features = [s[mine] for s in sleep], [f[mine] for f in features]
                solvers = [None, *self.particles.map_solvers(features, ridges, dreams[1:], shard)]
                plug_in = self.plug_in(r, self.generator)
                ascent = wake_gradient(
                    self.model, dreams, solvers, [None, *r], batch, shard, plug_in
                )
        with self._phase("optimiser"):
            grad_norm = apply_ascent(self.optimizer, self.params, ascent, self.param_names)
        self.steps += 1
        training = self.recogniser_training
        metrics = {"recognition_loss": training.last_loss, "grad_norm": grad_norm}
        found = self.wake_estimates
        if shard.sharded and found is not None:  # the whole batch's ESS in the metrics
            found = found._replace(ess=shard.gather(found.ess))
        metrics.update(phase_metrics(self.wake_phase, found, training.last_wake_ess))
        if self.diagnostic_every and self.steps % self.diagnostic_every == 0:
            with self._phase("diagnostics"):
                metrics.update(self.diagnostics())
        return metrics

    def check_shard(self, shard, batch_size: int) -> None:
        """Raise ``DistributedError`` unless a step can be shared out over ``shard.world``
        processes: the dreams and the recogniser's dreams and data rows must split evenly,
        and the parts that would need another process's draws are not sharded (the
        recogniser's own proposal particles on continuous layers, SNIS sleep targets, the
        particle-gradient ablation)."""
        rec, wake = self.options.recogniser, self.options.wake
        refused = {
            "wake_particles > 0 (proposal particles per data point)": wake.wake_particles,
            "sleep_targets = 'snis'": rec.sleep_targets == "snis",
            "wake_gradient = 'particles'": wake.wake_gradient == "particles",
        }
        for what, on in refused.items():
            if on:
                raise DistributedError(
                    f"DDC-HM with {what} does not run data-parallel yet; set "
                    f"algorithm.{what.split()[0]} to another value, or train in one process"
                )
        shard.rows(self.sleep_samples, "algorithm.sleep_samples")
        dreams = {rec.recognition_dreams or self.sleep_samples, max(1, self.sleep_samples // 2)}
        for count in sorted(dreams):
            shard.rows(count, "the recogniser's dreams (recognition_dreams)")
        shard.rows(min(rec.recognition_points, batch_size), "algorithm.recognition_points")

    @contextlib.contextmanager
    def _phase(self, name: str):
        """Adds the CPU time of a phase of :meth:`step` to ``timings`` (when it is a dict)."""
        if self.timings is None:
            yield
            return
        tic = time.process_time()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.process_time() - tic

    def recalibrate(self, sleep: list[torch.Tensor], force: bool = False) -> list[int]:
        """Follow the model: recalibrate the encodings that drifted on these dreams
        (``ddc/recalibration.py``). Returns the recalibrated layers (1-based)."""
        moved = recalibrate(self, sleep, force)
        self.recalibrations += len(moved)
        return moved

    def diagnostics(self, n: int | None = None) -> dict[str, float]:
        """Held-out R^2 of the recogniser and the maps on fresh dreams (``ddc/diagnostics.py``)."""
        return regression_r2(self, n)

    def fit_recognition(self, n_steps: int, progress: bool = False, data=None) -> float:
        """Train only the recogniser (theta fixed) for ``n_steps`` sleep batches (with
        ``wake_recognition``, also on minibatches of 100 rows of ``data``); last loss."""
        data = None if data is None else self.model.check_data(data, "data")
        return self.recogniser_training.fit_only(n_steps, progress, data)

    def proposal(self, inflation: float = 1.5) -> RecognitionProposal:
        """The recogniser as an importance-sampling proposal q(z | x) for evaluation."""
        return RecognitionProposal(self, inflation)

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor, n_sleep: int = 10_000) -> list[torch.Tensor]:
        """E_q[z_l | x] = alpha_l^T r_l(x), alpha_l fitted by ridge of z_l on T_l (eq 5) on fresh
        dreams drawn with a generator of their own (training randomness is untouched)."""
        x = self.model.check_data(x)
        sleep = self.model.sample(n_sleep, generator=make_generator(12345, device=self.device))
        solvers = self.particles.map_solvers(self.encode(sleep[1:]), self.map_ridges())
        r = self.expected_encodings(x)
        return [r[l] @ solvers[l].fit(sleep[l + 1]) for l in range(self.model.n_latent_layers)]

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return machine_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_machine_state(self, state)
