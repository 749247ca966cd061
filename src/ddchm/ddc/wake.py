"""Sleep-phase gradient maps (eqs 9-11) and the wake gradient, computed as in spec section 7.

The free-energy gradient is a sum of posterior expectations, each approximated by a ridge map
from the encodings, fitted on sleep samples (N of them, features F_l = T_l(z_l^s)):

    E_q[S_L(z_L)]                   <- regress S_L(z_L)             on T_L   (prior)
    E_q[J_l^T S_l(z_l)]             <- regress J_l(z_{l+1})^T S_l(z_l) on T_l   (child)
    E_q[J_l^T mu_l]                 <- regress J_l(z_{l+1})^T mu_l     on T_{l+1} (parent)
    E_q[J_0]^T S_0(x)               <- regress J_0(z_1)               on T_1   (observations)

Every map is linear in r, so its batch mean is a weighted sum over sleep samples (section 7):
with M = (F^T F + lambda I)^{-1} F^T Y, mean_n M^T r_n = Y^T w, w = F (F^T F + lambda I)^{-1} r_bar.
The gradient is therefore autograd of a weighted log-probability of the sleep samples, and no
Jacobian is ever formed. :func:`explicit_wake_gradient` builds the dense regressions instead; it
exists to test that the two agree to rounding.
"""

from __future__ import annotations

import torch

from ddchm.distributed import LOCAL
from ddchm.models import Bernoulli, HierarchicalModel


class RidgeSolver:
    """(F^T F + Lambda)^{-1} for one feature matrix F (N x K), in float64, Lambda = ridge * N.

    ``ridge`` is a number (the same penalty on every column) or a vector of K per-column
    penalties (see :meth:`LayerEncoding.map_ridge`).

    Everything that touches the solution stays float64, the products with F included: the
    solution's entries are large and cancel (nearly collinear features), so F @ solution in
    float32 was off by 1e-3 relative in the wake gradient at ridge 1e-3 and by 4e-2 at 1e-6
    on a 784-200-200 SBN, and a float32 Gram was not even positive definite at 1e-6 (issue 13).
    F is converted to float64 once per solver, not once per product.

    ``distinct``: (rows, index) with F = rows[index], F's distinct rows and which one each
    sample has (the dreams of a small binary layer repeat their states). The Gram is then the
    count-weighted Gram of the distinct rows, and every product runs over them.

    ``shard``: F is this process's rows of the dreams (``ddchm.distributed``); the Gram and N
    are summed over processes, so the solution is the whole F's, and the products with F
    (``sample_weights``, ``affine_sum``, ``fit``) cover this process's rows only.
    """

    def __init__(self, features: torch.Tensor, ridge, distinct=None, shard=LOCAL):
        self.features, self.index = features, None
        if distinct is None:
            self.features64 = features.double()
            gram = self.features64.T @ self.features64
        else:
            rows, self.index = distinct
            self.features64 = rows.double()
            counts = torch.bincount(self.index, minlength=rows.shape[0]).to(self.features64)
            gram = self.features64.T @ (counts.unsqueeze(1) * self.features64)
        shard.sum_(gram)
        if torch.is_tensor(ridge):
            ridge = ridge.to(gram)
        gram.diagonal().add_(ridge * (features.shape[0] * shard.world))
        self.factor = torch.linalg.cholesky(gram)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """(F^T F + lambda I)^{-1} rhs, rhs (K,) or (K, P), returned in float64."""
        rhs = rhs.double()
        vector = rhs.dim() == 1
        out = torch.cholesky_solve(rhs.unsqueeze(1) if vector else rhs, self.factor)
        return out.squeeze(1) if vector else out

    def sample_weights(self, rhs: torch.Tensor) -> torch.Tensor:
        """F (F^T F + lambda I)^{-1} rhs: weights on the sleep samples, (N,) or (N, P)."""
        weights = self.features64 @ self.solve(rhs)
        if self.index is not None:
            weights = weights[self.index]
        return weights.to(self.features.dtype)

    def affine_sum(self, rhs, inputs, weight, bias) -> torch.Tensor:
        """sum_s w_s^T (weight inputs_s + bias) with w = :meth:`sample_weights` (rhs): a
        scalar of (weight, bias) for autograd, computed as <solution, F^T inputs weight^T +
        F^T 1 bias^T> through the K rows of the map, without the (N x P) weights: the observation
        term of an MNIST-size step formed a 2,000 x 784 float64 product there (issue 13)."""
        solution = self.solve(rhs)  # (K, P)
        inputs = inputs.double()
        totals = self._transposed_product(inputs)
        counts = self._transposed_product(inputs.new_ones(inputs.shape[0]))  # F^T 1
        mapped = totals @ weight.double().T + counts.unsqueeze(1) * bias.double()
        return (solution * mapped).sum().to(weight.dtype)

    def fit(self, targets: torch.Tensor) -> torch.Tensor:
        """The ridge map M = (F^T F + lambda I)^{-1} F^T Y, (K x P)."""
        return self.solve(self._transposed_product(targets.double())).to(targets.dtype)

    def _transposed_product(self, y: torch.Tensor) -> torch.Tensor:
        """F^T y (float64 y); on distinct rows, rows^T (y summed over the samples of each row)."""
        if self.index is not None:
            y = y.new_zeros(self.features64.shape[0], *y.shape[1:]).index_add_(0, self.index, y)
        return self.features64.T @ y


def wake_terms(
    model: HierarchicalModel,
    sleep: list[torch.Tensor],
    solvers: list[RidgeSolver | None],
    encodings_of_batch: list[torch.Tensor | None],
    x: torch.Tensor,
    shard=LOCAL,
    plug_in=None,
) -> dict[str, torch.Tensor]:
    """The four parts of the wake objective (eqs 9-11), each a scalar of theta:

    - ``observation``: sum_s G_s^T g_0(z_1^s) - w^(1)_s Phi_0(g_0(z_1^s)), the x-layer's E_q[J_0]^T
      S_0(x) and E_q[J_0^T mu_0] (section 7, per-data-point weights G);
    - ``latent_stats``: sum_l sum_s w^(l)_s g_l(z_{l+1}^s)^T S_l(z_l^s), for 1 <= l < L;
    - ``latent_partition``: -sum_l sum_s w^(l+1)_s Phi_l(g_l(z_{l+1}^s)), for 1 <= l < L;
    - ``prior``: theta_L^T E_q[S_L] - Phi_L(theta_L).

    Args:
        sleep: [x^s, z_1^s, ..., z_L^s] sleep samples (no gradient).
        solvers: [None, RidgeSolver(T_1(z_1^s)), ..., RidgeSolver(T_L(z_L^s))].
        encodings_of_batch: [None, r_1(x), ..., r_L(x)], each (N_w, K_l + 1), no gradient.
        x: the data batch, (N_w, D_0).
        plug_in: None, or [None, (m_1, T_1(m_1)), ..., (m_L, T_L(m_L))] (:func:`plug_in_points`):
            posterior means read off r and their encodings, no gradient. The log-partition
            terms are then a plug-in corrected by their maps, E[Phi(g(z))] ~= Phi(g(m)) +
            M^T (r - T(m)): exact where the posterior is a point mass, and the maps carry only
            the posterior's spread about m (a control variate for the maps' residual).
        shard: with several processes (``ddchm.distributed``), x and the sleep samples are this
            process's rows, the solvers' Grams are the whole dreams', the batch means are
            summed over processes, and the terms are this process's part of the sums over
            dreams (the prior's log-partition on rank 0 only): their sum over processes is the
            whole objective.
    """
    L = model.n_latent_layers
    layers = model.layers
    n_batch = x.shape[0] * shard.world

    def batch_mean(r):  # r_bar over the whole batch
        return r.mean(0) if not shard.sharded else shard.total(r.sum(0)) / n_batch

    # w^(l) = F_l (F_l^T F_l + lambda I)^{-1} r_bar_l (section 7)
    weights = [None] + [
        solvers[l].sample_weights(batch_mean(encodings_of_batch[l])) for l in range(1, L + 1)
    ]
    # the log-partition terms' weights: of r - T(m) with a plug-in, else the same as above
    partition_weights = weights
    if plug_in is not None:
        partition_weights = [None] + [
            solvers[l].sample_weights(batch_mean(encodings_of_batch[l] - plug_in[l][1]))
            for l in range(1, L + 1)
        ]

    def plug_in_partition(layer, parents):  # this process's part of mean_n Phi(g(m_n))
        return layer.log_partition(layer.natural_params(parents)).sum() / n_batch

    terms = {}

    # Observation layer: E_q[J_0]^T S_0(x) via G = F_1 (F^T F + lambda I)^{-1} R_1^T S_0(X) / N_w
    observation = layers[0]
    data_stats = observation.sufficient_stats(x)
    rhs = shard.total(encodings_of_batch[1].T @ data_stats) / n_batch
    eta = observation.natural_params(sleep[1])
    partition = (partition_weights[1] * observation.log_partition(eta)).sum()
    if plug_in is not None:
        partition = partition + plug_in_partition(observation, plug_in[1][0])
    if isinstance(observation, Bernoulli):  # eta = W z_1 + b: sum_s G_s^T eta_s via the maps
        stats_term = solvers[1].affine_sum(rhs, sleep[1], observation.weight, observation.bias)
    else:
        stats_term = (solvers[1].sample_weights(rhs) * eta).sum()
    terms["observation"] = stats_term - partition

    # Latent conditionals: w^(l) g_l^T S_l(z_l) - w^(l+1) Phi_l(g_l)            (eqs 9-11)
    terms["latent_stats"] = terms["latent_partition"] = x.new_zeros(())
    for l in range(1, L):
        eta = layers[l].natural_params(sleep[l + 1])
        stats = layers[l].sufficient_stats(sleep[l])
        terms["latent_stats"] = terms["latent_stats"] + (weights[l] * (eta * stats).sum(1)).sum()
        partition = (partition_weights[l + 1] * layers[l].log_partition(eta)).sum()
        if plug_in is not None:
            partition = partition + plug_in_partition(layers[l], plug_in[l + 1][0])
        terms["latent_partition"] = terms["latent_partition"] - partition

    # Prior: E_q[S_L]^T theta_L - Phi_L(theta_L)
    eta = layers[L].natural_params(None)
    expected_stats = weights[L] @ layers[L].sufficient_stats(sleep[L])
    terms["prior"] = (eta[0] * expected_stats).sum()
    if shard.rank == 0:  # not a sum over dreams: counted once
        terms["prior"] = terms["prior"] - layers[L].log_partition(eta).sum()
    return terms


def plug_in_points(encodings, encodings_of_batch, generator=None) -> list:
    """[None, (m_l, T_l(m_l)) for each latent layer], for the ``plug_in`` of :func:`wake_terms`:
    m_l the posterior mean E[z_l | x] read off r_l's exact block (binary units clipped to
    [0, 1]), and its encoding. With ``generator``, a binary layer's point is instead one draw
    z_l ~ Bernoulli(m_l) a data point (a state of the layer, not a fraction)."""
    points = [None]
    for encoding, r in zip(encodings, encodings_of_batch[1:]):
        with torch.no_grad():
            u = encoding.expected_exact_features(r)[:, : encoding.dim]
            if encoding.continuous:
                point = u * encoding.unit_scale.to(u.dtype) + encoding.unit_centre.to(u.dtype)
            else:
                point = u.clamp(0.0, 1.0)
                if generator is not None:
                    uniform = torch.rand(
                        point.shape, generator=generator, device=point.device, dtype=point.dtype
                    )
                    point = (uniform < point).to(point.dtype)
            points.append((point, encoding(point).to(r.dtype)))
    return points


def wake_objective(
    model, sleep, solvers, encodings_of_batch, x, shard=LOCAL, plug_in=None
) -> torch.Tensor:
    """Scalar whose theta-gradient is the DDC estimate of mean_n grad_theta log p(x_n): the sum
    of :func:`wake_terms` (with ``shard``: this process's part of it)."""
    terms = wake_terms(model, sleep, solvers, encodings_of_batch, x, shard, plug_in)
    return sum(terms.values())


def wake_gradient(
    model, sleep, solvers, encodings_of_batch, x, shard=LOCAL, plug_in=None
) -> dict[str, torch.Tensor]:
    """The DDC gradient estimate as a dict keyed like ``model.named_parameters()`` (with
    ``shard``: summed over processes, so every process gets the whole estimate)."""
    objective = wake_objective(model, sleep, solvers, encodings_of_batch, x, shard, plug_in)
    return shard.reduce_gradients(model.gradients(objective), mean=False)


def _flat_gradient(model, objective) -> torch.Tensor:
    """model.gradients(objective) concatenated into one vector, (P,)."""
    return torch.cat([g.reshape(-1) for g in model.gradients(objective).values()])


def _per_sample_grads(model, scalar_fn, n_samples) -> torch.Tensor:
    """Stack of flattened gradients of scalar_fn(s) for s in range(n_samples), (N x P)."""
    return torch.stack([_flat_gradient(model, scalar_fn(s)) for s in range(n_samples)])


def explicit_wake_gradient(model, sleep, solvers, encodings_of_batch, x) -> dict[str, torch.Tensor]:
    """The same estimate with explicit regressions of dense per-sample Jacobian targets (slow).

    For tests: every map M = (F^T F + lambda I)^{-1} F^T Y is fitted on per-sample gradients Y,
    applied to every r_n, and averaged over the batch."""
    names, params = zip(*model.named_parameters())
    params = list(params)
    L, layers = model.n_latent_layers, model.layers
    n_sleep = sleep[0].shape[0]
    total = torch.zeros(sum(p.numel() for p in params), dtype=x.dtype, device=x.device)

    def mapped(l, targets):  # mean_n M^T r_n for the map on T_l
        return (encodings_of_batch[l] @ solvers[l].fit(targets)).mean(0)

    # observation layer: E_q[J_0]^T S_0(x_n) = (map of J_0 applied to r_1(x_n))^T S_0(x_n)
    observation, data_stats = layers[0], layers[0].sufficient_stats(x)
    for j in range(observation.n_stats):
        jac_j = _per_sample_grads(
            model,
            lambda s, j=j: observation.natural_params(sleep[1][s : s + 1])[0, j],
            n_sleep,
        )  # d eta_j / d theta per sleep sample
        per_point = encodings_of_batch[1] @ solvers[1].fit(jac_j)  # (N_w x P)
        total += (data_stats[:, j : j + 1] * per_point).mean(0)
    total -= mapped(
        1,
        _per_sample_grads(
            model,
            lambda s: observation.log_partition(
                observation.natural_params(sleep[1][s : s + 1])
            ).sum(),
            n_sleep,
        ),
    )

    for l in range(1, L):
        layer = layers[l]
        total += mapped(
            l,
            _per_sample_grads(
                model,
                lambda s, layer=layer, l=l: (
                    layer.natural_params(sleep[l + 1][s : s + 1])
                    * layer.sufficient_stats(sleep[l][s : s + 1])
                ).sum(),
                n_sleep,
            ),
        )
        total -= mapped(
            l + 1,
            _per_sample_grads(
                model,
                lambda s, layer=layer, l=l: layer.log_partition(
                    layer.natural_params(sleep[l + 1][s : s + 1])
                ).sum(),
                n_sleep,
            ),
        )

    prior = layers[L]
    total += mapped(
        L,
        _per_sample_grads(
            model,
            lambda s: (
                prior.natural_params(None) * prior.sufficient_stats(sleep[L][s : s + 1])
            ).sum(),
            n_sleep,
        ),
    )
    total -= _flat_gradient(model, prior.log_partition(prior.natural_params(None)).sum())

    out, start = {}, 0
    for name, p in zip(names, params):
        out[name] = total[start : start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def heldout_r2(train_features, train_targets, test_features, test_targets, ridge) -> float:
    """R^2 on held-out samples of the ridge map from features to targets (pooled over columns)."""
    solver = RidgeSolver(train_features, ridge)
    prediction = test_features @ solver.fit(train_targets)
    residual = ((test_targets - prediction) ** 2).sum()
    total = ((test_targets - test_targets.mean(0)) ** 2).sum().clamp_min(1e-12)
    return float(1 - residual / total)
