"""Posterior accuracy on enumerable models: estimated vs exact posterior means and encodings.

Two questions, each against exact values from :class:`ExactInference`:

- How close are a method's posterior means E[z_l | x] (wake-sleep's factorised q, the DDC
  recogniser's means, ...) to the exact ones? Mean absolute error and RMSE per layer, and per
  unit (the marginal errors of E[z_lj | x]).
- How close are a DDC recogniser's expected encodings r_l(x) to the exact E[T_l(z_l) | x]
  (eq. 2)? MSE, and R^2 = 1 - sum (r - e)^2 / sum (e - mean_n e)^2 pooled over the features
  that vary with x, the fraction of the encodings' variance across data points that r explains
  (1 is perfect, 0 is no better than predicting the average encoding for every x). Features
  constant across x (the constant feature 1) count in the MSE, not in R^2.

The pure functions take arrays; the ``*_accuracy`` helpers also run the exact inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ddchm.models.exact import ExactInference
from ddchm.validation import as_tensor, check_finite, check_matrix


@dataclass
class LayerError:
    """Errors of one latent layer's estimates against exact values.

    Attributes:
        layer: l, for z_l.
        mae: mean |estimate - exact| over data points and units.
        rmse: sqrt of the mean squared error over data points and units.
        max_abs: the largest absolute error.
        unit_mae: (D_l,) mean absolute error of each unit's marginal mean.
        unit_rmse: (D_l,) root mean squared error per unit.
    """

    layer: int
    mae: float
    rmse: float
    max_abs: float
    unit_mae: torch.Tensor
    unit_rmse: torch.Tensor


@dataclass
class PosteriorErrors:
    """Per-layer :class:`LayerError` and the totals over every layer and unit."""

    layers: list[LayerError]
    mae: float
    rmse: float

    def as_dict(self, prefix: str = "posterior") -> dict[str, float]:
        """Flat metrics for a report: {'posterior_mae': ..., 'posterior_mae_z1': ..., ...}."""
        out = {f"{prefix}_mae": self.mae, f"{prefix}_rmse": self.rmse}
        for e in self.layers:
            out[f"{prefix}_mae_z{e.layer}"] = e.mae
            out[f"{prefix}_rmse_z{e.layer}"] = e.rmse
        return out


@dataclass
class EncodingError:
    """Expected encodings r_l(x) against exact E[T_l(z_l) | x] for one layer.

    Attributes:
        layer: l.
        mse: mean squared error over data points and features.
        r2: pooled R^2 over the features that vary with x (module docstring); NaN if none does.
        feature_r2: (K_l,) R^2 per feature (NaN for features constant across x).
    """

    layer: int
    mse: float
    r2: float
    feature_r2: torch.Tensor


def _as_layer_list(values, name: str) -> list[torch.Tensor]:
    if isinstance(values, (torch.Tensor,)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a list with one (N, D_l) array per latent layer")
    out = []
    for l, v in enumerate(values, start=1):
        t = as_tensor(v, f"{name}[{l - 1}] (z{l})").detach().to(torch.float64).cpu()
        check_matrix(t, f"{name}[{l - 1}] (z{l})")
        check_finite(t, f"{name}[{l - 1}] (z{l})")
        out.append(t)
    return out


def _check_pairs(exact, estimated, exact_name, estimated_name):
    if len(exact) != len(estimated):
        raise ValueError(
            f"{estimated_name}: has {len(estimated)} layers, {exact_name} has {len(exact)}"
        )
    for l, (e, m) in enumerate(zip(exact, estimated), start=1):
        if e.shape != m.shape:
            raise ValueError(
                f"{estimated_name}[{l - 1}] (z{l}): shape {tuple(m.shape)} differs from "
                f"{exact_name}'s {tuple(e.shape)}"
            )


def posterior_mean_errors(exact_means, estimated_means) -> PosteriorErrors:
    """Errors of ``estimated_means`` against ``exact_means``; both lists of (N, D_l) per layer."""
    exact = _as_layer_list(exact_means, "exact_means")
    estimated = _as_layer_list(estimated_means, "estimated_means")
    _check_pairs(exact, estimated, "exact_means", "estimated_means")
    layers, abs_total, sq_total, count = [], 0.0, 0.0, 0
    for l, (e, m) in enumerate(zip(exact, estimated), start=1):
        diff = m - e
        layers.append(
            LayerError(
                layer=l,
                mae=float(diff.abs().mean()),
                rmse=float(diff.square().mean().sqrt()),
                max_abs=float(diff.abs().max()),
                unit_mae=diff.abs().mean(0),
                unit_rmse=diff.square().mean(0).sqrt(),
            )
        )
        abs_total += float(diff.abs().sum())
        sq_total += float(diff.square().sum())
        count += diff.numel()
    return PosteriorErrors(layers, abs_total / count, (sq_total / count) ** 0.5)


def posterior_accuracy(exact: ExactInference, x, estimated_means) -> PosteriorErrors:
    """:func:`posterior_mean_errors` against ``exact.posterior_means(x)``."""
    with torch.no_grad():
        exact_means = exact.posterior_means(x)
    return posterior_mean_errors(exact_means, estimated_means)


def encoding_errors(exact_encodings, encodings) -> list[EncodingError]:
    """MSE and R^2 of ``encodings`` r_l(x) against ``exact_encodings`` E[T_l(z_l) | x].

    Both are lists with one (N, K_l) array per latent layer (or a single-layer list).
    """
    exact = _as_layer_list(exact_encodings, "exact_encodings")
    estimated = _as_layer_list(encodings, "encodings")
    _check_pairs(exact, estimated, "exact_encodings", "encodings")
    out = []
    for l, (e, r) in enumerate(zip(exact, estimated), start=1):
        residual = (r - e).square()
        spread = (e - e.mean(0)).square()
        # a feature is constant across x when its spread is at rounding level (e.g. the
        # constant feature 1, whose exact expectation is a sum of probabilities)
        varies = spread.mean(0).sqrt() > 1e-10 * e.abs().mean(0).clamp_min(1.0)
        total = float(spread[:, varies].sum())
        r2 = 1.0 - float(residual[:, varies].sum()) / total if total > 0 else float("nan")
        feature_r2 = torch.full((e.shape[1],), float("nan"), dtype=e.dtype)
        feature_r2[varies] = 1.0 - residual[:, varies].sum(0) / spread[:, varies].sum(0)
        out.append(EncodingError(l, float(residual.mean()), r2, feature_r2))
    return out


def encoding_accuracy(
    exact: ExactInference,
    x,
    encodings,
    features: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    layers: Sequence[int] | None = None,
) -> list[EncodingError]:
    """Compare r_l(x) with the exact E[T_l(z_l) | x] = ``exact.expectation(x, T_l, l)``.

    Args:
        exact: exact inference for the model whose posterior r should represent.
        x: (N, data_dim) data.
        encodings: list of (N, K_l) arrays r_l(x), one per entry of ``layers``.
        features: list of callables T_l mapping (C, D_l) latent values to (C, K_l) encodings.
        layers: which latent layers (1-based) the lists refer to; default 1..L.
    """
    layers = list(range(1, exact.n_latent_layers + 1)) if layers is None else list(layers)
    if not (len(encodings) == len(features) == len(layers)):
        raise ValueError(
            f"encodings, features: expected one per layer in {layers}, got {len(encodings)} "
            f"encodings and {len(features)} feature maps"
        )
    exact_encodings = [exact.expectation(x, fn=fn, layer=l) for fn, l in zip(features, layers)]
    errors = encoding_errors(exact_encodings, encodings)
    for error, l in zip(errors, layers):
        error.layer = l
    return errors
