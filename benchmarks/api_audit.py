"""Hostile and unusual calls to the Python API: refused with the package's errors, or handled.

The command-line audit (``benchmarks/hostile_inputs.py``) feeds the ``ppl-cvae`` command; this
script calls the Python entry points the way a notebook does (``CVAEPosterior``,
``draw_posterior``, ``sample_posterior``, ``importance_sample``, ``sample_corrected``,
``nuts_sample``, ``fit_problem``, ``evaluate_model``, ``load_checkpoint``, the ArviZ
helpers; the generative-prior samplers ``latent_nuts_sample``, ``facies_mcmc_sample``,
``facies_smc_sample``, ``sample_latent_nuts``, ``sample_facies_mcmc`` and
``sample_facies_smc``; ``sample_posterior_to_netcdf``;
``evaluate_draws``; the figures of :mod:`inference.plots` and :mod:`inference.report`; a
prior's support: ``Problem.support``, ``check_support``, ``ModelConfig.x_bounds``) with
bad arguments and with unusual but reasonable ones. A bad call passes when it
raises an instance of :class:`ppl_cvae.errors.PplCvaeError` whose message contains a fragment
naming the argument;
an unusual call passes when it gives the right shapes and finite values (or, where the case
says so, a clear refusal). A raw torch/NumPy/Pyro error, a wrong-shaped result or a call that
runs past 60 s is a failure.

One tiny CVAE is fitted on ``LinearGaussian(x_dim=3, y_dim=2)`` (2 epochs of 256 pairs); the
generative priors are untrained VAEs on the same ``x`` (a Gaussian and a Bernoulli decoder,
latent dim 1) with chains of 4 draws after 2 warm-up steps. A huge ``warmup_steps`` is not
tried: it costs time, not memory, and is a legitimate (if long) request.

Run::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/api_audit.py

Runtime: about 10 s on one CPU thread (374 calls). Prints one table row per category and one
line per failure; exits with status 1 when a case fails.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import print_category_table
from torch.distributions import constraints

from inference import CVAEPosterior, draw_posterior, importance_sample
from inference.arviz_io import load_inference_data, save_inference_data
from inference.evaluate import evaluate_model
from inference.mcmc import nuts_sample
from inference.sample import CorrectionConfig, sample_corrected, sample_posterior
from ppl_cvae import LinearGaussian, build_cvae, fit_problem, load_checkpoint, save_checkpoint
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import PplCvaeError
from ppl_cvae.problems.base import Problem, check_support

TIMEOUT_S = 60


@dataclass
class Case:
    """One call: ``refuse`` (must raise a PplCvaeError naming ``fragment``) or ``accept``."""

    category: str
    name: str
    call: Callable[[], Any]
    kind: str  # "refuse", "accept", "either" (accept, or refuse naming the fragment)
    fragment: str = ""
    check: Callable[[Any], bool] | None = None


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def run_case(case: Case) -> str | None:
    """Run one case; return None when it passes, else why it failed."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.call()
    except _Timeout:
        return f"no answer within {TIMEOUT_S} s"
    except PplCvaeError as err:
        if case.kind == "accept":
            return f"refused a reasonable call: {type(err).__name__}: {err}"
        if case.fragment.lower() not in str(err).lower():
            return f"{type(err).__name__} without {case.fragment!r}: {err}"
        return None
    except Exception as err:  # noqa: BLE001 - the audit reports whatever escapes
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"raw {type(err).__module__}.{type(err).__name__}: {first[:160]}"
    finally:
        signal.alarm(0)
    if case.kind == "refuse":
        return f"accepted a bad call (returned {_describe(result)})"
    try:
        ok = case.check is None or bool(case.check(result))
    except Exception as err:  # noqa: BLE001
        return f"result check raised {type(err).__name__}: {err}"
    return None if ok else f"wrong result: {_describe(result)}"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor {tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def _shape(*shape: int) -> Callable[[Any], bool]:
    def check(t: Any) -> bool:
        return (
            isinstance(t, torch.Tensor)
            and tuple(t.shape) == shape
            and bool(torch.isfinite(t).all())
        )

    return check


class NoDensity(Problem):
    """LinearGaussian's shapes without a prior density (a simulator-only prior)."""

    name = "no_density"
    x_dims = ("parameter",)
    y_dims = ("datum",)
    coords: dict[str, Any] = {}

    def __init__(self) -> None:
        self.x_shape, self.y_shape = (3,), (2,)
        self.noise_std = self.misfit_std = 0.5
        self.matrix = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw standard normal ``x``, shape ``(num, 3)``."""
        return torch.randn(num, 3, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``A x``, shape ``(*batch, 2)``."""
        return x @ self.matrix.T.to(x)

    def spec(self) -> dict[str, Any]:
        """Return nothing rebuildable (defined in a script)."""
        return {"name": "no_density"}


class NoiseFree(NoDensity):
    """A prior with a density (standard normal) and no noise model: no likelihood density."""

    name = "noise_free"
    has_prior_density = True

    def __init__(self) -> None:
        super().__init__()
        self.noise_std = 0.0

    def log_prior(self, x: torch.Tensor) -> torch.Tensor:
        """Return the standard normal log density of ``x`` ``(*batch, 3)``; ``(*batch,)``."""
        return torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(-1)


def bad_problem(kind: str) -> Problem:
    """A user's problem whose ``forward`` or ``sample_prior`` misbehaves in one way."""

    class Bad(NoDensity):
        name = f"bad_{kind}"

        def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Any:
            x = torch.randn(num, 3, generator=generator)
            return x[:, :2] if kind == "prior_shape" else x

        def forward(self, x: torch.Tensor) -> Any:
            y = x @ self.matrix.T.to(x)
            if kind == "forward_shape":
                return y[..., :1]
            if kind == "forward_numpy":
                return y.numpy()
            if kind == "forward_float64":
                return y.double()
            if kind == "forward_nan":
                return y * float("nan")
            return y

    return Bad()


TINY_MODEL = {"latent_dim": 2, "hidden_dims": (16,)}
TINY_TRAIN = {"num_epochs": 2, "num_train": 256, "seed": 0}


def cases(tmp: Path) -> list[Case]:
    """Build the tiny model and the list of cases."""
    p = LinearGaussian(x_dim=3, y_dim=2)
    cvae, _, _ = fit_problem(p, model=TINY_MODEL, train=TINY_TRAIN)
    post = CVAEPosterior(cvae, problem=p)
    x_all, y_all = p.simulate(8, torch.Generator().manual_seed(1))
    y0, x0 = y_all[0], x_all[0]
    nan_y = torch.tensor([float("nan"), 0.0])
    inf_y = torch.tensor([float("inf"), 0.0])
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, cvae, problem=p)
    not_ckpt = tmp / "notes.txt"
    not_ckpt.write_text("not a checkpoint\n")
    (tmp / "empty_run").mkdir()
    strided = torch.stack([y0, y0 + 1], dim=1)[:, 0]  # a non-contiguous view of shape (2,)
    nd = NoDensity()

    def sample(y: Any, n: int = 4, **kw: Any) -> Any:
        return post.sample((n,), y, **kw)

    def same_draws_for_numpy_seed() -> bool:
        a = post.sample((3,), y0, seed=np.int64(7))
        b = post.sample((3,), y0, seed=7)
        return bool(torch.equal(a, b))

    def fresh_default(y: Any) -> Any:
        return CVAEPosterior(cvae, problem=p).set_default_y(y).sample((3,))

    def fitted(problem: Problem, **train: Any) -> Any:
        return fit_problem(problem, model=TINY_MODEL, train={**TINY_TRAIN, **train})[0]

    def nuts(y: Any = y0, init: Any = None, problem: Problem = p, **kw: Any) -> Any:
        if init is None:
            init = draw_posterior(cvae, y0, 16, seed=0).x[:, 0]
        options = {"num_samples": 4, "warmup_steps": 4, "num_chains": 2, "seed": 0, **kw}
        return nuts_sample(problem, y, init, **options)

    def nuts_draws(r: Any) -> bool:
        return tuple(r.x.shape)[-1] == 3 and bool(torch.isfinite(torch.as_tensor(r.x)).all())

    def idata_x(shape: tuple[int, ...]) -> Callable[[Any], bool]:
        return lambda idata: tuple(idata.posterior["x"].shape) == shape

    def round_trip() -> bool:
        loaded, _ = load_checkpoint(ckpt)
        a = draw_posterior(cvae, y0, 5, seed=3).x
        b = draw_posterior(loaded, y0, 5, seed=3).x
        return bool(torch.allclose(a, b))

    imp = CorrectionConfig(method="importance", proposals=64)
    out: list[Case] = []

    def add(category: str, name: str, call: Callable[[], Any], kind: str, fragment: str = "",
            check: Callable[[Any], bool] | None = None) -> None:
        out.append(Case(category, name, call, kind, fragment, check))

    c = "observation y"
    add(c, "y of length 3 (expects 2)", lambda: sample(torch.zeros(3)), "refuse", "(2,)")
    add(c, "stack of wrong event shape (2, 3)", lambda: sample(torch.zeros(2, 3)), "refuse", "(2,)")
    add(c, "3-D y (1, 1, 2)", lambda: sample(torch.zeros(1, 1, 2)), "refuse", "(2,)")
    add(c, "y with NaN", lambda: sample(nan_y), "refuse", "nan")
    add(c, "y with inf", lambda: sample(inf_y), "refuse", "inf")
    add(c, "y as numpy float32", lambda: sample(y0.numpy()), "accept", check=_shape(4, 3))
    add(c, "y as numpy float64", lambda: sample(y0.double().numpy()), "accept", check=_shape(4, 3))
    add(c, "y as a Python list", lambda: sample(y0.tolist()), "accept", check=_shape(4, 3))
    add(c, "y as a float64 tensor", lambda: sample(y0.double()), "accept",
        check=lambda t: _shape(4, 3)(t) and t.dtype == torch.float32)
    add(c, "y as an int64 tensor", lambda: sample(torch.tensor([1, -1])), "accept",
        check=_shape(4, 3))
    add(c, "y with a batch dim of 1", lambda: sample(y0[None]), "accept", check=_shape(4, 1, 3))
    add(c, "y as a non-contiguous view", lambda: sample(strided), "accept", check=_shape(4, 3))
    add(c, "y empty (0,)", lambda: sample(torch.zeros(0)), "refuse", "(2,)")
    add(c, "y stack of 0 observations (0, 2)", lambda: sample(torch.zeros(0, 2)), "refuse",
        "observation")
    add(c, "y complex", lambda: sample(torch.zeros(2, dtype=torch.complex64)), "refuse", "complex")
    add(c, "y a string", lambda: sample("0.1 0.2"), "refuse", "y")
    add(c, "y omitted, no default", lambda: CVAEPosterior(cvae).sample((2,)), "refuse",
        "set_default_y")
    add(c, "set_default_y(numpy)", lambda: fresh_default(y0.numpy()), "accept", check=_shape(3, 3))
    add(c, "set_default_y(y[None])", lambda: fresh_default(y0[None]), "either", "(2,)",
        check=_shape(3, 3))
    add(c, "set_default_y(NaN)", lambda: fresh_default(nan_y), "refuse", "nan")
    add(c, "draw_posterior(y numpy)", lambda: draw_posterior(cvae, y0.numpy(), 5).x, "accept",
        check=_shape(5, 1, 3))
    add(c, "sample_posterior(y list)", lambda: sample_posterior(cvae, y0.tolist(), 5, problem=p),
        "accept", check=idata_x((1, 5, 1, 3)))

    c = "sample sizes"
    add(c, "sample((0,))", lambda: post.sample((0,), y0), "accept",
        check=lambda t: t.shape == (0, 3))
    add(c, "sample((-1,))", lambda: post.sample((-1,), y0), "refuse", "sample_shape")
    add(c, "sample((2.5,))", lambda: post.sample((2.5,), y0), "refuse", "sample_shape")
    add(c, "sample(5) (an int)", lambda: post.sample(5, y0), "accept", check=_shape(5, 3))
    add(c, "sample((np.int64(5),))", lambda: post.sample((np.int64(5),), y0), "accept",
        check=_shape(5, 3))
    add(c, "sample(torch.Size([2, 3]))", lambda: post.sample(torch.Size([2, 3]), y0), "accept",
        check=_shape(2, 3, 3))
    add(c, "sample((1e8, 1e8)) huge", lambda: post.sample((10**8, 10**8), y0), "refuse", "memory")
    add(c, "draw_posterior(0)", lambda: draw_posterior(cvae, y0, 0), "refuse", "num_samples")
    add(c, "draw_posterior(-5)", lambda: draw_posterior(cvae, y0, -5), "refuse", "num_samples")
    add(c, "draw_posterior(2.5)", lambda: draw_posterior(cvae, y0, 2.5), "refuse", "num_samples")
    add(c, "draw_posterior('5')", lambda: draw_posterior(cvae, y0, "5"), "refuse", "num_samples")
    add(c, "draw_posterior((5,))", lambda: draw_posterior(cvae, y0, (5,)).x, "either",
        "num_samples", check=_shape(5, 1, 3))
    add(c, "draw_posterior(np.int64(5))", lambda: draw_posterior(cvae, y0, np.int64(5)).x,
        "accept", check=_shape(5, 1, 3))
    add(c, "draw_posterior(10**12) huge", lambda: draw_posterior(cvae, y0, 10**12), "refuse",
        "memory")
    add(c, "sample_posterior(0)", lambda: sample_posterior(cvae, y0, 0), "refuse", "num_samples")
    add(c, "importance_sample(num_samples=2.5)",
        lambda: importance_sample(cvae, p, y0[None], 2.5), "refuse", "num_samples")

    c = "log_prob x"
    add(c, "x of event shape 4", lambda: post.log_prob(torch.zeros(5, 4), y0), "refuse", "x")
    add(c, "x unbatched (3,)", lambda: post.log_prob(x0, y0), "either", "x", check=_shape(1))
    add(c, "x (5, 3) with y (4, 2)", lambda: post.log_prob(torch.zeros(5, 3), y_all[:4]),
        "refuse", "y")
    add(c, "x with NaN", lambda: post.log_prob(torch.full((2, 3), float("nan")), y0), "refuse",
        "nan")
    add(c, "x as numpy", lambda: post.log_prob(x_all[:5].numpy(), y0), "accept", check=_shape(5))
    add(c, "x as float64", lambda: post.log_prob(x_all[:5].double(), y0), "accept",
        check=_shape(5))
    add(c, "x (0, 3) empty", lambda: post.log_prob(torch.zeros(0, 3), y0), "either", "x",
        check=lambda t: t.shape == (0,))
    add(c, "num_particles=2.5", lambda: post.log_prob(x_all[:2], y0, num_particles=2.5), "refuse",
        "num_particles")
    add(c, "num_particles=0", lambda: post.log_prob(x_all[:2], y0, num_particles=0), "refuse",
        "num_particles")

    c = "importance / corrected"
    add(c, "posterior without a problem", lambda: CVAEPosterior(cvae).importance_sample(64, y0),
        "refuse", "problem")
    add(c, "problem without a prior density",
        lambda: importance_sample(cvae, nd, y0[None], 64), "refuse", "prior")
    add(c, "importance_sample(y unbatched)", lambda: importance_sample(cvae, p, y0, 64), "either",
        "y", check=lambda r: tuple(r.log_weight.shape) == (64, 1))
    add(c, "importance_sample(y NaN)", lambda: importance_sample(cvae, p, nan_y[None], 64),
        "refuse", "nan")
    add(c, "importance_sample(problem of other shapes)",
        lambda: importance_sample(cvae, LinearGaussian(x_dim=4, y_dim=2), y0[None], 64), "refuse",
        "shape")
    add(c, "sample_corrected(problem=None)", lambda: sample_corrected(cvae, y0, 10, None, imp),
        "refuse", "problem")
    add(c, "sample_corrected(no prior density)", lambda: sample_corrected(cvae, y0, 10, nd, imp),
        "refuse", "prior")
    add(c, "sample_corrected(y numpy)", lambda: sample_corrected(cvae, y0.numpy(), 10, p, imp)[0],
        "accept", check=idata_x((1, 10, 1, 3)))
    add(c, "draw_posterior(problem of other shapes)",
        lambda: draw_posterior(cvae, y0, 5, problem=LinearGaussian(x_dim=4, y_dim=2)), "refuse",
        "shape")

    add(c, "importance_sample(noise-free problem)",
        lambda: importance_sample(cvae, NoiseFree(), y0[None], 64), "refuse", "noise")
    add(c, "sample_posterior(x_true of event shape 4)",
        lambda: sample_posterior(cvae, y0, 5, x_true=torch.zeros(4)), "refuse", "x_true")
    add(c, "sample_posterior(x_true numpy)",
        lambda: sample_posterior(cvae, y0, 5, x_true=x0.numpy(), problem=p), "either", "x_true",
        check=lambda idata: idata.constant_data["x_true"].shape == (1, 3))

    c = "nuts_sample"
    add(c, "init of event shape 4", lambda: nuts(init=torch.zeros(5, 4)), "refuse", "init")
    add(c, "init with NaN", lambda: nuts(init=torch.full((5, 3), float("nan"))), "refuse", "init")
    add(c, "init one unbatched draw (3,)", lambda: nuts(init=x0), "either", "init",
        check=nuts_draws)
    add(c, "init one draw (1, 3), 2 chains", lambda: nuts(init=x0[None]), "either", "init",
        check=nuts_draws)
    add(c, "y of length 3", lambda: nuts(y=torch.zeros(3)), "refuse", "y")
    add(c, "y with NaN", lambda: nuts(y=nan_y), "refuse", "nan")
    add(c, "y as numpy", lambda: nuts(y=y0.numpy()), "accept", check=nuts_draws)
    add(c, "seed -1", lambda: nuts(seed=-1), "refuse", "seed")
    add(c, "problem without a prior density", lambda: nuts(problem=nd), "refuse", "prior")

    c = "user problems"
    add(c, "forward returns the wrong shape", lambda: fitted(bad_problem("forward_shape")),
        "refuse", "shape")
    add(c, "forward returns numpy", lambda: fitted(bad_problem("forward_numpy")), "refuse",
        "tensor")
    add(c, "forward returns float64", lambda: fitted(bad_problem("forward_float64")), "accept")
    add(c, "forward returns NaN", lambda: fitted(bad_problem("forward_nan")), "refuse", "nan")
    add(c, "sample_prior returns the wrong shape", lambda: fitted(bad_problem("prior_shape")),
        "refuse", "shape")
    add(c, "not a problem", lambda: fit_problem(object()), "refuse", "problem")
    add(c, "draw_posterior(problem forward wrong shape)",
        lambda: draw_posterior(cvae, y0, 5, problem=bad_problem("forward_shape")), "refuse",
        "shape")

    c = "prior support"

    def with_support(support: Any) -> LinearGaussian:
        problem = LinearGaussian(x_dim=3, y_dim=2)
        problem.support = support
        return problem

    positive, far = with_support(constraints.positive), with_support(constraints.interval(50, 51))
    wide = with_support(constraints.interval(-100.0, 100.0))
    add(c, "in_support(x of event shape 4)", lambda: positive.in_support(torch.zeros(2, 4)),
        "refuse", "x")
    add(c, "support a string", lambda: draw_posterior(cvae, y0, 5, problem=with_support("pos")),
        "refuse", "support")
    add(c, "support positive on a Gaussian prior (excludes most prior draws)",
        lambda: draw_posterior(cvae, y0, 50, problem=positive, seed=0), "refuse", "misdeclared")
    add(c, "support wider than every draw",
        lambda: draw_posterior(cvae, y0, 50, problem=wide, seed=0).support_acceptance,
        "accept", check=lambda a: a.tolist() == [1.0])
    add(c, "support excluding every prior draw",
        lambda: draw_posterior(cvae, y0, 5, problem=far), "refuse", "misdeclared")
    add(c, "check_support of that support", lambda: check_support(far), "refuse", "support")
    add(c, "log_prob(num_support_draws=0)",
        lambda: CVAEPosterior(cvae, problem=positive).log_prob(x0.abs(), y0,
                                                               num_support_draws=0),
        "refuse", "num_support_draws")
    add(c, "log_prob outside the support",
        lambda: CVAEPosterior(cvae, problem=wide).log_prob(x0 + 200, y0, num_support_draws=100),
        "accept", check=lambda t: bool(torch.isneginf(t).all()))
    add(c, "log_prob where no draw lies inside",
        lambda: CVAEPosterior(cvae, problem=far).log_prob(x0, y0, num_support_draws=100),
        "refuse", "normalised")
    add(c, "ModelConfig(x_bounds=(1, 0))",
        lambda: ModelConfig(x_shape=(3,), y_shape=(2,), x_bounds=(1, 0)), "refuse", "x_bounds")
    add(c, "ModelConfig(x_bounds='0,1')",
        lambda: ModelConfig(x_shape=(3,), y_shape=(2,), x_bounds="0,1"), "refuse", "x_bounds")
    flow_box = {"x_shape": (3,), "y_shape": (2,), "likelihood": "flow", "latent_dim": 0,
                "hidden_dims": (8,), "flow_hidden_dims": (8,), "x_transform": "support"}
    unit = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    add(c, "ModelConfig(x_transform='logit')",
        lambda: ModelConfig(x_shape=(3,), y_shape=(2,), x_transform="logit"), "refuse",
        "x_transform")
    add(c, "x_transform='support' with a Gaussian decoder",
        lambda: ModelConfig(x_shape=(3,), y_shape=(2,), x_transform="support"), "refuse",
        "flow")
    add(c, "x_transform='support' without a support or x_bounds",
        lambda: build_cvae(ModelConfig(**flow_box), unit, unit[:, :2]), "refuse", "bounds")
    add(c, "x_transform='support' on a simplex support",
        lambda: build_cvae(ModelConfig(**flow_box), unit, unit[:, :2],
                           problem=with_support(constraints.simplex)), "refuse", "box")
    add(c, "x_transform='support', training x outside x_bounds",
        lambda: build_cvae(ModelConfig(**flow_box, x_bounds=(0.0, 0.5)), unit, unit[:, :2]),
        "refuse", "outside")

    def boxed_log_prob() -> torch.Tensor:
        boxed = build_cvae(ModelConfig(**flow_box, x_bounds=(0.0, 1.0)), unit, unit[:, :2])
        return CVAEPosterior(boxed).log_prob(torch.tensor([[0.5, 1.5, 0.5]]), y0)

    add(c, "x_transform='support': log_prob outside the box", boxed_log_prob, "accept",
        check=lambda t: bool(torch.isneginf(t).all()))

    def half_line() -> Any:  # a box with an open side: x_high = inf
        return build_cvae(ModelConfig(**flow_box, x_bounds=(0.0, float("inf"))), 3 * unit,
                          unit[:, :2])

    def open_side_round_trip() -> Any:
        loaded, _ = load_checkpoint(save_checkpoint(tmp / "half_line.pt", half_line()))
        return loaded.x_high

    def forged_box() -> Any:
        payload = torch.load(save_checkpoint(tmp / "forged_box.pt", half_line()),
                             weights_only=True)
        del payload["state_dict"]["x_low"]
        torch.save(payload, tmp / "forged_box.pt")
        return load_checkpoint(tmp / "forged_box.pt")

    add(c, "x_transform='support', x_bounds (0, inf): save, load", open_side_round_trip,
        "accept", check=lambda high: bool(torch.isposinf(high).all()))
    add(c, "x_transform='support': a checkpoint without x_low", forged_box, "refuse", "x_low")
    above3 = with_support(constraints.greater_than(3.0))
    on_end = 3.0 + unit * (unit > 0.5)  # half the training values on the open end

    def open_end_draws() -> Any:
        boxed = build_cvae(ModelConfig(**flow_box), on_end, unit[:, :2], problem=above3)
        return draw_posterior(boxed, y0, 200, problem=above3, seed=0).support_acceptance

    add(c, "x_transform='support', greater_than(3), training x on 3: draws inside",
        open_end_draws, "accept", check=lambda a: a.tolist() == [1.0])

    c = "checkpoints"
    add(c, "load a missing file", lambda: load_checkpoint(tmp / "missing.pt"), "refuse", "missing")
    add(c, "load a text file", lambda: load_checkpoint(not_ckpt), "refuse", "notes.txt")
    add(c, "load a folder without model.pt", lambda: load_checkpoint(tmp / "empty_run"), "refuse",
        "model.pt")
    add(c, "load with a problem of other shapes",
        lambda: load_checkpoint(ckpt, problem=LinearGaussian(x_dim=4, y_dim=2)), "refuse",
        "the model has x (3,)")
    add(c, "save onto a folder", lambda: save_checkpoint(tmp / "empty_run", cvae), "refuse",
        "empty_run")
    add(c, "save, load, same draws", round_trip, "accept", check=bool)

    c = "evaluate / arviz_io"
    idata = sample_posterior(cvae, y0, 5, problem=p)
    add(c, "evaluate_model(numpy x, y)",
        lambda: evaluate_model(cvae, x_all.numpy(), y_all.numpy(), num_samples=20)[0], "either",
        "x", check=lambda m: isinstance(m, dict))
    add(c, "evaluate_model(x of event shape 4)",
        lambda: evaluate_model(cvae, torch.zeros(8, 4), y_all, num_samples=20), "refuse", "x")
    add(c, "evaluate_model(8 x, 4 y)",
        lambda: evaluate_model(cvae, x_all, y_all[:4], num_samples=20), "refuse", "batch")
    add(c, "evaluate_model(num_samples=0)",
        lambda: evaluate_model(cvae, x_all, y_all, num_samples=0), "refuse", "num_samples")
    add(c, "evaluate_model(y with NaN)",
        lambda: evaluate_model(cvae, x_all, y_all * float("nan"), num_samples=20), "refuse",
        "nan")
    add(c, "load_inference_data(missing)", lambda: load_inference_data(tmp / "missing.nc"),
        "refuse", "missing.nc")
    add(c, "load_inference_data(text file)", lambda: load_inference_data(not_ckpt), "refuse",
        "notes.txt")
    add(c, "save_inference_data(missing folder)",
        lambda: save_inference_data(idata, tmp / "no" / "such" / "x.nc"), "either", "no/such",
        check=lambda path: Path(path).is_file())

    c = "devices"
    cuda = torch.cuda.is_available()
    if not cuda:
        add(c, "posterior.to('cuda') without CUDA",
            lambda: CVAEPosterior(cvae).to("cuda"), "refuse", "cuda")
        add(c, "fit_problem(device='cuda') without CUDA",
            lambda: fit_problem(p, model=TINY_MODEL, train=TINY_TRAIN, device="cuda"), "refuse",
            "cuda")
    add(c, "posterior.to('nonsense')", lambda: CVAEPosterior(cvae).to("nonsense"), "refuse",
        "nonsense")
    add(c, "draw_posterior(y on meta device)",
        lambda: draw_posterior(cvae, torch.zeros(2, device="meta"), 5), "refuse", "meta")

    c = "seeds"
    add(c, "sample(seed=-1)", lambda: sample(y0, seed=-1), "refuse", "seed")
    add(c, "sample(seed=1.5)", lambda: sample(y0, seed=1.5), "refuse", "seed")
    add(c, "sample(seed='abc')", lambda: sample(y0, seed="abc"), "refuse", "seed")
    add(c, "sample(seed=2**40)", lambda: sample(y0, seed=2**40), "either", "seed",
        check=_shape(4, 3))
    add(c, "sample(seed=np.int64(7)) as seed=7", same_draws_for_numpy_seed, "accept", check=bool)
    add(c, "log_prob(seed=-1)", lambda: post.log_prob(x_all[:2], y0, seed=-1), "refuse", "seed")
    add(c, "importance_sample(seed=-1)", lambda: importance_sample(cvae, p, y0[None], 64, seed=-1),
        "refuse", "seed")
    add(c, "fit_problem(train seed=-1)", lambda: fitted(p, seed=-1), "refuse", "seed")
    add(c, "fit_problem(train seed=1.5)", lambda: fitted(p, seed=1.5), "refuse", "seed")

    world = World(cvae=cvae, problem=p, x=x_all, y=y_all, tmp=tmp)
    generative_prior_cases(add, world)
    file_and_evaluation_cases(add, world)
    plot_cases(add, world)
    return out


@dataclass
class World:
    """What the later case groups share: the fitted CVAE, its problem, 8 pairs, a folder."""

    cvae: Any
    problem: Problem
    x: torch.Tensor
    y: torch.Tensor
    tmp: Path


Add = Callable[..., None]


def _tiny_vae(likelihood: str, conditional: bool = False) -> Any:
    """An untrained VAE on ``x`` of shape (3,): a generative prior (unconditional) or a CVAE."""
    from ppl_cvae.config import ModelConfig
    from ppl_cvae.models.cvae import CVAE

    prior = "learned" if conditional else "standard_normal"
    config = ModelConfig(x_shape=(3,), y_shape=(2,) if conditional else None, latent_dim=1,
                         hidden_dims=(4,), likelihood=likelihood, prior=prior)
    return CVAE(config).eval()


def _chains(chains: int, draws: int, facies: bool = False) -> Callable[[Any], bool]:
    """Check a latent-NUTS / facies-MCMC result: x (chains, draws, 3), finite (facies 0/1)."""

    def check(r: Any) -> bool:
        x = torch.as_tensor(r.x)
        ok = tuple(x.shape) == (chains, draws, 3) and bool(torch.isfinite(x).all())
        return ok and (not facies or bool(((x == 0) | (x == 1)).all()))

    return check


def _idata_shape(name: str, shape: tuple[int, ...]) -> Callable[[Any], bool]:
    """Check that the first returned InferenceData's posterior ``name`` has ``shape``."""

    def check(result: Any) -> bool:
        idata = result[0] if isinstance(result, tuple) else result
        values = np.asarray(idata.posterior[name].values)
        return tuple(values.shape) == shape and bool(np.isfinite(values).all())

    return check


def facies_smc_cases(add: Add, y0: torch.Tensor, nan_y: torch.Tensor, prior: Any, cvae: Any,
                     gaussian_prior: Any, other: Problem, w: World) -> None:
    """facies_smc_sample and sample_facies_smc (SMC of a generative facies prior), hostile calls."""
    from inference.facies_smc import facies_smc_sample, sample_facies_smc

    p = w.problem

    def smc(y: Any = y0, vae: Any = prior, problem: Any = p, **kw: Any) -> Any:
        options = {"num_particles": 8, "populations": 2, "steps_per_stage": 4, "final_steps": 4,
                   "flips_per_step": 1, "seed": 0, **kw}
        return facies_smc_sample(vae, problem, y, **options)

    def smc_file(y: Any = y0[None], num_samples: Any = 16, run: Any = cvae, gen: Any = prior,
                 problem: Any = p, **kw: Any) -> Any:
        options = {"steps_per_stage": 4, "final_steps": 4, "flips_per_step": 1, "seed": 0, **kw}
        return sample_facies_smc(run, gen, y, num_samples, problem, **options)

    ok = _chains(2, 8, facies=True)
    c = "facies_smc_sample"
    add(c, "y as numpy float64", lambda: smc(y=y0.double().numpy()), "accept", check=ok)
    add(c, "y as a Python list", lambda: smc(y=y0.tolist()), "accept", check=ok)
    add(c, "y of length 3", lambda: smc(y=torch.zeros(3)), "refuse", "y")
    add(c, "y a batch (1, 2)", lambda: smc(y=y0[None]), "refuse", "y")
    add(c, "y with NaN", lambda: smc(y=nan_y), "refuse", "nan")
    add(c, "y a string", lambda: smc(y="0.1 0.2"), "refuse", "y")
    for name in ("num_particles", "populations", "steps_per_stage", "final_steps", "max_stages"):
        add(c, f"{name}=0", lambda n=name: smc(**{n: 0}), "refuse", name)
        add(c, f"{name}=2.5", lambda n=name: smc(**{n: 2.5}), "refuse", name)
        add(c, f"{name}=True", lambda n=name: smc(**{n: True}), "refuse", name)
    add(c, "num_particles=10**12 huge", lambda: smc(num_particles=10**12), "refuse",
        "particles")
    add(c, "num_particles=np.int64(8)", lambda: smc(num_particles=np.int64(8)), "accept",
        check=ok)
    add(c, "steps_per_stage=3 (< 4)", lambda: smc(steps_per_stage=3), "refuse",
        "steps_per_stage")
    add(c, "ess_fraction=0", lambda: smc(ess_fraction=0.0), "refuse", "ess_fraction")
    add(c, "ess_fraction=1", lambda: smc(ess_fraction=1.0), "refuse", "ess_fraction")
    add(c, "ess_fraction='0.5'", lambda: smc(ess_fraction="0.5"), "refuse", "ess_fraction")
    add(c, "noncentred_moves=-1", lambda: smc(noncentred_moves=-1), "refuse",
        "noncentred_moves")
    add(c, "noncentred_moves=1.5", lambda: smc(noncentred_moves=1.5), "refuse",
        "noncentred_moves")
    add(c, "noncentred_moves=2", lambda: smc(noncentred_moves=2), "accept", check=ok)
    add(c, "waste_free='yes'", lambda: smc(waste_free="yes"), "refuse", "waste_free")
    add(c, "waste_free=1", lambda: smc(waste_free=1), "refuse", "waste_free")
    add(c, "waste_free with fewer particles than steps",
        lambda: smc(waste_free=True, num_particles=3), "refuse", "waste_free")
    add(c, "waste_free=True (2 chains x 4 states)", lambda: smc(waste_free=True), "accept",
        check=ok)
    add(c, "seed=-1", lambda: smc(seed=-1), "refuse", "seed")
    add(c, "seed=2**32-1 with 2 populations", lambda: smc(seed=2**32 - 1), "accept", check=ok)
    add(c, "a Gaussian generative prior", lambda: smc(vae=gaussian_prior), "refuse",
        "bernoulli or categorical")
    add(c, "a conditional CVAE as the prior", lambda: smc(vae=cvae), "refuse", "unconditional")
    add(c, "problem of another x_shape", lambda: smc(problem=other), "refuse", "x_shape")
    c = "sample_facies_smc"
    file_ok = _idata_shape("x", (2, 8, 1, 3))
    add(c, "y as numpy (1, 2)", lambda: smc_file(y=y0[None].numpy()), "accept", check=file_ok)
    add(c, "y one unbatched observation", lambda: smc_file(y=y0), "accept", check=file_ok)
    add(c, "y with NaN", lambda: smc_file(y=nan_y[None]), "refuse", "nan")
    add(c, "num_samples=6 (3 per population)", lambda: smc_file(num_samples=6), "refuse",
        "num_samples")
    add(c, "num_samples=8.5", lambda: smc_file(num_samples=8.5), "refuse", "num_samples")
    add(c, "populations=0", lambda: smc_file(populations=0), "refuse", "populations")
    add(c, "the two models swapped", lambda: smc_file(run=prior, gen=cvae), "refuse",
        "unconditional")
    add(c, "a Gaussian CVAE as the run", lambda: smc_file(run=w.cvae), "accept",
        check=file_ok)
    add(c, "x_true of event shape 4", lambda: smc_file(x_true=torch.zeros(1, 4)), "refuse",
        "x_true")


def generative_prior_cases(add: Add, w: World) -> None:
    """latent_nuts_sample, facies_mcmc_sample and their posterior-file forms, hostile calls."""
    from inference.facies_mcmc import facies_mcmc_sample, sample_facies_mcmc
    from inference.latent_mcmc import latent_nuts_sample, sample_latent_nuts

    p, y0 = w.problem, w.y[0]
    gaussian_prior = _tiny_vae("gaussian")
    facies_prior = _tiny_vae("bernoulli")
    facies_cvae = _tiny_vae("bernoulli", conditional=True)
    start = draw_posterior(w.cvae, y0, 8, seed=0).x[:, 0]
    codes = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float32)
    nan_y = torch.tensor([float("nan"), 0.0])
    other = LinearGaussian(x_dim=4, y_dim=2)

    def latent(y: Any = y0, init: Any = start, vae: Any = gaussian_prior, problem: Any = p,
               **kw: Any) -> Any:
        options = {"num_samples": 4, "warmup_steps": 2, "num_chains": 2, "seed": 0, **kw}
        return latent_nuts_sample(vae, problem, y, init, **options)

    def facies(y: Any = y0, init: Any = codes, vae: Any = facies_prior, problem: Any = p,
               **kw: Any) -> Any:
        options = {"num_samples": 4, "warmup_steps": 2, "num_chains": 2, "flips_per_step": 1,
                   "seed": 0, **kw}
        return facies_mcmc_sample(vae, problem, y, init, **options)

    def facies_file(y: Any = y0[None], num_samples: Any = 8, cvae: Any = facies_cvae,
                    prior: Any = facies_prior, problem: Any = p, **kw: Any) -> Any:
        options = {"chains": 2, "warmup_steps": 2, "flips_per_step": 1, "seed": 0, **kw}
        return sample_facies_mcmc(cvae, prior, y, num_samples, problem, **options)

    def latent_file(y: Any = y0[None], num_samples: Any = 8, **kw: Any) -> Any:
        options = {"chains": 2, "warmup_steps": 2, "seed": 0, **kw}
        return sample_latent_nuts(w.cvae, gaussian_prior, y, num_samples, p, **options)

    ok_latent, ok_facies = _chains(2, 4), _chains(2, 4, facies=True)
    for c, run, ok, init0 in (("latent_nuts_sample", latent, ok_latent, start),
                              ("facies_mcmc_sample", facies, ok_facies, codes)):
        add(c, "y as numpy float32", lambda run=run: run(y=y0.numpy()), "accept", check=ok)
        add(c, "y as numpy float64", lambda run=run: run(y=y0.double().numpy()), "accept",
            check=ok)
        add(c, "y as a Python list", lambda run=run: run(y=y0.tolist()), "accept", check=ok)
        add(c, "y as a float64 tensor", lambda run=run: run(y=y0.double()), "accept", check=ok)
        add(c, "init as numpy", lambda run=run, i=init0: run(init=i.numpy()), "accept", check=ok)
        add(c, "init as float64", lambda run=run, i=init0: run(init=i.double()), "accept",
            check=ok)
        add(c, "init as a Python list", lambda run=run, i=init0: run(init=i.tolist()), "accept",
            check=ok)
        add(c, "y of length 3", lambda run=run: run(y=torch.zeros(3)), "refuse", "y")
        add(c, "y a batch (1, 2)", lambda run=run: run(y=y0[None]), "refuse", "y")
        add(c, "y with NaN", lambda run=run: run(y=nan_y), "refuse", "nan")
        add(c, "y a string", lambda run=run: run(y="0.1 0.2"), "refuse", "y")
        add(c, "init of event shape 4", lambda run=run: run(init=torch.zeros(4, 4)), "refuse",
            "init")
        add(c, "init empty (0, 3)", lambda run=run: run(init=torch.zeros(0, 3)), "refuse",
            "init")
        add(c, "init one unbatched model (3,)", lambda run=run, i=init0: run(init=i[0]),
            "either", "init", check=_chains(1, 4, facies=run is facies))
        add(c, "init with NaN", lambda run=run: run(init=torch.full((4, 3), float("nan"))),
            "refuse", "init")
        add(c, "num_samples=2 (< 4)", lambda run=run: run(num_samples=2), "refuse",
            "num_samples")
        add(c, "num_samples=4.5", lambda run=run: run(num_samples=4.5), "refuse", "num_samples")
        add(c, "num_samples=True", lambda run=run: run(num_samples=True), "refuse",
            "num_samples")
        add(c, "num_samples='4'", lambda run=run: run(num_samples="4"), "refuse", "num_samples")
        add(c, "num_samples=np.int64(4)", lambda run=run: run(num_samples=np.int64(4)),
            "accept", check=ok)
        add(c, "num_samples=10**12 huge", lambda run=run: run(num_samples=10**12), "refuse",
            "num_samples")
        add(c, "warmup_steps=-1", lambda run=run: run(warmup_steps=-1), "refuse",
            "warmup_steps")
        add(c, "warmup_steps=1.5", lambda run=run: run(warmup_steps=1.5), "refuse",
            "warmup_steps")
        add(c, "num_chains=0", lambda run=run: run(num_chains=0), "refuse", "num_chains")
        add(c, "num_chains=2.0", lambda run=run: run(num_chains=2.0), "refuse", "num_chains")
        add(c, "num_chains=np.int64(2)", lambda run=run: run(num_chains=np.int64(2)), "accept",
            check=ok)
        add(c, "seed=-1", lambda run=run: run(seed=-1), "refuse", "seed")
        add(c, "seed=1.5", lambda run=run: run(seed=1.5), "refuse", "seed")
        add(c, "seed='abc'", lambda run=run: run(seed="abc"), "refuse", "seed")
        add(c, "seed=np.int64(3)", lambda run=run: run(seed=np.int64(3)), "accept", check=ok)
        add(c, "start='middle'", lambda run=run: run(start="middle"), "refuse", "start")
        add(c, "a conditional CVAE as the prior", lambda run=run: run(vae=w.cvae), "refuse",
            "unconditional")
        add(c, "not a model as the prior", lambda run=run: run(vae=object()), "refuse", "CVAE")
        add(c, "problem of another x_shape", lambda run=run: run(problem=other), "refuse",
            "x_shape")
    c = "latent_nuts_sample"
    add(c, "max_tree_depth=0", lambda: latent(max_tree_depth=0), "refuse", "max_tree_depth")
    # every seed as_seed accepts serves any number of chains (chain c: derived_seed(seed, c))
    add(c, "seed=2**32-1 with 2 chains", lambda: latent(seed=2**32 - 1), "accept",
        check=ok_latent)
    c = "facies_mcmc_sample"
    add(c, "init with a code 0.5", lambda: facies(init=codes + 0.5), "refuse", "facies codes")
    add(c, "init with a code 2 (two facies)", lambda: facies(init=codes * 2), "refuse",
        "facies codes")
    add(c, "init with a code -1", lambda: facies(init=-codes), "refuse", "facies codes")
    add(c, "init as int64 codes", lambda: facies(init=codes.long()), "accept", check=ok_facies)
    add(c, "init as bool codes", lambda: facies(init=codes.bool()), "accept", check=ok_facies)
    add(c, "flips_per_step=-1", lambda: facies(flips_per_step=-1), "refuse", "flips_per_step")
    add(c, "flips_per_step=1.5", lambda: facies(flips_per_step=1.5), "refuse", "flips_per_step")
    add(c, "batch_models=0", lambda: facies(batch_models=0), "refuse", "batch_models")
    add(c, "dtype='float32' (a string)", lambda: facies(dtype="float32"), "refuse", "dtype")
    add(c, "dtype=torch.int64", lambda: facies(dtype=torch.int64), "refuse", "dtype")
    add(c, "a Gaussian generative prior", lambda: facies(vae=gaussian_prior), "refuse",
        "bernoulli or categorical")

    add(c, "init_z of shape (4, 2) (latent 1)", lambda: facies(init_z=torch.zeros(4, 2)),
        "refuse", "init_z")
    add(c, "init_z with NaN", lambda: facies(init_z=torch.full((4, 1), float("nan"))),
        "refuse", "init_z")
    add(c, "init_z as numpy", lambda: facies(init_z=np.zeros((4, 1))), "accept",
        check=ok_facies)
    add(c, "init_z a string", lambda: facies(init_z="0 0 0 0"), "refuse", "init_z")
    add(c, "likelihood_power=0", lambda: facies(likelihood_power=0.0), "refuse",
        "likelihood_power")
    add(c, "likelihood_power=1.5", lambda: facies(likelihood_power=1.5), "refuse",
        "likelihood_power")
    add(c, "likelihood_power=True", lambda: facies(likelihood_power=True), "refuse",
        "likelihood_power")
    add(c, "noncentred_scale=0", lambda: facies(noncentred_scale=0.0), "refuse",
        "noncentred_scale")
    add(c, "noncentred_scale=inf", lambda: facies(noncentred_scale=float("inf")), "refuse",
        "noncentred_scale")
    add(c, "noncentred_scale='0.1'", lambda: facies(noncentred_scale="0.1"), "refuse",
        "noncentred_scale")
    add(c, "noncentred_scale=0.2 with 2 moves",
        lambda: facies(noncentred_scale=0.2, noncentred_moves=2), "accept", check=ok_facies)
    add(c, "likelihood_power=np.float64(0.5)", lambda: facies(likelihood_power=np.float64(0.5)),
        "accept", check=ok_facies)
    facies_smc_cases(add, y0, nan_y, facies_prior, facies_cvae, gaussian_prior, other, w)

    c = "sample_facies_mcmc"
    file_ok = _idata_shape("x", (2, 4, 1, 3))
    add(c, "y as numpy (1, 2)", lambda: facies_file(y=y0[None].numpy()), "accept", check=file_ok)
    add(c, "y as a list", lambda: facies_file(y=[y0.tolist()]), "accept", check=file_ok)
    add(c, "y one unbatched observation", lambda: facies_file(y=y0), "accept", check=file_ok)
    add(c, "y of length 3", lambda: facies_file(y=torch.zeros(1, 3)), "refuse", "(2,)")
    add(c, "y with NaN", lambda: facies_file(y=nan_y[None]), "refuse", "nan")
    add(c, "num_samples=0", lambda: facies_file(num_samples=0), "refuse", "num_samples")
    add(c, "num_samples=-8", lambda: facies_file(num_samples=-8), "refuse", "num_samples")
    add(c, "num_samples=8.5", lambda: facies_file(num_samples=8.5), "refuse", "num_samples")
    add(c, "num_samples=True", lambda: facies_file(num_samples=True), "refuse", "num_samples")
    add(c, "num_samples=10**12 huge", lambda: facies_file(num_samples=10**12), "refuse",
        "num_samples")
    add(c, "num_samples=np.int64(8)", lambda: facies_file(num_samples=np.int64(8)), "accept",
        check=file_ok)
    add(c, "chains=0", lambda: facies_file(chains=0), "refuse", "chains")
    add(c, "chains=1.5", lambda: facies_file(chains=1.5), "refuse", "chains")
    add(c, "warmup_steps=-1", lambda: facies_file(warmup_steps=-1), "refuse", "warmup_steps")
    add(c, "seed=-1", lambda: facies_file(seed=-1), "refuse", "seed")
    add(c, "seed=1.5", lambda: facies_file(seed=1.5), "refuse", "seed")
    add(c, "a conditional CVAE as the generative prior",
        lambda: facies_file(prior=facies_cvae), "refuse", "unconditional")
    add(c, "the two models swapped",
        lambda: facies_file(cvae=facies_prior, prior=facies_cvae), "refuse", "unconditional")
    add(c, "a Gaussian CVAE for the starts", lambda: facies_file(cvae=w.cvae), "refuse",
        "bernoulli or categorical")
    add(c, "problem of another x_shape", lambda: facies_file(problem=other), "refuse",
        "x_shape")
    add(c, "x_true of event shape 4", lambda: facies_file(x_true=torch.zeros(1, 4)), "refuse",
        "x_true")
    add(c, "x_true as numpy", lambda: facies_file(x_true=codes[:1].numpy()), "accept",
        check=file_ok)
    c = "sample_latent_nuts"
    add(c, "y as numpy", lambda: latent_file(y=y0[None].numpy()), "accept", check=file_ok)
    add(c, "y with NaN", lambda: latent_file(y=nan_y[None]), "refuse", "nan")
    add(c, "num_samples=2.5", lambda: latent_file(num_samples=2.5), "refuse", "num_samples")
    add(c, "chains=0", lambda: latent_file(chains=0), "refuse", "chains")
    add(c, "seed=-1", lambda: latent_file(seed=-1), "refuse", "seed")
    add(c, "x_true of event shape 4", lambda: latent_file(x_true=torch.zeros(1, 4)), "refuse",
        "x_true")


def file_and_evaluation_cases(add: Add, w: World) -> None:
    """sample_posterior_to_netcdf's arguments and evaluate_draws's inputs."""
    from inference.evaluate import evaluate_draws
    from inference.sample import sample_posterior_to_netcdf

    cvae, p, y0 = w.cvae, w.problem, w.y[0]
    names = iter(range(10**6))

    def to_file(y: Any = y0, num_samples: Any = 5, **kw: Any) -> Any:
        path = w.tmp / f"post{next(names)}.nc"
        return sample_posterior_to_netcdf(cvae, y, num_samples, path, problem=p, **kw)

    def draws_in_file(shape: tuple[int, ...]) -> Callable[[Any], bool]:
        def check(path: Any) -> bool:
            x = load_inference_data(path).posterior["x"].values
            return tuple(x.shape) == shape and bool(np.isfinite(x).all())

        return check

    c = "sample_posterior_to_netcdf"
    one = draws_in_file((1, 5, 1, 3))
    add(c, "num_samples=0", lambda: to_file(num_samples=0), "refuse", "num_samples")
    add(c, "num_samples=-1", lambda: to_file(num_samples=-1), "refuse", "num_samples")
    add(c, "num_samples=2.5", lambda: to_file(num_samples=2.5), "refuse", "num_samples")
    add(c, "num_samples='5'", lambda: to_file(num_samples="5"), "refuse", "num_samples")
    add(c, "num_samples=True", lambda: to_file(num_samples=True), "refuse", "num_samples")
    add(c, "num_samples=(5,)", lambda: to_file(num_samples=(5,)), "refuse", "num_samples")
    add(c, "num_samples=np.int64(5)", lambda: to_file(num_samples=np.int64(5)), "accept",
        check=one)
    add(c, "num_samples=10**12 huge", lambda: to_file(num_samples=10**12), "refuse",
        "num_samples")
    add(c, "seed=-1", lambda: to_file(seed=-1), "refuse", "seed")
    add(c, "seed=1.5", lambda: to_file(seed=1.5), "refuse", "seed")
    add(c, "seed='abc'", lambda: to_file(seed="abc"), "refuse", "seed")
    add(c, "seed=np.int64(3)", lambda: to_file(seed=np.int64(3)), "accept", check=one)
    add(c, "y as numpy", lambda: to_file(y=y0.numpy()), "accept", check=one)
    add(c, "y as a list", lambda: to_file(y=y0.tolist()), "accept", check=one)
    add(c, "y a stack (2, 2) as numpy", lambda: to_file(y=w.y[:2].numpy()), "accept",
        check=draws_in_file((1, 5, 2, 3)))
    add(c, "y of length 3", lambda: to_file(y=torch.zeros(3)), "refuse", "(2,)")
    add(c, "y (2, 3)", lambda: to_file(y=torch.zeros(2, 3)), "refuse", "(2,)")
    add(c, "y with NaN", lambda: to_file(y=torch.tensor([float("nan"), 0.0])), "refuse", "nan")
    add(c, "y a string", lambda: to_file(y="0.1 0.2"), "refuse", "y")
    add(c, "streamed in chunks (in_memory_bytes=0)",
        lambda: to_file(num_samples=7, in_memory_bytes=0, chunk_bytes=1), "accept",
        check=draws_in_file((1, 7, 1, 3)))
    add(c, "streamed with seed=-1", lambda: to_file(in_memory_bytes=0, seed=-1), "refuse",
        "seed")
    add(c, "chunk_bytes='1e6'", lambda: to_file(chunk_bytes="1e6", in_memory_bytes=0),
        "refuse", "chunk_bytes")
    add(c, "in_memory_bytes=-1.5", lambda: to_file(in_memory_bytes=-1.5), "refuse",
        "in_memory_bytes")

    c = "evaluate_draws"
    x, y = w.x, w.y
    draws = draw_posterior(cvae, y, 20, seed=0).x  # (20, 8, 3)
    ref = cvae.x_location_scale()[0].detach()

    def evaluate(x_draws: Any = draws, x: Any = x, y: Any = y, **kw: Any) -> Any:
        options = {"x_reference": ref, "problem": p, **kw}
        return evaluate_draws(x_draws, x, y, **options)

    def nan_at(t: torch.Tensor, index: tuple[int, ...]) -> torch.Tensor:
        t = t.clone()
        t[index] = float("nan")
        return t

    def metrics_ok(m: Any) -> bool:
        return isinstance(m, dict) and m.get("num_observations") == 8 and "calibration" in m

    def nan_noted(m: Any) -> bool:  # accepted, and the metrics say why SBC and TARP are absent
        notes = " ".join(m["calibration"]["notes"])
        return metrics_ok(m) and "NaN" in notes and "sbc" not in m["calibration"]

    add(c, "numpy draws, x and y", lambda: evaluate(draws.numpy(), x.numpy(), y.numpy(),
        x_reference=ref.numpy()), "accept", check=metrics_ok)
    add(c, "lists x and y", lambda: evaluate(x=x.tolist(), y=y.tolist()), "accept",
        check=metrics_ok)
    add(c, "float64 draws", lambda: evaluate(draws.double()), "accept", check=metrics_ok)
    add(c, "draws of event shape 4", lambda: evaluate(torch.zeros(20, 8, 4)), "refuse",
        "x_draws")
    add(c, "draws for 5 pairs, 8 truths", lambda: evaluate(draws[:, :5]), "refuse", "x_draws")
    add(c, "draws without a sample axis (8, 3)", lambda: evaluate(draws[0]), "refuse",
        "x_draws")
    add(c, "x of event shape 4", lambda: evaluate(x=torch.zeros(8, 4)), "refuse", "x")
    add(c, "8 x, 5 y", lambda: evaluate(y=y[:5]), "refuse", "y")
    add(c, "y of event shape 3", lambda: evaluate(y=torch.zeros(8, 3)), "refuse", "y")
    add(c, "x_reference of shape (4,)", lambda: evaluate(x_reference=torch.zeros(4)), "refuse",
        "x_reference")
    add(c, "NaN in x (a truth)", lambda: evaluate(x=nan_at(x, (0, 0))), "refuse", "nan")
    add(c, "NaN in y", lambda: evaluate(y=nan_at(y, (0, 0))), "refuse", "nan")
    add(c, "NaN in x_reference", lambda: evaluate(x_reference=nan_at(ref, (0,))), "refuse",
        "nan")
    add(c, "NaN in one draw", lambda: evaluate(nan_at(draws, (0, 0, 0))), "either", "nan",
        check=nan_noted)
    add(c, "all draws NaN", lambda: evaluate(torch.full_like(draws, float("nan"))), "either",
        "nan", check=nan_noted)
    add(c, "false_alarm=0", lambda: evaluate(false_alarm=0.0), "refuse", "false_alarm")
    add(c, "false_alarm='0.01'", lambda: evaluate(false_alarm="0.01"), "refuse",
        "false_alarm")
    add(c, "seed=-1", lambda: evaluate(seed=-1), "refuse", "seed")
    add(c, "seed=1.5", lambda: evaluate(seed=1.5), "refuse", "seed")
    add(c, "x_draws a string", lambda: evaluate("draws"), "refuse", "x_draws")


def plot_cases(add: Add, w: World) -> None:
    """The figures of inference.plots and inference.report with hostile arrays and files."""
    import xarray as xr
    from matplotlib.figure import Figure

    from inference import plots, report
    from inference.arviz_io import az

    idata = sample_posterior(w.cvae, w.y[:2], 6, problem=w.problem, x_true=w.x[:2])

    def without(group: str) -> Any:
        return az.InferenceData(**{g: idata[g] for g in idata.groups() if g != group})

    def nan_in(group: str, var: str) -> Any:
        copy = idata.copy()
        values = copy[group][var].values.copy()
        values[0, 0, 0, 0] = np.nan
        copy[group][var] = (copy[group][var].dims, values)
        return copy

    def is_figure(result: Any) -> bool:
        figures = result.values() if isinstance(result, dict) else [result]
        return all(isinstance(f, Figure) for f in figures)

    def noted(result: Any) -> bool:  # a figure whose title says what was left out
        figures = list(result.values()) if isinstance(result, dict) else [result]
        texts = [t for f in figures for t in (f.get_suptitle(), *(a.get_title() for a in f.axes))]
        return is_figure(result) and any("non-finite" in t for t in texts)

    def saved(path: Any) -> bool:
        return Path(path).is_file() and Path(path).stat().st_size > 0

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(20, 4))
    nan_draws = draws.copy()
    nan_draws[3, 1] = np.nan
    da = xr.DataArray(rng.normal(size=(20, 2, 3)), dims=("draw", "component", "frequency"),
                      coords={"frequency": [1.0, 10.0, 100.0]})
    da_nan = da.copy()
    da_nan[0, 0, 0] = np.nan
    out = w.tmp / "figures"
    out.mkdir()
    tops, depth = np.array([0.0, 10.0, 20.0, 30.0]), np.arange(4.0)

    c = "figures of a posterior file"
    add(c, "posterior_figures(var='nope')", lambda: report.posterior_figures(idata, var="nope"),
        "refuse", "nope")
    add(c, "posterior_figures(no posterior group)",
        lambda: report.posterior_figures(without("posterior")), "refuse", "posterior")
    add(c, "posterior_figures(observation=5 of 2)",
        lambda: report.posterior_figures(idata, observation=5), "refuse", "observation")
    add(c, "posterior_figures(observation=1.5)",
        lambda: report.posterior_figures(idata, observation=1.5), "refuse", "observation")
    add(c, "posterior_figures(observation=-1)",
        lambda: report.posterior_figures(idata, observation=-1), "either", "observation",
        check=is_figure)
    add(c, "posterior_figures(NaN in one draw)",
        lambda: report.posterior_figures(nan_in("posterior", "x")), "either", "nan",
        check=noted)
    add(c, "predictive_figure(no observed_data group)",
        lambda: report.predictive_figure(without("observed_data")), "refuse", "observed_data")
    add(c, "predictive_figure(no posterior_predictive)",
        lambda: report.predictive_figure(without("posterior_predictive")), "accept",
        check=lambda f: f is None)
    add(c, "predictive_figure(NaN in one y_rep)",
        lambda: report.predictive_figure(nan_in("posterior_predictive", "y")), "either", "nan",
        check=noted)
    add(c, "predictive_figure(observation=2 of 2)",
        lambda: report.predictive_figure(idata, observation=2), "refuse", "observation")
    add(c, "write_report(no posterior group)",
        lambda: report.write_report(without("posterior"), out / "r1"), "refuse", "posterior")
    add(c, "write_report(max_observations=-1)",
        lambda: report.write_report(idata, out / "r2", max_observations=-1), "refuse",
        "max_observations")

    c = "figures of arrays"
    add(c, "bands_figure(along='nope')", lambda: plots.bands_figure(da, along="nope"), "refuse",
        "nope")
    add(c, "bands_figure(a numpy array)", lambda: plots.bands_figure(da.values), "refuse",
        "draws")
    add(c, "bands_figure(no draw dim)", lambda: plots.bands_figure(da.isel(draw=0)), "refuse",
        "draw")
    add(c, "bands_figure(NaN in one draw)", lambda: plots.bands_figure(da_nan), "either", "nan",
        check=noted)
    add(c, "bands_figure(all draws NaN)", lambda: plots.bands_figure(da * np.nan), "refuse",
        "nan")
    add(c, "bands_figure(reference of other dims)",
        lambda: plots.bands_figure(da, reference=da.isel(draw=0, component=0)), "refuse",
        "reference")
    add(c, "bands_figure(interval=1.5)", lambda: plots.bands_figure(da, interval=1.5), "refuse",
        "interval")
    add(c, "profile_figure(depth 4, draws of 5)",
        lambda: plots.profile_figure(depth, rng.normal(size=(20, 5))), "refuse", "draws")
    add(c, "profile_figure(NaN in one draw)", lambda: plots.profile_figure(depth, nan_draws),
        "either", "nan", check=noted)
    add(c, "profile_figure(NaN depth)",
        lambda: plots.profile_figure(np.array([0.0, np.nan, 2.0, 3.0]), draws), "refuse",
        "depth")
    add(c, "profile_figure(truth of length 3)",
        lambda: plots.profile_figure(depth, draws, truth=np.zeros(3)), "refuse", "truth")
    add(c, "layered_profile_figure(NaN in one draw)",
        lambda: plots.layered_profile_figure(tops, nan_draws), "either", "nan", check=noted)
    add(c, "layered_profile_figure(NaN tops)",
        lambda: plots.layered_profile_figure(np.array([0.0, np.nan, 20.0, 30.0]), draws),
        "refuse", "tops")
    add(c, "layered_profile_figure(truth NaN)",
        lambda: plots.layered_profile_figure(tops, draws, truth=np.full(4, np.nan)), "refuse",
        "truth")
    add(c, "fields_figure(a 1-D panel)",
        lambda: plots.fields_figure({"mean": np.zeros(8)}, extent=(0, 8, 4, 0)), "refuse",
        "mean")
    add(c, "fields_figure(no panels)", lambda: plots.fields_figure({}, extent=(0, 8, 4, 0)),
        "refuse", "panels")
    add(c, "fields_figure(a NaN panel)",
        lambda: plots.fields_figure({"mean": np.full((4, 8), np.nan)}, extent=(0, 8, 4, 0),
                                    shared=["mean"]), "refuse", "mean")
    add(c, "plot_truth_vs_mean(shapes 4, 4, 3)",
        lambda: plots.plot_truth_vs_mean(np.zeros(4), np.zeros(4), np.zeros(3), out / "a.png"),
        "refuse", "std")
    add(c, "truth_vs_mean_figure(NaN in one mean)",
        lambda: plots.truth_vs_mean_figure(np.zeros(4), np.array([0.0, np.nan, 1.0, 2.0]),
                                           np.ones(4)), "either", "mean", check=noted)
    add(c, "plot_truth_vs_mean(NaN truth)",
        lambda: plots.plot_truth_vs_mean(np.full(4, np.nan), np.zeros(4), np.ones(4),
                                         out / "b.png"), "refuse", "truth")
    add(c, "plot_coverage(lengths 3 and 2)",
        lambda: plots.plot_coverage([0.5, 0.8, 0.9], [0.5, 0.8], out / "c.png"), "refuse",
        "empirical")
    add(c, "plot_coverage(NaN empirical)",
        lambda: plots.plot_coverage([0.5, 0.9], [np.nan, 0.9], out / "d.png"), "either", "nan",
        check=saved)
    add(c, "tarp_figure(NaN value)", lambda: plots.tarp_figure(np.array([0.1, np.nan, 0.7])),
        "refuse", "values")
    add(c, "tarp_figure(no values)", lambda: plots.tarp_figure(np.zeros(0)), "refuse", "values")
    add(c, "rank_ecdf_figure({})", lambda: plots.rank_ecdf_figure({}), "refuse", "normalised")
    add(c, "rank_ecdf_figure(NaN rank)",
        lambda: plots.rank_ecdf_figure({"x[0]": np.array([0.2, np.nan, 0.6])}), "refuse",
        "x[0]")
    add(c, "plot_pairs(2 names for 4 columns)",
        lambda: plots.plot_pairs(draws, ["a", "b"], out / "e.png"), "refuse", "names")
    add(c, "plot_pairs(NaN in one draw)",
        lambda: plots.plot_pairs(nan_draws, ["a", "b", "c", "d"], out / "f.png"), "either",
        "nan", check=saved)


def main(args: argparse.Namespace) -> int:
    """Run every case; print the table and the failures; return the exit status."""
    torch.manual_seed(args.seed)
    rows: dict[str, list[int]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(Path(tmp)):
            why = run_case(case)
            rows.setdefault(case.category, [0, 0])[0 if why is None else 1] += 1
            if why is not None:
                failures.append(f"[{case.category}] {case.name}: {why}")
    print_category_table(rows, failures)
    return 1 if failures else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    sys.exit(main(parser.parse_args()))
