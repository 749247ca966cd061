"""The wake phase's expected encodings: which r the gradient maps are applied to, and why.

Named wake phases (``WakeOptions.wake_encodings``; docs/wake-phase.md):

- ``amortised``: r(x) from the recogniser, no sampling (the paper, eq 2);
- ``importance``: self-normalised importance estimates of E[T_l(z_l) | x_n]
  (:class:`ImportanceTargets`) from prior draws and the recogniser's own mean-field proposal,
  weighted against their mixture (the balance heuristic), blended with the recogniser's r for
  points whose estimate rests on fewer than ``wake_min_ess`` effective particles;
- ``collapsed``: the same with the prior draws of a small binary chain collapsed to distinct
  states (``ddc/particles.py``);
- ``auto``: :class:`WakePhaseChoice` starts with the importance phase the chain allows and
  keeps it while the targets' median effective sample size on the batch is at least
  ``wake_min_ess`` (checked on the first step and every ``wake_check_every`` steps), then turns
  amortised for good. The decision and its measurement are in every step's metrics.

The same particles also give the ablation ``wake_gradient = 'particles'``
(:func:`particle_objective`): the plain self-normalised gradient, no maps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ddchm.ddc.proposal import MeanFieldProposal, PriorParticles
from ddchm.models.exact import pair_log_prob


class Targets(NamedTuple):
    """Importance estimates of E[T_l | x_n] for a batch: ``targets`` per layer, Kish's ``ess``
    per point, and what :func:`particle_objective` needs: the normalised ``weights`` (N, S + M)
    over the prior particles then the own ones, the own particles (or None), and the prior
    particles the weights are over."""

    targets: list
    ess: torch.Tensor
    weights: torch.Tensor
    own: list | None
    particles: PriorParticles | None = None

    def first(self, n: int) -> Targets:
        """The targets of the batch's first n points (each point's estimate is its own)."""
        if self.ess.shape[0] == n:
            return self
        rows = [t[:n] for t in self.targets]
        return Targets(rows, self.ess[:n], self.weights[:n], None, self.particles)


class ImportanceTargets:
    """Self-normalised importance estimates of E[T_l(z_l) | x_n] on given prior particles and,
    with ``wake_particles`` M > 0, M draws per point from the recogniser's proposal q(z | x_n)
    (:class:`MeanFieldProposal`), every particle weighted against the mixture of the two:
    w ~ p(x_n, z) / (a p(z) + (1 - a) q(z | x_n)), a = S / (S + M). Consistent whatever q is."""

    def __init__(self, model, encodings, wake_particles: int):
        self.model, self.encodings, self.wake_particles = model, encodings, wake_particles

    @torch.no_grad()
    def __call__(self, x, particles: PriorParticles, r_of_x, generator) -> Targets:
        """``r_of_x``: a callable giving the recogniser's r(x) (read only with proposal draws)."""
        log_w = pair_log_prob(self.model.observation, x, particles.latents[0])  # (N, S)
        if particles.log_mass is not None:
            log_w = log_w + particles.log_mass
        own = None
        if self.wake_particles:
            own, own_log_w = self._proposal_particles(x, particles, log_w, r_of_x, generator)
            log_w = torch.cat([log_w, own_log_w], 1)
        # softmax over the particles, with every weight below e^-75 of the largest set to 0:
        # such weights change no target beyond rounding, but as float32 they are subnormal
        # numbers, which x86 exponentiates and multiplies many times more slowly
        floor = log_w.amax(1, keepdim=True) - 75.0
        negligible = log_w <= floor
        w = torch.softmax(log_w.clamp_(min=floor), 1).masked_fill_(negligible, 0.0)
        n_prior = particles.latents[0].shape[0]
        if particles.square_share is None:
            ess = 1.0 / (w * w).sum(1)
        else:  # collapsed: a state stands for S p / pi draws (>= 1); Kish's ESS over the draws
            ess = ((w * w) @ particles.square_share).reciprocal()
        targets = [w[:, :n_prior] @ f for f in particles.features]
        if own is not None:
            m = self.wake_particles
            w_own = w[:, n_prior:].unsqueeze(1)  # (N, 1, M)
            for target, encoding, z in zip(targets, self.encodings, own):
                f = encoding(z)
                target += (w_own @ f.reshape(x.shape[0], m, -1)).squeeze(1)
        return Targets(targets, ess, w, own, particles)

    def _proposal_particles(self, x, particles, dream_log_lik, r_of_x, generator):
        """M particles per point from the recogniser's proposal and the mixture weights of
        every particle; turns ``dream_log_lik`` into the dreams' mixture log-weights in place."""
        m, n_dreams, dreams = self.wake_particles, particles.draws, particles.latents
        proposal = MeanFieldProposal(self.encodings, r_of_x(x))
        own = proposal.sample(m, generator)
        log_a, log_b = math.log(n_dreams / (n_dreams + m)), math.log(m / (n_dreams + m))
        dream_prior = self.model.log_prior(dreams)  # (S,)
        mixture = torch.logaddexp(log_a + dream_prior, log_b + proposal.pair_log_prob(dreams))
        dream_log_lik.add_(dream_prior - mixture)
        own_prior = self.model.log_prior(own).reshape(x.shape[0], m)
        own_lik = self.model.observation.log_prob(x.repeat_interleave(m, 0), own[0])
        mixture = torch.logaddexp(log_a + own_prior, log_b + proposal.log_prob(own, m))
        return own, own_lik.reshape(x.shape[0], m) + own_prior - mixture


def blend(r, targets, ess, min_ess: float):
    """Importance targets where they rest on at least ``min_ess`` effective particles, the
    recogniser's r in proportion below that: alpha t + (1 - alpha) r, alpha = min(ESS /
    min_ess, 1), taking t or r alone at alpha = 1 or 0 (a non-finite r never leaks through)."""
    alpha = (ess / min_ess).clamp(max=1.0).unsqueeze(1).to(r[0].dtype)
    out = []
    for t, rl in zip(targets, r):
        t = t.to(rl.dtype)
        mixed = alpha * t + (1 - alpha) * rl
        out.append(torch.where(alpha >= 1, t, torch.where(alpha <= 0, rl, mixed)))
    return out


class WakePhaseChoice:
    """The wake phase a run uses, and for ``auto`` the measured rule that picks it.

    ``name`` is the phase in force ('amortised', 'importance' or 'collapsed'); ``auto``
    whether it may still change; ``decisions`` the record of each check: (step, median ESS,
    phase chosen)."""

    def __init__(self, requested: str, candidate: str, min_ess: float, check_every: int):
        self.requested, self.min_ess, self.check_every = requested, min_ess, check_every
        self.auto = requested == "auto" and candidate != "amortised"
        self.name = candidate if requested == "auto" else requested
        self.decisions: list[tuple[int, float, str]] = []

    @classmethod
    def for_options(cls, wake, collapsible: bool) -> WakePhaseChoice:
        """The choice that resolved ``WakeOptions`` ask for; the ablation ``wake_gradient =
        'particles'`` keeps its importance phase (it needs the particles every step)."""
        candidate = "collapsed" if collapsible else "importance"
        requested = wake.wake_encodings
        if requested == "amortised":
            candidate = "amortised"
        elif wake.wake_gradient == "particles":
            requested = candidate
        return cls(requested, candidate, wake.wake_min_ess, wake.wake_check_every)

    @property
    def reads_targets(self) -> bool:
        return self.name != "amortised"

    def due(self, step: int) -> bool:
        """Whether this step's targets decide the phase (only while ``auto`` can change it)."""
        return self.auto and step % self.check_every == 0

    def decide(self, step: int, ess: torch.Tensor) -> str:
        """Keep the importance phase while the batch's median ESS reaches ``min_ess``; else
        amortised from now on."""
        median = float(ess.median())
        if median < self.min_ess:
            self.name, self.auto = "amortised", False
        self.decisions.append((step, median, self.name))
        return self.name

    def state_dict(self) -> dict:
        return {"name": self.name, "auto": self.auto, "decisions": list(self.decisions)}

    def load_state_dict(self, state: dict) -> None:
        self.name, self.auto = str(state["name"]), bool(state["auto"])
        self.decisions = [tuple(d) for d in state["decisions"]]


@torch.no_grad()
def phase_encodings(machine, x, sleep, generator, chunk: int = 256):
    """The expected encodings ``machine``'s wake phase uses for data x: the recogniser's r(x),
    or in an importance phase its blend with importance targets on the dreams ``sleep``
    (default: fresh ones from ``generator``), ``chunk`` points at a time."""
    r = machine.expected_encodings(x)
    if not machine.wake_phase.reads_targets:
        return r
    sleep = machine.dream(generator=generator) if sleep is None else sleep
    particles = machine.particles.prior(sleep, generator)
    blended = []
    for start in range(0, x.shape[0], chunk):
        rows = slice(start, start + chunk)
        found = machine.importance(x[rows], particles, machine.expected_encodings, generator)
        part = blend([rl[rows] for rl in r], found.targets, found.ess, machine.wake_phase.min_ess)
        blended.append(part)
    return [torch.cat(layer) for layer in zip(*blended)]


def phase_metrics(phase: WakePhaseChoice, found: Targets | None, recogniser_ess: float) -> dict:
    """A step's regime: the wake phase in force, its targets' ESS (min, median; else the median
    ESS of the recogniser's data rows) and the share of r taken from them (the blend's mean
    weight; 0 where amortised)."""
    out = {"wake_phase": phase.name}
    share = 0.0
    if found is not None:  # one host sync for the three figures
        ess = found.ess
        figures = [ess.min(), ess.median()]
        if phase.reads_targets:
            figures.append((ess / phase.min_ess).clamp(max=1.0).mean())
        values = torch.stack(figures).tolist()
        out.update(wake_ess_min=values[0], wake_ess_median=values[1])
        share = values[2] if phase.reads_targets else 0.0
    elif math.isfinite(recogniser_ess):
        out["wake_ess_median"] = recogniser_ess
    out["importance_share"] = share
    return out


def particle_objective(model, x, found: Targets, drawn=None):
    """The ablation's surrogate: mean_n sum_j w_nj log p(x_n, z_j) over the particles behind
    the wake targets ``found`` with the weights held fixed, so its theta-gradient is the plain
    self-normalised importance estimate of mean_n grad log p(x_n). ``drawn``: the collapsed draw's
    ``DrawnStates`` (``found``'s weights are then over the bottom groups; each group's weight
    is split over its states by their mass)."""
    n, particles = x.shape[0], found.particles
    w = found.weights.detach()
    if drawn is None:  # plain draws: every particle carries all layers
        n_prior = particles.latents[0].shape[0]
        w_prior = w[:, :n_prior]
        objective = (w_prior * pair_log_prob(model.observation, x, particles.latents[0])).sum()
        objective = objective + (w_prior.sum(0) * model.log_prior(particles.latents)).sum()
        if found.own is not None:
            m = w.shape[1] - n_prior
            own_lik = model.observation.log_prob(x.repeat_interleave(m, 0), found.own[0])
            own_joint = own_lik + model.log_prior(found.own)
            objective = objective + (w[:, n_prior:].reshape(-1) * own_joint).sum()
        return objective / n
    groups = drawn_groups(drawn)
    log_mass = drawn.log_mass.double()
    mass = (log_mass - log_mass.max()).exp()
    group_mass = mass.new_zeros(w.shape[1]).index_add_(0, groups, mass)
    share = (mass / group_mass[groups]).to(w.dtype)  # a state's part of its group's weight
    z1_groups = particles.latents[0]
    objective = (w * pair_log_prob(model.observation, x, z1_groups)).sum()
    state_weight = w.sum(0)[groups] * share
    objective = objective + (state_weight * model.log_prior(drawn.latents)).sum()
    return objective / n


def drawn_groups(drawn) -> torch.Tensor:
    """Each collapsed state's bottom group (the index of its z_1 among the sorted distinct
    bottom codes, as ``proposal.bottom_groups`` orders them)."""
    from ddchm.ddc.proposal import layer_codes

    sizes = [z.shape[1] for z in drawn.latents]
    _, group = torch.unique(layer_codes(drawn.codes, sizes)[0], return_inverse=True)
    return group
