"""1-D magnetotellurics: amortized CVAE posterior of a layered resistivity profile.

Physics: a plane electromagnetic wave induces currents in a layered earth (31 layers of 200 m
down to 6200 m over a basement half-space, each with its own resistivity). The surface
impedance at 26 frequencies from 0.01 Hz to 1 kHz, from the upward impedance recursion, gives
the apparent resistivity (plotted as log10 ohm m) and the phase (deg); low frequencies see deep
(skin depth about 503 sqrt(rho / f) m). Noise is a 5 % relative error on the impedance (10 % in
apparent resistivity, 2.9 deg in phase). The model is log10 resistivity, a smooth logit-normal
random field (a Gaussian field through a scaled sigmoid) with median 100 ohm m inside
(1, 10^4) ohm m; the forward operator is nonlinear, so there is no exact posterior to compare
with (``ppl-cvae sample --method importance|nuts`` correct the draws with the prior's density).

The script fits a CVAE with the problem's recommended settings, draws posterior samples for one
held-out synthetic sounding (``posterior.nc``) and evaluates coverage and misfit on 50 more. It
writes into ``--out-dir``: ``posterior.nc``, ``report/`` (what ``ppl-cvae diagnose`` writes:
summary and misfit tables, the resistivity staircase against depth on a log ohm m axis with the
truth, and the posterior predictive apparent resistivity and phase against log frequency with
the observed sounding and its error bars), ``loss.png``, ``coverage.png``,
``truth_vs_mean.png``, ``sbc_ecdf.png``, ``tarp.png`` and ``metrics.json``.

Run::

    python examples/mt1d.py --out-dir runs/examples/mt1d

Runtime (full run, ``OMP_NUM_THREADS=1``, 2 shared CPU cores): about 4.3 minutes (4.2
minutes of fitting measured; on 50 held-out pairs coverage 0.487 / 0.875, chi-squared 1.12 per
datum).
``--smoke``: about 10 seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import parser
from _survey import evaluate_held_out, fit_and_observe

from ppl_cvae import make_problem


def main(args: argparse.Namespace) -> dict:
    """Fit, sample one sounding, evaluate on held-out pairs and plot; return the metrics."""
    problem = make_problem("mt1d")
    run = fit_and_observe(problem, args, Path(args.out_dir))  # the report draws the sounding
    return evaluate_held_out(problem, run, args)  # nonlinear: no exact posterior


if __name__ == "__main__":
    main(parser(__doc__, "runs/examples/mt1d").parse_args())
