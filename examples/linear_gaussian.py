"""Linear-Gaussian inversion: the amortized CVAE posterior against the exact Gaussian posterior.

Fits a CVAE on ``y = A x + noise`` (2 parameters, 2 data, Gaussian prior) and compares, for a
few held-out observations, the posterior mean, standard deviation and correlation of the CVAE
draws with the closed-form posterior. Writes the InferenceData and a PNG of the draws.

Run::

    python examples/linear_gaussian.py --out-dir runs/linear_gaussian

Runtime: about 20 seconds on 2 CPU cores (``--smoke``: about 2 seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import parser

from inference import linear_gaussian_posterior, sample_posterior
from inference.arviz_io import save_inference_data
from inference.plots import plot_pairs
from ppl_cvae import LinearGaussian, Overrides, build_cvae, fit, resolve_settings


def main(args: argparse.Namespace) -> list[dict]:
    """Fit and compare with the exact posterior; return one row of statistics per observation."""
    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    problem = LinearGaussian(x_dim=2, y_dim=2, noise_std=0.5)
    smoke = Overrides(train={"num_epochs": 2, "num_train": 512}) if args.smoke else Overrides()
    config, train = resolve_settings(problem, Overrides(train={"seed": args.seed}).updated(smoke))
    x, y = problem.simulate(train.num_train, torch.Generator().manual_seed(args.seed))
    cvae = build_cvae(config, x, y).to(args.device)
    fit(cvae, None, None, train, simulator=problem.simulate, progress=not args.smoke)

    x_test, y_test = problem.simulate(3, torch.Generator().manual_seed(1234))
    idata = sample_posterior(cvae, y_test, 4000, problem=problem, x_true=x_test, seed=args.seed)
    save_inference_data(idata, out / "posterior.nc")
    mean, cov = linear_gaussian_posterior(
        problem.matrix, problem.noise_std**2 * torch.eye(2), torch.zeros(2), torch.eye(2), y_test
    )
    draws = torch.as_tensor(idata.posterior["x"].values[0])  # (S, M, 2)
    rows = []
    for m in range(3):
        sd = cov.diagonal().sqrt()
        row = {
            "observation": m,
            "mean_error_in_sd": ((draws[:, m].mean(0) - mean[m]) / sd).tolist(),
            "std_ratio": (draws[:, m].std(0) / sd).tolist(),
            "correlation": torch.corrcoef(draws[:, m].T)[0, 1].item(),
            "exact_correlation": (cov[0, 1] / sd.prod()).item(),
        }
        rows.append(row)
        print(row)
    plot_pairs(
        draws[:, 0].numpy(),
        ["x0", "x1"],
        out / "posterior_pairs.png",
        title="CVAE posterior draws, observation 0",
    )
    return rows


if __name__ == "__main__":
    main(parser(__doc__, "runs/linear_gaussian").parse_args())
