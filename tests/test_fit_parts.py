"""Contracts of the named parts of ``fit``: input checks, data split, early stopping, seeding."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from ppl_cvae import CVAE, ConfigError, ModelConfig, ShapeError, TrainConfig, make_problem
from ppl_cvae.train.fit import _EarlyStopping, _Pairs, _split_data, build_cvae, fit


def _tiny_cvae(conditional: bool = True) -> CVAE:
    if conditional:
        return CVAE(ModelConfig(x_shape=(2,), y_shape=(3,), hidden_dims=(8,)))
    return CVAE(ModelConfig(x_shape=(2,), y_shape=None, hidden_dims=(8,), prior="standard_normal"))


def _weights_digest(cvae: CVAE) -> str:
    h = hashlib.sha256()
    for name, tensor in cvae.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- CVAE.check_inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 5])
def test_check_inputs_returns_the_batch_size(batch):
    cvae = _tiny_cvae()
    assert cvae.check_inputs(torch.zeros(batch, 3), torch.zeros(batch, 2)) == batch
    assert cvae.check_inputs(torch.zeros(batch, 3), None) == batch
    vae = _tiny_cvae(conditional=False)
    assert vae.check_inputs(None, torch.zeros(batch, 2)) == batch
    assert vae.check_inputs(None, None) == 1


@pytest.mark.parametrize(
    "conditional, y, x, match",
    [
        (True, None, torch.zeros(3, 2), "y is required"),
        (True, torch.zeros(3, 4), torch.zeros(3, 2), r"y must have shape \(batch, 3\)"),
        (True, torch.zeros(3, 3), torch.zeros(3, 2, 1), r"x must have shape"),
        (True, torch.zeros(3, 3), torch.zeros(4, 2), "same batch size, got 4 and 3"),
        (False, torch.zeros(3, 3), torch.zeros(3, 2), "unconditional VAE: y must be None"),
    ],
)
def test_check_inputs_names_the_bad_shape(conditional, y, x, match):
    with pytest.raises(ShapeError, match=match):
        _tiny_cvae(conditional).check_inputs(y, x)


# --- data split --------------------------------------------------------------------------------


def test_holdout_split_is_a_partition_of_the_pairs():
    cvae = _tiny_cvae()
    x = torch.arange(40.0).reshape(20, 2)
    y = torch.arange(60.0).reshape(20, 3)
    config = TrainConfig(val_fraction=0.25)
    train, val = _split_data(cvae, x, y, config, None, torch.Generator().manual_seed(0))
    assert isinstance(train, _Pairs) and val is not None
    assert (len(train), len(val)) == (15, 5)  # round(0.25 * 20) held out
    rows = torch.cat([train.x, val.x])[:, 0].sort().values
    assert torch.equal(rows, x[:, 0])  # every pair exactly once
    assert val.y is not None and torch.equal(val.y[:, 0] / 3, val.x[:, 0] / 2)  # pairs stay paired


def test_the_held_out_pairs_do_not_fit_the_standardisers_or_the_whitener(tmp_path):
    """validation_split draws fit's split; build_cvae(fit_rows=...) fits on its training part.

    The standardisers' moments and the whitener's regression are those of the training pairs
    alone (as sbi's networks see only theirs), through ``fit_problem`` without resimulation and
    through ``ppl-cvae fit --data``; not those of all pairs (what they were before).
    """
    from ppl_cvae import fit_problem
    from ppl_cvae.cli import main
    from ppl_cvae.train import load_checkpoint, validation_split

    cvae = _tiny_cvae()
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    y = torch.randn(20, 3, generator=torch.Generator().manual_seed(4))
    config = TrainConfig(val_fraction=0.25, seed=7)
    _, val = _split_data(cvae, x, y, config, None, torch.Generator().manual_seed(7))
    rows, held = validation_split(20, config)
    assert val is not None and torch.equal(val.x, x[held]) and len(rows) == 15

    model = ModelConfig(x_shape=(2,), y_shape=(3,), hidden_dims=(8,), x_whitening="linear")
    built = build_cvae(model, x, y, fit_rows=rows)
    assert torch.allclose(built.x_standardiser.mean, x[rows].mean(0), atol=1e-6)
    assert not torch.allclose(built.x_standardiser.mean, x.mean(0), atol=1e-3)
    assert torch.allclose(built.y_standardiser.mean, y[rows].mean(0), atol=1e-6)
    alone = build_cvae(model, x[rows], y[rows])
    assert torch.allclose(built.whitener.weight, alone.whitener.weight, atol=1e-5)

    problem = make_problem("linear_gaussian", x_dim=2, y_dim=3)
    train = {"num_train": 40, "num_epochs": 1, "resimulate": False, "val_fraction": 0.25,
             "seed": 5, "batch_size": 16}
    fitted, _, _ = fit_problem(problem, model={"hidden_dims": (8,)}, train=train)
    xs, _ = problem.simulate(40, torch.Generator().manual_seed(6))  # fit_problem's pairs
    kept = validation_split(40, TrainConfig(val_fraction=0.25, seed=5))[0]
    assert torch.allclose(fitted.x_standardiser.mean, xs[kept].mean(0), atol=1e-6)

    np = pytest.importorskip("numpy")
    np.savez(tmp_path / "pairs.npz", x=x.numpy(), y=y.numpy())
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--data", str(tmp_path / "pairs.npz"), "--out", str(tmp_path / "r"),
                     "--epochs", "1", "--val-fraction", "0.25", "--seed", "7", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    run, _ = load_checkpoint(tmp_path / "r" / "model.pt")
    assert torch.allclose(run.x_standardiser.mean, x[rows].mean(0), atol=1e-6)


def test_resampling_keeps_the_simulator_and_the_holdout_for_validation():
    cvae = _tiny_cvae()
    problem = make_problem("linear_gaussian", x_dim=2, y_dim=3)
    x, y = problem.simulate(10, torch.Generator().manual_seed(1))
    config = TrainConfig(val_fraction=0.5, resimulate=True, num_train=8)
    gen = torch.Generator().manual_seed(0)
    train, val = _split_data(cvae, x, y, config, problem.simulate, gen)
    assert train == problem.simulate  # bound methods compare equal, not identical
    assert val is not None and len(val) == 5


@pytest.mark.parametrize("conditional", [True, False])
def test_without_pairs_the_validation_set_is_simulated_once(conditional):
    cvae = _tiny_cvae(conditional)
    problem = make_problem("linear_gaussian", x_dim=2, y_dim=3)
    config = TrainConfig(val_fraction=0.25, resimulate=True, num_train=12)
    gen = torch.Generator().manual_seed(0)
    train, val = _split_data(cvae, problem.simulate, None, config, problem.simulate, gen)
    assert train == problem.simulate  # bound methods compare equal, not identical
    assert val is not None and len(val) == 3  # round(0.25 * 12)
    assert (val.y is not None) == conditional


def test_a_validation_split_that_leaves_nothing_to_train_on_is_refused():
    cvae = _tiny_cvae()
    config = TrainConfig(val_fraction=0.99)
    with pytest.raises(ShapeError, match="no training pairs left"):
        _split_data(cvae, torch.zeros(10, 2), torch.zeros(10, 3), config, None, torch.Generator())


def test_missing_data_is_reported_before_a_missing_forward_operator():
    config = TrainConfig(physics_weight=1.0, num_epochs=1)
    with pytest.raises(ConfigError, match="fit needs training pairs"):
        fit(_tiny_cvae(), None, None, config, progress=False)
    problem = make_problem("linear_gaussian", x_dim=2, y_dim=3)
    no_resimulate = TrainConfig(num_epochs=1)
    with pytest.raises(ConfigError, match="simulator with resimulate=True"):
        fit(_tiny_cvae(), None, None, no_resimulate, simulator=problem.simulate, progress=False)


# --- early stopping ----------------------------------------------------------------------------


def _shift_weights(cvae: CVAE) -> None:
    with torch.no_grad():
        for p in cvae.parameters():
            p.add_(1.0)


def test_early_stopping_ignores_warmup_and_counts_patience():
    cvae = _tiny_cvae()
    stopper = _EarlyStopping(patience=2)
    assert not stopper.update(1, 0.5, 0.3, cvae)  # warm-up: neither best nor bad
    assert stopper.best_state is None and stopper.bad_epochs == 0
    assert not stopper.update(2, 3.0, 1.0, cvae)  # first full-beta epoch is the best so far
    _shift_weights(cvae)
    assert not stopper.update(3, 4.0, 1.0, cvae)
    _shift_weights(cvae)
    assert not stopper.update(4, 2.5, 1.0, cvae)  # improvement resets the count
    assert stopper.bad_epochs == 0 and stopper.best_epoch == 4
    best = _weights_digest(cvae)
    _shift_weights(cvae)
    assert not stopper.update(5, math.nan, 1.0, cvae)  # NaN is never an improvement
    assert stopper.update(6, 2.5, 1.0, cvae)  # equal is not better: second bad epoch stops
    assert _weights_digest(cvae) != best
    assert stopper.restore(cvae, last_epoch=6) == 4
    assert _weights_digest(cvae) == best  # epoch 4's weights are back


def test_patience_zero_never_stops_and_no_best_keeps_the_last_epoch():
    cvae = _tiny_cvae()
    stopper = _EarlyStopping(patience=0)
    assert not any(stopper.update(e, 1.0, 0.5, cvae) for e in range(1, 20))
    before = _weights_digest(cvae)
    assert stopper.restore(cvae, last_epoch=19) == 19
    assert _weights_digest(cvae) == before
    assert not any(stopper.update(e, float(e), 1.0, cvae) for e in range(1, 20))
    assert stopper.best_epoch == 1


# --- the loop as a whole -----------------------------------------------------------------------


@pytest.mark.parametrize("resimulate", [False, True])
def test_a_seeded_fit_is_reproducible(resimulate):
    problem = make_problem("linear_gaussian", x_dim=2, y_dim=3)
    x, y = problem.simulate(64, torch.Generator().manual_seed(3))
    config = ModelConfig(x_shape=(2,), y_shape=(3,), latent_dim=2, hidden_dims=(8,))
    train = TrainConfig(
        num_epochs=3, batch_size=16, val_fraction=0.25, resimulate=resimulate, num_train=48
    )
    runs = []
    for _ in range(2):
        cvae = build_cvae(config, x, y, problem=problem, seed=0)
        result = fit(cvae, x, y, train, simulator=problem.simulate, progress=False)
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
        runs.append((_weights_digest(cvae), history, result.step_losses, result.best_epoch))
    assert runs[0] == runs[1]
    # 48 training pairs either way: 64 - round(0.25 * 64) held out, or num_train = 48 drawn
    assert len(runs[0][2]) == 3 * math.ceil(48 / 16)
    assert not cvae.training


def test_pairs_in_float64_train_as_their_float32_values_do():
    """NumPy's float64 pairs (and the validation pairs) are cast to the model's float32.

    Before, build_cvae accepted them and fit stopped in the first matrix product with
    "mat1 and mat2 must have the same dtype"; now the run equals the one on the float32 values.
    """
    problem = make_problem("linear_gaussian", x_dim=2, y_dim=3)
    x, y = problem.simulate(64, torch.Generator().manual_seed(3))
    config = ModelConfig(x_shape=(2,), y_shape=(3,), latent_dim=2, hidden_dims=(8,))
    train = TrainConfig(num_epochs=2, batch_size=16, val_fraction=0.25)
    runs = []
    for dtype in (torch.float32, torch.float64):
        xs, ys = x.to(dtype), y.to(dtype)
        cvae = build_cvae(config, xs, ys, problem=problem, seed=0)
        result = fit(cvae, xs, ys, train, progress=False, validation=(xs[:8], ys[:8]))
        runs.append((_weights_digest(cvae), result.step_losses))
    assert runs[0] == runs[1]


def test_numpy_and_list_pairs_train_as_their_tensors():
    """``build_cvae`` and ``fit`` take NumPy arrays and lists as sbi does (cast to float32):
    the same pairs as arrays, lists or tensors give bit-identical weights; a string is a
    DataError naming ``x``."""
    import numpy as np

    from ppl_cvae import DataError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 2)), rng.normal(size=(64, 3))  # float64, as NumPy makes them
    config = ModelConfig(x_shape=(2,), y_shape=(3,), latent_dim=2, hidden_dims=(8,))
    train = TrainConfig(num_epochs=2, batch_size=32, patience=0)
    digests = []
    tensors = (torch.as_tensor(x).float(), torch.as_tensor(y).float())
    for xs, ys in [(x, y), (x.tolist(), y), tensors]:
        cvae = build_cvae(config, xs, ys, seed=3)
        fit(cvae, xs, ys, train, validation=(x[:8], y[:8].tolist()), progress=False)
        digests.append(_weights_digest(cvae))
    assert digests[0] == digests[1] == digests[2]
    with pytest.raises(DataError, match="x is a builtins.str"):
        build_cvae(config, "pairs.npz", y)


def test_pairs_whose_y_is_constant_are_warned_of():
    """A y the same in every pair carries no information: the model could learn p(x) only.
    One constant element among informative ones (an image's border) is not warned of."""
    import warnings

    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=(2,), y_shape=(3,), latent_dim=2, hidden_dims=(8,))
    with pytest.warns(UserWarning, match="every element of y is the same in all 32"):
        build_cvae(config, x, torch.ones(32, 3))
    y = torch.cat([x, torch.zeros(32, 1)], -1)  # the last element constant
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cvae(config, x, y)


@pytest.mark.parametrize(
    "likelihood, num_facies, values, match",
    [
        ("categorical", 2, [0.0, 1.0, 2.0], r"--num-facies 3\)$"),
        ("bernoulli", 2, [0.0, 1.0, 2.0], r"--likelihood categorical --num-facies 3\)$"),
        ("bernoulli", 2, [0.0, 0.5, 1.0], r"= 0.5\); a facies decoder .* threshold them \(x > 0"),
        ("categorical", 3, [-1.0, 0.0, 2.0], r"x\[0, 0\] = -1\); a facies decoder models codes"),
    ],
)
def test_facies_decoders_refuse_values_that_are_not_their_codes(
    likelihood, num_facies, values, match
):
    """Before: codes >= K ended in Pyro's "index 2 is out of bounds" traceback, and a
    Bernoulli decoder trained in silence on {0, 1, 2} and on real values."""
    from ppl_cvae import DataError

    x = torch.tensor(values).repeat(20, 1)
    y = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=(3,), y_shape=(2,), latent_dim=2, hidden_dims=(8,),
                         likelihood=likelihood, num_facies=num_facies)
    with pytest.raises(DataError, match=match):
        build_cvae(config, x, y)
    codes = torch.zeros(20, 3)
    cvae = build_cvae(config, codes, y)
    with pytest.raises(DataError, match=match):  # fit checks the pairs it is given too
        fit(cvae, x, y, TrainConfig(num_epochs=1, batch_size=10), progress=False)
