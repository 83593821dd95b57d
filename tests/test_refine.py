import pytest
import torch

from inference import draw_posterior
from inference.posterior import PosteriorDraws
from inference.refine import RefineConfig, misfit_rms, refine_and_accept, refine_by_misfit
from ppl_cvae import CVAE, LinearGaussian, ModelConfig, TwoBirds
from ppl_cvae.errors import ConfigError
from ppl_cvae.problems.two_birds import endpoints_from_lines, lines_from_endpoints


def _draws(x):
    return PosteriorDraws(x=x, z=torch.zeros(*x.shape[:2], 1), y_rep=None, decoder_noise=False)


def test_refinement_lands_on_the_solution_of_its_basin():
    problem = TwoBirds("data_1")
    x, y = problem.simulate(5, torch.Generator().manual_seed(0))
    ends = endpoints_from_lines(x)
    start = lines_from_endpoints(ends + 0.02 * torch.randn(4, 5, 4)).clamp(0.1, 1.0)
    refined = refine_by_misfit(_draws(start), y, problem, num_steps=400, learning_rate=0.05)
    rms = misfit_rms(refined.x, y, problem)
    # misfit_std = 0.05: RMS 0.02 is an RMSE of 1e-3 in y, far inside the challenge's 0.1
    assert rms.max() < 0.02
    assert torch.allclose(refined.y_rep, problem.forward(refined.x))
    # every refined draw is a prior-valid line pair (optimised through the endpoint transform)
    assert (refined.x[..., 1:, 0] <= refined.x[..., :-1, 0] + 1e-6).all()
    # negative control: one step does not get there
    one = refine_by_misfit(_draws(start), y, problem, num_steps=1, learning_rate=0.05)
    assert misfit_rms(one.x, y, problem).max() > 0.1


def test_refinement_in_x_space_reaches_least_squares():
    problem = LinearGaussian(x_dim=2, y_dim=2, noise_std=0.5)
    _, y = problem.simulate(3, torch.Generator().manual_seed(1))
    start = torch.zeros(8, 3, 2)
    refined = refine_by_misfit(_draws(start), y, problem, num_steps=2000, learning_rate=0.05)
    exact = torch.linalg.solve(problem.matrix, y.T).T  # A is square and invertible here
    assert torch.allclose(refined.x, exact.expand(8, 3, 2), atol=2e-3)


def test_refinement_shows_its_steps_only_when_asked_or_on_a_terminal(capsys):
    """A long refinement (minutes on mt1d) showed nothing; ``progress=True`` draws a tqdm bar
    of the steps on stderr, ``False`` and the default off a terminal (pytest's) draw none.
    The steps are the same either way."""
    problem = LinearGaussian(x_dim=2, y_dim=2, noise_std=0.5)
    _, y = problem.simulate(3, torch.Generator().manual_seed(1))
    start = torch.zeros(4, 3, 2)
    shown = refine_by_misfit(_draws(start), y, problem, num_steps=20, progress=True)
    err = capsys.readouterr().err
    assert "refine:" in err and "/20" in err
    for flag in (False, None):
        quiet = refine_by_misfit(_draws(start), y, problem, num_steps=20, progress=flag)
        assert capsys.readouterr().err == ""
        assert torch.equal(quiet.x, shown.x)


def test_refine_and_accept_shapes_and_warning():
    problem = TwoBirds("data_1")
    x, y = problem.simulate(16, torch.Generator().manual_seed(0))
    cfg = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        hidden_dims=(8,),
        basis_dim=4,
        latent_dim=2,
    )
    from ppl_cvae import build_cvae

    cvae = build_cvae(cfg, x, y, problem=problem)
    draws, accepted = refine_and_accept(
        cvae, y[:2], 6, problem, oversample=2, num_steps=5, max_misfit=None, seed=0
    )
    assert draws.x.shape == (6, 2, 1, 50, 2) and accepted.shape == (6, 2) and accepted.all()
    with pytest.warns(UserWarning, match="exceed max_misfit"):
        _, accepted = refine_and_accept(
            cvae, y[:2], 6, problem, oversample=2, num_steps=1, max_misfit=1e-9, seed=0
        )
    assert not accepted.any()
    # accepted draws come first, in draw order: a threshold everything meets changes nothing
    a, _ = refine_and_accept(
        cvae, y[:2], 6, problem, oversample=2, num_steps=5, max_misfit=1e9, seed=0
    )
    b, _ = refine_and_accept(
        cvae, y[:2], 6, problem, oversample=2, num_steps=5, max_misfit=None, seed=0
    )
    assert torch.equal(a.x, b.x)


def test_refine_config_validation():
    with pytest.raises(ConfigError, match="max_misfit"):
        RefineConfig(max_misfit=-1.0)
    with pytest.raises(ConfigError, match="invalid refinement"):
        RefineConfig(oversample=0)


def test_untrained_cvae_unused():
    # draw_posterior of an unconditional model is refused (nothing to refine against)
    vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, prior="standard_normal", hidden_dims=(4,)))
    with pytest.raises(ConfigError, match="conditional"):
        draw_posterior(vae, torch.zeros(1, 2), 3)
