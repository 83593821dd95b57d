"""Two Birds benchmark: fit, sample and score the CVAE under the challenge's criteria.

For each function pair (``data_1``, ``original``): fit with the problem's recommended settings
(the stated budget), draw 30 posterior samples for each of 50 held-out observations, and score
them (pass rate, mean y-RMSE, exact-mode coverage, diversity) twice: the amortized draws alone,
and the draws refined with the forward operator and accepted by misfit
(``inference.refine.refine_and_accept``). For ``original`` the challenge's own 50 scoring
observations are used when ``../shared`` is beside the repository (else 50 simulated ones), and
the challenge's sample submission is scored as an anchor.

Run::

    python benchmarks/two_birds.py [--epochs 60] [--threads 2] [--functions original]
    python benchmarks/two_birds.py --likelihood flow --latent-dim 0   # a flow on the endpoints
    python benchmarks/two_birds.py --unconstrained   # endpoints as before issue 10
    python benchmarks/two_birds.py --functions data_1 --prior flow --prior-flow-type coupling \
        --draw-rate   # a coupling flow prior; draws/s against the Gaussian prior net

About 12 minutes on 2 CPU cores with the default budget.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from _common import fit_resimulated, set_flags, train_overrides

from inference import draw_posterior
from inference.posterior import PosteriorDraws
from inference.refine import accept_by_misfit, refine_and_accept, refine_by_misfit
from ppl_cvae import Overrides, TwoBirds, build_cvae, resolve_settings
from ppl_cvae.data import load_pairs
from ppl_cvae.problems.two_birds import (
    enumerate_exact_solutions_batch,
    expected_mode_coverage,
    score_samples,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "two_birds"
KEYS = (
    "pass_rate",
    "mean_y_rmse",
    "mode_coverage",
    "mean_modes_hit",
    "mean_num_exact_solutions",
    "diversity",
    "mean_num_clusters",
)


def held_out(problem, functions):
    if functions == "original" and (SHARED / "scoring_dataset.pt").is_file():
        x, y = load_pairs(SHARED / "scoring_dataset.pt")
        return x, y, "challenge scoring_dataset.pt"
    x, y = problem.simulate(50, torch.Generator().manual_seed(999))
    return x, y, "50 simulated (seed 999)"


def report(label, score, seconds=None):
    d = score.to_dict()
    parts = [f"{k}={d[k]:.3f}" if isinstance(d[k], float) else f"{k}={d[k]}" for k in KEYS]
    extra = f" ({seconds:.1f} s)" if seconds is not None else ""
    print(f"  {label}{extra}: " + ", ".join(parts))


def run(functions, args):
    problem = TwoBirds(functions)
    train = train_overrides(args.seed, args.epochs) | set_flags(args, ["gsnn_weight"])
    model = set_flags(
        args,
        ["likelihood", "latent_dim", "prior", "flow_layers", "prior_flow_layers",
         "prior_flow_type", "prior_flow_final", "flow_hidden_dims", "flow_bins"],
    )
    if args.unconstrained:
        model["constrained_coefficients"] = False
    cvae, _, config, train_config, fit_seconds = fit_resimulated(problem, model, train, args.seed)
    print(
        f"{functions}: fit {fit_seconds:.0f} s, {train_config.num_epochs} epochs x "
        f"{train_config.num_train} fresh pairs, {cvae.num_parameters()} parameters; "
        f"likelihood {config.likelihood}, prior {config.prior}, latent {config.latent_dim}, "
        f"gsnn weight {train_config.gsnn_weight}"
    )
    x_test, y_test, source = held_out(problem, functions)
    print(f"  held-out observations: {source}; 30 samples each")
    solutions = enumerate_exact_solutions_batch(y_test, problem.functions)
    ref = expected_mode_coverage(y_test, problem.functions, num_samples=30)
    print(
        f"  exact posterior sampler (Laplace weights), expected: coverage "
        f"{ref.mode_coverage:.3f} (sd {ref.mode_coverage_sd:.3f}), "
        f"modes hit {ref.mean_modes_hit:.2f}"
    )

    def timed(label, draw, quiet=False):
        """Time ``draw() -> (x, accepted or None)`` (warnings off if ``quiet``), print its row."""
        start = time.perf_counter()
        with warnings.catch_warnings() if quiet else contextlib.nullcontext():
            if quiet:
                warnings.simplefilter("ignore")
            x, accepted = draw()
        seconds = time.perf_counter() - start
        report(
            label, score_samples(x, y_test, problem.functions, exact_solutions=solutions), seconds
        )
        if accepted is not None:
            print(f"  accepted fraction {accepted.float().mean():.3f}")

    def corrected():
        refined, accepted = refine_and_accept(
            cvae, y_test, 30, problem, oversample=4, max_misfit=1.0, seed=args.seed
        )
        return refined.x, accepted

    timed("amortized", lambda: (draw_posterior(cvae, y_test, 30, seed=args.seed).x, None))
    timed("refined + accepted", corrected, quiet=True)
    if args.draw_rate:
        draw_rates(cvae, config, problem, train_config, args)
    # ablation: the same refinement and acceptance from prior draws instead of the CVAE
    gen = torch.Generator().manual_seed(args.seed)
    prior_x = problem.sample_prior(4 * 30 * y_test.shape[0], gen).reshape(120, -1, 1, 50, 2)
    candidates = PosteriorDraws(
        x=prior_x, z=torch.zeros(*prior_x.shape[:2], 1), y_rep=None, decoder_noise=False
    )

    def ablation():
        kept, accepted = accept_by_misfit(
            refine_by_misfit(candidates, y_test, problem), y_test, problem, 30, 1.0
        )
        return kept.x, accepted

    timed("ablation, prior draws refined + accepted", ablation, quiet=True)


def draw_rates(cvae, config, problem, train_config, args):
    """Print amortized draws/s for one observation, interleaved with the Gaussian prior net's.

    The reference is the problem's recommended model with the Gaussian prior net
    (``prior="learned"``), built untrained on the same pairs: the cost of a draw does not
    depend on the weights. Repeats alternate between the two models; medians are printed.
    """
    reference_config, _ = resolve_settings(problem, Overrides(model={"prior": "learned"}))
    # the fit's first-epoch pairs (fit_resimulated's seed), for the reference's standardisers
    x, y = problem.simulate(train_config.num_train, torch.Generator().manual_seed(args.seed))
    reference = build_cvae(reference_config, x, y, problem=problem)
    models = {f"this fit (prior {config.prior})": cvae, "Gaussian prior net": reference}
    rates = {name: [] for name in models}
    n = args.draw_samples
    load = [os.getloadavg()[0]]
    for repeat in range(args.draw_repeats):
        for name, model in models.items():
            start = time.perf_counter()
            draw_posterior(model, y[:1], n, seed=repeat)
            rates[name].append(n / (time.perf_counter() - start))
    load.append(os.getloadavg()[0])
    parts = [f"{name} {statistics.median(r):,.0f}" for name, r in rates.items()]
    print(
        f"  draws/s for one observation ({n:,} draws, median of {args.draw_repeats} "
        f"interleaved repeats, {torch.get_num_threads()} thread(s), load average "
        f"{load[0]:.1f} -> {load[1]:.1f}): " + ", ".join(parts)
    )


def anchor():
    path = SHARED / "submission_sample.pt"
    if not path.is_file():
        return
    x, y = load_pairs(path)
    # the file holds 30 consecutive samples per observation: draws (30, 50, 1, 50, 2)
    draws = x.reshape(50, 30, 1, 50, 2).transpose(0, 1)
    score = score_samples(draws, y.reshape(50, 30, 1, 50, 2)[:, 0], "original")
    report("anchor: challenge sample submission (original)", score)


def main(args):
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, seed {args.seed}")
    anchor()
    for functions in args.functions.split(","):
        run(functions, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the epoch budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--functions", default="data_1,original")
    parser.add_argument("--likelihood", help="override the likelihood (e.g. flow)")
    parser.add_argument("--latent-dim", type=int, help="override the latent size (0: none)")
    parser.add_argument("--prior", help="override the prior (learned, standard_normal, flow)")
    parser.add_argument("--flow-layers", type=int, help="spline layers of the flow on x")
    parser.add_argument("--prior-flow-layers", type=int, help="spline layers of the flow on z")
    parser.add_argument(
        "--prior-flow-type",
        choices=("autoregressive", "coupling"),
        help="spline layer type of the flow on z",
    )
    parser.add_argument(
        "--prior-flow-final",
        choices=("auto", "spline", "none"),
        help="final elementwise spline of the coupling flow on z (auto: after a single "
        "layer; spline: always, as before the option)",
    )
    parser.add_argument("--flow-bins", type=int, help="bins of each rational-quadratic spline")
    parser.add_argument(
        "--draw-rate",
        action="store_true",
        help="also time amortized draws for one observation against the Gaussian prior net",
    )
    parser.add_argument("--draw-samples", type=int, default=100_000)
    parser.add_argument("--draw-repeats", type=int, default=5)
    parser.add_argument(
        "--flow-hidden-dims",
        type=lambda text: tuple(int(v) for v in text.split(",")),
        help="widths of each flow layer's conditioning network, e.g. 64,64",
    )
    parser.add_argument("--gsnn-weight", type=float, help="weight of the GSNN term")
    parser.add_argument(
        "--unconstrained",
        action="store_true",
        help="decode unconstrained endpoints (the default before issue 10)",
    )
    main(parser.parse_args())
