"""Every script in examples/ runs with --smoke; unlisted scripts fail the suite."""

import subprocess
import sys
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


def test_every_example_is_listed():
    # _survey.py is the survey examples' shared helper, not a script
    scripts = [p.name for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_")]
    assert sorted(scripts) == sorted(EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_smoke(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / name), "--smoke", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / EXAMPLES[name]).is_file()
