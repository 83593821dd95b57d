import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ppl_cvae.cli import main
from ppl_cvae.errors import ConfigError

TINY = [
    "--epochs",
    "2",
    "--num-train",
    "256",
    "--batch-size",
    "64",
    "--hidden-dims",
    "16",
    "--latent-dim",
    "2",
    "--quiet",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert (
        main(
            [
                "fit",
                "--problem",
                "two_birds",
                "--functions",
                "data_1",
                "--out",
                str(root / "fit"),
                *TINY,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "simulate",
                "--problem",
                "two_birds",
                "--functions",
                "data_1",
                "--num",
                "3",
                "--seed",
                "5",
                "--out",
                str(root / "obs.npz"),
            ]
        )
        == 0
    )
    return root


def test_fit_writes_run_folder(run):
    names = sorted(p.name for p in (run / "fit").iterdir())
    assert names == [".ppl_cvae_output.json", "config.json", "loss.png", "metrics.csv", "model.pt"]
    config = json.loads((run / "fit" / "config.json").read_text())
    assert config["model"]["basis_dim"] == 4 and config["train"]["num_epochs"] == 2
    lines = (run / "fit" / "metrics.csv").read_text().splitlines()
    assert (
        lines[0] == "epoch,train_loss,val_loss,kl_weight,learning_rate,seconds" and len(lines) == 3
    )


def test_sample_diagnose_score(run, capsys):
    post = run / "post.nc"
    assert (
        main(
            [
                "sample",
                str(run / "fit"),
                "--observation",
                str(run / "obs.npz"),
                "--num-samples",
                "40",
                "--out",
                str(post),
            ]
        )
        == 0
    )
    assert main(["diagnose", str(post), "--out", str(run / "report")]) == 0
    assert (run / "report" / "summary.csv").is_file()
    capsys.readouterr()
    assert main(["score", str(post), "--out", str(run / "score.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0.0 <= printed["pass_rate"] <= 1.0
    saved = json.loads((run / "score.json").read_text())
    assert saved["pass_rate"] == printed["pass_rate"]


def test_single_npy_observation(run):
    y = np.load(run / "obs.npz")["y"][0]
    np.save(run / "one.npy", y)
    assert (
        main(
            [
                "sample",
                str(run / "fit"),
                "--observation",
                str(run / "one.npy"),
                "--num-samples",
                "5",
                "--out",
                str(run / "one.nc"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "make_args, match",
    [
        (lambda r: ["fit", "--problem", "nope", "--out", str(r / "x")], "unknown problem 'nope'"),
        (
            lambda r: ["fit", "--data", str(r / "missing.npz"), "--out", str(r / "x")],
            "does not exist",
        ),
        (
            lambda r: [
                "sample",
                str(r / "fit"),
                "--observation",
                str(r / "wrong.npy"),
                "--num-samples",
                "5",
                "--out",
                str(r / "w.nc"),
            ],
            r"expects \(1, 50, 2\)",
        ),
        (
            lambda r: [
                "sample",
                str(r / "fit"),
                "--observation",
                str(r / "nan.npy"),
                "--num-samples",
                "5",
                "--out",
                str(r / "n.nc"),
            ],
            "NaN or inf",
        ),
        (
            lambda r: [
                "sample",
                str(r / "nofit"),
                "--observation",
                str(r / "obs.npz"),
                "--num-samples",
                "5",
                "--out",
                str(r / "n.nc"),
            ],
            "does not exist",
        ),
        (lambda r: ["diagnose", str(r / "obs.npz"), "--out", str(r / "rep2")], "cannot read"),
        (lambda r: ["fit", "--problem", "two_birds", "--out", str(r / "fit"), *TINY], "not empty"),
    ],
)
def test_user_errors_are_one_line(run, capsys, make_args, match):
    np.save(run / "wrong.npy", np.zeros((2, 50)))
    bad = np.zeros((1, 50, 2))
    bad[0, 3, 1] = np.nan
    np.save(run / "nan.npy", bad)
    before = sorted(p.name for p in run.rglob("*"))
    assert main(make_args(run)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppl-cvae: error: ") and "\n" not in err
    assert __import__("re").search(match, err)
    after = sorted(p.name for p in run.rglob("*"))
    assert after == before  # nothing written, nothing overwritten


def test_existing_output_is_not_overwritten(run):
    target = run / "keep.nc"
    target.write_bytes(b"precious")
    code = main(
        [
            "sample",
            str(run / "fit"),
            "--observation",
            str(run / "obs.npz"),
            "--num-samples",
            "5",
            "--out",
            str(target),
        ]
    )
    assert code == 2 and target.read_bytes() == b"precious"


def test_console_script_help_and_error_without_traceback(run, capsys):
    # the help text comes from the parser: checked in this process; the error path (exit
    # status and stderr of `python -m ppl_cvae.cli`) in a child process
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert "--physics-weight" in help_text and "--latent-dim" in help_text
    exe = [sys.executable, "-m", "ppl_cvae.cli"]
    proc = subprocess.run(
        [*exe, "simulate", "--problem", "two_birds", "--num", "2", "--out", str(run / "x.csv")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "must end in .npz" in proc.stderr


def test_failed_fit_leaves_no_folder_and_keeps_an_old_run(run, monkeypatch, capsys):
    import ppl_cvae.train

    def diverge(*args, **kwargs):
        raise ConfigError("training diverged at epoch 1")

    monkeypatch.setattr(ppl_cvae.train, "fit", diverge)
    new = run / "new_fit"
    assert main(["fit", "--problem", "two_birds", "--out", str(new), *TINY]) == 2
    assert not new.exists()
    before = (run / "fit" / "model.pt").read_bytes()
    code = main(["fit", "--problem", "two_birds", "--out", str(run / "fit"), "--overwrite", *TINY])
    assert code == 2 and (run / "fit" / "model.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert "diverged" in capsys.readouterr().err


def test_fit_on_builtin_digits_as_cvae_and_vae(tmp_path, capsys):
    for condition in ("label", "none"):
        out = tmp_path / condition
        assert (
            main(
                [
                    "fit",
                    "--dataset",
                    "digits",
                    "--condition",
                    condition,
                    "--out",
                    str(out),
                    "--epochs",
                    "1",
                    "--quiet",
                ]
            )
            == 0
        )
        config = json.loads((out / "config.json").read_text())
        assert config["model"]["x_shape"] == [8, 8]
        assert config["model"]["y_shape"] == ([10] if condition == "label" else None)
        assert config["model"]["likelihood"] == "bernoulli"
        frames = sorted(p.name for p in (out / "frames").iterdir())
        assert frames == ["recon_epoch001.png", "samples.gif", "samples_epoch001.png"]
    # a VAE generates images with sample (no --observation); a CVAE needs one
    gen = [str(tmp_path / "none"), "--num-samples", "6", "--seed", "3"]
    for name, noise in (("a", "mean"), ("b", "mean"), ("c", "sample")):
        argv = ["sample", *gen, "--decoder-noise", noise, "--out", str(tmp_path / f"{name}.nc")]
        assert main(argv) == 0
    import arviz as az

    # a generated file is the command's own output: --overwrite replaces it
    argv = ["sample", *gen, "--out", str(tmp_path / "a.nc"), "--overwrite", "--decoder-noise",
            "mean"]  # fmt: skip
    assert main(argv) == 0
    files = {n: az.from_netcdf(tmp_path / f"{n}.nc") for n in "abc"}
    assert list(files["a"].groups()) == ["prior"]
    means = files["a"].prior["x"].values
    assert means.shape == (1, 6, 8, 8) and files["a"].prior["z"].shape == (1, 6, 8)
    assert files["a"].prior["x"].dims == ("chain", "draw", "row", "column")  # not x_dim_0/1
    assert bool(((means > 0) & (means < 1)).all())  # Bernoulli pixel probabilities
    assert np.array_equal(means, files["b"].prior["x"].values)  # the seed repeats them
    assert set(np.unique(files["c"].prior["x"].values)) <= {0.0, 1.0}  # pixels drawn
    attrs = files["c"].prior.attrs  # what reproduces the file (before: none of these)
    assert (attrs["method"], attrs["seed"], attrs["num_samples"]) == ("generate", 3, 6)
    assert (attrs["decoder_noise"], files["a"].prior.attrs["decoder_noise"]) == (1, 0)
    capsys.readouterr()
    assert main(["diagnose", str(tmp_path / "a.nc"), "--out", str(tmp_path / "rep")]) == 2
    assert "holds an unconditional VAE's draws of x (group 'prior')" in capsys.readouterr().err
    np.save(tmp_path / "obs.npy", np.zeros((1, 10), dtype=np.float32))
    for run, extra, message in (
        ("none", ["--observation", str(tmp_path / "obs.npy")], "without observations: drop"),
        ("label", [], "sample needs --observation OBS"),
        ("none", ["--method", "nuts"], "an unconditional VAE generates x with the default"),
    ):
        argv = ["sample", str(tmp_path / run), *extra, "--out", str(tmp_path / "d.nc")]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "d.nc").exists()
    # a label run takes one-hot rows only (a 2, two classes or a tenth each drew images of no
    # class in silence) and names y's entries by the classes
    rows = np.eye(10, dtype=np.float32)[[3, 7]]
    near = rows[:1].copy()
    near[0, 3] = np.float32(1.0000001)  # named exactly (it printed as 1.0, a valid-looking row)
    bad = {"two": rows[:1] * 2, "both": rows.sum(0, keepdims=True), "tenth": rows[:1] * 0 + 0.1,
           "near": near}  # fmt: skip
    for name, values in {"ok": rows, **bad}.items():
        np.save(tmp_path / f"{name}.npy", values)
        argv = ["sample", str(tmp_path / "label"), "--observation", str(tmp_path / f"{name}.npy"),
                "--num-samples", "4", "--out", str(tmp_path / f"{name}.nc")]  # fmt: skip
        assert main(argv) == (0 if name == "ok" else 2)
        if name != "ok":
            err = capsys.readouterr().err
            assert "must be a one-hot row of 10 values, 1 at the class and 0 elsewhere (" \
                "classes ['0', '1'," in err
            assert name != "near" or "its entry 3 is 1.0000001192092896" in err
    # evaluate refuses such pairs too (they scored coverage of images of no class)
    images = np.zeros((2, 8, 8), dtype=np.float32)
    for name, values in (("ok", rows), ("both", bad["both"].repeat(2, 0))):
        np.savez(tmp_path / f"pairs_{name}.npz", x=images, y=values)
        argv = ["evaluate", str(tmp_path / "label"), "--data", str(tmp_path / f"pairs_{name}.npz"),
                "--num-samples", "20", "--out", str(tmp_path / f"eval_{name}")]  # fmt: skip
        assert main(argv) == (0 if name == "ok" else 2)
    assert "pair 0 of " in capsys.readouterr().err
    assert (tmp_path / "eval_ok").is_dir() and not (tmp_path / "eval_both").exists()
    observed = az.from_netcdf(tmp_path / "ok.nc").observed_data
    assert observed["y"].dims == ("observation", "class")
    assert observed["class"].values.tolist() == [str(k) for k in range(10)]


def test_fit_on_an_image_folder_and_missing_dataset_path(tmp_path, capsys):
    from PIL import Image

    for k, name in enumerate(["a", "b"]):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.full((12, 12), 40 * (k + 1) + i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / name / f"{i}.png")
    out = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--dataset",
                "folder",
                "--dataset-path",
                str(tmp_path / "img"),
                "--image-size",
                "8,8",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["x_shape"] == [8, 8] and config["model"]["network"] == "conv2d"
    assert config["dataset"]["classes"] == ["a", "b"]  # label k is classes[k]
    # the run file repeats the run; a folder whose classes changed is refused, not relabelled
    again = ["fit", "--config", str(out / "config.json"), "--out", str(tmp_path / "again"),
             "--quiet"]
    assert main(again) == 0
    (tmp_path / "img" / "0").mkdir()  # sorts first: every label would shift
    for i in range(4):
        blank = Image.fromarray(np.zeros((12, 12), dtype=np.uint8))
        blank.save(tmp_path / "img" / "0" / f"{i}.png")
    capsys.readouterr()
    assert main([*again[:4], str(tmp_path / "third"), "--quiet"]) == 2
    assert "records the classes ['a', 'b']" in capsys.readouterr().err
    assert main(["fit", "--dataset", "mnist", "--out", str(tmp_path / "m"), "--quiet"]) == 2
    assert "needs a path" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_threads_option_sets_torch_threads(tmp_path, where):
    """`--threads N` before or after the command sets torch's CPU threads for the run."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        args = ["simulate", "--problem", "linear_gaussian", "--num", "2",
                "--out", str(tmp_path / "s.npz")]
        args = ["--threads", "1", *args] if where == "before" else [*args, "--threads", "1"]
        assert main(args) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_diagnose_says_which_observations_misfit(tmp_path):
    """The verdict lines of ``diagnose`` come from ``check_ppc`` on its ``misfit.csv``."""
    import pandas as pd

    from inference.diagnostics.ppc import plausible_chi2_range
    from ppl_cvae.cli.evaluate import _misfit_verdict

    m = 50  # no num_draws column: infinitely many draws, the range of chi2_50 / 50
    low, high = plausible_chi2_range(m)
    assert (round(low, 3), round(high, 3)) == (0.39, 2.006)

    def table(values, whitened=True):
        path = tmp_path / "misfit.csv"
        pd.DataFrame({
            "observation": range(len(values)), "data": ["all"] * len(values),
            "num_data": [m] * len(values), "whitened": [whitened] * len(values),
            "chi2_per_datum": values,
        }).to_csv(path, index=False)
        return path

    passed = _misfit_verdict(table([1.0, 2.0, 0.4]))[0]
    assert passed.startswith("misfit: the draws of all 3 observations fit the data")
    # a pass is not a calibration verdict: the trust audit's draws twice too wide passed it
    assert "checks the fit to the data only" in passed and "ppl-cvae evaluate" in passed
    lines = _misfit_verdict(table([1.0, 2.02, 0.38]))
    assert lines[0].startswith("misfit: WARNING: the draws of 2 of 3 observations")
    assert "observation 1: chi2 per datum 2.020" in lines[1] and "do not explain" in lines[1]
    assert "observation 2: chi2 per datum 0.380" in lines[2] and "fit the noise" in lines[2]
    nan = _misfit_verdict(table([1.0, float("nan")]))  # before: nan passed in silence
    assert nan[1] == ("  observation 1: chi2 per datum nan: the posterior predictive holds NaN "
                      "or inf (the forward operator gave them at some draws)")
    many = _misfit_verdict(table([3.0] * 8))
    assert len(many) == 1 + 5 + 1 and many[-1] == "  ... and 3 more"
    assert _misfit_verdict(table([3.0], whitened=False)) == []  # no noise information
    assert _misfit_verdict(table([]))[0].startswith("misfit: none (the file holds no posterior "
                                                    "predictive")


def test_a_warning_is_one_line_and_the_formatter_is_restored(tmp_path):
    """A warning reaches the user as one line ``ppl-cvae: warning: ...`` (like errors: no
    source path, no code line), through a real process (pytest captures warnings in its
    own); ``main`` leaves ``warnings.formatwarning`` as it found it, so a caller's
    ``pytest.warns`` or ``catch_warnings`` still records. The warning: an observation 10^4
    training sds out."""
    import os
    import warnings

    from tests.conftest import TINY_FIT

    threads = torch.get_num_threads()
    before = warnings.formatwarning
    try:
        assert main(["fit", "--problem", "linear_gaussian", "--out", str(tmp_path / "run"),
                     *TINY_FIT]) == 0
    finally:
        torch.set_num_threads(threads)
    assert warnings.formatwarning is before
    obs = tmp_path / "far.npy"
    np.save(obs, np.array([[0.0, 1e4]], dtype=np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "ppl_cvae.cli", "--threads", "1", "sample", str(tmp_path / "run"),
         "--observation", str(obs), "--num-samples", "10", "--out", str(tmp_path / "post.nc")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
    )
    err = done.stderr.strip().splitlines()  # the far observation, then its draws' misfit
    assert len(err) == 2 and all(line.startswith("ppl-cvae: warning: ") for line in err), err
    assert err[0].startswith("ppl-cvae: warning: observation 0, y[..., 1]")
    assert err[1].startswith("ppl-cvae: warning: the draws misfit the data of 1 of 1")


def test_the_command_line_imports_no_scipy_arviz_or_plotting():
    """``import ppl_cvae.cli.run`` (what every command loads) leaves the heavy optional modules
    alone.

    scipy (0.35 s), arviz, matplotlib and seaborn load on first use, by the command that needs
    them, so ``ppl-cvae --help`` and argument errors answer without them.
    """
    heavy = ("scipy", "arviz", "matplotlib", "seaborn", "pandas", "xarray")
    code = (f"import sys, ppl_cvae.cli.run; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_run_file_refuses_another_data_file_at_its_relative_path(tmp_path, monkeypatch, capsys):
    """``config.json`` records ``data`` as typed, read from the current folder: from another
    folder holding another ``pairs.npz`` it would fit other pairs under the same record (before:
    trained in silence, 64 of 85 weight tensors different). The recorded digest of the pairs
    refuses it; from the original folder the run file repeats the run bit for bit, and an
    explicit ``--data`` is taken as asked."""
    from ppl_cvae.problems import LinearGaussian
    from ppl_cvae.train import load_checkpoint

    problem = LinearGaussian(x_dim=3, y_dim=2)
    first, other = tmp_path / "first", tmp_path / "other"
    for folder, seed in ((first, 0), (other, 1)):
        folder.mkdir()
        x, y = problem.simulate(120, torch.Generator().manual_seed(seed))
        np.savez(folder / "pairs.npz", x=x.numpy(), y=y.numpy())
    tiny = ["--epochs", "1", "--hidden-dims", "8", "--latent-dim", "2", "--quiet",
            "--threads", "1"]
    monkeypatch.chdir(first)
    assert main(["fit", "--data", "pairs.npz", *tiny, "--out", "run"]) == 0
    config = json.loads((first / "run" / "config.json").read_text())
    assert config["data"] == "pairs.npz" and len(config["data_digest"]) == 64
    assert main(["fit", "--config", "run/config.json", "--out", "again", "--quiet"]) == 0
    a, _ = load_checkpoint(first / "run")
    b, _ = load_checkpoint(first / "again")
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    monkeypatch.chdir(other)
    capsys.readouterr()
    run_file = str(first / "run" / "config.json")
    assert main(["fit", "--config", run_file, "--out", "elsewhere", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was fitted on other pairs than those of 'pairs.npz' read now" in err, err
    assert not (other / "elsewhere").exists()
    assert main(["fit", "--config", run_file, "--data", "pairs.npz", "--out", "mine",
                 "--quiet"]) == 0
