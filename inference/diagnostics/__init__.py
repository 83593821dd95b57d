"""Checks of posterior draws, compute and verdict apart: ``run_*`` computes, ``check_*`` judges.

- :mod:`inference.diagnostics.coverage`: coverage, RMSE and chi-squared on held-out pairs
  (``run_evaluation`` / ``check_coverage``);
- :mod:`inference.diagnostics.ppc`: noise-whitened posterior predictive misfit of a posterior
  file (``run_ppc`` / ``check_ppc``).

Nothing here plots or writes files: the pipelines that do are :mod:`inference.evaluate`
(``ppl-cvae evaluate``) and :mod:`inference.report` (``ppl-cvae diagnose``).
"""

from inference.diagnostics.coverage import (
    CURVE_LEVELS,
    central_coverage,
    check_coverage,
    run_evaluation,
)
from inference.diagnostics.ppc import PPC_COLUMNS, check_ppc, run_ppc

__all__ = [
    "CURVE_LEVELS",
    "PPC_COLUMNS",
    "central_coverage",
    "check_coverage",
    "check_ppc",
    "run_evaluation",
    "run_ppc",
]
