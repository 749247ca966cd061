"""Held-out R^2 of the DDC machine's regressions on fresh dreams (never changes a run)."""

from __future__ import annotations

import torch

from ddchm.ddc.wake import heldout_r2
from ddchm.validation import make_generator


@torch.no_grad()
def regression_r2(machine, n: int | None = None) -> dict[str, float]:
    """R^2 on fresh dreams of the recogniser (r_l(x) against T_l(z_l)) and of the gradient
    maps' regressions of S_l(z_l) on T_l (child) and of mu_l(z_{l+1}) on T_{l+1}. The dreams
    come from a generator seeded by the step, not the machine's."""
    n = n or machine.sleep_samples
    generator = make_generator(machine.diagnostic_seed + machine.steps, device=machine.device)
    train = machine.model.sample(n, generator=generator)
    test = machine.model.sample(n, generator=generator)
    f_train, f_test = machine.encode(train[1:]), machine.encode(test[1:])
    out = {}
    if machine.options.recogniser.sleep_targets == "snis":
        out["sleep_target_ess"] = machine.recogniser_training.last_sleep_ess
    r_test = machine.expected_encodings(test[0])
    ridges = machine.map_ridges()
    for l in range(1, machine.model.n_latent_layers + 1):
        t = f_test[l - 1][:, :-1]
        residual = ((t - r_test[l - 1][:, :-1]) ** 2).sum()
        out[f"recognition_r2_z{l}"] = float(1 - residual / ((t - t.mean(0)) ** 2).sum())
        layer, child = machine.model.layers[l], machine.model.layers[l - 1]
        out[f"map_r2_S_z{l}"] = heldout_r2(
            f_train[l - 1],
            layer.sufficient_stats(train[l]),
            f_test[l - 1],
            layer.sufficient_stats(test[l]),
            ridges[l - 1],
        )
        out[f"map_r2_mu_z{l - 1 if l > 1 else 'x'}"] = heldout_r2(
            f_train[l - 1],
            child.mean_stats(train[l]),
            f_test[l - 1],
            child.mean_stats(test[l]),
            ridges[l - 1],
        )
    return out
