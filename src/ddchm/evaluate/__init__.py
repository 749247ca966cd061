"""Evaluation: gradient accuracy, MMD, log-likelihood (exact / IS / AIS), posterior accuracy,
figures and comparison reports."""

from ddchm.evaluate.ais import ais_log_likelihood
from ddchm.evaluate.gradients import compare_gradients, oracle_encodings, perturbed_model
from ddchm.evaluate.likelihood import (
    ExactPosteriorProposal,
    LogLikelihoodResult,
    PriorProposal,
    exact_log_likelihood,
    fit_proposal,
    importance_log_likelihood,
)
from ddchm.evaluate.mmd import MULTI, MMDResult, mmd, mmd_floor
from ddchm.evaluate.plots import plot_learning_curves, plot_posterior_scatter, plot_samples
from ddchm.evaluate.posterior import encoding_accuracy, posterior_accuracy, posterior_mean_errors
from ddchm.evaluate.report import markdown_table, write_comparison

__all__ = [
    "MULTI",
    "ExactPosteriorProposal",
    "LogLikelihoodResult",
    "MMDResult",
    "PriorProposal",
    "ais_log_likelihood",
    "compare_gradients",
    "encoding_accuracy",
    "exact_log_likelihood",
    "fit_proposal",
    "importance_log_likelihood",
    "markdown_table",
    "mmd",
    "mmd_floor",
    "oracle_encodings",
    "perturbed_model",
    "plot_learning_curves",
    "plot_posterior_scatter",
    "plot_samples",
    "posterior_accuracy",
    "posterior_mean_errors",
    "write_comparison",
]
