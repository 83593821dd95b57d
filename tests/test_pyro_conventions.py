"""The CVAE's model and guide inside a Pyro user's own tooling (the sixteenth audit).

Each test states what a Pyro user expects of ``pyro.module``-style programs: the param store
holds the tensors the networks compute with (also for copies and for a store loaded from a
file), ``fit`` leaves the user's own ``pyro.param`` sites alone, the data plate refuses an
enclosing subsample plate instead of broadcasting into a ``(B, B)`` batch, vectorized
particles work for every decoder, bad arguments raise the package's errors, and unseeded
Monte Carlo estimates draw fresh particles.
"""

from __future__ import annotations

import copy

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from inference import CVAEPosterior
from ppl_cvae import LinearGaussian, ModelConfig, TrainConfig, build_cvae, fit
from ppl_cvae.errors import ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")


def _make(seed: int = 0, **model):
    problem = LinearGaussian(x_dim=3, y_dim=2)
    x, y = problem.simulate(256, torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(16,), **model)
    return problem, build_cvae(config, x, y, problem=problem, seed=seed), x, y


def _weights(cvae) -> list[torch.Tensor]:
    return [p.detach().clone() for p in cvae.parameters()]


def _changed(before, cvae) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, cvae.parameters(), strict=True))


def _steps(cvae, x, y, num=5) -> list[float]:
    svi = SVI(cvae.model, cvae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    return [svi.step(y, x) for _ in range(num)]


def test_svi_on_a_deep_copy_trains_the_copy():
    """The copy used to keep the original's param-store names: SVI then trained nothing."""
    pyro.clear_param_store()
    _, cvae, x, y = _make()
    _steps(cvae, x, y)
    twin = copy.deepcopy(cvae)
    assert twin.pyro_name != cvae.pyro_name
    original, copied = _weights(cvae), _weights(twin)
    _steps(twin, x, y)
    assert _changed(copied, twin) and not _changed(original, cvae)


def test_a_loaded_param_store_sets_the_weights_it_holds():
    """``pyro.get_param_store().set_state`` (its ``load``) gives the module the stored values."""
    pyro.clear_param_store()
    _, trained, x, y = _make(seed=0)
    _steps(trained, x, y, num=20)
    state = pyro.get_param_store().get_state()
    _, fresh, _, _ = _make(seed=1)
    prefix = f"{trained.pyro_name}$$$"
    state["params"] = {
        name.replace(prefix, f"{fresh.pyro_name}$$$"): value
        for name, value in state["params"].items()
    }
    state["constraints"] = {
        name.replace(prefix, f"{fresh.pyro_name}$$$"): value
        for name, value in state["constraints"].items()
    }
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state)
    poutine.trace(fresh.guide).get_trace(y, x)
    poutine.trace(fresh.model).get_trace(y, x)
    for a, b in zip(trained.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    store = pyro.get_param_store()
    assert all(store[f"{fresh.pyro_name}$$${n}"] is p for n, p in fresh.named_parameters())
    before = _weights(fresh)
    _steps(fresh, x, y)
    assert _changed(before, fresh)  # SVI now optimises the module's own tensors


def test_a_stored_tensor_of_another_shape_is_refused():
    pyro.clear_param_store()
    _, cvae, x, y = _make()
    name = next(n for n, _ in cvae.named_parameters() if n.startswith("decoder."))
    pyro.param(f"{cvae.pyro_name}$$${name}", torch.zeros(7))
    with pytest.raises(ConfigError, match="holds another model's parameters"):
        poutine.trace(cvae.model).get_trace(y, x)
    pyro.clear_param_store()


def test_fit_keeps_the_users_own_param_store_entries():
    pyro.clear_param_store()
    sigma = pyro.param("my_sigma", torch.tensor(4.5))
    problem, cvae, x, y = _make()
    _steps(cvae, x, y, num=1)
    stale = cvae.pyro_name
    del cvae  # a model no longer alive: its entries go at the next fit
    _, other, x, y = _make()
    fit(other, x, y, config=TrainConfig(num_epochs=1, batch_size=64), progress=False)
    store = pyro.get_param_store()
    assert "my_sigma" in store and store["my_sigma"] is sigma
    assert not [n for n in store.keys() if n.startswith(f"{stale}$$$")]
    pyro.clear_param_store()


def test_an_enclosing_subsample_plate_is_refused_not_broadcast():
    """Pyro's ``subsample_size`` idiom around the model gave a ``(B, B)`` batch, B-fold loss."""
    _, cvae, x, y = _make()
    trace = poutine.trace(cvae.model).get_trace(y[:8], x[:8])
    assert trace.nodes["batch"]["value"].shape == (8,)
    assert trace.nodes["x"]["cond_indep_stack"][0].dim == -1

    def subsampled(y, x):
        with pyro.plate("data", len(y), subsample_size=32) as idx:
            return cvae.model(y[idx], x[idx])

    with pytest.raises(ValueError, match="collide at dim=-1"):
        poutine.trace(subsampled).get_trace(y, x)


@pytest.mark.parametrize("likelihood", ["gaussian", "flow"])
def test_vectorized_particles_work_for_every_decoder(likelihood):
    """A flow decoder's ``log_prob`` did not broadcast ``x`` against ``(K, batch)``."""
    pyro.clear_param_store()
    _, cvae, x, y = _make(likelihood=likelihood, flow_layers=1, flow_hidden_dims=(8,))
    z = torch.randn(3, 5, 2)
    d, _ = cvae.x_distribution(z, y[:5])
    broadcast, expanded = d.log_prob(x[:5]), d.log_prob(x[:5].expand(3, 5, 3))
    assert broadcast.shape == (3, 5)
    torch.testing.assert_close(broadcast, expanded)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    loss = elbo.loss(cvae.model, cvae.guide, y[:16], x[:16])
    assert torch.isfinite(torch.tensor(loss))


@pytest.mark.parametrize("bad, match", [
    (lambda y: y.double(), "dtype torch.float64 but the model's parameters are torch.float32"),
    (lambda y: y.numpy(), "must be a torch.Tensor, got ndarray"),
    (lambda y: y[:0], "at least one pair"),
])  # fmt: skip
def test_bad_program_arguments_raise_the_packages_errors(bad, match):
    """float64 tensors, NumPy arrays and empty batches gave RuntimeError, AttributeError and
    ZeroDivisionError from inside the networks."""
    _, cvae, x, y = _make()
    xs = x if match != "at least one pair" else x[:0]
    for program in (cvae.model, cvae.guide):
        with pytest.raises(ShapeError, match=match):
            program(bad(y), xs)


def test_unseeded_log_prob_and_initialisation_draw_fresh_randomness():
    """Without a seed both used a forked global RNG and repeated the same draws."""
    problem, cvae, x, y = _make()
    posterior = CVAEPosterior(cvae, problem=problem)
    a = posterior.log_prob(x[:4], y[:4], num_particles=4)
    b = posterior.log_prob(x[:4], y[:4], num_particles=4)
    assert not torch.equal(a, b)
    seeded = [posterior.log_prob(x[:4], y[:4], num_particles=4, seed=3) for _ in range(2)]
    assert torch.equal(*seeded)
    config = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(16,))
    first, second = (build_cvae(config, x, y, seed=None) for _ in range(2))
    assert _changed(_weights(first), second)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), "1"])
def test_a_kl_weight_that_is_not_positive_is_refused(weight):
    """0 gave Pyro's "Expected scale > 0 but got 0.0" from inside poutine.scale."""
    _, cvae, x, y = _make()
    for program in (cvae.model, cvae.guide):
        with pytest.raises(ConfigError, match="kl_weight .* must be > 0"):
            program(y, x, kl_weight=weight)


def test_weights_loaded_with_assign_are_the_ones_svi_trains():
    """``load_state_dict(assign=True)`` replaces the parameters; the cached sites kept the old
    ones, so SVI trained tensors the networks no longer used (the eighteenth audit)."""
    pyro.clear_param_store()
    _, cvae, x, y = _make()
    _steps(cvae, x, y, num=1)
    state = {k: v.clone() for k, v in cvae.state_dict().items()}
    cvae.load_state_dict(state, assign=True)
    before = _weights(cvae)
    _steps(cvae, x, y)
    assert _changed(before, cvae)


def test_a_trained_model_pickles_whole_as_torch_save_does(tmp_path):
    """``torch.save(cvae)`` after SVI used to fail on the param store's weakref on each weight.

    The loaded model has the trained weights, computes the same ELBO on the same particles,
    takes a param-store name of its own and trains under SVI without touching the original.
    """
    pyro.clear_param_store()
    _, cvae, x, y = _make()
    _steps(cvae, x, y)
    path = tmp_path / "cvae.pt"
    torch.save(cvae, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded.pyro_name != cvae.pyro_name
    assert not _changed(_weights(cvae), loaded)
    elbo = Trace_ELBO(num_particles=4)
    losses = []
    for model in (cvae, loaded):
        pyro.set_rng_seed(3)
        losses.append(elbo.loss(model.model, model.guide, y, x))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    original, copied = _weights(cvae), _weights(loaded)
    _steps(loaded, x, y)
    assert _changed(copied, loaded) and not _changed(original, cvae)
    _steps(cvae, x, y)  # the original still trains: its param-store entries work
    assert _changed(original, cvae)


def _stream_after(call) -> torch.Tensor:
    """The global torch RNG's next values after ``call()``, from a fixed state."""
    torch.manual_seed(5)
    call()
    return torch.rand(4)


def test_seeded_draws_leave_the_callers_global_rng_alone(tmp_path):
    """A seeded draw used to re-seed the global RNGs (``pyro.set_rng_seed``): a training loop
    with one seeded monitoring draw per epoch then shuffled the same way every epoch; loading
    a checkpoint advanced the stream (twenty-third audit). The draws stay reproducible."""
    from inference import draw_posterior
    from inference.generate import generate
    from inference.mcmc import nuts_sample
    from ppl_cvae import load_checkpoint, save_checkpoint

    problem, cvae, x, y = _make()
    untouched = _stream_after(lambda: None)
    post = CVAEPosterior(cvae, problem=problem)
    assert torch.equal(_stream_after(lambda: post.sample((8,), y[0], seed=0)), untouched)
    assert torch.equal(post.sample((8,), y[0], seed=0), post.sample((8,), y[0], seed=0))
    assert torch.equal(_stream_after(lambda: draw_posterior(cvae, y[:2], 8, seed=3)), untouched)
    path = save_checkpoint(tmp_path / "m.pt", cvae, problem=problem)
    assert torch.equal(_stream_after(lambda: load_checkpoint(path)), untouched)
    init = post.sample((20,), y[0], seed=1)
    def run():
        return nuts_sample(problem, y[0], init, num_samples=8, warmup_steps=8, num_chains=2)

    assert torch.equal(_stream_after(run), untouched)
    unconditional = ModelConfig(
        x_shape=(3,), y_shape=None, prior="standard_normal", latent_dim=2, hidden_dims=(8,)
    )
    vae = build_cvae(unconditional, x, None, seed=0)
    assert torch.equal(_stream_after(lambda: generate(vae, 5, seed=2)), untouched)


def test_a_float64_model_samples_and_round_trips_through_a_checkpoint(tmp_path):
    """The dtype error advises ``.to(torch.float64)``; such a model could not be sampled (y was
    cast to float32) and its checkpoint could not be read back (twenty-third audit)."""
    from ppl_cvae import load_checkpoint, save_checkpoint

    problem, cvae, x, y = _make()
    cvae = cvae.double()
    draws = CVAEPosterior(cvae, problem=problem).sample((16,), y[0], seed=0)
    assert draws.dtype == torch.float64 and torch.isfinite(draws).all()
    path = save_checkpoint(tmp_path / "m64.pt", cvae, problem=problem)
    loaded = load_checkpoint(path)[0]
    assert next(loaded.parameters()).dtype == torch.float64
    again = CVAEPosterior(loaded, problem=problem).sample((16,), y[0], seed=0)
    assert torch.equal(again, draws)


def test_fit_keeps_a_users_modules_named_like_cvae_and_named_models_reload():
    """``fit`` deleted every dead prefix starting with "cvae", a user's ``pyro.module("cvae_head",
    ...)`` too. A name given with ``set_pyro_name`` is the same in the process that saves a
    param store and the one that loads it, however many models each built before."""
    pyro.clear_param_store()
    head = torch.nn.Linear(2, 1)
    pyro.module("cvae_head", head)
    _, cvae, x, y = _make()
    fit(cvae, x, y, config=TrainConfig(num_epochs=1, batch_size=64), progress=False)
    assert any(name.startswith("cvae_head$$$") for name in pyro.get_param_store().keys())
    pyro.clear_param_store()
    cvae.set_pyro_name("velocity")
    _steps(cvae, x, y, num=3)
    saved = pyro.get_param_store().get_state()
    pyro.clear_param_store()
    _make(seed=5)  # other models of the loading process, built first
    _, fresh, _, _ = _make(seed=1)
    fresh.set_pyro_name("velocity2")  # the first name is still taken by the live original
    with pytest.raises(ConfigError, match="another live CVAE"):
        fresh.set_pyro_name("velocity")
    del cvae
    fresh.set_pyro_name("velocity")
    pyro.get_param_store().set_state(saved)
    poutine.trace(fresh.guide).get_trace(y, x)
    poutine.trace(fresh.model).get_trace(y, x)
    assert all(
        torch.equal(p, saved["params"][f"velocity$$${n}"]) for n, p in fresh.named_parameters()
    )
    with pytest.raises(ConfigError, match="without"):
        fresh.set_pyro_name("a$$$b")
    pyro.clear_param_store()


def test_an_unconditional_guide_given_x_positionally_says_so():
    unconditional = ModelConfig(
        x_shape=(3,), y_shape=None, prior="standard_normal", latent_dim=2, hidden_dims=(8,)
    )
    vae = build_cvae(unconditional, torch.zeros(4, 3), None)
    with pytest.raises(ShapeError, match="takes no y: call guide"):
        vae.guide(torch.zeros(4, 3))


def test_a_name_taken_again_does_not_inherit_a_dead_models_weights():
    """The hostile audit: model 1 named "vm", sampled and deleted; model 2 named "vm" took
    model 1's prior net and decoder from the store at its next call. A default-form name given
    with ``set_pyro_name`` was also handed out again to a later model."""
    pyro.clear_param_store()
    problem, first, x, y = _make(seed=0)
    first.set_pyro_name("vm")
    CVAEPosterior(first, problem=problem).sample((4,), y[0], seed=0)
    del first
    _, second, _, _ = _make(seed=1)
    own = _weights(second)
    second.set_pyro_name("vm")
    CVAEPosterior(second, problem=problem).sample((4,), y[0], seed=0)
    assert not _changed(own, second)
    later = [_make(seed=2)[1] for _ in range(2)]
    taken = f"cvae{int(later[-1].pyro_name[4:]) + 1}"
    second.set_pyro_name(taken)
    assert all(_make(seed=3)[1].pyro_name != taken for _ in range(3))
    pyro.clear_param_store()


def test_seeded_chunked_files_and_nuts_files_reproduce(tmp_path):
    """After seeded draws stopped re-seeding the global RNG, chunks after the first and the
    posterior predictive noise of NUTS drew from the unseeded global stream: two runs with one
    seed differed (the hostile audit: 7 of 1000 draws equal). Chunks must also not repeat."""
    import arviz as az

    from inference.sample import CorrectionConfig, sample_corrected, sample_posterior_to_netcdf

    problem, cvae, x, y = _make()
    runs = []
    for i in range(2):
        path = sample_posterior_to_netcdf(
            cvae, y[:1], 300, tmp_path / f"c{i}.nc", seed=5, chunk_bytes=4096, in_memory_bytes=0
        )
        runs.append(az.from_netcdf(path).posterior["x"].values[0, :, 0])
    assert np.array_equal(runs[0], runs[1])
    assert len(np.unique(runs[0], axis=0)) == 300  # no chunk repeats another
    files = []
    for _ in range(2):
        nuts = CorrectionConfig(method="nuts", warmup_steps=10, chains=2)
        idata, _, _ = sample_corrected(cvae, y[:1], 12, problem, nuts, seed=11)
        files.append(idata["posterior_predictive"]["y"].values)
    assert np.array_equal(files[0], files[1])
