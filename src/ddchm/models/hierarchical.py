"""A chain of exponential-family layers: p(x, z_1..z_L) = p(z_L) prod_l p(z_l | z_{l+1}) p(x | z_1).

Numbering follows the spec: z_0 = x, ``model.layers[l]`` is p(z_l | z_{l+1}) and
``model.layers[L]`` is the prior p(z_L). Samples are lists in the same order,
``[x, z_1, ..., z_L]``.
The constructor takes the layers top to bottom, the order in which the model generates.
"""

from __future__ import annotations

import torch
from torch import nn

from ddchm.models.layers import ExponentialFamilyLayer, make_layer
from ddchm.validation import as_tensor, make_generator


class HierarchicalModel(nn.Module):
    """Deep generative model, a chain of :class:`ExponentialFamilyLayer` mixing families freely.

    Args:
        layers_top_down: the prior layer first (``parent_dim=None``), then each conditional whose
            ``parent_dim`` equals the previous layer's ``dim``; the last one generates x.
    """

    def __init__(self, layers_top_down: list[ExponentialFamilyLayer]):
        super().__init__()
        layers_top_down = list(layers_top_down)
        if len(layers_top_down) < 2:
            raise ValueError("layers_top_down: need a prior and at least one conditional layer")
        if not layers_top_down[0].is_prior:
            raise ValueError(
                "layers_top_down: the first (top) layer must be a prior (parent_dim=None)"
            )
        for upper, lower in zip(layers_top_down, layers_top_down[1:]):
            if lower.is_prior:
                raise ValueError("layers_top_down: only the top layer may be a prior")
            if lower.parent_dim != upper.dim:
                raise ValueError(
                    f"layers_top_down: a {lower.family} layer with parent_dim={lower.parent_dim} "
                    f"sits below a layer of {upper.dim} units"
                )
        self.layers = nn.ModuleList(reversed(layers_top_down))

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, spec: list[dict]) -> HierarchicalModel:
        """Build from ``[{"family": "bernoulli", "dim": 4}, {"family": ..., "dim": 10}, ...]``,
        top layer first; extra keys (``init_scale``, ...) go to the layer constructor."""
        if not isinstance(spec, (list, tuple)) or len(spec) < 2:
            raise ValueError("model layers: expected a list of at least two layer tables")
        layers, parent_dim = [], None
        for i, entry in enumerate(spec):
            entry = dict(entry)
            try:
                family, dim = entry.pop("family"), entry.pop("dim")
            except KeyError as missing:
                raise ValueError(f"model layer {i}: missing key {missing}") from None
            entry.pop("parent_dim", None)
            layers.append(make_layer(family, int(dim), parent_dim, **entry))
            parent_dim = int(dim)
        return cls(layers)

    def config(self) -> list[dict]:
        """The layer list (top first) that :meth:`from_config` rebuilds this architecture from."""
        return [{"family": layer.family, "dim": layer.dim} for layer in reversed(self.layers)]

    # --- structure ---------------------------------------------------------------------------
    @property
    def n_latent_layers(self) -> int:
        return len(self.layers) - 1

    @property
    def observation(self) -> ExponentialFamilyLayer:
        return self.layers[0]

    @property
    def prior(self) -> ExponentialFamilyLayer:
        return self.layers[-1]

    @property
    def data_dim(self) -> int:
        return self.layers[0].dim

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per layer, named by what the layer generates: 'x', 'z1', ..., 'zL'."""
        return {self.layer_name(l): list(layer.parameters()) for l, layer in enumerate(self.layers)}

    @staticmethod
    def layer_name(l: int) -> str:
        return "x" if l == 0 else f"z{l}"

    def describe(self) -> str:
        parts = [f"{layer.family}({layer.dim})" for layer in reversed(self.layers)]
        return " -> ".join(parts)

    # --- data checks -------------------------------------------------------------------------
    def check_data(self, x, name: str = "x") -> torch.Tensor:
        """Return x as a tensor of the model's dtype and device, or raise a clear error."""
        reference = next(self.parameters())
        x = as_tensor(x, name).to(dtype=reference.dtype, device=reference.device)
        self.observation.check_values(x, name)
        if x.shape[0] == 0:
            raise ValueError(f"{name}: has no rows; expected at least one data point")
        return x

    def check_latents(self, latents, n: int) -> list[torch.Tensor]:
        if len(latents) != self.n_latent_layers:
            raise ValueError(
                f"latents: expected {self.n_latent_layers} arrays [z1..z{self.n_latent_layers}], "
                f"got {len(latents)}"
            )
        reference = next(self.parameters())
        checked = []
        for l, z in enumerate(latents, start=1):
            z = as_tensor(z, f"latents[{l - 1}] (z{l})").to(reference.dtype)
            self.layers[l].check_values(z, f"latents[{l - 1}] (z{l})")
            if z.shape[0] != n:
                raise ValueError(f"latents[{l - 1}] (z{l}): has {z.shape[0]} rows, x has {n}")
            checked.append(z)
        return checked

    # --- generative operations ---------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | int | None = None) -> list[torch.Tensor]:
        """Ancestral samples of every layer, returned as ``[x, z_1, ..., z_L]``."""
        return self._ancestral(n, generator, bottom=0)

    @torch.no_grad()
    def sample_latents(self, n: int, generator: torch.Generator | int | None = None):
        """Ancestral samples of the latent layers only, ``[z_1, ..., z_L]`` (no x is drawn)."""
        return self._ancestral(n, generator, bottom=1)[1:]

    def _ancestral(self, n, generator, bottom: int) -> list[torch.Tensor]:
        reference = next(self.parameters())
        generator = make_generator(generator, device=reference.device)
        values = [None] * len(self.layers)
        values[-1] = self.prior.sample(n=n, generator=generator)
        for l in range(len(self.layers) - 2, bottom - 1, -1):
            values[l] = self.layers[l].sample(values[l + 1], generator=generator)
        return values

    def layer_log_probs(self, x: torch.Tensor, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """[log p(x | z_1), log p(z_1 | z_2), ..., log p(z_L)], each (N,). No input checks."""
        values = [x, *latents]
        out = []
        for l, layer in enumerate(self.layers):
            parent = values[l + 1] if l + 1 < len(values) else None
            out.append(layer.log_prob(values[l], parent))
        return out

    def log_prior(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """log p(z_1, ..., z_L) of each row, (N,): the joint without the observation layer.
        No input checks."""
        total = self.prior.log_prob(latents[-1])
        for l in range(1, len(self.layers) - 1):
            total = total + self.layers[l].log_prob(latents[l - 1], latents[l])
        return total

    def gradients(self, objective: torch.Tensor) -> dict[str, torch.Tensor]:
        """d objective / d theta for every parameter, keyed like ``named_parameters()``
        (zeros for parameters the objective does not use)."""
        names, params = zip(*self.named_parameters())
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        return {
            name: (g if g is not None else torch.zeros_like(p))
            for name, p, g in zip(names, params, grads)
        }

    def log_joint(self, x, latents, validate: bool = True) -> torch.Tensor:
        """log p(x, z_1..z_L), shape (N,)."""
        if validate:
            x = self.check_data(x)
            latents = self.check_latents(latents, x.shape[0])
        return torch.stack(self.layer_log_probs(x, latents)).sum(0)
