"""Latent-space NUTS with a generative prior on crosshole channels, against the amortized CVAE.

The crosshole survey with the channel prior (``Crosshole(prior="channels")``: ``x`` is the
facies indicator, 1 channel, 0 background; the prior is a simulator without a density, so
NUTS on ``x`` cannot run). Two models are fitted on fresh simulations every epoch, with the
problem's recommended networks (Bernoulli facies decoder, 2-D convolutions):

- the channels CVAE ``p(x | y)`` (:func:`ppl_cvae.fit_problem`);
- the generative prior, an unconditional VAE of the prior draws
  (:func:`ppl_cvae.train.generative_prior.fit_generative_prior`, what
  ``ppl-cvae fit --problem crosshole --problem-arg prior=channels --unconditional`` does).

For held-out observations drawn from the prior (seed 10000, as ``amortized_quality.py``) it
prints, for the amortized draws and for latent NUTS
(:func:`inference.latent_mcmc.latent_nuts_sample`, chains started at amortized draws encoded
by the generative prior's recognition net):

- chi-squared per datum ``|F(x_s) - y|^2 / (m sigma^2)``, mean over draws, median over the
  observations (:func:`inference.diagnostics.coverage.run_evaluation`); for NUTS of
  ``x_s = g(z_s)``, the facies-probability field NUTS targets, and of facies fields drawn from
  ``Bernoulli(g(z_s))`` (the decoder's noise added back); for the amortized CVAE of its facies
  draws and of its decoder means;
- the reliability curve of the per-cell posterior probability of channel (mean of the decoder
  probability over the draws) against the true facies of every cell, max deviation over bins
  with at least ``--min-count`` cells (:func:`inference.diagnostics.facies.run_reliability`),
  beside the prior's own per-cell probability on the same fields (calibrated by construction:
  its deviation is the sampling noise of a curve on this many fields);
- accuracy of the per-cell posterior mode (:func:`inference.diagnostics.facies.mode_accuracy`);
- the manifold limit: the chi-squared of ``g(mu_q(x_true))``, each truth encoded and decoded by
  the generative prior (what the best point on the VAE's manifold near the truth fits);
- R-hat, min bulk ESS, divergences, seconds per observation.

Latent NUTS runs on the first ``--nuts-observations`` held-out observations (the amortized
figures are printed for all of them and for that subset).

Run (the figures in docs/measurements.md)::

    nice -n 5 python benchmarks/latent_mcmc.py --threads 1
    nice -n 5 python benchmarks/latent_mcmc.py --threads 1 --cvae-run CVAE.pt --prior-run PRIOR.pt
    python benchmarks/latent_mcmc.py --cvae-run CVAE.pt --prior-run PRIOR.pt --samplers facies

``--samplers facies`` runs facies MCMC (:func:`inference.facies_mcmc.facies_mcmc_sample`: the
latent and the facies field of the generative prior together, every draw a facies field)
instead of latent NUTS; ``--samplers nuts,facies`` both.

``--latent-npe-run RUN`` also reports the draws of a latent NPE, a run fitted by ``ppl-cvae fit
--data`` on ``(z, y)`` pairs of the generative prior (the file's ``x`` is its latent ``z``):
``z ~ q(z | y)``, ``x ~ p_g(x | z)``; with ``--facies-start latent-npe`` the facies chains start
at those draws instead of the CVAE's.

``--cvae-run`` / ``--prior-run`` load checkpoints (``model.pt`` or run folders) instead of
fitting; ``--epochs`` / ``--prior-epochs`` shorten the recommended schedule (60 epochs x 20,000
pairs, about 17 minutes each at 1 thread on an idle core). Thread count and machine load are
printed with the figures.
"""

from __future__ import annotations

import argparse
import os

import torch
from _common import print_reliability_table, train_overrides

from inference.diagnostics.calibration import misfit_statistic, sbc_ranks, uniformity_tests
from inference.diagnostics.coverage import run_evaluation
from inference.diagnostics.facies import mode_accuracy, run_reliability
from inference.facies_mcmc import facies_mcmc_sample
from inference.latent_mcmc import decode_latent, encode_latent, latent_nuts_sample
from inference.mcmc import preconditioner_draws
from inference.posterior import draw_posterior
from ppl_cvae import fit_problem
from ppl_cvae.problems import make_problem
from ppl_cvae.train import load_checkpoint
from ppl_cvae.train.generative_prior import fit_generative_prior


def load_or_fit(label, run, fit_model, problem, seed, epochs):
    """Load checkpoint ``run``, or fit with ``fit_model(problem, train=...)``; print which."""
    if run:
        model, meta = load_checkpoint(run, problem=problem)
        print(f"{label}: loaded {run} ({meta.get('extra', {}).get('epochs_done')} epochs)")
        return model
    model, result, seconds = fit_model(problem, train=train_overrides(seed, epochs))
    print(f"{label}: {len(result.history)} epochs, fit {seconds:.0f} s")
    return model


def models(problem, args):
    """Return the channels CVAE and the generative prior (loaded or fitted)."""
    cvae = load_or_fit("CVAE", args.cvae_run, fit_problem, problem, args.seed, args.epochs)
    prior = load_or_fit(
        "generative prior", args.prior_run, fit_generative_prior, problem, args.seed,
        args.prior_epochs,
    )
    for name, model in (("CVAE", cvae), ("generative prior", prior)):
        c = model.config
        print(
            f"  {name}: latent {c.latent_dim}, {c.network} {c.conv_channels}, likelihood "
            f"{c.likelihood}, {model.num_parameters():,} parameters"
        )
    return cvae.eval(), prior.eval()


def report(label, draws, prob, x_true, y_obs, problem, reference, min_count, extra=None):
    """Print chi-squared of each kind of draws, reliability and mode accuracy; return them."""
    chi2 = {}
    for kind, x in draws.items():
        m = run_evaluation(x, x_true, x_reference=reference, y_obs=y_obs, problem=problem)
        chi2[kind] = m["chi2_per_datum"]
    curve = run_reliability(prob, x_true, min_count=min_count)
    accuracy = mode_accuracy(prob, x_true)
    text = ", ".join(f"{k} {v:.2f}" for k, v in chi2.items())
    print(f"\n{label}\n  chi2 per datum (median over {len(y_obs)}): {text}")
    print(
        f"  reliability: max deviation {curve['max_deviation']:.3f} (bins with >= "
        f"{curve['min_count']} cells), ECE {curve['expected_calibration_error']:.3f}; mode "
        f"accuracy {accuracy:.4f}"
    )
    print_reliability_table(curve)
    if extra:
        print(extra)
    return chi2, curve["max_deviation"], accuracy


def main(args):
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"threads: {torch.get_num_threads()}; load average {load} on {os.cpu_count()} CPUs")
    problem = make_problem("crosshole", prior="channels")
    cvae, prior = models(problem, args)
    if args.truths == "generative":
        x_true, y_obs = generative_truths(prior, problem, args.num_heldout)
    else:
        x_true, y_obs = problem.simulate(args.num_heldout, torch.Generator().manual_seed(10_000))
    print(f"held-out truths: {args.truths}")
    reference = cvae.x_location_scale()[0]
    common = (x_true, y_obs, problem, reference, args.min_count)

    prior_prob = problem.sample_prior(20_000, torch.Generator().manual_seed(20_000)).mean(0)
    prior_curve = run_reliability(prior_prob.expand_as(x_true), x_true, min_count=args.min_count)
    print(
        f"prior baseline on the same {args.num_heldout} fields: reliability max deviation "
        f"{prior_curve['max_deviation']:.3f} (sampling noise of the curve), mode accuracy "
        f"{mode_accuracy(prior_prob.expand_as(x_true), x_true):.4f}"
    )
    with torch.no_grad():  # the manifold limit: each truth encoded, then decoded
        recon = decode_latent(prior, encode_latent(prior, x_true)).unsqueeze(0)
    m = run_evaluation(recon, x_true, x_reference=reference, y_obs=y_obs, problem=problem)
    print(f"generative prior g(mu_q(x_true)) chi2 per datum (median): {m['chi2_per_datum']:.2f}")

    draws = draw_posterior(cvae, y_obs, args.num_samples, seed=args.seed)
    assert draws.x_mean is not None
    report(
        "amortized CVAE",
        {"facies draws": draws.x, "decoder means": draws.x_mean},
        draws.x_mean.double().mean(0),
        *common,
    )

    latent_npe = None
    if args.latent_npe_run:
        latent_npe, _ = load_checkpoint(args.latent_npe_run)
        latent_npe.eval()
        x_npe, prob_npe = latent_npe_draws(latent_npe, prior, y_obs, args.num_samples, args.seed)
        report(
            f"latent NPE {args.latent_npe_run} (z ~ q(z | y), x ~ p_g(x | z))",
            {"facies draws": x_npe, "decoder means": prob_npe},
            prob_npe.double().mean(0),
            *common,
        )

    num_start = preconditioner_draws(prior.config.latent_dim, args.chains)
    num_nuts = min(args.nuts_observations, args.num_heldout)
    x_true, y_obs = x_true[:num_nuts], y_obs[:num_nuts]
    common = (x_true, y_obs, problem, reference, args.min_count)
    report(
        f"amortized CVAE on the {num_nuts} observations of latent NUTS",
        {"facies draws": draws.x[:, :num_nuts], "decoder means": draws.x_mean[:, :num_nuts]},
        draws.x_mean[:, :num_nuts].double().mean(0),
        *common,
    )
    samplers = set(args.samplers.split(","))
    if "facies" in samplers:
        run_facies(cvae, prior, problem, x_true, y_obs, num_start, common, args, latent_npe)
    if "nuts" not in samplers:
        return

    def nuts(y, start):
        return latent_nuts_sample(
            prior,
            problem,
            y,
            start,
            num_samples=args.nuts_samples,
            warmup_steps=args.nuts_warmup,
            num_chains=args.chains,
            max_tree_depth=args.max_tree_depth,
            seed=args.seed,
        )

    def line(res):
        return (
            f"R-hat {res.rhat:.3f}, min ESS {res.min_ess:.0f}, divergences {res.divergences}, "
            f"{res.num_evaluations} evaluations, {res.seconds:.0f} s"
        )

    results = per_observation(cvae, y_obs, num_start, args.seed, nuts, line)
    g = torch.stack([r.x.reshape(-1, *problem.x_shape) for r in results], dim=1)  # (S, M, ...)
    facies = torch.bernoulli(g, generator=torch.Generator().manual_seed(args.seed))
    rhat = torch.tensor([r.rhat for r in results])
    ess = torch.tensor([r.min_ess for r in results])
    secs = torch.tensor([r.seconds for r in results])
    report(
        f"latent NUTS ({args.chains} chains x {args.nuts_samples} draws, warm-up "
        f"{args.nuts_warmup}, max tree depth {args.max_tree_depth})",
        {"g(z) draws": g, "facies draws ~ Bernoulli(g(z))": facies},
        g.double().mean(0),
        *common,
        extra=(
            f"  R-hat max {rhat.max():.3f} (median {rhat.median():.3f}; <= 1.01 for "
            f"{int((rhat <= 1.01).sum())}/{len(rhat)}); min ESS median {ess.median():.0f}; "
            f"divergences {sum(r.divergences for r in results)}; {secs.median():.0f} s per "
            f"observation (median)"
        ),
    )


def generative_truths(prior, problem, num):
    """Truths drawn from the generative prior VAE itself and their simulated data (seed 30000).

    ``z ~ N(0, I)``, ``x ~ p_g(x | z)`` (the facies decoder's noise included), ``y = F(x) + e``:
    each truth is then an exact draw of the posterior that facies MCMC targets, so the ranks
    of its statistics among the chains' draws test the sampler alone, apart from how well the
    VAE represents the simulator's prior.
    """
    _, x, y = generative_draws(prior, problem, num, torch.Generator().manual_seed(30_000))
    return x, y


def generative_draws(prior, problem, num, gen, data=True):
    """``z ~ N(0, I)``, ``x ~ p_g(x | z)`` and, with ``data``, ``y = F(x) + e``, drawn from ``gen``.

    The generative prior's own joint, in that order of draws from ``gen``; ``y`` is None
    without ``data``. Shapes ``(num, k)``, ``(num, *x_shape)``, ``(num, *y_shape)``.
    """
    with torch.no_grad():
        z = torch.randn(num, prior.config.latent_dim, generator=gen)
        _, probs = prior.x_distribution(z, None)
        x = torch.bernoulli(probs.reshape(num, *problem.x_shape), generator=gen)
        y = problem.forward(x) + problem.noise.sample((num,), gen) if data else None
    return z, x, y


def latent_npe_draws(latent_npe, prior, y_obs, num, seed):
    """Facies draws through the generative prior's latent: ``z ~ q(z | y)``, ``x ~ p_g(x | z)``.

    ``latent_npe`` is a run fitted by ``ppl-cvae fit --data`` on ``(z, y)`` pairs of the
    generative prior (its ``x`` is the prior's latent). Returns the facies draws and the
    decoder's probabilities, each ``(num, M, *x_shape)``.
    """
    z = draw_posterior(latent_npe, y_obs, num, seed=seed).x  # (num, M, k)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _, probs = prior.x_distribution(z.reshape(-1, z.shape[-1]).float(), None)
    probs = probs.reshape(*z.shape[:2], *prior.config.x_shape)
    return torch.bernoulli(probs, generator=gen), probs


def per_observation(cvae, y_obs, num_start, seed, sample, line, truths=None, starts=None):
    """Run ``sample(y, start)`` on each observation from amortized starts; print ``line``.

    With ``truths`` (``(M, *x_shape)``) every chain starts at the observation's truth instead;
    with ``starts`` (a function ``(y, num, seed) -> (num, *x_shape)``) at its draws.
    """
    results = []
    for i in range(len(y_obs)):
        if starts is not None and truths is None:
            start = starts(y_obs[i : i + 1], num_start, seed + i)
        elif truths is None:
            start = draw_posterior(cvae, y_obs[i : i + 1], num_start, seed=seed + i).x[:, 0]
        else:
            start = truths[i].expand(num_start, *truths.shape[1:]).clone()
        results.append(sample(y_obs[i], start))
        print(f"  observation {i}: {line(results[-1])}", flush=True)
    return results


def run_facies(cvae, prior, problem, x_true, y_obs, num_start, common, args, latent_npe=None):
    """Facies MCMC (:func:`inference.facies_mcmc.facies_mcmc_sample`) on each observation."""

    def facies(y, start):
        return facies_mcmc_sample(
            prior,
            problem,
            y,
            start,
            num_samples=args.facies_samples,
            warmup_steps=args.facies_warmup,
            num_chains=args.chains,
            flips_per_step=args.facies_flips,
            latent_moves=args.facies_latent_moves,
            temperatures=args.facies_temperatures,
            min_beta=args.facies_min_beta,
            noncentred_moves=args.facies_noncentred,
            seed=args.seed,
        )

    def line(res):
        return (
            f"R-hat {res.rhat:.3f} (bound {res.rhat_threshold:.3f}; of log p(y|x) and the "
            f"channel fraction {res.rhat_data:.3f}), min ESS {res.min_ess:.0f}, acceptance z "
            f"{res.accept_z:.2f} x {res.accept_x:.2f} swaps {res.swap_accept:.2f}, affine "
            f"{res.affine}, {res.num_evaluations} forward evaluations, {res.seconds:.0f} s"
        )

    truths = x_true if args.facies_start == "truth" else None
    starts = None
    if latent_npe is not None and args.facies_start == "latent-npe":

        def starts(y, num, seed):
            return latent_npe_draws(latent_npe, prior, y, num, seed)[0][:, 0]

    results = per_observation(cvae, y_obs, num_start, args.seed, facies, line, truths, starts)
    print(
        "  log p(y | x) of the truth and of each chain (mean and sd over its kept draws), nats; "
        "cells where each chain's last draw differs from the truth:"
    )
    for i, res in enumerate(results):
        truth = float(problem.log_likelihood(x_true[i : i + 1], y_obs[i]))
        ll = res.log_likelihood
        chains = ", ".join(f"{m:.0f} ({s:.1f})" for m, s in zip(ll.mean(1), ll.std(1), strict=True))
        cells = (res.x[:, -1] != x_true[i]).flatten(1).sum(-1)
        print(
            f"    observation {i}: truth {truth:.0f}; chains {chains}; cells off "
            + " ".join(str(int(c)) for c in cells)
        )
    x = torch.stack([r.x.reshape(-1, *problem.x_shape) for r in results], dim=1)  # (S, M, ...)
    rhat = torch.tensor([r.rhat for r in results])
    ess = torch.tensor([r.min_ess for r in results])
    secs = torch.tensor([r.seconds for r in results])
    report(
        f"facies MCMC ({args.chains} chains x {args.facies_samples} steps, warm-up "
        f"{args.facies_warmup}, {args.facies_flips} facies and {args.facies_latent_moves} MALA "
        f"moves per step, {args.facies_temperatures} temperatures down to beta "
        f"{args.facies_min_beta}, {args.facies_noncentred} non-centred moves, started at "
        f"{'the truths' if truths is not None else args.facies_start + ' draws'})",
        {"facies draws": x},
        x.double().mean(0),
        *common,
        extra=(
            f"  R-hat max {rhat.max():.3f} (median {rhat.median():.3f}; converged "
            f"{sum(r.converged for r in results)}/{len(results)}); R-hat of log p(y|x) and the "
            f"channel fraction: max {max(r.rhat_data for r in results):.3f}, median "
            f"{torch.tensor([r.rhat_data for r in results]).median():.3f}; min ESS median "
            f"{ess.median():.0f}; {secs.median():.0f} s per observation (median)"
            + truth_misfit_rank(x, x_true, y_obs, problem)
        ),
    )


def truth_misfit_rank(x, x_true, y_obs, problem):
    """Rank of each truth's misfit among its chains' draws: uniform if they sample p(x | y).

    The truth and exact posterior draws are exchangeable given ``y``, so the truth's chi-squared
    ranks uniformly among theirs (Talts et al. 2018); chains held in configurations that fit
    worse than the posterior's typical set rank the truth low (near 0).
    """
    misfit = misfit_statistic(problem, y_obs)
    ranks = sbc_ranks(x, x_true, statistics={"misfit": misfit})
    u = ranks.statistic_normalised["misfit"]
    test = uniformity_tests(u)
    truth = misfit(x_true.unsqueeze(0))[0]
    drawn = misfit(x).mean(0)
    below = int((ranks.statistic_ranks["misfit"] == 0).sum())
    return (
        f"\n  truth's chi2 rank among the draws (uniform if the chains sample p(x | y)): mean "
        f"{u.mean():.3f} (uniform 0.5), below every draw on {below} of {len(u)}, p-value "
        f"{test['p_value'][0]:.2g}; chi2 per datum of the truth / of the draws (median over "
        f"observations) {truth.median():.3f} / {drawn.median():.3f}; per observation: "
        + " ".join(f"{v:.2f}" for v in u)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cvae-run", help="checkpoint of a channels CVAE (skip its fit)")
    parser.add_argument("--prior-run", help="checkpoint of the generative prior (skip its fit)")
    parser.add_argument("--epochs", type=int, help="CVAE epochs (default: recommended)")
    parser.add_argument("--prior-epochs", type=int, help="generative prior epochs")
    parser.add_argument("--num-heldout", type=int, default=20)
    parser.add_argument(
        "--nuts-observations", type=int, default=20, help="latent NUTS on the first N held-out"
    )
    parser.add_argument("--num-samples", type=int, default=200, help="amortized draws per obs")
    parser.add_argument("--nuts-samples", type=int, default=100, help="per chain")
    parser.add_argument("--nuts-warmup", type=int, default=100)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--max-tree-depth", type=int, default=6)
    parser.add_argument(
        "--samplers", default="nuts", help="comma-separated: nuts (latent NUTS), facies"
    )
    parser.add_argument("--facies-samples", type=int, default=200, help="steps per chain")
    parser.add_argument("--facies-warmup", type=int, default=200)
    parser.add_argument("--facies-flips", type=int, default=16, help="facies moves per step")
    parser.add_argument("--facies-latent-moves", type=int, default=2, help="MALA moves of z")
    parser.add_argument("--facies-temperatures", type=int, default=8)
    parser.add_argument(
        "--facies-min-beta",
        type=float,
        default=0.01,
        help="hottest replica's beta; 0: an exact draw of the generative prior (reference)",
    )
    parser.add_argument(
        "--facies-noncentred", type=int, default=0, help="non-centred moves of (z, x) per step"
    )
    parser.add_argument(
        "--facies-start",
        choices=("amortized", "truth", "latent-npe"),
        default="amortized",
        help="start the facies chains at the amortized draws (the sampler's own starts), at "
        "the draws of --latent-npe-run, or, as a diagnosis, at each held-out truth (does the "
        "truth's configuration hold them?)",
    )
    parser.add_argument(
        "--latent-npe-run",
        help="a run fitted by `ppl-cvae fit --data` on (z, y) pairs of the generative prior "
        "(x of the file: its latent z): report its draws z ~ q(z | y), x ~ p_g(x | z)",
    )
    parser.add_argument("--min-count", type=int, default=500)
    parser.add_argument(
        "--truths",
        choices=("simulator", "generative"),
        default="simulator",
        help="held-out truths from the channel simulator, or from the generative prior VAE "
        "(an exact test of the sampler on its own target)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
