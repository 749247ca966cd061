"""Recognition models r_l(x) ~= E[T_l(z_l) | x], trained by regression on sleep samples (eqs 6-8).

Minimising sum_s sum_l ||T_l(z_l^s) - r_l(x^s)||^2 over dreams (x^s, z^s) ~ p_theta learns the
posterior mean of the encodings, with no factorisation assumed. Two recognisers:

- :class:`NetworkRecognition` (default): a tanh MLP trunk h(x) with one linear head per layer,
  persistent across steps and trained by Adam; optional learning-rate decay and an exponential
  moving average of the weights (Polyak averaging) used at wake time. With ``readout='ridge'``
  the heads are instead the ridge solution of running normal equations on [h(x), 1], so only the
  trunk is trained by Adam: the readout carries no SGD noise and follows a moving theta at once.
- :class:`RidgeRecognition`: r_l(x) = A_l^T phi(x) with phi fixed random tanh features of x, and
  A_l the ridge solution of running (exponentially forgotten) normal equations.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ddchm.distributed import LOCAL
from ddchm.validation import make_generator


class RunningRidge(nn.Module):
    """Ridge regression on exponentially forgotten normal equations, kept in float64.

    After ``update(F, [T_1, ...])``: G <- rho G + F^T F, B_l <- rho B_l + F^T T_l, n <- rho n + N,
    and the returned solutions are A_l = (G + lambda n I)^{-1} B_l (float64). The statistics stay
    float64 when the owning module moves to another dtype.
    """

    def __init__(self, n_features: int, target_sizes, forget: float, ridge: float):
        super().__init__()
        self.forget, self.ridge = forget, ridge
        self.register_buffer("gram", torch.zeros(n_features, n_features, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        for l, size in enumerate(target_sizes):
            self.register_buffer(f"cross{l}", torch.zeros(n_features, size, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, buffer in self.named_buffers(recurse=False):
            setattr(self, name, buffer.double())
        return self

    @torch.no_grad()
    def update(
        self, features: torch.Tensor, targets: list[torch.Tensor], weights=None, shard=LOCAL
    ) -> list[torch.Tensor]:
        """Add (features, targets) to the forgotten statistics, each row times its weight
        (default 1); the new solutions A_l. ``shard``: the rows are this process's; the
        additions are summed over processes first."""
        rho = self.forget
        weighted = features if weights is None else features * weights.unsqueeze(1)
        if shard.sharded:  # F^T F, F^T T_l and the count of every process's rows, summed
            gram = (weighted.T @ features).double()
            crosses = [(weighted.T @ t).double() for t in targets]
            count = gram.new_tensor(float(features.shape[0])) if weights is None else None
            count = weights.sum().double() if count is None else count
            shard.sum_(gram, count, *crosses)
            self.gram.mul_(rho).add_(gram)
            self.count.mul_(rho).add_(count)
        else:
            self.gram.mul_(rho).add_((weighted.T @ features).double())
            n = features.shape[0] if weights is None else weights.sum()  # no host sync
            self.count.mul_(rho).add_(n)
        eye = torch.eye(self.gram.shape[0], dtype=torch.float64, device=self.gram.device)
        factor = torch.linalg.cholesky(self.gram + self.ridge * self.count * eye)
        solutions = []
        for l, t in enumerate(targets):
            cross = getattr(self, f"cross{l}")
            added = crosses[l] if shard.sharded else (weighted.T @ t).double()
            cross.mul_(rho).add_(added)
            solutions.append(torch.cholesky_solve(cross, factor))
        return solutions


def centre_products(t: torch.Tensor, mean: torch.Tensor, dim: int, n_extra: int) -> torch.Tensor:
    """Targets of a continuous layer's encoding [u, extra, u_i u_j (i <= j), rest] with the
    products centred at ``mean`` (a prediction of E[u | x]): u_i u_j -> (u_i - m_i)(u_j - m_j),
    written as t_ij - m_i t_j - t_i m_j + m_i m_j so that it also holds for averaged targets."""
    D, E = dim, dim + n_extra
    i, j = torch.triu_indices(D, D, device=t.device)
    first, m = t[:, :D], mean.to(t.dtype)
    centred = t[:, E : E + i.numel()] - m[:, i] * first[:, j] - first[:, i] * m[:, j]
    centred = centred + m[:, i] * m[:, j]
    return torch.cat([t[:, :E], centred, t[:, E + i.numel() :]], dim=1)


def uncentre_products(r: torch.Tensor, dim: int, n_extra: int) -> torch.Tensor:
    """Inverse of :func:`centre_products` at the output's own mean: E[u_i u_j | x] = predicted
    residual (co)variance + m_i m_j."""
    D, E = dim, dim + n_extra
    i, j = torch.triu_indices(D, D, device=r.device)
    products = r[:, E : E + i.numel()] + r[:, i] * r[:, j]
    return torch.cat([r[:, :E], products, r[:, E + i.numel() :]], dim=1)


class MomentHead(nn.Module):
    """The head of a continuous layer whose encoding holds z's moments: consistent by construction.

    The encoding's exact block is [u, extra statistics, u_i u_j (i <= j)] with u the standardised
    units (see :class:`~ddchm.ddc.encodings.LayerEncoding`). A free linear head can predict
    E[u_i u_j] < E[u_i] E[u_j], i.e. a negative posterior variance; the wake gradient then pushes
    the child's variance towards 0 (a Gaussian observation layer's log-std ran to -5 in 400 steps
    on `linear-gaussian`). This head predicts the mean m(x), with a linear path from x (exact for
    linear-Gaussian chains, and it extrapolates), and a Cholesky factor C(x), and outputs
    E[u_i u_j] = m_i m_j + (C C^T)_ij. The other outputs (extra statistics, random features,
    constant) are linear in the trunk's features.
    """

    def __init__(self, in_features: int, data_dim: int, size: int, dim: int, n_extra: int):
        super().__init__()
        self.dim, self.n_extra = dim, n_extra
        self.n_products = dim * (dim + 1) // 2
        self.linear = nn.Linear(in_features, size - self.n_products)
        self.mean_skip = nn.Linear(data_dim, dim, bias=False)
        self.cholesky = nn.Linear(in_features, self.n_products)
        self.register_buffer("rows", torch.tril_indices(dim, dim)[0], persistent=False)
        self.register_buffer("cols", torch.tril_indices(dim, dim)[1], persistent=False)
        # products in the encoding's order: i <= j, row-major (torch.triu_indices)
        self.register_buffer("pairs", torch.triu_indices(dim, dim), persistent=False)

    def reset_parameters(self, generator) -> None:
        nn.init.zeros_(self.mean_skip.weight)
        with torch.no_grad():
            self.cholesky.weight.mul_(0.1)
            diagonal = self.rows == self.cols
            self.cholesky.bias.copy_(torch.where(diagonal, 0.5, 0.0))

    def factor(self, h: torch.Tensor) -> torch.Tensor:
        """C(x), lower triangular, (N, D, D)."""
        C = h.new_zeros(h.shape[0], self.dim, self.dim)
        C[:, self.rows, self.cols] = self.cholesky(h)
        return C

    def forward(self, h: torch.Tensor, scaled_x: torch.Tensor) -> torch.Tensor:
        base = self.linear(h)
        D, E = self.dim, self.dim + self.n_extra
        mean = base[:, :D] + self.mean_skip(scaled_x)
        C = self.factor(h)
        second = mean.unsqueeze(2) * mean.unsqueeze(1) + C @ C.transpose(1, 2)
        products = second[:, self.pairs[0], self.pairs[1]]
        return torch.cat([mean, base[:, D:E], products, base[:, E:]], dim=1)

    @torch.no_grad()
    def refit(self, h1: torch.Tensor, scaled_x, target, factor, unit_ratio) -> None:
        """Ridge-refit the linear outputs to a recalibrated target and carry the covariance
        across exactly (u_new = a u_old + b  =>  C_new = diag(a) C_old)."""
        D, E = self.dim, self.dim + self.n_extra
        if unit_ratio is not None:  # the linear path to the mean, in the new units
            self.mean_skip.weight.mul_(unit_ratio.to(self.mean_skip.weight.dtype).unsqueeze(1))
        target = target.double().clone()
        target[:, :D] -= self.mean_skip(scaled_x).double()
        linear_target = torch.cat([target[:, :E], target[:, E + self.n_products :]], dim=1)
        solution = torch.cholesky_solve(h1.T @ linear_target, factor)
        self.linear.weight.copy_(solution[:-1].T.to(self.linear.weight.dtype))
        self.linear.bias.copy_(solution[-1].to(self.linear.bias.dtype))
        if unit_ratio is not None:  # rows of C scale with their unit
            ratio = unit_ratio.to(self.cholesky.weight.dtype)[self.rows]
            self.cholesky.weight.mul_(ratio.unsqueeze(1))
            self.cholesky.bias.mul_(ratio)


class NetworkRecognition(nn.Module):
    """r(x) = [head_l(h(x))]_l with h a tanh MLP. Every r_l is linear in h, so the chain form
    r_l = W_l r_{l-1} of the spec is a special case.

    Args:
        data_dim: dimension of x.
        encoding_sizes: length of T_l for each latent layer (z_1 first).
        hidden: hidden layer sizes of the trunk.
        lr, lr_final: Adam rate, decayed geometrically to ``lr_final`` over ``decay_steps``.
        ema: if set (e.g. 0.99), wake-time outputs use an exponential moving average of weights.
        readout: 'adam' (heads trained with the trunk) or 'ridge' (heads solved in closed form
            on exponentially forgotten normal equations: ``readout_forget`` per step, ridge
            ``readout_ridge`` times the effective sample count).
        readout_wake_rows: with 'ridge', ``fit_step``'s data rows (``wake_x``) enter the
            normal equations too, weighted as in the loss.
    """

    def __init__(
        self,
        data_dim,
        encoding_sizes,
        hidden=(200,),
        lr=2e-3,
        lr_final=None,
        decay_steps=1,
        ema=None,
        readout="adam",
        readout_forget=0.9,
        readout_ridge=1e-4,
        readout_wake_rows=False,
        layouts=None,
        generator=None,
    ):
        super().__init__()
        # x enters the trunk as (x - input_centre) / input_scale (identity until set_input_scaling)
        self.register_buffer("input_centre", torch.zeros(data_dim))
        self.register_buffer("input_scale", torch.ones(data_dim))
        self.readout_ridge = readout_ridge
        if readout not in ("adam", "ridge"):
            raise ValueError(f"readout: expected 'adam' or 'ridge', got {readout!r}")
        if not 0 <= readout_forget < 1:
            raise ValueError(f"readout_forget: expected a number in [0, 1), got {readout_forget}")
        if not readout_ridge > 0:
            raise ValueError(f"readout_ridge: expected a number > 0, got {readout_ridge}")
        if ema is not None and not 0 < ema < 1:
            raise ValueError(f"ema: expected a number in (0, 1) or None, got {ema}")
        generator = make_generator(generator)
        sizes, layers = [data_dim, *hidden], []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
        self.trunk = nn.Sequential(*layers)
        readout_size = sizes[-1]
        layouts = layouts or [None] * len(encoding_sizes)
        self.heads = nn.ModuleList(
            MomentHead(readout_size, data_dim, k, *layout)
            if layout is not None and readout == "adam"
            else nn.Linear(readout_size, k)
            for k, layout in zip(encoding_sizes, layouts)
        )
        with torch.no_grad():  # seeded initialisation (PyTorch's default scheme, our generator)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    bound = module.in_features**-0.5
                    module.weight.uniform_(-bound, bound, generator=generator)
                    if module.bias is not None:
                        module.bias.uniform_(-bound, bound, generator=generator)
            for head in self.heads:
                if isinstance(head, MomentHead):
                    head.reset_parameters(generator)
        self.readout = readout
        self.readout_wake_rows = bool(readout_wake_rows)
        # the ridge readout regresses a continuous layer's products centred at its predicted
        # mean (centre_products) and adds m_i m_j back at the output: errors then scale with
        # the posterior's spread, not the prior's (see the machine's ``moment_heads``)
        self.centred = layouts if readout == "ridge" else [None] * len(encoding_sizes)
        if readout == "ridge":  # forgotten normal equations of [h, 1] -> targets
            self.normal_equations = RunningRidge(
                readout_size + 1, encoding_sizes, readout_forget, readout_ridge
            )
            for head in self.heads:
                head.requires_grad_(False)
        trained = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trained, lr=lr)
        gamma = 1.0 if lr_final is None else (lr_final / lr) ** (1.0 / max(1, decay_steps))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=gamma)
        self.lr_final = lr_final
        self.ema = ema
        # 'adam': wake time reads averaged copies of trunk and heads; 'ridge': an averaged copy
        # of the trunk gives the features the heads are solved on and read (heads shared)
        heads = self.heads if readout == "ridge" else copy.deepcopy(self.heads)
        self.averaged = nn.ModuleList([copy.deepcopy(self.trunk), heads]) if ema else None

    def _readout_trunk(self) -> nn.Module:
        """The trunk whose features the heads read: the averaged copy with 'ridge' and ``ema``."""
        if self.averaged is not None and self.readout == "ridge":
            return self.averaged[0]
        return self.trunk

    def _scaled(self, x):
        return (x - self.input_centre.to(x.dtype)) / self.input_scale.to(x.dtype)

    def _forward(self, trunk, heads, x):
        scaled = self._scaled(x)
        h = trunk(scaled)
        return [head(h, scaled) if isinstance(head, MomentHead) else head(h) for head in heads]

    def _uncentred(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            r if layout is None else uncentre_products(r, *layout)
            for r, layout in zip(outputs, self.centred)
        ]

    def _centred(self, targets, predictions) -> list[torch.Tensor]:
        """Targets with centred products, at the means in ``predictions`` (raw head outputs)."""
        return [
            t if layout is None else centre_products(t, p[:, : layout[0]], *layout)
            for t, p, layout in zip(targets, predictions, self.centred)
        ]

    @torch.no_grad()
    def set_input_scaling(self, x: torch.Tensor) -> None:
        """Centre and scale the trunk's input by the mean and sd of ``x`` (dreams), keeping the
        function the recogniser computes: the first linear layer absorbs the change
        (W' = W diag(s' / s), b' = b + W (c' - c) / s)."""
        centre, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        # scaled x changes as x_new = x_old * ratio + shift
        ratio = scale / self.input_scale.to(scale.dtype)
        shift = (centre - self.input_centre.to(scale.dtype)) / self.input_scale.to(scale.dtype)
        nets = [(self.trunk, self.heads)]
        if self.averaged is not None:
            nets.append((self.averaged[0], self.averaged[1]))
        for trunk, heads in nets:
            # the linear maps that read scaled x: the trunk's first layer, or the heads without
            # a trunk, and the moment heads' linear path to the mean
            if len(trunk):
                readers = [trunk[0]]
            else:
                readers = [
                    m
                    for h in heads
                    for m in h.modules()
                    if m is not getattr(h, "mean_skip", None) and isinstance(m, nn.Linear)
                ]
            readers += [
                (h.mean_skip, h.linear.bias[: h.dim]) for h in heads if isinstance(h, MomentHead)
            ]
            for reader in readers:
                module, bias = reader if isinstance(reader, tuple) else (reader, reader.bias)
                bias.add_(module.weight @ shift.to(bias.dtype))
                module.weight.mul_(ratio.to(module.weight.dtype))
        self.input_centre.copy_(centre)
        self.input_scale.copy_(scale)

    @torch.no_grad()
    def refit_heads(
        self, x: torch.Tensor, targets: dict[int, torch.Tensor], unit_ratios=None
    ) -> None:
        """Heads of the layers in ``targets`` (index -> new T_l(z_l^s) on dreams x^s) <- ridge
        regression on the trunk's features: carries the recogniser across a change of the
        encodings' basis (recalibration) without re-learning the trunk. ``unit_ratios`` (index
        -> old / new unit scale) carry a moment head's covariance across exactly."""
        h = self._readout_trunk()(self._scaled(x))
        h1 = torch.cat([h, h.new_ones(h.shape[0], 1)], 1).double()
        gram = h1.T @ h1
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        ridged = gram + self.readout_ridge * h1.shape[0] * eye
        factor = torch.linalg.cholesky(ridged)
        for l, t in targets.items():
            head = self.heads[l]
            if isinstance(head, MomentHead):
                ratio = (unit_ratios or {}).get(l)
                head.refit(h1, self._scaled(x), t, factor, ratio)
                if self.averaged is not None:
                    self.averaged[1][l].load_state_dict(head.state_dict())
                continue
            solution = torch.cholesky_solve(h1.T @ t.double(), factor)
            if self.centred[l] is not None:  # products centred at the refitted means
                mean = h1 @ solution[:, : self.centred[l][0]]
                t = centre_products(t.double(), mean, *self.centred[l])
                solution = torch.cholesky_solve(h1.T @ t, factor)
            head.weight.copy_(solution[:-1].T.to(head.weight.dtype))
            head.bias.copy_(solution[-1].to(head.bias.dtype))
            if self.averaged is not None:
                self.averaged[1][l].load_state_dict(head.state_dict())
            if self.readout == "ridge":  # the running equations now give this solution
                equations = self.normal_equations
                n = float(equations.count)
                eye = torch.eye(equations.gram.shape[0], dtype=torch.float64, device=eye.device)
                cross = (equations.gram + equations.ridge * n * eye) @ solution
                getattr(equations, f"cross{l}").copy_(cross)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[r_1(x), ..., r_L(x)] as used at wake time (the averaged weights if ``ema``)."""
        if self.averaged is not None and self.readout == "adam":
            return self._forward(self.averaged[0], self.averaged[1], x)
        return self._uncentred(self._forward(self._readout_trunk(), self.heads, x))

    @torch.no_grad()
    def _solve_readout(self, h, targets: list[torch.Tensor], weights=None, shard=LOCAL) -> None:
        """Heads <- ridge solution of the forgotten normal equations, updated with (h, targets)
        and optional row weights (``shard``: summed over processes)."""
        h1 = torch.cat([h, h.new_ones(h.shape[0], 1)], 1)
        solutions = self.normal_equations.update(h1, targets, weights, shard)
        for head, solution in zip(self.heads, solutions):
            solution = solution.to(head.weight.dtype)
            head.weight.copy_(solution[:-1].T)
            head.bias.copy_(solution[-1])

    def fit_step(
        self,
        x: torch.Tensor,
        targets: list[torch.Tensor],
        wake_x: torch.Tensor | None = None,
        wake_targets: list[torch.Tensor] | None = None,
        wake_weight: float = 1.0,
        shard=LOCAL,
    ) -> float:
        """One Adam step on the sleep regression loss (eq 7) on dreams (x, targets); returns the
        loss before the step (with ``readout='ridge'``: after the heads are re-solved on the
        dreams, before the trunk's step). With ``wake_x``, the mean squared error to
        ``wake_targets`` on those points is added, times ``wake_weight``. ``shard``: the rows
        are this process's equal part of the dreams and of the data rows; the loss, its
        gradient and the readout's equations are summed over processes."""
        n_sleep = x.shape[0]
        if wake_x is not None:
            x = torch.cat([x, wake_x])
            targets = [torch.cat([t, w]) for t, w in zip(targets, wake_targets)]
        # sum over rows of row_weight * ||r(x) - target||^2: weight 1 / n_sleep on the dreams (a
        # mean), wake_weight / n_wake on the data points; one pass over all rows, no slicing
        # (the sliced form spent a third of this step in slice and zero-fill copies)
        row_weight = x.new_full((x.shape[0],), 1.0 / (n_sleep * shard.world))
        if wake_x is not None:  # wake_weight: a number, or one weight per data point
            weight = torch.as_tensor(wake_weight, dtype=x.dtype, device=x.device)
            row_weight[n_sleep:] = weight / (wake_x.shape[0] * shard.world)
        if self.readout == "ridge":
            scaled = self._scaled(x)
            h = self.trunk(scaled)
            with torch.no_grad():  # the features the heads are solved on and read at wake time
                read = h.detach() if self.averaged is None else self.averaged[0](scaled)
            if any(layout is not None for layout in self.centred):
                with torch.no_grad():  # centre at the means the heads predict now
                    targets = self._centred(targets, [head(read) for head in self.heads])
            if wake_x is not None and self.readout_wake_rows:
                # the data rows enter the heads' normal equations with the loss's weights,
                # scaled so that a dream's row counts 1
                self._solve_readout(read, targets, row_weight * (n_sleep * shard.world), shard)
            else:
                self._solve_readout(read[:n_sleep], [t[:n_sleep] for t in targets], None, shard)
            predictions = [head(h) for head in self.heads]
        else:
            predictions = self._forward(self.trunk, self.heads, x)
        loss = sum(row_weight @ ((p - t) ** 2).sum(1) for p, t in zip(predictions, targets))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if shard.sharded:  # each process's loss is its part of the sum: the gradients add
            shard.sum_(*[p.grad for p in self.parameters() if p.grad is not None])
        self.optimizer.step()
        if self.lr_final is not None and self.optimizer.param_groups[0]["lr"] > self.lr_final:
            self.scheduler.step()
        if self.averaged is not None:
            with torch.no_grad():
                live = list(self.trunk.parameters())
                averaged = list(self.averaged[0].parameters())
                if self.readout == "adam":
                    live += list(self.heads.parameters())
                    averaged += list(self.averaged[1].parameters())
                for avg, p in zip(averaged, live):
                    avg.lerp_(p, 1 - self.ema)
        return float(shard.total(loss.detach()))

    def extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class RidgeRecognition(nn.Module):
    """r_l(x) = A_l^T phi(x), phi = [tanh(U x + c), 1] with U, c fixed and random.

    A_l solves the ridge problem on running normal equations G = sum rho^t Phi^T Phi,
    B_l = sum rho^t Phi^T T_l (``forget`` = rho), refreshed after every sleep batch.
    """

    def __init__(
        self,
        data_dim,
        encoding_sizes,
        n_features=1000,
        ridge=1e-3,
        forget=0.99,
        input_scale=1.0,
        generator=None,
    ):
        super().__init__()
        generator = make_generator(generator)
        scale = input_scale / data_dim**0.5
        self.register_buffer(
            "projection", scale * torch.randn(n_features, data_dim, generator=generator)
        )
        self.register_buffer("offset", torch.rand(n_features, generator=generator) * 2 - 1)
        k = n_features + 1
        self.normal_equations = RunningRidge(k, encoding_sizes, forget, ridge)
        self.maps = nn.ParameterList(
            nn.Parameter(torch.zeros(k, s), requires_grad=False) for s in encoding_sizes
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        phi = torch.tanh(x @ self.projection.to(x.dtype).T + self.offset.to(x.dtype))
        return torch.cat([phi, phi.new_ones(phi.shape[0], 1)], 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        phi = self.embed(x)
        return [phi @ a.to(x.dtype) for a in self.maps]

    @torch.no_grad()
    def fit_step(self, x: torch.Tensor, targets: list[torch.Tensor], shard=LOCAL) -> float:
        """Refresh the maps with the dreams (x, targets); the loss before (``shard``: the rows
        are this process's equal part; equations summed, loss averaged over processes)."""
        phi = self.embed(x)
        loss = sum(
            ((phi @ a.to(x.dtype) - t) ** 2).sum(1).mean() for a, t in zip(self.maps, targets)
        )
        targets = [t.double() for t in targets]
        solutions = self.normal_equations.update(phi.double(), targets, None, shard)
        for a, solution in zip(self.maps, solutions):
            a.copy_(solution.to(a.dtype))
        return float(shard.total(loss)) / shard.world

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


def make_recogniser(data_dim: int, encodings, options, seed: int) -> nn.Module:
    """The recogniser that ``RecogniserOptions`` (resolved) describes, for these encodings."""
    sizes = [encoding.size for encoding in encodings]
    if options.recognition == "ridge":
        return RidgeRecognition(data_dim, sizes, generator=seed)
    layouts = [e.moment_layout() for e in encodings] if options.moment_heads else None
    return NetworkRecognition(
        data_dim,
        sizes,
        options.hidden,
        options.recognition_lr,
        options.recognition_lr_final,
        options.recognition_decay_steps,
        options.ema,
        readout=options.recognition_readout,
        readout_forget=options.readout_forget,
        readout_ridge=options.readout_ridge,
        readout_wake_rows=options.readout_wake_rows,
        layouts=layouts,
        generator=seed,
    )
