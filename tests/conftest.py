"""Every test runs torch on ddchm's default thread count ($OMP_NUM_THREADS, else 1), as the
commands do: on a shared machine torch's default of one thread per core multiplies the suite's
CPU time many times over (README, "Threads")."""

from ddchm.threads import use_threads

use_threads(interop=True)  # before any test's torch work, so the inter-op pool is sized too
