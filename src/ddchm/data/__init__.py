"""Data: synthetic ground truths, MNIST, natural image patches and user arrays."""

from ddchm.data.arrays import load_array, split_train_valid_test
from ddchm.data.download import ChecksumError, DownloadError, download_mnist
from ddchm.data.mnist import MNISTNotFoundError, binarize, build_offline_subset, load_mnist
from ddchm.data.patches import PatchTransform, image_patches
from ddchm.data.synthetic import TRUTHS, SyntheticTruth, make_truth

__all__ = [
    "TRUTHS",
    "ChecksumError",
    "DownloadError",
    "MNISTNotFoundError",
    "PatchTransform",
    "SyntheticTruth",
    "binarize",
    "build_offline_subset",
    "download_mnist",
    "image_patches",
    "load_array",
    "load_mnist",
    "make_truth",
    "split_train_valid_test",
]
