"""Every script in examples/ runs with --smoke; unlisted scripts fail the suite.

The scripts run inside the test process (``runpy`` as ``__main__``, their folder first on
``sys.path`` as ``python examples/NAME.py`` puts it), which saves the 3 s of importing torch,
Pyro, ArviZ and matplotlib in a fresh interpreter per script. One script still runs as its
own process, so the ``python examples/NAME.py`` launch itself stays tested.
"""

import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
# each script and a file its --smoke run must write
EXAMPLES = {
    "crosshole.py": "report/posterior_obs0.png",
    "digits_cvae.py": "cvae/frames/samples.gif",
    "digits_vae.py": "frames/samples.gif",
    "gravity.py": "metrics.json",
    "image_vae.py": "frames/samples.gif",
    "linear_gaussian.py": "posterior.nc",
    "mt1d.py": "report/predictive_obs0.png",
    "own_problem.py": "ppc.png",
    "two_birds.py": "posterior.nc",
}
# run as `python examples/NAME.py` in a child process (the launch, not only the code)
IN_A_CHILD_PROCESS = {"linear_gaussian.py"}
# the examples' helper modules, imported by name from EXAMPLES_DIR
HELPERS = ("_common", "_survey")


def test_every_example_is_listed():
    # _survey.py is the survey examples' shared helper, not a script
    scripts = [p.name for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_")]
    assert sorted(scripts) == sorted(EXAMPLES)


def _run_in_this_process(name: str, out_dir: Path, monkeypatch) -> None:
    """Run ``examples/NAME --smoke --out-dir OUT_DIR`` as ``__main__`` in this interpreter."""
    argv = [str(EXAMPLES_DIR / name), "--smoke", "--out-dir", str(out_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    for helper in HELPERS:  # a fresh import from EXAMPLES_DIR (not another folder's _common)
        monkeypatch.delitem(sys.modules, helper, raising=False)
    try:
        # as in a child process: warnings are printed, not raised (the suite raises them)
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:  # argparse errors, an explicit exit
        assert stop.code in (None, 0), f"{name} exited with {stop.code!r}"
    finally:
        for helper in HELPERS:
            sys.modules.pop(helper, None)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # restores the thread count a script may set
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_smoke(name, tmp_path, monkeypatch):
    if name in IN_A_CHILD_PROCESS:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLES_DIR / name), "--smoke", "--out-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        _run_in_this_process(name, tmp_path, monkeypatch)
    assert (tmp_path / EXAMPLES[name]).is_file()
