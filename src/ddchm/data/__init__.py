"""Data: synthetic ground truths, MNIST, natural image patches and user arrays."""

from ddchm.data.synthetic import TRUTHS, SyntheticTruth, make_truth

__all__ = ["TRUTHS", "SyntheticTruth", "make_truth"]
