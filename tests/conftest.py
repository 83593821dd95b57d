"""Shared fixtures: seeded RNGs (override with PPL_CVAE_TEST_SEED), Pyro validation on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

SEED = int(os.environ.get("PPL_CVAE_TEST_SEED", "0"))
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
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/two_birds is not present beside the repository")
    return SHARED_DATA
