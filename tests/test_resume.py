"""Resumable training (issue 11): a crashed or killed fit continues exactly where it stopped.

Equality, not closeness, is asserted: on CPU with one thread a resumed run takes the same SVI
steps on the same minibatches with the same RNG draws as an uninterrupted one, so the weights
and losses must be bit-identical (``torch.equal``). Negative controls show the comparison can
fail: a resume that drops the optimiser state or the RNG state gives other weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

from ppl_cvae.cli import main
from ppl_cvae.config import Overrides
from ppl_cvae.errors import CheckpointError
from ppl_cvae.problems.base import make_problem
from ppl_cvae.train import build_cvae, fit, load_checkpoint, resolve_settings
from ppl_cvae.train.resume import STATE_FILE, CheckpointPolicy, load_train_state

REPO = Path(__file__).resolve().parents[1]

# 3 epochs x 3 steps (48 pairs after the split, or 60 fresh ones, in batches of 20): 9 steps; KL warm-up and lr decay make the
# per-epoch beta and the per-step learning rate part of what must be restored.
TRAIN = {"num_epochs": 3, "num_train": 60, "batch_size": 20, "val_fraction": 0.2,
         "kl_warmup_epochs": 2, "lr_decay": 0.5, "patience": 0, "seed": 3}
MODEL = {"hidden_dims": (8,), "latent_dim": 2}


class Crash(Exception):
    """Stands in for a crash: raised from inside an SVI step."""


def _setup(resimulate: bool):
    problem = make_problem("linear_gaussian")
    train = {**TRAIN, "resimulate": resimulate}
    model_config, train_config = resolve_settings(
        problem, Overrides(model=MODEL, train=train)  # type: ignore[arg-type]
    )
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    x, y = problem.simulate(train_config.num_train, gen)
    return problem, model_config, train_config, x, y


def _run(resimulate, *, crash_after=None, policy=None, resume_from=None, monkeypatch=None):
    """Fit from scratch (or resume); raise Crash at SVI step ``crash_after + 1`` if given."""
    problem, model_config, train_config, x, y = _setup(resimulate)
    pyro.set_rng_seed(12345)  # a different global RNG than fit's seed: fit must reseed/restore
    cvae = build_cvae(model_config, x, y, problem=problem, seed=train_config.seed)
    if crash_after is not None:
        original = pyro.infer.SVI.step
        calls = {"n": 0}

        def step(self, *args, **kwargs):
            if calls["n"] == crash_after:
                raise Crash
            calls["n"] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(pyro.infer.SVI, "step", step)
    try:
        result = fit(cvae, x, y, train_config, simulator=problem.simulate, progress=False,
                     checkpoint=policy, resume_from=resume_from)
    finally:
        if crash_after is not None:
            monkeypatch.undo()
    return cvae, result


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("resimulate", [False, True], ids=["pairs", "resimulate"])
@pytest.mark.parametrize("crash_after, every_steps, every_epoch, saved_at",
                         [(5, 2, False, 4), (7, None, True, 6), (3, 3, False, 3)],
                         ids=["mid-epoch", "epoch-end", "last-step-of-epoch"])
def test_crash_and_resume_is_bit_identical(tmp_path, monkeypatch, resimulate, crash_after,
                                           every_steps, every_epoch, saved_at):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_cvae, ref = _run(resimulate)
        path = tmp_path / STATE_FILE
        policy = CheckpointPolicy(path, every_steps=every_steps, every_minutes=None,
                                  every_epoch=every_epoch)
        with pytest.raises(Crash):
            _run(resimulate, crash_after=crash_after, policy=policy, monkeypatch=monkeypatch)
        state = load_train_state(path)
        # at most the work since the last save is lost: the state holds step `saved_at`
        assert state.steps_done == saved_at
        assert state.step_losses == ref.step_losses[:saved_at]
        cvae, result = _run(resimulate, policy=policy, resume_from=state)
    finally:
        torch.set_num_threads(threads)
    assert len(result.step_losses) == len(ref.step_losses) == 9
    assert result.step_losses == ref.step_losses  # exact: same steps, batches and draws
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in result.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in ref.history
    ]
    assert result.best_epoch == ref.best_epoch
    assert _same_weights(cvae, ref_cvae)


def test_negative_controls_a_lost_optimiser_or_rng_state_shows(tmp_path, monkeypatch):
    """The equality above can fail: resuming without Adam's moments, or without the RNG."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_cvae, ref = _run(False)
        path = tmp_path / STATE_FILE
        policy = CheckpointPolicy(path, every_steps=2, every_minutes=None, every_epoch=False)
        with pytest.raises(Crash):
            _run(False, crash_after=5, policy=policy, monkeypatch=monkeypatch)
        state = load_train_state(path)
        state.payload["optimizer"] = {}  # a resume that forgets the optimiser
        cvae, result = _run(False, resume_from=state)
        assert not _same_weights(cvae, ref_cvae)
        assert result.step_losses[:4] == ref.step_losses[:4]
        assert result.step_losses[4:] != ref.step_losses[4:]
        state = load_train_state(path)
        state.payload["rng"]["torch"] = torch.manual_seed(99).get_state()  # forgets the RNG
        cvae, result = _run(False, resume_from=state)
        assert not _same_weights(cvae, ref_cvae)
    finally:
        torch.set_num_threads(threads)


def test_resume_refuses_another_run(tmp_path, monkeypatch):
    path = tmp_path / STATE_FILE
    policy = CheckpointPolicy(path, every_steps=2, every_minutes=None)
    with pytest.raises(Crash):
        _run(False, crash_after=3, policy=policy, monkeypatch=monkeypatch)
    state = load_train_state(path)
    with pytest.raises(CheckpointError, match="other training settings"):
        _run(True, resume_from=state)  # resimulate differs
    problem, model_config, train_config, x, y = _setup(False)
    cvae = build_cvae(model_config, x, y, problem=problem, seed=train_config.seed)
    with pytest.raises(CheckpointError, match="other training data"):
        fit(cvae, x + 1.0, y, train_config, progress=False, resume_from=state)
    state.payload["model"]["decoder.raw_scale"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match="has shape"):
        fit(cvae, x, y, train_config, progress=False, resume_from=state)
