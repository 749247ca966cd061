"""The sleep phase's recognition regression (eq 7), with the data rows of wake recognition.

    minimise  sum_s sum_l || T_l(z_l^s) - r_l(x^s) ||^2                      (dreams, eq 7)
            + wake_weight sum_n c_n sum_l || r_hat_l(x_n) - r_l(x_n) ||^2    (data rows)

r_hat are the wake phase's importance targets (``ddc/wake_phase.py``); c_n = min(ESS_n /
wake_min_ess, 1) lowers the weight of a target that rests on few effective particles. The
dreams' targets are their own encodings (``sleep_targets = 'samples'``) or their
self-normalised average over all the step's dreams (``'snis'``, :func:`sleep_targets`).
"""

from __future__ import annotations

import torch

from ddchm.models.exact import pair_log_prob


@torch.no_grad()
def sleep_targets(model, sleep: list[torch.Tensor], features, chunk: int = 1024):
    """The SNIS estimates of E[T_l(z_l) | x^s] for the dreams' x^s with every dream as a
    particle, w_sj ~ p(x^s | z_1^j) (prior samples: the prior cancels). Returns (targets per
    layer, median ESS)."""
    targets = [torch.empty_like(f) for f in features]
    ess = []
    for start in range(0, sleep[0].shape[0], chunk):
        rows = slice(start, start + chunk)
        w = torch.softmax(pair_log_prob(model.observation, sleep[0][rows], sleep[1]), 1)
        for target, f in zip(targets, features):
            target[rows] = w @ f
        ess.append(1.0 / (w**2).sum(1))
    return targets, float(torch.cat(ess).median())


class RecogniserTraining:
    """One recogniser update per call, as configured by ``RecogniserOptions``.

    Args:
        machine: the DDC machine (its recogniser, dreams, encodings, wake targets).
        options: the resolved ``RecogniserOptions``; ``min_ess``: the wake phase's.
    """

    def __init__(self, machine, options, min_ess: float):
        self.machine, self.options, self.min_ess = machine, options, min_ess
        self.last_loss = float("nan")
        self.last_sleep_ess = float("nan")
        self.last_wake_ess = float("nan")

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch's points that train the recogniser: all of them where the wake phase reads
        their targets, else the first ``recognition_points`` (a random sample of the batch)."""
        if self.machine.wake_phase.reads_targets:
            return batch
        return batch[: self.options.recognition_points]

    def fit(self, sleep, data=None, features=None, particles=None, found=None) -> float:
        """Regression (eq 7) on the dreams ``sleep`` (then on fresh ones, ``recognition_steps``
        > 1) and, with ``wake_recognition``, on the data rows towards their importance targets.
        ``features``: the dreams' encodings; ``particles``: the prior particles of the wake
        targets; ``found``: the rows' targets if already computed. Returns the first loss.

        In a sharded step (``machine.shard``) ``sleep``, ``features`` and ``data`` are the
        whole step's; this process fits its equal part of the dreams and of the data rows
        (``found``: the targets of its part of the rows), and the fit sums over processes."""
        machine, opts = self.machine, self.options
        shard = machine.shard
        loss = None
        for step in range(opts.recognition_steps):
            dreams = sleep if step == 0 else machine.dream()
            targets = features if step == 0 and features is not None else None
            targets = machine.encode(dreams[1:]) if targets is None else targets
            regressed = targets
            if opts.sleep_targets == "snis":
                regressed, self.last_sleep_ess = sleep_targets(machine.model, dreams, targets)
            wake = {}
            if opts.wake_recognition and data is not None:
                rows = self.rows(data)
                if shard.sharded:
                    rows = rows[shard.rows(rows.shape[0], "the recogniser's data rows")]
                if step > 0 or found is None:
                    given = particles if step == 0 else None
                    found = machine.wake_targets(rows, dreams, targets, particles=given)
                if step == 0:
                    machine.wake_estimates = found
                self.last_wake_ess = float(shard.gather(found.ess).median())
                weight = opts.wake_weight * (found.ess / self.min_ess).clamp(max=1.0)
                wake = dict(wake_x=rows, wake_targets=found.targets, wake_weight=weight)
            n = machine.recognition_dreams  # the first n dreams (a random subset: they are iid)
            x, regressed = dreams[0][:n], [t[:n] for t in regressed]
            if shard.sharded:
                mine = shard.rows(n, "recognition_dreams")
                x, regressed = x[mine], [t[mine] for t in regressed]
                wake["shard"] = shard
            value = machine.recognition.fit_step(x, regressed, **wake)
            loss = value if loss is None else loss
        self.last_loss = loss
        return loss

    def fit_only(self, n_steps: int, progress: bool, data=None) -> float:
        """``n_steps`` updates on fresh dreams (and minibatches of 100 rows of ``data``, drawn
        with the machine's generator), theta fixed; the last loss."""
        from ddchm.progress import progress_bar

        machine, loss = self.machine, float("nan")
        for _ in progress_bar(range(n_steps), disable=not progress, desc="recognition"):
            batch = None
            if data is not None:
                generator, device = machine.generator, machine.device
                rows = torch.randint(data.shape[0], (100,), generator=generator, device=device)
                batch = data[rows]
            loss = self.fit(machine.dream(), batch)
        return loss
