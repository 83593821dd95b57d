"""Property-based fuzzing of the CLI argument layer: a result or one clear error, inputs intact.

Hypothesis draws command lines from the real flags of each subcommand with hostile values
(negative, huge, NaN, inf, overflowing, non-numeric, empty, paths to the wrong kind of file).
Every case must end with exit status 0 or 2, print no traceback, and leave every file that
existed before unchanged. Sizes that would make a case slow are pinned by flags appended last
(argparse keeps the last occurrence), so the budget stays a few seconds per example at most.
"""

import contextlib
import io
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppl_cvae.cli import main
from tests.conftest import digest, make_cli_workspace

TINY = ["--epochs", "1", "--num-train", "64", "--batch-size", "32", "--hidden-dims", "4",
        "--latent-dim", "2", "--quiet"]
VALUES = ["0", "-1", "1", "3", "0.5", "nan", "inf", "-inf", "1e400", "1e3", "abc", "",
          "2.5", str(2**32), str(10**15), "\u0663", "1,2", "-0"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_cli_workspace(tmp_path_factory.mktemp("fuzzcli"))


def _paths(root: Path) -> list[str]:
    names = ["run", "run/model.pt", "obs.npz", "pairs.npz", "post.nc", "afile", "missing.npz",
             ".", "out", "out.nc", "out.npz", "out.json", "afile/x", "run/out.nc"]
    return [str(root / n) for n in names]


FLAGS = {
    "sample": ["--num-samples", "--seed", "--max-misfit", "--oversample", "--refine-steps",
               "--refine-lr", "--decoder-noise", "--problem", "--observation"],
    "evaluate": ["--num-samples", "--max-observations", "--seed", "--problem", "--data"],
    "diagnose": ["--max-observations"],
    "simulate": ["--num", "--seed", "--problem", "--problem-arg"],
    "score": ["--functions"],
    "fit": ["--learning-rate", "--lr-decay", "--val-fraction", "--patience", "--seed",
            "--kl-warmup-epochs", "--physics-weight", "--fixed-scale", "--likelihood",
            "--prior", "--num-particles", "--activation", "--y-embedding", "--data"],
}


def _valid(command: str, root: Path) -> list[str]:
    """A command line that succeeds; hostile flags are appended after it (last one wins)."""
    return {
        "sample": ["sample", f"{root}/run", "--observation", f"{root}/obs.npz", "--num-samples",
                   "3"],
        "evaluate": ["evaluate", f"{root}/run", "--data", f"{root}/pairs.npz", "--num-samples",
                     "3", "--max-observations", "2"],
        "diagnose": ["diagnose", f"{root}/post.nc", "--max-observations", "1"],
        "simulate": ["simulate", "--problem", "linear_gaussian", "--num", "2"],
        "score": ["score", f"{root}/post.nc"],
        "fit": ["fit", "--problem", "linear_gaussian", *TINY],
    }[command]


OUTS = {"sample": "out.nc", "evaluate": "out", "diagnose": "out", "simulate": "out.npz",
        "score": "out.json", "fit": "out"}


@st.composite
def command_lines(draw, root: Path) -> list[str]:
    command = draw(st.sampled_from(sorted(FLAGS)))
    paths = _paths(root)
    value = st.one_of(st.sampled_from(VALUES), st.sampled_from(paths),
                      st.sampled_from(["linear_gaussian", "two_birds", "nope", "os:system",
                                       "data_1", "mean", "x=1", "gaussian", "learned"]))
    argv = _valid(command, root)
    out = draw(st.sampled_from([f"{root}/{OUTS[command]}", *paths[:6], *paths]))
    argv += ["--out", out]
    for flag in draw(st.lists(st.sampled_from(FLAGS[command]), max_size=2)):
        argv += [flag, draw(value)]
    if draw(st.integers(0, 2)):
        argv.append("--overwrite")
    if command == "fit":
        argv += TINY
    if command == "simulate" and "--num" in argv[4:]:
        argv += ["--num", draw(st.sampled_from(["2", "0", "-3", str(10**15), "x"]))]
    if command in ("sample", "evaluate") and argv.count("--num-samples") > 1:
        argv += ["--num-samples", draw(st.sampled_from(["2", "0", str(10**15), "nan"]))]
    return argv


def _last(argv: list[str], flag: str) -> str | None:
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return values[-1] if values else None


@pytest.mark.slow
def test_cli_fuzz_ends_in_a_result_or_one_error(ws):
    codes = []

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(command_lines(ws))
    def check(argv):
        before = digest(ws)
        err = io.StringIO()
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # statistical warnings (few draws) are not errors
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        codes.append(code)
        text = err.getvalue()
        assert code in (0, 2), (argv, code, text)
        assert "Traceback" not in text, (argv, text)
        if code == 2:
            assert len(text.strip().splitlines()) == 1 and "error:" in text, (argv, text)
        # an existing file may change only as the --out the user asked to overwrite, and
        # never when it is one of the command's inputs
        out = _last(argv, "--out")
        inputs = {argv[1]} | {v for f in ("--observation", "--data") if (v := _last(argv, f))}
        allowed = set()
        if code == 0 and "--overwrite" in argv and out not in inputs:
            allowed = {str(p) for p in [Path(out), *Path(out).rglob("*")]}
        now = digest(ws)
        changed = [k for k, v in before.items() if now.get(k) != v and k not in allowed]
        assert not changed, (argv, changed)
        for name in ("run", "obs.npz", "pairs.npz", "post.nc"):
            assert (ws / name).exists(), (argv, name)
        for name in OUTS.values():  # fresh default outputs for the next example
            target = ws / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    check()
    # the budget reaches both sides: commands that succeed and commands refused
    assert codes.count(0) >= 15 and codes.count(2) >= 30, (codes.count(0), codes.count(2))
