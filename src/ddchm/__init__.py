"""ddchm: the DDC Helmholtz machine.

``ddchm.load_run(DIR)`` loads a run directory (model, algorithm, data splits, metrics);
``ddchm.__version__`` is the installed version.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ddchm")
except PackageNotFoundError:  # run from a source tree without installing
    __version__ = "0+unknown"


def __getattr__(name):  # imported on first use: `ddchm --version` needs no torch
    if name in ("load_run", "Run"):
        from ddchm import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'ddchm' has no attribute {name!r}")
