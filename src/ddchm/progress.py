"""Progress reports that suit where they go: a tqdm bar on a terminal, periodic lines in a log.

A tqdm bar redraws itself with carriage returns, which in a log file (a batch job's stderr, a
redirect) piles up hundreds of updates on one line. :func:`progress_bar` gives the bar when
stderr is a terminal and otherwise a :class:`LineProgress`: a plain line every ``interval``
seconds and one at the end, with the same ``update`` / ``set_postfix`` / ``close`` calls.

A bar counts steps by default; :func:`cpu_budget_bar` counts CPU seconds of a budget instead
("12.3/25 CPU s"), for a run that stops on its CPU time rather than on a step count.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from tqdm.auto import tqdm

LINE_INTERVAL = 30.0  # seconds between two progress lines in a log


class LineProgress:
    """``desc: n/total[ unit] (p%), elapsed s[, postfix]`` on ``file`` at most every
    ``interval`` seconds, and once more at :meth:`close` (if anything moved since the last
    line). With a ``unit`` the counts are amounts (one decimal), not items."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        disable: bool = False,
        file=None,
        interval: float = LINE_INTERVAL,
        unit: str = "",
    ):
        self.iterable, self.desc, self.disable, self.unit = iterable, desc, disable, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.file, self.interval = total, initial, file, interval
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.last_n = initial

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self.last_time >= self.interval:
            self._line()

    def set_postfix(self, values: dict | None = None, refresh: bool = True, **kwargs) -> None:
        items = {**(values or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self.disable and self.n != self.last_n:
            self._line()
        self.disable = True

    def _line(self) -> None:
        if self.unit:
            done = f"{self.n:.1f}/{self.total:g} {self.unit}" if self.total else f"{self.n:.1f}"
        else:
            done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        elapsed = time.monotonic() - self.start
        tail = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {done}{share}, {elapsed:.0f} s{tail}",
            file=self.file or sys.stderr,
            flush=True,
        )
        self.last_time, self.last_n = time.monotonic(), self.n


def progress_bar(iterable: Iterable | None = None, **kwargs):
    """A tqdm bar if stderr is a terminal, else a :class:`LineProgress` (same arguments:
    ``total``, ``initial``, ``desc``, ``disable``; tqdm-only ones are ignored there)."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    known = {k: kwargs[k] for k in ("total", "initial", "desc", "disable", "unit") if k in kwargs}
    return LineProgress(iterable, **known)


CPU_UNIT = "CPU s"


def cpu_budget_bar(budget: float, spent: float = 0.0, **kwargs):
    """A :func:`progress_bar` of CPU seconds: ``spent`` of ``budget`` so far; advance it with
    ``update(seconds)``. The step count belongs in its postfix (``set_postfix(step=...)``)."""
    return progress_bar(
        total=budget,
        initial=min(spent, budget),
        unit=CPU_UNIT,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} " + CPU_UNIT
        + " [{elapsed}<{remaining}{postfix}]",
        **kwargs,
    )
