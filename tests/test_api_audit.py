"""The Python API's entry points refuse bad arguments with the package's errors, or accept them.

Pins the fixes of the API audit (``benchmarks/api_audit.py``): NumPy arrays, lists and float64
or integer observations are cast to float32 as sbi accepts them; counts, sample shapes and
seeds are checked before they reach torch or NumPy; a problem whose shapes are not the model's,
or whose ``sample_prior`` / ``forward`` return the wrong thing, is named. One tiny CVAE is
fitted per module (2 epochs of 256 pairs, about 2 s).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from inference import CVAEPosterior, draw_posterior, importance_sample
from inference.evaluate import evaluate_model
from inference.mcmc import nuts_sample
from inference.sample import CorrectionConfig, sample_corrected, sample_posterior
from ppl_cvae import CVAE, LinearGaussian, ModelConfig, build_cvae, fit_problem
from ppl_cvae.checks import as_count, as_real_tensor, as_sample_shape, as_seed
from ppl_cvae.errors import ConfigError, DataError, OutputError, ResourceError, ShapeError
from ppl_cvae.problems.base import Problem


@pytest.fixture(scope="module")
def trained() -> tuple[CVAE, LinearGaussian, torch.Tensor, torch.Tensor]:
    """A tiny CVAE on LinearGaussian(3, 2), with 8 simulated pairs (x, y)."""
    problem = LinearGaussian(x_dim=3, y_dim=2)
    cvae, _, _ = fit_problem(
        problem,
        model={"latent_dim": 2, "hidden_dims": (16,)},
        train={"num_epochs": 2, "num_train": 256, "seed": 0},
    )
    x, y = problem.simulate(8, torch.Generator().manual_seed(1))
    return cvae, problem, x, y


class _Mine(Problem):
    """A user's problem, misbehaving as ``kind`` says."""

    name = "mine"
    x_dims = ("parameter",)
    y_dims = ("datum",)
    coords: dict[str, Any] = {}

    def __init__(self, kind: str = "") -> None:
        self.kind = kind
        self.x_shape, self.y_shape = (3,), (2,)
        self.noise_std = self.misfit_std = 0.5
        self.matrix = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))

    def sample_prior(self, num: int, generator: torch.Generator | None = None) -> Any:
        x = torch.randn(num, 3, generator=generator)
        return x[:, :2] if self.kind == "prior_shape" else x

    def forward(self, x: torch.Tensor) -> Any:
        y = x @ self.matrix.T.to(x)
        if self.kind == "forward_shape":
            return y[..., :1]  # broadcast against the noise (num, 2) without the check
        if self.kind == "forward_numpy":
            return y.numpy()
        return y.double() if self.kind == "forward_float64" else y

    def spec(self) -> dict[str, Any]:
        return {"name": "mine"}


def _fit(problem: Problem) -> CVAE:
    train = {"num_epochs": 1, "num_train": 64}
    return fit_problem(problem, model={"hidden_dims": (8,)}, train=train)[0]


# ---------------------------------------------------------------- the checkers themselves


def test_checkers_accept_numpy_and_refuse_the_rest() -> None:
    assert as_count(np.int64(5), "n") == 5
    assert as_sample_shape(4) == (4,)
    assert as_seed(np.uint32(7)) == 7
    assert as_real_tensor([[1, 2]], "y").dtype == torch.float32
    assert as_real_tensor(np.zeros(2, dtype=np.int64), "y", dtype=None).dtype == torch.float32
    assert as_real_tensor(torch.zeros(2, dtype=torch.float64), "y", dtype=None).dtype == (
        torch.float64
    )
    with pytest.raises(ConfigError, match=r"num_samples must be an int >= 1, got 2\.5"):
        as_count(2.5, "num_samples")
    with pytest.raises(ConfigError, match="a sample shape such as"):
        as_count((5,), "num_samples")
    with pytest.raises(ConfigError, match="must be an int >= 1"):
        as_count(True, "num_samples")  # a bool is not a count
    with pytest.raises(ConfigError, match=r"sample_shape must be a tuple of ints >= 0"):
        as_sample_shape((-1,))
    with pytest.raises(ConfigError, match=r"seed must be an int in \[0, 2\*\*32 - 1\]"):
        as_seed(2**32)
    with pytest.raises(DataError, match="y is a builtins.str"):
        as_real_tensor("0.1 0.2", "y")
    with pytest.raises(DataError, match="dtype <U"):
        as_real_tensor(["a", "b"], "y")
    with pytest.raises(DataError, match="complex"):
        as_real_tensor(torch.zeros(2, dtype=torch.complex64), "y")
    with pytest.raises(DataError, match="meta device"):
        as_real_tensor(torch.zeros(2, device="meta"), "y")


# ---------------------------------------------------------------- observations y


@pytest.mark.parametrize(
    "convert",
    [
        lambda y: y.numpy(),
        lambda y: y.double().numpy(),
        lambda y: y.tolist(),
        lambda y: y.double(),
        lambda y: torch.stack([y, y + 1], dim=1)[:, 0],  # a non-contiguous view
    ],
    ids=["numpy32", "numpy64", "list", "float64", "strided"],
)
def test_sample_accepts_what_sbi_accepts_with_the_same_draws(trained: Any, convert: Any) -> None:
    cvae, problem, _, y = trained
    post = CVAEPosterior(cvae, problem=problem)
    expected = post.sample((4,), y[0], seed=3)
    draws = post.sample((4,), convert(y[0]), seed=3)
    assert draws.shape == (4, 3) and draws.dtype == torch.float32
    # the same float32 observation gives the same draws (float64 -> float32 is exact here,
    # y[0] being float32 to begin with)
    torch.testing.assert_close(draws, expected, rtol=0, atol=0)


def test_integer_y_and_batch_of_one(trained: Any) -> None:
    cvae, problem, _, y = trained
    post = CVAEPosterior(cvae, problem=problem)
    assert post.sample((4,), torch.tensor([1, -1])).shape == (4, 3)
    assert post.sample((4,), y[:1]).shape == (4, 1, 3)  # a stack of one keeps its axis
    default = CVAEPosterior(cvae).set_default_y(y[:1].numpy())  # stored without the axis
    assert default.default_y is not None and default.default_y.shape == (2,)


def test_bad_observations_are_named(trained: Any) -> None:
    cvae, _, _, _ = trained
    post = CVAEPosterior(cvae)
    with pytest.raises(DataError, match=r"no observations"):  # as an empty observation file
        post.sample((2,), torch.zeros(0, 2))
    with pytest.raises(DataError, match="complex"):
        post.sample((2,), torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(DataError, match=r"y is a builtins\.str"):
        draw_posterior(cvae, "0.1 0.2", 2)
    with pytest.raises(DataError, match="meta device"):
        draw_posterior(cvae, torch.zeros(2, device="meta"), 2)
    with pytest.raises(DataError, match="NaN or inf"):
        post.set_default_y(np.array([np.nan, 0.0]))


def test_sbi_spellings_of_the_observation_are_named() -> None:
    """An sbi user writes ``sample((n,), x=x_o)`` and ``set_default_x``: they raised a raw
    ``TypeError`` and ``AttributeError``; now the error says the observation is ``y`` here.
    A flat vector of scalar observations gets the reshape that fixes it."""
    problem = LinearGaussian(x_dim=2, y_dim=1)
    cvae = build_cvae(ModelConfig(x_shape=(2,), y_shape=(1,), latent_dim=1, hidden_dims=(8,)),
                      *problem.simulate(32, torch.Generator().manual_seed(0)), seed=0)
    post = CVAEPosterior(cvae)
    with pytest.raises(ConfigError, match=r"observation as y \(sbi calls it x; here x is the"):
        post.sample((2,), x=torch.zeros(1))
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_samples'"):
        post.sample((2,), num_samples=3)
    # sbi's log_prob(theta, x=x_o) was Python's "got multiple values for argument 'x'"
    with pytest.raises(ConfigError, match=r"log_prob\(theta, y=observation\)"):
        post.log_prob(torch.zeros(3, 2), x=torch.zeros(1))
    with pytest.raises(TypeError, match="unexpected keyword argument 'theta'"):
        post.log_prob(torch.zeros(3, 2), theta=torch.zeros(1))
    assert post.log_prob(torch.zeros(3, 2), y=torch.zeros(1), seed=0).shape == (3,)
    with pytest.raises(AttributeError, match="the observation is y here.*'set_default_y'"):
        post.set_default_x(torch.zeros(1))
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        post.nothing  # noqa: B018
    with pytest.raises(ShapeError, match=r"for 3 observations of one value each pass "
                       r"y\.reshape\(-1, 1\)"):  # fmt: skip
        post.sample((2,), torch.zeros(3))
    assert post.sample((2,), torch.zeros(3, 1)).shape == (2, 3, 2)
    one = build_cvae(ModelConfig(x_shape=(1,), y_shape=(1,), latent_dim=1, hidden_dims=(8,)),
                     torch.randn(32, 1), torch.randn(32, 1), seed=0)  # fmt: skip
    with pytest.raises(ShapeError, match=r"for 5 models of one value each pass x\.reshape"):
        CVAEPosterior(one).log_prob(torch.zeros(5), torch.zeros(1))


# ---------------------------------------------------------------- counts and sample shapes


def test_sample_shapes(trained: Any) -> None:
    cvae, _, _, y = trained
    post = CVAEPosterior(cvae)
    assert post.sample(5, y[0]).shape == (5, 3)  # an int n is (n,)
    assert post.sample((np.int64(5),), y[0]).shape == (5, 3)
    assert post.sample((0,), y[0]).shape == (0, 3)
    with pytest.raises(ConfigError, match="sample_shape"):
        post.sample((-1,), y[0])  # gave an empty (0, 3) before
    with pytest.raises(ConfigError, match="sample_shape"):
        post.sample((2.5,), y[0])


@pytest.mark.parametrize("bad", [2.5, "5", (5,), -5])
def test_draw_posterior_counts(trained: Any, bad: Any) -> None:
    cvae, _, _, y = trained
    with pytest.raises(ConfigError, match="num_samples must be an int >= 1"):
        draw_posterior(cvae, y[0], bad)


def test_numpy_count_accepted(trained: Any) -> None:
    cvae, _, _, y = trained
    assert draw_posterior(cvae, y[0], np.int64(5)).x.shape == (5, 1, 3)


# ---------------------------------------------------------------- log_prob


def test_log_prob_inputs(trained: Any) -> None:
    cvae, _, x, y = trained
    post = CVAEPosterior(cvae)
    reference = post.log_prob(x[:5], y[0], seed=0)
    for other in (x[:5].numpy(), x[:5].double(), x[:5].tolist()):
        torch.testing.assert_close(post.log_prob(other, y[0], seed=0), reference)
    one = post.log_prob(x[0], y[0], seed=0)  # one model without a batch axis is N = 1
    assert one.shape == (1,)
    torch.testing.assert_close(one, post.log_prob(x[:1], y[0], seed=0))
    assert post.log_prob(torch.zeros(0, 3), y[0]).shape == (0,)
    with pytest.raises(DataError, match="x contains 6 NaN"):
        post.log_prob(torch.full((2, 3), float("nan")), y[0])
    with pytest.raises(ConfigError, match="num_particles must be an int"):
        post.log_prob(x[:2], y[0], num_particles=2.5)
    with pytest.raises(ConfigError, match="seed must be an int"):
        post.log_prob(x[:2], y[0], seed=-1)


# ---------------------------------------------------------------- importance, NUTS


def test_importance_sample_inputs(trained: Any) -> None:
    cvae, problem, _, y = trained
    result = importance_sample(cvae, problem, y[0].numpy(), 64, seed=0)
    assert result.log_weight.shape == (64, 1)
    with pytest.raises(DataError, match="y contains 1 NaN"):
        importance_sample(cvae, problem, torch.tensor([[float("nan"), 0.0]]), 64)
    with pytest.raises(ConfigError, match="num_samples must be an int >= 2"):
        importance_sample(cvae, problem, y[:1], 2.5)
    with pytest.raises(ConfigError, match="seed must be an int"):
        importance_sample(cvae, problem, y[:1], 64, seed=-1)
    with pytest.raises(ShapeError, match=r"event shapes of problem 'linear_gaussian'.*x \(4,\)"):
        importance_sample(cvae, LinearGaussian(x_dim=4, y_dim=2), y[:1], 64)
    importance = CorrectionConfig(method="importance", proposals=64)
    with pytest.raises(ConfigError, match="got problem=None"):
        sample_corrected(cvae, y[0], 10, None, importance)  # type: ignore[arg-type]
    idata, _, _ = sample_corrected(
        cvae, y[0].numpy(), 10, problem, CorrectionConfig(method="importance", proposals=64)
    )
    assert idata.posterior["x"].shape == (1, 10, 1, 3)


def test_draw_posterior_checks_the_problem(trained: Any) -> None:
    cvae, _, _, y = trained
    with pytest.raises(ShapeError, match="event shapes of problem"):
        draw_posterior(cvae, y[0], 5, problem=LinearGaussian(x_dim=4, y_dim=2))
    with pytest.raises(ShapeError, match=r"forward returned \(5, 1, 1\).*expected a torch tensor"):
        draw_posterior(cvae, y[0], 5, problem=_Mine("forward_shape"))


def test_nuts_inputs(trained: Any) -> None:
    cvae, problem, _, y = trained
    init = draw_posterior(cvae, y[0], 16, seed=0).x[:, 0]
    kw: dict[str, Any] = {"num_samples": 4, "warmup_steps": 4, "num_chains": 2}
    result = nuts_sample(problem, y[0].numpy(), init.numpy(), seed=0, **kw)
    assert result.x.shape[-1] == 3 and bool(torch.isfinite(torch.as_tensor(result.x)).all())
    with pytest.raises(ConfigError, match="seed must be an int"):
        nuts_sample(problem, y[0], init, seed=-1, **kw)
    # chain 1 of the largest seed takes derived_seed(2**32 - 1, 1) = 0 (was refused)
    assert bool(torch.isfinite(nuts_sample(problem, y[0], init, seed=2**32 - 1, **kw).x).all())
    with pytest.raises(ShapeError, match=r"y has shape \(3,\)"):
        nuts_sample(problem, torch.zeros(3), init, **kw)
    with pytest.raises(DataError, match="y contains 1 NaN"):
        nuts_sample(problem, torch.tensor([float("nan"), 0.0]), init, **kw)


# ---------------------------------------------------------------- user problems, devices


@pytest.mark.parametrize(
    ("kind", "error", "fragment"),
    [
        ("forward_shape", ShapeError, r"forward returned \(64, 1\).*expected a torch tensor"),
        ("forward_numpy", DataError, "forward returned a numpy.ndarray"),
        ("prior_shape", ShapeError, r"sample_prior\(64\) returned \(64, 2\)"),
    ],
)
def test_fit_problem_checks_the_simulator(kind: str, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        _fit(_Mine(kind))


def test_fit_problem_casts_float64_simulations() -> None:
    cvae = _fit(_Mine("forward_float64"))
    assert draw_posterior(cvae, torch.zeros(2), 3).x.dtype == torch.float32


def test_devices_are_checked(trained: Any) -> None:
    cvae, _, _, _ = trained
    with pytest.raises(ConfigError, match="'nonsense' is not one of"):
        CVAEPosterior(cvae).to("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            CVAEPosterior(cvae).to("cuda")


def test_seeds(trained: Any) -> None:
    cvae, _, _, y = trained
    post = CVAEPosterior(cvae)
    torch.testing.assert_close(
        post.sample((3,), y[0], seed=np.int64(7)), post.sample((3,), y[0], seed=7)
    )
    for bad in (-1, 1.5, "abc", 2**40):
        with pytest.raises(ConfigError, match="seed must be an int in"):
            post.sample((3,), y[0], seed=bad)


def test_evaluate_model_and_x_true_inputs(trained: Any) -> None:
    cvae, problem, x, y = trained
    metrics, draws, _ = evaluate_model(cvae, x.numpy(), y.tolist(), num_samples=20)
    assert draws.shape == (20, 8, 3) and isinstance(metrics, dict)
    with pytest.raises(ShapeError, match="same batch size, got 8 and 4"):
        evaluate_model(cvae, x, y[:4], num_samples=20)  # was x_draws (20, 4, 3) vs x_true
    with pytest.raises(ConfigError, match="num_samples must be an int"):
        evaluate_model(cvae, x, y, num_samples=2.5)
    idata = sample_posterior(cvae, y[0], 5, problem=problem, x_true=x[0].numpy())
    assert idata.constant_data["x_true"].shape == (1, 3)
    assert np.allclose(idata.constant_data["x_true"].values[0], x[0].numpy())


# ---------------------------------------------------------------- generative-prior samplers


def _generative_prior(likelihood: str, conditional: bool = False) -> CVAE:
    """An untrained (seeded) VAE on x of shape (3,): unconditional, or a CVAE with y (2,)."""
    from ppl_cvae.config import ModelConfig

    torch.manual_seed(3)
    config = ModelConfig(
        x_shape=(3,), y_shape=(2,) if conditional else None, latent_dim=1, hidden_dims=(4,),
        likelihood=likelihood, prior="learned" if conditional else "standard_normal",
    )
    return CVAE(config).eval()


_CODES = torch.tensor([[0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float32)


def test_checkers_probability_finite_and_read_only_arrays() -> None:
    from ppl_cvae.checks import as_probability, check_finite

    assert as_probability(np.float32(0.25), "interval") == 0.25
    assert as_probability(1, "interval", allow_one=True) == 1.0
    for bad in (0.0, 1.0, "0.1", True, None, float("nan")):
        with pytest.raises(ConfigError, match=r"false_alarm must be in \(0, 1\)"):
            as_probability(bad, "false_alarm")
    with pytest.raises(DataError, match=r"init contains 2 NaN or inf values \(of 3\)"):
        check_finite(torch.tensor([float("nan"), 0.0, float("inf")]), "init")
    # a read-only array (xarray values, np.broadcast_to) gave torch's UserWarning (an error
    # under the suite's filterwarnings) before it was copied
    read_only = np.broadcast_to(np.arange(3.0), (2, 3))
    torch.testing.assert_close(as_real_tensor(read_only, "y"), torch.arange(3.0).expand(2, 3))


def test_latent_nuts_sample_inputs() -> None:
    from inference.latent_mcmc import latent_nuts_sample

    problem = LinearGaussian(x_dim=3, y_dim=2)
    vae = _generative_prior("gaussian")
    y = torch.tensor([0.3, -0.2])
    init = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    kw: dict[str, Any] = {"num_samples": 4, "warmup_steps": 2, "num_chains": 2}
    reference = latent_nuts_sample(vae, problem, y, init, seed=5, **kw)
    # NumPy arrays and lists of the same float32 values are the same chains (seed 5)
    for y_in, init_in in ((y.numpy(), init.numpy()), (y.tolist(), init.tolist())):
        again = latent_nuts_sample(vae, problem, y_in, init_in, seed=np.int64(5), **kw)
        torch.testing.assert_close(again.z, reference.z, rtol=0, atol=0)
    with pytest.raises(DataError, match="y contains 1 NaN"):
        latent_nuts_sample(vae, problem, torch.tensor([float("nan"), 0.0]), init, **kw)
    with pytest.raises(DataError, match="init contains 3 NaN"):
        latent_nuts_sample(vae, problem, y, torch.cat([init, torch.full((1, 3), np.nan)]), **kw)
    for name, bad in (("num_samples", 4.5), ("num_chains", 2.0), ("warmup_steps", "2")):
        with pytest.raises(ConfigError, match=f"{name} must be an int"):
            latent_nuts_sample(vae, problem, y, init, **{**kw, name: bad})
    with pytest.raises(ConfigError, match=r"seed must be an int in \[0, 2\*\*32 - 1\]"):
        latent_nuts_sample(vae, problem, y, init, seed=-1, **kw)  # was Pyro's ValueError
    # the largest seed serves two chains too (chain 1: derived_seed(2**32 - 1, 1) = 0)
    assert latent_nuts_sample(vae, problem, y, init, seed=2**32 - 1, **kw).z.shape[:2] == (2, 4)
    with pytest.raises(ResourceError, match=r"num_samples=1000000000000 draws"):
        latent_nuts_sample(vae, problem, y, init, **{**kw, "num_samples": 10**12})


def test_facies_mcmc_sample_inputs() -> None:
    from inference.facies_mcmc import facies_mcmc_sample

    problem = LinearGaussian(x_dim=3, y_dim=2)
    vae = _generative_prior("bernoulli")
    y = torch.tensor([0.3, -0.2])
    kw: dict[str, Any] = {"num_samples": 4, "warmup_steps": 2, "num_chains": 2, "seed": 1}
    reference = facies_mcmc_sample(vae, problem, y, _CODES, **kw)
    for y_in, init_in in (
        (y.numpy(), _CODES.numpy()),
        (y.tolist(), _CODES.tolist()),
        (y.double(), _CODES.long()),
        (y, _CODES.bool()),
    ):
        again = facies_mcmc_sample(vae, problem, y_in, init_in, **kw)
        torch.testing.assert_close(again.x, reference.x, rtol=0, atol=0)
    with pytest.raises(DataError, match="y contains 1 NaN"):  # was torch.multinomial's error
        facies_mcmc_sample(vae, problem, torch.tensor([float("nan"), 0.0]), _CODES, **kw)
    for dtype in ("float32", torch.int64):  # a string crashed in .to; int64 ran silently
        with pytest.raises(ConfigError, match="dtype must be a floating torch.dtype"):
            facies_mcmc_sample(vae, problem, y, _CODES, dtype=dtype, **kw)
    with pytest.raises(ResourceError, match=r"num_samples=1000000000000 steps"):
        facies_mcmc_sample(vae, problem, y, _CODES, **{**kw, "num_samples": 10**12})


def test_sample_facies_mcmc_counts_are_named() -> None:
    from inference.facies_mcmc import sample_facies_mcmc

    problem = LinearGaussian(x_dim=3, y_dim=2)
    cvae = _generative_prior("bernoulli", conditional=True)
    prior = _generative_prior("bernoulli")
    kw: dict[str, Any] = {"chains": 2, "warmup_steps": 2, "flips_per_step": 1, "seed": 0}
    y = np.zeros((1, 2), dtype=np.float64)
    idata, _, _ = sample_facies_mcmc(cvae, prior, y, np.int64(8), problem, **kw)
    assert idata.posterior["x"].shape == (2, 4, 1, 3)
    # 8.5 ran 2 chains of 5; 0 and True said "0 draws in 2 chains" without the argument
    for bad in (8.5, True, 0):
        with pytest.raises(ConfigError, match="num_samples must be an int >= 1"):
            sample_facies_mcmc(cvae, prior, y, bad, problem, **kw)
    with pytest.raises(ConfigError, match="num_samples=6 draws in 2 chains"):
        sample_facies_mcmc(cvae, prior, y, 6, problem, **kw)
    with pytest.raises(ConfigError, match="chains must be an int >= 1"):
        sample_facies_mcmc(cvae, prior, y, 8, problem, **{**kw, "chains": 1.5})


# ---------------------------------------------------------------- files, evaluation, figures


def test_sample_posterior_to_netcdf_arguments(trained: Any, tmp_path: Any) -> None:
    from inference.arviz_io import load_inference_data
    from inference.sample import sample_posterior_to_netcdf

    cvae, problem, _, y = trained
    kw: dict[str, Any] = {"problem": problem, "seed": 3}
    a = sample_posterior_to_netcdf(cvae, y[0], 5, tmp_path / "a.nc", **kw)
    b = sample_posterior_to_netcdf(cvae, y[0].tolist(), np.int64(5), tmp_path / "b.nc", **kw)
    xa = load_inference_data(a).posterior["x"].values
    np.testing.assert_array_equal(load_inference_data(b).posterior["x"].values, xa)
    # "5" and (5,) were raw TypeErrors; -1.5 bytes was accepted
    for name, bad in (("num_samples", "5"), ("num_samples", (5,)), ("seed", -1),
                      ("chunk_bytes", "1e6"), ("in_memory_bytes", -1.5)):
        args = {"num_samples": 5, **kw, name: bad}
        num = args.pop("num_samples")
        with pytest.raises(ConfigError, match=f"{name} must be an int"):
            sample_posterior_to_netcdf(cvae, y[0], num, tmp_path / "c.nc", **args)
    with pytest.raises(OutputError, match="num_samples=1000000000000 posterior draws"):
        sample_posterior_to_netcdf(cvae, y[0], 10**12, tmp_path / "d.nc", **kw)
    assert not (tmp_path / "c.nc").exists() and not (tmp_path / "d.nc").exists()


def test_evaluate_draws_inputs(trained: Any) -> None:
    from inference.evaluate import evaluate_draws

    cvae, problem, x, y = trained
    draws = draw_posterior(cvae, y, 20, seed=0).x
    ref = cvae.x_standardiser.mean.detach()
    kw: dict[str, Any] = {"x_reference": ref, "problem": problem}
    metrics = evaluate_draws(draws, x, y, **kw)
    again = evaluate_draws(draws.numpy(), x.tolist(), y.numpy(), problem=problem,
                           x_reference=ref.numpy())
    for key in ("rmse_posterior_mean", "coverage_90"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6)
    with pytest.raises(ShapeError, match=r"y must have shape \(M, \*y_shape\) with M = 8"):
        evaluate_draws(draws, x, y[:5], **kw)  # was a raw broadcasting RuntimeError
    with pytest.raises(ShapeError, match=r"y must have shape \(M, 2\)"):
        evaluate_draws(draws, x, torch.zeros(8, 3), **kw)
    bad_x = x.clone()
    bad_x[0, 0] = float("nan")
    with pytest.raises(DataError, match="x contains 1 NaN"):  # was accepted, NaN metrics
        evaluate_draws(draws, bad_x, y, **kw)
    with pytest.raises(ConfigError, match=r"false_alarm must be in \(0, 1\)"):
        evaluate_draws(draws, x, y, false_alarm="0.01", **kw)  # was a raw TypeError
    nan_draws = draws.clone()
    nan_draws[0, 0, 0] = float("nan")
    noted = evaluate_draws(nan_draws, x, y, **kw)  # accepted, and the notes say why
    assert "sbc" not in noted["calibration"] and "NaN" in noted["calibration"]["notes"][0]


def test_figures_leave_out_non_finite_draws_and_say_so() -> None:
    from inference.plots import bands_figure, profile_figure, truth_vs_mean_figure

    draws = np.random.default_rng(0).normal(size=(41, 3))
    broken = draws.copy()
    broken[7, 1] = np.nan
    fig = profile_figure(np.arange(3.0), broken)
    median = fig.axes[0].lines[0].get_xdata()
    # the median of the 40 finite draws at depth 1 (np.quantile gave NaN: no line there)
    assert median[1] == pytest.approx(np.median(np.delete(draws[:, 1], 7)))
    assert median[0] == pytest.approx(np.median(draws[:, 0]))
    assert "1 of 123 values of draws non-finite" in fig.axes[0].get_title()
    assert "non-finite" not in profile_figure(np.arange(3.0), draws).axes[0].get_title()
    import xarray as xr

    da = xr.DataArray(broken, dims=("draw", "depth"))
    assert "non-finite" in bands_figure(da).get_suptitle()
    with pytest.raises(DataError, match="no finite draw at 3 of 3 points"):
        bands_figure(da * np.nan)
    with pytest.raises(ConfigError, match="along='nope' is not an event dim"):
        bands_figure(da, along="nope")
    with pytest.raises(ShapeError, match=r"truth must have shape \(3,\)"):
        profile_figure(np.arange(3.0), draws, truth=np.zeros(2))
    fig = truth_vs_mean_figure(np.zeros(4), np.array([0.0, np.nan, 1.0, 2.0]), np.ones(4))
    assert "1 of 4 elements" in fig.axes[0].get_title()


def test_report_names_missing_groups_and_bad_observations(trained: Any, tmp_path: Any) -> None:
    from inference.arviz_io import az
    from inference.plots import rank_ecdf_figure
    from inference.report import posterior_figures, predictive_figure, write_report

    cvae, problem, _, y = trained
    idata = sample_posterior(cvae, y[:2], 6, problem=problem, seed=0)

    def without(group: str) -> Any:
        return az.InferenceData(**{g: idata[g] for g in idata.groups() if g != group})

    with pytest.raises(DataError, match="no 'posterior' group"):
        posterior_figures(without("posterior"))  # was a raw KeyError
    with pytest.raises(DataError, match="no 'observed_data' group"):
        predictive_figure(without("observed_data"))
    with pytest.raises(ConfigError, match=r"observation=2 is out of range.*0 \.\. 1"):
        posterior_figures(idata, observation=2)  # was a raw IndexError
    with pytest.raises(ConfigError, match="max_observations must be an int >= 0"):
        write_report(idata, tmp_path / "report", max_observations=-1)
    assert not (tmp_path / "report").exists()
    with pytest.raises(ConfigError, match="normalised holds no ranks"):  # was a ValueError
        rank_ecdf_figure({})


def test_device_message_fits_python_and_the_command_line(monkeypatch: Any) -> None:
    from ppl_cvae.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available") as info:
        resolve_device("cuda")
    assert "device='cpu'" in str(info.value) and "--device cpu" in str(info.value)


def test_objects_of_the_wrong_type_are_named(trained: Any, tmp_path: Any) -> None:
    """Before: raw AttributeErrors from deep inside ("'dict' object has no attribute
    'num_epochs'", "'PosixPath' object has no attribute 'config'"), against the README's
    promise of one line naming the bad argument."""
    from ppl_cvae import TrainConfig, fit
    from ppl_cvae.train import save_checkpoint

    cvae, _, x, y = trained
    for call, fragment in (
        (lambda: fit(cvae, x, y, {"num_epochs": 1}),
         "fit()'s config must be a TrainConfig, got a dict; build it from a dict of settings "
         "with TrainConfig(**settings)"),
        (lambda: fit(cvae, x, y, None), "fit()'s config must be a TrainConfig, got None"),
        (lambda: fit(None, x, y, TrainConfig()), "fit()'s cvae must be a CVAE, got None"),
        (lambda: build_cvae({"x_shape": (3,)}, x, y),
         "build_cvae()'s config must be a ModelConfig, got a dict"),
        (lambda: save_checkpoint(cvae, tmp_path / "m.pt"),
         "call save_checkpoint(path, cvae)"),
        (lambda: save_checkpoint(tmp_path / "m.pt", None),
         "save_checkpoint()'s cvae must be a CVAE, got None"),
        (lambda: CVAEPosterior(None), "CVAEPosterior's cvae must be a CVAE, got None"),
        (lambda: sample_posterior(cvae.state_dict(), y, 5),
         "sample_posterior()'s cvae must be a CVAE, got a OrderedDict"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            call()
        assert fragment in str(info.value)
    assert not (tmp_path / "m.pt").exists()


def test_y_given_to_an_unconditional_model_is_refused() -> None:
    """Before: ignored in silence by build_cvae and fit (the user meant a CVAE)."""
    from ppl_cvae import TrainConfig, fit

    x = torch.randn(32, 3)
    y = torch.randn(32, 2)
    config = ModelConfig(x_shape=(3,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                         prior="standard_normal")
    with pytest.raises(ShapeError, match=r"build_cvae got y of shape \(32, 2\) for an "
                       "unconditional model"):  # fmt: skip
        build_cvae(config, x, y)
    vae = build_cvae(config, x, None)
    with pytest.raises(ShapeError, match="fit got y of shape"):
        fit(vae, x, y, TrainConfig(num_epochs=1), progress=False)


def test_a_file_of_x_alone_is_fitted_as_a_generative_prior_from_the_command_line(
    tmp_path: Any, capsys: Any
) -> None:
    """A file of models without ``y`` (prior draws, training images) fits an unconditional VAE
    with ``fit --data FILE --unconditional``; before, the command line refused it ("missing
    ['y']") and named Python calls. Checked against theory: ``x ~ N((3, -2), diag(0.5, 2)^2)``,
    whose entropy, 2.838 nats, bounds the expected negative ELBO from below; the validation
    loss (400 held-out models, its sampling sd about 0.05 nats) lies within 0.35 nats above it,
    and the VAE's own draws have the data's means and sds."""
    import arviz as az

    from ppl_cvae.cli import main
    from ppl_cvae.data.io import load_pairs

    rng = np.random.default_rng(0)
    x = rng.normal([3.0, -2.0], [0.5, 2.0], size=(4000, 2)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    with pytest.raises(DataError, match=r"missing \['y'\]\); a file of x alone") as info:
        load_pairs(tmp_path / "x.npz")
    assert "ppl-cvae fit --data FILE --unconditional" in str(info.value)
    run = tmp_path / "prior"
    assert main(["fit", "--data", str(tmp_path / "x.npz"), "--unconditional", "--out", str(run),
                 "--epochs", "30", "--seed", "0", "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    val = float(out.split("validation loss ")[1].split(" ")[0])
    entropy = 0.5 * np.log(2 * np.pi * np.e * np.array([0.25, 4.0])).sum()
    assert entropy - 0.2 < val < entropy + 0.35, (val, entropy)
    gen = tmp_path / "gen.nc"
    assert main(["sample", str(run), "--num-samples", "4000", "--seed", "1", "--out", str(gen),
                 "--threads", "1"]) == 0
    draws = az.from_netcdf(gen)["prior"]["x"].values.reshape(-1, 2)
    np.testing.assert_allclose(draws.mean(0), [3.0, -2.0], atol=0.15)
    np.testing.assert_allclose(draws.std(0) / [0.5, 2.0], 1.0, atol=0.15)
    # read whole, not in chunks; a dataset's images use --condition none
    np.save((tmp_path / "folder").mkdir() or tmp_path / "folder" / "x.npy", x)
    np.save(tmp_path / "folder" / "y.npy", x)
    capsys.readouterr()
    assert main(["fit", "--data", str(tmp_path / "folder"), "--unconditional", "--out",
                 str(tmp_path / "lazy"), "--threads", "1"]) == 2
    assert "reads the models of" in capsys.readouterr().err
