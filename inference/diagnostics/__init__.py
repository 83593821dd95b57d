"""Checks of posterior draws, compute and verdict apart: ``run_*`` computes, ``check_*`` judges.

- :mod:`inference.diagnostics.coverage`: coverage, RMSE and chi-squared on held-out pairs
  (``run_evaluation`` / ``check_coverage``);
- :mod:`inference.diagnostics.ppc`: noise-whitened posterior predictive misfit of a posterior
  file (``run_ppc`` / ``check_ppc``);
- :mod:`inference.diagnostics.facies`: reliability curve of facies probabilities against true
  facies (``run_reliability`` / ``check_reliability``) and accuracy of the posterior mode
  (``mode_accuracy``).

Nothing here plots or writes files: the pipelines that do are :mod:`inference.evaluate`
(``ppl-cvae evaluate``) and :mod:`inference.report` (``ppl-cvae diagnose``).
"""

from inference.diagnostics.coverage import (
    CURVE_LEVELS,
    central_coverage,
    check_coverage,
    run_evaluation,
)
from inference.diagnostics.facies import check_reliability, mode_accuracy, run_reliability
from inference.diagnostics.ppc import PPC_COLUMNS, check_ppc, run_ppc

__all__ = [
    "CURVE_LEVELS",
    "PPC_COLUMNS",
    "central_coverage",
    "check_coverage",
    "check_ppc",
    "check_reliability",
    "mode_accuracy",
    "run_evaluation",
    "run_ppc",
    "run_reliability",
]
