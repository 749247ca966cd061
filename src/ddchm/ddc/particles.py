"""The prior's particles behind the wake phase's importance targets, and the dreams' encodings.

Plain draws: the step's N_sleep dreams and, up to ``wake_dreams``, more drawn for the targets.

Collapsed draws, on a binary chain of at most 62 latent units: the draws are replaced by their
distinct states z_u, each weighted by p(z_u) / pi_u with pi_u = 1 - (1 - p(z_u))^S the chance
that S draws include it (Horvitz-Thompson: each sum over states stays unbiased, and a likely
state's noisy draw count is replaced by its exact probability). The states are grouped by the
bottom layer z_1, on which alone the likelihood depends (``proposal.group_by_bottom``). A draw
is reused for ``redraw_every`` steps, reweighted by the current prior: a Horvitz-Thompson sum
over a set drawn under an earlier theta is still unbiased for the current one.
docs/wake-phase.md has the derivations and the measurements.
"""

from __future__ import annotations

import torch

from ddchm.ddc.proposal import (
    DrawnStates,
    PriorParticles,
    bottom_groups,
    decode_states,
    distinct_codes,
    encode_states,
    expected_distinct,
    group_by_bottom,
    log_inclusion_probability,
    state_codes,
)
from ddchm.ddc.wake import RidgeSolver
from ddchm.distributed import LOCAL


class WakeParticles:
    """Prior particles for one machine's wake targets.

    Args:
        model, encodings: the machine's chain and its LayerEncodings.
        sleep_samples: N_sleep, the dreams of a step.
        wake: the resolved ``WakeOptions``: ``wake_dreams`` prior draws behind the targets (>=
            N_sleep), collapsed draws drawn afresh every ``wake_redraw_every`` steps.
        collapsed: collapse the draws to distinct states (binary chain, <= 62 units).
    """

    def __init__(self, model, encodings, sleep_samples, wake, collapsed):
        self.model, self.encodings = model, encodings
        self.sleep_samples, self.wake_dreams = sleep_samples, wake.wake_dreams
        self.redraw_every = wake.wake_redraw_every
        self.state_bits = sum(layer.dim for layer in model.layers[1:]) if collapsed else None
        self.last = None  # the last collapsed draw: (DrawnStates, BottomGroups)

    @torch.no_grad()
    def encode(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """[T_1(z_1), ..., T_L(z_L)] for latents [z_1, ..., z_L]."""
        return [encoding(z) for encoding, z in zip(self.encodings, latents)]

    @torch.no_grad()
    def encode_samples(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`encode` for samples of the model: on a collapsible chain a small binary
        layer's encodings are read off its table of every state."""
        if self.state_bits is None:
            return self.encode(latents)
        return [
            encode_states(e, state_codes([z]), z) if e.tabulated else e(z)
            for e, z in zip(self.encodings, latents)
        ]

    def map_solvers(self, features, ridges, latents=None, shard=LOCAL) -> list[RidgeSolver]:
        """The gradient maps' solvers on the dreams' encodings; with ``latents`` (the dreams'
        z, ``features`` from :meth:`encode_samples`), a tabulated layer's solver works on its
        distinct states (the same Gram, count-weighted). ``shard``: features and latents are
        this process's dreams (``RidgeSolver``)."""
        solvers = []
        for l, (f, ridge) in enumerate(zip(features, ridges)):
            distinct = None
            if latents is not None and self.state_bits and self.encodings[l].tabulated:
                states, index = torch.unique(state_codes([latents[l]]), return_inverse=True)
                distinct = (self.encodings[l].state_table()[states], index)
            solvers.append(RidgeSolver(f, ridge, distinct, shard))
        return solvers

    @torch.no_grad()
    def prior(self, sleep, generator, features=None) -> PriorParticles:
        """Particles from the dreams ``sleep`` and, up to ``wake_dreams``, more drawn with
        ``generator``; collapsed to distinct states grouped by z_1 where configured. The extra
        draws of a collapsed chain are as many as keep the distinct states they are expected
        to reach within 4 N_sleep."""
        latents = list(sleep[1:])
        draws = latents[0].shape[0]
        if self.state_bits is None:  # plain draws
            features = self.encode(latents) if features is None else features
            if self.wake_dreams > draws:
                more = self.model.sample(self.wake_dreams - draws, generator=generator)[1:]
                latents = [torch.cat(pair) for pair in zip(latents, more)]
                features = [torch.cat(pair) for pair in zip(features, self.encode(more))]
            return PriorParticles(latents, features, None, latents[0].shape[0])
        drawn = self.distinct_states(sleep, generator)
        sizes = [z.shape[1] for z in latents]
        return group_by_bottom(
            self.encodings, drawn.codes, sizes, drawn.log_mass, drawn.draws, latents[0].dtype
        )

    @torch.no_grad()
    def distinct_states(self, sleep, generator) -> DrawnStates:
        """The distinct states among the dreams and the extra draws, with log p and log pi."""
        latents, bits = list(sleep[1:]), self.state_bits
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
    def for_step(self, sleep, step: int, generator) -> PriorParticles:
        """A step's collapsed particles: drawn afresh on every ``redraw_every``-th step, in
        between the last draw's states reweighted by the current prior."""
        sizes, dtype = [z.shape[1] for z in sleep[1:]], sleep[1].dtype
        if self.last is None or step % self.redraw_every == 0:
            drawn = self.distinct_states(sleep, generator)
            self.last = (drawn, bottom_groups(drawn.codes, sizes, dtype))
        drawn, groups = self.last
        if drawn.log_p is None or step % self.redraw_every:  # theta has moved
            drawn = drawn._replace(log_p=self.model.log_prior(drawn.latents))
        return group_by_bottom(
            self.encodings, drawn.codes, sizes, drawn.log_mass, drawn.draws, dtype, groups
        )

    def state_dict(self):
        if self.last is None:
            return None
        drawn = self.last[0]
        return {"codes": drawn.codes, "log_inclusion": drawn.log_inclusion, "draws": drawn.draws}

    def load_state_dict(self, saved, device, dtype) -> None:
        self.last = None
        if saved is None or not self.state_bits:
            return
        sizes = [layer.dim for layer in self.model.layers[1:]]
        codes = saved["codes"].to(device)
        states = decode_states(codes, sizes, dtype)
        log_inclusion = saved["log_inclusion"].to(device)
        drawn = DrawnStates(codes, states, None, log_inclusion, int(saved["draws"]))
        self.last = (drawn, bottom_groups(codes, sizes, dtype))
