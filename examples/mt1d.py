"""1-D magnetotellurics: amortized CVAE posterior of a layered resistivity profile.

Physics: a plane electromagnetic wave induces currents in a layered earth (31 layers of 200 m
down to 6200 m over a basement half-space, each with its own resistivity). The surface
impedance at 26 frequencies from 0.01 Hz to 1 kHz, from the upward impedance recursion, gives
the apparent resistivity (plotted as log10 ohm m) and the phase (deg); low frequencies see deep
(skin depth about 503 sqrt(rho / f) m). Noise is a 5 % relative error on the impedance (10 % in
apparent resistivity, 2.9 deg in phase). The model is log10 resistivity, a smooth Gaussian
random field around 100 ohm m clipped into [1, 10^4] ohm m; the forward operator is nonlinear,
so there is no exact posterior to compare with.

The script fits a CVAE with the problem's recommended settings, draws posterior samples for one
held-out synthetic sounding (``posterior.nc``) and evaluates coverage and misfit on 50 more. It
writes into ``--out-dir``: ``posterior.nc``, ``profile.png`` (credible bands of log10
resistivity against depth with the truth), ``predictive_rho.png`` and ``predictive_phase.png``
(posterior predictive against the observed sounding curves), ``loss.png``, ``coverage.png``,
``truth_vs_mean.png`` and ``metrics.json``.

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

import numpy as np
import torch

from inference import sample_posterior
from inference.arviz_io import save_inference_data
from inference.evaluate import evaluate_model, write_evaluation
from inference.plots import plot_loss, plot_predictive, plot_profile
from ppl_cvae import fit_problem, make_problem


def main(args: argparse.Namespace) -> dict:
    """Fit, sample one observation, evaluate on held-out pairs and plot; return the metrics."""
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problem = make_problem("mt1d")
    units = problem.units
    train: dict = {"seed": args.seed}  # the problem's recommended settings, overridden here
    model: dict = {}
    num_draws, num_eval, eval_draws = 500, 50, 200
    if args.smoke:
        train.update(num_epochs=2, num_train=256)
        model.update(hidden_dims=(32,), latent_dim=4, conv_channels=(4, 8), feature_dim=16)
        num_draws, num_eval, eval_draws = 50, 10, 50

    # fit on fresh simulations every epoch (standardisers from one simulated set)
    cvae, result, fit_seconds = fit_problem(
        problem, model=model, train=train, progress=not args.smoke
    )
    cvae = cvae.to(args.device)
    train_config = result.config

    # one held-out sounding: posterior draws as InferenceData
    x_obs, y_obs = problem.simulate(1, torch.Generator().manual_seed(10_000 + args.seed))
    x_obs, y_obs = x_obs[0], y_obs[0]
    idata = sample_posterior(
        cvae, y_obs.to(args.device), num_draws, problem=problem, x_true=x_obs, seed=args.seed
    )
    save_inference_data(idata, out / "posterior.nc")
    draws = idata.posterior["x"].values[0]  # (S, N), log10 ohm m
    y_rep = idata.posterior_predictive["y"].values[0]  # (S, 2, M)

    plot_profile(
        np.asarray(problem.coords["depth"]),
        draws,
        out / "profile.png",
        truth=x_obs.numpy(),
        xlabel=f"log10 resistivity ({units['x']})",
        depth_label="depth of layer top (m); last: half-space",
        title="posterior of the resistivity profile",
    )
    freqs = np.asarray(problem.coords["frequency"])
    rho_unit, phase_unit = units["y"]["log10_rho_a"], units["y"]["phase"]  # per component
    for k, (name, label) in enumerate(
        (
            ("rho", f"log10 apparent resistivity ({rho_unit})"),
            ("phase", f"impedance phase ({phase_unit})"),
        )
    ):
        plot_predictive(
            freqs,
            y_obs[k].numpy(),
            y_rep[:, k],
            out / f"predictive_{name}.png",
            xlabel=f"frequency ({units['frequency']})",
            ylabel=label,
            logx=True,
            title=f"posterior predictive: {label.split(' (')[0]}",
        )
    plot_loss(result.history, out / "loss.png")

    # held-out pairs: coverage and chi-squared misfit (nonlinear: no exact posterior)
    x_eval, y_eval = problem.simulate(num_eval, torch.Generator().manual_seed(20_000 + args.seed))
    metrics, x_draws, exact_eval = evaluate_model(
        cvae, x_eval, y_eval, problem=problem, num_samples=eval_draws, seed=args.seed
    )
    metrics.update(fit_seconds=fit_seconds, problem=problem.spec(), smoke=bool(args.smoke))
    write_evaluation(
        out, metrics, x_eval, x_draws, exact=exact_eval, problem=problem, seed=args.seed
    )

    print(
        f"fit: {fit_seconds:.1f} s ({train_config.num_epochs} epochs of "
        f"{train_config.num_train} pairs)"
    )
    print(
        f"held-out ({num_eval} pairs): coverage 50% {metrics['coverage_50']:.3f}, "
        f"90% {metrics['coverage_90']:.3f}; chi2 per datum {metrics['chi2_per_datum']:.3f}; "
        f"RMSE ratio {metrics['rmse_ratio']:.3f}"
    )
    print(f"wrote {out}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default="runs/examples/mt1d")
    main(parser.parse_args())
