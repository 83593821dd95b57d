"""``ppl-cvae sample``: posterior draws for observations, written as InferenceData NetCDF.

:func:`cmd_sample` with its ``--method``: ``amortized`` (CVAE draws), ``refine`` (misfit
refinement), ``importance``, ``nuts``, ``latent-nuts``, ``facies-mcmc`` and ``facies-smc``
(correction with the physics); the refusal of flags that belong to another method, and the
MCMC and SMC defaults (defined in :mod:`ppl_cvae.cli.defaults`: :data:`DEFAULT_CHAINS`,
:data:`NUTS_WARMUP_STEP_SIZE_ONLY`, :data:`DEFAULT_POTENTIAL_DTYPE`, :data:`FACIES_MCMC_WARMUP`,
:data:`DEFAULT_FACIES_MOVES`, :data:`DEFAULT_SMC_POPULATIONS`, :data:`DEFAULT_SMC_STEPS`,
:data:`DEFAULT_SMC_FINAL_STEPS`, draws per chain for the R-hat bound).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any, cast

from ppl_cvae.cli.common import (
    _check_new_file,
    _check_one_hot,
    _load_run,
    _warn_problem_unavailable,
)
from ppl_cvae.cli.defaults import (
    DEFAULT_CHAINS,
    DEFAULT_FACIES_MOVES,
    DEFAULT_POTENTIAL_DTYPE,
    DEFAULT_SMC_FINAL_STEPS,
    DEFAULT_SMC_POPULATIONS,
    DEFAULT_SMC_STEPS,
    DEFAULT_TEMPERATURES,
    FACIES_MCMC_WARMUP,
    NUTS_WARMUP_STEP_SIZE_ONLY,
)
from ppl_cvae.device import resolve_device
from ppl_cvae.errors import ConfigError, ShapeError

log = logging.getLogger("ppl_cvae")


def _need_problem(meta: dict[str, Any], what: str) -> Any:
    """Return the run's problem or raise why there is none (the checkpoint loader says)."""
    if meta.get("problem") is not None:
        return meta["problem"]
    reason = meta.get("problem_error") or (
        "the run was fitted on a data file without a problem; name it with --problem"
    )
    raise ConfigError(
        f"{what} needs the run's problem (its prior, forward operator and noise): {reason}"
    )


REFINE_DEFAULTS = {"oversample": 4, "max_misfit": 1.0, "refine_steps": 300, "refine_lr": 0.1}
"""``sample --method refine`` flags when not given: ``--oversample``, ``--max-misfit``,
``--refine-steps``, ``--refine-lr``."""

GENERATIVE_PRIOR_METHODS = ("latent-nuts", "facies-mcmc", "facies-smc")
"""The ``sample --method`` values that sample a generative prior (``--generative-prior``)."""


def _check_method_flags(args: argparse.Namespace, method: str) -> None:
    """Refuse ``sample`` flags of another ``--method`` (each would be ignored in silence).

    ``--chains`` belongs to the three MCMC methods and ``facies-smc`` (its populations),
    ``--warmup`` to the three MCMC methods, ``--adapt-mass-matrix`` to ``nuts``,
    ``--facies-moves`` to ``facies-mcmc`` and ``facies-smc``, ``--temperatures`` to
    ``facies-mcmc`` (SMC has no warm-up and no replicas), ``--smc-steps`` and
    ``--smc-final-steps`` to ``facies-smc`` and ``--proposals`` to ``importance``, as
    ``--cores`` and ``--potential-dtype`` belong to ``nuts``;
    ``--oversample``, ``--max-misfit``, ``--refine-steps`` and ``--refine-lr`` to ``refine``,
    and ``--decoder-noise`` to the CVAE's own draws (``amortized`` and ``refine``).
    """
    mcmc = ("nuts", "latent-nuts", "facies-mcmc")
    for flag, given, methods in (
        ("--chains", args.chains is not None, (*mcmc, "facies-smc")),
        ("--warmup", args.warmup is not None, mcmc),
        ("--adapt-mass-matrix", args.adapt_mass_matrix is not None, ("nuts",)),
        ("--facies-moves", args.facies_moves is not None, ("facies-mcmc", "facies-smc")),
        ("--temperatures", args.temperatures is not None, ("facies-mcmc",)),
        ("--smc-steps", args.smc_steps is not None, ("facies-smc",)),
        ("--smc-final-steps", args.smc_final_steps is not None, ("facies-smc",)),
        ("--proposals", args.proposals is not None, ("importance",)),
        ("--oversample", args.oversample is not None, ("refine",)),
        ("--max-misfit", args.max_misfit is not None, ("refine",)),
        ("--refine-steps", args.refine_steps is not None, ("refine",)),
        ("--refine-lr", args.refine_lr is not None, ("refine",)),
        ("--decoder-noise", args.decoder_noise is not None, ("amortized", "refine")),
    ):
        if given and method not in methods:
            names = " or ".join([", ".join(methods[:-1]), methods[-1]] if methods[:-1] else methods)
            raise ConfigError(
                f"{flag} applies to --method {names} only, got --method {method}: drop {flag} or "
                "choose that method"
            )


def _nuts_defaults(args: argparse.Namespace, problem: Any) -> None:
    """Fill the NUTS flags left at None: step-size-only warm-up, draws for the R-hat bound.

    ``--num-samples`` defaults to ``chains x nuts_draws_per_chain(dim, chains)`` (783 per
    chain for 1024 sampled values), ``--adapt-mass-matrix`` to off and ``--warmup`` to 150
    (500 with ``--adapt-mass-matrix``).
    """
    from inference.mcmc import nuts_draws_per_chain

    if args.adapt_mass_matrix is None:
        args.adapt_mass_matrix = False
    if args.warmup is None:
        args.warmup = 500 if args.adapt_mass_matrix else NUTS_WARMUP_STEP_SIZE_ONLY
    if args.num_samples is None:
        par = problem.sampler_parameterisation()
        dim = par.dim if par is not None else math.prod(problem.x_shape)
        args.num_samples = args.chains * nuts_draws_per_chain(dim, args.chains)
        log.info(
            "--method nuts: %d draws per chain x %d chains (enough for R-hat <= 1.01 over %d "
            "sampled values; --num-samples to change)",
            args.num_samples // args.chains,
            args.chains,
            dim,
        )


def _warn_if_names_replaced(problem: Any, layout: Any) -> None:
    """Warn when a problem's dims or units replace those a run's data file gave.

    A run fitted on a NetCDF file keeps its names (:class:`~ppl_cvae.data.layout.DataLayout`);
    sampled with ``--problem``, the posterior file follows the problem's, so files of the
    same run from different methods may not overlay.
    """
    from ppl_cvae.problems.base import units_of

    units = units_of(problem)
    differs = []
    for which in ("x", "y"):
        dims = tuple(getattr(problem, f"{which}_dims", ()) or ())
        file_dims = getattr(layout, f"{which}_dims")
        if file_dims is not None and tuple(file_dims) != dims:
            differs.append(f"{which} on {dims} (the data file: {tuple(file_dims)})")
        file_unit = layout.units.get(which)
        unit = units.get(which)
        if file_unit is not None and unit != file_unit:
            given = f"in {unit!r}" if unit else "without units"
            differs.append(f"{which} {given} (the data file: in {file_unit!r})")
    if differs:
        log.warning(
            "problem %r names %s: the posterior file follows the problem, not the data file the "
            "run was fitted on; give the problem the file's dims and units to keep them",
            getattr(problem, "name", "?"),
            "; ".join(differs),
        )


def cmd_sample(args: argparse.Namespace) -> int:
    """Draw posterior samples for observations and write InferenceData NetCDF."""
    from inference.refine import RefineConfig
    from inference.sample import sample_posterior_to_netcdf
    from ppl_cvae.data.io import load_observations

    out = Path(args.out)
    _check_new_file(
        out,
        args.overwrite,
        [args.run_dir, args.observation, args.generative_prior],
        ".nc",
        "sample",
    )
    if args.refine and args.method not in ("amortized", "refine"):
        raise ConfigError(f"--refine contradicts --method {args.method}; give one of them")
    method = "refine" if args.refine else args.method
    _check_method_flags(args, method)
    for name, default in REFINE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.decoder_noise is None:
        args.decoder_noise = "auto"
    if args.max_misfit < 0:
        raise ConfigError(f"--max-misfit must be >= 0 (0 keeps all), got {args.max_misfit}")
    if args.refine_lr <= 0:
        raise ConfigError(f"--refine-lr must be > 0, got {args.refine_lr}")
    if method != "nuts" and args.num_samples is None:
        args.num_samples = 1000
    if method != "nuts" and (args.cores != 1 or args.nuts_jit or args.potential_dtype):
        raise ConfigError(
            "--cores, --nuts-jit and --potential-dtype apply to --method nuts only, got "
            f"--method {method}"
        )
    if args.chains is None:
        args.chains = DEFAULT_SMC_POPULATIONS if method == "facies-smc" else DEFAULT_CHAINS
    if args.preconditioner is not None and method != "nuts":
        raise ConfigError(
            f"--preconditioner {args.preconditioner} applies to --method nuts only, got "
            f"--method {method}"
        )
    device = resolve_device(args.device)
    if (method in GENERATIVE_PRIOR_METHODS) != (args.generative_prior is not None):
        raise ConfigError(
            "--method latent-nuts, facies-mcmc or facies-smc and --generative-prior "
            f"PRIOR_RUN go together (got --method {method}"
            + (", no --generative-prior" if args.generative_prior is None else "")
            + "): the model sampled is that of the unconditional VAE fitted with "
            "`fit --unconditional`"
        )
    cvae, meta = _load_run(args, unconditional=True)
    if cvae.config.y_shape is None:
        return _generate(args, cvae, meta, method, device, out)
    if args.observation is None:
        raise ConfigError(
            f"sample needs --observation OBS: run {args.run_dir!r} holds a CVAE conditioned on "
            f"y of shape {cvae.config.y_shape}"
        )
    if method == "amortized":
        cvae.to(device)
    elif device.type != "cpu":
        log.warning(
            "--method %s runs on the CPU; --device %s is used by amortized draws only",
            method,
            device,
        )
    if method == "amortized":
        problem = meta["problem"]
        _warn_problem_unavailable(
            meta,
            "the posterior file has no posterior predictive, log-likelihood, dim names or units",
        )
    else:
        problem = _need_problem(meta, f"--method {method}")
    if problem is not None and cvae.data_layout is not None:
        _warn_if_names_replaced(problem, cvae.data_layout)
    y_scale = cvae.y_standardiser.std if cvae.y_standardiser is not None else None
    y, _, x_true = load_observations(args.observation, cvae.config.y_shape, y_scale=y_scale)
    if (meta.get("extra") or {}).get("condition") == "label":
        _check_one_hot(y, args.observation, cvae.data_layout, "observation")
    if x_true is not None and tuple(x_true.shape[1:]) != cvae.config.x_shape:
        raise ShapeError(
            f"x in {args.observation!r} has event shape {tuple(x_true.shape[1:])}; the model "
            f"generates {cvae.config.x_shape}"
        )
    attrs = {
        "run_dir": str(args.run_dir),
        "run_name": Path(args.run_dir).resolve().name,
        "observation_file": str(args.observation),
        "command": "ppl-cvae sample",
    }
    if problem is not None and meta.get("problem_record") is not None:
        attrs["problem"] = meta["problem_record"]  # a user's factory reference, not its class
    if method == "nuts":
        _nuts_defaults(args, problem)
    if method in ("importance", "nuts", *GENERATIVE_PRIOR_METHODS):
        from inference.arviz_io import save_inference_data
        from inference.sample import CorrectionConfig, sample_corrected

        generative_prior = None
        if method in GENERATIVE_PRIOR_METHODS:
            from inference.facies_mcmc import check_facies_prior
            from inference.latent_mcmc import check_generative_prior
            from ppl_cvae.train import load_checkpoint

            check = check_generative_prior if method == "latent-nuts" else check_facies_prior
            loaded, _ = load_checkpoint(args.generative_prior, problem=problem)
            generative_prior = check(loaded, problem)
        if args.warmup is None:
            args.warmup = FACIES_MCMC_WARMUP if method == "facies-mcmc" else 500
        correction = CorrectionConfig(
            method=cast(Any, method),
            proposals=args.proposals or 10 * args.num_samples,
            chains=args.chains,
            warmup_steps=args.warmup,
            adapt_mass_matrix=bool(args.adapt_mass_matrix),
            cores=args.cores,
            jit_compile=args.nuts_jit,
            preconditioner=args.preconditioner or problem.nuts_preconditioner,
            potential_dtype=cast(Any, args.potential_dtype or DEFAULT_POTENTIAL_DTYPE),
            flips_per_step=(
                DEFAULT_FACIES_MOVES if args.facies_moves is None else args.facies_moves
            ),
            temperatures=(
                DEFAULT_TEMPERATURES if args.temperatures is None else args.temperatures
            ),
            populations=args.chains if method == "facies-smc" else DEFAULT_SMC_POPULATIONS,
            smc_steps=DEFAULT_SMC_STEPS if args.smc_steps is None else args.smc_steps,
            smc_final_steps=(
                DEFAULT_SMC_FINAL_STEPS if args.smc_final_steps is None else args.smc_final_steps
            ),
        )
        idata, summary, ok = sample_corrected(
            cvae,
            y,
            args.num_samples,
            problem,
            correction,
            x_true=x_true,
            seed=args.seed,
            attrs=attrs,
            generative_prior=generative_prior,
        )
        save_inference_data(idata, out)
        print(summary)
        if not ok:
            log.warning("the %s correction failed; see the line above", method)
        _warn_misfit(idata)
        posterior = idata["posterior"]
        num = posterior.sizes["chain"] * posterior.sizes["draw"]
        print(f"wrote {num} posterior draws for {y.shape[0]} observation(s) to {out}")
        return 0
    sample_posterior_to_netcdf(
        cvae,
        y,  # (M, *y_shape), M = 1 for a single observation: the file has the observation dim
        args.num_samples,
        out,
        problem=problem,
        x_true=x_true,
        decoder_noise={"auto": None, "sample": True, "mean": False}[args.decoder_noise],
        refine=RefineConfig(
            oversample=args.oversample,
            max_misfit=args.max_misfit if args.max_misfit > 0 else None,
            num_steps=args.refine_steps,
            learning_rate=args.refine_lr,
        )
        if method == "refine"
        else None,
        seed=args.seed,
        attrs=attrs,
    )
    if method == "refine":  # an optimiser's output: say so, not "posterior draws"
        print(
            f"wrote {args.num_samples} refined draws (misfit minimisation of amortized draws: "
            "an optimiser, not a posterior sampler; their spread is not the posterior's, use "
            f"--method importance or nuts for that) for {y.shape[0]} observation(s) to {out}"
        )
        return 0
    if out.stat().st_size <= MISFIT_CHECK_MAX_BYTES:  # a streamed giant: diagnose checks it
        from inference.arviz_io import load_inference_data

        try:
            _warn_misfit(load_inference_data(out))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM during the read-back: the file is in place
            from ppl_cvae._atomic import InterruptedAfterWrite

            raise InterruptedAfterWrite from None
    print(f"wrote {args.num_samples} posterior draws for {y.shape[0]} observation(s) to {out}")
    return 0


def _generate(
    args: argparse.Namespace, vae: Any, meta: Any, method: str, device: Any, out: Path
) -> int:
    """Draw ``--num-samples`` models from an unconditional VAE into the file's ``prior`` group."""
    from inference.arviz_io import save_inference_data
    from inference.generate import generate, generated_inference_data

    if args.observation is not None:
        raise ConfigError(
            f"run {args.run_dir!r} holds an unconditional VAE, which generates x without "
            "observations: drop --observation"
        )
    if method != "amortized":
        raise ConfigError(
            f"--method {method} draws a posterior given observations; an unconditional VAE "
            "generates x with the default --method amortized"
        )
    vae.to(device)
    draws = generate(
        vae,
        args.num_samples,
        decoder_noise={"auto": None, "sample": True, "mean": False}[args.decoder_noise],
        seed=args.seed,
    )
    attrs = {
        "run_dir": str(args.run_dir),
        "command": "ppl-cvae sample",
        "kind": "draws of the unconditional VAE's generative model p(x)",
        "method": "generate",
        "num_samples": args.num_samples,
        "seed": args.seed,
        "decoder_noise": int(vae.samples_decoder_noise if args.decoder_noise == "auto"
                             else args.decoder_noise == "sample"),
    }
    problem = meta.get("problem")
    if vae.data_layout is None:  # the problem gives the dim names and units, if anything
        _warn_problem_unavailable(meta, "the file has no dim names or units")
    idata = generated_inference_data(vae, draws, names=problem, attrs=attrs)
    save_inference_data(idata, out)
    print(
        f"wrote {args.num_samples} draws of x from the unconditional VAE (group 'prior') to {out}"
    )
    return 0


MISFIT_CHECK_MAX_BYTES = 512 * 2**20
"""Largest amortized posterior file ``sample`` reads back to check the draws' misfit."""


def _warn_misfit(idata: Any) -> None:
    """Log :func:`inference.diagnostics.ppc.misfit_warning` of a written file, if any."""
    from inference.diagnostics.ppc import misfit_warning

    message = misfit_warning(idata)
    if message is not None:
        log.warning("%s", message)

