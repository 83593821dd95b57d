import pytest
import torch

from inference import draw_posterior
from ppl_cvae import ModelConfig, TrainConfig, TwoBirds, build_cvae, fit
from ppl_cvae.errors import CheckpointError
from ppl_cvae.train import load_checkpoint, save_checkpoint


def _small_model():
    problem = TwoBirds("data_1")
    x, y = problem.simulate(64, torch.Generator().manual_seed(0))
    cfg = ModelConfig(
        x_shape=problem.x_shape,
        y_shape=problem.y_shape,
        latent_dim=2,
        hidden_dims=(16,),
        basis_dim=4,
    )
    cvae = build_cvae(
        cfg,
        x,
        y,
        basis=problem.basis(),
        forward_operator=problem.forward,
        misfit_std=problem.misfit_std,
    )
    fit(cvae, x, y, TrainConfig(num_epochs=2, batch_size=32), progress=False)
    return cvae, problem, y


def test_round_trip_samples_identically(tmp_path):
    cvae, problem, y = _small_model()
    path = save_checkpoint(tmp_path / "model.pt", cvae, problem=problem)
    loaded, meta = load_checkpoint(tmp_path)  # a run folder works too
    assert meta["problem"].functions_name == "data_1"
    assert loaded.config == cvae.config
    a = draw_posterior(cvae, y[:3], 50, seed=7, problem=problem)
    b = draw_posterior(loaded, y[:3], 50, seed=7, problem=meta["problem"])
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and torch.equal(a.y_rep, b.y_rep)
    assert path.stat().st_size > 0


def test_failed_write_keeps_existing_checkpoint(tmp_path, monkeypatch):
    cvae, problem, _ = _small_model()
    target = save_checkpoint(tmp_path / "model.pt", cvae)
    before = target.read_bytes()

    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, cvae)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left


def test_corrupt_and_foreign_checkpoints(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a ppl_cvae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
