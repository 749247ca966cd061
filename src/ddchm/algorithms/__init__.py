"""Learning algorithms sharing one interface: ``algorithm.step(batch) -> metrics``.

The DDC Helmholtz machine lives in :mod:`ddchm.ddc`; the baselines it is measured against are
here, one file each: wake-sleep, reweighted wake-sleep, VIMCO, VAE and IWAE.
"""

from ddchm.algorithms.base import OPTIMIZERS, Algorithm, make_optimizer
from ddchm.algorithms.iwae import IWAE
from ddchm.algorithms.recognition import RecognitionAlgorithm, RecognitionModel
from ddchm.algorithms.rws import ReweightedWakeSleep
from ddchm.algorithms.update_estimate import cosine_similarity, expected_theta_update
from ddchm.algorithms.vae import VAE
from ddchm.algorithms.vimco import VIMCO
from ddchm.algorithms.wake_sleep import WakeSleep

BASELINES = {
    "ws": WakeSleep,
    "rws": ReweightedWakeSleep,
    "vimco": VIMCO,
    "vae": VAE,
    "iwae": IWAE,
}

__all__ = [
    "BASELINES",
    "IWAE",
    "OPTIMIZERS",
    "VAE",
    "VIMCO",
    "Algorithm",
    "RecognitionAlgorithm",
    "RecognitionModel",
    "ReweightedWakeSleep",
    "WakeSleep",
    "cosine_similarity",
    "expected_theta_update",
    "make_optimizer",
]
