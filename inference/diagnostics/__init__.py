"""Checks of posterior draws, compute and verdict apart: ``run_*`` computes, ``check_*`` judges.

- :mod:`inference.diagnostics.coverage`: coverage, RMSE and chi-squared on held-out pairs
  (``run_evaluation`` / ``check_coverage``, whose tolerance follows from the number of pairs:
  ``coverage_verdict``);
- :mod:`inference.diagnostics.calibration`: simulation-based calibration ranks of every
  component and of derived statistics such as the data misfit (``run_sbc`` / ``check_sbc``),
  and TARP of the joint posterior (``run_tarp`` / ``check_tarp``);
- :mod:`inference.diagnostics.ppc`: noise-whitened posterior predictive misfit of a posterior
  file (``run_ppc`` / ``check_ppc`` / ``plausible_chi2_range``);
- :mod:`inference.diagnostics.facies`: reliability curve of facies probabilities against true
  facies (``run_reliability`` / ``check_reliability``) and accuracy of the posterior mode
  (``mode_accuracy``).

Nothing here plots or writes files: the pipelines that do are :mod:`inference.evaluate`
(``ppl-cvae evaluate``) and :mod:`inference.report` (``ppl-cvae diagnose``).
"""

from inference.diagnostics.calibration import (
    check_sbc,
    check_tarp,
    run_calibration,
    run_sbc,
    run_tarp,
    sbc_ranks,
    tarp_values,
)
from inference.diagnostics.coverage import (
    CURVE_LEVELS,
    central_coverage,
    check_coverage,
    coverage_verdict,
    expected_coverage,
    run_evaluation,
)
from inference.diagnostics.facies import check_reliability, mode_accuracy, run_reliability
from inference.diagnostics.ppc import PPC_COLUMNS, check_ppc, plausible_chi2_range, run_ppc

__all__ = [
    "CURVE_LEVELS",
    "PPC_COLUMNS",
    "central_coverage",
    "check_coverage",
    "check_ppc",
    "check_reliability",
    "check_sbc",
    "check_tarp",
    "coverage_verdict",
    "expected_coverage",
    "mode_accuracy",
    "plausible_chi2_range",
    "run_calibration",
    "run_evaluation",
    "run_ppc",
    "run_reliability",
    "run_sbc",
    "run_tarp",
    "sbc_ranks",
    "tarp_values",
]
