"""Crosshole traveltime tomography: amortized CVAE posterior of a slowness section.

Physics: a 32 m x 32 m vertical section between two boreholes is a grid of 1 m cells of
constant slowness (s/m, the reciprocal of the P-wave velocity). 16 sources in the left borehole
and 16 receivers in the right one give 256 first-arrival traveltimes (s); under the straight-ray
approximation each is the line integral of slowness along the source-receiver segment,
``t = G s + noise`` with ``G`` the ray lengths in the cells (m) and 0.05 ms Gaussian picking
noise. The prior is either a Gaussian random field around 2000 m/s (``--prior grf``: the problem
is then linear-Gaussian and the exact posterior is drawn next to the CVAE's) or sinuous binary
sand channels (2400 m/s) in shale (1800 m/s) (``--prior channels``).

The script fits a CVAE with the problem's recommended settings, draws posterior samples for one
held-out synthetic observation (``posterior.nc``) and evaluates coverage and misfit on 50 more.
It writes into ``--out-dir``: ``posterior.nc``, ``fields.png`` (truth, posterior mean and std,
three draws; exact mean and std for the random field), ``profile.png`` (the column through the
middle of the section against depth), ``predictive.png`` (traveltime against ray index),
``loss.png``, ``coverage.png``, ``truth_vs_mean.png`` and ``metrics.json``.

Run::

    python examples/crosshole.py --prior grf --out-dir runs/examples/crosshole_grf
    python examples/crosshole.py --prior channels --out-dir runs/examples/crosshole_channels

Runtime (full run, ``OMP_NUM_THREADS=1``, 2 shared CPU cores): ``--prior grf`` measured 9.1
minutes (8.8 minutes of fitting; on 50 held-out pairs coverage 0.502 / 0.893, mean error 0.13
exact sd, sd ratio 1.01); ``--prior channels`` not measured (same network and budget, cheaper
prior draws). ``--smoke``: about 10 seconds.
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
    out = Path(args.out_dir or f"runs/examples/crosshole_{args.prior}")
    out.mkdir(parents=True, exist_ok=True)
    problem = make_problem("crosshole", prior=args.prior)
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
    draws = idata.posterior["x"].values[0]  # (S, nz, nx), s/m
    y_rep = idata.posterior_predictive["y"].values[0]  # (S, num_rays), s
    exact = exact_posterior(problem, y_obs[None]) if problem.linear_gaussian() else None

    # fields: truth, mean, draws (and the exact mean) on one colour scale
    nz, nx = problem.x_shape
    extent = (0.0, problem.width, problem.height, 0.0)  # cell edges in m, depth down
    panels = {
        "truth": x_obs.numpy(),
        "posterior mean": draws.mean(0),
        "posterior std": draws.std(0),
    }
    panels["draw 1"] = draws[0]
    if exact is not None:
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
        xlabel=f"slowness ({units['x']})",
        title=f"column at offset {problem.coords['offset'][column]:g} m",
    )
    plot_predictive(
        np.arange(problem.y_shape[0]),
        y_obs.numpy(),
        y_rep,
        out / "predictive.png",
        xlabel="ray index (source-major)",
        ylabel=f"traveltime ({units['y']})",
        title="posterior predictive traveltimes",
    )
    plot_loss(result.history, out / "loss.png")

    # held-out pairs: coverage, chi-squared and (random field) the exact posterior
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
    if "exact" in metrics:
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
    parser.add_argument("--prior", choices=["grf", "channels"], default="grf")
    parser.add_argument("--smoke", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=None, help="default: runs/examples/crosshole_<prior>")
    main(parser.parse_args())
