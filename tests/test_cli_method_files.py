"""Files of every sampling method through the CLI: diagnose reads them, they name their problem,
gradient methods refuse a problem they cannot follow, and the advice fits the method that ran.

A linear-Gaussian run and a user's module (written by the test) with two problems that NUTS and
refinement cannot sample: a forward operator computed through NumPy (no gradient), and a
declared discrete support (facies codes).
"""

from __future__ import annotations

import json
import logging
import sys

import arviz as az
import pytest
import torch

from ppl_cvae.cli import main
from ppl_cvae.errors import ConfigError
from tests.conftest import TINY_FIT

USER_MODULE = '''
import numpy as np
import torch
from torch.distributions import constraints

from ppl_cvae.problems.linear_gaussian import LinearGaussian


class NumpyForward(LinearGaussian):
    """A forward operator computed through NumPy: the data carry no gradient."""

    name = "numpy_forward"

    def forward(self, x):
        return torch.as_tensor(np.asarray(super().forward(x).detach()))


class Codes(LinearGaussian):
    """Facies codes 0/1: a declared discrete support."""

    name = "codes"
    support = constraints.boolean

    def sample_prior(self, num, generator=None):
        return (torch.rand(num, *self.x_shape, generator=generator) < 0.5).float()

    def log_prior(self, x):
        return torch.full(x.shape[:-1], -x.shape[-1] * 0.6931471805599453)


def make_numpy():
    return NumpyForward(x_dim=2, y_dim=3, noise_std=0.3, seed=5)


def make_codes():
    return Codes(x_dim=4, y_dim=3, noise_std=0.3, seed=5)
'''

MODULE = "ppl_cvae_test_method_files_user"
NUTS = ["--method", "nuts", "--chains", "2", "--warmup", "30", "--num-samples", "40"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    (root / "code").mkdir()
    (root / "code" / f"{MODULE}.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root / "code"))
    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(root / "run"), *TINY_FIT]) == 0
    flow = [a if a != "2" else "0" for a in TINY_FIT]  # --latent-dim 0: a flow on x alone
    assert main(["fit", *lg, "--likelihood", "flow", "--out", str(root / "flow"), *flow]) == 0
    assert main(["simulate", *lg, "--num", "2", "--out", str(root / "obs.npz")]) == 0
    for name, extra in (("numpy", []), ("codes", ["--likelihood", "bernoulli"])):
        problem = ["--problem", f"{MODULE}:make_{name}"]
        assert main(["fit", *problem, *extra, "--out", str(root / name), *TINY_FIT]) == 0
        assert main(["simulate", *problem, "--num", "2", "--out", str(root / f"{name}.npz")]) == 0
    yield root
    sys.path.remove(str(root / "code"))
    sys.modules.pop(MODULE, None)


def _sample(ws, run, obs, out, *flags):
    return main(["sample", str(ws / run), "--observation", str(ws / obs), "--out", str(ws / out),
                 *flags])


@pytest.fixture(scope="module")
def files(ws):
    """Posterior files of importance sampling, NUTS and a latent-free flow."""
    assert _sample(ws, "run", "obs.npz", "imp.nc", "--method", "importance",
                   "--num-samples", "40") == 0
    assert _sample(ws, "run", "obs.npz", "nuts.nc", *NUTS) == 0
    assert _sample(ws, "flow", "obs.npz", "flow.nc", "--num-samples", "40") == 0
    return {name: ws / f"{name}.nc" for name in ("imp", "nuts", "flow")}


@pytest.mark.parametrize("name", ["imp", "nuts", "flow"])
def test_diagnose_reads_files_without_latent_draws(ws, files, name):
    """Importance and NUTS files hold no ``z``, nor does a flow on x alone (it held a ``z`` of
    size 0 before, which broke ``az.extract``).
    ``diagnose`` reports on x (figures, summary, misfit) and draws no latent pairs; the summary
    of several chains adds R-hat and ESS, that of independent draws does not."""
    import pandas as pd

    out = ws / f"report_{name}"
    assert main(["diagnose", str(files[name]), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"summary.csv", "misfit.csv", "posterior_obs0.png", "predictive_obs1.png"} <= names
    assert not any(n.startswith("latent_pairs") for n in names)
    table = pd.read_csv(out / "summary.csv", index_col=0)
    assert len(table) == 2 * 2  # 2 observations x 2 values
    assert ("r_hat" in table.columns) == (name == "nuts")
    if name == "nuts":  # two chains of one posterior: R-hat near 1, not a stuck chain's
        assert float(table["r_hat"].max()) < 1.5


def test_every_posterior_file_names_its_problem(ws, files):
    """The ``problem`` attribute rebuilds the problem: a built-in's spec for amortized,
    importance and NUTS files alike; a user's ``module:factory`` reference, not a repr."""
    spec = json.loads(az.from_netcdf(ws / "flow.nc").posterior.attrs["problem"])
    assert spec["name"] == "linear_gaussian" and spec["x_dim"] == 2
    for name in ("imp", "nuts"):
        assert json.loads(az.from_netcdf(files[name]).posterior.attrs["problem"]) == spec
    assert _sample(ws, "numpy", "numpy.npz", "user_imp.nc", "--method", "importance",
                   "--num-samples", "20") == 0
    assert _sample(ws, "numpy", "numpy.npz", "user_amortized.nc", "--num-samples", "20") == 0
    for out in ("user_imp.nc", "user_amortized.nc"):
        record = json.loads(az.from_netcdf(ws / out).posterior.attrs["problem"])
        assert record == {"name": f"{MODULE}:make_numpy"}


def test_problem_record_of_a_problem_without_spec():
    from inference.sample import problem_record
    from ppl_cvae.problems.linear_gaussian import LinearGaussian

    class Mine(LinearGaussian):
        name = "mine"

        def spec(self):
            raise ConfigError("no spec")

    assert problem_record(LinearGaussian())["name"] == "linear_gaussian"
    record = problem_record(Mine())
    assert record["name"] == "mine" and record["class"].endswith("Mine")


@pytest.mark.parametrize("method", [NUTS, ["--method", "refine", "--num-samples", "20"]])
def test_gradient_methods_refuse_a_forward_without_gradient(ws, capsys, method):
    """NUTS and refinement follow the misfit's gradient: a NumPy forward operator is refused
    before any chain or step runs, in one line that points at importance sampling."""
    capsys.readouterr()
    assert _sample(ws, "numpy", "numpy.npz", "refused.nc", *method) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "'numpy_forward''s forward operator, and it gives none" in err
    assert "--method importance" in err
    assert not (ws / "refused.nc").exists()


def test_nuts_refuses_a_discrete_support(ws, capsys):
    """NUTS on facies codes (a declared ``constraints.boolean``) would move x off the codes."""
    from inference.mcmc import nuts_sample
    from ppl_cvae.problems.registry import make_problem

    capsys.readouterr()
    assert _sample(ws, "codes", "codes.npz", "refused.nc", *NUTS) == 2
    err = capsys.readouterr().err
    assert "declares the discrete support Boolean()" in err and "facies-mcmc" in err, err
    problem = make_problem(f"{MODULE}:make_codes")
    x, y = problem.simulate(4, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match="NUTS moves x continuously"):
        nuts_sample(problem, y[0], x, num_samples=20, warmup_steps=5, num_chains=1)


def test_importance_advice_names_only_what_the_problem_allows():
    """After a failed importance run: NUTS only where the support is continuous and the
    forward operator has a gradient."""
    from inference.sample import _importance_remedy
    from ppl_cvae.problems.linear_gaussian import LinearGaussian
    from ppl_cvae.problems.registry import make_problem

    x = torch.zeros(1, 1, 2)
    assert "--method nuts" in _importance_remedy(LinearGaussian(), x)
    numpy_advice = _importance_remedy(make_problem(f"{MODULE}:make_numpy"), x)
    assert "--method nuts" not in numpy_advice and "gradient" in numpy_advice
    codes_advice = _importance_remedy(make_problem(f"{MODULE}:make_codes"), torch.zeros(1, 1, 4))
    assert "--method nuts" not in codes_advice and "facies-smc" in codes_advice


@pytest.mark.parametrize("method", ["amortized", "refine", "importance", "nuts"])
def test_misfit_remedy_follows_the_method(files, method):
    """The misfit warning's remedy: correct amortized or refined draws; for corrected draws,
    never the method that just ran as its own cure."""
    from inference.diagnostics.ppc import misfit_warning

    idata = az.from_netcdf(files["nuts"])
    idata.observed_data["y"] = idata.observed_data["y"] + 100.0  # data no draw explains
    idata.sample_stats["chi2_per_datum"] = idata.sample_stats["chi2_per_datum"] + 1e4  # as y
    idata.posterior.attrs["method"] = method
    message = misfit_warning(idata)
    assert message is not None and message.startswith("the draws misfit the data of 2 of 2")
    cure = "correct the amortized draws" if method == "refine" else "correct them"
    assert (f"{cure} with --method importance or nuts" in message) == (
        method in ("amortized", "refine")
    )
    if method == "importance":
        assert "raise --proposals" in message
    if method == "nuts":
        assert "run the chains longer" in message and "--method nuts" not in message


def test_log_warnings_are_prefixed_like_python_warnings():
    """Warnings the commands log reach the user as ``ppl-cvae: warning: ...`` lines, as
    Python warnings do; information lines stay as they are."""
    from ppl_cvae.cli.run import _LineFormatter

    formatter = _LineFormatter("%(message)s")

    def line(level, text):
        return formatter.format(logging.LogRecord("ppl_cvae", level, "", 0, text, (), None))

    assert line(logging.WARNING, "3 metric(s) not finite") == (
        "ppl-cvae: warning: 3 metric(s) not finite"
    )
    assert line(logging.INFO, "epoch 1") == "epoch 1"


def test_a_recorded_problem_that_cannot_be_rebuilt_is_warned_of(ws, monkeypatch, caplog):
    """Amortized draws of a run whose problem module is gone (not importable at sampling
    time) are written without a posterior predictive, dims or units: the user is told so,
    with the loader's reason (before: exit 0 in silence, and the file said "no problem was
    given")."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(ws / "code")])
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    with caplog.at_level(logging.WARNING, logger="ppl_cvae"):
        assert _sample(ws, "numpy", "numpy.npz", "lost.nc", "--num-samples", "10") == 0
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "the run's problem is not available, so the posterior file has no posterior " \
        "predictive" in message
    assert MODULE in message
    assert "posterior_predictive" not in az.from_netcdf(ws / "lost.nc").groups()


@pytest.mark.parametrize("name", ["imp", "nuts"])
def test_diagnose_says_the_verdict_the_correction_stored(ws, files, name, capsys):
    """A corrected file keeps its sampler's one-line verdict (``correction_summary``,
    ``correction_ok``); ``diagnose`` prints it before the misfit, and a FAILED verdict as a
    warning (before: the misfit line alone, which can pass for draws of failed chains)."""
    idata = az.from_netcdf(files[name])
    summary = idata.posterior.attrs["correction_summary"]
    ok = int(idata.posterior.attrs["correction_ok"])
    assert summary.startswith("importance sampling:" if name == "imp" else "NUTS")
    assert ("FAILED" in summary) == (not ok)
    capsys.readouterr()
    assert main(["diagnose", str(files[name]), "--out", str(ws / f"verdict_{name}"),
                 "--overwrite"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (f"sampler: {summary}" if ok else
                        f"sampler: WARNING: the correction FAILED, so its draws are not "
                        f"trustworthy whatever their misfit: {summary}")
    idata.posterior.attrs["correction_ok"] = 0  # as a failed run writes it
    idata.to_netcdf(ws / f"failed_{name}.nc", engine="h5netcdf")
    assert main(["diagnose", str(ws / f"failed_{name}.nc"), "--out",
                 str(ws / f"failed_{name}")]) == 0
    assert "sampler: WARNING: the correction FAILED" in capsys.readouterr().out
