"""Hostile and unusual calls to the Python API: refused with the package's errors, or handled.

The command-line audit (``benchmarks/hostile_inputs.py``) feeds the ``ppl-cvae`` command; this
script calls the Python entry points the way a notebook does (``CVAEPosterior``,
``draw_posterior``, ``sample_posterior``, ``importance_sample``, ``sample_corrected``,
``nuts_sample``, ``fit_problem``, ``evaluate_model``, ``load_checkpoint``, the ArviZ
helpers) with bad arguments and with unusual but reasonable ones. A bad call passes when it
raises an instance of :class:`ppl_cvae.errors.PplCvaeError` whose message contains a fragment
naming the argument;
an unusual call passes when it gives the right shapes and finite values (or, where the case
says so, a clear refusal). A raw torch/NumPy/Pyro error, a wrong-shaped result or a call that
runs past 60 s is a failure.

One tiny CVAE is fitted on ``LinearGaussian(x_dim=3, y_dim=2)`` (2 epochs of 256 pairs).

Run::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/api_audit.py

Runtime: about 10 s on one CPU thread (102 calls). Prints one table row per category and one
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

from inference import CVAEPosterior, draw_posterior, importance_sample
from inference.arviz_io import load_inference_data, save_inference_data
from inference.evaluate import evaluate_model
from inference.mcmc import nuts_sample
from inference.sample import CorrectionConfig, sample_corrected, sample_posterior
from ppl_cvae import LinearGaussian, fit_problem, load_checkpoint, save_checkpoint
from ppl_cvae.errors import PplCvaeError
from ppl_cvae.problems.base import Problem

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
    return out


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
