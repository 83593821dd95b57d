"""Pieces shared by several benchmarks; not a benchmark itself.

Imported as ``from _common import ...``: a benchmark runs as a script, so its own folder is
first on ``sys.path`` (as ``examples/_common.py`` for the examples).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ppl_cvae import Overrides, build_cvae, fit, resolve_settings


def train_overrides(seed: int, epochs: int | None) -> dict[str, Any]:
    """Return the train overrides ``{"seed": seed}``, plus ``num_epochs`` when ``epochs`` is set.

    ``epochs`` None or 0 keeps the problem's recommended schedule (the ``--epochs`` flag of the
    benchmarks that fit with :func:`ppl_cvae.fit_problem`).
    """
    train: dict[str, Any] = {"seed": seed}
    if epochs:
        train["num_epochs"] = epochs
    return train


def set_flags(args: Any, keys: Iterable[str | tuple[str, str]]) -> dict[str, Any]:
    """Return ``{key: args.flag}`` for the flags that were given (are not None).

    Each entry of ``keys`` is a flag's attribute name, used as the key too, or a pair
    ``(flag, key)`` for a flag named otherwise (``("epochs", "num_epochs")``).
    """
    pairs = [(k, k) if isinstance(k, str) else k for k in keys]
    return {key: getattr(args, flag) for flag, key in pairs if getattr(args, flag) is not None}


def fit_resimulated(
    problem: Any, model: Mapping[str, Any], train: Mapping[str, Any], seed: int
) -> tuple[Any, Any, Any, Any, float]:
    """Fit a CVAE with the recommended settings overridden, on fresh simulations every epoch.

    The first epoch's ``num_train`` pairs are simulated from a generator seeded ``seed``;
    ``fit`` gets ``problem.simulate`` to redraw them every epoch. The same arguments give the
    same weights (what lets one benchmark reproduce another's fit).

    Returns
    -------
    tuple
        ``(cvae, result, model_config, train_config, seconds)``: the fitted model, the fit's
        result, the resolved configurations and the fit's wall-clock time in s.
    """
    config, train_config = resolve_settings(
        problem, Overrides(model=dict(model), train=dict(train))
    )
    x, y = problem.simulate(train_config.num_train, torch.Generator().manual_seed(seed))
    cvae = build_cvae(config, x, y, problem=problem)
    start = time.perf_counter()
    result = fit(cvae, x, y, train_config, simulator=problem.simulate, progress=False)
    return cvae, result, config, train_config, time.perf_counter() - start


def print_reliability_table(curve: Mapping[str, Any]) -> None:
    """Print the non-empty bins of a reliability curve, one row each.

    ``curve``: the output of :func:`inference.diagnostics.facies.run_reliability` (bin bounds,
    cell count, mean predicted probability and observed frequency per bin).
    """
    print(f"  {'bin':>10s} {'cells':>7s} {'predicted':>9s} {'observed':>9s}")
    for b, count in enumerate(curve["count"]):
        if count:
            print(
                f"  {curve['bin_lower'][b]:4.1f}-{curve['bin_upper'][b]:3.1f} {count:9d} "
                f"{curve['mean_predicted'][b]:9.3f} {curve['observed_frequency'][b]:9.3f}"
            )


def exact_start(
    problem_name: str, observation: int = 0, *, seed: int = 0, widen: float = 1.05
) -> tuple[Any, torch.Tensor, torch.Tensor, Any, torch.Tensor]:
    """Return a held-out observation of a linear-Gaussian problem and stand-in amortized draws.

    Observation ``observation`` of the held-out set of ``benchmarks/posterior_correction.py``
    (prior draws, seed 10000), its exact posterior, and ``preconditioner_draws(dim)`` exact
    draws (seed ``seed``) widened by ``widen`` about the exact mean: what the NUTS benchmarks
    start and precondition the chains with in place of a fitted CVAE's draws.

    Returns ``(problem, x_true, y, exact, init)``: ``x_true`` and ``y`` without a batch axis,
    ``init`` of shape ``(preconditioner_draws(dim), *x_shape)``.
    """
    import math

    from inference.exact import exact_posterior
    from inference.mcmc import preconditioner_draws
    from ppl_cvae.problems import make_problem

    problem = make_problem(problem_name)
    x_true, y_obs = problem.simulate(observation + 1, torch.Generator().manual_seed(10_000))
    x_true, y = x_true[observation], y_obs[observation]
    exact = exact_posterior(problem, y.unsqueeze(0))
    dim = math.prod(problem.x_shape)
    draws = exact.sample(preconditioner_draws(dim), torch.Generator().manual_seed(seed))[:, 0]
    init = exact.mean[0] + widen * (draws - exact.mean[0])
    return problem, x_true, y, exact, init


def print_category_table(table: Mapping[str, Sequence[int]], failures: Iterable[str]) -> None:
    """Print the Markdown table of an audit (``category -> (passed, failed)``), then failures."""
    print("| category | tried | passed | failed |\n|---|---|---|---|")
    for category, (good, bad) in table.items():
        print(f"| {category} | {good + bad} | {good} | {bad} |")
    total_good = sum(v[0] for v in table.values())
    total_bad = sum(v[1] for v in table.values())
    print(f"| all | {total_good + total_bad} | {total_good} | {total_bad} |")
    for line in failures:
        print("FAILED", line)


def marginal_errors(draws: Any, mean: Any, sd: Any) -> tuple[Any, Any]:
    """Return the errors of the marginal means in exact sds and the sd ratios of ``draws``.

    ``draws`` of shape ``(S, ...)`` (NumPy), ``mean`` and ``sd`` the exact posterior's, of the
    shape of one draw (or broadcasting to it): ``|mean(draws) - mean| / sd`` and
    ``std(draws) / sd``, elementwise.
    """
    return abs(draws.mean(0) - mean) / sd, draws.std(0) / sd

