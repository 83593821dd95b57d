"""Hostile inputs against the ``ppl-cvae`` command: a table of categories tried, passed, failed.

Each case runs the CLI (in this process through ``ppl_cvae.cli.main``, or in a subprocess where
a signal or raw bytes in argv are needed) on a workspace of real inputs (a fitted run, an
observation file, a posterior file, training pairs) and passes when:

- the exit status is the expected one (2 for a user error, 0 where the request is valid, 130
  for Ctrl-C);
- a refused request prints one error line (``ppl-cvae: error: ...`` or argparse's
  ``usage``/``error`` pair) and no traceback;
- every file that existed before is byte-for-byte unchanged (inputs are never lost), and no
  hidden temporary is left behind.

The newest features have their own categories (:func:`new_feature_cases`): ``fit --resume``
of finished, damaged, forged, changed or busy runs; ``--stream --workers`` with too many
workers or a user's simulator returning the wrong type, dtype, shape, NaN or inf, raising,
or ignoring its generator; lazily read files of every dtype, with NaN rows, mismatched or zero
rows, empty folders, NetCDF without ``x``/``y``, Zarr without zarr; ``sample --method nuts``
with bad counts and preconditioners; flow-layer flags without their flow. The second audit
(:func:`audit_cases`): the prior-flow type and layers (flags, hand-edited run files,
checkpoints whose config and weights disagree), ``--potential-dtype`` and the flags of other
``sample`` methods, problems with float64-only or NaN densities, a declared prior support
that is not a constraint, does not broadcast or excludes the prior's draws, ``--warmup 0`` without
warnings, tensors a simulator may return (meta, sparse, 0-d, an exhausted iterator), ``fit
--resume`` after ``kill -9``, symlinked ``--out``, and huge importance requests. The third
audit (:func:`user_cases`): a new user's own problems (odd shapes, float64/int/NumPy
simulators, ``torch.manual_seed`` or ``sys.exit`` inside them, densities returning a float, a
shape-(1,) tensor or NaN) and data files (dtypes, constant and huge columns, NaN rows, 1-2
pairs, renamed keys, Fortran-ordered, object, gzip'd, unicode paths, CSV) through ``fit``,
``sample`` and ``evaluate`` (``--only "user problems,user files"``). The fourth audit
(:func:`output_cases`, ``--only outputs``) judges what the commands write: observation files
with NaN, inf, no rows, odd dtypes or shapes; posterior files edited by hand; draw counts 0,
-1, 1e12; ``--out`` a folder, under a file or an input; ``evaluate`` on one pair;
``--method importance|nuts`` without a likelihood; densities and forward operators that give
NaN at some draws. An accepted request there must also leave strictly valid, finite outputs:
JSON without ``NaN``/``Infinity`` tokens, NetCDF whose floats are finite (except variables the
file itself lists under its ``not_finite`` attribute), CSV without ``nan``/``inf`` cells. The
fifth (:func:`generative_cases`, ``--only generative``, under the same output rules) tries
``sample --method facies-mcmc|latent-nuts --generative-prior`` on a user's 6-cell facies
problem: priors that are missing, garbage, empty, conditional, Gaussian (for facies MCMC), of
another ``x_shape``, forged or with NaN weights; ``--facies-moves`` and ``--temperatures`` 0,
-1, 1.5, 10**30, abc; observations with NaN; a problem without a noise model; draw and chain
counts too large for memory; ``--out`` onto an input. The sixth (:func:`problem_code_cases`,
``--only problem-code``, about 25 s, same output rules): each ``sample --method`` and
``evaluate --problem`` on a user's problem whose ``forward``, ``log_prior`` or
``log_likelihood`` raises, calls ``sys.exit``, returns NaN, inf or a wrong shape, on every
call, from a later call on (inside Pyro's NUTS tree, the optimiser or the writing of the
file) or for some models only; a refusal must name the member (and the original message) and
write nothing at ``--out``.

Run: ``python benchmarks/hostile_inputs.py [--threads 1] [--verbose] [--only CATEGORY]``
(about 5 minutes on 2 cores; ``--only generative``: about 15 s). Exit status 1 when a case
fails.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import print_category_table

from ppl_cvae.cli import main

THREADS = 1
CASE_TIMEOUT = 300
"""Seconds a case may run before it counts as a hang (``--case-timeout``)."""


class Hung(Exception):
    """Raised by SIGALRM in a case that ran past :data:`CASE_TIMEOUT`."""


def _hung(signum: int, frame: Any) -> None:
    raise Hung

TINY = ["--epochs", "1", "--num-train", "128", "--batch-size", "64", "--hidden-dims", "8",
        "--latent-dim", "2", "--quiet"]


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    expect: int = 2
    setup: Callable[[Path], None] | None = None
    subprocess_signal: bool = False
    around: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    no_warnings: bool = False  # an accepted request must also print no warning
    may_change: str | None = None  # files under this folder may change (a resumed run)
    check_outputs: bool = False  # an accepted request must write finite, strict outputs
    says: tuple[str, ...] = ()  # words a refusal's error line must hold


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class Pickled:
    """A pickle payload that creates a marker file when unpickled (a code-execution probe)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def build_workspace(root: Path) -> None:
    """A fitted Two Birds run, observations, a posterior, training pairs and bad files."""
    assert main(["fit", "--problem", "two_birds", "--functions", "data_1", "--out",
                 str(root / "run"), *TINY]) == 0
    assert main(["simulate", "--problem", "two_birds", "--functions", "data_1", "--num", "3",
                 "--out", str(root / "obs.npz")]) == 0
    assert main(["simulate", "--problem", "linear_gaussian", "--num", "64", "--out",
                 str(root / "pairs.npz")]) == 0
    assert main(["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
                 str(root / "lgobs.npz")]) == 0
    assert main(["sample", str(root / "run"), "--observation", str(root / "obs.npz"),
                 "--num-samples", "20", "--out", str(root / "post.nc")]) == 0
    assert main(["fit", "--data", str(root / "pairs.npz"), "--out", str(root / "lgrun"),
                 *TINY]) == 0
    rng = np.random.default_rng(0)
    (root / "random.bin").write_bytes(rng.bytes(4096))
    for suffix in (".npz", ".nc", ".pt", ".npy"):
        (root / f"random{suffix}").write_bytes(rng.bytes(2048))
    good = (root / "pairs.npz").read_bytes()
    (root / "truncated.npz").write_bytes(good[: len(good) // 2])
    np.savez(root / "complex.npz", x=np.ones((8, 4)) + 1j, y=np.ones((8, 3)))
    np.savez(root / "strings.npz", x=np.array([["a"] * 4] * 8), y=np.ones((8, 3)))
    np.savez(root / "nan.npz", x=np.full((8, 4), np.nan), y=np.ones((8, 3)))
    np.savez(root / "empty.npz", x=np.ones((0, 4)), y=np.ones((0, 3)))
    np.savez(root / "mismatch.npz", x=np.ones((8, 4)), y=np.ones((7, 3)))
    np.savez(root / "nokeys.npz", a=np.ones(3))
    np.savez(root / "overflow.npz", x=np.full((8, 4), 1e300), y=np.ones((8, 3)))
    # positive x from 1e-8 to 1e8 units, a quarter of the first element exactly 0 (an atom on
    # the end of --x-bounds 0,inf), and its mirror image below 0
    x_lg, y_lg = np.load(root / "pairs.npz")["x"], np.load(root / "pairs.npz")["y"]
    scales = np.exp(x_lg) * np.logspace(-8, 8, x_lg.shape[1])
    scales[::4, 0] = 0.0
    np.savez(root / "scales.npz", x=scales.astype(np.float32), y=y_lg)
    np.savez(root / "negative.npz", x=-scales.astype(np.float32), y=y_lg)
    np.save(root / "obs_complex.npy", np.ones((1, 50, 2)) + 1j)
    np.save(root / "obs_wrong.npy", np.ones((7,)))
    torch.save(Pickled(str(root / "PWNED")), root / "evil.pt")
    with open(root / "evil_pickle.pt", "wb") as fh:
        pickle.dump(Pickled(str(root / "PWNED")), fh)
    # damaged and forged checkpoints
    payload = torch.load(root / "run" / "model.pt", weights_only=True)

    def ckpt(name: str, change: Callable[[dict], None]) -> None:
        folder = root / name
        folder.mkdir()
        p = {**payload, "model_config": dict(payload["model_config"]),
             "state_dict": dict(payload["state_dict"])}
        change(p)
        torch.save(p, folder / "model.pt")

    ckpt("ck_unknown_key", lambda p: p["model_config"].update(bogus=1))
    ckpt("ck_wrong_type", lambda p: p["model_config"].update(latent_dim="2"))
    ckpt("ck_missing", lambda p: p.pop("state_dict"))
    ckpt("ck_huge", lambda p: p["model_config"].update(x_shape=[60000],
                                                      hidden_dims=[200000, 200000]))
    ckpt("ck_nan", lambda p: p["state_dict"].update(
        {k: torch.full_like(v, float("nan")) for k, v in p["state_dict"].items()
         if v.is_floating_point()}))
    ckpt("ck_rmtree", lambda p: p.update(problem={"name": "shutil:rmtree",
                                                  "path": str(root / "victim")}))
    ckpt("ck_popen", lambda p: p.update(problem={"name": "subprocess:Popen",
                                                 "args": ["touch", str(root / "PWNED")]}))
    (root / "victim").mkdir()
    (root / "victim" / "keep.txt").write_text("keep")
    (root / "ck_trunc").mkdir()
    raw = (root / "run" / "model.pt").read_bytes()
    (root / "ck_trunc" / "model.pt").write_bytes(raw[: len(raw) // 3])
    (root / "ck_empty").mkdir()
    (root / "ck_empty" / "model.pt").write_bytes(b"")
    # posterior files missing parts
    import arviz as az

    idata = az.from_netcdf(root / "post.nc")
    for name, groups in (("post_nox", {"posterior": ["z"]}), ("post_noz", {"posterior": ["x"]})):
        keep = idata.copy()
        keep.posterior = keep.posterior[groups["posterior"]]
        keep.to_netcdf(str(root / f"{name}.nc"))
    noobs = az.InferenceData(posterior=idata.posterior)
    noobs.to_netcdf(str(root / "post_noobs.nc"))
    zero = az.InferenceData(posterior=idata.posterior.isel(draw=slice(0, 0)),
                            observed_data=idata.observed_data)
    zero.to_netcdf(str(root / "post_zero.nc"))
    nan = idata.copy()
    nan.posterior["x"] = nan.posterior["x"] * np.nan
    nan.to_netcdf(str(root / "post_nan.nc"))
    raw_post = (root / "post.nc").read_bytes()
    for offset in (4144, 1000, 3000, 6000, len(raw_post) // 2):  # 4144 once hung libhdf5
        flipped = bytearray(raw_post)
        flipped[offset % len(raw_post)] ^= 0xFF
        (root / f"post_flip{offset}.nc").write_bytes(bytes(flipped))
    (root / "afile").write_text("an ordinary file")
    (root / "user_folder").mkdir()
    (root / "user_folder" / "thesis.tex").write_text("years of work")
    (root / "badmod.py").write_text("def not_a_problem():\n    return 42\n"
                                    "def boom():\n    raise RuntimeError('factory failed')\n")
    # run files (fit --config)
    runs = {
        "rf_rmtree.toml": f'problem = {{ name = "shutil:rmtree", path = "{root}" }}\n',
        "rf_system.json": json.dumps(
            {"problem": {"name": "os:system", "command": f"touch {root}/PWNED"}}
        ),
        "rf_bad_toml.toml": "[model\nlatent_dim = 2\n",
        "rf_unknown.toml": "[train]\nepoch = 3\n",
        "rf_types.toml": 'problem = "two_birds"\n[model]\nlatent_dim = "8"\n',
        "rf_huge.toml": 'problem = "two_birds"\n[model]\nhidden_dims = [200000, 200000]\n',
        "rf_data_is_out.toml": f'data = "{root}/pairs.npz"\n',
        "rf_image_size.toml": 'dataset = { name = "folder", path = "x", image_size = [0, 5] }\n',
        "rf_deep.json": "[" * 100_000,
        "rf_shapes.json": '{"problem": "linear_gaussian", "model": {"x_shape": [9]}}',
    }
    for name, text in runs.items():
        (root / name).write_text(text)
    (root / "rf_big.toml").write_text("#" * (2 << 20))


def cases(root: Path) -> list[Case]:
    r = str(root)
    run, obs, post, pairs = f"{r}/run", f"{r}/obs.npz", f"{r}/post.nc", f"{r}/pairs.npz"
    out = f"{r}/new"
    c: list[Case] = []
    add = c.append
    # security
    add(Case("security: code in data files", "fit --data evil.pt",
             ["fit", "--data", f"{r}/evil.pt", "--out", out, *TINY]))
    add(Case("security: code in data files", "fit --data pickle.pt",
             ["fit", "--data", f"{r}/evil_pickle.pt", "--out", out, *TINY]))
    add(Case("security: code in data files", "evaluate --data evil.pt",
             ["evaluate", run, "--data", f"{r}/evil.pt", "--out", out]))
    add(Case("security: code in data files", "sample --observation evil.pt",
             ["sample", run, "--observation", f"{r}/evil.pt", "--out", f"{out}.nc"]))
    add(Case("security: forged checkpoints", "huge sizes", ["sample", f"{r}/ck_huge",
             "--observation", obs, "--out", f"{out}.nc"]))
    add(Case("security: forged checkpoints", "problem shutil:rmtree", ["sample", f"{r}/ck_rmtree",
             "--observation", obs, "--out", f"{out}.nc", "--refine"]))
    add(Case("security: forged checkpoints", "problem subprocess:Popen",
             ["sample", f"{r}/ck_popen", "--observation", obs, "--out", f"{out}.nc", "--refine"]))
    # outputs that would destroy inputs
    for name, argv in (
        ("diagnose --out the posterior's folder", ["diagnose", post, "--out", r, "--overwrite"]),
        ("fit --out folder of its --data", ["fit", "--data", pairs, "--out", r, "--overwrite",
                                            *TINY]),
        ("evaluate --out RUN", ["evaluate", run, "--data", pairs, "--out", run, "--overwrite"]),
        ("sample --out RUN/model.pt", ["sample", run, "--observation", obs, "--out",
                                       f"{run}/model.pt", "--overwrite"]),
        ("sample --out inside RUN", ["sample", run, "--observation", obs, "--out",
                                     f"{run}/p.nc"]),
        ("sample --out = observation", ["sample", run, "--observation", obs, "--out", obs,
                                        "--overwrite"]),
        ("score --out = posterior", ["score", post, "--out", post, "--overwrite"]),
        ("fit --out an ordinary file", ["fit", "--problem", "two_birds", "--out", f"{r}/afile",
                                        "--overwrite", *TINY]),
        ("diagnose --overwrite a user's folder", ["diagnose", post, "--out",
                                                  f"{r}/user_folder", "--overwrite"]),
        ("fit --overwrite a run of another command", ["fit", "--problem", "two_birds", "--out",
                                                      f"{r}/user_folder", "--overwrite", *TINY]),
        ("sample --out a folder", ["sample", run, "--observation", obs, "--out",
                                   f"{r}/user_folder", "--overwrite"]),
        ("simulate --out = training pairs", ["simulate", "--problem", "linear_gaussian", "--num",
                                             "3", "--out", pairs]),
        ("--out under an existing file", ["simulate", "--problem", "linear_gaussian", "--num",
                                          "3", "--out", f"{r}/afile/x.npz"]),
        ("diagnose --out under an existing file", ["diagnose", post, "--out", f"{r}/afile/rep"]),
        ("fit --out via a symlink to the data", ["fit", "--data", pairs, "--out",
                                                 f"{r}/link_to_root", "--overwrite", *TINY]),
    ):
        add(Case("outputs that would destroy inputs", name, argv))
    # seeds
    for cmd in (["fit", "--problem", "two_birds", "--out", out, *TINY],
                ["sample", run, "--observation", obs, "--out", f"{out}.nc"],
                ["evaluate", run, "--data", pairs, "--out", out],
                ["simulate", "--problem", "two_birds", "--num", "2", "--out", f"{out}.npz"]):
        for bad in ("-1", str(2**32), "1.5", "abc"):
            add(Case("seeds out of range", f"{cmd[0]} --seed {bad}", [*cmd, "--seed", bad]))
    # damaged checkpoints
    for name in ("ck_unknown_key", "ck_wrong_type", "ck_missing", "ck_nan", "ck_trunc",
                 "ck_empty"):
        add(Case("damaged checkpoints", name, ["sample", f"{r}/{name}", "--observation", obs,
                                               "--out", f"{out}.nc"]))
        add(Case("damaged checkpoints", f"{name} (evaluate)", ["evaluate", f"{r}/{name}",
                 "--data", pairs, "--out", out]))
    add(Case("damaged checkpoints", "random bytes as a run", ["sample", f"{r}/random.pt",
             "--observation", obs, "--out", f"{out}.nc"]))
    add(Case("damaged checkpoints", "missing run", ["sample", f"{r}/nope", "--observation", obs,
             "--out", f"{out}.nc"]))
    # posterior files
    for name in ("post_nox", "post_noz", "post_noobs", "post_zero", "post_nan", "random"):
        # a file without z is whole: importance sampling and NUTS write x alone
        add(Case("posterior files", f"diagnose {name}",
                 ["diagnose", f"{r}/{name}.nc", "--out", out],
                 expect=0 if name == "post_noz" else 2))
        add(Case("posterior files", f"score {name}", ["score", f"{r}/{name}.nc",
                                                      "--functions", "data_1"],
                 expect=0 if name == "post_noz" else 2))  # score reads x and y only
    add(Case("posterior files", "diagnose a data file", ["diagnose", pairs, "--out", out]))
    for path in sorted(root.glob("post_flip*.nc")):
        # a flipped byte may hit data (the report is written) or structure (one error line)
        add(Case("posterior files", f"diagnose {path.name}", ["diagnose", str(path), "--out",
                                                              out], expect=-2))
    # data files
    for name in ("complex", "strings", "nan", "empty", "mismatch", "nokeys", "overflow",
                 "truncated", "random"):
        add(Case("data files", f"fit --data {name}.npz", ["fit", "--data", f"{r}/{name}.npz",
                                                          "--out", out, *TINY]))
    for suffix in (".nc", ".pt", ".bin"):
        add(Case("data files", f"fit --data random{suffix}",
                 ["fit", "--data", f"{r}/random{suffix}", "--out", out, *TINY]))
    for name in ("obs_complex.npy", "obs_wrong.npy", "random.npy", "random.npz", "nokeys.npz",
                 "afile"):
        add(Case("data files", f"sample --observation {name}", ["sample", run, "--observation",
                 f"{r}/{name}", "--out", f"{out}.nc"]))
    add(Case("data files", "evaluate --data mismatched shapes", ["evaluate", run, "--data", pairs,
             "--out", out]))
    # numeric flags
    fit = ["fit", "--problem", "two_birds", "--out", out, "--quiet"]
    for flags in (["--learning-rate", "1e400"], ["--learning-rate", "nan"],
                  ["--learning-rate", "1e308"], ["--learning-rate", "900"],
                  ["--learning-rate", "-1"], ["--epochs", "0"], ["--epochs", "-3"],
                  ["--batch-size", "0"], ["--latent-dim", "0"], ["--hidden-dims", "0"],
                  ["--hidden-dims", "a,b"], ["--lr-decay", "2"], ["--val-fraction", "1"],
                  ["--num-particles", "0"], ["--num-train", "1"], ["--fixed-scale", "inf"],
                  ["--physics-weight", "-1"], ["--epochs", "1e3"]):
        add(Case("numeric flags", " ".join(flags), [*fit, *flags]))
    smp = ["sample", run, "--observation", obs, "--out", f"{out}.nc"]
    for flags in (["--num-samples", "0"], ["--num-samples", "-5"],
                  *(["--refine", *f] for f in (["--max-misfit", "nan"], ["--max-misfit", "-1"],
                                               ["--oversample", "0"], ["--refine-lr", "0"],
                                               ["--refine-lr", "inf"], ["--refine-steps", "-1"])),
                  ["--method", "nuts", "--max-misfit", "2"],
                  ["--method", "importance", "--decoder-noise", "mean"]):
        add(Case("numeric flags", "sample " + " ".join(flags), [*smp, *flags]))
    for flags in (["--max-observations", "0"], ["--max-observations", "-1"],
                  ["--num-samples", "1"]):
        add(Case("numeric flags", "evaluate " + " ".join(flags),
                 ["evaluate", run, "--data", pairs, "--out", out, *flags]))
    add(Case("numeric flags", "diagnose --max-observations 0",
             ["diagnose", post, "--out", out, "--max-observations", "0"]))
    add(Case("numeric flags", "simulate --num 0", ["simulate", "--problem", "two_birds",
             "--num", "0", "--out", f"{out}.npz"]))
    # memory
    add(Case("memory", "simulate --num 10**10", ["simulate", "--problem", "two_birds", "--num",
             str(10**10), "--out", f"{out}.npz"]))
    add(Case("memory", "fit --num-train 10**10", [*fit, "--num-train", str(10**10)]))
    add(Case("memory", "fit --latent-dim 10**8", [*fit, "--latent-dim", str(10**8)]))
    add(Case("memory", "fit --hidden-dims 200000,200000", [*fit, "--hidden-dims",
             "200000,200000"]))
    add(Case("memory", "evaluate --num-samples 10**9", ["evaluate", f"{r}/lgrun", "--data",
             pairs, "--out", out, "--num-samples", str(10**9)]))
    add(Case("memory", "sample --num-samples 10**12 (too big for the disk)",
             [*smp, "--num-samples", str(10**12)]))
    add(Case("memory", "sample --num-samples 300000 streamed", [*smp, "--num-samples", "300000"],
             expect=0))
    # problems
    for name, argv in (
        ("unknown problem", ["simulate", "--problem", "nope", "--num", "2", "--out",
                             f"{out}.npz"]),
        ("module not importable", ["simulate", "--problem", "no_such_mod:make", "--num", "2",
                                   "--out", f"{out}.npz"]),
        ("factory returns 42", ["simulate", "--problem", "badmod:not_a_problem", "--num", "2",
                                "--out", f"{out}.npz"]),
        ("factory raises", ["simulate", "--problem", "badmod:boom", "--num", "2", "--out",
                            f"{out}.npz"]),
        ("bad --problem-arg", ["simulate", "--problem", "gravity", "--problem-arg", "nope",
                               "--num", "2", "--out", f"{out}.npz"]),
        ("unknown problem kwarg", ["simulate", "--problem", "gravity", "--problem-arg",
                                   "bogus=1", "--num", "2", "--out", f"{out}.npz"]),
        ("--functions on gravity", ["simulate", "--problem", "gravity", "--functions", "data_1",
                                    "--num", "2", "--out", f"{out}.npz"]),
        ("--refine without a problem", ["sample", f"{r}/lgrun", "--observation",
                                        f"{r}/lgobs.npz", "--out", f"{out}.nc", "--refine"]),
        ("--problem with other shapes", ["sample", run, "--observation", obs, "--out",
                                         f"{out}.nc", "--problem", "gravity"]),
    ):
        add(Case("problems", name, argv))
    # misc refusals
    add(Case("misc", "--resimulate with --data", ["fit", "--data", pairs, "--resimulate",
             "--out", out, *TINY]))
    add(Case("misc", "sample --out .npz", [*smp[:-1], f"{out}.npz"]))
    add(Case("misc", "score --out .csv", ["score", post, "--out", f"{out}.csv"]))
    add(Case("misc", "simulate --out .csv", ["simulate", "--problem", "two_birds", "--num", "2",
             "--out", f"{out}.csv"]))
    add(Case("misc", "non-UTF-8 --out", ["simulate", "--problem", "two_birds", "--num", "2",
             "--out", os.fsdecode(root.as_posix().encode() + b"/\xff\xfe.npz")]))
    add(Case("misc", "non-UTF-8 --data", ["fit", "--data", os.fsdecode(
             root.as_posix().encode() + b"/\xff.npz"), "--out", out, *TINY]))
    for name in ("rf_rmtree.toml", "rf_system.json", "rf_bad_toml.toml", "rf_unknown.toml",
                 "rf_types.toml", "rf_huge.toml", "rf_image_size.toml", "rf_deep.json",
                 "rf_shapes.json", "rf_big.toml", "afile"):
        # no TINY: its --latent-dim and --hidden-dims would override the file's bad values
        add(Case("run files (fit --config)", name, ["fit", "--config", f"{r}/{name}", "--out",
                 out, "--epochs", "1", "--num-train", "128", "--quiet"]))
    add(Case("run files (fit --config)", "--out = the run file's data folder",
             ["fit", "--config", f"{r}/rf_data_is_out.toml", "--out", r, "--overwrite", *TINY]))
    add(Case("run files (fit --config)", "--out = the run file",
             ["fit", "--config", f"{r}/rf_data_is_out.toml", "--out", f"{r}/rf_data_is_out.toml",
              "--overwrite", *TINY]))
    add(Case("interrupts", "Ctrl-C during fit", ["fit", "--problem", "crosshole", "--out",
             f"{r}/interrupted", "--quiet"], expect=130, subprocess_signal=True))
    for name, flags in (("sample", ["--num-samples", "3000000"]),
                        ("sample --method nuts", ["--method", "nuts", "--num-samples", "40000",
                                                  "--chains", "2", "--warmup", "100",
                                                  "--problem", "linear_gaussian"])):
        add(Case("interrupts", f"Ctrl-C during {name}", ["sample", f"{r}/lgrun",
                 "--observation", f"{r}/lgobs.npz", *flags, "--out", f"{out}.nc",
                 "--threads", "1"], expect=130, subprocess_signal=True))
    return c


USER_PROBLEMS = '''
import threading

import torch

from ppl_cvae.data.streaming import batch_seed
from ppl_cvae.problems.base import Problem


class Mine(Problem):
    name, x_shape, y_shape = "mine", (2,), (2,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = True

    def sample_prior(self, num, generator=None):
        return torch.randn(num, 2, generator=generator)

    def forward(self, x):
        return 2 * x

    def log_prior(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)


def _changed(change):
    class Changed(Mine):
        def simulate(self, num, generator=None):
            return change(*super().simulate(num, generator), generator)
    return Changed()


def _nan(x, y, generator):
    y[0, 0] = float("nan")
    return x, y


def _nan_in_minibatch_1(x, y, generator):  # seed 0: only stream minibatch 1 (the second) is bad
    if generator is not None and generator.initial_seed() == batch_seed(0, 1):
        y[0, 0] = float("nan")
    return x, y


def _inf(x, y, generator):
    x[-1, 1] = float("inf")
    return x, y


def _raise(x, y, generator):
    raise ValueError("solver did not converge")


class Locked(Mine):
    def __init__(self):
        self.lock = threading.Lock()  # cannot be pickled


def event_shape(): return _changed(lambda x, y, g: (x, y[:, :1]))
def rows(): return _changed(lambda x, y, g: (x, y[:-1]))
def float64(): return _changed(lambda x, y, g: (x.double(), y.double()))
def integers(): return _changed(lambda x, y, g: ((10 * x).long(), y))
def nan(): return _changed(_nan)
def inf(): return _changed(_inf)
def nan_in_minibatch_1(): return _changed(_nan_in_minibatch_1)
def numpy(): return _changed(lambda x, y, g: (x.numpy(), y.numpy()))
def not_a_pair(): return _changed(lambda x, y, g: torch.cat([x, y], 1))
def raises(): return _changed(_raise)
def global_rng(): return _changed(lambda x, y, g: Mine().simulate(len(x), None))
def unpicklable(): return Locked()
def mine(): return Mine()


# audit of 2026-11-30, second round: tensors a simulator may return, problems' densities
def meta(): return _changed(lambda x, y, g: (x.to("meta"), y))
def sparse(): return _changed(lambda x, y, g: (x, y.to_sparse()))
def zero_d(): return _changed(lambda x, y, g: (x.sum(), y))
def needs_grad(): return _changed(lambda x, y, g: (x.requires_grad_(True) * 1.0, y))
def as_list(): return _changed(lambda x, y, g: [x, y])


class Once(Mine):
    def __init__(self):
        self.pairs = None

    def simulate(self, num, generator=None):
        if self.pairs is None:
            self.pairs = iter([super().simulate(num, generator)])
        return next(self.pairs)  # an iterator consumed on the first call


class Float64Only(Mine):
    def log_likelihood(self, x, y):
        if x.dtype != torch.float64:
            raise TypeError(f"needs float64, got {x.dtype}")
        return super().log_likelihood(x, y)


class NaNLikelihood(Mine):
    def log_likelihood(self, x, y):
        return super().log_likelihood(x, y) * float("nan")


class NaNPrior(Mine):
    def log_prior(self, x):
        return super().log_prior(x) + float("nan")


def once(): return Once()
def float64_only(): return Float64Only()
def nan_likelihood(): return NaNLikelihood()
def nan_prior(): return NaNPrior()


def _with_support(support):
    problem = Mine()
    problem.support = support
    return problem


def support_tuple(): return _with_support((0.0, 1.0))
def support_shape(): return _with_support(
    torch.distributions.constraints.interval(torch.zeros(3), torch.ones(3)))
def support_narrow(): return _with_support(torch.distributions.constraints.interval(5.0, 6.0))
def support_wide(): return _with_support(torch.distributions.constraints.interval(-50.0, 50.0))
'''

RESUME_FIT = ["--num-train", "200", "--batch-size", "20", "--epochs", "3", "--hidden-dims",
              "8", "--latent-dim", "2", "--seed", "5", "--quiet", "--threads", "1",
              "--checkpoint-every", "1"]


def _interrupted_fit(argv: list[str]) -> None:
    """Run ``ppl-cvae fit`` and stop it with Ctrl-C after 5 SVI steps (a state is saved)."""
    import pyro

    original = pyro.infer.SVI.step
    calls = {"n": 0}

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    pyro.infer.SVI.step = step  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            assert main(argv) == 130
    finally:
        pyro.infer.SVI.step = original  # type: ignore[method-assign]
        torch.set_num_threads(THREADS)


def build_new_feature_workspace(root: Path) -> None:
    """Interrupted runs (pairs in memory, stream, lazy folder), a user's simulators, lazy files."""
    (root / "hostile_sim.py").write_text(USER_PROBLEMS)
    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(root / "lgrun_problem"), *TINY]) == 0
    assert main(["fit", "--problem", "hostile_sim:mine", "--out", str(root / "userrun"),
                 *TINY]) == 0
    assert main(["simulate", "--problem", "hostile_sim:mine", "--num", "1", "--out",
                 str(root / "userobs.npz")]) == 0
    _interrupted_fit(["fit", *lg, *RESUME_FIT, "--out", str(root / "int_mem")])
    _interrupted_fit(["fit", *lg, *RESUME_FIT, "--stream", "--out", str(root / "int_stream")])
    x, y = np.load(root / "pairs.npz")["x"], np.load(root / "pairs.npz")["y"]
    lazy = root / "lazy_pairs"
    lazy.mkdir()
    np.save(lazy / "x.npy", x)
    np.save(lazy / "y.npy", y)
    _interrupted_fit(["fit", "--data", str(lazy), "--chunk-mb", str(16 * 7 / 2**20),
                      *RESUME_FIT[2:], "--out", str(root / "int_lazy")])
    raw = (root / "int_stream" / "train_state.pt").read_bytes()
    for name, data in (("truncated", raw[: len(raw) // 2]), ("empty", b""),
                       ("random", np.random.default_rng(1).bytes(4096))):
        shutil.copytree(root / "int_stream", root / f"int_{name}")
        (root / f"int_{name}" / "train_state.pt").write_bytes(data)
    payload = torch.load(root / "int_stream" / "train_state.pt", weights_only=True)
    for name, change in (
        ("format", lambda p: p.update(format="ppl_cvae.train_state.v9")),
        ("os_system", lambda p: p["record"].update(
            problem={"name": "os:system", "command": f"touch {root}/PWNED"})),
        ("workers", lambda p: p["record"].update(data_source={"stream": {"workers": 10**6}})),
        ("position", lambda p: p["data_stream"].update(position=10**6)),
    ):
        shutil.copytree(root / "int_stream", root / f"int_{name}")
        forged = {**payload, "record": dict(payload["record"]),
                  "data_stream": dict(payload["data_stream"])}
        change(forged)
        torch.save(forged, root / f"int_{name}" / "train_state.pt")
    (root / "no_state_run").mkdir()  # a fit's folder whose state was deleted
    shutil.copy(root / "int_stream" / ".ppl_cvae_output.json", root / "no_state_run")
    # lazily read files
    rng = np.random.default_rng(2)
    xs, ys = rng.normal(size=(200, 2)), rng.normal(size=(200, 3))
    nan_row = xs.copy()
    nan_row[150] = np.nan
    inf_row = ys.copy()
    inf_row[3, 1] = np.inf
    for name, (a, b) in {
        "float16": (xs.astype(np.float16), ys.astype(np.float16)),
        "int": ((10 * xs).astype(np.int64), ys),
        "bool": (xs > 0, ys),
        "nan_row": (nan_row, ys),
        "inf_row": (xs, inf_row),
        "rows": (xs, ys[:-1]),
        "zero_rows": (xs[:0], ys[:0]),
        "complex": (xs + 1j, ys),
    }.items():
        folder = root / f"lz_{name}"
        folder.mkdir()
        np.save(folder / "x.npy", a)
        np.save(folder / "y.npy", b)
    (root / "lz_empty").mkdir()
    import xarray as xr

    xr.Dataset({"a": (("n", "k"), xs)}).to_netcdf(root / "lz_novars.nc")
    (root / "lz_store.zarr").mkdir()
    (root / "lz_store.zarr" / ".zgroup").write_text('{"zarr_format": 2}')


@contextlib.contextmanager
def _changed_file(path: Path, data: Callable[[np.ndarray], np.ndarray]) -> Any:
    """Replace the array in ``path`` by ``data(array)`` for one case, then restore it."""
    raw = path.read_bytes()
    np.save(path, data(np.load(path)))
    try:
        yield
    finally:
        path.write_bytes(raw)


@contextlib.contextmanager
def _locked(folder: Path) -> Any:
    """Hold ``flock`` on a run folder, as a first ``fit --resume`` of it does.

    (``ppl_cvae.train.resume.lock_run_folder``, written out here so that the case also runs
    against versions without the lock, where the second fit went ahead.)
    """
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def new_feature_cases(root: Path) -> list[Case]:
    """Cases for ``fit --resume``, ``--stream --workers``, ``--lazy``, ``sample --method nuts``."""
    r = str(root)
    out = f"{r}/new"
    c: list[Case] = []
    add = c.append
    resume = ["fit", "--resume"]
    # fit --resume
    cat = "fit --resume"
    for name, argv in (
        ("a finished run", [*resume, f"{r}/run"]),
        ("a missing folder", [*resume, f"{r}/nope"]),
        ("model.pt instead of the folder", [*resume, f"{r}/run/model.pt"]),
        ("a folder no fit wrote", [*resume, f"{r}/user_folder"]),
        ("a run folder without its state", [*resume, f"{r}/no_state_run"]),
        ("truncated state", [*resume, f"{r}/int_truncated"]),
        ("empty state", [*resume, f"{r}/int_empty"]),
        ("random bytes as state", [*resume, f"{r}/int_random"]),
        ("another state format", [*resume, f"{r}/int_format"]),
        ("forged problem os:system", [*resume, f"{r}/int_os_system"]),
        ("forged 10**6 workers", [*resume, f"{r}/int_workers"]),
        ("forged stream position", [*resume, f"{r}/int_position"]),
        ("--stream on a run in memory", [*resume, f"{r}/int_mem", "--stream"]),
        ("--workers 2 on a run in memory", [*resume, f"{r}/int_mem", "--workers", "2"]),
        ("--lazy on a run in memory", [*resume, f"{r}/int_mem", "--lazy"]),
        ("--data another file", [*resume, f"{r}/int_lazy", "--data", f"{r}/pairs.npz"]),
        ("--chunk-mb on a lazy run", [*resume, f"{r}/int_lazy", "--chunk-mb", "1"]),
        ("--buffer-chunks on a lazy run", [*resume, f"{r}/int_lazy", "--buffer-chunks", "9"]),
        ("--workers 10**6 on a stream", [*resume, f"{r}/int_stream", "--workers",
                                         str(10**6)]),
        ("--workers -1", [*resume, f"{r}/int_stream", "--workers", "-1"]),
    ):
        add(Case(cat, name, argv))
    lazy_x = root / "lazy_pairs" / "x.npy"
    for name, change in (
        ("lazy file grown since", lambda a: np.concatenate([a, a[:7]])),
        ("lazy file one value changed", lambda a: a + (np.arange(len(a)) == len(a) // 2)[:, None]),
        ("lazy file rows permuted", lambda a: a[::-1].copy()),
        ("lazy file now float64", lambda a: a.astype(np.float64)),
    ):
        add(Case(cat, name, [*resume, f"{r}/int_lazy"],
                 around=lambda change=change: _changed_file(lazy_x, change)))
    add(Case(cat, "two resumes at once", [*resume, f"{r}/int_stream"],
             around=lambda: _locked(root / "int_stream")))
    add(Case(cat, "fit --overwrite into a run being resumed",
             ["fit", "--problem", "linear_gaussian", "--out", f"{r}/int_stream", "--overwrite",
              *TINY], around=lambda: _locked(root / "int_stream")))
    # streams and a user's simulator
    cat = "--stream --workers, a user's simulator"
    stream = ["fit", "--stream", "--seed", "0", "--out", out, *TINY]
    add(Case(cat, "--workers 10**6", [*stream, "--problem", "linear_gaussian", "--workers",
                                      str(10**6)]))
    add(Case(cat, "--workers -1", [*stream, "--problem", "linear_gaussian", "--workers", "-1"]))
    add(Case(cat, "--workers without --stream", ["fit", "--problem", "linear_gaussian",
             "--workers", "2", "--out", out, *TINY]))
    for factory, expect in (("event_shape", 2), ("rows", 2), ("nan", 2), ("inf", 2),
                            ("numpy", 2), ("not_a_pair", 2), ("raises", 2),
                            ("float64", 0), ("integers", 0), ("global_rng", 0)):
        for workers in ("0", "1"):
            add(Case(cat, f"simulate {factory}, {workers} workers",
                     [*stream, "--problem", f"hostile_sim:{factory}", "--workers", workers],
                     expect=expect))
    add(Case(cat, "NaN in stream minibatch 1, in a worker",
             [*stream, "--problem", "hostile_sim:nan_in_minibatch_1", "--workers", "1"]))
    add(Case(cat, "NaN in stream minibatch 1, no worker",
             [*stream, "--problem", "hostile_sim:nan_in_minibatch_1"]))
    add(Case(cat, "simulator that cannot be pickled, 1 worker",
             [*stream, "--problem", "hostile_sim:unpicklable", "--workers", "1"], expect=0))
    add(Case(cat, "--resimulate with NaN", ["fit", "--problem", "hostile_sim:nan",
             "--resimulate", "--out", out, *TINY]))
    # lazy files
    cat = "lazily read files"
    lazy = ["fit", "--out", out, *TINY]
    for name, expect in (("float16", 0), ("int", 0), ("bool", 0), ("nan_row", 2),
                         ("inf_row", 2), ("rows", 2), ("zero_rows", 2), ("complex", 2),
                         ("empty", 2)):
        add(Case(cat, f"folder {name}", [*lazy, "--data", f"{r}/lz_{name}"], expect=expect))
    add(Case(cat, ".nc without x and y, --lazy", [*lazy, "--data", f"{r}/lz_novars.nc",
             "--lazy"]))
    add(Case(cat, ".zarr store (zarr not installed, or a fake store)",
             [*lazy, "--data", f"{r}/lz_store.zarr"]))
    add(Case(cat, "--lazy on an .npz", [*lazy, "--data", f"{r}/pairs.npz", "--lazy"]))
    add(Case(cat, "--lazy without --data", [*lazy, "--problem", "linear_gaussian", "--lazy"]))
    for flags, expect in ((["--chunk-mb", "0"], 2), (["--chunk-mb", "-1"], 2),
                          (["--chunk-mb", "nan"], 2), (["--chunk-mb", "1e9"], 0),
                          (["--buffer-chunks", "0"], 2), (["--buffer-chunks", str(10**9)], 0)):
        add(Case(cat, " ".join(flags), [*lazy, "--data", f"{r}/lazy_pairs", *flags],
                 expect=expect))
    # sample --method nuts
    cat = "sample --method nuts"
    nuts = ["sample", f"{r}/lgrun_problem", "--observation", f"{r}/lgobs.npz", "--method",
            "nuts",
            "--chains", "2", "--warmup", "10", "--out", f"{out}.nc"]
    for flags in (["--cores", "0"], ["--cores", "-1"], ["--num-samples", "0"],
                  ["--num-samples", "1"], ["--num-samples", "5"], ["--warmup", "-1"],
                  ["--chains", "0"], ["--num-samples", str(10**12)]):
        add(Case(cat, " ".join(flags), [*nuts, *flags]))
    add(Case(cat, "--cores 1000 (more than chains)", [*nuts, "--num-samples", "20", "--cores",
             "1000"], expect=0))
    add(Case(cat, "--warmup 0", [*nuts, "--num-samples", "20", "--warmup", "0"], expect=0))
    add(Case(cat, "--preconditioner prior, prior not Gaussian",
             ["sample", f"{r}/userrun", "--observation", f"{r}/userobs.npz", "--method", "nuts",
              "--num-samples", "20", "--preconditioner", "prior", "--out", f"{out}.nc"]))
    add(Case(cat, "--preconditioner prior, run fitted on a file, no --problem",
             ["sample", f"{r}/lgrun", "--observation", f"{r}/lgobs.npz", "--method",
              "nuts", "--num-samples", "20", "--preconditioner", "prior", "--out",
              f"{out}.nc"]))
    add(Case(cat, "--preconditioner prior with --method importance",
             ["sample", f"{r}/lgrun_problem", "--observation", f"{r}/lgobs.npz", "--method",
              "importance", "--preconditioner", "prior", "--out", f"{out}.nc"]))
    # flow layers
    cat = "flow-layer flags"
    fit = ["fit", "--problem", "linear_gaussian", "--out", out, *TINY]
    for flags in (["--flow-layers", "3"], ["--prior", "flow", "--flow-layers", "3"],
                  ["--prior-flow-layers", "2"], ["--prior", "flow", "--prior-flow-layers",
                                                 "65"], ["--likelihood", "flow",
                                                         "--flow-layers", str(10**6)],
                  ["--prior", "flow", "--prior-flow-layers", "-1"]):
        add(Case(cat, " ".join(flags), [*fit, *flags]))
    return c


def build_audit_workspace(root: Path) -> None:
    """A coupling prior-flow run, its hand-edited run files and checkpoints (second audit)."""
    assert main(["fit", "--problem", "linear_gaussian", "--prior", "flow", "--out",
                 str(root / "flowrun"), *TINY]) == 0
    config = json.loads((root / "flowrun" / "config.json").read_text())
    for name, change in (
        ("unknown_type", lambda m: m.update(prior_flow_type="realnvp")),
        ("type_3", lambda m: m.update(prior_flow_type=3)),
        ("negative_layers", lambda m: m.update(prior_flow_layers=-2)),
        ("missing_type", lambda m: m.pop("prior_flow_type")),
        ("missing_layers", lambda m: m.pop("prior_flow_layers")),
    ):
        edited = json.loads(json.dumps(config))
        change(edited["model"])
        (root / f"rf_flow_{name}.json").write_text(json.dumps(edited))
    payload = torch.load(root / "flowrun" / "model.pt", weights_only=True)
    for name, change in (
        ("autoregressive", lambda m: m.update(prior_flow_type="autoregressive")),
        ("bogus", lambda m: m.update(prior_flow_type="bogus")),
        ("layers3", lambda m: m.update(prior_flow_layers=3)),
        ("layers_neg", lambda m: m.update(prior_flow_layers=-1)),
        ("notype", lambda m: m.pop("prior_flow_type")),
    ):
        folder = root / f"ckf_{name}"
        folder.mkdir()
        forged = {**payload, "model_config": dict(payload["model_config"])}
        change(forged["model_config"])
        torch.save(forged, folder / "model.pt")
    os.symlink(root / "flowrun", root / "link_to_run")


@contextlib.contextmanager
def _killed_fit(run: Path) -> Any:
    """Start ``ppl-cvae fit`` into ``run`` in a child process and SIGKILL it mid-fit.

    The child saves a state after every step; it is killed once the first state exists, so
    the folder holds ``train_state.pt`` and the kernel has dropped its lock.
    """
    if run.exists():
        shutil.rmtree(run)
    argv = ["fit", "--problem", "linear_gaussian", "--out", str(run), "--epochs", "20",
            "--num-train", "2000", "--batch-size", "20", "--hidden-dims", "8", "--latent-dim",
            "2", "--quiet", "--threads", "1", "--checkpoint-every", "1", "--seed", "3"]
    child = subprocess.Popen([sys.executable, "-m", "ppl_cvae.cli", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if (run / "train_state.pt").is_file() or child.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    yield


def audit_cases(root: Path) -> list[Case]:
    """Cases of the second audit: prior-flow type, --potential-dtype, simulators, locks, sizes."""
    r = str(root)
    out = f"{r}/new"
    c: list[Case] = []
    add = c.append
    cat = "prior-flow type and layers"
    fit = ["fit", "--problem", "linear_gaussian", "--out", out, *TINY]
    for flags, expect in ((["--prior", "flow", "--prior-flow-type", "bogus"], 2),
                          (["--prior-flow-type", "coupling"], 2),
                          (["--prior-flow-type", "autoregressive"], 2),
                          (["--prior", "flow", "--prior-flow-type", "autoregressive",
                            "--prior-flow-layers", "0"], 0)):
        add(Case(cat, "fit " + " ".join(flags), [*fit, *flags], expect=expect))
    add(Case(cat, "sample --prior-flow-type", ["sample", f"{r}/flowrun", "--observation",
             f"{r}/lgobs.npz", "--prior-flow-type", "coupling", "--out", f"{out}.nc"]))
    add(Case(cat, "evaluate --prior-flow-layers", ["evaluate", f"{r}/flowrun", "--data",
             f"{r}/pairs.npz", "--prior-flow-layers", "3", "--out", out]))
    add(Case(cat, "fit --resume --prior-flow-type", ["fit", "--resume", f"{r}/int_mem",
             "--prior-flow-type", "coupling"]))
    for name, expect in (("unknown_type", 2), ("type_3", 2), ("negative_layers", 2),
                         ("missing_type", 0), ("missing_layers", 0)):
        add(Case(cat, f"run file {name}", ["fit", "--config", f"{r}/rf_flow_{name}.json",
                 "--out", out, "--epochs", "1", "--num-train", "128", "--quiet"],
                 expect=expect))
    for name in ("autoregressive", "bogus", "layers3", "layers_neg", "notype"):
        add(Case(cat, f"checkpoint {name} (sample)", ["sample", f"{r}/ckf_{name}",
                 "--observation", f"{r}/lgobs.npz", "--out", f"{out}.nc"]))
        add(Case(cat, f"checkpoint {name} (evaluate)", ["evaluate", f"{r}/ckf_{name}",
                 "--data", f"{r}/pairs.npz", "--out", out]))
    cat = "--potential-dtype and method flags"
    smp = ["sample", f"{r}/lgrun_problem", "--observation", f"{r}/lgobs.npz", "--out",
           f"{out}.nc"]
    user = ["sample", f"{r}/userrun", "--observation", f"{r}/userobs.npz", "--out",
            f"{out}.nc", "--num-samples", "20"]
    nuts = ["--method", "nuts", "--chains", "2", "--warmup", "10"]
    for flags in (["--method", "nuts", "--potential-dtype", "float16"],
                  ["--method", "importance", "--potential-dtype", "float32"],
                  ["--potential-dtype", "float64"],
                  ["--refine", "--potential-dtype", "float32"],
                  ["--method", "importance", "--chains", "4"],
                  ["--method", "importance", "--warmup", "5"],
                  ["--warmup", "5"],
                  ["--method", "importance", "--adapt-mass-matrix"],
                  ["--method", "nuts", "--proposals", "100"]):
        add(Case(cat, " ".join(flags), [*smp, *flags]))
    for factory, dtype, expect in (("float64_only", "float32", 0),
                                   ("float64_only", "float64", 0),
                                   ("nan_likelihood", "float32", 2),
                                   ("nan_likelihood", "float64", 2),
                                   ("nan_prior", "float32", 2)):
        add(Case(cat, f"nuts, problem {factory}, --potential-dtype {dtype}",
                 [*user, "--problem", f"hostile_sim:{factory}", *nuts, "--potential-dtype",
                  dtype], expect=expect))
    for factory in ("float64_only", "nan_likelihood"):
        add(Case(cat, f"importance, problem {factory}", [*user, "--problem",
                 f"hostile_sim:{factory}", "--method", "importance"]))
    cat2 = "a user's prior support"
    for factory, words in (("support_tuple", ("support must be",)),
                           ("support_narrow", ("prior draws", "support"))):
        add(Case(cat2, f"fit --problem hostile_sim:{factory}",
                 ["fit", "--problem", f"hostile_sim:{factory}", "--out", out, *TINY],
                 says=words))
    add(Case(cat2, "sample --problem hostile_sim:support_shape",
             [*user, "--problem", "hostile_sim:support_shape"], says=("support.check",)))
    for method in (["--method", "importance"], nuts):
        add(Case(cat2, f"{method[1]}, problem hostile_sim:support_wide",
                 [*user, "--problem", "hostile_sim:support_wide", *method], expect=0,
                 check_outputs=True))
    data_fit = ["fit", "--data", f"{r}/pairs.npz", "--out", out, *TINY]
    add(Case(cat2, "fit --data FOLDER (read lazily) --x-transform support",
             ["fit", "--data", f"{r}/lz_float16", "--out", out, *TINY, "--x-transform",
              "support", "--x-bounds=-100,100"], says=("x_transform",)))
    add(Case(cat2, "fit --data FOLDER (read lazily) --x-bounds", ["fit", "--data",
             f"{r}/lz_float16", "--out", out, *TINY, "--x-bounds=-100,100"], expect=0))
    for flags, expect, words in (
        (["--x-transform", "support"], 2, ("needs bounds",)),
        (["--x-transform", "support", "--x-bounds=-100,100", "--likelihood", "gaussian"], 2,
         ("needs a flow",)),
        (["--x-transform", "logit"], 2, ("invalid choice",)),
        (["--x-bounds", "0,100"], 2, ("outside",)),
        (["--x-bounds=-100,100"], 0, ()),
    ):
        add(Case(cat2, "fit --data " + " ".join(flags), [*data_fit, *flags], expect=expect,
                 says=words))
    for data, bounds in (("scales", "0,inf"), ("negative", "-inf,0")):
        add(Case(cat2, f"fit --data {data}.npz (1e-8 to 1e8, zeros) --x-bounds={bounds}",
                 ["fit", "--data", f"{r}/{data}.npz", "--out", out, *TINY,
                  f"--x-bounds={bounds}"], expect=0, check_outputs=True))
    add(Case(cat, "nuts --warmup 0 prints no warning",
             [*smp, "--method", "nuts", "--chains", "2", "--num-samples", "20", "--warmup",
              "0"], expect=0, no_warnings=True))
    cat = "tensors from a user's simulator"
    stream = ["fit", "--stream", "--seed", "0", "--out", out, *TINY]
    for factory, expect in (("meta", 2), ("sparse", 2), ("zero_d", 2), ("once", 2),
                            ("needs_grad", 0), ("as_list", 0)):
        add(Case(cat, f"simulate {factory}", [*stream, "--problem", f"hostile_sim:{factory}"],
                 expect=expect))
    cat = "run-folder lock and --out"
    add(Case(cat, "fit --resume after kill -9 mid-fit", ["fit", "--resume", f"{r}/killed",
             "--quiet"], expect=0, around=lambda: _killed_fit(root / "killed"),
             may_change="killed"))
    add(Case(cat, "fit --out a symlink to a run, --overwrite",
             ["fit", "--problem", "linear_gaussian", "--out", f"{r}/link_to_run", "--overwrite",
              *TINY]))
    add(Case(cat, "fit --out the data file", ["fit", "--data", f"{r}/pairs.npz", "--out",
             f"{r}/pairs.npz", "--overwrite", *TINY]))
    add(Case(cat, "fit --resume an ordinary file", ["fit", "--resume", f"{r}/afile"]))
    add(Case(cat, "fit --resume a run being resumed", ["fit", "--resume", f"{r}/int_mem"],
             around=lambda: _locked(root / "int_mem")))
    cat = "sample sizes"
    for flags in (["--method", "importance", "--num-samples", str(10**9)],
                  ["--method", "importance", "--num-samples", "100", "--proposals",
                   str(10**10)],
                  ["--num-samples", str(10**9)],
                  ["--method", "nuts", "--chains", "100", "--num-samples", "20"],
                  ["--method", "nuts", "--chains", str(10**9), "--num-samples", "20"]):
        add(Case(cat, " ".join(flags), [*smp, *flags]))
    return c


# ----------------------------------------------------------------------------- third audit
USER_OWN_PROBLEMS = """import sys
import numpy as np
import torch
from ppl_cvae.problems.base import Problem


class Base(Problem):
    name = "u_base"
    x_shape, y_shape = (2,), (2,)
    x_dims, y_dims, coords = ("p",), ("d",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = True

    def sample_prior(self, num, generator=None):
        return torch.randn(num, *self.x_shape, generator=generator)

    def forward(self, x):
        k = len(self.x_shape)
        flat = x.reshape(*x.shape[: x.dim() - k], -1)
        m = int(np.prod(self.y_shape))
        n = flat.shape[-1]
        A = torch.arange(1, m * n + 1, dtype=x.dtype).reshape(m, n) % 5 / 5.0 + 0.1
        return (flat @ A.T).reshape(*x.shape[: x.dim() - k], *self.y_shape)

    def log_prior(self, x):
        k = len(self.x_shape)
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(x.dim() - k).sum(-1)


class X7Y1(Base):
    name = "x7y1"
    x_shape, y_shape = (7,), (1,)


class X352Y46(Base):
    name = "x352y46"
    x_shape, y_shape = (3, 5, 2), (4, 6)
    x_dims, y_dims = ("a", "b", "c"), ("r", "s")


class NoiseFree(Base):
    name = "noisefree"
    noise_std = 0.0
    misfit_std = 1.0


class NoDensity(Base):
    name = "nodensity"
    has_prior_density = False

    def log_prior(self, x):
        raise NotImplementedError


class OnlySimulate:
    name = "onlysim"

    def simulate(self, num, generator=None):
        x = torch.randn(num, 2, generator=generator)
        return x, x * 2


class LLShape1(Base):
    name = "ll_shape1"

    def log_likelihood(self, x, y):
        return super().log_likelihood(x, y).sum().reshape(1)


class LLFloat(Base):
    name = "ll_float"

    def log_likelihood(self, x, y):
        return float(super().log_likelihood(x, y).sum())


class LPFloat(Base):
    name = "lp_float"

    def log_prior(self, x):
        return float(super().log_prior(x).sum())


class Sim64(Base):
    name = "sim64"

    def simulate(self, num, generator=None):
        x, y = super().simulate(num, generator)
        return x.double(), y.double()


class SimInt(Base):
    name = "simint"

    def simulate(self, num, generator=None):
        x, y = super().simulate(num, generator)
        return (10 * x).long(), (10 * y).int()


class SimNumpy(Base):
    name = "simnumpy"

    def simulate(self, num, generator=None):
        x, y = super().simulate(num, generator)
        return x.numpy(), y.numpy()


class SimExit(Base):
    name = "simexit"

    def simulate(self, num, generator=None):
        sys.exit(3)


class SimExit0(Base):
    name = "simexit0"

    def simulate(self, num, generator=None):
        sys.exit(0)


class ForwardExit(Base):
    name = "forwardexit"

    def forward(self, x):
        sys.exit("solver gave up")


class Seeds(Base):
    name = "seeds"

    def simulate(self, num, generator=None):
        torch.manual_seed(0)
        return super().simulate(num, generator)


class SeedsNumpy(Base):
    name = "seedsnp"

    def sample_prior(self, num, generator=None):
        torch.manual_seed(1234)
        np.random.seed(0)
        return super().sample_prior(num, generator)


class NaNLL(Base):
    name = "nanll"

    def log_likelihood(self, x, y):
        return super().log_likelihood(x, y) * float("nan")


class Factory:  # duck-typed
    pass


def base(): return Base()
def x7y1(): return X7Y1()
def x352y46(): return X352Y46()
def noisefree(): return NoiseFree()
def nodensity(): return NoDensity()
def onlysim(): return OnlySimulate()
def ll_shape1(): return LLShape1()
def ll_float(): return LLFloat()
def lp_float(): return LPFloat()
def sim64(): return Sim64()
def simint(): return SimInt()
def simnumpy(): return SimNumpy()
def simexit(): return SimExit()
def simexit0(): return SimExit0()
def forwardexit(): return ForwardExit()
def seeds(): return Seeds()
def seedsnp(): return SeedsNumpy()
def nanll(): return NaNLL()
def factoryexit(): sys.exit(4)
"""


def build_user_workspace(root: Path) -> None:
    """A new user's own problems (odd shapes, odd returns) and data files (third audit)."""
    (root / "user_own.py").write_text(USER_OWN_PROBLEMS)
    for factory in ("base", "x7y1", "x352y46"):
        assert main(["fit", "--problem", f"user_own:{factory}", "--out",
                     str(root / f"own_{factory}"), *TINY]) == 0
        assert main(["simulate", "--problem", f"user_own:{factory}", "--num", "2", "--out",
                     str(root / f"own_{factory}_obs.npz")]) == 0
        assert main(["simulate", "--problem", f"user_own:{factory}", "--num", "12", "--out",
                     str(root / f"own_{factory}_pairs.npz")]) == 0
    files = root / "user files"  # a space in the path
    files.mkdir()
    rng = np.random.default_rng(0)
    n = 64
    x = rng.normal(size=(n, 3))
    y = x @ rng.normal(size=(3, 4)) + 0.1 * rng.normal(size=(n, 4))

    def save(name: str, **arrays: Any) -> None:
        np.savez(files / name, **arrays)

    save("int.npz", x=(10 * x).astype(np.int64), y=(10 * y).astype(np.int32))
    save("float16.npz", x=x.astype(np.float16), y=y.astype(np.float16))
    save("float64.npz", x=x, y=y)
    constant = x.copy()
    constant[:, 1] = 5.0
    save("constant_column.npz", x=constant, y=y)
    save("all_constant.npz", x=np.ones((n, 3)), y=np.ones((n, 4)))
    huge = x.copy()
    huge[:, 0] *= 1e30
    save("huge_column.npz", x=huge, y=y)
    near_max = y.copy()
    near_max[:, 1] = 3e38
    save("constant_3e38.npz", x=x, y=near_max)
    nan_row = x.copy()
    nan_row[3] = np.nan
    save("nan_row.npz", x=nan_row, y=y)
    inf_row = y.copy()
    inf_row[5, 0] = np.inf
    save("inf_row.npz", x=x, y=inf_row)
    save("one_pair.npz", x=x[:1], y=y[:1])
    save("two_pairs.npz", x=x[:2], y=y[:2])
    save("rows.npz", x=x, y=y[:-3])
    save("extra_keys.npz", x=x, y=y, meta=np.arange(3), names=np.array(["a", "b"]))
    save("other_names.npz", theta=x, data=y)
    save("upper_case.npz", X=x, Y=y)
    save("fortran.npz", x=np.asfortranarray(x), y=np.asfortranarray(y))
    wide = np.zeros((n, 6))
    wide[:, ::2] = x
    save("non_contiguous.npz", x=wide[:, ::2], y=y[:, ::-1])
    save("object.npz", x=np.array([[1.0, 2.0, 3.0]] * n, dtype=object), y=y)
    save("shapes.npz", x=rng.normal(size=(n, 3, 5, 2)), y=rng.normal(size=(n, 4, 6)))
    save("y_one.npz", x=rng.normal(size=(n, 7)), y=rng.normal(size=(n, 1)))
    save("flat.npz", x=rng.normal(size=(n,)), y=rng.normal(size=(n,)))
    (files / "folder.npz").mkdir()
    (files / "empty.npz").write_bytes(b"")
    good = (files / "float64.npz").read_bytes()
    (files / "gzip.npz").write_bytes(gzip.compress(good))
    (files / "float64.npz.gz").write_bytes(gzip.compress(good))
    (files / "ünïcödé dätä.npz").write_bytes(good)
    np.savetxt(files / "pairs.csv", np.hstack([x, y]), delimiter=",")
    import xarray as xr

    xr.Dataset({"x": (("n", "k"), (10 * x).astype(np.int32)),
                "y": (("n", "m"), near_max)}).to_netcdf(files / "int_3e38.nc")
    np.save(files / "obs_one.npy", y[0])
    np.save(files / "obs_float16.npy", y[:2].astype(np.float16))
    np.save(files / "obs_int.npy", (10 * y[:2]).astype(np.int16))
    np.save(files / "obs_fortran.npy", np.asfortranarray(y[:3]))
    np.save(files / "obs_nan.npy", np.full((1, 4), np.nan))
    # a hostile file: an object array is stored as a pickle, which the loader must refuse
    hostile = {"allow_pickle": True}
    np.save(files / "obs_object.npy", np.array([[1.0] * 4], dtype=object), **hostile)
    np.save(files / "obs_wrong_shape.npy", y[:3, :3])
    np.savez(files / "obs_upper.npz", Y=y[:2])
    assert main(["fit", "--data", str(files / "float64.npz"), "--out", str(root / "own_data"),
                 *TINY]) == 0


def user_cases(root: Path) -> list[Case]:
    """Cases of the third audit: a new user's own problems and data files, whole workflow."""
    r = str(root)
    out = f"{r}/new"
    c: list[Case] = []
    add = c.append
    cat = "user problems"
    nuts = ["--method", "nuts", "--chains", "2", "--warmup", "10"]
    for factory in ("x7y1", "x352y46"):
        run, obs = f"{r}/own_{factory}", f"{r}/own_{factory}_obs.npz"
        smp = ["sample", run, "--observation", obs, "--num-samples", "20", "--out", f"{out}.nc"]
        add(Case(cat, f"fit {factory}", ["fit", "--problem", f"user_own:{factory}", "--out",
                 out, *TINY], expect=0))
        for flags in (["--method", "amortized"], ["--method", "importance"], ["--refine"],
                      *([nuts] if factory == "x7y1" else [])):
            add(Case(cat, f"sample {factory} {' '.join(flags)}", [*smp, *flags], expect=0))
        add(Case(cat, f"evaluate {factory}", ["evaluate", run, "--data",
                 f"{r}/own_{factory}_pairs.npz", "--num-samples", "10", "--out", out],
                 expect=0))
    for factory, expect in (("sim64", 0), ("simint", 0), ("seeds", 0), ("seedsnp", 0),
                            ("simnumpy", 2), ("simexit", 2), ("simexit0", 2),
                            ("forwardexit", 2), ("factoryexit", 2), ("onlysim", 2)):
        add(Case(cat, f"fit, problem {factory}", ["fit", "--problem", f"user_own:{factory}",
                 "--out", out, *TINY], expect=expect))
    add(Case(cat, "fit --stream, simulator calls sys.exit", ["fit", "--problem",
             "user_own:simexit", "--stream", "--out", out, *TINY]))
    for factory in ("simnumpy", "simexit", "factoryexit"):
        add(Case(cat, f"simulate, problem {factory}", ["simulate", "--problem",
                 f"user_own:{factory}", "--num", "3", "--out", f"{r}/new.npz"]))
    base = ["sample", f"{r}/own_base", "--observation", f"{r}/own_base_obs.npz",
            "--num-samples", "20", "--out", f"{out}.nc"]
    for factory, flags in (("ll_shape1", ["--method", "importance"]), ("ll_shape1", nuts),
                           ("ll_float", ["--method", "importance"]), ("ll_float", nuts),
                           ("lp_float", ["--method", "amortized"]),
                           ("lp_float", ["--method", "importance"]), ("lp_float", nuts),
                           ("nanll", ["--method", "importance"]), ("nanll", nuts),
                           ("nodensity", ["--method", "importance"]), ("nodensity", nuts),
                           ("noisefree", ["--method", "importance"]),
                           ("forwardexit", ["--method", "amortized"])):
        add(Case(cat, f"sample --problem {factory} {' '.join(flags[:2])}",
                 [*base, "--problem", f"user_own:{factory}", *flags]))
    cat = "user files"
    f = f"{r}/user files"
    for name, expect in (("int.npz", 0), ("float16.npz", 0), ("float64.npz", 0),
                         ("constant_column.npz", 0), ("all_constant.npz", 0),
                         ("huge_column.npz", 0), ("constant_3e38.npz", 0), ("nan_row.npz", 2),
                         ("inf_row.npz", 2), ("one_pair.npz", 2), ("two_pairs.npz", 0),
                         ("rows.npz", 2), ("extra_keys.npz", 0), ("other_names.npz", 2),
                         ("upper_case.npz", 2), ("fortran.npz", 0), ("non_contiguous.npz", 0),
                         ("object.npz", 2), ("shapes.npz", 0), ("y_one.npz", 0),
                         ("flat.npz", 2), ("folder.npz", 2), ("empty.npz", 2), ("gzip.npz", 2),
                         ("float64.npz.gz", 2), ("ünïcödé dätä.npz", 0), ("pairs.csv", 2),
                         ("int_3e38.nc", 0)):
        add(Case(cat, f"fit --data {name}", ["fit", "--data", f"{f}/{name}", "--out", out,
                 *TINY], expect=expect))
    for name, expect in (("constant_column.npz", 0), ("huge_column.npz", 0),
                         ("two_pairs.npz", 0), ("int_3e38.nc", 2)):  # y at 3e38: far outside
        add(Case(cat, f"evaluate --data {name}", ["evaluate", f"{r}/own_data", "--data",
                 f"{f}/{name}", "--num-samples", "10", "--out", out], expect=expect))
    for name, expect in (("obs_one.npy", 0), ("obs_float16.npy", 0), ("obs_int.npy", 0),
                         ("obs_fortran.npy", 0), ("obs_nan.npy", 2), ("obs_object.npy", 2),
                         ("obs_wrong_shape.npy", 2), ("obs_upper.npz", 2),
                         ("float64.npz", 0), ("folder.npz", 2), ("constant_3e38.npz", 2)):
        add(Case(cat, f"sample --observation {name}", ["sample", f"{r}/own_data",
                 "--observation", f"{f}/{name}", "--num-samples", "10", "--out", f"{out}.nc"],
                 expect=expect))
    return c


OUTPUT_PROBLEMS = """import math
import torch
from ppl_cvae.problems.base import Problem


class Base(Problem):
    name = "o_base"
    x_shape, y_shape = (2,), (2,)
    x_dims, y_dims, coords = ("p",), ("d",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = True

    def __init__(self, scale=1.0):
        self.scale = scale

    def sample_prior(self, num, generator=None):
        return torch.randn(num, 2, generator=generator)

    def forward(self, x):
        return torch.stack([x[..., 0] + x[..., 1], x[..., 0] - 0.5 * x[..., 1]], -1)

    def log_prior(self, x):
        return torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)


class NoiseFree(Base):
    name = "o_noisefree"
    noise_std = 0.0
    misfit_std = 1.0


class HalfNaNPrior(Base):
    name = "o_half_nan_prior"

    def log_prior(self, x):
        lp = super().log_prior(x)
        return torch.where(x[..., 0] > 0, lp * math.nan, lp)


class NaNForward(Base):
    name = "o_nan_forward"

    def forward(self, x):
        y = super().forward(x)
        return torch.where((x[..., :1] > 0) & (x[..., 1:] > 0), y * math.nan, y)


def base(scale=1.0): return Base(scale)
def noisefree(): return NoiseFree()
def half_nan_prior(): return HalfNaNPrior()
def nan_forward(): return NaNForward()
"""


def build_output_workspace(root: Path) -> None:
    """A tiny fitted run of a user's problem, observations, posteriors and hand-edited files."""
    import arviz as az

    (root / "out_own.py").write_text(OUTPUT_PROBLEMS)
    o = root / "outputs"
    o.mkdir()
    assert main(["fit", "--problem", "out_own:base", "--out", str(o / "run"), *TINY]) == 0
    assert main(["simulate", "--problem", "out_own:base", "--num", "2", "--out",
                 str(o / "obs.npz")]) == 0
    assert main(["simulate", "--problem", "out_own:base", "--num", "16", "--out",
                 str(o / "pairs.npz")]) == 0
    assert main(["sample", str(o / "run"), "--observation", str(o / "obs.npz"),
                 "--num-samples", "20", "--out", str(o / "post.nc")]) == 0
    y = np.load(o / "obs.npz")["y"]
    np.save(o / "obs_nan.npy", np.where([[True, False]], np.nan, y))
    np.save(o / "obs_inf.npy", np.where([[False, True]], -np.inf, y))
    np.save(o / "obs_empty.npy", np.ones((0, 2)))
    np.savez(o / "obs_object.npz", y=np.array([[1.0, 2.0]], dtype=object))  # savez pickles
    np.save(o / "obs_complex.npy", y + 1j)
    np.save(o / "obs_bool.npy", y > 0)
    np.save(o / "obs_int64_huge.npy", np.full((1, 2), 2**62, dtype=np.int64))
    np.save(o / "obs_wrong_shape.npy", np.ones((2, 3)))
    np.save(o / "obs_extra_dim.npy", y[:, None, :])
    np.save(o / "obs_1e300.npy", np.full((1, 2), 1e300))
    np.save(o / "obs_strings.npy", np.array([["1.0", "2.0"]]))
    (o / "dir.nc").mkdir()
    (o / "dir.json").mkdir()
    (o / "rf_nan_arg.toml").write_text(
        'problem = { name = "out_own:base", scale = nan }\n[train]\nnum_epochs = 1\n'
        "num_train = 128\nbatch_size = 64\n[model]\nlatent_dim = 2\nhidden_dims = [8]\n")
    pairs = np.load(o / "pairs.npz")
    x_ovf = pairs["x"].astype(np.float64)
    x_ovf[:, 1] = np.where(np.arange(len(x_ovf)) % 2, 3.3e38, -3.3e38)  # sd 3.4e38: float32 inf
    np.savez(o / "pairs_sd_overflow.npz", x=x_ovf, y=pairs["y"])
    # hand-edited posterior files (diagnose) and Two Birds posteriors (score)
    idata = az.from_netcdf(o / "post.nc")
    az.InferenceData(observed_data=idata.observed_data).to_netcdf(str(o / "p_no_posterior.nc"))
    renamed = idata.copy()
    renamed.posterior = renamed.posterior.rename({"p": "q"})
    renamed.to_netcdf(str(o / "p_renamed_dims.nc"))
    no_truth = renamed.copy()
    del no_truth.constant_data
    no_truth.to_netcdf(str(o / "p_renamed_no_truth.nc"))
    extra = idata.copy()
    extra.observed_data = extra.observed_data.expand_dims(extra=2, axis=1)
    extra.to_netcdf(str(o / "p_extra_obs_dim.nc"))
    inf_draw = idata.copy()
    x = inf_draw.posterior["x"].values.copy()
    x[0, 3, 0, 1] = np.inf
    inf_draw.posterior["x"] = (inf_draw.posterior["x"].dims, x)
    inf_draw.to_netcdf(str(o / "p_inf_draw.nc"))
    pp_nan = idata.copy()
    yr = pp_nan.posterior_predictive["y"].values.copy()
    yr[:, ::2] = np.nan
    pp_nan.posterior_predictive["y"] = (pp_nan.posterior_predictive["y"].dims, yr)
    pp_nan.to_netcdf(str(o / "p_pp_nan.nc"))
    tb = az.from_netcdf(root / "post.nc")  # Two Birds (build_workspace)
    tb_extra = tb.copy()
    tb_extra.posterior["x"] = tb_extra.posterior["x"].expand_dims(extra=2, axis=3)
    tb_extra.to_netcdf(str(o / "tb_extra_dim.nc"))
    tb_inf = tb.copy()
    xt = tb_inf.posterior["x"].values.copy()
    xt[0, 2, 0] = np.inf
    tb_inf.posterior["x"] = (tb_inf.posterior["x"].dims, xt)
    tb_inf.to_netcdf(str(o / "tb_inf_draw.nc"))
    tb_attrs = tb.copy()
    tb_attrs.attrs["problem"] = "{not json"
    tb_attrs.posterior.attrs["problem"] = "{not json"
    tb_attrs.to_netcdf(str(o / "tb_bad_attrs.nc"))
    tb_obs = tb.copy()
    yo = tb_obs.observed_data["y"].values.copy()
    yo[0, 0, 3, 1] = np.nan
    tb_obs.observed_data["y"] = (tb_obs.observed_data["y"].dims, yo)
    tb_obs.to_netcdf(str(o / "tb_obs_nan.nc"))


def output_cases(root: Path) -> list[Case]:
    """Cases of the fourth audit: what the commands write, and what they refuse to."""
    r, o = str(root), str(root / "outputs")
    out = f"{r}/new"
    c: list[Case] = []

    def add(name: str, argv: list[str], expect: int = 2) -> None:
        c.append(Case("outputs", name, argv, expect=expect, check_outputs=True))

    run, obs, post = f"{o}/run", f"{o}/obs.npz", f"{o}/post.nc"
    smp = ["sample", run, "--observation", obs, "--num-samples", "20", "--out", f"{out}.nc"]
    for name, expect in (("obs_nan.npy", 2), ("obs_inf.npy", 2), ("obs_empty.npy", 2),
                         ("obs_object.npz", 2), ("obs_complex.npy", 2), ("obs_bool.npy", 0),
                         ("obs_int64_huge.npy", -2), ("obs_wrong_shape.npy", 2),
                         ("obs_extra_dim.npy", 2), ("obs_1e300.npy", 2),
                         ("obs_strings.npy", 2)):
        add(f"sample --observation {name}", ["sample", run, "--observation", f"{o}/{name}",
            "--num-samples", "20", "--out", f"{out}.nc"], expect)
    for n, expect in (("0", 2), ("-1", 2), ("1e12", 2), (str(10**12), 2), ("1", 0)):
        add(f"sample --num-samples {n}", [*smp[:-4], "--num-samples", n, "--out", f"{out}.nc"],
            expect)
    add("sample --out a folder named .nc", [*smp[:-1], f"{o}/dir.nc", "--overwrite"])
    add("sample --out under a file", [*smp[:-1], f"{obs}/p.nc"])
    add("evaluate --out = its --data file", ["evaluate", run, "--data", f"{o}/pairs.npz",
        "--out", f"{o}/pairs.npz", "--overwrite"])
    add("score --out a folder named .json", ["score", f"{r}/post.nc", "--functions", "data_1",
        "--out", f"{o}/dir.json", "--overwrite"])
    add("score --out under a file", ["score", f"{r}/post.nc", "--functions", "data_1", "--out",
        f"{r}/post.nc/s.json"])
    add("diagnose --out = the posterior file", ["diagnose", post, "--out", post, "--overwrite"])
    ev = ["evaluate", run, "--data", f"{o}/pairs.npz", "--out", out]
    add("evaluate on 1 held-out pair", [*ev, "--max-observations", "1", "--num-samples", "10"],
        0)
    add("evaluate with 2 draws a pair", [*ev, "--num-samples", "2"], 0)
    add("evaluate --num-samples 1e12", [*ev, "--num-samples", str(10**12)])
    for method in ("importance", "nuts"):
        flags = ["--method", method] + (["--chains", "1", "--warmup", "5"] if method == "nuts"
                                        else [])
        add(f"sample --method {method}, run without a problem", ["sample", f"{r}/lgrun",
            "--observation", f"{r}/lgobs.npz", "--num-samples", "20", "--out", f"{out}.nc",
            *flags])
        add(f"sample --method {method}, noise-free problem", [*smp, "--problem",
            "out_own:noisefree", *flags])
    add("sample, log_prior NaN at half the draws", [*smp, "--problem", "out_own:half_nan_prior"],
        0)
    add("sample, forward NaN at a quarter of the draws", [*smp, "--problem",
        "out_own:nan_forward"], 0)
    add("sample --refine, forward NaN at some draws", [*smp, "--problem", "out_own:nan_forward",
        "--refine"], -2)
    add("fit --config, a problem argument nan", ["fit", "--config", f"{o}/rf_nan_arg.toml",
        "--out", out, "--quiet"])
    add("fit --data, an x column whose sd overflows float32", ["fit", "--data",
        f"{o}/pairs_sd_overflow.npz", "--out", out, *TINY])
    for name, expect in (("p_no_posterior", 2), ("p_renamed_dims", -2), ("p_extra_obs_dim", -2),
                         ("p_renamed_no_truth", -2),
                         ("p_inf_draw", -2), ("p_pp_nan", -2)):
        add(f"diagnose {name}", ["diagnose", f"{o}/{name}.nc", "--out", out], expect)
    for name, expect in (("tb_extra_dim", 2), ("tb_inf_draw", -2), ("tb_bad_attrs", 2),
                         ("tb_obs_nan", -2)):
        flags = [] if name == "tb_bad_attrs" else ["--functions", "data_1"]
        add(f"score {name}", ["score", f"{o}/{name}.nc", *flags, "--out", f"{out}.json"],
            expect)
    return c


# ------------------------------------------------------------- generative-prior samplers
GEN_PROBLEMS = """import torch
from ppl_cvae.problems.base import Problem


class Facies(Problem):
    # cells of facies 0/1 (one run of ones), three block averages of them, Gaussian noise
    name = "g_facies"
    x_shape, y_shape = (6,), (3,)
    x_dims, y_dims, coords = ("cell",), ("datum",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = False

    def sample_prior(self, num, generator=None):
        n = self.x_shape[0]
        start = torch.randint(0, n, (num, 1), generator=generator)
        length = torch.randint(1, n // 2 + 1, (num, 1), generator=generator)
        cells = torch.arange(n)
        return ((cells >= start) & (cells < start + length)).float()

    def forward(self, x):
        n = x.shape[-1]
        block = torch.arange(n) * 3 // n
        a = (block == torch.arange(3)[:, None]).to(x.dtype)
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


def build_generative_workspace(root: Path) -> None:
    """Tiny facies runs for ``sample --method facies-mcmc|latent-nuts --generative-prior``.

    CVAEs (Bernoulli and Gaussian decoders) of a user's 6-cell facies problem, its generative
    priors (Bernoulli, Gaussian, on 5 cells), observations, and damaged or forged prior files.
    """
    (root / "gen_own.py").write_text(GEN_PROBLEMS)
    g = root / "gen"
    g.mkdir()
    facies = ["--problem", "gen_own:facies"]
    bern = ["--likelihood", "bernoulli"]
    assert main(["fit", *facies, *bern, "--out", str(g / "run"), *TINY]) == 0
    assert main(["fit", *facies, *bern, "--unconditional", "--out", str(g / "prior"),
                 *TINY]) == 0
    assert main(["fit", *facies, "--likelihood", "gaussian", "--unconditional", "--out",
                 str(g / "prior_gauss"), *TINY]) == 0
    assert main(["fit", "--problem", "gen_own:five", *bern, "--unconditional", "--out",
                 str(g / "prior_five"), *TINY]) == 0
    assert main(["fit", *facies, "--likelihood", "gaussian", "--out", str(g / "run_gauss"),
                 *TINY]) == 0
    assert main(["simulate", *facies, "--num", "2", "--out", str(g / "obs.npz")]) == 0
    y = np.load(g / "obs.npz")["y"]
    np.save(g / "obs_nan.npy", np.where([[False, True, False]], np.nan, y))
    np.save(g / "obs_wrong.npy", np.ones((1, 4)))
    (g / "garbage.pt").write_bytes(np.random.default_rng(3).bytes(2048))
    (g / "empty_prior").mkdir()
    (g / "empty_prior" / "model.pt").write_bytes(b"")
    (g / "text_prior").write_text("not a model")
    payload = torch.load(g / "prior" / "model.pt", weights_only=True)
    for name, change in (
        ("forged_os_system", lambda p: p.update(
            problem={"name": "os:system", "command": f"touch {root}/PWNED"})),
        ("forged_huge", lambda p: p["model_config"].update(x_shape=[60000],
                                                          hidden_dims=[200000, 200000])),
        ("forged_nan", lambda p: p["state_dict"].update(
            {k: torch.full_like(v, float("nan")) for k, v in p["state_dict"].items()
             if v.is_floating_point()})),
    ):
        folder = g / f"prior_{name}"
        folder.mkdir()
        forged = {**payload, "model_config": dict(payload["model_config"]),
                  "state_dict": dict(payload["state_dict"])}
        change(forged)
        torch.save(forged, folder / "model.pt")


def generative_cases(root: Path) -> list[Case]:
    """``sample --method facies-mcmc|latent-nuts --generative-prior``: priors, flags, data."""
    r, g = str(root), str(root / "gen")
    out = f"{r}/new.nc"
    c: list[Case] = []

    def add(name: str, argv: list[str], expect: int = 2) -> None:
        c.append(Case("generative", name, argv, expect=expect, check_outputs=True))

    base = ["sample", f"{g}/run", "--observation", f"{g}/obs.npz", "--num-samples", "8",
            "--chains", "2", "--warmup", "4", "--out", out]
    facies = [*base, "--method", "facies-mcmc", "--facies-moves", "2", "--temperatures", "2"]
    latent = [*base, "--method", "latent-nuts"]
    for method, argv in (("facies-mcmc", facies), ("latent-nuts", latent)):
        prior = [*argv, "--generative-prior"]
        ok = [*prior, f"{g}/prior"]
        add(f"{method}: valid request", ok, 0)
        add(f"{method}: prior given as its model.pt", [*prior, f"{g}/prior/model.pt"], 0)
        add(f"{method}: no --generative-prior", argv)
        for what, path in (("missing folder", f"{g}/nope"), ("random bytes", f"{g}/garbage.pt"),
                           ("empty model.pt", f"{g}/empty_prior"),
                           ("a text file", f"{g}/text_prior"),
                           ("a folder without model.pt", f"{r}/user_folder"),
                           ("the observation file", f"{g}/obs.npz"),
                           ("a conditional run", f"{g}/run"),
                           ("x_shape (5,) for a (6,) run", f"{g}/prior_five"),
                           ("forged huge sizes", f"{g}/prior_forged_huge"),
                           ("NaN weights", f"{g}/prior_forged_nan")):
            add(f"{method}: prior is {what}", [*prior, path])
        add(f"{method}: forged prior problem os:system",
            [*prior, f"{g}/prior_forged_os_system"], -2)
        add(f"{method}: observation with NaN", [ok[0], ok[1], ok[2], f"{g}/obs_nan.npy",
                                                *ok[4:]])
        add(f"{method}: observation of another shape", [ok[0], ok[1], ok[2],
                                                        f"{g}/obs_wrong.npy", *ok[4:]])
        add(f"{method}: problem without a noise model", [*ok, "--problem",
                                                         "gen_own:noisefree"])
        add(f"{method}: --problem of another x_shape", [*ok, "--problem", "gen_own:five"])
        for n in ("0", "1", "1e12", str(10**12)):
            add(f"{method}: --num-samples {n}", [*ok[:5], n, *ok[6:]])
        for flags in (["--chains", str(10**9)], ["--warmup", str(10**30)],
                      ["--chains", str(10**9), "--num-samples", str(4 * 10**9)]):
            add(f"{method}: {' '.join(flags)}", [*ok, *flags])
        add(f"{method}: --generative-prior ''", [*prior, ""])
        i = ok.index("--out")
        for what, target, prior_path, extra in (
            ("the prior's model.pt", f"{g}/prior/model.pt", f"{g}/prior", ["--overwrite"]),
            ("a file inside the prior's folder", f"{g}/prior/post.nc", f"{g}/prior", []),
            ("the observation", f"{g}/obs.npz", f"{g}/prior", ["--overwrite"]),
            ("the --generative-prior file", f"{g}/garbage.nc", f"{g}/garbage.nc",
             ["--overwrite"]),
        ):
            argv_out = [*ok[:i + 1], target, *ok[i + 2:]]
            argv_out[-1] = prior_path
            add(f"{method}: --out = {what}", [*argv_out, *extra])
    ok = [*facies, "--generative-prior", f"{g}/prior"]
    add("facies-mcmc: Gaussian-decoder prior", [*facies, "--generative-prior",
                                                f"{g}/prior_gauss"])
    add("latent-nuts: Gaussian-decoder prior", [*latent, "--generative-prior",
                                                f"{g}/prior_gauss"], 0)
    add("facies-mcmc: a run with a Gaussian decoder", [*facies[:1], f"{g}/run_gauss",
        *facies[2:], "--generative-prior", f"{g}/prior"])
    add("latent-nuts: a run with a Gaussian decoder", [*latent[:1], f"{g}/run_gauss",
        *latent[2:], "--generative-prior", f"{g}/prior"], 0)
    for flag in ("--facies-moves", "--temperatures"):
        i = ok.index(flag)
        for value in ("0", "-1", "1.5", str(10**30), "abc", "1"):
            expect = 0 if value == "1" or (flag, value) == ("--facies-moves", "0") else 2
            add(f"facies-mcmc: {flag} {value}", [*ok[:i + 1], value, *ok[i + 2:]], expect)
    i = ok.index("--temperatures")
    add("facies-mcmc: --temperatures 10**9 (memory)", [*ok[:i + 1], str(10**9), *ok[i + 2:]])
    return c


# ------------------------------------------------------------- problem code that fails
PROBLEM_CODE = """import math
import sys

import torch

from ppl_cvae.problems.base import Problem


class Failing(Problem):
    # y = A x + noise on 2 parameters; ``member`` fails from its call number after + 1 on,
    # for the models whose first value exceeds ``region`` (all of them by default)
    name = "pc_failing"
    x_shape, y_shape = (2,), (2,)
    x_dims, y_dims, coords = ("p",), ("d",), {}
    noise_std = misfit_std = 0.1
    has_prior_density = True

    def __init__(self, member="none", failure="none", after=0, region=-math.inf):
        self.member, self.failure, self.after, self.calls = member, failure, after, 0
        self.region = region

    def _fail(self, member, value, x):
        if member != self.member:
            return value
        self.calls += 1
        inside = x[..., 0] > self.region
        if self.calls <= self.after or not bool(inside.any()):
            return value
        mask = inside[..., None] if member == "forward" else inside
        if self.failure == "runtime":
            raise RuntimeError("boom")
        if self.failure == "value":
            raise ValueError("solver diverged")
        if self.failure == "exit":
            sys.exit(3)
        if self.failure == "nan":
            return torch.where(mask, math.nan, value)
        if self.failure == "inf":
            return torch.where(mask, math.inf, value)
        if self.failure == "shape":
            return value[..., :1] if member == "forward" else value[..., None]
        return value

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


class Facies(Failing):
    # 6 cells of facies 0/1 (one run of ones), three block averages, Gaussian noise
    name = "pc_facies"
    x_shape, y_shape = (6,), (3,)
    x_dims, y_dims = ("cell",), ("datum",)
    has_prior_density = False

    def sample_prior(self, num, generator=None):
        n = self.x_shape[0]
        start = torch.randint(0, n, (num, 1), generator=generator)
        length = torch.randint(1, n // 2 + 1, (num, 1), generator=generator)
        cells = torch.arange(n)
        return ((cells >= start) & (cells < start + length)).float()

    def forward(self, x):
        n = x.shape[-1]
        block = torch.arange(n) * 3 // n
        a = (block == torch.arange(3)[:, None]).to(x.dtype)
        return self._fail("forward", x @ (a / a.sum(-1, keepdim=True)).T, x)

    def log_prior(self, x):
        return Problem.log_prior(self, x)


def failing(**kwargs): return Failing(**kwargs)
def facies(**kwargs): return Facies(**kwargs)
"""

PROBLEM_CODE_FAILURES = {
    "runtime": "raises RuntimeError('boom')",
    "value": "raises ValueError('solver diverged')",
    "exit": "calls sys.exit(3)",
    "nan": "returns NaN",
    "inf": "returns inf",
    "shape": "returns a wrong shape",
}
"""How a member of the problem-code problems fails (``failure=`` of ``pc_own:failing``)."""

PROBLEM_CODE_SAYS = {
    "runtime": ("RuntimeError: boom",),
    "value": ("ValueError: solver diverged",),
    "exit": ("sys.exit(3)",),
    "shape": ("shape",),
}
"""Words the one error line must hold for a failure, beside the failing member's name."""


def build_problem_code_workspace(root: Path) -> None:
    """Tiny runs of a user's problems whose members can be told to fail (``pc_own``)."""
    (root / "pc_own.py").write_text(PROBLEM_CODE)
    p = root / "pc"
    p.mkdir()
    lin, fac = ["--problem", "pc_own:failing"], ["--problem", "pc_own:facies"]
    bern = ["--likelihood", "bernoulli"]
    assert main(["fit", *lin, "--out", str(p / "run"), *TINY]) == 0
    assert main(["fit", *lin, "--unconditional", "--out", str(p / "prior"), *TINY]) == 0
    assert main(["fit", *fac, *bern, "--out", str(p / "frun"), *TINY]) == 0
    assert main(["fit", *fac, *bern, "--unconditional", "--out", str(p / "fprior"),
                 *TINY]) == 0
    assert main(["simulate", *lin, "--num", "1", "--out", str(p / "obs.npz")]) == 0
    assert main(["simulate", *lin, "--num", "12", "--out", str(p / "pairs.npz")]) == 0
    assert main(["simulate", *fac, "--num", "1", "--out", str(p / "fobs.npz")]) == 0


def problem_code_cases(root: Path) -> list[Case]:
    """Each ``sample --method`` and ``evaluate``: a member raising, or NaN, inf, a wrong shape.

    The member fails on every call (``always``), from a later call on (``later``: inside
    the optimiser, the chain or the writing of the file, past the checks at the start), or
    for the models whose first value exceeds a threshold (``for some models``, wherever they
    come). A raise or a wrong shape must end as one error line naming the member (and the
    original message; exit 2, nothing at ``--out``); NaN or inf may also be accepted with
    finite, strict outputs.
    """
    r, p = str(root), str(root / "pc")
    out = f"{r}/new.nc"
    c: list[Case] = []
    mcmc = ["--chains", "2", "--warmup", "6"]
    methods = {
        "amortized": (f"{p}/run", f"{p}/obs.npz", "failing", ["--method", "amortized"],
                      {"forward": None, "log_prior": None}),
        "refine": (f"{p}/run", f"{p}/obs.npz", "failing", ["--method", "refine",
                   "--refine-steps", "5"], {"forward": 3}),
        "importance": (f"{p}/run", f"{p}/obs.npz", "failing", ["--method", "importance"],
                       {"forward": 1, "log_prior": 1, "log_likelihood": None}),
        "nuts": (f"{p}/run", f"{p}/obs.npz", "failing", ["--method", "nuts", *mcmc],
                 {"forward": 40, "log_prior": 40, "log_likelihood": 40}),
        "latent-nuts": (f"{p}/run", f"{p}/obs.npz", "failing", ["--method", "latent-nuts",
                        *mcmc, "--generative-prior", f"{p}/prior"],
                        {"forward": 40, "log_likelihood": 40}),
        "facies-mcmc": (f"{p}/frun", f"{p}/fobs.npz", "facies", ["--method", "facies-mcmc",
                        *mcmc, "--facies-moves", "2", "--temperatures", "2",
                        "--generative-prior", f"{p}/fprior"],
                        {"forward": 2, "log_likelihood": None}),
    }
    commands = {
        method: (["sample", run, "--observation", obs, "--num-samples", "8", "--out", out,
                  *flags, "--problem", f"pc_own:{factory}"], factory, later)
        for method, (run, obs, factory, flags, later) in methods.items()
    }
    # evaluate: the misfit of the coverage metrics (2 calls), of SBC (2) and of the SBC
    # figure, inside the writing of the output folder (calls 5 and 6)
    commands["evaluate"] = (["evaluate", f"{p}/run", "--data", f"{p}/pairs.npz",
                             "--num-samples", "20", "--out", f"{r}/new", "--problem",
                             "pc_own:failing"], "failing", {"forward": 4})
    # the number of calls of each member that pass before it fails ("later"; None: the
    # method calls the member once, so that "later" is never)
    for method, (base, factory, later) in commands.items():
        c.append(Case("problem-code", f"{method}: no failure", base, expect=0,
                      check_outputs=True))
        for member in later:
            for failure, what in PROBLEM_CODE_FAILURES.items():
                if failure == "exit" and method not in ("nuts", "latent-nuts", "evaluate"):
                    continue  # sys.exit of problem code has its own cases (user problems)
                region = "region=" + ("0.5" if factory == "facies" else "0.0")
                after = f"after={later[member]}"
                for when, args in (("always", ["after=0"]), ("later", [after]),
                                   ("for some models", [region]),
                                   ("later, for some models", [after, region])):
                    if "after=None" in args or (when == "always" and failure in ("nan", "inf")):
                        continue  # NaN everywhere: the checks at the start (outputs, user)
                    argv = [*base, "--problem-arg", f"member={member}", "--problem-arg",
                            f"failure={failure}"]
                    for arg in args:
                        argv += ["--problem-arg", arg]
                    says = (member, *PROBLEM_CODE_SAYS.get(failure, ()))
                    c.append(Case("problem-code", f"{method}: {member} {what} ({when})", argv,
                                  expect=-2 if failure in ("nan", "inf") else 2,
                                  check_outputs=True, says=says))
    return c


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def check_outputs(root: Path) -> list[str]:
    """Problems of the outputs ``new``, ``new.nc`` and ``new.json`` under ``root``."""
    import arviz as az

    problems = []
    files = [p for name in ("new", "new.nc", "new.json") for p in
             ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*")))]
    for path in files:
        if not path.is_file():
            continue
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(), parse_constant=_reject_constant)
            except ValueError as err:
                problems.append(f"{path.name} is not strict JSON: {err}")
        elif path.suffix == ".csv":
            cells = {cell.strip().lower() for line in path.read_text().splitlines()
                     for cell in line.split(",")}
            bad = cells & {"nan", "inf", "-inf", "infinity"}
            if bad:
                problems.append(f"{path.name} holds {sorted(bad)}")
        elif path.suffix == ".nc":
            idata = az.from_netcdf(path)
            listed = json.loads(idata.attrs.get("not_finite", "{}"))
            for group in idata.groups():
                for name, var in idata[group].data_vars.items():
                    if (var.dtype.kind == "f" and not np.isfinite(var.values).all()
                            and f"{group}.{name}" not in listed):
                        problems.append(f"{path.name}: {group}.{name} not finite, not listed")
    return problems


def run_case(case: Case, root: Path, verbose: bool) -> tuple[bool, str]:
    with case.around() if case.around is not None else contextlib.nullcontext():
        return _run_case(case, root, verbose)


def _run_case(case: Case, root: Path, verbose: bool) -> tuple[bool, str]:
    before = _snapshot(root)
    if case.subprocess_signal:
        proc = subprocess.Popen([sys.executable, "-m", "ppl_cvae.cli", *case.argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        code = proc.returncode
    else:
        buffer = io.StringIO()
        signal.signal(signal.SIGALRM, _hung)
        signal.alarm(CASE_TIMEOUT)
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("always")  # each case sees every warning it triggers
            try:
                code = main(case.argv)
            except SystemExit as exc:  # argparse, or a user's sys.exit that got through
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Hung:
                code = -3
                print(f"HUNG: no answer within {CASE_TIMEOUT} s", file=sys.stderr)
            except BaseException:  # noqa: BLE001 - a traceback is what we look for
                traceback.print_exc()
                code = -1
            finally:
                signal.alarm(0)
        err = buffer.getvalue()
    problems = []
    if case.expect == -2:  # either outcome is correct; the rules below apply to the one seen
        case = Case(case.category, case.name, case.argv, expect=code if code in (0, 2) else 2,
                    says=case.says)
    torch.set_num_threads(THREADS)  # a case's --threads must not carry over to the next
    if code != case.expect:
        problems.append(f"exit {code}, expected {case.expect}")
    if "Traceback" in err:
        problems.append("traceback")
    lines = [line for line in err.splitlines() if line.strip()]
    if case.expect == 2 and not any("error:" in line for line in lines[-1:]):
        problems.append("no error line")
    if case.expect != 0 and len(lines) > 1:
        problems.append(f"{len(lines)} lines on stderr")
    missing = [w for w in case.says if code == 2 and lines and w not in lines[-1]]
    if missing:
        problems.append(f"the error line lacks {missing}")
    written = [name for name in ("new", "new.nc", "new.npz", "new.json")
               if code != 0 and (root / name).exists()]
    if written:
        problems.append(f"refused, yet wrote {written}")
    if case.no_warnings and "Warning" in err:
        problems.append("a warning on stderr: " + next(
            line for line in lines if "Warning" in line)[:100])
    after = _snapshot(root)
    changed = [k for k, v in before.items() if after.get(k) != v
               and not (case.may_change and k.startswith(case.may_change + os.sep))]
    if changed:
        problems.append(f"changed or lost: {changed[:3]}")
    if case.check_outputs and code == 0:
        problems.extend(check_outputs(root))
    if (root / "PWNED").exists():
        problems.append("code from a file ran")
    if not (root / "victim" / "keep.txt").exists():
        problems.append("victim folder deleted")
    hidden = [p for p in root.rglob(".*")
              if p.name.startswith((".new", ".interrupted", ".killed"))]
    if hidden:
        problems.append(f"temporaries left: {hidden[:2]}")
    for leftover in ("new", "new.nc", "new.npz", "new.json", "interrupted", "killed"):
        target = root / leftover
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    message = "; ".join(problems)
    if verbose:
        status = "ok  " if not problems else "FAIL"
        print(f"{status} [{case.category}] {case.name}: {lines[-1][:150] if lines else ''}"
              + (f"  <-- {message}" if problems else ""))
    return not problems, message


def main_cli() -> int:
    global THREADS, CASE_TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--only", help="run only the categories whose name contains one of "
                        "these comma-separated words")
    parser.add_argument("--case-timeout", type=int, default=CASE_TIMEOUT,
                        help="seconds before a case counts as a hang")
    args = parser.parse_args()
    THREADS, CASE_TIMEOUT = args.threads, args.case_timeout
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sys.path.insert(0, str(root))
        build_workspace(root)
        # categories with a workspace of their own (beside the first) run alone without the
        # other workspaces: --only outputs, --only generative or both
        own = {"outputs": (build_output_workspace, output_cases),
               "generative": (build_generative_workspace, generative_cases),
               "problem-code": (build_problem_code_workspace, problem_code_cases)}
        words = set(args.only.split(",")) if args.only else set()
        if words and words <= set(own):
            for word in sorted(words):
                own[word][0](root)
            everything = [case for word in sorted(words) for case in own[word][1](root)]
        else:
            build_new_feature_workspace(root)
            build_audit_workspace(root)
            build_user_workspace(root)
            build_output_workspace(root)
            build_generative_workspace(root)
            build_problem_code_workspace(root)
            everything = (cases(root) + new_feature_cases(root) + audit_cases(root)
                          + user_cases(root) + output_cases(root) + generative_cases(root)
                          + problem_code_cases(root))
        os.symlink(root, root / "link_to_root")
        table: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        failures = []
        for case in everything:
            if args.only and not any(w in case.category for w in args.only.split(",")):
                continue
            ok, why = run_case(case, root, args.verbose)
            table[case.category][0 if ok else 1] += 1
            if not ok:
                failures.append(f"[{case.category}] {case.name}: {why}")
    print_category_table(table, failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_cli())
