"""The argument parser of ``ppl-cvae``: every command, flag, default and help text.

:func:`build_parser` builds it; the argument types (:func:`_seed`, :func:`_count`,
:func:`_finite`, :func:`_ints`) refuse a bad value with the reason, and :class:`_Parser` prints
an error as one line with exit status 2. Each command's ``func`` is the ``cmd_*`` function of
its module (:mod:`~ppl_cvae.cli.fit`, :mod:`~ppl_cvae.cli.sample`,
:mod:`~ppl_cvae.cli.evaluate`, :mod:`~ppl_cvae.cli.simulate`), read when the parser is built.
"""

from __future__ import annotations

import argparse
import importlib
import math
import reprlib
from collections.abc import Callable
from typing import Any, NoReturn

from ppl_cvae._choices import (
    DECODER_LIKELIHOODS,
    DEVICE_CHOICES,
    FLOW_LAYER_TYPES,
    MAX_COUNT,
    NETWORKS,
    PRIOR_FLOW_FINALS,
    PRIORS,
    X_TRANSFORMS,
    X_WHITENINGS,
    Y_EMBEDDINGS,
)
from ppl_cvae.cli.defaults import (
    DEFAULT_BUFFER_CHUNKS,
    DEFAULT_CHAINS,
    DEFAULT_CHUNK_MB,
    DEFAULT_FACIES_MOVES,
    DEFAULT_POTENTIAL_DTYPE,
    DEFAULT_SMC_FINAL_STEPS,
    DEFAULT_SMC_POPULATIONS,
    DEFAULT_SMC_STEPS,
    DEFAULT_TEMPERATURES,
    FACIES_MCMC_WARMUP,
)
from ppl_cvae.errors import ConfigError


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Return the handler ``ppl_cvae.cli.<module>.<name>``, imported when it is called.

    The command modules load torch and Pyro; the parser does not, so that ``--help`` and a
    mistyped flag are answered at once.
    """

    def handler(args: argparse.Namespace) -> int:
        command = getattr(importlib.import_module(f"ppl_cvae.cli.{module}"), name)
        return int(command(args))

    handler.__name__ = handler.__qualname__ = name
    return handler


def _seed(text: str) -> int:
    """Argument type of ``--seed``: an integer in [0, 2**32 - 1] (numpy's seed range).

    Checked by :func:`~ppl_cvae.checks.as_seed`, as every seed of the Python API, so the
    command line accepts and refuses the same seeds with the same message.
    """
    try:
        value: Any = int(text)
    except ValueError:
        value = text  # refused below, named as the text that arrived
    from ppl_cvae.checks import as_seed  # torch: loaded when a seed is parsed, not for --help

    try:
        return as_seed(value, optional=False)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _count(minimum: int) -> Any:
    """Argument type: an integer in [``minimum``, 2**63 - 1] (refuses ``1e8``-style floats).

    The upper bound is :data:`~ppl_cvae.checks.MAX_COUNT`, what a 64-bit count holds: a
    larger value (``--warmup 10**30``) could only hang.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        if value > MAX_COUNT:
            raise argparse.ArgumentTypeError(
                f"expected a whole number in [{minimum}, 2**63 - 1] (a 64-bit count), got "
                f"{reprlib.repr(value)}"
            )
        return value

    return parse


def _finite(text: str) -> float:
    """Argument type: a finite float (refuses nan, inf and values that overflow a double)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _bounds(text: str) -> tuple[float, float] | str:
    """Argument type: ``LOW,HIGH`` with ``LOW < HIGH`` (``inf``, ``-inf`` for an open end).

    A name ending in ``.npz`` is returned as it is: a file of per-element bounds, read by
    ``fit`` (:func:`~ppl_cvae.data.io.load_bounds`).
    """
    if text.lower().endswith(".npz"):
        return text
    parts = text.split(",")
    try:
        low, high = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH (two numbers; -inf or inf for an open end), got {text!r}"
        ) from None
    if math.isnan(low) or math.isnan(high) or not low < high or (low, high) == (-math.inf,
                                                                              math.inf):
        raise argparse.ArgumentTypeError(
            f"expected LOW,HIGH with LOW < HIGH, not both infinite, got {text!r}"
        )
    return low, high


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``ppl-cvae CMD: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print one error line naming the command and ``--help``, then exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``ppl-cvae``."""
    parser = _Parser(
        prog="ppl-cvae",
        description="Amortized Bayesian inversion with conditional VAEs (Pyro SVI).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_problem(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument(
            "--problem",
            required=required,
            help="built-in problem name (two_birds, linear_gaussian, crosshole, mt1d, gravity) "
            "or package.module:factory",
        )
        p.add_argument(
            "--functions",
            choices=["data_1", "original"],
            help="Two Birds function pair: data_1 = sin(5x0+3x1), cos(4x0+8x1); "
            "original = cos(49x0+42x1), cos(56x0+63x1)",
        )
        p.add_argument(
            "--problem-arg",
            action="append",
            metavar="KEY=VALUE",
            help="extra keyword argument of the problem factory (value parsed as JSON if it can "
            "be), repeatable",
        )

    fit_p = sub.add_parser(
        "fit",
        help="fit a CVAE with SVI (Trace_ELBO)",
        description="Fit a CVAE with SVI on a built-in problem's simulations or on a data file. "
        "Unset options take the run file's values (--config), then the recommendations for "
        "the problem, data file or dataset, then the library defaults.",
    )
    fit_p.add_argument(
        "--config",
        metavar="RUN_FILE",
        help="run file (.toml, or the config.json a fit writes) with the settings of this fit; "
        "flags override it (see ppl_cvae.train.runfile)",
    )
    add_problem(fit_p, required=False)
    fit_p.add_argument(
        "--data",
        help="training pairs: .npz (x, y), .nc (variables x, y), the challenge's .pt "
        "TensorDataset, or for files larger than memory a folder with x.npy and y.npy or a "
        ".zarr store (read in chunks, see --lazy); x/y in physical units",
    )
    fit_p.add_argument(
        "--dataset",
        choices=["digits", "mnist", "folder"],
        help="image dataset: digits = scikit-learn's 8x8 handwritten digits (built in); "
        "mnist = your IDX files in --dataset-path; folder = PNG/JPEG images in --dataset-path "
        "(one sub-folder per class optional), resized to --image-size; x: pixels in [0, 1] "
        "(binarised for digits/mnist), y: one-hot label",
    )
    fit_p.add_argument("--dataset-path", help="folder of the MNIST IDX files or of the images")
    fit_p.add_argument(
        "--image-size", type=_ints, help="H,W in pixels for --dataset folder (default 150,150)"
    )
    fit_p.add_argument(
        "--condition",
        choices=["label", "none"],
        help="with --dataset: condition on the label (CVAE, the default) or on nothing (VAE)",
    )
    fit_p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the interrupted fit in folder RUN from its last checkpoint "
        "(train_state.pt) with the settings it recorded; only --threads, --quiet, --device, "
        "--workers and the --checkpoint-* options may be given with it",
    )
    fit_p.add_argument(
        "--checkpoint-every",
        type=_count(1),
        metavar="N",
        help="also save the training state every N SVI steps (default: only at each epoch's "
        "end and by --checkpoint-minutes)",
    )
    fit_p.add_argument(
        "--checkpoint-minutes",
        type=_finite,
        metavar="M",
        help="save the training state at least every M minutes of training (default 10; 0: "
        "no timer)",
    )
    fit_p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="write no training state (the run cannot be resumed; the folder appears only "
        "when the fit has finished)",
    )
    fit_p.add_argument(
        "--out",
        help="run folder to create (model.pt, config.json, metrics.csv, loss.png; with "
        "--dataset also frames/: per-epoch reconstruction and sample grids, samples.gif); "
        "while the fit runs it holds train_state.pt, the checkpoint --resume continues from",
    )
    fit_p.add_argument("--epochs", type=_count(1), help="maximum number of epochs")
    fit_p.add_argument("--batch-size", type=_count(1), help="minibatch size (pairs per SVI step)")
    fit_p.add_argument("--learning-rate", type=_finite, help="Adam step size")
    fit_p.add_argument(
        "--lr-decay", type=_finite, help="total learning-rate decay factor over the run, in (0, 1]"
    )
    fit_p.add_argument(
        "--latent-dim",
        type=_count(0),
        help="dimension of the latent z (0: none, with --likelihood flow: a flow on x given y)",
    )
    fit_p.add_argument("--hidden-dims", type=_ints, help="hidden widths, e.g. 256,256")
    fit_p.add_argument("--activation", help="hidden activation (default leaky_relu)")
    fit_p.add_argument("--network", choices=NETWORKS, help="encoder/decoder body")
    fit_p.add_argument(
        "--conv-channels", type=_ints, help="conv1d/conv2d channels per stage, e.g. 32,64"
    )
    fit_p.add_argument(
        "--y-maps",
        type=_count(0),
        help="conv2d: maps of x's grid computed linearly from y and given to every stage of "
        "the decoder's convolutions (default 0: none)",
    )
    fit_p.add_argument(
        "--prior",
        choices=PRIORS,
        help="prior of z: learned Gaussian prior net p(z|y), N(0, I), or a conditional flow",
    )
    fit_p.add_argument(
        "--likelihood",
        choices=DECODER_LIKELIHOODS,
        help="likelihood of x given z, y (flow: a conditional normalising flow on x)",
    )
    fit_p.add_argument(
        "--flow-layers",
        type=_count(0),
        help="spline layers of the flow on x, --likelihood flow (default 5)",
    )
    fit_p.add_argument(
        "--prior-flow-layers",
        type=_count(0),
        help="spline layers of the flow on z, --prior flow (default 2)",
    )
    fit_p.add_argument(
        "--prior-flow-type",
        choices=FLOW_LAYER_TYPES,
        help="spline layer type of the flow on z, --prior flow: coupling (one network pass "
        "per layer and draw; the default) or autoregressive (latent-dim passes per draw)",
    )
    fit_p.add_argument(
        "--prior-flow-final",
        choices=PRIOR_FLOW_FINALS,
        help="coupling flow on z, --prior flow: end with an elementwise spline given y after "
        "a single coupling layer (auto, the default), always (spline: as before "
        "this flag) or never (none)",
    )
    fit_p.add_argument(
        "--flow-bins", type=_count(2), help="bins of each rational-quadratic spline (default 10)"
    )
    fit_p.add_argument(
        "--flow-hidden-dims",
        type=_ints,
        help="hidden widths of each flow layer's conditioning network (default 64,64)",
    )
    fit_p.add_argument(
        "--fixed-scale", type=_finite, help="std of x for gaussian_fixed, units of x"
    )
    fit_p.add_argument(
        "--x-bounds",
        type=_bounds,
        metavar="LOW,HIGH|FILE.npz",
        help="the prior's support of every element of x, e.g. 0,1 or 0,inf, or per element: "
        "an .npz of arrays low and high of x's shape (sbi's BoxUniform) (a data file's "
        "prior: training x must lie inside; the default flow on x is then fitted on T^-1(x), "
        "other families reject amortized draws outside)",
    )
    fit_p.add_argument(
        "--x-transform",
        choices=X_TRANSFORMS,
        help="support: the flow on x models T^-1(x), T the map from R onto the box of the "
        "prior's support (the problem's declared support and --x-bounds), so no draw leaves "
        "it; none: draws outside are rejected",
    )
    fit_p.add_argument(
        "--noise-rank",
        type=_count(1),
        help="rank of the learned noise covariance factor of gaussian_lowrank (default 8)",
    )
    fit_p.add_argument(
        "--num-facies",
        type=_count(2),
        help="classes K of --likelihood categorical (x holds facies codes 0..K-1; default 2)",
    )
    fit_p.add_argument(
        "--y-embedding",
        choices=Y_EMBEDDINGS,
        help="one encoder of y per net (separate) or one embedding shared by the recognition "
        "net, prior net and decoder (shared; the default for --data files with >= 64 data)",
    )
    fit_p.add_argument(
        "--decoder",
        choices=["auto", "network", "basis"],
        help="basis: decode coefficients of the problem's linear basis (straight "
        "lines for two_birds); auto: the problem's recommendation",
    )
    fit_p.add_argument(
        "--linear-skip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a linear map of y to the decoder output (the part of E[x|y] linear in y)",
    )
    fit_p.add_argument(
        "--x-whitening",
        choices=X_WHITENINGS,
        help="linear: the networks model x given y as departures from the least-squares "
        "linear-Gaussian posterior fitted on the training pairs (x of at most 4096 values)",
    )
    fit_p.add_argument("--kl-warmup-epochs", type=_count(0), help="epochs of linear KL warm-up")
    fit_p.add_argument(
        "--physics-weight",
        type=_finite,
        help="weight of the physics-consistency "
        "term 0.5*sum(((F(decoder mean)-y)/misfit_std)^2); 0 disables",
    )
    fit_p.add_argument(
        "--gsnn-weight",
        type=_finite,
        help="weight of the GSNN term E_{z~p(z|y)} log p(x|z,y) added to the ELBO (Sohn et "
        "al. 2015 hybrid objective; trains the prior-net path sampling uses); 0 disables",
    )
    fit_p.add_argument("--val-fraction", type=_finite, help="fraction held out for validation ELBO")
    fit_p.add_argument(
        "--patience", type=_count(0), help="early-stopping patience in epochs (0: off)"
    )
    fit_p.add_argument("--num-particles", type=_count(1), help="Trace_ELBO particles")
    fit_p.add_argument(
        "--num-train", type=_count(2), help="simulated pairs (per epoch if resimulating)"
    )
    fit_p.add_argument(
        "--resimulate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw fresh simulations every epoch (built-in problems only)",
    )
    fit_p.add_argument(
        "--unconditional",
        action="store_true",
        help="fit an unconditional VAE on the problem's prior draws, or on the models x of "
        "--data FILE (.npz or .nc; no y): a generative prior for `sample --method "
        "latent-nuts|facies-mcmc|facies-smc --generative-prior RUN` (Laloy et al. 2018)",
    )
    fit_p.add_argument(
        "--stream",
        action="store_true",
        help="train on an endless stream of fresh simulated minibatches (--problem only): "
        "each epoch takes ceil(num_train / batch_size) new minibatches, each simulated with "
        "its own seed; the same run for any --workers",
    )
    fit_p.add_argument(
        "--workers",
        type=_count(0),
        default=0,
        help="with --stream: DataLoader processes that simulate ahead while SVI steps run "
        "(default 0: simulate between steps)",
    )
    fit_p.add_argument(
        "--lazy",
        action="store_true",
        help="read --data in chunks instead of loading it (bounded memory; automatic for a "
        "folder of x.npy/y.npy, a .zarr store and a .nc larger than half the free memory)",
    )
    fit_p.add_argument(
        "--chunk-mb",
        type=_finite,
        help=f"lazy reading: MiB per chunk read (default {DEFAULT_CHUNK_MB:g})",
    )
    fit_p.add_argument(
        "--buffer-chunks",
        type=_count(1),
        help=f"lazy reading: chunks shuffled together (default {DEFAULT_BUFFER_CHUNKS}; more "
        "is closer to a full "
        "shuffle, at more memory)",
    )
    fit_p.add_argument("--seed", type=_seed, help="random seed")
    fit_p.add_argument("--quiet", action="store_true", help="no progress bar")
    fit_p.add_argument("--overwrite", action="store_true", help="reuse a non-empty run folder")
    fit_p.set_defaults(func=_command("fit", "cmd_fit"))

    s = sub.add_parser("sample", help="draw posterior samples into InferenceData NetCDF")
    s.add_argument("run_dir", help="run folder written by fit (or a model.pt)")
    s.add_argument(
        "--observation",
        help="required for a CVAE run (none for an unconditional VAE: its draws of x, "
        "group 'prior'). .npy with one y (y_shape) or a stack "
        "(M, *y_shape), .npz with key y (and optional x = true models), or a Two Birds "
        "challenge .pt (Y observed, X the truth)",
    )
    add_problem(s, required=False)
    s.add_argument(
        "--num-samples",
        type=_count(1),
        help="posterior draws per observation (large requests are streamed to disk in "
        "chunks); default 1000, for --method nuts chains x the draws per chain that keep "
        "the R-hat bound of all sampled values at 1.01 (783 per chain for 1024 values); the "
        "verdict judges R-hat at the chains' measured effective draws",
    )
    s.add_argument("--out", required=True, help="output .nc (ArviZ InferenceData)")
    s.add_argument(
        "--decoder-noise",
        choices=["auto", "sample", "mean"],
        help="amortized and refine only. sample: x ~ p(x|z,y) with the decoder's noise; mean: "
        "x = E[x|z,y]; "
        "auto (default): mean for a basis decoder (straight lines for two_birds), else sample "
        "(for a facies decoder the draws are then facies codes; mean: P(x=1|z,y) for "
        "bernoulli)",
    )
    s.add_argument(
        "--method",
        choices=[
            "amortized", "importance", "nuts", "latent-nuts", "facies-mcmc", "facies-smc",
            "refine",
        ],
        default="amortized",
        help="amortized: the CVAE's draws; importance: importance sampling against the "
        "problem's prior and noise model with the CVAE as proposal (reliable when k-hat <= 0.7); "
        "nuts: NUTS on the problem's posterior started and preconditioned by CVAE draws; "
        "latent-nuts: NUTS on the latent z of --generative-prior (for a prior without a "
        "density), started at CVAE draws encoded by its recognition net; "
        "facies-mcmc: MCMC on the facies field and the latent of --generative-prior, every "
        "draw a facies field (needs a facies (bernoulli/categorical) generative prior), started "
        "at CVAE draws; "
        "facies-smc: sequential Monte Carlo from --generative-prior (facies) to the posterior, "
        "the likelihood tempered in with facies MCMC moves; "
        "refine: misfit minimisation of each draw (an optimiser, not a sampler)",
    )
    s.add_argument(
        "--refine",
        action="store_true",
        help="the same as --method refine: refine each draw by minimising its data misfit "
        "with the problem's forward operator, then keep draws whose RMS normalised misfit is "
        "below --max-misfit",
    )
    s.add_argument(
        "--proposals",
        type=_count(2),
        help="--method importance: proposal draws per observation (default 10 x --num-samples)",
    )
    s.add_argument(
        "--generative-prior",
        metavar="PRIOR_RUN",
        help="--method latent-nuts, facies-mcmc and facies-smc: run folder (or model.pt) of an "
        "unconditional VAE fitted on the problem's prior draws (`ppl-cvae fit --problem NAME "
        "--unconditional`; for facies-mcmc and facies-smc with a bernoulli or categorical "
        "decoder)",
    )
    s.add_argument(
        "--chains",
        type=_count(1),
        help=f"--method nuts/latent-nuts/facies-mcmc: chains (default {DEFAULT_CHAINS}); "
        f"--method facies-smc: independent populations (default {DEFAULT_SMC_POPULATIONS})",
    )
    s.add_argument(
        "--warmup",
        type=_count(0),
        help="--method nuts/latent-nuts/facies-mcmc: warm-up steps per chain (default 500; "
        "--method nuts with step-size-only adaptation: 150; --method facies-mcmc: "
        f"{FACIES_MCMC_WARMUP})",
    )
    s.add_argument(
        "--facies-moves",
        type=_count(0),
        metavar="N",
        help="--method facies-mcmc/facies-smc: single-cell facies moves per step, each "
        "evaluating every one-cell change of every chain or particle (default "
        f"{DEFAULT_FACIES_MOVES})",
    )
    s.add_argument(
        "--temperatures",
        type=_count(1),
        metavar="T",
        help="--method facies-mcmc: tempered replicas per chain (parallel tempering; 1: none; "
        f"the cost grows about T-fold; default {DEFAULT_TEMPERATURES})",
    )
    s.add_argument(
        "--smc-steps",
        type=_count(4),
        metavar="N",
        help="--method facies-smc: facies MCMC steps per particle after each stage's "
        f"resampling (default {DEFAULT_SMC_STEPS})",
    )
    s.add_argument(
        "--smc-final-steps",
        type=_count(4),
        metavar="N",
        help="--method facies-smc: facies MCMC steps per particle once the likelihood is fully "
        f"tempered in (default {DEFAULT_SMC_FINAL_STEPS})",
    )
    s.add_argument(
        "--adapt-mass-matrix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--method nuts: also adapt a diagonal mass matrix during warm-up, on top of the "
        "amortized preconditioner (needs about 500 warm-up steps); default and "
        "--no-adapt-mass-matrix: adapt the step size only",
    )
    s.add_argument(
        "--cores",
        type=_count(1),
        default=1,
        help="--method nuts: worker processes for the chains (at most --chains; the draws "
        "do not depend on it)",
    )
    s.add_argument(
        "--nuts-jit",
        action="store_true",
        help="--method nuts: trace the potential with torch.jit.trace (checked against the "
        "eager potential; no gain measured on crosshole and gravity)",
    )
    s.add_argument(
        "--potential-dtype",
        choices=["float64", "float32"],
        default=None,
        help="--method nuts: precision of the potential and its gradient (the chains' state "
        f"and draws stay float64; default {DEFAULT_POTENTIAL_DTYPE}); float32 reads half the "
        "bytes per evaluation and is used only where it agrees with float64 within 0.01 nats "
        "at the chains' starts (docs/measurements.md, 'NUTS within 60 s per observation')",
    )
    s.add_argument(
        "--preconditioner",
        choices=["amortized", "prior", "prior-amortized"],
        default=None,
        help="--method nuts: the coordinates NUTS runs in: whitened by the amortized draws' "
        "covariance (amortized); by the prior's Cholesky factor (prior; needs a prior that is "
        "Gaussian in the sampled coordinates: mt1d, the Gaussian random fields of crosshole "
        "and gravity); or by the amortized covariance in those prior-whitened coordinates, "
        "clipped at the prior (prior-amortized). Default: the problem's nuts_preconditioner "
        "(amortized; prior-amortized for mt1d, 3.7x to 6.3x the effective draws per "
        "evaluation there; see the README)",
    )
    s.add_argument(
        "--oversample", type=_count(1), help="refine only: candidates per kept draw (default 4)"
    )
    s.add_argument(
        "--max-misfit",
        type=_finite,
        help="refine only: acceptance threshold on RMS((F(x) - y) / misfit_std), "
        "dimensionless; 0: keep all (default 1.0)",
    )
    s.add_argument(
        "--refine-steps",
        type=_count(0),
        help="refine only: Adam steps of the refinement (default 300)",
    )
    s.add_argument(
        "--refine-lr",
        type=_finite,
        help=(
            "refine only: Adam step size of the refinement, in the problem's "
            "parameterisation or else in each element's training sd (default 0.1)"
        ),
    )
    s.add_argument("--seed", type=_seed, default=0, help="random seed of the draws")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    s.set_defaults(func=_command("sample", "cmd_sample"))

    ev = sub.add_parser(
        "evaluate",
        help="coverage, RMSE, misfit, SBC and TARP of a run on held-out pairs",
        description="Draw posterior samples for held-out (x, y) pairs and write metrics.json "
        "(coverage of the true x by central 50%/90% intervals, RMSE of the posterior mean vs "
        "the training mean, chi-squared misfit per datum with a forward operator, the exact "
        "posterior comparison for linear-Gaussian problems, and under 'calibration' "
        "simulation-based calibration ranks of every component and of the misfit, TARP of the "
        "joint posterior and the coverage verdict with a tolerance from the number of pairs) "
        "plus coverage.png, truth_vs_mean.png, sbc_ecdf.png and tarp.png.",
    )
    ev.add_argument("run_dir", help="run folder written by fit (or a model.pt)")
    ev.add_argument("--data", required=True, help="held-out pairs (.npz/.nc/.pt with x and y)")
    ev.add_argument("--out", required=True, help="output folder")
    add_problem(ev, required=False)
    ev.add_argument("--num-samples", type=_count(2), default=200, help="posterior draws per pair")
    ev.add_argument("--max-observations", type=_count(1), help="evaluate only the first N pairs")
    ev.add_argument("--seed", type=_seed, default=0, help="random seed of the draws")
    ev.add_argument("--overwrite", action="store_true", help="reuse a non-empty output folder")
    ev.set_defaults(func=_command("evaluate", "cmd_evaluate"))

    d = sub.add_parser("diagnose", help="summary CSV and plots of a posterior file")
    d.add_argument("posterior", help="InferenceData .nc written by sample")
    d.add_argument("--out", required=True, help="report folder")
    d.add_argument(
        "--max-observations",
        type=_count(1),
        default=3,
        help="plot the first N observations (default 3)",
    )
    d.add_argument("--overwrite", action="store_true", help="reuse a non-empty report folder")
    d.set_defaults(func=_command("evaluate", "cmd_diagnose"))

    sim = sub.add_parser("simulate", help="simulate (x, y) pairs from a problem")
    add_problem(sim, required=True)
    sim.add_argument("--num", type=_count(1), required=True, help="number of pairs")
    sim.add_argument("--out", required=True, help="output .npz with arrays x and y")
    sim.add_argument("--seed", type=_seed, default=0, help="random seed")
    sim.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    sim.set_defaults(func=_command("simulate", "cmd_simulate"))

    sc = sub.add_parser("score", help="Two Birds challenge criteria on a posterior file")
    sc.add_argument(
        "posterior",
        help="InferenceData .nc written by sample (every chain's draws), or a challenge "
        "submission .pt (a TensorDataset of (X, Y) pairs, draws of one Y in a block)",
    )
    sc.add_argument(
        "--functions",
        choices=["data_1", "original"],
        help="function pair (default: the one recorded in the file; required for a .pt)",
    )
    sc.add_argument("--out", help="optional JSON with per-observation results")
    sc.add_argument(
        "--submission",
        help="also write the draws as a challenge submission .pt: a TensorDataset of (X, Y), "
        "the draws of each observation in one block with its Y repeated (from a .nc)",
    )
    sc.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    sc.set_defaults(func=_command("evaluate", "cmd_score"))
    threads_help = (
        "torch CPU threads (default: torch's own choice, which can run several times slower "
        "than 1 thread on a shared, loaded machine)"
    )
    parser.add_argument("--threads", type=_count(1), default=None, help=threads_help)
    for command in sub.choices.values():  # also after the command: ppl-cvae fit --threads 1
        command.add_argument(
            "--threads", type=_count(1), default=argparse.SUPPRESS, help=threads_help
        )
    device_help = {
        "fit": "where the networks train: the pairs are simulated or read on the CPU and copied "
        "there per minibatch",
        "sample": "where the networks draw (amortized draws; importance, nuts and refine run on "
        "the CPU)",
        "evaluate": "where the networks draw the held-out posteriors",
    }
    for name, text in device_help.items():
        sub.choices[name].add_argument(
            "--device",
            default="cpu",
            help=f"{DEVICE_CHOICES} (default cpu; auto takes CUDA when available): {text}",
        )
    return parser
