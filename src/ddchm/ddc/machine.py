"""The DDC Helmholtz machine (Vertes & Sahani, NeurIPS 2018): one step is sleep, then wake.

    sleep:  (x^s, z_1^s..z_L^s) ~ p_theta,  s = 1..N_sleep                       (dreams)
            recognition: minimise sum_s sum_l ||T_l(z_l^s) - r_l(x^s)||^2            (eq 7)
            gradient maps: ridge regressions of eqs 9-11 on T_l(z_l^s)              (section 3b)
    wake:   r_l(x) for the data batch, no sampling                                  (eq 2)
            (models with a continuous layer and small binary chains: importance-sampled
            E[T_l | x] where it rests on enough particles, see ``importance_encodings``;
            wide binary chains: as the paper)
            grad_theta F ~= weighted autograd of the sleep samples' log-probabilities (section 7)
            one ascent step of any torch optimiser on theta                          (section 4)

(On small binary chains the recogniser is updated every second step on half the dreams, since
the wake phase does not read it there; see ``recognition_every``. docs/wake-phase.md has the
whole wake phase.)

Cost per step: N_sleep ancestral samples, N_sleep (K^2 + sum_l D_l D_{l+1}) for the maps, and
the recogniser's forward/backward pass on N_sleep + N_batch inputs; the dreams are encoded once
and shared by the recogniser and the maps. Step time is linear in N_sleep (measured with
``benchmarks/throughput.py --scaling``; docs/RESULTS.md, "Throughput").
"""

from __future__ import annotations

import math

import torch

from ddchm.algorithms.base import Algorithm, OptimizerSpec, apply_ascent, make_optimizer
from ddchm.ddc.encodings import make_encodings
from ddchm.ddc.proposal import (
    DrawnStates,
    MeanFieldProposal,
    PriorParticles,
    RecognitionProposal,
    bottom_groups,
    decode_states,
    distinct_codes,
    encode_states,
    expected_distinct,
    group_by_bottom,
    log_inclusion_probability,
    state_codes,
)
from ddchm.ddc.recognition import NetworkRecognition, RidgeRecognition
from ddchm.ddc.wake import RidgeSolver, heldout_r2, wake_gradient
from ddchm.models import HierarchicalModel
from ddchm.models.exact import pair_log_prob
from ddchm.validation import check_positive_int, make_generator


class DDCHelmholtzMachine(Algorithm):
    """Learn ``model`` with the DDC Helmholtz machine.

    Args:
        model: the generative chain (any mix of Bernoulli, Gaussian and Laplace layers).
        lr: learning rate of the theta optimiser (``optimizer``: a name or a callable).
        n_features: K_l random encoding features per latent layer (int or one per layer).
        encoding: 'sigmoid' or 'tanh'; ``encoding_gain`` the pre-activation sd on prior samples.
        whiten: whiten the encodings on prior samples (sharper at a fixed theta; see spec s. 9).
        sleep_samples: N_sleep dreams drawn per step, shared by recognition and gradient maps.
        ridge: lambda / N_sleep of the gradient-map regressions on the random features (spec
            s. 9: 1e-3 .. 1e-2).
        exact_ridge: lambda / N_sleep on the exact features (z, the layer's statistics, the
            products) and the constant; None: ``ridge``. The polynomial part of every map
            target lies in their span, so they need no shrinkage for conditioning, and shrinking
            them biases the maps: with exact E[T|x] on the linear-Gaussian chain, the worst
            parameter tensor's error was 0.19 of the gradient's norm at 1e-3 on every column
            and 0.017 with 1e-6 on the exact block (tests/test_continuous.py). Learning (seed 0
            unless stated; docs/RESULTS.md, lab log 2026-11-26 late): linear-gaussian 0.156 ->
            0.122 (seed 1: 0.142), sbn-hard 3 seeds learned - exact +0.0012 -> -0.0015,
            sbn-gauss unchanged (0.289); sbn-easy's config (ridge 1e-2), 3 seeds, 0.100 ->
            0.122, still 0.029 below the exact learner.
        recognition: 'network' (tanh MLP, Adam) or 'ridge' (random features of x, running
            normal equations).
        hidden: trunk sizes of the network recogniser; ``recognition_lr`` its Adam rate,
            decayed to ``recognition_lr_final`` over ``recognition_decay_steps`` if given.
        recognition_steps: recogniser updates per wake step (each on fresh dreams after the first).
        recognition_every: update the recogniser on every this many steps only (None: 2 where
            the wake phase reads importance targets on a small binary chain, else 1).
        recognition_dreams: the recogniser's update uses this many of the step's dreams (None:
            N_sleep / 2 there, else N_sleep). There the wake phase's r is the importance-sampled
            E[T | x] wherever it rests on ``wake_min_ess`` effective draws, and the recogniser's
            r only in proportion below that. On sbn-hard the smallest ESS in a batch was 470-
            9,300 over 3,000 steps of learning, so theta's path did not depend on the recogniser
            at all (bit for bit: 4,000 steps with it updated every step or every 4th); on
            sbn-easy it fell to 10-25 after 1,000 steps, so a few points there read it. It is
            trained for inference, evaluation and that fallback. ``ddchm train`` on the default
            config (sbn-hard, 2,000 steps), posterior accuracy mean |E_q[z|x] - E[z|x]|:
            every step on all dreams 0.0070 (the reference), every 2nd on 1,000 0.0100 at ~0.7x
            the time, every step on 500 0.0099, every 4th on all 0.0116, every 10th 0.0173.
        recognition_points: with ``wake_recognition`` on a chain whose wake phase reads the
            recogniser (``importance_encodings`` off: wide binary chains such as MNIST models),
            the recogniser's data rows are the first this many points of the batch (a random
            sample of it), not all of them. Their importance targets cost N_batch x N_sleep
            likelihoods and weighted sums, a third of an MNIST-size step (784-200-200) at batch
            1000; the data rows' loss is a mean over points, so fewer points estimate the same
            loss, and at 100 (the default) the recogniser sees at batch 1000 what it sees at the
            default batch of 100. Where the wake phase reads the targets they are computed for
            every point anyway, and all of them train the recogniser.
        recognition_readout: 'adam' (the network's linear heads trained with its trunk),
            'ridge' (heads solved in closed form each step on running normal equations of the
            trunk's features, forgotten by ``readout_forget`` per step, ridge ``readout_ridge``
            times the sample count; only the trunk is trained by Adam), or 'auto' (= 'ridge').
            Adam leaves SGD noise in the heads that the section-7
            weights amplify; the ridge readout has none and follows theta within
            ~1 / (1 - readout_forget) steps. Learning sbn-hard (4,000 steps, 3 seeds), the
            learned update's median cosine to the exact gradient rose from 0.49 to 0.81 with
            the test gap unchanged (docs/RESULTS.md). On continuous latents it replaces the
            Adam-trained moment heads (``moment_heads`` applies to 'adam' only): learning
            linear-gaussian (3,000 steps, seed 0) the gap to the exact learner fell from 0.8
            nats, with a latent log-std collapsing, to 0.09 (centred products, see
            ``moment_heads``); at a fixed theta (``gradient_accuracy.py --quick``) laplace-chain
            gave 0.46 with either readout.
        readout_wake_rows: with the ridge readout and wake recognition, the data batch's rows
            and their importance-weighted targets enter the heads' normal equations with the
            loss's weights (in total ``wake_weight`` times the dreams'). Without them the
            heads see dreams only, and real-valued x needs the data: sbn-gauss at a fixed
            theta, 500 recognition steps, cosine 0.13 without, 0.98 with (0.70 with Adam
            heads); learning sbn-gauss (wake weight 1), gap to the exact learner 0.05 nats
            (0.18 with Adam heads) and median cosine 0.95. At a fixed theta it also lifted
            sbn-easy / sbn-hard from 0.994 / 0.990 to 0.997 / 0.995.
        wake_recognition: also train the recogniser on each data batch, towards importance-
            weighted encodings of the dreams (:meth:`wake_targets`), with weight ``wake_weight``
            relative to the sleep loss, scaled down for points whose targets rest on fewer than
            ``wake_min_ess`` effective dreams (None: on for the network recogniser). At fixed
            theta it lifted the learned update's cosine on sbn-gauss from 0.72 to 0.98 and on
            linear-gaussian from 0.76 to 0.99: dreams of a model that is not yet the data's
            never show the recogniser where the data are. ``wake_weight`` 3 (was 1): the data
            rows' targets average many dreams and sit where the wake gradient is evaluated,
            so they deserve more weight than the dreams' one-sample targets. Learning (seed 0):
            sbn-easy 0.139 -> 0.106 nats, sbn-gauss 0.306 -> 0.289, sbn-hard 0.0235 -> 0.021
            (3 seeds: learned minus exact learner 0.0018 -> 0.0012); but linear-gaussian 0.121
            -> 0.156 (exact learner 0.028). Weights 5 and 10 were worse on sbn-gauss (0.37,
            0.53).
        wake_particles: M, the draws per data point from the recogniser's own proposal
            (:class:`~ddchm.ddc.proposal.MeanFieldProposal`, read off r(x)) that join the dreams
            as particles of the wake targets, weighted against the mixture of the two (0: the
            dreams alone; None: 100 where any layer is continuous, else 0). Prior dreams of a
            model far from the data rarely reach the data's tails, so the targets there rest on
            one or two dreams and the recogniser extrapolates: on laplace-chain at a fixed
            theta the data reach |x| = 17 while 99% of the dreams stay within 3, and the
            learned update's cosine was 0.51; with M = 20 it is 0.9997 (the error of r_1's
            exact block fell from 0.58 to 0.05 of its norm), and sbn-gauss / linear-gaussian
            rose from 0.983 / 0.993 to 0.997 / 0.9999 (``benchmarks/gradient_accuracy.py``).
            With ``importance_encodings`` the targets are also the wake phase's r, and their
            Monte Carlo error then shows in learning: linear-gaussian, seeds 0 / 1, 0.066 /
            0.059 nats with M = 20 and 0.023 / 0.020 with M = 100 (the exact learner: 0.028 /
            0.027). Cost of a step on the continuous truths: +13-15% at M = 20, +43-64% at
            M = 100. On the binary truths it lifted sbn-easy at a fixed theta from 0.998 to
            0.999 but did not help learning (sbn-hard, 3 seeds, M = 20: 0.0208 against 0.0198
            nats), so there it is off.
        wake_dreams: prior draws behind the wake targets, the step's N_sleep dreams and more
            drawn for the targets only (None: 10 N_sleep on a small binary chain, else N_sleep;
            :meth:`prior_particles`). On a small binary chain the draws collapse to their
            distinct states, weighted by p(z) / pi(z) (Horvitz-Thompson), so the extra draws
            cost little: their sampling and a few more columns, capped by the distinct states
            they are expected to reach.
        wake_redraw_every: on a small binary chain, the wake targets' prior draws (up to
            ``wake_dreams``, collapsed) are drawn afresh on every this many steps; in between
            the step reuses the last draw's distinct states, reweighted by the current prior,
            p_theta(z) / pi(z) with the draw's inclusion chances pi: a Horvitz-Thompson sum
            over a set drawn under an earlier theta is still unbiased for the current one, and
            only the states' log p is recomputed (:meth:`_step_particles`). The sampling, coding
            and grouping of ~20,000 draws was a fifth of an sbn-hard step: 18.0 -> 14.7 ms at 4
            (15.7 at 2, 14.3 at 8). Learning sbn-hard (3 seeds, 4,000 steps): 0.0205 +/- 0.0010
            nats at 4 against 0.0210 at 1 (exact learner 0.0213), median cosine to the exact
            gradient 0.972 against 0.967 (docs/RESULTS.md, lab log 2026-11-26, night).
        importance_encodings: the wake phase uses, for each data point, the importance-
            sampled estimate of E[T_l | x_n] that :meth:`wake_targets` computes for the
            recogniser anyway (the prior's particles and ``wake_particles``, weighted with the
            current theta) where it rests on at least ``wake_min_ess`` effective particles,
            and the recogniser's r_l(x_n) in proportion below that (:meth:`wake_phase_encodings`;
            None: where any layer is continuous or the chain is a small binary one, i.e.
            where the particles reach the data; wide binary chains such as MNIST models keep
            the paper's amortised wake phase). The recogniser is trained on the dreams of past
            thetas and lags a moving model; the importance estimate has no lag, only Monte
            Carlo error, and the gradient is still the DDC's (section-7 maps on T). Learning
            from random initialisation (3,000 steps, M = 20, docs/RESULTS.md, lab log
            2026-11-26, morning): linear-gaussian seed 0 0.119 -> 0.066 nats (the exact
            learner: 0.028), sbn-gauss seed 1 0.464 -> 0.215 (exact 0.371). On sbn-hard the
            estimate from the step's 2,000 dreams alone was noisier per step than the
            recogniser's r (median cosine to the exact gradient 0.67-0.72 against 0.78). With
            up to 20,000 collapsed draws (``wake_dreams``), library defaults, 3 seeds: sbn-hard
            median cosine 0.971 and learned - exact learner +0.0000 +/- 0.0005 nats (4,000
            steps; DDC-HM minus RWS-5 -0.0083), sbn-easy 0.995 and
            -0.005 +/- 0.014 (6,000 steps); before, with the recogniser's r, 0.78 / 0.87
            (docs/RESULTS.md, lab log 2026-11-26, afternoon). The price: the sbn-hard step
            went from 25 to 34 ms; grouping the states by z_1 (:meth:`prior_particles`) and
            the recogniser's schedule (``recognition_every``) then brought it to 15.5 ms
            (lab log 2026-11-26, evening).
        sleep_targets: what the recogniser regresses on a dream x^s. 'samples' (default): the
            dream's own encodings T_l(z_l^s), as in eq 7; 'snis': their self-normalised
            importance-sampling average over all the step's dreams, sum_j w_sj T_l(z_l^j) with
            w_sj ~ p(x^s | z_1^j) (:meth:`sleep_targets`). Both have expectation E[T_l | x^s]
            (the second as the dreams grow); the second averages the posterior spread out over
            the effective number of dreams behind each x^s (median 360 / 68 at the sbn-hard /
            sbn-easy truths, 2,000 dreams). Measured on sbn-hard with the ridge readout: at a
            frozen theta the learned update's cosine was 0.87-0.96 over 1,500 recognition steps,
            its error to the exact r_1 falling twice as fast (0.79-0.93 with 'samples');
            while learning (seed 0, 4,000 steps) the median cosine rose only from 0.79 to
            0.83 with the same test gap, for twice the step time (the
            N_sleep x N_sleep likelihood table and its products), so it is off by default.
        moment_heads: with the 'adam' readout, continuous layers' heads predict a mean and a
            Cholesky factor, so their second moments are consistent (no negative variances;
            see ``MomentHead``). The ridge readout instead regresses a continuous layer's
            products centred at its own predicted mean, (u_i - m_i)(u_j - m_j), and adds
            m_i m_j back at the output (``recognition.centre_products``): the regression's
            error then scales with the posterior's spread rather than the prior's. Learning
            linear-gaussian (3,000 steps), raw products gave 0.09 nats on seed 0 after an
            observation log-std collapsed to -6 and recovered, and a collapse that did not
            recover on seed 1; centred products gave a steady 0.12 on seed 0 (the exact learner:
            0.03). Projecting raw outputs onto consistent moments (negative covariance
            eigenvalues set to 0) biased near-zero variances upwards: 0.7-1.0 nats.
        ema: Polyak/EMA factor of the recogniser weights (None: off). With the 'adam' readout,
            wake time reads averaged trunk and heads; with 'ridge', the heads are solved on and
            read the features of an averaged trunk while Adam trains the live one. Why: at a
            fixed theta (sbn-hard, step 1,500 of learning) the learned update's cosine sat at
            0.88-0.92 while the trunk trained at 2e-3 and rose to 0.97-0.99 within 10-100
            recognition steps once the trunk was frozen (the oracle's: 0.988): the trunk's Adam
            jitter, not the targets' noise, limits it. While learning, 0.99 lifted sbn-hard's
            median cosine from 0.80 to 0.91 with the same gap (seed 0), and sbn-easy's to 0.97
            while it learned 0.08 nats worse: a slow recogniser is consistently late, a bias
            Adam accumulates, where the fast trunk's jitter averages out. Off by default
            (docs/RESULTS.md, lab log 2026-11-26 late).
        input_scaling: centre and scale the recogniser's input by the dreams' mean and sd (None:
            when the observations are continuous and the recogniser is the network; binary x is
            left as it is).
        recalibrate_every: every this many steps, measure how far the dreams have moved from the
            encodings' calibration (:meth:`LayerEncoding.drift`) and recalibrate the layers that
            moved more than ``recalibrate_tolerance``, carrying the recogniser's heads across
            (0: never). The input scaling is refreshed at the same time.
        generator: seed or torch.Generator; every random draw of the machine goes through it.

    Reference: E. Vertes and M. Sahani, "Flexible and accurate inference and learning for deep
    generative models", NeurIPS 2018.
    """

    name = "ddc"

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        lr: float = 0.02,
        optimizer: OptimizerSpec = "adam",
        n_features=100,
        encoding: str = "sigmoid",
        encoding_gain=(0.5, 8.0),
        max_products: int = 300,
        whiten: bool = False,
        sleep_samples: int = 2000,
        ridge: float = 1e-3,
        exact_ridge: float | None = 1e-6,
        recognition: str = "network",
        hidden=(200,),
        recognition_lr: float = 2e-3,
        recognition_lr_final: float | None = None,
        recognition_decay_steps: int = 1,
        recognition_steps: int = 1,
        recognition_every: int | None = None,
        recognition_dreams: int | None = None,
        recognition_points: int = 100,
        recognition_readout: str = "auto",
        sleep_targets: str = "samples",
        moment_heads: bool = True,
        wake_recognition: bool | None = None,
        wake_weight: float = 3.0,
        wake_min_ess: float = 10.0,
        wake_particles: int | None = None,
        wake_dreams: int | None = None,
        wake_redraw_every: int = 4,
        importance_encodings: bool | None = None,
        readout_forget: float = 0.9,
        readout_ridge: float = 1e-4,
        readout_wake_rows: bool = True,
        ema: float | None = None,
        input_scaling: bool | None = None,
        recalibrate_every: int = 1,
        recalibrate_tolerance: float = 0.1,
        diagnostic_every: int = 50,
        generator=0,
    ):
        super().__init__(model, generator)
        self.sleep_samples = check_positive_int(sleep_samples, "sleep_samples", minimum=2)
        self.recognition_steps = check_positive_int(recognition_steps, "recognition_steps")
        if not ridge > 0:
            raise ValueError(f"ridge: expected lambda / N_sleep > 0, got {ridge}")
        self.ridge = float(ridge)
        if exact_ridge is not None and not exact_ridge > 0:
            raise ValueError(
                f"exact_ridge: expected lambda / N_sleep > 0 or None, got {exact_ridge}"
            )
        self.exact_ridge = None if exact_ridge is None else float(exact_ridge)
        self.diagnostic_every = diagnostic_every
        init_seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
        self.diagnostic_seed = init_seed + 2
        self.encodings = make_encodings(
            model,
            n_features,
            encoding,
            encoding_gain,
            whiten=whiten,
            max_products=max_products,
            seed=init_seed,
        ).to(self.device)
        sizes = [encoding.size for encoding in self.encodings]
        if recognition_readout not in ("auto", "adam", "ridge"):
            raise ValueError(
                "recognition_readout: expected 'auto', 'adam' or 'ridge', "
                f"got {recognition_readout!r}"
            )
        if recognition_readout == "auto":
            recognition_readout = "ridge"
        if recognition == "network":
            self.recognition = NetworkRecognition(
                model.data_dim,
                sizes,
                hidden,
                recognition_lr,
                recognition_lr_final,
                recognition_decay_steps,
                ema,
                readout=recognition_readout,
                readout_forget=readout_forget,
                readout_ridge=readout_ridge,
                readout_wake_rows=readout_wake_rows,
                layouts=[encoding.moment_layout() for encoding in self.encodings]
                if moment_heads
                else None,
                generator=init_seed + 1,
            )
        elif recognition == "ridge":
            self.recognition = RidgeRecognition(model.data_dim, sizes, generator=init_seed + 1)
        else:
            raise ValueError(f"recognition: expected 'network' or 'ridge', got {recognition!r}")
        self.recognition.to(device=self.device, dtype=self.dtype)
        scalable = hasattr(self.recognition, "set_input_scaling")
        if input_scaling is None:
            input_scaling = scalable and not model.observation.discrete
        if input_scaling and not scalable:
            raise ValueError("input_scaling: needs recognition = 'network'")
        self.input_scaling = bool(input_scaling)
        self.recalibrate_every = check_positive_int(
            recalibrate_every, "recalibrate_every", minimum=0
        )
        if not recalibrate_tolerance > 0:
            raise ValueError(
                f"recalibrate_tolerance: expected a number > 0, got {recalibrate_tolerance}"
            )
        self.recalibrate_tolerance = float(recalibrate_tolerance)
        self.recalibrations = 0
        if wake_recognition is None:  # on wherever it applies
            wake_recognition = recognition == "network"
        if wake_recognition and recognition != "network":
            raise ValueError("wake_recognition: needs recognition = 'network'")
        self.wake_recognition, self.wake_weight = bool(wake_recognition), float(wake_weight)
        self.wake_min_ess = float(wake_min_ess)
        continuous = any(not layer.discrete for layer in model.layers)
        if wake_particles is None:  # where the data leave the dreams behind: real values
            wake_particles = 100 if continuous and self.wake_recognition else 0
        self.wake_particles = check_positive_int(wake_particles, "wake_particles", minimum=0)
        # a small binary chain: its draws collapse to distinct states (prior_particles)
        units = sum(layer.dim for layer in model.layers[1:])
        binary = all(layer.discrete for layer in model.layers[1:]) and units <= 62
        self._state_bits = units if binary and not self.wake_particles else None
        if wake_dreams is None:
            wake_dreams = 10 * self.sleep_samples if self._state_bits else self.sleep_samples
        self.wake_dreams = check_positive_int(wake_dreams, "wake_dreams")
        if self.wake_dreams < self.sleep_samples:
            raise ValueError(
                f"wake_dreams: expected at least sleep_samples ({self.sleep_samples}), "
                f"got {wake_dreams}"
            )
        self.wake_redraw_every = check_positive_int(wake_redraw_every, "wake_redraw_every")
        self._wake_states = None  # the last draw of _step_particles (DrawnStates, BottomGroups)
        if importance_encodings is None:  # where the particles reach the data
            importance_encodings = (continuous or binary) and self.wake_recognition
        if importance_encodings and not self.wake_recognition:
            raise ValueError("importance_encodings: needs wake_recognition (its targets)")
        self.importance_encodings = bool(importance_encodings)
        # where the wake phase reads importance targets, not the recogniser: half the updates,
        # on half the dreams
        small = bool(self._state_bits and self.importance_encodings)
        if recognition_every is None:
            recognition_every = 2 if small else 1
        self.recognition_every = check_positive_int(recognition_every, "recognition_every")
        if recognition_dreams is None:
            recognition_dreams = max(1, self.sleep_samples // 2) if small else self.sleep_samples
        self.recognition_dreams = check_positive_int(recognition_dreams, "recognition_dreams")
        if self.recognition_dreams > self.sleep_samples:
            raise ValueError(
                f"recognition_dreams: expected at most sleep_samples ({self.sleep_samples}), "
                f"got {recognition_dreams}"
            )
        self.recognition_points = check_positive_int(recognition_points, "recognition_points")
        self.last_recognition_loss = float("nan")
        self._wake_estimates = None  # this step's wake targets and ESS, for the wake phase
        if sleep_targets not in ("samples", "snis"):
            raise ValueError(f"sleep_targets: expected 'samples' or 'snis', got {sleep_targets!r}")
        self.sleep_target_kind = sleep_targets
        self.last_sleep_ess = float("nan")
        self.last_wake_ess = float("nan")
        if self.input_scaling:
            calibration = model.sample(5000, generator=make_generator(init_seed, self.device))
            self.recognition.set_input_scaling(calibration[0])
        self.param_names, self.params = map(list, zip(*model.named_parameters()))
        self.optimizer = make_optimizer(self.params, optimizer, lr)
        self.steps = 0

    # --- the pieces --------------------------------------------------------------------------
    def dream(self, n: int | None = None) -> list[torch.Tensor]:
        """Sleep samples [x^s, z_1^s, ..., z_L^s] from the current model."""
        return self.model.sample(n or self.sleep_samples, generator=self.generator)

    @torch.no_grad()
    def encode(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """[T_1(z_1), ..., T_L(z_L)] for latents [z_1, ..., z_L]."""
        return [encoding(z) for encoding, z in zip(self.encodings, latents)]

    @torch.no_grad()
    def encode_samples(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`encode` for samples of the model (binary layers hold 0 / 1 only): a small
        binary layer's encodings are read off its table of every state."""
        if self._state_bits is None:
            return self.encode(latents)
        return [
            encode_states(e, state_codes([z]), z) if e.tabulated else e(z)
            for e, z in zip(self.encodings, latents)
        ]

    def map_ridges(self) -> list[torch.Tensor]:
        """Per-column penalties (lambda / N_sleep) of each layer's gradient maps."""
        return [encoding.map_ridge(self.ridge, self.exact_ridge) for encoding in self.encodings]

    def map_solvers(self, features: list[torch.Tensor], latents=None) -> list[RidgeSolver]:
        """The gradient maps' solvers on the dreams' encodings [T_1(z_1^s), ..., T_L(z_L^s)].
        ``latents``: the dreams' [z_1^s, ...] where ``features`` are :meth:`encode_samples` of
        them; a small binary layer's solver then works on its distinct states (the same Gram,
        count-weighted)."""
        solvers = []
        for l, (f, ridge) in enumerate(zip(features, self.map_ridges())):
            distinct = None
            if latents is not None and self._state_bits and self.encodings[l].tabulated:
                states, index = torch.unique(state_codes([latents[l]]), return_inverse=True)
                distinct = (self.encodings[l].state_table()[states], index)
            solvers.append(RidgeSolver(f, ridge, distinct))
        return solvers

    @torch.no_grad()
    def expected_encodings(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The DDC of the posterior: [r_1(x), ..., r_L(x)] ~= [E[T_l(z_l) | x]] (eq 2)."""
        return self.recognition(x)

    @torch.no_grad()
    def wake_phase_encodings(self, x: torch.Tensor, sleep=None, generator=None, chunk=256):
        """The expected encodings the wake phase uses for data x: the recogniser's r(x), or with
        ``importance_encodings`` its blend with the importance-sampled :meth:`wake_targets` on
        the dreams ``sleep`` (default: fresh ones; ``generator`` for them, the extra wake dreams
        and the proposal's draws, default the machine's), ``chunk`` data points at a time."""
        r = self.expected_encodings(x)
        if not self.importance_encodings:
            return r
        generator = generator or self.generator
        if sleep is None:
            sleep = self.model.sample(self.sleep_samples, generator=generator)
        particles = self.prior_particles(sleep, generator=generator)
        blended = []
        for start in range(0, x.shape[0], chunk):
            rows = slice(start, start + chunk)
            targets = self._weighted_targets(x[rows], particles, generator)
            blended.append(self._blend([rl[rows] for rl in r], *targets))
        return [torch.cat(layer) for layer in zip(*blended)]

    def _blend(self, r, targets, ess):
        """Importance-sampled targets where they rest on at least ``wake_min_ess`` effective
        particles, the recogniser's r in proportion below that."""
        alpha = (ess / self.wake_min_ess).clamp(max=1.0).unsqueeze(1).to(r[0].dtype)
        return [alpha * t.to(r[0].dtype) + (1 - alpha) * rl for t, rl in zip(targets, r)]

    @torch.no_grad()
    def wake_targets(
        self,
        x: torch.Tensor,
        sleep: list[torch.Tensor],
        features=None,
        generator=None,
        particles: PriorParticles | None = None,
    ):
        """Self-normalised importance-sampling estimates of E[T_l(z_l) | x_n] for data x. The
        particles are the prior's (:meth:`prior_particles`: the dreams ``sleep``, up to
        ``wake_dreams`` with more, collapsed to distinct states on small binary chains;
        w_ns ~ p(x_n | z_1^s)) and, with ``wake_particles`` M > 0, M draws per point from the
        recogniser's own proposal q(z | x_n) (:class:`MeanFieldProposal`), all weighted against
        the mixture of the two (the balance heuristic: w ~ p(x_n, z) / (a p(z) + (1 - a)
        q(z | x_n)), a = S / (S + M)). Exact as the particles grow; with few effective ones
        biased towards the proposals, but it tells the recogniser where the data are, which
        dreams of a model far from the data never do. ``features``: the dreams' encodings if
        already computed; ``generator``: for the extra dreams and the proposal's draws (default:
        the machine's); ``particles``: the prior particles if already drawn (then ``sleep`` and
        ``features`` are not read). Returns (targets per layer, ESS per data point)."""
        generator = generator or self.generator
        if particles is None:
            particles = self.prior_particles(sleep, features, generator)
        return self._weighted_targets(x, particles, generator)

    @torch.no_grad()
    def prior_particles(self, sleep, features=None, generator=None) -> PriorParticles:
        """The prior's particles of the wake targets: the dreams ``sleep`` and, up to
        ``wake_dreams`` in all, more drawn with ``generator`` (default: the machine's).

        Where every latent layer is binary and the chain has at most 62 latent units, the draws
        collapse to their distinct states z_u, each weighted by p(z_u) / pi_u with pi_u = 1 -
        (1 - p(z_u))^S the chance that S draws include it (the Horvitz-Thompson estimator of a
        sum over states). Each sum over states, hence each target's numerator and denominator,
        stays unbiased; a state's draw count, a noisy estimate of S p(z_u), is replaced by its
        exact prior probability wherever the state is likely to be drawn, and rare states keep
        the weight of one draw. The states are then grouped by their bottom layer z_1, on which
        alone the likelihood depends (:func:`~ddchm.ddc.proposal.group_by_bottom`): the targets
        cost N x (distinct z_1) instead of N x S.
        The extra dreams are as many as keep the distinct states they are expected to reach
        (estimated from the step's own dreams, :func:`expected_distinct`) within 4 N_sleep:
        where the prior's mass sits on few states, many more draws add few columns."""
        generator = generator or self.generator
        latents = list(sleep[1:])
        draws = latents[0].shape[0]
        if self._state_bits is None:  # plain draws (collapsed ones are encoded state by state)
            features = self.encode(latents) if features is None else features
            if self.wake_dreams > draws:
                more = self.model.sample(self.wake_dreams - draws, generator=generator)[1:]
                latents = [torch.cat(pair) for pair in zip(latents, more)]
                features = [torch.cat(pair) for pair in zip(features, self.encode(more))]
            return PriorParticles(latents, features, None, latents[0].shape[0])
        drawn = self._distinct_states(sleep, generator)
        sizes = [z.shape[1] for z in latents]
        return group_by_bottom(
            self.encodings, drawn.codes, sizes, drawn.log_mass, drawn.draws, latents[0].dtype
        )

    @torch.no_grad()
    def _distinct_states(self, sleep, generator) -> DrawnStates:
        """The collapsed draws of :meth:`prior_particles`: the distinct states among the dreams
        and the extra draws, with their log p and log pi."""
        latents, bits = list(sleep[1:]), self._state_bits
        sizes, dtype, draws = [z.shape[1] for z in latents], latents[0].dtype, latents[0].shape[0]
        codes = distinct_codes(state_codes(latents), bits)
        states = decode_states(codes, sizes, dtype)
        log_p = self.model.log_prior(states)
        wanted = self.wake_dreams  # halved until the states they should reach fit the budget
        while wanted > draws and expected_distinct(log_p, draws, wanted) > 4 * self.sleep_samples:
            wanted //= 2
        if wanted > draws:
            more = self.model.sample_latents(wanted - draws, generator=generator)
            codes, draws = distinct_codes(torch.cat([codes, state_codes(more)]), bits), wanted
            states = decode_states(codes, sizes, dtype)
            log_p = self.model.log_prior(states)
        return DrawnStates(codes, states, log_p, log_inclusion_probability(log_p, draws), draws)

    @torch.no_grad()
    def _step_particles(self, sleep) -> PriorParticles:
        """The prior particles of a step's wake targets on a small binary chain: drawn afresh
        (:meth:`prior_particles`) on every ``wake_redraw_every``-th step, and in between the
        last draw's distinct states reweighted by the current prior, p_theta(z) / pi(z) with
        the inclusion probabilities pi of the draw (a Horvitz-Thompson sum over a set drawn
        under an earlier theta is still unbiased for the current one)."""
        sizes, dtype = [z.shape[1] for z in sleep[1:]], sleep[1].dtype
        if self._wake_states is None or self.steps % self.wake_redraw_every == 0:
            drawn = self._distinct_states(sleep, self.generator)
            self._wake_states = (drawn, bottom_groups(drawn.codes, sizes, dtype))
        drawn, groups = self._wake_states
        if drawn.log_p is None or self.steps % self.wake_redraw_every:  # theta has moved
            drawn = drawn._replace(log_p=self.model.log_prior(drawn.latents))
        return group_by_bottom(
            self.encodings,
            drawn.codes,
            sizes,
            drawn.log_mass,
            drawn.draws,
            dtype,
            groups,
        )

    @torch.no_grad()
    def _weighted_targets(self, x, particles: PriorParticles, generator):
        """:meth:`wake_targets` on given prior particles."""
        log_w = pair_log_prob(self.model.observation, x, particles.latents[0])  # (N, S)
        if particles.log_mass is not None:
            log_w = log_w + particles.log_mass
        own = None
        if self.wake_particles:
            own, own_log_w = self._proposal_particles(x, particles, log_w, generator)
            log_w = torch.cat([log_w, own_log_w], 1)
        # softmax over the particles, with every weight below e^-75 of the largest set to 0:
        # such weights change no target beyond rounding, but as float32 they are subnormal
        # numbers, which x86 exponentiates up to 60x and multiplies up to 35x more slowly
        floor = log_w.amax(1, keepdim=True) - 75.0
        negligible = log_w <= floor
        w = torch.softmax(log_w.clamp_(min=floor), 1).masked_fill_(negligible, 0.0)
        n_prior = particles.latents[0].shape[0]
        if particles.square_share is None:
            ess = 1.0 / (w * w).sum(1)
        else:  # collapsed: a state stands for S p / pi draws (>= 1); Kish's ESS over the draws
            ess = ((w * w) @ particles.square_share).reciprocal()  # (no proposal particles)
        targets = [w[:, :n_prior] @ f for f in particles.features]
        if own is not None:
            m = self.wake_particles
            w_own = w[:, n_prior:].unsqueeze(1)  # (N, 1, M)
            for target, f in zip(targets, self.encode(own)):
                target += (w_own @ f.reshape(x.shape[0], m, -1)).squeeze(1)
        return targets, ess

    def _proposal_particles(self, x, particles, dream_log_lik, generator):
        """M particles per point from the recogniser's proposal, and the mixture weights of
        every particle. Turns ``dream_log_lik`` (log p(x_n | z_1^s)) into the dreams'
        mixture log-weights in place; returns (particles, their (N, M) log-weights)."""
        m, n_dreams, dreams = self.wake_particles, particles.draws, particles.latents
        proposal = MeanFieldProposal(self.encodings, self.expected_encodings(x))
        own = proposal.sample(m, generator)
        log_a, log_b = math.log(n_dreams / (n_dreams + m)), math.log(m / (n_dreams + m))
        dream_prior = self.model.log_prior(dreams)  # (S,)
        mixture = torch.logaddexp(log_a + dream_prior, log_b + proposal.pair_log_prob(dreams))
        dream_log_lik.add_(dream_prior - mixture)
        own_prior = self.model.log_prior(own).reshape(x.shape[0], m)
        own_lik = self.model.observation.log_prob(x.repeat_interleave(m, 0), own[0])
        mixture = torch.logaddexp(log_a + own_prior, log_b + proposal.log_prob(own, m))
        return own, own_lik.reshape(x.shape[0], m) + own_prior - mixture

    @torch.no_grad()
    def sleep_targets(self, sleep: list[torch.Tensor], features=None, chunk: int = 1024):
        """Regression targets for the dreams' x^s: the SNIS estimates of E[T_l(z_l) | x^s] with
        every dream of the batch as a particle, w_sj ~ p(x^s | z_1^j) (prior samples, so the
        prior cancels). Returns (targets per layer, median ESS)."""
        features = self.encode(sleep[1:]) if features is None else features
        targets = [torch.empty_like(f) for f in features]
        ess = []
        for start in range(0, sleep[0].shape[0], chunk):
            rows = slice(start, start + chunk)
            w = torch.softmax(pair_log_prob(self.model.observation, sleep[0][rows], sleep[1]), 1)
            for target, f in zip(targets, features):
                target[rows] = w @ f
            ess.append(1.0 / (w**2).sum(1))
        return targets, float(torch.cat(ess).median())

    def train_recognition(
        self, sleep: list[torch.Tensor], data=None, features=None, particles=None
    ) -> float:
        """Recognition regression (eq 7) on the given dreams, then on fresh ones if
        ``recognition_steps`` > 1; with ``wake_recognition`` also on the data batch ``data``
        towards :meth:`wake_targets`. ``features``: the dreams' encodings if already computed;
        ``particles``: the wake targets' prior particles of the given dreams, if drawn.
        Returns the loss of the first update."""
        loss = None
        for step in range(self.recognition_steps):
            dreams = sleep if step == 0 else self.dream()
            if step == 0 and features is not None:
                targets = features
            else:
                targets = self.encode(dreams[1:])
            regressed = targets
            if self.sleep_target_kind == "snis":
                regressed, self.last_sleep_ess = self.sleep_targets(dreams, targets)
            wake = {}
            if self.wake_recognition and data is not None:
                given = particles if step == 0 else None
                data = self.recognition_rows(data)
                wake_targets, ess = self.wake_targets(data, dreams, targets, particles=given)
                if step == 0:
                    self._wake_estimates = (wake_targets, ess)
                self.last_wake_ess = float(ess.median())
                # a target from fewer than wake_min_ess effective dreams is mostly the prior's
                # guess: its weight falls in proportion
                weight = self.wake_weight * (ess / self.wake_min_ess).clamp(max=1.0)
                wake = dict(wake_x=data, wake_targets=wake_targets, wake_weight=weight)
            n = self.recognition_dreams  # the first n dreams (a random subset: they are iid)
            value = self.recognition.fit_step(dreams[0][:n], [t[:n] for t in regressed], **wake)
            loss = value if loss is None else loss
        return loss

    def recognition_rows(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch's points whose importance targets train the recogniser: all of them where
        the wake phase reads the targets (``importance_encodings``), else the first
        ``recognition_points`` (a random subset: the batch is a random sample)."""
        return batch if self.importance_encodings else batch[: self.recognition_points]

    def theta_gradient(
        self,
        batch: torch.Tensor,
        sleep: list[torch.Tensor] | None = None,
        encodings: list[torch.Tensor] | None = None,
        features: list[torch.Tensor] | None = None,
    ):
        """The DDC estimate of mean_n grad_theta log p(x_n) for the batch (no step taken), from
        the given dreams (default: fresh ones) and expected encodings [r_1(x), ..., r_L(x)]
        (default: the recogniser's; pass exact ones for the oracle update of spec s. 9).
        ``features``: the dreams' encodings [T_1(z_1^s), ...] if already computed (a step
        shares them with the recognition update)."""
        batch = self.model.check_data(batch, "batch")
        if features is not None and sleep is None:
            raise ValueError("features: the encodings of given dreams; pass those dreams as sleep")
        sleep = self.dream() if sleep is None else sleep
        return self._theta_gradient(batch, sleep, encodings, features)

    def _theta_gradient(self, batch, sleep, encodings=None, features=None, sampled=False):
        """:meth:`theta_gradient` on a checked batch; ``sampled``: ``features`` are
        :meth:`encode_samples` of the dreams (the maps may then use distinct states)."""
        features = self.encode(sleep[1:]) if features is None else features
        solvers = [None, *self.map_solvers(features, sleep[1:] if sampled else None)]
        r = self.expected_encodings(batch) if encodings is None else encodings
        return wake_gradient(self.model, sleep, solvers, [None, *r], batch)

    # --- the algorithm -----------------------------------------------------------------------
    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One sleep phase (recognition + maps) and one wake update of theta."""
        batch = self.model.check_data(batch, "batch")
        sleep = self.dream()
        if self.recalibrate_every and self.steps % self.recalibrate_every == 0 and self.steps:
            self.recalibrate(sleep)
        # the dreams are encoded once: the recogniser's targets and the gradient maps' features
        features = self.encode_samples(sleep[1:])
        update = self.steps % self.recognition_every == 0
        particles = None
        if self._state_bits and (self.importance_encodings or (update and self.wake_recognition)):
            particles = self._step_particles(sleep)
        self._wake_estimates = None
        if update:
            self.last_recognition_loss = self.train_recognition(sleep, batch, features, particles)
        elif self.importance_encodings:  # the wake phase's r, without a recogniser update
            self._wake_estimates = self.wake_targets(batch, sleep, features, particles=particles)
        r = None
        if self.importance_encodings and self._wake_estimates is not None:
            r = self._blend(self.expected_encodings(batch), *self._wake_estimates)
        ascent = self._theta_gradient(batch, sleep, r, features=features, sampled=True)
        grad_norm = apply_ascent(self.optimizer, self.params, ascent, self.param_names)
        self.steps += 1
        metrics = {"recognition_loss": self.last_recognition_loss, "grad_norm": grad_norm}
        if self.diagnostic_every and self.steps % self.diagnostic_every == 0:
            metrics.update(self.diagnostics())
        return metrics

    @torch.no_grad()
    def recalibrate(self, sleep: list[torch.Tensor], force: bool = False) -> list[int]:
        """Follow the model: recalibrate every encoding whose drift on these dreams exceeds the
        tolerance (all of them if ``force``), refit the recogniser's heads of those layers on the
        new encodings of the same dreams, and refresh the recogniser's input scaling. Returns
        the recalibrated layers (1-based)."""
        moved = [
            l
            for l, encoding in enumerate(self.encodings, start=1)
            if not encoding.whitened  # a whitener is tied to one calibration (spec s. 9)
            and (force or encoding.drift(sleep[l]) > self.recalibrate_tolerance)
        ]
        if self.input_scaling and hasattr(self.recognition, "set_input_scaling"):
            self.recognition.set_input_scaling(sleep[0])
        if not moved:
            return moved
        ratios = {}
        for l in moved:
            old_scale = self.encodings[l - 1].unit_scale.clone()
            self.encodings[l - 1].calibrate(sleep[l])
            ratios[l - 1] = old_scale / self.encodings[l - 1].unit_scale
        if hasattr(self.recognition, "refit_heads"):
            targets = {l - 1: self.encodings[l - 1](sleep[l]) for l in moved}
            if self.sleep_target_kind == "snis":  # the heads regress what train_recognition does
                smoothed, _ = self.sleep_targets(sleep, list(targets.values()))
                targets = dict(zip(targets, smoothed))
            self.recognition.refit_heads(sleep[0], targets, ratios)
        self.recalibrations += len(moved)
        return moved

    @torch.no_grad()
    def diagnostics(self, n: int | None = None) -> dict[str, float]:
        """Held-out R^2 on fresh dreams: of the recogniser (r_l(x) vs T_l(z_l)), and of the
        gradient maps' regressions of S_l(z_l) on T_l (child) and mu_l(z_{l+1}) on T_{l+1}."""
        n = n or self.sleep_samples
        # dreams of their own (seeded by the step): diagnostics never change the run
        generator = make_generator(self.diagnostic_seed + self.steps, device=self.device)
        train = self.model.sample(n, generator=generator)
        test = self.model.sample(n, generator=generator)
        f_train, f_test = self.encode(train[1:]), self.encode(test[1:])
        out = {"sleep_target_ess": self.last_sleep_ess} if self.sleep_target_kind == "snis" else {}
        r_test = self.expected_encodings(test[0])
        ridges = self.map_ridges()
        for l in range(1, self.model.n_latent_layers + 1):
            t = f_test[l - 1][:, :-1]
            residual = ((t - r_test[l - 1][:, :-1]) ** 2).sum()
            out[f"recognition_r2_z{l}"] = float(1 - residual / ((t - t.mean(0)) ** 2).sum())
            layer = self.model.layers[l]
            out[f"map_r2_S_z{l}"] = heldout_r2(
                f_train[l - 1],
                layer.sufficient_stats(train[l]),
                f_test[l - 1],
                layer.sufficient_stats(test[l]),
                ridges[l - 1],
            )
            child = self.model.layers[l - 1]
            out[f"map_r2_mu_z{l - 1 if l > 1 else 'x'}"] = heldout_r2(
                f_train[l - 1],
                child.mean_stats(train[l]),
                f_test[l - 1],
                child.mean_stats(test[l]),
                ridges[l - 1],
            )
        return out

    def fit_recognition(self, n_steps: int, progress: bool = False, data=None) -> float:
        """Train only the recogniser (theta fixed) for ``n_steps`` sleep batches (with
        ``wake_recognition``, also on minibatches of 100 rows of ``data``); last loss."""
        if data is not None:
            data = self.model.check_data(data, "data")
        from tqdm.auto import trange

        loss = float("nan")
        for _ in trange(n_steps, disable=not progress, desc="recognition"):
            batch = None
            if data is not None:
                rows = torch.randint(
                    data.shape[0], (100,), generator=self.generator, device=self.device
                )
                batch = data[rows]
            loss = self.train_recognition(self.dream(), batch)
        return loss

    def proposal(self, inflation: float = 1.5) -> RecognitionProposal:
        """The recogniser as an importance-sampling proposal q(z | x) (mean-field, read off the
        expected encodings) for ``evaluate.importance_log_likelihood``."""
        return RecognitionProposal(self, inflation)

    @torch.no_grad()
    def posterior_means(self, x: torch.Tensor, n_sleep: int = 10_000) -> list[torch.Tensor]:
        """E_q[z_l | x] = alpha_l^T r_l(x), alpha_l fitted by ridge of z_l on T_l (eq 5) on fresh
        dreams drawn with a generator of their own (training randomness is untouched)."""
        x = self.model.check_data(x)
        sleep = self.model.sample(n_sleep, generator=make_generator(12345, device=self.device))
        features = self.encode(sleep[1:])
        r = self.expected_encodings(x)
        solvers = self.map_solvers(features)
        return [r[l] @ solvers[l].fit(sleep[l + 1]) for l in range(self.model.n_latent_layers)]

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "encodings": self.encodings.state_dict(),
            "recognition": self.recognition.state_dict(),
            "recognition_extra": self.recognition.extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "steps": self.steps,
            "recalibrations": self.recalibrations,
            "last_recognition_loss": self.last_recognition_loss,
            "wake_states": None
            if self._wake_states is None
            else {
                "codes": self._wake_states[0].codes,
                "log_inclusion": self._wake_states[0].log_inclusion,
                "draws": self._wake_states[0].draws,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        # one encoding at a time: LayerEncoding.load_state_dict resizes the whitening buffers
        for i, encoding in enumerate(self.encodings):
            prefix = f"{i}."
            encoding.load_state_dict(
                {k[len(prefix) :]: v for k, v in state["encodings"].items() if k.startswith(prefix)}
            )
        self.recognition.load_state_dict(state["recognition"])
        self.recognition.load_extra_state(state["recognition_extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.steps = state["steps"]
        self.recalibrations = state.get("recalibrations", 0)
        self.last_recognition_loss = state.get("last_recognition_loss", float("nan"))
        self._wake_states = None
        saved = state.get("wake_states")
        if saved is not None and self._state_bits:  # the draws the next steps reweight
            sizes = [layer.dim for layer in self.model.layers[1:]]
            codes = saved["codes"].to(self.device)
            states = decode_states(codes, sizes, self.dtype)
            log_inclusion = saved["log_inclusion"].to(self.device)
            drawn = DrawnStates(codes, states, None, log_inclusion, int(saved["draws"]))
            self._wake_states = (drawn, bottom_groups(codes, sizes, self.dtype))
