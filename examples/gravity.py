"""2-D gravity: amortized CVAE posterior of a density-contrast section, checked against exact.

Physics: a vertical section 1600 m long and 800 m deep is a grid of 50 m x 50 m cells, each an
infinitely long 2-D prism of constant density contrast (kg/m^3). 32 surface stations measure
the vertical gravity anomaly (mGal), the sum of the closed-form attraction of every prism
(Talwani-type line-mass integral with Newton's constant), plus 0.05 mGal Gaussian noise. The
prior is a smooth Gaussian random field (0 +- 100 kg/m^3, 200 m correlation length); the
forward operator is linear, so the exact Gaussian posterior is known and drawn next to the
CVAE's. Gravity alone cannot tell depth well (a deep dense body and a shallower, broader one
give similar anomalies), so expect wide posteriors at depth.

The script fits a CVAE with the problem's recommended settings, draws posterior samples for one
held-out synthetic profile (``posterior.nc``) and evaluates coverage and misfit on 50 more. It
writes into ``--out-dir``: ``posterior.nc``, ``fields.png`` (truth, posterior mean and std,
three draws, exact mean and std), ``profile.png`` (the column through the middle of the section
against depth), ``predictive.png`` (anomaly against station position), ``loss.png``,
``coverage.png``, ``truth_vs_mean.png`` and ``metrics.json``.

Run::

    python examples/gravity.py --out-dir runs/examples/gravity

Runtime (full run, ``OMP_NUM_THREADS=1``, 2 shared CPU cores): about 6 minutes (5.7 minutes
of fitting measured; on 50 held-out pairs coverage 0.478 / 0.889 against the exact posterior's
0.497 / 0.910, mean error 0.063 exact sd, sd ratio 0.97). ``--smoke``: about 10 seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from inference import sample_posterior
from inference.arviz_io import save_inference_data
from inference.evaluate import evaluate_model, write_evaluation
from inference.exact import exact_posterior
from inference.plots import plot_fields, plot_loss, plot_predictive, plot_profile
from ppl_cvae import fit_problem, make_problem


def main(args: argparse.Namespace) -> dict:
    """Fit, sample one observation, evaluate on held-out pairs and plot; return the metrics."""
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problem = make_problem("gravity")
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

    # one held-out observation: posterior draws as InferenceData
    x_obs, y_obs = problem.simulate(1, torch.Generator().manual_seed(10_000 + args.seed))
    x_obs, y_obs = x_obs[0], y_obs[0]
    idata = sample_posterior(
        cvae, y_obs.to(args.device), num_draws, problem=problem, x_true=x_obs, seed=args.seed
    )
    save_inference_data(idata, out / "posterior.nc")
    draws = idata.posterior["x"].values[0]  # (S, nz, nx), kg/m^3
    y_rep = idata.posterior_predictive["y"].values[0]  # (S, num_stations), mGal
    exact = exact_posterior(problem, y_obs[None])

    # fields: truth, mean, draws (and the exact mean) on one colour scale
    nz, nx = problem.x_shape
    extent = (0.0, problem.width, problem.depth, 0.0)  # cell edges in m, depth down
    panels = {
        "truth": x_obs.numpy(),
        "posterior mean": draws.mean(0),
        "posterior std": draws.std(0),
    }
    panels["draw 1"] = draws[0]
    panels["exact mean"] = exact.mean[0].numpy()
    panels["exact std"] = exact.std.numpy()
    panels["draw 2"], panels["draw 3"] = draws[1], draws[2]
    shared = [t for t in panels if "std" not in t]
    plot_fields(
        panels,
        out / "fields.png",
        extent=extent,
        units=dict.fromkeys(panels, units["x"]),
        shared=shared,
        ncols=3,
    )
    column = nx // 2
    plot_profile(
        np.asarray(problem.coords["depth"]),
        draws[:, :, column],
        out / "profile.png",
        truth=x_obs[:, column].numpy(),
        xlabel=f"density contrast ({units['x']})",
        title=f"column at offset {problem.coords['offset'][column]:g} m",
    )
    plot_predictive(
        np.asarray(problem.coords["station"]),
        y_obs.numpy(),
        y_rep,
        out / "predictive.png",
        xlabel=f"station offset ({units['station']})",
        ylabel=f"vertical gravity anomaly ({units['y']})",
        title="posterior predictive gravity anomaly",
    )
    plot_loss(result.history, out / "loss.png")

    # held-out pairs: coverage, chi-squared and the exact posterior
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
    e = metrics["exact"]
    print(
        f"vs exact posterior: mean error {e['mean_error_in_std']:.3f} exact std, std ratio "
        f"{e['std_ratio']:.3f}; exact coverage 50% {e['coverage_50']:.3f}, "
        f"90% {e['coverage_90']:.3f}"
    )
    print(f"wrote {out}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default="runs/examples/gravity")
    main(parser.parse_args())
