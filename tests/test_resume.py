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
from ppl_cvae.errors import CheckpointError, DataError
from ppl_cvae.problems.base import make_problem
from ppl_cvae.train import build_cvae, fit, load_checkpoint, resolve_settings
from ppl_cvae.train.resume import STATE_FILE, CheckpointPolicy, load_train_state

REPO = Path(__file__).resolve().parents[1]

# one thread (bit-identical steps) for every test; also restores what `--threads` sets
pytestmark = pytest.mark.usefixtures("one_thread")

# 3 epochs x 3 steps (48 pairs after the split, or 60 fresh ones, in batches of 20): 9 steps;
# KL warm-up and lr decay make the per-epoch beta and the per-step learning rate part of what
# must be restored.
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


def _fail_svi_step(monkeypatch, after, error):
    """Make ``SVI.step`` raise ``error`` once ``after`` steps have run (a crash mid-fit)."""
    original = pyro.infer.SVI.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        if calls["n"] == after:
            raise error
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyro.infer.SVI, "step", step)


def _run(resimulate, *, crash_after=None, policy=None, resume_from=None, monkeypatch=None):
    """Fit from scratch (or resume); raise Crash at SVI step ``crash_after + 1`` if given."""
    problem, model_config, train_config, x, y = _setup(resimulate)
    pyro.set_rng_seed(12345)  # a different global RNG than fit's seed: fit must reseed/restore
    cvae = build_cvae(model_config, x, y, problem=problem, seed=train_config.seed)
    if crash_after is not None:
        _fail_svi_step(monkeypatch, crash_after, Crash)
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


def test_a_version_1_state_without_data_stream_still_resumes(tmp_path, monkeypatch):
    """States written before the data stream was stored (format v1) load as data_stream None."""
    ref_cvae, _ = _run(False)
    path = tmp_path / STATE_FILE
    policy = CheckpointPolicy(path, every_steps=2, every_minutes=None)
    with pytest.raises(Crash):
        _run(False, crash_after=5, policy=policy, monkeypatch=monkeypatch)
    payload = load_train_state(path).payload
    assert payload["format"] == "ppl_cvae.train_state.v2" and payload["data_stream"] is None
    del payload["data_stream"]
    payload["format"] = "ppl_cvae.train_state.v1"
    torch.save(payload, tmp_path / "v1.pt")
    state = load_train_state(tmp_path / "v1.pt")
    assert state.payload["data_stream"] is None
    cvae, _ = _run(False, resume_from=state)
    payload["data_stream"] = {"kind": "tape"}  # a v1 file has no such key; v2 no such kind
    payload["format"] = "ppl_cvae.train_state.v2"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown kind 'tape'"):
        load_train_state(tmp_path / "bad.pt")
    assert _same_weights(cvae, ref_cvae)


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
    fused = load_train_state(path).payload["optimizer"]["fused"]
    for key, bad, match in [
        ("betas", "xx", "malformed betas"),
        ("lr", float("nan"), "'lr'"),
    ]:
        state = load_train_state(path)
        state.payload["optimizer"]["fused"]["param_groups"][0][key] = bad
        with pytest.raises(CheckpointError, match=match):
            fit(cvae, x, y, train_config, progress=False, resume_from=state)
    state = load_train_state(path)
    first = state.payload["optimizer"]["fused"]["state"][0]
    first["exp_avg"] = first["exp_avg"][:1]
    with pytest.raises(CheckpointError, match="does not fit its parameter"):
        fit(cvae, x, y, train_config, progress=False, resume_from=state)
    assert len(fused["state"]) == len(list(cvae.parameters()))


def test_a_resumed_run_can_crash_and_resume_again(tmp_path, monkeypatch):
    """Resume at an epoch's last step, save at its end (optimiser not rebuilt yet), resume."""
    ref_cvae, ref = _run(False)
    path = tmp_path / STATE_FILE
    first = CheckpointPolicy(path, every_steps=3, every_minutes=None, every_epoch=False)
    with pytest.raises(Crash):
        _run(False, crash_after=3, policy=first, monkeypatch=monkeypatch)
    assert load_train_state(path).payload["position"]["step"] == 3
    second = CheckpointPolicy(path, every_minutes=None, every_epoch=True)
    with pytest.raises(Crash):  # one step into epoch 2, after the epoch-end save
        _run(False, crash_after=1, policy=second, resume_from=load_train_state(path),
             monkeypatch=monkeypatch)
    state = load_train_state(path)
    assert state.payload["position"]["epoch"] == 2 and state.steps_done == 3
    assert state.payload["optimizer"] != {}
    cvae, result = _run(False, resume_from=state)
    assert result.step_losses == ref.step_losses
    assert _same_weights(cvae, ref_cvae)


# ------------------------------------------------------------------------------ the CLI
FIT = ["fit", "--problem", "linear_gaussian", "--num-train", "1200", "--batch-size", "20",
       "--epochs", "4", "--hidden-dims", "8", "--latent-dim", "2", "--lr-decay", "0.5",
       "--kl-warmup-epochs", "1", "--seed", "5", "--quiet", "--threads", "1"]


def _metrics(run: Path) -> list[list[str]]:
    """Rows of metrics.csv without the wall-clock ``seconds`` column (the last)."""
    lines = (run / "metrics.csv").read_text().splitlines()
    return [line.split(",")[:-1] for line in lines]


def _dead_pid() -> int:
    return 2**22 + 4321  # above the default pid_max of 2**22: no such process


def _stop_after_first_state(argv, run, stop, *, group=False, settle=0.0, wait=90.0):
    """Run ``python -m ppl_cvae.cli ARGV`` and send ``stop`` once ``run`` holds a saved state.

    ``group``: the command starts its own process group and the signal goes to all of it (a
    scheduler stopping a job); ``settle``: seconds to wait after the state appears. Returns the
    finished process and its stderr (bytes).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ppl_cvae.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=group)  # fmt: skip
    try:
        deadline = time.monotonic() + wait
        while not (run / STATE_FILE).exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"no saved state within {wait:g} s"
            time.sleep(0.01)
        time.sleep(settle)
        (os.killpg if group else os.kill)(proc.pid, stop)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - a hang
            (os.killpg if group else os.kill)(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    return proc, err


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_fit_resumes_into_the_uninterrupted_run(tmp_path, stop):
    """``kill -9`` or ``kill`` a CLI fit after its first checkpoint, ``--resume`` it: same weights.

    SIGTERM (a batch scheduler's preemption, torchrun stopping the ranks) is answered as Ctrl-C
    is: status 143, the resume command on stderr, and no temporaries left behind.
    """
    killed = tmp_path / "killed"
    proc, err = _stop_after_first_state(
        [*FIT, "--out", str(killed), "--checkpoint-every", "2"], killed, stop
    )
    assert not (killed / "model.pt").exists()  # stopped before the end (4 x 48 = 192 steps)
    state = load_train_state(killed / STATE_FILE)
    assert 2 <= state.steps_done < 192
    if stop == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert err.decode().strip().splitlines() == [
            f"ppl-cvae: interrupted; continue with: ppl-cvae fit --resume {killed}"
        ]
        hidden = [p.name for p in [*tmp_path.iterdir(), *killed.iterdir()] if p.name[0] == "."]
        assert hidden == [".ppl_cvae_output.json"]  # the run's marker; no temporary
    else:
        assert proc.returncode == -signal.SIGKILL
        # a save interrupted by a kill leaves only a hidden temporary; the last state survives
        half = killed / f".{STATE_FILE}.{_dead_pid()}.abc.pt"
        half.write_bytes(b"PK\x03\x04 half-written")
    reference = tmp_path / "reference"
    assert main([*FIT, "--out", str(reference), "--no-checkpoint"]) == 0
    assert main(["fit", "--resume", str(killed), "--threads", "1", "--quiet"]) == 0
    assert not (killed / STATE_FILE).exists()
    assert not [p for p in killed.iterdir() if p.name.startswith(f".{STATE_FILE}.")]
    a, _ = load_checkpoint(reference)
    b, _ = load_checkpoint(killed)
    assert _same_weights(a, b)  # bit-identical across the kill (1 thread, same torch build)
    assert _metrics(killed) == _metrics(reference)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())


@pytest.mark.slow
def test_a_sigterm_to_a_stream_fits_process_group_prints_one_line(tmp_path):
    """A scheduler stops a whole process group: the stream's DataLoader workers die of the
    SIGTERM with the fit. The fit printed its resume line and then DataLoader's "Exception
    ignored ... killed by signal: Terminated" traceback at exit; now the one line only."""
    run = tmp_path / "run"
    argv = ["fit", "--problem", "linear_gaussian", "--stream", "--workers", "2", "--epochs",
            "200", "--hidden-dims", "16", "--threads", "1", "--quiet", "--out", str(run)]
    # 0.5 s into the next epoch, the workers running; the signal to the whole group
    proc, err = _stop_after_first_state(argv, run, signal.SIGTERM, group=True, settle=0.5)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.decode().strip().splitlines() == [
        f"ppl-cvae: interrupted; continue with: ppl-cvae fit --resume {run}"
    ]


@pytest.fixture
def interrupted(tmp_path, monkeypatch, capsys):
    """A CLI run stopped by an exception after its first checkpoint (4 steps per epoch)."""
    run = tmp_path / "run"
    _fail_svi_step(monkeypatch, 3, KeyboardInterrupt)
    try:
        argv = [*FIT[:4], "100", *FIT[5:], "--out", str(run), "--checkpoint-every", "2"]
        assert main(argv) == 130
    finally:
        monkeypatch.undo()
    assert load_train_state(run / STATE_FILE).steps_done == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ppl-cvae: interrupted; continue with: ppl-cvae fit --resume {run}"]
    return run


def _fails(argv, capsys, match):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err


def test_ctrl_c_keeps_the_state_and_a_fresh_fit_does_not_take_it(interrupted, capsys):
    _fails([*FIT, "--out", str(interrupted)], capsys, "holds an interrupted fit")


@pytest.mark.parametrize("extra, match", [
    (["--epochs", "9"], "drop --epochs"),
    (["--out", "elsewhere"], "drop --out"),
    (["--seed", "1", "--overwrite"], "drop --seed, --overwrite"),
    (["--stream", "--workers", "2"], "drop --stream ("),
    (["--lazy"], "drop --lazy"),
    (["--chunk-mb", "1"], "drop --chunk-mb"),  # restored from the state, never ignored
    (["--buffer-chunks", "2"], "drop --buffer-chunks"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be >= 0"),
])
def test_resume_refuses_setting_flags(interrupted, capsys, extra, match):
    _fails(["fit", "--resume", str(interrupted), *extra], capsys, match)
    assert (interrupted / STATE_FILE).is_file()


def test_resume_refuses_another_number_of_processes(interrupted, capsys, monkeypatch):
    """A run fitted by one process is not resumed by two (torchrun's ``WORLD_SIZE``): each
    rank's share of every minibatch would change. Before, going from 1 to 2 processes failed
    with "the data stream does not replay as saved" and from 2 to 3 passed in silence. The
    resume line names the torchrun launch with the same number of processes."""
    from ppl_cvae.cli.fit import _resume_command

    monkeypatch.setenv("WORLD_SIZE", "2")
    _fails(["fit", "--resume", str(interrupted)], capsys,
           "was fitted by 1 process and is resumed by 2")
    assert _resume_command(interrupted).startswith(
        f"torchrun --nproc-per-node 2 -m ppl_cvae.cli fit --resume {interrupted}"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _resume_command(interrupted) == f"ppl-cvae fit --resume {interrupted}"
    assert (interrupted / STATE_FILE).is_file()


def test_resume_refuses_a_run_being_fitted_and_warns_of_other_versions(interrupted, capsys,
                                                                       caplog):
    """A second ``--resume`` while one runs is refused (state untouched); a state written by
    another ppl_cvae or torch version resumes with a warning naming both versions."""
    from ppl_cvae.train.resume import lock_run_folder

    before = (interrupted / STATE_FILE).read_bytes()
    with lock_run_folder(interrupted):  # stands in for the first resume's process
        _fails(["fit", "--resume", str(interrupted)], capsys, "being fitted by another process")
    assert (interrupted / STATE_FILE).read_bytes() == before
    payload = torch.load(interrupted / STATE_FILE, weights_only=True)
    payload["version"], payload["torch_version"] = "0.0.1", "1.0.0"
    torch.save(payload, interrupted / STATE_FILE)
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--resume", str(interrupted), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "written by ppl_cvae 0.0.1" in warned and "written by torch 1.0.0" in warned


def test_resume_refuses_damaged_states(interrupted, capsys):
    path = interrupted / STATE_FILE
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # a truncated file (not written atomically)
    _fails(["fit", "--resume", str(interrupted)], capsys, "cannot read")
    path.write_bytes(b"not a torch file")
    _fails(["fit", "--resume", str(interrupted)], capsys, "cannot read")
    payload = torch.load(__import__("io").BytesIO(good), weights_only=True)
    payload["position"]["epoch"] = 999  # beyond num_epochs
    torch.save(payload, path)
    _fails(["fit", "--resume", str(interrupted)], capsys, "impossible position")
    payload["position"]["epoch"] = 1
    payload["step_losses"] = payload["step_losses"][:1]
    torch.save(payload, path)
    _fails(["fit", "--resume", str(interrupted)], capsys, "step_losses must be 2 finite")
    payload["format"] = "ppl_cvae.checkpoint.v2"
    torch.save(payload, path)
    _fails(["fit", "--resume", str(interrupted)], capsys, "not a ppl_cvae training state")


def test_resume_refuses_finished_runs_and_runs_without_state(interrupted, tmp_path, capsys):
    assert main(["fit", "--resume", str(interrupted), "--quiet"]) == 0
    _fails(["fit", "--resume", str(interrupted)], capsys, "is finished")
    from ppl_cvae.train.resume import prepare_run_folder

    assert prepare_run_folder(tmp_path / "early") == "new"  # killed before its first save
    _fails(["fit", "--resume", str(tmp_path / "early")], capsys, "holds no train_state.pt")
    (tmp_path / "mine").mkdir()
    _fails(["fit", "--resume", str(tmp_path / "mine")], capsys, "not a run folder")


def test_a_failed_fresh_fit_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A diverging fit (an error resuming cannot fix) removes its state and new folder."""
    original = pyro.infer.SVI.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):  # diverges at the third step, after two saves
        calls["n"] += 1
        return float("nan") if calls["n"] == 3 else original(self, *args, **kwargs)

    monkeypatch.setattr(pyro.infer.SVI, "step", step)
    _fails([*FIT, "--out", str(tmp_path / "run"), "--checkpoint-every", "1"], capsys,
           "diverged")
    assert calls["n"] == 3
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_fit_that_fails_after_a_save_keeps_it_and_resumes(tmp_path, capsys, monkeypatch):
    """A simulator or a data file that fails once mid-fit (an error other than divergence)
    keeps the progress saved before it: the error line says how to continue, and ``--resume``
    finishes the run as if nothing had happened. Before, the fresh fit's state and new folder
    were deleted with the error, so an hours-long fit lost everything."""
    argv = [*FIT[:4], "100", *FIT[5:]]
    reference = tmp_path / "reference"
    assert main([*argv, "--out", str(reference), "--no-checkpoint"]) == 0
    run = tmp_path / "run"
    _fail_svi_step(monkeypatch, 7, DataError("problem 'flaky' simulate(20, generator) failed"))
    _fails([*argv, "--out", str(run), "--checkpoint-every", "1"], capsys,
           f"failed; the progress saved before the error is kept in {run}: fix the cause and "
           f"continue with: ppl-cvae fit --resume {run}")
    monkeypatch.undo()
    assert load_train_state(run / STATE_FILE).steps_done == 7
    assert main(["fit", "--resume", str(run), "--threads", "1", "--quiet"]) == 0
    a, _ = load_checkpoint(reference)
    b, _ = load_checkpoint(run)
    assert _same_weights(a, b)
    assert _metrics(run) == _metrics(reference)


@pytest.mark.parametrize("tick, saved_at", [(61.0, 5), (0.0, None)], ids=["timer", "no-timer"])
def test_the_minutes_trigger_follows_the_clock(tmp_path, monkeypatch, tick, saved_at):
    """A fake clock that moves 61 s per reading makes every step due; a frozen one, none."""
    import ppl_cvae.train.resume as resume

    now = {"t": 0.0}

    def monotonic():
        now["t"] += tick
        return now["t"]

    monkeypatch.setattr(resume.time, "monotonic", monotonic)
    path = tmp_path / STATE_FILE
    policy = CheckpointPolicy(path, every_minutes=1.0, every_epoch=False)
    with pytest.raises(Crash):
        _run(False, crash_after=5, policy=policy, monkeypatch=monkeypatch)
    if saved_at is None:
        assert not path.exists()
    else:
        assert load_train_state(path).steps_done == saved_at


@pytest.mark.parametrize("kwargs, match", [
    ({"every_steps": 0}, "every_steps"),
    ({"every_minutes": float("nan")}, "every_minutes"),
    ({"record": {"a": object()}}, "record"),
])
def test_bad_policies_are_refused(kwargs, match):
    from ppl_cvae.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        CheckpointPolicy("s.pt", **kwargs)


# ------------------------------------------------------------- streams and lazily read files
def _source_fit(kind, folder, *, workers=0, crash_after=None, policy=None, resume_from=None,
                monkeypatch=None, file_offset=0.0):
    """Fit on a simulation stream or a lazily read ``.npy`` folder (3 epochs x 3 steps).

    The stream: minibatches of 20 fresh pairs, 3 per epoch, 12 validation pairs simulated
    once. The file: 75 pairs, 15 held out, chunks of 7 rows shuffled 2 at a time, so that
    buffers carry remainders over and a resumed epoch skips buffers unread.
    """
    from ppl_cvae.data.lazy import open_lazy_pairs
    from ppl_cvae.data.streaming import SimulationStream
    from ppl_cvae.train.sources import StreamBatches, prepare_lazy_model

    problem, model_config, train_config, x, y = _setup(False)
    pyro.set_rng_seed(12345)
    pairs = None
    if kind == "stream":
        cvae = build_cvae(model_config, x, y, problem=problem, seed=train_config.seed)
        stream = SimulationStream(problem.simulate, train_config.batch_size,
                                  seed=train_config.seed)
        batches = StreamBatches(stream, steps_per_epoch=3, num_workers=workers)
        validation = None
    else:
        if not folder.exists():
            import numpy as np

            fx, fy = problem.simulate(75, torch.Generator().manual_seed(17))
            folder.mkdir()
            np.save(folder / "x.npy", fx.numpy() + file_offset)
            np.save(folder / "y.npy", fy.numpy())
        pairs = open_lazy_pairs(folder)
        cvae, lazy = prepare_lazy_model(pairs, model_config, train_config,
                                        chunk_bytes=7 * pairs.row_bytes, buffer_chunks=2)
        batches, validation = lazy.batches, lazy.validation
    if crash_after is not None:
        _fail_svi_step(monkeypatch, crash_after, Crash)
    try:
        result = fit(cvae, None, None, train_config, simulator=problem.simulate,
                     batches=batches, validation=validation, progress=False,
                     checkpoint=policy, resume_from=resume_from)
    finally:
        if crash_after is not None:
            monkeypatch.undo()
        if pairs is not None:
            pairs.close()
    return cvae, result


@pytest.mark.parametrize("kind, workers", [("stream", 0), ("stream", 1), ("lazy", 0)],
                         ids=["stream-0-workers", "stream-1-worker", "lazy-npy"])
@pytest.mark.parametrize("crash_after, every_steps, every_epoch, saved_at",
                         [(5, 2, False, 4), (7, None, True, 6)], ids=["mid-epoch", "epoch-end"])
def test_stream_and_lazy_fits_resume_bit_identically(tmp_path, monkeypatch, kind, workers,
                                                     crash_after, every_steps, every_epoch,
                                                     saved_at):
    folder = tmp_path / "pairs"
    ref_cvae, ref = _source_fit(kind, folder, workers=workers)
    path = tmp_path / STATE_FILE
    policy = CheckpointPolicy(path, every_steps=every_steps, every_minutes=None,
                              every_epoch=every_epoch)
    with pytest.raises(Crash):
        _source_fit(kind, folder, workers=workers, crash_after=crash_after, policy=policy,
                    monkeypatch=monkeypatch)
    state = load_train_state(path)
    assert state.steps_done == saved_at
    stream = state.payload["data_stream"]
    assert stream["kind"] == kind
    if kind == "stream":  # the next minibatch is stream index `saved_at`
        assert stream["position"] == saved_at and stream["digest"] is not None
    cvae, result = _source_fit(kind, folder, workers=workers, policy=policy,
                               resume_from=state)
    assert len(result.step_losses) == len(ref.step_losses) == 9
    assert result.step_losses == ref.step_losses  # exact: same minibatches, same draws
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in result.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in ref.history
    ]
    assert _same_weights(cvae, ref_cvae)


def test_stream_and_lazy_states_are_checked_against_the_run(tmp_path, monkeypatch):
    """Negative controls: a shifted stream position, a changed file or simulator, a swap."""
    ref_cvae, _ = _source_fit("stream", None)
    policy = CheckpointPolicy(tmp_path / "s.pt", every_steps=2, every_minutes=None)
    with pytest.raises(Crash):
        _source_fit("stream", None, crash_after=5, policy=policy, monkeypatch=monkeypatch)
    state = load_train_state(tmp_path / "s.pt")
    # one minibatch later: resuming there would skip a minibatch, so it is refused
    state.payload["data_stream"]["position"] += 1
    with pytest.raises(CheckpointError, match="position"):
        _source_fit("stream", None, resume_from=state)
    torch.save(state.payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not fit epoch"):
        load_train_state(tmp_path / "bad.pt")
    state = load_train_state(tmp_path / "s.pt")
    state.payload["data_stream"]["digest"] = "0" * 64  # the simulator changed
    with pytest.raises(CheckpointError, match="simulator changed"):
        _source_fit("stream", None, resume_from=state)
    state = load_train_state(tmp_path / "s.pt")
    state.payload["data_stream"]["seed"] = 4
    with pytest.raises(CheckpointError, match="seed=4"):
        _source_fit("stream", None, resume_from=state)
    state = load_train_state(tmp_path / "s.pt")
    state.payload["data_stream"] = None  # a state of a fit on pairs in memory
    with pytest.raises(CheckpointError, match="this fit trains on stream"):
        _source_fit("stream", None, resume_from=state)
    # a lazy state: the file changed (one value) since the save
    folder = tmp_path / "pairs"
    lazy = CheckpointPolicy(tmp_path / "l.pt", every_steps=2, every_minutes=None)
    with pytest.raises(Crash):
        _source_fit("lazy", folder, crash_after=5, policy=lazy, monkeypatch=monkeypatch)
    state = load_train_state(tmp_path / "l.pt")
    with pytest.raises(CheckpointError, match="this fit trains on stream"):
        _source_fit("stream", None, resume_from=state)
    import numpy as np

    x = np.load(folder / "x.npy")
    original = x.copy()
    x[40, 0] += 1e-3
    np.save(folder / "x.npy", x)
    with pytest.raises(CheckpointError, match="moments of x"):
        _source_fit("lazy", folder, resume_from=state)
    # two training rows' x swapped: the moments of x and of y stay, the pairs do not (before,
    # the resume trained on the mixed-up pairs in silence)
    from ppl_cvae.train.fit import validation_split

    train = sorted(validation_split(75, _setup(False)[2])[0].tolist())
    # two rows of one 7-row chunk: float64 sums of a chunk's float32 values are exact, so the
    # moments of x are the same bits whatever the order of its rows
    pairs = zip(train[:-1], train[1:], strict=True)
    train_rows = next([a, b] for a, b in pairs if a // 7 == b // 7)
    x = original.copy()
    x[train_rows] = x[train_rows[::-1]]
    np.save(folder / "x.npy", x)
    with pytest.raises(CheckpointError, match="moments of the pairing of x and y"):
        _source_fit("lazy", folder, resume_from=state)
    np.save(folder / "x.npy", original)
    old = load_train_state(tmp_path / "l.pt")  # a state from before the pairing moments
    del old.payload["data_stream"]["moments"]["pairing"]
    torch.save(old.payload, tmp_path / "old.pt")
    resumed, _ = _source_fit("lazy", folder, resume_from=load_train_state(tmp_path / "old.pt"))
    assert _same_weights(resumed, _source_fit("lazy", folder)[0])
    state.payload["data_stream"]["moments"]["x"]["m2"] *= -1
    torch.save(state.payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="malformed moments of x"):
        load_train_state(tmp_path / "bad.pt")


@pytest.mark.parametrize("kind", ["stream-1-worker", "lazy-npy"])
def test_cli_resumes_stream_and_lazy_runs(tmp_path, monkeypatch, capsys, kind):
    """``fit --stream --workers 1`` / ``fit --data FOLDER`` (lazy): Ctrl-C, ``--resume``. The
    stream resumes with 2 workers (its minibatches do not depend on them); a lazy run refuses
    ``--workers``."""
    if kind == "lazy-npy":
        import numpy as np

        problem = make_problem("linear_gaussian")
        fx, fy = problem.simulate(125, torch.Generator().manual_seed(2))
        folder = tmp_path / "pairs"
        folder.mkdir()
        np.save(folder / "x.npy", fx.numpy())
        np.save(folder / "y.npy", fy.numpy())
        # 16-byte rows: chunks of 6 pairs, shuffled 2 at a time; 100 training pairs
        argv = ["fit", "--data", str(folder), "--chunk-mb", str(96 / 2**20),
                "--buffer-chunks", "2", *FIT[5:]]
    else:
        argv = [*FIT[:4], "100", *FIT[5:], "--stream", "--workers", "1"]
    run, reference = tmp_path / "run", tmp_path / "reference"
    assert main([*argv, "--out", str(reference), "--no-checkpoint"]) == 0
    _fail_svi_step(monkeypatch, 7, KeyboardInterrupt)
    assert main([*argv, "--out", str(run), "--checkpoint-every", "1"]) == 130
    monkeypatch.undo()
    state = load_train_state(run / STATE_FILE)
    assert state.steps_done == 7  # 5 steps per epoch: saved in epoch 2, after its step 2
    assert state.payload["data_stream"]["kind"] == kind.split("-")[0]
    resume = ["fit", "--resume", str(run), "--threads", "1", "--quiet"]
    if kind == "lazy-npy":
        _fails([*resume, "--workers", "1"], capsys, "was not fitted on a stream")
    else:
        resume += ["--workers", "2"]
    assert main(resume) == 0
    a, _ = load_checkpoint(reference)
    b, _ = load_checkpoint(run)
    assert _same_weights(a, b)
    assert _metrics(run) == _metrics(reference)


def test_an_in_memory_run_resumes_in_memory_when_memory_is_short(tmp_path, monkeypatch,
                                                                 capsys, caplog):
    """A fit of a ``.nc`` read into memory, stopped after a save, resumes to the
    uninterrupted run's weights even when the file now counts as larger than half the free
    memory: the state records the in-memory reading. Before, the resume read the file lazily
    and was refused, "written for other training data (the data digest differs)"."""
    import numpy as np
    import xarray as xr

    import ppl_cvae.cli.fit as fit_cli

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x @ rng.standard_normal((3, 2))).astype(np.float32)
    data = tmp_path / "pairs.nc"
    xr.Dataset({"x": (("s", "a"), x), "y": (("s", "b"), y)}).to_netcdf(data, engine="h5netcdf")
    fit = ["fit", "--data", str(data), "--epochs", "3", "--batch-size", "40", "--hidden-dims",
           "8", "--latent-dim", "2", "--quiet", "--threads", "1"]
    assert main([*fit, "--out", str(tmp_path / "reference")]) == 0
    _fail_svi_step(monkeypatch, 6, KeyboardInterrupt)
    try:
        assert main([*fit, "--out", str(tmp_path / "run"), "--checkpoint-every", "2"]) == 130
    finally:
        monkeypatch.undo()
    monkeypatch.setattr(fit_cli, "LAZY_MEMORY_FRACTION", 1e-12)
    assert main(["fit", "--resume", str(tmp_path / "run"), "--quiet", "--threads", "1"]) == 0
    assert "reading it into memory all the same" in caplog.text
    a, _ = load_checkpoint(tmp_path / "reference")
    b, _ = load_checkpoint(tmp_path / "run")
    assert _same_weights(a, b)


def test_resume_help_names_every_option_resume_accepts():
    """``fit --help`` for ``--resume`` left out ``--workers``, which ``--resume`` accepts (the
    README audit, session 34)."""
    from ppl_cvae.cli.fit import RESUME_KEEPS
    from ppl_cvae.cli.parser import build_parser

    fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
    text = next(a.help for a in fit_parser._actions if "--resume" in a.option_strings)
    for dest in RESUME_KEEPS:
        flag = "--" + dest.replace("_", "-")
        named = "--checkpoint-*" in text if "checkpoint" in dest else flag in text
        assert named, (flag, text)
