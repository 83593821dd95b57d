"""Hostile and careless inputs to the newest features: one error line, exit 2, nothing lost.

Each test is one failure mode found by ``benchmarks/hostile_inputs.py`` (streams, lazy files,
resumes, NUTS settings) and fixed: before the fix it gave a traceback, a hang, a silently
ignored flag or a message that blamed the wrong thing. Every refusal is checked by its message
(what arrived, what was expected); the accepted variants by their values.
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap

import numpy as np
import pytest
import torch

from ppl_cvae import ConfigError, DataError, make_problem
from ppl_cvae.cli import main
from ppl_cvae.data.streaming import SimulationStream
from ppl_cvae.errors import ResourceError, ShapeError
from ppl_cvae.problems.checked_simulator import CheckedSimulator, check_simulated
from ppl_cvae.train.resume import lock_run_folder
from ppl_cvae.train.sources import StreamBatches, max_stream_workers

TINY = ["--epochs", "1", "--num-train", "128", "--batch-size", "64", "--hidden-dims", "8",
        "--latent-dim", "2", "--quiet", "--threads", "1"]


def _fails(argv, capsys, match):
    """Run the CLI; assert exit 2 and one error line containing ``match``.

    Exit 2 either returned by ``main`` or raised as ``SystemExit(2)`` by the argument parser.
    """
    threads = torch.get_num_threads()
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and match in err[0], err


# ----------------------------------------------------------------- a user's simulator
@pytest.mark.parametrize("out, error, match", [
    (torch.zeros(4, 3), DataError, "returned a Tensor; expected a pair (x, y)"),
    ((torch.zeros(4, 2),), DataError, "a tuple of length 1"),
    ((np.zeros((4, 2)), torch.zeros(4, 1)), DataError,
     "x as a numpy.ndarray; expected a torch.Tensor"),
    ((torch.zeros(4, 2), torch.zeros(3, 1)), ShapeError, "y of shape (3, 1); expected (4, 1)"),
    ((torch.zeros(4, 3), torch.zeros(4, 1)), ShapeError, "x of shape (4, 3); expected (4, 2)"),
    ((torch.zeros(4, 2, dtype=torch.complex64), torch.zeros(4, 1)), DataError, "complex"),
    ((torch.zeros(4, 2, device="meta"), torch.zeros(4, 1)), DataError,
     "x as a tensor on the meta device"),
    ((torch.zeros(4, 2), torch.zeros(4, 1).to_sparse()), DataError,
     "y as a tensor of layout torch.sparse_coo"),
    ((torch.zeros(4, 2), torch.tensor([[0.0], [float("nan")], [1.0], [float("inf")]])),
     DataError, "2 NaN or inf values in y (in 2 of 4 pairs"),
    ((torch.full((4, 2), 1e300, dtype=torch.float64), torch.zeros(4, 1)), DataError,
     "8 NaN or inf values in x (in 4 of 4 pairs, after casting to float32)"),
])
def test_bad_simulator_outputs_are_named(out, error, match):
    """A wrong shape is a ShapeError, anything else a DataError (the rule of ppl_cvae.errors)."""
    with pytest.raises(error) as info:
        check_simulated(out, 4, (2,), (1,), "problem 'mine' simulate(4, generator)")
    assert match in str(info.value) and "problem 'mine'" in str(info.value)


def test_real_integer_and_bool_outputs_are_cast_to_float32():
    x64 = torch.tensor([[0.1, 2.0]], dtype=torch.float64)
    x, y = check_simulated((x64, torch.tensor([[True]])), 1, (2,), (1,), "s")
    assert x.dtype == y.dtype == torch.float32
    assert torch.equal(x, x64.float()) and torch.equal(y, torch.ones(1, 1))
    x, y = check_simulated((torch.tensor([[3, -4]]), None), 1, (2,), None, "s")
    assert y is None and torch.equal(x, torch.tensor([[3.0, -4.0]]))


def test_outputs_that_need_grad_or_live_elsewhere_become_plain_float32_cpu_tensors():
    weight = torch.ones(2, requires_grad=True)
    x, y = check_simulated((torch.ones(4, 2) * weight, torch.ones(4, 1)), 4, (2,), (1,), "s")
    assert not x.requires_grad and x.device.type == "cpu" and x.dtype == torch.float32
    assert torch.equal(x, torch.ones(4, 2))


def test_an_exhausted_iterator_inside_a_simulator_is_named():
    pairs = iter([(torch.zeros(3, 2), torch.zeros(3, 2))])
    checked = CheckedSimulator(lambda num, generator: next(pairs), (2,), (2,), "problem 'it'")
    checked(3)
    with pytest.raises(ConfigError, match=r"failed: StopIteration \(an iterator ran out"):
        checked(3)


def test_a_raising_simulator_is_one_config_error_and_reproducibility_is_checked():
    def boom(num, generator=None):
        raise ValueError("solver did not converge\nsecond line")

    with pytest.raises(ConfigError, match=r"simulate\(5, generator\) failed: ValueError: "
                                          r"solver did not converge$"):
        CheckedSimulator(boom, (2,), (2,), "problem 'mine'")(5)
    problem = make_problem("linear_gaussian")
    good = CheckedSimulator(problem.simulate, problem.x_shape, problem.y_shape, "p")
    assert good.is_reproducible()

    def global_rng(num, generator=None):  # ignores the generator it is given
        return problem.simulate(num, None)

    assert not CheckedSimulator(global_rng, problem.x_shape, problem.y_shape, "p").is_reproducible()


def test_a_worker_refusal_reaches_the_consumer_as_one_line():
    """A NaN in minibatch 3, simulated in a DataLoader worker: one DataError naming it."""
    problem = make_problem("linear_gaussian")

    def simulate(num, generator):
        x, y = problem.simulate(num, generator)
        if generator.initial_seed() == stream.seed_of(3):
            y[0, 0] = float("nan")
        return x, y

    checked = CheckedSimulator(simulate, problem.x_shape, problem.y_shape, "problem 'p'")
    stream = SimulationStream(checked, 8, seed=1)
    batches = StreamBatches(stream, 5, num_workers=1)
    with pytest.raises(DataError) as info:
        list(batches.epoch_batches(1))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "1 NaN or inf values in y" in message and "stream minibatch 3, in a worker" in message
    assert stream.position == 3  # minibatches 0-2 were consumed, none after the failure


def _user_module(tmp_path, monkeypatch, name, body):
    """Write module ``name`` (a user's problem) into ``tmp_path`` and put it on the path."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import torch
        from ppl_cvae.problems.base import Problem

        class Mine(Problem):
            name, x_shape, y_shape = "mine", (2,), (2,)
            x_dims, y_dims, coords = ("parameter",), ("datum",), {}
            noise_std = misfit_std = 0.1
            def sample_prior(self, num, generator=None):
                return torch.randn(num, 2, generator=generator)
            def forward(self, x):
                return 2 * x
    """) + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_cli_names_a_user_simulator_that_returns_numpy(tmp_path, monkeypatch, capsys, stream):
    module = f"hostile_numpy_{len(stream)}"
    _user_module(tmp_path, monkeypatch, module, """
        class Numpy(Mine):
            def simulate(self, num, generator=None):
                x, y = super().simulate(num, generator)
                return x.numpy(), y.numpy()

        def make():
            return Numpy()
    """)
    run = tmp_path / "run"
    _fails(["fit", "--problem", f"{module}:make", *stream, "--out", run, *TINY],
           capsys, "problem 'mine' simulate(2, generator) returned x as a numpy.ndarray")
    assert not run.exists()  # a fresh fit that failed leaves nothing


def test_simulate_says_when_its_seed_fixes_nothing(tmp_path, monkeypatch, caplog):
    """A simulator that ignores its generator: ``fit`` warned, ``simulate --seed`` did not."""
    _user_module(tmp_path, monkeypatch, "hostile_global_rng", """
        class Global(Mine):
            def sample_prior(self, num, generator=None):
                return torch.randn(num, 2)  # the global RNG, not the generator

        def make():
            return Global()
    """)
    argv = ["simulate", "--problem", "hostile_global_rng:make", "--num", "4", "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "a.npz")]) == 0
    assert "--seed does not fix the pairs written" in caplog.text
    caplog.clear()
    assert main(["simulate", "--problem", "linear_gaussian", "--num", "4", "--out",
                 str(tmp_path / "b.npz")]) == 0  # fmt: skip
    assert "does not fix" not in caplog.text


def test_cli_trains_on_a_float64_simulator(tmp_path, monkeypatch, capsys):
    """float64 pairs (a NumPy-based simulator) are cast to float32, as data files are."""
    _user_module(tmp_path, monkeypatch, "hostile_double", """
        class Double(Mine):
            def simulate(self, num, generator=None):
                x, y = super().simulate(num, generator)
                return x.double(), y.double()

        def make():
            return Double()
    """)
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--problem", "hostile_double:make", "--stream", "--out",
                     str(tmp_path / "run"), *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "run" / "model.pt").is_file()


# ----------------------------------------------------------------- workers
def test_too_many_workers_are_refused_before_any_process_starts(tmp_path, capsys):
    limit = max_stream_workers()
    assert limit >= 4
    _fails(["fit", "--problem", "linear_gaussian", "--stream", "--workers", limit + 1,
            "--out", tmp_path / "run", *TINY], capsys, f"at most {limit}")
    problem = make_problem("linear_gaussian")
    with pytest.raises(ConfigError, match="simulation workers is more than this machine"):
        StreamBatches(SimulationStream(problem.simulate, 8), 2, num_workers=limit + 1)


# ----------------------------------------------------------------- run-folder lock
def test_a_locked_run_folder_is_refused(tmp_path):
    with lock_run_folder(tmp_path):
        with pytest.raises(ConfigError, match="being fitted by another process"):
            with lock_run_folder(tmp_path):
                pass
    with lock_run_folder(tmp_path):  # released when the first holder is done
        pass


def test_a_fresh_fit_into_a_folder_being_fitted_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with lock_run_folder(run):
        _fails(["fit", "--problem", "linear_gaussian", "--out", run, "--overwrite", *TINY],
               capsys, "being fitted by another process")
    assert sorted(os.listdir(run)) == ["keep.txt"]


def test_without_flock_the_lock_is_a_file_that_a_killed_holder_does_not_leave_locked(
    tmp_path, monkeypatch
):
    """Where fcntl is missing (Windows): filelock on a file beside the folder; kill -9 frees it.

    A child process takes the lock and is killed with SIGKILL while holding it: the lock file
    stays behind, and the next lock of the folder must succeed without cleanup (the operating
    system dropped the child's lock). While the child holds it, a second lock is refused.
    """
    import signal
    import subprocess
    import sys

    import filelock  # imported before fcntl is hidden: it keeps its own reference

    from ppl_cvae.train.resume import run_lock_path

    run = tmp_path / "run"
    run.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, filelock; sys.modules['fcntl'] = None\n"
         "from ppl_cvae.train.resume import lock_run_folder\n"
         f"with lock_run_folder({str(run)!r}):\n"
         "    print('held', flush=True); time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        monkeypatch.setitem(__import__("sys").modules, "fcntl", None)
        assert filelock.FileLock is not filelock.SoftFileLock
        with pytest.raises(ConfigError, match="being fitted by another process"):
            with lock_run_folder(run):
                pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert run_lock_path(run).exists()  # the killed holder's file is left behind ...
    with lock_run_folder(run):  # ... and does not block
        with pytest.raises(ConfigError, match="being fitted by another process"):
            with lock_run_folder(run):
                pass
    assert sorted(os.listdir(run)) == []  # nothing written inside the run folder


# ----------------------------------------------------------------- flags ignored in silence
@pytest.mark.parametrize("flags, match", [
    (["--flow-layers", "3"], "likelihood is 'gaussian': add --likelihood flow"),
    (["--prior", "flow", "--flow-layers", "3"], "use --prior-flow-layers"),
    (["--prior-flow-layers", "2"], "add --prior flow or drop --prior-flow-layers"),
    (["--prior-flow-type", "coupling"], "sets the type of the flow of --prior flow, but this "
                                        "run's prior is 'learned'"),
])
def test_flow_layer_flags_without_their_flow_are_refused(tmp_path, capsys, flags, match):
    _fails(["fit", "--problem", "linear_gaussian", *flags, "--out", tmp_path / "run", *TINY],
           capsys, match)


@pytest.mark.parametrize("flags, match", [
    (["--method", "importance", "--chains", "2"], "--chains applies to --method nuts, "
                                                  "latent-nuts, facies-mcmc or facies-smc only, "
                                                  "got --method importance"),
    (["--warmup", "10"], "--warmup applies to --method nuts, latent-nuts or facies-mcmc only, "
                         "got --method amortized"),
    (["--method", "latent-nuts", "--facies-moves", "4"], "--facies-moves applies to --method "
                                                         "facies-mcmc or facies-smc only, got "
                                                         "--method latent-nuts"),
    (["--method", "nuts", "--temperatures", "4"], "--temperatures applies to --method "
                                                  "facies-mcmc only, got --method nuts"),
    (["--method", "latent-nuts", "--adapt-mass-matrix"], "--adapt-mass-matrix applies to "
                                                         "--method nuts only"),
    (["--method", "nuts", "--proposals", "100"], "--proposals applies to --method importance"),
    (["--method", "importance", "--potential-dtype", "float32"], "--potential-dtype apply to "
                                                                 "--method nuts only"),
    (["--max-misfit", "2"], "--max-misfit applies to --method refine only, got --method "
                            "amortized"),
    (["--method", "nuts", "--refine-steps", "5"], "--refine-steps applies to --method refine"),
    (["--method", "importance", "--oversample", "2"], "--oversample applies to --method refine"),
    (["--method", "facies-mcmc", "--refine-lr", "0.5"], "--refine-lr applies to --method refine"),
    (["--method", "latent-nuts", "--decoder-noise", "mean"], "--decoder-noise applies to "
                                                             "--method amortized or refine only"),
])
def test_sample_flags_of_another_method_are_refused(tmp_path, capsys, flags, match):
    """Refused before the run is read (the run folder need not exist for this check)."""
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((1, 2), dtype=np.float32))
    _fails(["sample", tmp_path / "run", "--observation", obs, *flags, "--out",
            tmp_path / "p.nc"], capsys, match)


def test_importance_proposals_are_estimated_before_any_is_drawn():
    from inference.importance import importance_sample
    from ppl_cvae import ModelConfig
    from ppl_cvae.train import build_cvae

    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(16, torch.Generator().manual_seed(0))
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)
    cvae = build_cvae(config, x, y, problem=problem, seed=0)
    # 10**12 proposals x (2 + 2 + 1) values x 8 bytes + 24 bytes: about 58 TiB
    with pytest.raises(ResourceError, match="1000000000000 importance proposals of 2 values"):
        importance_sample(cvae, problem, y[:1], 10**12)


def test_stuck_chains_give_an_infinite_rhat_without_warnings():
    """Chains that never moved: R-hat inf (no ArviZ division by zero; warnings are errors)."""
    import arviz as az

    from inference.arviz_io import chain_diagnostics, stuck_coordinates

    rng = np.random.default_rng(0)
    moving = rng.normal(size=(2, 10, 1))
    stuck = np.stack([np.full((10, 1), 1.0), np.full((10, 1), 2.0)])
    draws = np.concatenate([stuck, moving], axis=-1)
    assert stuck_coordinates(draws).tolist() == [True, False]
    rhat, ess = chain_diagnostics(draws)
    assert rhat == float("inf") and np.isfinite(ess)
    expected = float(az.rhat(az.convert_to_dataset({"t": moving}))["t"].max())
    assert chain_diagnostics(moving) == (pytest.approx(expected), pytest.approx(
        float(az.ess(az.convert_to_dataset({"t": moving}), method="bulk")["t"].min())))
    assert chain_diagnostics(np.full((2, 10, 1), 3.0))[0] == float("inf")  # one point


def test_nuts_refuses_a_nan_density_and_falls_back_when_float32_raises(
    tmp_path, monkeypatch
):
    from inference.mcmc import nuts_sample
    from ppl_cvae.problems.linear_gaussian import LinearGaussian

    class NaNLikelihood(LinearGaussian):
        def log_likelihood(self, x, y):
            return super().log_likelihood(x, y) * float("nan")

    class Float64Only(LinearGaussian):
        def log_likelihood(self, x, y):
            if x.dtype != torch.float64:
                raise TypeError(f"needs float64, got {x.dtype}")
            return super().log_likelihood(x, y)

    x, y = LinearGaussian().simulate(8, torch.Generator().manual_seed(0))
    with pytest.raises(DataError, match="is nan at 2 of 2 chain starts"):
        nuts_sample(NaNLikelihood(), y[0], x, num_samples=8, num_chains=2, warmup_steps=5)
    with pytest.warns(UserWarning, match="float32 potential raised TypeError: needs float64"):
        result = nuts_sample(Float64Only(), y[0], x, num_samples=8, num_chains=2,
                             warmup_steps=5, potential_dtype="float32")
    assert torch.isfinite(result.x).all()


# ----------------------------------------------------------------- lazy files
def test_an_empty_folder_as_data_is_named_as_a_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(["fit", "--data", tmp_path / "empty", "--out", tmp_path / "run", *TINY], capsys,
           "is a folder without x.npy and y.npy")


def test_a_chunk_larger_than_the_file_is_not_counted_beyond_the_file(tmp_path, capsys):
    """--chunk-mb 1e9 on a 200-pair folder: one chunk of 200 pairs, not 3.7e13 (refused)."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    x, y = make_problem("linear_gaussian").simulate(200, torch.Generator().manual_seed(0))
    np.save(folder / "x.npy", x.numpy())
    np.save(folder / "y.npy", y.numpy())
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--data", str(folder), "--chunk-mb", "1e9", "--buffer-chunks",
                     str(10**9), "--out", str(tmp_path / "run"), *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "run" / "model.pt").is_file()


# ----------------------------------------------------------------- NUTS
def test_nuts_needs_four_draws_per_chain_and_memory_for_them():
    from inference.mcmc import MIN_DRAWS_PER_CHAIN, nuts_sample
    from inference.sample import CorrectionConfig, sample_corrected
    from ppl_cvae import ModelConfig
    from ppl_cvae.train import build_cvae

    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(16, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="num_samples=3 draws per chain; .* at least 4"):
        nuts_sample(problem, y[0], x, num_samples=MIN_DRAWS_PER_CHAIN - 1, num_chains=2)
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)
    cvae = build_cvae(config, x, y, problem=problem, seed=0)
    nuts = CorrectionConfig(method="nuts", chains=2, warmup_steps=5)
    # 5 draws over 2 chains: ceil(5 / 2) = 3 per chain, one short of the minimum
    with pytest.raises(ConfigError, match="5 NUTS draws over 2 chains is 3 per chain; .* at "
                                          "least 8 draws"):
        sample_corrected(cvae, y[0], 5, problem, nuts)
    with pytest.raises(ResourceError, match="NUTS draws"):
        sample_corrected(cvae, y[0], 10**12, problem, nuts)


def test_a_state_recorded_with_more_workers_than_here_resumes_with_the_cap(
    tmp_path, monkeypatch, capsys, caplog
):
    """A stream run saved with 1 worker, resumed where the cap is 0: it continues in-process."""
    import pyro

    import ppl_cvae.train.sources as sources

    run = tmp_path / "run"
    original, calls = pyro.infer.SVI.step, {"n": 0}

    def step(self, *args, **kwargs):  # Ctrl-C after 3 steps (saved after each)
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(pyro.infer.SVI, "step", step)
        argv = ["fit", "--problem", "linear_gaussian", "--stream", "--workers", "1", "--out",
                str(run), "--checkpoint-every", "1", *TINY[:1], "2", *TINY[2:]]
        assert main(argv) == 130
        monkeypatch.undo()
        monkeypatch.setattr(sources, "max_stream_workers", lambda: 0)
        assert main(["fit", "--resume", str(run), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "fitted with 1 simulation workers; this machine runs at most 0" in warned
    assert (run / "model.pt").is_file()


def test_a_file_with_fewer_pairs_than_values_is_warned_about(tmp_path, caplog):
    """10 pairs for 96 values of x and 4 of y: the fit warns, naming the counts; 100 do not."""
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    try:
        for num in (10, 100):
            x = rng.normal(size=(num, 96)).astype(np.float32)
            np.savez(tmp_path / f"d{num}.npz", x=x, y=x[:, :4])
            caplog.clear()
            argv = ["fit", "--data", str(tmp_path / f"d{num}.npz"), "--out",
                    str(tmp_path / f"run{num}"), "--epochs", "1", "--quiet"]
            assert main(argv) == 0
            warned = " ".join(r.getMessage() for r in caplog.records)
            few = f"d{num}.npz holds {num} pairs for 100 values per pair (96 of x, 4 of y)"
            assert (few in warned) == (num == 10), warned
            if num == 10:
                assert "a validation loss from 1 held-out pair(s)" in warned
    finally:
        torch.set_num_threads(threads)


def test_a_fit_without_validation_pairs_says_so(tmp_path, caplog, capsys):
    """4 pairs at val_fraction 0.1 hold out none: a warning and no 'validation loss nan'."""
    threads = torch.get_num_threads()
    try:
        for num in (4, 10):
            caplog.clear()
            argv = ["fit", "--problem", "linear_gaussian", "--num-train", str(num),
                    "--epochs", "1", "--hidden-dims", "8", "--out", str(tmp_path / f"run{num}"),
                    "--quiet"]  # fmt: skip
            assert main(argv) == 0
            warned = " ".join(r.getMessage() for r in caplog.records)
            printed = capsys.readouterr().out
            none_held = "no validation pairs: val_fraction 0.1 of 4 pairs rounds to 0"
            assert (none_held in warned) == (num == 4), warned
            assert "nan" not in printed
            assert ("validation loss" in printed) == (num == 10), printed
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------- generative-prior samplers
GEN_FACIES = """
import torch
from ppl_cvae.problems.base import Problem


class Facies(Problem):
    # cells of facies 0/1 (one run of ones), three block averages of them, Gaussian noise
    name = "g_facies"
    x_shape, y_shape = (6,), (3,)
    x_dims, y_dims, coords = ("cell",), ("datum",), {}
    noise_std = misfit_std = 0.1

    def sample_prior(self, num, generator=None):
        n = self.x_shape[0]
        start = torch.randint(0, n, (num, 1), generator=generator)
        length = torch.randint(1, n // 2 + 1, (num, 1), generator=generator)
        cells = torch.arange(n)
        return ((cells >= start) & (cells < start + length)).float()

    def forward(self, x):
        n = x.shape[-1]
        a = (torch.arange(n) * 3 // n == torch.arange(3)[:, None]).to(x.dtype)
        return x @ (a / a.sum(-1, keepdim=True)).T


class NoiseFree(Facies):
    name = "g_noisefree"
    noise_std = 0.0
    misfit_std = 1.0


class Five(Facies):
    name = "g_five"
    x_shape = (5,)


def facies(): return Facies()
def noisefree(): return NoiseFree()
def five(): return Five()
"""


@pytest.fixture(scope="module")
def generative(tmp_path_factory):
    """A facies CVAE, its Bernoulli, Gaussian and 5-cell generative priors, observations.

    The sweep's ``generative`` category (benchmarks/hostile_inputs.py) on a user's 6-cell facies
    problem; four one-epoch fits of 8 hidden units, about a second each.
    """
    root = tmp_path_factory.mktemp("generative")
    (root / "hostile_gen_facies.py").write_text(GEN_FACIES)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        facies = ["--problem", "hostile_gen_facies:facies"]
        bern = ["--likelihood", "bernoulli"]
        try:
            for name, flags in (("run", [*facies, *bern]),
                                ("prior", [*facies, *bern, "--unconditional"]),
                                ("prior_gauss", [*facies, "--unconditional"]),
                                ("prior_five", ["--problem", "hostile_gen_facies:five", *bern,
                                                "--unconditional"])):
                # a Gaussian fitted to facies codes is warned about (and refused by the
                # facies samplers, tested below)
                codes = pytest.warns(UserWarning, match="fitted to codes") if (
                    name == "prior_gauss") else contextlib.nullcontext()
                with codes:
                    assert main(["fit", *flags, "--out", str(root / name), *TINY]) == 0
            assert main(["simulate", *facies, "--num", "2", "--out", str(root / "obs.npz"),
                         "--threads", "1"]) == 0
        finally:
            torch.set_num_threads(threads)
        y = np.load(root / "obs.npz")["y"]
        np.save(root / "obs_nan.npy", np.where([[False, True, False]], np.nan, y))
        yield root


def _generative_sample(root, method, *flags, prior="prior", observation="obs.npz"):
    return ["sample", root / "run", "--observation", root / observation, "--num-samples", 8,
            "--chains", 2, "--warmup", 4, "--method", method, "--generative-prior",
            root / prior, "--out", root / "post.nc", "--threads", 1, *flags]


@pytest.mark.parametrize("method", ["facies-mcmc", "latent-nuts"])
@pytest.mark.parametrize("change, match", [
    ({"prior": "nope"}, "does not exist"),
    ({"prior": "run"}, "must be an unconditional VAE (y_shape None), got a conditional model"),
    ({"prior": "prior_five"}, "has x (6,), y (3,); the model has x (5,), y None"),
    ({"observation": "obs_nan.npy"}, "contains 2 NaN or inf values"),
    ({"flags": ["--problem", "hostile_gen_facies:noisefree"]}, "'g_noisefree' is noise-free"),
    ({"flags": ["--warmup", str(10**30)]}, "--warmup: expected a whole number in [0, 2**63 - 1]"),
    ({"flags": ["--chains", str(10**9), "--num-samples", str(4 * 10**9)]},
     "1000000000 amortized draws per observation to start 1000000000 chains would need"),
])
def test_generative_prior_samplers_refuse_with_one_line(generative, capsys, method, change,
                                                        match):
    """Each refusal is one line naming the cause, before anything is written."""
    flags = change.get("flags", [])
    argv = _generative_sample(generative, method, *flags, prior=change.get("prior", "prior"),
                              observation=change.get("observation", "obs.npz"))
    _fails(argv, capsys, match)
    assert not (generative / "post.nc").exists()


@pytest.mark.parametrize("flags, match", [
    (["--facies-moves", str(10**30)], "--facies-moves: expected a whole number in [0, 2**63 - 1]"),
    (["--temperatures", "1.5"], "--temperatures: expected a whole number >= 1, got '1.5'"),
    (["--temperatures", str(10**9)], "temperatures=1000000000 tempered replicas of each of 2 "
                                     "chains (6 cells, 2 facies) would need about"),
])
def test_facies_mcmc_flags_are_refused(generative, capsys, flags, match):
    _fails(_generative_sample(generative, "facies-mcmc", *flags), capsys, match)


def test_facies_mcmc_with_a_gaussian_prior_is_refused(generative, capsys):
    _fails(_generative_sample(generative, "facies-mcmc", prior="prior_gauss"), capsys,
           "needs a generative prior with a bernoulli or categorical decoder, got likelihood "
           "'gaussian'")


def test_facies_mcmc_without_moves_or_tempering_lists_its_nan_statistics(generative, capsys):
    """--facies-moves 0 --temperatures 1: no facies moves and no swaps were made, so their
    acceptance rates are NaN by definition; the file lists every non-finite variable in its
    ``not_finite`` attribute, counted as stored (2 chains x 4 draws x 2 observations = 16)."""
    import json

    import arviz as az

    out = generative / "post.nc"
    threads = torch.get_num_threads()
    try:
        assert main([str(a) for a in _generative_sample(
            generative, "facies-mcmc", "--facies-moves", 0, "--temperatures", 1)]) == 0
    finally:
        torch.set_num_threads(threads)
    idata = az.from_netcdf(out)
    out.unlink()
    listed = json.loads(idata.attrs["not_finite"])  # kept at the root by with_chains
    stats = idata.sample_stats
    assert np.isnan(stats["accept_x"].values).all() and np.isnan(stats["swap_accept"].values).all()
    assert listed["sample_stats.accept_x"] == listed["sample_stats.swap_accept"] == [16, 16]
    assert np.isfinite(stats["accept_z"].values).all()  # latent moves were made
    for group in idata.groups():
        for name, var in idata[group].data_vars.items():
            if var.dtype.kind == "f":
                bad = int((~np.isfinite(var.values)).sum())
                assert (bad == 0) == (f"{group}.{name}" not in listed), (group, name)
    assert idata.attrs["method"] == "facies-mcmc" and idata.attrs["temperatures"] == 1


def test_counts_beyond_64_bits_are_refused():
    from ppl_cvae.checks import MAX_COUNT, as_count

    assert as_count(MAX_COUNT, "n") == 2**63 - 1
    with pytest.raises(ConfigError, match=r"flips_per_step must be an int in \[0, 2\*\*63 - 1\]"):
        as_count(2**63, "flips_per_step", minimum=0)


def test_facies_mcmc_replicas_beyond_memory_are_refused_before_any_step():
    """10**12 replicas of 2 chains x 6 cells: about 8 bytes x 86 values each, 1.3 PiB."""
    from inference.facies_mcmc import facies_mcmc_sample
    from ppl_cvae import ModelConfig
    from ppl_cvae.models.cvae import CVAE
    from ppl_cvae.problems import LinearGaussian

    vae = CVAE(ModelConfig(x_shape=(2,), y_shape=None, latent_dim=1, hidden_dims=(4,),
                           likelihood="bernoulli", prior="standard_normal"))
    with pytest.raises(ResourceError, match="temperatures=1000000000000 tempered replicas of "
                                            "each of 2 chains"):
        facies_mcmc_sample(vae, LinearGaussian(), torch.zeros(2), torch.zeros(3, 2),
                           num_samples=4, warmup_steps=0, num_chains=2, temperatures=10**12)


# ----------------------------------------------------------------- problem code that fails
FAILING = """
import math
import sys

import torch
from ppl_cvae.problems.base import Problem


class Failing(Problem):
    # y = A x + noise; ``member`` fails from its call after + 1 on, where x_0 > region
    name = "pc_failing"
    x_shape, y_shape = (2,), (2,)
    x_dims, y_dims, coords = ("p",), ("d",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = True

    def __init__(self, member="none", failure="none", after=0, region=-math.inf):
        self.member, self.failure, self.after, self.region = member, failure, after, region
        self.calls = 0

    def _fail(self, member, value, x):
        if member != self.member:
            return value
        self.calls += 1
        inside = x[..., 0] > self.region
        if self.calls <= self.after or not bool(inside.any()):
            return value
        if self.failure == "value":
            raise ValueError("solver diverged")
        if self.failure == "exit":
            sys.exit(3)
        mask = inside[..., None] if member == "forward" else inside
        return torch.where(mask, {"nan": math.nan, "inf": math.inf}[self.failure], value)

    def sample_prior(self, num, generator=None):
        return torch.randn(num, 2, generator=generator)

    def forward(self, x):
        y = torch.stack([x[..., 0] + x[..., 1], x[..., 0] - 0.5 * x[..., 1]], -1)
        return self._fail("forward", y, x)

    def log_prior(self, x):
        lp = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
        return self._fail("log_prior", lp, x)

    def log_likelihood(self, x, y):
        return self._fail("log_likelihood", super().log_likelihood(x, y), x)


def failing(**kwargs): return Failing(**kwargs)
"""


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """A run of a user's 2-parameter problem whose members fail on request; an observation.

    The sweep's ``problem-code`` category (benchmarks/hostile_inputs.py): one one-epoch fit
    of 8 hidden units, about a second.
    """
    root = tmp_path_factory.mktemp("problem_code")
    (root / "hostile_failing.py").write_text(FAILING)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        problem = ["--problem", "hostile_failing:failing"]
        try:
            assert main(["fit", *problem, "--out", str(root / "run"), *TINY]) == 0
            assert main(["simulate", *problem, "--num", "1", "--out", str(root / "obs.npz"),
                         "--threads", "1"]) == 0
        finally:
            torch.set_num_threads(threads)
        yield root


@pytest.mark.parametrize("method, settings, match", [
    # inside Pyro's NUTS tree: a raise, an infinite density, NaN everywhere (Pyro then fails)
    ("nuts", ["member=forward", "failure=value", "after=40"],
     "problem 'pc_failing' forward raised ValueError: solver diverged for x of shape (2,)"),
    ("nuts", ["member=log_prior", "failure=inf", "after=40"],
     "log p(x) + log p(y | x) is inf at a point NUTS evaluated (there: log_prior inf"),
    ("nuts", ["member=log_likelihood", "failure=nan", "after=40"],
     "check the problem's log_likelihood (and the forward operator it calls)"),
    # at the chains' starts: a sys.exit in the layout check, a forward that is NaN there
    ("nuts", ["member=forward", "failure=exit"],
     "problem 'pc_failing' forward called sys.exit(3); problem code must raise an exception"),
    ("nuts", ["member=log_prior", "failure=exit"],
     "problem 'pc_failing' log_prior called sys.exit(3); problem code must raise an exception"),
    ("nuts", ["member=forward", "failure=nan"],
     "check the problem's forward (it is not finite at those models; log_likelihood calls it)"),
    # every importance weight zero because the forward overflows: named, no NumPy warning
    ("importance", ["member=forward", "failure=inf"],
     "problem 'pc_failing': forward is not finite (so log_likelihood is -inf) at every one"),
    # the second call of log_prior writes the file's sample_stats.lp
    ("importance", ["member=log_prior", "failure=value", "after=1"],
     "problem 'pc_failing' log_prior raised ValueError: solver diverged for x of shape (8, 2)"),
])
def test_problem_code_failing_inside_a_sampler_is_one_line(failing, capsys, method, settings,
                                                          match):
    """Before: a traceback (the raise through Pyro, or Pyro's own on the NaN it was given)."""
    out = failing / "post.nc"
    argv = ["sample", failing / "run", "--observation", failing / "obs.npz", "--num-samples",
            8, "--method", method, "--out", out, "--threads", 1, "--problem",
            "hostile_failing:failing"]
    if method == "nuts":
        argv += ["--chains", 2, "--warmup", 6]
    for setting in settings:
        argv += ["--problem-arg", setting]
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(failing))
        _fails(argv, capsys, match)
    assert not out.exists() and not list(failing.glob(".*"))  # nothing at --out, no temporary


def test_nuts_steps_around_a_region_where_the_density_is_nan():
    """NaN where ``x_0 > 0``: Pyro's NUTS takes it as a divergent step, so no draw lies there.

    A NaN that depends on ``x`` alone (a solver failing in part of the model space) is a
    region the chains never enter, as ``-inf`` would be: every draw keeps ``x_0 <= 0`` from
    starts there, while without the NaN about half the posterior mass lies beyond (control).
    """
    from inference.mcmc import nuts_sample
    from ppl_cvae.problems.linear_gaussian import LinearGaussian

    class HalfNaN(LinearGaussian):
        def log_likelihood(self, x, y):
            value = super().log_likelihood(x, y)
            return torch.where(x[..., 0] > 0, float("nan"), value)

    plain = LinearGaussian()
    y = torch.zeros(plain.y_shape)  # the posterior is centred at x = 0: half of it at x_0 > 0
    starts = -torch.rand(8, *plain.x_shape) - 0.1  # all in x_0 < 0
    kw = {"num_samples": 50, "num_chains": 2, "warmup_steps": 50, "seed": 0}
    inside = nuts_sample(HalfNaN(), y, starts, **kw)
    assert bool(torch.isfinite(inside.x).all()) and bool((inside.x[..., 0] <= 0).all())
    assert inside.divergences > 0  # the steps into the region, rejected
    control = nuts_sample(plain, y, starts, **kw)
    assert bool((control.x[..., 0] > 0).any())


# ------------------------------------------------ problem code that fails in evaluate
EVAL_BOOM = textwrap.dedent('''
    import torch

    from ppl_cvae.problems import LinearGaussian


    class Boom(LinearGaussian):
        name = "eval_boom"

        def __init__(self, fail=False):
            super().__init__()
            self.fail = fail

        def forward(self, x):
            if self.fail:
                raise RuntimeError("boom")
            return super().forward(x)


    def boom(fail=False): return Boom(fail)
''')


def test_evaluate_names_a_forward_operator_that_raises(tmp_path, capsys, monkeypatch):
    """``evaluate --problem``: the misfit runs the user's forward; its raise is one line."""
    (tmp_path / "eval_boom.py").write_text(EVAL_BOOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    problem = ["--problem", "eval_boom:boom"]
    threads = torch.get_num_threads()
    try:
        assert main(["fit", *problem, "--out", str(tmp_path / "run"), *TINY]) == 0
        assert main(["simulate", *problem, "--num", "12", "--out",
                     str(tmp_path / "pairs.npz")]) == 0
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "ev"
    _fails(["evaluate", tmp_path / "run", "--data", tmp_path / "pairs.npz", "--num-samples",
            "20", "--out", out, *problem, "--problem-arg", "fail=true", "--threads", "1"],
           # the first call of forward is the exact posterior's check of the linear-Gaussian
           # parts (two models, inference.exact.linear_gaussian_offset), before the misfit
           capsys, "problem 'eval_boom' forward raised RuntimeError: boom for x of shape (")
    assert not out.exists()


def test_evaluate_on_the_training_pairs_is_warned_about(tmp_path, caplog):
    """The image audit calibrated a run on its own training images with no word of it."""
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    try:
        for name in ("train", "held"):
            x = rng.normal(size=(60, 2)).astype(np.float32)
            np.savez(tmp_path / f"{name}.npz", x=x, y=x + 0.1 * rng.normal(size=(60, 2)))
        argv = ["fit", "--data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "run"),
                "--epochs", "1", "--hidden-dims", "8", "--latent-dim", "2", "--quiet"]  # fmt: skip
        assert main(argv) == 0
        for name in ("train", "held"):
            caplog.clear()
            out = tmp_path / f"ev_{name}"
            argv = ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / f"{name}.npz"),
                    "--num-samples", "50", "--out", str(out)]  # fmt: skip
            assert main(argv) == 0
            warned = "holds the very pairs run" in caplog.text
            assert warned == (name == "train")
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["training_pairs"] is (name == "train")
    finally:
        torch.set_num_threads(threads)
