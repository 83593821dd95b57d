"""Data-parallel training under torchrun (gloo on the CPU): the steps of one process, clean failure.

The exactness test uses a model without a latent (``--likelihood flow --latent-dim 0``, neural
posterior estimation): its loss has no Monte Carlo noise, so two ranks that each take half of
every minibatch and all-reduce their gradients must take the very steps of one process with
the same global batch. The only difference left is the order of floating-point sums (each
rank sums its half, then the halves are added): float32 rounding of about 1e-7 per operation,
grown over the steps of a few epochs, measured at 2e-6 in the weights. The tolerances below
(1e-4 on weights, 1e-5 relative on losses) sit well above that and far below what a wrong
shard, a missing all-reduce or a gradient off by the factor of 2 would give (the losses then
differ in the second decimal after one epoch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppl_cvae.errors import ConfigError
from ppl_cvae.train.distributed import shard_rows

REPO = Path(__file__).resolve().parents[1]
TINY_NPE = [
    "fit", "--problem", "linear_gaussian", "--epochs", "2", "--num-train", "600",
    "--batch-size", "100", "--hidden-dims", "16", "--latent-dim", "0", "--likelihood", "flow",
    "--quiet",
]  # fmt: skip


def _env(*extra_paths: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, extra_paths)])
    return env


def _torchrun(args: list[str], cwd: Path, *paths: Path, timeout: float = 300):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "ppl_cvae.cli", *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=_env(*paths), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _fit_one_and_two_ranks(args: list[str], cwd: Path) -> None:
    """Run ``ppl-cvae ARGS`` in one process (``--out one``), then on 2 torchrun ranks (``two``).

    The one-process run is this process (``main``; the tests use the ``one_thread`` fixture,
    which restores the thread count the fit sets): no interpreter start for the reference.
    """
    from ppl_cvae.cli import main

    assert main([*args, "--out", str(cwd / "one")]) == 0
    two = _torchrun([*args, "--out", "two"], cwd)
    assert two.returncode == 0, two.stderr[-2000:]


@pytest.mark.parametrize("num", [0, 1, 2, 5, 100, 101])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_row_once(num, world):
    rows = [list(range(num))[shard_rows(num, r, world)] for r in range(world)]
    assert sum(rows, []) == list(range(num))
    sizes = [len(r) for r in rows]
    assert max(sizes) - min(sizes) <= 1


def test_a_bad_rank_is_refused():
    with pytest.raises(ConfigError, match="rank 2 of world size 2"):
        shard_rows(4, 2, 2)


@pytest.mark.usefixtures("one_thread")
def test_two_gloo_processes_take_the_steps_of_one(tmp_path):
    # pairs in memory: under torchrun a resimulated run (linear_gaussian's default) divides the
    # simulation over the ranks and so trains on other pairs than one process (tested below)
    args = [*TINY_NPE, "--no-resimulate"]
    _fit_one_and_two_ranks(args, tmp_path)
    rows = [
        [line.split(",") for line in (tmp_path / run / "metrics.csv").read_text().splitlines()]
        for run in ("one", "two")
    ]
    header = rows[0][0]
    for a, b in zip(rows[0][1:], rows[1][1:], strict=True):
        for key in ("train_loss", "val_loss"):
            i = header.index(key)
            assert float(b[i]) == pytest.approx(float(a[i]), rel=1e-5), key
    weights = [
        torch.load(tmp_path / run / "model.pt", weights_only=True)["state_dict"]
        for run in ("one", "two")
    ]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-4, rtol=0, msg=name)
    docs = [json.loads((tmp_path / run / "config.json").read_text()) for run in ("one", "two")]
    assert "distributed" not in docs[0]
    assert docs[1]["distributed"] == {"world_size": 2, "backend": "gloo"}
    # only rank 0 wrote: one run folder, no leftovers of the other rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


DYING_PROBLEM = '''
import os
import time

import torch


class Dying:
    """y = x + noise; on rank 1 the second epoch's simulation raises (a crash mid-run)."""

    name, x_shape, y_shape = "dying", (2,), (2,)
    x_dims, y_dims, coords = ("parameter",), ("datum",), {}
    noise_std = misfit_std = 0.1

    def __init__(self):
        self.calls = 0

    def sample_prior(self, num, generator=None):
        return torch.randn(num, 2, generator=generator)

    def forward(self, x):
        return x

    def simulate(self, num, generator=None):
        self.calls += 1
        # calls 1-2: fit's reproducibility probe, 3: the standardisers' pairs, 4-: epochs
        if os.environ.get("RANK") == "1" and self.calls >= 5:
            # crash once rank 0 has saved epoch 1's state: without the wait, a loaded machine
            # let torchrun stop rank 0 before that save (a race of the test, not of the fit)
            deadline = time.monotonic() + 60
            while not os.path.isfile("run/train_state.pt") and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError("simulator crashed on rank 1")
        x = self.sample_prior(num, generator)
        return x, x + 0.1 * torch.randn(num, 2, generator=generator)

    def spec(self):
        raise NotImplementedError("a test problem")


def make():
    return Dying()
'''


def test_a_rank_that_dies_fails_the_run_without_hanging_or_finishing(tmp_path):
    (tmp_path / "dying_problem.py").write_text(DYING_PROBLEM)
    args = ["fit", "--problem", "dying_problem:make", "--resimulate", "--epochs", "50",
            "--num-train", "200", "--hidden-dims", "8", "--latent-dim", "2", "--quiet",
            "--out", "run"]  # fmt: skip
    # The failing rank used to hang in one of two runs: freeing its DDP wrapper (held by the
    # traceback) ran gloo's process group destructor, which joins gloo's threads with the GIL
    # held while one of them waited for the GIL (pytorch/pytorch#56297). Such a hang now
    # fails here at the timeout; a run takes 8-16 s.
    start = time.perf_counter()
    done = _torchrun(args, tmp_path, tmp_path, timeout=150)
    assert done.returncode != 0
    assert "simulator crashed on rank 1" in done.stderr
    assert "broadcast_buffers" not in done.stderr  # torch's renaming notice is not the user's
    # the surviving rank, if its collective failed before torchrun stopped it, says so in one
    # line instead of a traceback through our code
    assert "ppl_cvae/cli/__init__.py" not in done.stderr.replace("\\", "/")
    assert time.perf_counter() - start < 120  # torchrun stopped rank 0: no wait for a timeout
    # no finished run; what is there is rank 0's last training state, for fit --resume
    run = tmp_path / "run"
    assert not (run / "model.pt").exists() and not (run / "config.json").exists()
    assert (run / "train_state.pt").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name != "dying_problem.py"] == ["run"]


@pytest.mark.usefixtures("one_thread")
def test_ranks_stream_their_own_share_of_each_minibatch(tmp_path):
    """Under torchrun ``--stream`` gives every rank its own seeds and a share of the minibatch.

    The two-rank run trains on other simulations than the one-process run, so their losses
    agree in distribution only: measured over seeds 0-2 with these settings, one process ends
    at validation losses 1.92, 2.03 and 2.05 nats (sd 0.07); the tolerance is 4 sd.
    """
    args = [*TINY_NPE, "--stream", "--num-train", "1200", "--epochs", "3"]
    _fit_one_and_two_ranks(args, tmp_path)
    payload = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    state = payload["extra"]["data_source"]["stream"]["state"]
    assert state["world_size"] == 2 and state["rank"] == 0 and state["batch_size"] == 50
    losses = [
        float((tmp_path / run / "metrics.csv").read_text().splitlines()[-1].split(",")[2])
        for run in ("one", "two")
    ]
    assert abs(losses[1] - losses[0]) <= 4 * 0.07


def test_a_callers_nccl_group_with_a_cpu_device_is_refused(monkeypatch):
    from ppl_cvae.train import distributed

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="NCCL, which reduces CUDA tensors only"):
        distributed.setup_distributed(torch.device("cpu"))
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ConfigError, match="LOCAL_RANK='x' is not an integer"):
        distributed.setup_distributed(torch.device("cpu"))


SHARDED_SCRIPT = '''
import sys
import torch
from ppl_cvae.problems.base import make_problem
from ppl_cvae.train.distributed import setup_distributed, shutdown
from ppl_cvae.train.sources import ShardedResimulatedBatches

ddp = setup_distributed(torch.device("cpu"))
problem = make_problem("linear_gaussian")
calls = []


def simulate(num, generator):
    calls.append(num)
    return problem.simulate(num, generator)


gen = torch.Generator().manual_seed(4)
source = ShardedResimulatedBatches(simulate, 101, 20, gen, True, seed=4, ddp=ddp)
epochs = [list(source.epoch_batches(e)) for e in (1, 2)]
torch.save({"calls": calls, "epochs": epochs}, f"{sys.argv[1]}/rank{ddp.rank}.pt")
shutdown()
'''


def test_resimulation_under_torchrun_is_divided_over_the_ranks(tmp_path):
    """Each rank simulates its share of the epoch with its own seeds; all get the whole epoch."""
    from ppl_cvae.data.streaming import batch_seed
    from ppl_cvae.problems.base import make_problem

    (tmp_path / "sharded.py").write_text(SHARDED_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "sharded.py", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # 101 pairs per epoch: rank 0 simulates 51, rank 1 simulates 50 (not 101 each)
    assert ranks[0]["calls"] == [51, 51] and ranks[1]["calls"] == [50, 50]
    problem = make_problem("linear_gaussian")
    for epoch, (a, b) in enumerate(zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True), 1):
        # the ranks hold the same shuffled epoch (DDP then takes a shard of each minibatch)
        assert [len(x) for x, _ in a] == [20] * 5 + [1]
        assert all(torch.equal(xa, xb) and torch.equal(ya, yb)
                   for (xa, ya), (xb, yb) in zip(a, b, strict=True))
        # ... made of the two shares, each simulated with the seed of (epoch, rank)
        seeds = [batch_seed(4, 2 * (epoch - 1) + r) for r in (0, 1)]
        shares = [problem.simulate(n, torch.Generator().manual_seed(s))
                  for n, s in zip((51, 50), seeds, strict=True)]
        expected = torch.cat([s[0] for s in shares])
        got = torch.cat([x for x, _ in a])
        assert torch.equal(got.sort(0).values, expected.sort(0).values)
        assert not torch.equal(got, expected)  # shuffled
    first = torch.cat([x for x, _ in ranks[0]["epochs"][0]])
    second = torch.cat([x for x, _ in ranks[0]["epochs"][1]])
    assert not torch.isin(first.flatten(), second.flatten()).any()  # fresh pairs every epoch
