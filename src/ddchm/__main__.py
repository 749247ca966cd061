"""``python -m ddchm ...`` (and ``torchrun --nproc-per-node N -m ddchm train CONFIG``)."""

from ddchm.cli import main

raise SystemExit(main())
