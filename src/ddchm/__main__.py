"""``python -m ddchm ...`` (and ``torchrun --nproc-per-node N -m ddchm train CONFIG``)."""

from ddchm.cli import entry

entry()
