"""How many CPU threads torch uses: one rule for every command, the tests and each torchrun process.

torch starts one thread per core by default. The models here are small (a step is many small
matrix products), so on a machine shared with other work those threads mostly wait for each
other and for the other jobs: the same steps then cost many times the CPU seconds of one
thread, and a CPU-second budget buys a fraction of the steps (README, "Threads").
So ddchm uses :func:`default_threads` unless told otherwise: ``$OMP_NUM_THREADS`` where it is
set (the usual way to say it on a cluster), else 1. ``ddchm ... --threads N`` and the config's
``train.threads`` ask for N.
"""

from __future__ import annotations

import os

import torch

ENVIRONMENT = "OMP_NUM_THREADS"


def default_threads() -> int:
    """``$OMP_NUM_THREADS`` if it holds an integer >= 1, else 1."""
    text = os.environ.get(ENVIRONMENT, "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else 1


_INTEROP_SET = False  # torch takes the inter-op thread count once per process


def use_threads(threads: int | None = None, *, interop: bool = False) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the
    number set. ValueError for anything but an integer >= 1.

    ``interop``: also size the inter-op pool, the first time it is asked for in the process.
    torch allows that once, and only before its first parallel work (a second try raises, or
    on older torch aborts the process), so only entry points ask: the CLI and tests/conftest.py.
    """
    global _INTEROP_SET
    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
    torch.set_num_threads(threads)
    if interop and not _INTEROP_SET:
        _INTEROP_SET = True
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # parallel work has started: the pool keeps its size
            pass
    return threads
