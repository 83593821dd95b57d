"""Shared fixtures: seeded RNGs (override with PPL_CVAE_TEST_SEED), Pyro validation on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

SEED = int(os.environ.get("PPL_CVAE_TEST_SEED", "0"))

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `make test` runs pytest-xdist workers
    # share the cores instead of each worker starting one torch thread per core
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cpus or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "two_birds"


@pytest.fixture(autouse=True)
def _seed_and_validate():
    pyro.set_rng_seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield


@pytest.fixture
def seed() -> int:
    return SEED


@pytest.fixture
def one_thread():
    """Run the test on one torch CPU thread, restoring the thread count afterwards.

    One thread makes reductions run in a fixed order (bit-identical reruns on CPU); the
    restore also undoes what a CLI call (``--threads N``) inside the test set.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/two_birds is not present beside the repository")
    return SHARED_DATA


def assert_spec_round_trip(problem, num: int = 3, seed: int = 0):
    """Rebuild ``problem`` from its JSON-encoded ``spec()``; assert that nothing was lost.

    The rebuilt problem must be of the same class with the same spec, draw the same ``num``
    prior samples from a generator seeded ``seed``, and map them to the same data. Returns
    it, for checks of one problem's own parts.
    """
    from ppl_cvae.problems import make_problem

    spec = json.loads(json.dumps(problem.spec()))
    rebuilt = make_problem(spec.pop("name"), **spec)
    assert type(rebuilt) is type(problem) and rebuilt.spec() == problem.spec()
    x = problem.sample_prior(num, torch.Generator().manual_seed(seed))
    assert torch.equal(rebuilt.sample_prior(num, torch.Generator().manual_seed(seed)), x)
    assert torch.equal(rebuilt.forward(x), problem.forward(x))
    return rebuilt


# Flags of a fit that takes about a second: one epoch of a tiny network.
TINY_FIT = ["--epochs", "1", "--num-train", "128", "--batch-size", "64", "--hidden-dims", "8",
            "--latent-dim", "2", "--quiet"]


def make_cli_workspace(root: Path) -> Path:
    """Fill ``root`` with CLI inputs: a linear-Gaussian run, observations, pairs, a posterior.

    ``run/`` (fit), ``obs.npz`` (3 observations), ``pairs.npz`` (40 pairs), ``post.nc``
    (10 draws each) and ``afile`` (an ordinary file that is not data).
    """
    from ppl_cvae.cli import main

    lg = ["--problem", "linear_gaussian"]
    assert main(["fit", *lg, "--out", str(root / "run"), *TINY_FIT]) == 0
    assert main(["simulate", *lg, "--num", "3", "--out", str(root / "obs.npz")]) == 0
    assert main(["simulate", *lg, "--num", "40", "--out", str(root / "pairs.npz")]) == 0
    assert main(["sample", str(root / "run"), "--observation", str(root / "obs.npz"),
                 "--num-samples", "10", "--out", str(root / "post.nc")]) == 0
    (root / "afile").write_text("keep me")
    return root


def digest(root: Path) -> dict[str, str]:
    """Return ``{path: sha256}`` of every file under ``root`` (to prove nothing changed)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
        if p.is_file()
    }


SCALED_PROBLEM_SOURCE = '''
class ScaledProblem:
    """y = scale * x + noise, x ~ N(0, I); its spec() cannot name it."""

    name = "scaled"
    x_dims = ("parameter",)
    y_dims = ("datum",)
    coords = {}

    def __init__(self, dim=2, scale=2.0, noise_std=0.1):
        self.x_shape = (dim,)
        self.y_shape = (dim,)
        self.scale = float(scale)
        self.noise_std = float(noise_std)
        self.misfit_std = float(noise_std)

    def sample_prior(self, num, generator=None):
        return torch.randn(num, *self.x_shape, generator=generator)

    def forward(self, x):
        return self.scale * x

    def simulate(self, num, generator=None):
        x = self.sample_prior(num, generator)
        noise = self.noise_std * torch.randn(num, *self.y_shape, generator=generator)
        return x, self.forward(x) + noise

    def spec(self):
        raise NotImplementedError("a user problem")
'''
"""Source of a duck-typed user problem (no Problem base class, no optional members), pasted
into the user modules that tests write to disk (``test_user_problem``, ``test_problem_base``)."""
