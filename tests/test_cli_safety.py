"""The CLI never loses a user's data: output-path rules, markers, seeds, interrupts, memory."""

import json
import os
import stat

import numpy as np
import pytest
import torch

from ppl_cvae._atomic import MARKER, atomic_dir, atomic_path, clean_stale_temporaries
from ppl_cvae.cli import fit as cli_fit
from ppl_cvae.cli import main
from ppl_cvae.cli import simulate as cli_simulate
from tests.conftest import TINY_FIT as TINY
from tests.conftest import digest, make_cli_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = make_cli_workspace(tmp_path_factory.mktemp("safety"))
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("years of work")
    return root


def _refused(argv, capsys, match):
    before_err = capsys.readouterr()
    del before_err
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert match in err, err


@pytest.mark.parametrize(
    "make_argv, match",
    [
        (lambda r: ["diagnose", f"{r}/post.nc", "--out", str(r), "--overwrite"], "contains"),
        (lambda r: ["fit", "--data", f"{r}/pairs.npz", "--out", str(r), "--overwrite", *TINY],
         "contains"),
        (lambda r: ["evaluate", f"{r}/run", "--data", f"{r}/pairs.npz", "--out", f"{r}/run",
                    "--overwrite"], "is the input"),
        (lambda r: ["sample", f"{r}/run", "--observation", f"{r}/obs.npz", "--out",
                    f"{r}/run/model.nc", "--overwrite"], "inside the input"),
        (lambda r: ["sample", f"{r}/run", "--observation", f"{r}/obs.npz", "--out",
                    f"{r}/obs.npz", "--overwrite"], "is the input"),
        (lambda r: ["score", f"{r}/post.nc", "--out", f"{r}/post.nc", "--overwrite"],
         "is the input"),
        (lambda r: ["fit", "--problem", "linear_gaussian", "--out", f"{r}/afile", "--overwrite",
                    *TINY], "existing file"),
        (lambda r: ["diagnose", f"{r}/post.nc", "--out", f"{r}/mine", "--overwrite"],
         "written by another program"),
        (lambda r: ["evaluate", f"{r}/run", "--data", f"{r}/pairs.npz", "--out", f"{r}/run2",
                    "--overwrite"], "written by 'ppl-cvae fit'"),
        (lambda r: ["sample", f"{r}/run", "--observation", f"{r}/obs.npz", "--out",
                    f"{r}/mine", "--overwrite"], "is a folder"),
        (lambda r: ["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
                    f"{r}/afile/x.npz"], "under the file"),
        (lambda r: ["sample", f"{r}/run", "--observation", f"{r}/obs.npz", "--out",
                    f"{r}/p.npz"], "must end in .nc"),
        (lambda r: ["score", f"{r}/post.nc", "--out", f"{r}/s.csv"], "must end in .json"),
        (lambda r: ["fit", "--data", f"{r}/pairs.npz", "--resimulate", "--out", f"{r}/x",
                    *TINY], "--resimulate"),
    ],
)
def test_outputs_that_would_destroy_inputs_are_refused(ws, capsys, make_argv, match):
    run2 = ws / "run2"
    if not run2.exists():  # a previous output of another command (fit)
        assert main(["fit", "--problem", "linear_gaussian", "--out", str(run2), *TINY]) == 0
    before = digest(ws)
    _refused(make_argv(ws), capsys, match)
    assert digest(ws) == before


def test_symlinked_output_onto_an_input_is_refused(ws, capsys):
    link = ws / "link_to_ws"
    if not link.is_symlink():
        link.symlink_to(ws)
    before = digest(ws)
    _refused(["fit", "--data", f"{ws}/pairs.npz", "--out", str(link), "--overwrite", *TINY],
             capsys, "contains the input")
    _refused(["sample", f"{ws}/run", "--observation", f"{ws}/obs.npz", "--out",
              f"{link}/obs.npz", "--overwrite"], capsys, "is the input")
    assert digest(ws) == before


def test_overwrite_replaces_only_the_same_commands_output(ws, capsys):
    report = ws / "report"
    assert main(["diagnose", f"{ws}/post.nc", "--out", str(report), "--max-observations", "1"]) == 0
    assert json.loads((report / MARKER).read_text())["command"] == "diagnose"
    (report / "summary.csv").write_text("stale")
    assert main(["diagnose", f"{ws}/post.nc", "--out", str(report), "--overwrite",
                 "--max-observations", "1"]) == 0
    assert (report / "summary.csv").read_text() != "stale"
    _refused(["fit", "--problem", "linear_gaussian", "--out", str(report), "--overwrite", *TINY],
             capsys, "written by 'ppl-cvae diagnose'")
    _refused(["diagnose", f"{ws}/post.nc", "--out", str(report)], capsys, "--overwrite")
    # a file the user (or another command) put into the folder blocks the overwrite
    (report / "sub").mkdir()
    (report / "sub" / "my_notes.txt").write_text("mine")
    before = digest(ws)
    _refused(["diagnose", f"{ws}/post.nc", "--out", str(report), "--overwrite"], capsys,
             "did not write ('sub/my_notes.txt')")
    assert digest(ws) == before


@pytest.mark.parametrize("bad", ["-1", str(2**32), "1.5", "seven"])
@pytest.mark.parametrize("command", ["fit", "sample", "evaluate", "simulate"])
def test_seeds_out_of_range_are_refused(ws, capsys, command, bad):
    argv = {
        "fit": ["fit", "--problem", "linear_gaussian", "--out", f"{ws}/s", *TINY],
        "sample": ["sample", f"{ws}/run", "--observation", f"{ws}/obs.npz", "--out",
                   f"{ws}/s.nc"],
        "evaluate": ["evaluate", f"{ws}/run", "--data", f"{ws}/pairs.npz", "--out", f"{ws}/s"],
        "simulate": ["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
                     f"{ws}/s.npz"],
    }[command]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--seed", bad])
    assert info.value.code == 2
    assert "seed" in capsys.readouterr().err


def test_largest_seed_is_accepted(ws):
    out = ws / "bigseed.npz"
    assert main(["simulate", "--problem", "linear_gaussian", "--num", "2", "--seed",
                 str(2**32 - 1), "--out", str(out)]) == 0


def test_same_seed_same_weights_and_draws_through_the_cli(tmp_path):
    def run(name):
        out = tmp_path / name
        assert main(["fit", "--problem", "linear_gaussian", "--out", str(out), "--seed", "7",
                     *TINY]) == 0
        return torch.load(out / "model.pt", weights_only=True)["state_dict"]

    a, b = run("a"), run("b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"]
    assert main(["fit", "--problem", "linear_gaussian", "--out", str(tmp_path / "c"),
                 "--seed", "8", *TINY]) == 0
    c = torch.load(tmp_path / "c" / "model.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters
    assert main(["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
                 str(tmp_path / "obs.npz")]) == 0
    draws = []
    for name in ("p1.nc", "p2.nc"):
        assert main(["sample", str(tmp_path / "a"), "--observation", str(tmp_path / "obs.npz"),
                     "--num-samples", "50", "--seed", "3", "--out", str(tmp_path / name)]) == 0
        import arviz as az

        draws.append(az.from_netcdf(tmp_path / name).posterior["x"].values)
    np.testing.assert_array_equal(draws[0], draws[1])


def test_same_seed_same_weights_through_the_python_api():
    from ppl_cvae import ModelConfig, TrainConfig, build_cvae, fit, make_problem

    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(200, torch.Generator().manual_seed(1))
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)

    def train():
        torch.manual_seed(torch.seed() % 1000)  # a different global RNG state each time
        cvae = build_cvae(config, x, y, problem=problem, seed=5)
        fit(cvae, x, y, TrainConfig(num_epochs=2, batch_size=64, seed=5), progress=False)
        return cvae.state_dict()

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unseeded_api_draws_record_the_seed_that_reproduces_them():
    """``seed=None``: the seed is drawn from torch's global RNG and written, so passing it back
    gives the same draws. Before: ``sample_posterior`` wrote no seed, ``sample_corrected``
    wrote -1 (importance drew from the global RNG, NUTS ran seed 0)."""
    from inference.sample import CorrectionConfig, sample_corrected, sample_posterior
    from ppl_cvae import ModelConfig, build_cvae, make_problem

    problem = make_problem("linear_gaussian")
    x, y = problem.simulate(64, torch.Generator().manual_seed(1))
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)  # fmt: skip
    cvae = build_cvae(config, x, y, problem=problem, seed=0)
    importance = CorrectionConfig(method="importance", proposals=64)
    for draw in (
        lambda seed: sample_posterior(cvae, y[:2], 20, problem=problem, seed=seed),
        lambda seed: sample_corrected(cvae, y[:2], 20, problem, importance, seed=seed)[0],
    ):
        first = draw(None)
        seed = first.posterior.attrs["seed"]
        assert 0 <= seed < 2**32
        again = draw(seed)
        np.testing.assert_array_equal(first.posterior["x"].values, again.posterior["x"].values)
        torch.manual_seed(0)
        seed_a = draw(None).posterior.attrs["seed"]
        torch.manual_seed(0)
        assert draw(None).posterior.attrs["seed"] == seed_a  # the global seed repeats it


@pytest.mark.filterwarnings("ignore::UserWarning")  # a few untrained draws: chains not mixed
def test_unseeded_generative_prior_samplers_record_the_seed_that_reproduces_them():
    """Latent NUTS, facies MCMC and facies SMC called with ``seed=None`` wrote ``seed = -1``
    and ran seed 0, so every unseeded call gave the same draws and the file named no seed.
    Now they draw the seed as ``sample_posterior`` does and record it."""
    from inference.facies_mcmc import sample_facies_mcmc
    from inference.facies_smc import sample_facies_smc
    from inference.latent_mcmc import sample_latent_nuts
    from ppl_cvae import ModelConfig
    from ppl_cvae.models.cvae import CVAE
    from ppl_cvae.problems import LinearGaussian

    problem = LinearGaussian(x_dim=3, y_dim=2, noise_std=0.4, seed=1)
    y = problem.forward(torch.tensor([[1.0, 0.0, 1.0]]))
    torch.manual_seed(0)

    def model(y_shape, likelihood):
        return CVAE(ModelConfig(x_shape=(3,), y_shape=y_shape, latent_dim=1, hidden_dims=(4,),
                                likelihood=likelihood, prior="standard_normal"
                                if y_shape is None else "learned")).eval()  # fmt: skip

    gaussian, facies = model((2,), "gaussian"), model((2,), "bernoulli")
    prior_g, prior_f = model(None, "gaussian"), model(None, "bernoulli")
    samplers = {
        "latent-nuts": lambda seed: sample_latent_nuts(
            gaussian, prior_g, y, 8, problem, chains=2, warmup_steps=2, seed=seed),
        "facies-mcmc": lambda seed: sample_facies_mcmc(
            facies, prior_f, y, 8, problem, chains=2, warmup_steps=2, temperatures=1,
            seed=seed),
        "facies-smc": lambda seed: sample_facies_smc(
            facies, prior_f, y, 8, problem, populations=2, steps_per_stage=4, final_steps=4,
            seed=seed),
    }  # fmt: skip
    for name, draw in samplers.items():
        torch.manual_seed(11)
        first = draw(None)[0]
        seed = first.posterior.attrs["seed"]
        assert 0 <= seed < 2**32, name
        again = draw(seed)[0]
        np.testing.assert_array_equal(first.posterior["x"].values, again.posterior["x"].values)
        torch.manual_seed(12)
        assert draw(None)[0].posterior.attrs["seed"] != seed, name  # not one fixed seed


def test_ctrl_c_prints_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupted(tmp_dir, *args, **kwargs):
        (tmp_dir / "model.pt").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_fit, "_fit_into", interrupted)
    out = tmp_path / "run"
    assert main(["fit", "--problem", "linear_gaussian", "--out", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["ppl-cvae: interrupted; no partial output was written"]
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_killed_runs_are_cleaned(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max of 2**22: no such process
    stale_dir = tmp_path / f".run.{dead}.abc"
    stale_dir.mkdir()
    stale_file = tmp_path / f".model.pt.{dead}.xyz.pt"
    stale_file.write_text("half")
    live = tmp_path / f".run.{os.getpid()}.live"
    live.mkdir()
    with atomic_dir(tmp_path / "run", command="fit") as tmp:
        (tmp / "a.txt").write_text("a")
    assert not stale_dir.exists() and live.exists()
    assert clean_stale_temporaries(tmp_path / "model.pt") == [stale_file]


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "d", command="x") as tmp:
            (tmp / "a").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_errors_name_the_users_path_not_the_temporary(tmp_path):
    from ppl_cvae.errors import OutputError

    target = tmp_path / "out.txt"
    os.chmod(tmp_path, 0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: a read-only folder is still writable")
        with pytest.raises(OutputError, match="out.txt") as info:
            with atomic_path(target) as tmp:
                tmp.write_text("x")
        assert ".out.txt." not in str(info.value)
    finally:
        os.chmod(tmp_path, 0o700)


def test_memory_refusals_are_one_line(ws, capsys):
    _refused(["simulate", "--problem", "linear_gaussian", "--num", str(10**12), "--out",
              f"{ws}/m.npz"], capsys, "memory")
    _refused(["fit", "--problem", "linear_gaussian", "--out", f"{ws}/m", "--num-train",
              str(10**12), "--quiet"], capsys, "memory")
    _refused(["evaluate", f"{ws}/run", "--data", f"{ws}/pairs.npz", "--out", f"{ws}/m",
              "--num-samples", str(10**11)], capsys, "memory")
    _refused(["sample", f"{ws}/run", "--observation", f"{ws}/obs.npz", "--out", f"{ws}/m.nc",
              "--num-samples", str(10**15)], capsys, "free on that disk")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["sample", "RUN", "--observation", "OBS", "--out", "OUT.nc", "--max-misfit", "nan"],
         "finite"),
        (["sample", "RUN", "--observation", "OBS", "--out", "OUT.nc", "--refine",
          "--max-misfit", "-1"], "--max-misfit must be >= 0"),
        (["evaluate", "RUN", "--data", "PAIRS", "--out", "OUT", "--max-observations", "0"],
         ">= 1"),
        (["diagnose", "POST", "--out", "OUT", "--max-observations", "-2"], ">= 1"),
        (["fit", "--problem", "linear_gaussian", "--out", "OUT", "--learning-rate", "1e400"],
         "finite"),
    ],
)
def test_bad_numbers_are_refused(ws, capsys, argv, match):
    names = {"RUN": f"{ws}/run", "OBS": f"{ws}/obs.npz", "PAIRS": f"{ws}/pairs.npz",
             "POST": f"{ws}/post.nc", "OUT": f"{ws}/o", "OUT.nc": f"{ws}/o.nc"}
    argv = [names.get(a, a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses the value itself
        code = exc.code
    assert code == 2
    assert match in capsys.readouterr().err


def test_non_utf8_paths_get_a_clear_error(ws, capsys):
    bad = os.fsdecode(str(ws).encode() + b"/\xff.npz")
    _refused(["simulate", "--problem", "linear_gaussian", "--num", "2", "--out", bad], capsys,
             "UTF-8")
    _refused(["fit", "--data", bad, "--out", f"{ws}/u", *TINY], capsys, "UTF-8")


@pytest.mark.parametrize("drop", ["x", "observed", "draws", "nan"])
def test_incomplete_posterior_files_are_refused(ws, capsys, drop):
    """(A file without ``z`` is complete: importance sampling and NUTS draw x alone.)"""
    import arviz as az

    idata = az.from_netcdf(ws / "post.nc")
    if drop == "x":
        idata.posterior = idata.posterior.drop_vars(drop)
    elif drop == "observed":
        idata = az.InferenceData(posterior=idata.posterior)
    elif drop == "draws":
        idata = az.InferenceData(posterior=idata.posterior.isel(draw=slice(0, 0)),
                                 observed_data=idata.observed_data)
    else:
        idata.posterior["x"] = idata.posterior["x"] * np.nan
    path = ws / f"bad_{drop}.nc"
    idata.to_netcdf(str(path))
    _refused(["diagnose", str(path), "--out", f"{ws}/rep_{drop}"], capsys, str(path.name))
    assert not (ws / f"rep_{drop}").exists()


def test_a_failing_writer_is_reported_with_the_users_path(tmp_path):
    from ppl_cvae.errors import OutputError

    with pytest.raises(OutputError, match=r"'.*report\.nc': No space left on device") as info:
        with atomic_path(tmp_path / "report.nc") as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert ".report.nc." not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # the temporary is gone, nothing was written


def test_allocator_failures_are_one_line_and_bugs_are_not_hidden(tmp_path, capsys, monkeypatch):
    def out_of_memory(args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    def bug(args):
        raise RuntimeError("a bug")

    argv = ["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
            str(tmp_path / "s.npz")]
    monkeypatch.setattr(cli_simulate, "cmd_simulate", out_of_memory)
    _refused(argv, capsys, "out of memory")
    monkeypatch.setattr(cli_simulate, "cmd_simulate", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


def test_overwrite_replaces_only_files_the_same_command_wrote(ws, capsys):
    """``--overwrite`` of an output file: a user's own ``.nc``, ``.npz`` or ``.json`` (here:
    data files and notes) is refused with the file unchanged; the command's own previous
    output (a posterior file, simulated pairs, a score) is replaced."""
    import xarray as xr

    wells = ws / "wells.nc"  # a user's own NetCDF data set, not a posterior file
    xr.Dataset({"x": (("n", "a"), np.zeros((3, 2))), "y": (("n", "b"), np.ones((3, 2)))}
               ).to_netcdf(wells, engine="h5netcdf")
    notes = ws / "notes.json"
    notes.write_text('{"mine": 1}')
    mydata = ws / "mydata.npz"  # pairs the user saved with numpy
    np.savez(mydata, x=np.zeros((3, 2)), y=np.ones((3, 2)))
    before = digest(ws)
    _refused(["sample", f"{ws}/run", "--observation", f"{ws}/obs.npz", "--num-samples", "5",
              "--out", str(wells), "--overwrite"], capsys, "was written by another program")
    _refused(["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
              str(mydata), "--overwrite"], capsys,
             "replaces only a file written by 'ppl-cvae simulate'")
    _refused(["score", f"{ws}/post.nc", "--out", str(notes), "--overwrite"], capsys,
             "written by another program")
    assert digest(ws) == before
    # the command's own outputs are replaced
    sim = ws / "sim.npz"
    lg = ["simulate", "--problem", "linear_gaussian", "--num", "2", "--out", str(sim)]
    assert main([*lg, "--seed", "1"]) == 0
    first = np.load(sim)["x"]
    assert main([*lg, "--seed", "2", "--overwrite"]) == 0
    assert not np.array_equal(np.load(sim)["x"], first)
    post = ws / "post_again.nc"
    draw = ["sample", f"{ws}/run", "--observation", f"{ws}/obs.npz", "--num-samples", "5",
            "--out", str(post)]
    assert main(draw) == 0
    assert main([*draw, "--overwrite", "--seed", "3"]) == 0
    score = ws / "score.json"  # a score names its command in the file, not in its print
    score.write_text('{"ppl_cvae_command": "ppl-cvae simulate"}')
    _refused(["score", f"{ws}/post.nc", "--out", str(score), "--overwrite"], capsys,
             "was written by 'ppl-cvae simulate'")


def test_data_and_dataset_together_and_a_device_as_data_are_refused(tmp_path, capsys):
    """``--data`` with ``--dataset`` trained on the file and recorded both (the fifteenth
    audit); ``/dev/zero`` as data was said not to exist."""
    import numpy as np

    from ppl_cvae.cli import main

    np.savez(tmp_path / "p.npz", x=np.zeros((8, 2)), y=np.zeros((8, 2)))
    capsys.readouterr()
    assert main(["fit", "--data", str(tmp_path / "p.npz"), "--dataset", "digits",
                 "--out", str(tmp_path / "r")]) == 2
    assert "give --data FILE or --dataset NAME, not both" in capsys.readouterr().err
    assert main(["fit", "--data", "/dev/zero", "--out", str(tmp_path / "r")]) == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    """``ppl-cvae score ... | head``: a closed pipe ends the command with 141 (128 + SIGPIPE)
    and no "error: Broken pipe" line (the fourteenth audit)."""
    import sys

    from ppl_cvae.cli import main

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
                 str(tmp_path / "o.npz")])
    monkeypatch.undo()
    assert code == 141
    assert "Broken pipe" not in capsys.readouterr().err
