"""Checks of posterior draws: posterior predictive misfit and the uncertainty report."""

from inference.diagnostics.report import write_report

__all__ = ["write_report"]
