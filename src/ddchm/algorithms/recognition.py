"""Recognition models q(z | x) for the baselines, and the machinery those algorithms share.

A recognition model follows the generative chain bottom-up, one conditional per latent layer:

    q(z_1..z_L | x) = q(z_1 | x) prod_{l=2}^{L} q(z_l | z_{l-1})

Each conditional is factorised over the units of its layer, and its family mirrors the model's
layer l: Bernoulli (logits), Gaussian (mean and log-std) or Laplace (location and scale; a
posterior under a zero-mean Laplace prior is not zero-mean, so q has a free location). The
parameters come from a tanh MLP of the layer below (``hidden=(200,)``) or, with ``hidden=()``,
from an affine map.

Shapes: data ``x`` is ``(N, D_0)``; K particles of layer l are ``(K, N, D_l)``; log q is
``(K, N)``. Gaussian and Laplace layers can be reparameterised (z = loc + scale * eps, the
Laplace eps by the inverse CDF of uniform noise); a Bernoulli layer cannot.

:class:`RecognitionAlgorithm` is the base of every baseline (wake-sleep, RWS, VIMCO, VAE, IWAE):
it owns q, the two optimisers (theta and phi) and the random generator, and turns the
objectives each subclass defines into ``step``, ``theta_gradient``, ``phi_gradient``,
``fit_recognition`` and an exact ``state_dict`` round trip.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ddchm.algorithms.base import Algorithm, OptimizerSpec, apply_ascent, make_optimizer
from ddchm.distributed import LOCAL, Shard
from ddchm.models import HierarchicalModel
from ddchm.validation import check_matrix, check_positive_int, make_generator

LOG_2PI = math.log(2 * math.pi)
_MIN_SCALE = 1e-4  # Laplace q: scale = softplus(.) + _MIN_SCALE, as in the model's Laplace layer


# --- one conditional q(z_l | parent) ---------------------------------------------------------
class RecognitionLayer(nn.Module):
    """q(z | parent), factorised over the ``dim`` units, parameters from a link network.

    Subclasses define how the link's raw output (``raw``, shape (..., params_per_unit * dim))
    becomes a distribution: ``log_prob_raw``, ``sample_raw`` and ``mean_raw``. Working on the
    raw output lets the first layer evaluate its network once on x and broadcast to K particles.
    """

    family: str = ""
    reparameterizable: bool = False
    params_per_unit: int = 1

    def __init__(self, dim: int, input_dim: int, hidden: Sequence[int] = (200,)):
        super().__init__()
        self.dim, self.input_dim, self.hidden = dim, input_dim, tuple(hidden)
        sizes = [input_dim, *self.hidden, self.params_per_unit * dim]
        modules: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            if i > 0:
                modules.append(nn.Tanh())
            modules.append(nn.Linear(fan_in, fan_out))
        self.net = nn.Sequential(*modules)

    def forward(self, parent: torch.Tensor) -> torch.Tensor:
        """The link's raw output for ``parent`` (..., input_dim) -> (..., params_per_unit*dim)."""
        return self.net(parent)

    def log_prob(self, value: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
        """log q(value | parent) summed over units; leading dimensions broadcast."""
        return self.log_prob_raw(self(parent), value)

    def log_prob_raw(self, raw: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_raw(
        self, raw: torch.Tensor, generator: torch.Generator, reparameterize: bool, rows=None
    ) -> torch.Tensor:
        """One draw per row of ``raw``; detached from phi unless ``reparameterize``. ``rows``:
        (shard, total) when ``raw``'s second-last dimension is one process's rows of a batch of
        ``total``: the noise is that of the whole batch's draw (``Shard.draw``)."""
        raise NotImplementedError

    def mean_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """E_q[z | parent], (..., dim)."""
        raise NotImplementedError

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default Linear initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), seeded."""
        with torch.no_grad():
            for module in self.net:
                if isinstance(module, nn.Linear):
                    bound = 1.0 / math.sqrt(module.in_features)
                    for p in (module.weight, module.bias):
                        p.uniform_(-bound, bound, generator=generator)

    def _noise(self, raw: torch.Tensor, generator, rows=None, sample=torch.rand) -> torch.Tensor:
        shard, total = rows if rows is not None else (LOCAL, None)
        shape = (*raw.shape[:-1], self.dim)
        options = dict(generator=generator, dtype=raw.dtype, device=raw.device)
        return shard.draw(sample, shape, -2, total, **options)

    def extra_repr(self) -> str:
        return f"{self.family}, dim={self.dim}, input_dim={self.input_dim}, hidden={self.hidden}"


class BernoulliRecognition(RecognitionLayer):
    """q(z | parent) = prod_d Bernoulli(z_d; sigmoid(a_d)), logits a = link(parent)."""

    family = "bernoulli"

    def log_prob_raw(self, raw, value):
        return (value * raw - F.softplus(raw)).sum(-1)

    def sample_raw(self, raw, generator, reparameterize, rows=None):
        if reparameterize:
            raise ValueError(
                "reparameterize: a Bernoulli recognition layer has no reparameterisation; "
                "use a score-function estimator (VIMCO, RWS) for discrete layers"
            )
        with torch.no_grad():
            return (self._noise(raw, generator, rows) < torch.sigmoid(raw)).to(raw.dtype)

    def mean_raw(self, raw):
        return torch.sigmoid(raw)


class GaussianRecognition(RecognitionLayer):
    """q(z | parent) = prod_d N(z_d; m_d, s_d^2), (m, log s) = link(parent)."""

    family = "gaussian"
    reparameterizable = True
    params_per_unit = 2

    def loc_and_log_std(self, raw):
        return raw[..., : self.dim], raw[..., self.dim :]

    def log_prob_raw(self, raw, value):
        mean, log_std = self.loc_and_log_std(raw)
        standardised = (value - mean) * torch.exp(-log_std)
        return (-0.5 * LOG_2PI - log_std - 0.5 * standardised.square()).sum(-1)

    def sample_raw(self, raw, generator, reparameterize, rows=None):
        mean, log_std = self.loc_and_log_std(raw)
        eps = self._noise(raw, generator, rows, sample=torch.randn)
        z = mean + log_std.exp() * eps  # z = m + s * eps, eps ~ N(0, 1)
        return z if reparameterize else z.detach()

    def mean_raw(self, raw):
        return self.loc_and_log_std(raw)[0]


class LaplaceRecognition(RecognitionLayer):
    """q(z | parent) = prod_d Laplace(z_d; m_d, b_d), m = link_m(parent), b = softplus(link_b).

    Density exp(-|z - m| / b) / (2 b). Reparameterised by the inverse CDF:
    u ~ U(-1/2, 1/2), z = m - b sign(u) log(1 - 2|u|).
    """

    family = "laplace"
    reparameterizable = True
    params_per_unit = 2

    def loc_and_scale(self, raw):
        return raw[..., : self.dim], F.softplus(raw[..., self.dim :]) + _MIN_SCALE

    def log_prob_raw(self, raw, value):
        loc, scale = self.loc_and_scale(raw)
        return (-torch.log(2 * scale) - (value - loc).abs() / scale).sum(-1)

    def sample_raw(self, raw, generator, reparameterize, rows=None):
        loc, scale = self.loc_and_scale(raw)
        u = self._noise(raw, generator, rows) - 0.5
        tiny = torch.finfo(raw.dtype).tiny
        z = loc - scale * torch.sign(u) * torch.log((1 - 2 * u.abs()).clamp_min(tiny))
        return z if reparameterize else z.detach()

    def mean_raw(self, raw):
        return self.loc_and_scale(raw)[0]


RECOGNITION_FAMILIES = {
    cls.family: cls for cls in (BernoulliRecognition, GaussianRecognition, LaplaceRecognition)
}


# --- the whole chain q(z_1..z_L | x) ----------------------------------------------------------
class RecognitionModel(nn.Module):
    """q(z_1..z_L | x) = q(z_1 | x) prod_l q(z_l | z_{l-1}), built to mirror a generative chain.

    Args:
        layers: the conditionals bottom-up, ``layers[0]`` = q(z_1 | x), ``layers[l-1]`` =
            q(z_l | z_{l-1}); each layer's ``input_dim`` is the ``dim`` of the one below.

    Build one for a model with :meth:`for_model`.
    """

    def __init__(self, layers: Sequence[RecognitionLayer]):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("layers: a recognition model needs at least one latent layer")
        for below, above in zip(layers, layers[1:]):
            if above.input_dim != below.dim:
                raise ValueError(
                    f"layers: a {above.family} layer with input_dim={above.input_dim} sits "
                    f"above a layer of {below.dim} units"
                )
        self.layers = nn.ModuleList(layers)

    @classmethod
    def for_model(
        cls,
        model: HierarchicalModel,
        hidden: Sequence[int] = (200,),
        generator: torch.Generator | int | None = None,
    ) -> RecognitionModel:
        """q for ``model``: one layer per latent layer of the same family, same dtype/device.

        Args:
            hidden: hidden sizes of every link's tanh MLP; ``()`` gives affine links.
            generator: seeds the initialisation (PyTorch's default Linear init).
        """
        hidden = check_hidden(hidden)
        reference = next(model.parameters())
        generator = make_generator(generator, device=reference.device)
        layers = []
        for l in range(1, model.n_latent_layers + 1):
            family, dim = model.layers[l].family, model.layers[l].dim
            layer = RECOGNITION_FAMILIES[family](dim, model.layers[l - 1].dim, hidden)
            layer.to(dtype=reference.dtype, device=reference.device)
            layer.reset_parameters(generator)
            layers.append(layer)
        return cls(layers)

    @property
    def n_latent_layers(self) -> int:
        return len(self.layers)

    @property
    def data_dim(self) -> int:
        return self.layers[0].input_dim

    @property
    def reparameterizable(self) -> bool:
        return all(layer.reparameterizable for layer in self.layers)

    def sample(
        self,
        x: torch.Tensor,
        n_particles: int = 1,
        generator: torch.Generator | int | None = None,
        reparameterize: bool = False,
        rows=None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Ancestral draws z_1 ~ q(z_1 | x), z_l ~ q(z_l | z_{l-1}) and their log q.

        Args:
            x: data, (N, D_0).
            n_particles: K, independent draws per data point.
            generator: a torch.Generator or seed.
            reparameterize: keep the draws differentiable in phi (Gaussian / Laplace only);
                otherwise the draws are detached and only ``log_q`` depends on phi.
            rows: (shard, total) when x is one process's rows of a batch of ``total``: the
                draws are those the whole batch would get (``ddchm.distributed``).

        Returns:
            ``([z_1, ..., z_L], log_q)`` with z_l of shape (K, N, D_l) and log_q (K, N), the
            latter differentiable in phi.
        """
        check_matrix(x, "x", self.data_dim)
        n_particles = check_positive_int(n_particles, "n_particles")
        generator = make_generator(generator, device=x.device)
        if reparameterize:
            for l, layer in enumerate(self.layers, start=1):
                if not layer.reparameterizable:
                    raise ValueError(
                        f"reparameterize: z{l} is a {layer.family} layer, which cannot be "
                        "reparameterised"
                    )
        raw = self.layers[0](x).expand(n_particles, *x.shape[:1], -1)  # (K, N, P_1)
        latents, log_q = [], 0.0
        for l, layer in enumerate(self.layers):
            if l > 0:
                raw = layer(latents[-1])  # (K, N, P_l)
            z = layer.sample_raw(raw, generator, reparameterize, rows)
            log_q = log_q + layer.log_prob_raw(raw, z)
            latents.append(z)
        return latents, log_q

    def log_prob(self, x: torch.Tensor, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """log q(z_1..z_L | x); latents (K, N, D_l) give (K, N), latents (N, D_l) give (N,)."""
        check_matrix(x, "x", self.data_dim)
        if len(latents) != self.n_latent_layers:
            raise ValueError(
                f"latents: expected {self.n_latent_layers} arrays [z1..z{self.n_latent_layers}], "
                f"got {len(latents)}"
            )
        total = self.layers[0].log_prob(latents[0], x)
        for l in range(1, self.n_latent_layers):
            total = total + self.layers[l].log_prob(latents[l], latents[l - 1])
        return total

    @torch.no_grad()
    def sample_with_log_prob(
        self, x: torch.Tensor, n_particles: int = 1, generator: torch.Generator | int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:meth:`sample` without reparameterisation or autograd, for importance sampling.

        Returns ``([z_1, ..., z_L], log_q)``, z_l (K, N, D_l), log_q (K, N)."""
        return self.sample(x, n_particles, generator, reparameterize=False)

    @torch.no_grad()
    def means(
        self, x: torch.Tensor, n_samples: int = 100, generator: torch.Generator | int | None = 0
    ) -> list[torch.Tensor]:
        """[E_q[z_1 | x], ..., E_q[z_L | x]], each (N, D_l).

        The first layer's mean is exact. Above it, E_q[z_l | x] = E_{q(z_{l-1} | x)}[m_l(z_{l-1})]
        with m_l the conditional mean of q(z_l | z_{l-1}); it is estimated by averaging m_l over
        ``n_samples`` ancestral draws of z_{l-1} (Rao-Blackwellised: conditional means, not draws,
        are averaged). ``n_samples=0`` propagates means instead, m_l(E[z_{l-1}]): deterministic
        but biased wherever the link is nonlinear. The default generator is a fixed seed, so the
        result is reproducible and leaves any training generator untouched.
        """
        check_matrix(x, "x", self.data_dim)
        n_samples = check_positive_int(n_samples, "n_samples", minimum=0)
        raw = self.layers[0](x)
        means = [self.layers[0].mean_raw(raw)]
        if n_samples == 0:
            for layer in self.layers[1:]:
                means.append(layer.mean_raw(layer(means[-1])))
            return means
        generator = make_generator(generator, device=x.device)
        z = self.layers[0].sample_raw(raw.expand(n_samples, *raw.shape), generator, False)
        for layer in self.layers[1:]:
            raw = layer(z)  # (S, N, P_l)
            means.append(layer.mean_raw(raw).mean(0))
            z = layer.sample_raw(raw, generator, False)
        return means


# --- validation helpers shared by the baselines -------------------------------------------------
def check_hidden(hidden) -> tuple[int, ...]:
    """Hidden sizes as a tuple of positive ints, or a TypeError / ValueError naming ``hidden``."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(
            f"hidden: expected a sequence of layer sizes such as (200,) or () for affine links, "
            f"got {hidden!r}"
        )
    for size in hidden:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"hidden: expected positive integer layer sizes, got {tuple(hidden)}")
    return tuple(int(size) for size in hidden)


def check_positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_unit_interval(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def require_reparameterizable(model: HierarchicalModel, algorithm: str) -> None:
    """Raise a ValueError naming the first discrete latent layer and the algorithms to use."""
    for l in range(1, model.n_latent_layers + 1):
        layer = model.layers[l]
        if layer.discrete:
            raise ValueError(
                f"model: {algorithm} needs reparameterisable latent layers, but z{l} is "
                f"{layer.family.capitalize()}; use 'vimco' or 'rws' for discrete layers"
            )


# --- the shared algorithm machinery ---------------------------------------------------------
class RecognitionAlgorithm(Algorithm):
    """Base of the baselines that learn theta together with a recognition model q_phi.

    A subclass implements :meth:`_objectives`, which returns, for a data batch x,

    - ``theta_objective``: a scalar whose theta-gradient is the ascent direction on theta;
    - ``phi_loss``: a scalar whose phi-gradient is the descent direction on phi;
    - named metrics (floats).

    and sets ``num_particles`` (K, used by :meth:`bound`). Both gradients are taken at the
    current (theta, phi) from the same draws, then both optimisers step. Draws for theta are made
    before any other draw (dreams), so :meth:`theta_gradient` from a given generator state
    returns exactly the direction that :meth:`step` would apply from that state.

    Args:
        model: the generative chain (theta); it is updated in place.
        lr: learning rate of theta's optimiser.
        optimizer: theta's optimiser, a name in :data:`~ddchm.algorithms.base.OPTIMIZERS` or a
            callable ``params -> torch.optim.Optimizer``.
        recognition_lr: learning rate of phi's optimiser.
        recognition_optimizer: phi's optimiser; defaults to ``optimizer``.
        hidden: hidden sizes of q's tanh MLP links; ``()`` for affine links.
        generator: seed or torch.Generator for q's initialisation and every draw.
    """

    def __init__(
        self,
        model: HierarchicalModel,
        *,
        lr: float = 1e-3,
        optimizer: OptimizerSpec = "adam",
        recognition_lr: float = 1e-3,
        recognition_optimizer: OptimizerSpec | None = None,
        hidden: Sequence[int] = (200,),
        generator: torch.Generator | int | None = None,
    ):
        super().__init__(model, generator)
        self.lr = check_positive_float(lr, "lr")
        self.recognition_lr = check_positive_float(recognition_lr, "recognition_lr")
        self.hidden = check_hidden(hidden)
        self.recognition = RecognitionModel.for_model(model, self.hidden, self.generator)
        self._theta_names, self._theta_params = _named(model)
        self._phi_names, self._phi_params = _named(self.recognition)
        self.theta_optimizer = make_optimizer(self._theta_params, optimizer, self.lr)
        self.phi_optimizer = make_optimizer(
            self._phi_params,
            optimizer if recognition_optimizer is None else recognition_optimizer,
            self.recognition_lr,
        )
        self._batch_rows: int | None = None  # the whole batch's size while a sharded step runs

    def check_shard(self, shard: Shard, batch_size: int) -> None:
        """A step shards the batch and the sleep-phase dreams: both must split evenly."""
        if getattr(self, "sleep_samples", None) is not None:
            shard.rows(self.sleep_samples, "algorithm.sleep_samples")

    def sample_q(self, x, n_particles: int, reparameterize: bool = False):
        """``recognition.sample`` of a step's batch x with the algorithm's generator (in a
        sharded step x is this process's rows, and the draws are the whole batch's)."""
        rows = None if self._batch_rows is None else (self.shard, self._batch_rows)
        return self.recognition.sample(x, n_particles, self.generator, reparameterize, rows)

    def batch_rows(self, x) -> int:
        """The step's whole batch size (x may be this process's rows of it)."""
        return x.shape[0] if self._batch_rows is None else self._batch_rows

    # --- what a subclass defines -------------------------------------------------------------
    def _objectives(
        self, x: torch.Tensor, theta: bool = True, phi: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, float]]:
        """(theta_objective, phi_loss, metrics) for batch x; a part not asked for may be None."""
        raise NotImplementedError

    def _recognition_loss(self, x: torch.Tensor | None, batch_size: int):
        """phi_loss and metrics for one :meth:`fit_recognition` step. ``x`` is a data batch, or
        None when no data was given; the default then uses x ~ p_theta(x)."""
        if x is None:
            x = self.model.sample(batch_size, generator=self.generator)[0]
        _, phi_loss, metrics = self._objectives(x, theta=False)
        return phi_loss, metrics

    # --- shared operations -------------------------------------------------------------------
    def log_joint(self, x: torch.Tensor, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """log p_theta(x, z) for particles z_l of shape (K, N, D_l); returns (K, N)."""
        k, n = latents[0].shape[:2]
        flat_x = x.expand(k, *x.shape).reshape(k * n, -1)
        flat_z = [z.reshape(k * n, -1) for z in latents]
        return torch.stack(self.model.layer_log_probs(flat_x, flat_z)).sum(0).reshape(k, n)

    @torch.no_grad()
    def bound(
        self, x, num_particles: int | None = None, generator: torch.Generator | int | None = 0
    ) -> torch.Tensor:
        """The K-sample importance-weighted bound log (1/K) sum_k p(x_n, z_k) / q(z_k | x_n) per
        data point, (N,), one Monte Carlo draw; its expectation is <= log p(x_n) and rises with K
        (K = 1: the ELBO). K defaults to the algorithm's ``num_particles``; the default
        generator is a fixed seed, so training draws are left untouched."""
        x = self.model.check_data(x)
        k = check_positive_int(num_particles or self.num_particles, "num_particles")
        latents, log_q = self.recognition.sample(x, k, make_generator(generator, self.device))
        return torch.logsumexp(self.log_joint(x, latents) - log_q, dim=0) - math.log(k)

    def sleep_phi_loss(self, n_dreams: int) -> torch.Tensor:
        """-mean_s log q(z^s | x^s) on dreams (x^s, z^s) ~ p_theta (the sleep phase)."""
        x, *latents = self.model.sample(n_dreams, generator=self.generator)
        if self._batch_rows is not None:  # a sharded step: this process's dreams
            rows = self.shard.rows(n_dreams, "sleep dreams")
            x, latents = x[rows], [z[rows] for z in latents]
        return -self.recognition.log_prob(x, latents).mean()

    def step(self, batch) -> dict[str, float]:
        """One update of theta and phi from a data batch (N, D_0); returns named metrics."""
        x = self.model.check_data(batch, "batch")
        shard = self.shard
        if shard.sharded:  # this process's rows; the draws stay the whole batch's
            self._batch_rows, x = x.shape[0], x[shard.rows(x.shape[0], "batch")]
        try:
            theta_objective, phi_loss, metrics = self._objectives(x)
        finally:
            self._batch_rows = None
        theta_ascent = _gradient(theta_objective, self._theta_names, self._theta_params, True)
        phi_ascent = _gradient(-phi_loss, self._phi_names, self._phi_params)
        # each process's objectives are means over equal parts: the average is the batch's
        theta_ascent = shard.reduce_gradients(theta_ascent, mean=True)
        phi_ascent = shard.reduce_gradients(phi_ascent, mean=True)
        metrics["grad_norm"] = apply_ascent(
            self.theta_optimizer, self._theta_params, theta_ascent, self._theta_names
        )
        metrics["recognition_grad_norm"] = apply_ascent(
            self.phi_optimizer, self._phi_params, phi_ascent, self._phi_names
        )
        return shard.mean_metrics(metrics)

    def theta_gradient(self, batch) -> dict[str, torch.Tensor]:
        """The ascent direction on theta that :meth:`step` would apply for this batch (keyed as
        ``model.named_parameters()``), without applying it. Consumes random draws."""
        x = self.model.check_data(batch, "batch")
        theta_objective, _, _ = self._objectives(x, phi=False)
        return _gradient(theta_objective, self._theta_names, self._theta_params)

    def phi_gradient(self, batch) -> dict[str, torch.Tensor]:
        """The ascent direction on phi (minus the gradient of the phi loss) for this batch,
        keyed as ``recognition.named_parameters()``, without applying it."""
        x = self.model.check_data(batch, "batch")
        _, phi_loss, _ = self._objectives(x, theta=False)
        return _gradient(-phi_loss, self._phi_names, self._phi_params)

    def fit_recognition(self, n_steps: int, data=None, batch_size: int = 100) -> dict[str, float]:
        """Train only q (theta frozen) for ``n_steps`` updates of phi's optimiser.

        Args:
            n_steps: number of phi updates.
            data: (N, D_0) data to draw minibatches from (uniformly, with replacement across
                steps); None draws x from the model where the algorithm needs x.
            batch_size: data points (or dreams) per step.

        Returns:
            the metrics averaged over the last tenth of the steps.
        """
        n_steps = check_positive_int(n_steps, "n_steps")
        batch_size = check_positive_int(batch_size, "batch_size")
        if data is not None:
            data = self.model.check_data(data, "data")
        history = []
        for _ in range(n_steps):
            x = None
            if data is not None:
                rows = torch.randint(
                    data.shape[0], (batch_size,), generator=self.generator, device=self.device
                )
                x = data[rows]
            phi_loss, metrics = self._recognition_loss(x, batch_size)
            phi_ascent = _gradient(-phi_loss, self._phi_names, self._phi_params)
            metrics["recognition_grad_norm"] = apply_ascent(
                self.phi_optimizer, self._phi_params, phi_ascent, self._phi_names
            )
            history.append(metrics)
        tail = history[-max(1, n_steps // 10) :]
        return {key: sum(m[key] for m in tail) / len(tail) for key in tail[-1]}

    @torch.no_grad()
    def posterior_means(self, x) -> list[torch.Tensor]:
        """[E_q[z_1 | x], ..., E_q[z_L | x]], see :meth:`RecognitionModel.means`."""
        return self.recognition.means(self.model.check_data(x))

    def state_dict(self) -> dict:
        """A snapshot (deep copy) of q's parameters, both optimisers and the generator.

        The model's parameters are not included: the training loop saves the model."""
        return copy.deepcopy(
            {
                "recognition": self.recognition.state_dict(),
                "theta_optimizer": self.theta_optimizer.state_dict(),
                "phi_optimizer": self.phi_optimizer.state_dict(),
                "generator": self.generator.get_state(),
            }
        )

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` snapshot; the run then continues bit for bit."""
        missing = {"recognition", "theta_optimizer", "phi_optimizer", "generator"} - set(state)
        if missing:
            raise ValueError(f"state: missing entries {sorted(missing)}")
        state = copy.deepcopy(state)  # torch optimisers would otherwise alias its tensors
        self.recognition.load_state_dict(state["recognition"])
        self.theta_optimizer.load_state_dict(state["theta_optimizer"])
        self.phi_optimizer.load_state_dict(state["phi_optimizer"])
        self.generator.set_state(state["generator"])


def _named(module: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    names, params = zip(*module.named_parameters())
    return list(names), list(params)


def _gradient(objective, names, params, retain_graph: bool = False) -> dict[str, torch.Tensor]:
    """d objective / d params keyed by name, zeros for parameters it does not depend on."""
    grads = torch.autograd.grad(objective, params, retain_graph=retain_graph, allow_unused=True)
    return {
        name: (g if g is not None else torch.zeros_like(p))
        for name, p, g in zip(names, params, grads)
    }
