"""Cost and precision of the NUTS potential: processor time per evaluation, float32 against float64.

NUTS (:func:`inference.mcmc.nuts_sample`) spends most of its time evaluating the potential
``U(v) = -log p(x) - log p(y | x)`` at ``x = mu + L v`` and its gradient. On the Gaussian
random fields (``crosshole``: 1024 cells, 256 rays; ``gravity``: 512 cells) an evaluation is
dense matrix-vector products, forward and backward. This script builds the potential of one
chain exactly as ``nuts_sample`` does (``precondition="amortized"``), with stand-ins for the
amortized draws: exact posterior draws widened by 5% (``--widen``), 20 per sampled coordinate,
so no CVAE has to be fitted. Observation ``--observation`` of the held-out set of
``benchmarks/posterior_correction.py`` (prior draws, seed 10000).

``--profile`` prints the processor time of one evaluation with its gradient (what Pyro's
``potential_grad`` does: value, then ``torch.autograd.grad``), medians of ``--rounds``
interleaved rounds of blocks, 1 thread, for

- ``before``: the potential as it was (prior ``-|b + A v|^2 / 2`` by autograd, float64),
- ``float64``: the potential now (the prior as a quadratic form whose gradient reuses ``H v``),
- ``float32``: the same evaluated in float32 (``potential_dtype="float32"``),

and its pieces (the prior term, ``mu + L v``, the likelihood), then the rounding error of the
float32 potential and gradient over ``--error-draws`` exact posterior draws (in nats and
relative to the gradient's size). The ratios are measured in the same run, so they hold under
load; the absolute times do not.

``--sample`` runs NUTS with ``potential_dtype`` float64 and float32 (or ``--dtypes``), the same
starts, preconditioner and seeds, ``--chains`` x (``--warmup`` step-size-only warm-up +
``nuts_draws_per_chain`` draws, the ``ppl-cvae sample --method nuts`` defaults), and scores
each against the exact posterior: chi-squared per datum of the draws, mean error in exact sd
(median over cells), sd ratio (median), the largest bulk and folded R-hat, the smallest bulk
and tail ESS, evaluations, ESS per 1000 evaluations, and processor ms per evaluation (Pyro's
tree building included). ``--preconditioners`` runs several (``amortized``,
``prior-amortized``) for each dtype.

Run (the figures in docs/measurements.md, section "NUTS within 60 s per observation")::

    python benchmarks/nuts_potential.py --problem crosshole --profile --threads 1
    python benchmarks/nuts_potential.py --problem crosshole --sample --threads 1

Thread count and load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import arviz as az
import torch
from _common import exact_start

from inference.mcmc import (
    _ChainJob,
    _checked_gaussian_prior,
    _log_target_v,
    _preconditioner,
    _TriangularProducts,
    nuts_draws_per_chain,
    nuts_sample,
)


def setup(args):
    """Return the problem, the observation, the exact posterior and the stand-in draws."""
    return exact_start(args.problem, args.observation, seed=args.seed, widen=args.widen)


def chain_job(problem, y, init, precondition="amortized"):
    """The job of chain 0 as :func:`nuts_sample` builds it."""
    start = init.flatten(1).double()
    prior = _checked_gaussian_prior(problem, start[:4], precondition)
    mu, tril, start = _preconditioner(precondition, start, prior)
    return _ChainJob(
        problem=problem, y=y.double(), start=start[0], checks=start[:4], mu=mu, tril=tril,
        prior_loc=None if prior is None else prior.loc.to(start),
        prior_tril=None if prior is None else prior.scale_tril.to(start),
        prior_whitened=precondition == "prior", num_samples=1, warmup_steps=0, seed=0,
        max_tree_depth=8, adapt_mass_matrix=False, jit_compile=False,
    )


def before_potential(job, problem):
    """The potential before the quadratic form: ``-|b + A v|^2 / 2`` by autograd, float64."""
    chol0 = job.prior_tril
    a_mat = torch.linalg.solve_triangular(chol0, job.tril, upper=False)
    b_vec = torch.linalg.solve_triangular(
        chol0, (job.mu - job.prior_loc).unsqueeze(-1), upper=False
    ).squeeze(-1)
    const = -float(chol0.diagonal().log().sum()) - 0.5 * len(job.mu) * math.log(2 * math.pi)
    x_shape = tuple(problem.x_shape)

    def log_target(v):
        w = b_vec + a_mat @ v
        theta = job.mu + job.tril @ v
        return const - 0.5 * (w * w).sum() + problem.log_likelihood(theta.reshape(x_shape), job.y)

    return log_target, a_mat, b_vec


def cpu_ms(fn, number, repeats):
    """Median processor time of one call of ``fn`` over ``repeats`` blocks, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(number):
            fn()
        times.append((time.process_time() - start) / number * 1e3)
    return statistics.median(times)


def value_and_grad(log_target, v0):
    def call():
        v = v0.clone().requires_grad_(True)
        u = -log_target(v)
        torch.autograd.grad(u, v)

    return call


def profile(args, problem, y, exact, init):
    job = chain_job(problem, y, init)
    v0 = torch.linalg.solve_triangular(
        job.tril, (job.start - job.mu).unsqueeze(-1), upper=False
    ).squeeze(-1)
    before, a_mat, b_vec = before_potential(job, problem)
    targets = {
        "before (float64, -|b + A v|^2 by autograd)": before,
        "now, float64, torch mv": _log_target_v(job, torch.float64, blas=False),
        "now, float32, torch mv": _log_target_v(job, torch.float32, blas=False),
        "now, float64": _log_target_v(job, torch.float64),
        "now, float32": _log_target_v(job, torch.float32),
    }
    x_shape = tuple(problem.x_shape)
    pieces = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        a_d, b_d = a_mat.to(dtype), b_vec.to(dtype)
        hess = (a_mat.T @ a_mat).to(dtype)
        lin = (a_mat.T @ b_vec).to(dtype)
        mu_d, tril_d = job.mu.to(dtype), job.tril.to(dtype)
        theta0 = (job.mu + job.tril @ v0).to(dtype)

        def prior_autograd(v, a_d=a_d, b_d=b_d, dtype=dtype):
            w = b_d + a_d @ v.to(dtype)
            return -0.5 * (w * w).sum().double()

        blas = _TriangularProducts(job.tril.to(dtype), hess, True)
        dense = _TriangularProducts(job.tril.to(dtype), hess, False)

        def prior_quadratic(v, lin=lin, dtype=dtype, products=dense):
            vd = v.to(dtype)
            hv = products.hess_mv(vd)
            return -(((lin + hv) * vd).sum() - 0.5 * (hv * vd).sum().detach()).double()

        def prior_quadratic_blas(v, lin=lin, dtype=dtype, products=blas):
            return prior_quadratic(v, lin, dtype, products)

        def theta_product(v, mu_d=mu_d, tril_d=tril_d, dtype=dtype):
            return (mu_d + tril_d @ v.to(dtype)).double().sum()

        def theta_trmv(v, mu_d=mu_d, dtype=dtype, products=blas):
            return products.affine(mu_d, v.to(dtype)).double().sum()

        def likelihood(theta, dtype=dtype):
            return problem.log_likelihood(theta.to(dtype).reshape(x_shape), job.y)

        pieces[f"prior -|b + A v|^2 / 2 by autograd, {name}"] = value_and_grad(prior_autograd, v0)
        pieces[f"prior as quadratic form, torch mv, {name}"] = value_and_grad(prior_quadratic, v0)
        pieces[f"prior as quadratic form, BLAS symv, {name}"] = value_and_grad(
            prior_quadratic_blas, v0
        )
        pieces[f"mu + L v by autograd, {name}"] = value_and_grad(theta_product, v0)
        pieces[f"mu + L v, BLAS trmv, {name}"] = value_and_grad(theta_trmv, v0)
        pieces[f"log_likelihood(x), {name}"] = value_and_grad(likelihood, theta0.double())
    calls = {name: value_and_grad(fn, v0) for name, fn in targets.items()} | pieces
    results = {name: [] for name in calls}
    for _ in range(args.rounds):  # interleaved: every round times every piece
        for name, call in calls.items():
            results[name].append(cpu_ms(call, args.number, args.repeats))
    med = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"  processor ms per evaluation with gradient (median of {args.rounds} interleaved "
        f"rounds of {args.repeats} x {args.number} calls; threads {torch.get_num_threads()}; "
        f"load {os.getloadavg()[0]:.1f}):"
    )
    ref = med["before (float64, -|b + A v|^2 by autograd)"]
    for name, value in med.items():
        print(f"    {name:48s} {value:7.3f} ms  ({ref / value:5.2f}x faster than before)")

    # rounding error of the float32 potential over exact posterior draws, in v
    draws = exact.sample(args.error_draws, torch.Generator().manual_seed(args.seed + 1))[:, 0]
    v_all = torch.linalg.solve_triangular(
        job.tril, (draws.flatten(1).double() - job.mu).T, upper=False
    ).T
    u64, u32 = targets["now, float64"], targets["now, float32"]
    du, dg, gnorm, ubefore = [], [], [], []
    for v in v_all:
        vals = []
        for fn in (u64, u32, before):
            vv = v.clone().requires_grad_(True)
            u = -fn(vv)
            (g,) = torch.autograd.grad(u, vv)
            vals.append((float(u.detach()), g))
        du.append(abs(vals[1][0] - vals[0][0]))
        ubefore.append(abs(vals[2][0] - vals[0][0]))
        dg.append(float((vals[1][1] - vals[0][1]).norm() / vals[0][1].norm()))
        gnorm.append(float(vals[0][1].norm()))
    print(
        f"  rounding over {len(du)} exact posterior draws: |U32 - U64| median "
        f"{statistics.median(du):.2e} nats, max {max(du):.2e}; |U(now) - U(before)| in float64 "
        f"max {max(ubefore):.2e} nats; "
        f"gradient |g32 - g64| / |g64| median {statistics.median(dg):.2e}, max {max(dg):.2e} "
        f"(|g64| median {statistics.median(gnorm):.1f}); U64 median "
        f"{statistics.median(float(-u64(v)) for v in v_all[:20]):.1f} nats (a constant "
        "included)"
    )


def score(problem, res, exact, y, label):
    x = res.x.reshape(-1, *problem.x_shape).double()
    sd = exact.std.double()
    mean_err = float(((x.mean(0) - exact.mean[0].double()) / sd).abs().median())
    sd_ratio = float((x.std(0) / sd).median())
    white = problem.noise.whiten(y.double() - problem.forward(x))
    chi2 = float(white.square().sum(-1).mean() / white.shape[-1])
    ds = az.convert_to_dataset({"x": res.x.reshape(*res.x.shape[:2], -1).double().numpy()})
    bulk = float(az.rhat(ds, method="z_scale")["x"].max())
    folded = float(az.rhat(ds, method="folded")["x"].max())
    tail = float(az.ess(ds, method="tail")["x"].min())
    print(
        f"  {label:34s} chi2 {chi2:.3f}  mean err {mean_err:.3f} exact sd  sd ratio "
        f"{sd_ratio:.3f}  R-hat bulk {bulk:.4f} folded {folded:.4f} (bound "
        f"{res.rhat_threshold:.4f})  min ESS bulk {res.min_ess:.0f} tail {tail:.0f}  "
        f"{res.num_evaluations} evaluations  ESS/1000 eval bulk "
        f"{1000 * res.min_ess / res.num_evaluations:.1f} tail "
        f"{1000 * tail / res.num_evaluations:.1f}  {res.seconds:.0f} s wall, "
        f"{1000 * res.cpu_seconds / res.num_evaluations:.2f} processor ms/eval  divergences "
        f"{res.divergences}  dtype {res.potential_dtype}  load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return x


def sample(args, problem, y, exact, init):
    dim = math.prod(problem.x_shape)
    draws = args.nuts_samples or nuts_draws_per_chain(dim, args.chains)
    print(
        f"  NUTS: {args.chains} chains x ({args.warmup} step-size-only warm-up + {draws}), "
        f"cores {args.cores}, seed {args.seed}; starts and preconditioner: exact draws widened "
        f"{args.widen}x"
    )
    results = {}
    for precondition in args.preconditioners.split(","):
        for dtype in args.dtypes.split(","):
            res = nuts_sample(
                problem, y, init, num_samples=draws, warmup_steps=args.warmup,
                num_chains=args.chains, precondition=precondition, seed=args.seed,
                adapt_mass_matrix=False, num_cores=args.cores, potential_dtype=dtype,
            )
            label = f"{precondition}, {dtype}"
            results[label] = score(problem, res, exact, y, label)
    labels = list(results)
    for label in labels[1:]:
        a, b = results[labels[0]], results[label]
        diff = ((b.mean(0) - a.mean(0)) / exact.std.double()).abs()
        print(
            f"  {label} against {labels[0]}: mean difference median {float(diff.median()):.3f} "
            f"(max {float(diff.max()):.3f}) exact sd; sd ratio median "
            f"{float((b.std(0) / a.std(0)).median()):.3f}"
        )


def main(args):
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}; load average {os.getloadavg()}")
    problem, _, y, exact, init = setup(args)
    print(f"{problem.name}: x {tuple(problem.x_shape)}, y {tuple(problem.y_shape)}, observation "
          f"{args.observation}")
    if args.profile:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.threads, user_api="blas"):  # SciPy's BLAS too
            profile(args, problem, y, exact, init)
    if args.sample:
        sample(args, problem, y, exact, init)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problem", default="crosshole")
    parser.add_argument("--observation", type=int, default=0)
    parser.add_argument("--widen", type=float, default=1.05, help="stand-in draws' sd factor")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--number", type=int, default=30)
    parser.add_argument("--error-draws", type=int, default=200)
    parser.add_argument("--sample", action="store_true")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--preconditioners", default="amortized")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--nuts-samples", type=int, default=0, help="0: nuts_draws_per_chain")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
