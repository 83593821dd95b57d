"""SimulationStream: reproducible, never repeating, the same for any number of workers."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from ppl_cvae import ConfigError, ModelConfig, TrainConfig, make_problem
from ppl_cvae.data.streaming import SimulationStream, batch_seed
from ppl_cvae.train.fit import build_cvae, fit
from ppl_cvae.train.sources import StreamBatches


@pytest.fixture(scope="module")
def problem():
    return make_problem("linear_gaussian")


def _take(iterable, n):
    return list(itertools.islice(iterable, n))


def _stack(items):
    return torch.cat([x for x, _, _ in items]), torch.cat([y for _, y, _ in items])


def test_same_seed_same_stream_other_seed_other_stream(problem):
    a = _take(SimulationStream(problem.simulate, 16, seed=5), 4)
    b = _take(SimulationStream(problem.simulate, 16, seed=5), 4)
    c = _take(SimulationStream(problem.simulate, 16, seed=6), 4)
    assert [i for _, _, i in a] == [0, 1, 2, 3]
    for (xa, ya, _), (xb, yb, _) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # continuous draws: a shared value between seeds would mean a shared generator state
    xa, xc = _stack(a)[0], _stack(c)[0]
    assert not torch.isin(xa.flatten(), xc.flatten()).any()
    # minibatch i is simulate(batch_size, generator seeded with batch_seed(seed, i))
    x0, y0 = problem.simulate(16, torch.Generator().manual_seed(batch_seed(5, 0)))
    assert torch.equal(a[0][0], x0) and torch.equal(a[0][1], y0)


def test_seeds_never_repeat_across_ranks_and_indices():
    # global index g = i * world_size + rank; the seed is a bijection of g below 2**32
    seeds = {
        SimulationStream(lambda n, g: (torch.zeros(n), torch.zeros(n)), 1, seed=3, rank=r,
                         world_size=4).seed_of(i)
        for r in range(4)
        for i in range(5000)
    }
    assert len(seeds) == 4 * 5000
    # negative control: two ranks of one world built with world_size=1 would share seeds
    rank0 = SimulationStream(lambda n, g: (n, g), 1, seed=3).seed_of(7)
    assert rank0 == SimulationStream(lambda n, g: (n, g), 1, seed=3, rank=0).seed_of(7)


def test_ranks_draw_disjoint_pairs(problem):
    streams = [SimulationStream(problem.simulate, 32, seed=0, rank=r, world_size=2)
               for r in range(2)]
    x0, x1 = (_stack(_take(s, 5))[0] for s in streams)
    assert not torch.isin(x0.flatten(), x1.flatten()).any()
    assert torch.unique(x0.flatten()).numel() == x0.numel()  # no pair repeats within a rank


def test_two_dataloader_workers_give_the_single_process_stream(problem):
    stream = SimulationStream(problem.simulate, 8, seed=11)
    expected = _take(SimulationStream(problem.simulate, 8, seed=11), 6)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    got = _take(iter(loader), 6)
    assert [int(i) for _, _, i in got] == list(range(6))
    for (xe, ye, _), (xg, yg, _) in zip(expected, got, strict=True):
        assert torch.equal(xe, xg) and torch.equal(ye, yg)
    # worker 0 drew the even minibatches, worker 1 the odd ones: they differ
    assert not torch.isin(got[0][0].flatten(), got[1][0].flatten()).any()


def test_state_dict_resumes_after_the_last_consumed_minibatch(problem):
    stream = SimulationStream(problem.simulate, 4, seed=2)
    first = _take(stream, 3)
    state = stream.state_dict()
    assert state["position"] == 3
    resumed = SimulationStream(problem.simulate, 4, seed=2)
    resumed.load_state_dict(state)
    x3, _, i3 = next(iter(resumed))
    reference = _take(SimulationStream(problem.simulate, 4, seed=2), 4)[3]
    assert i3 == 3 and torch.equal(x3, reference[0])
    assert not torch.equal(x3, first[2][0])
    with pytest.raises(ConfigError, match="batch_size=4 but this stream has batch_size=8"):
        SimulationStream(problem.simulate, 8, seed=2).load_state_dict(state)
    with pytest.raises(ConfigError, match="position"):
        resumed.load_state_dict({**state, "position": -1})


def test_stream_batches_track_the_position_through_workers(problem):
    stream = SimulationStream(problem.simulate, 8, seed=4)
    source = StreamBatches(stream, steps_per_epoch=3, num_workers=2)
    try:
        epoch1 = list(source.epoch_batches(1))
        assert stream.position == 3
        epoch2 = list(source.epoch_batches(2))
        assert stream.position == 6
    finally:
        source.close()
    reference = _take(SimulationStream(problem.simulate, 8, seed=4), 6)
    for (x, _), (xr, _, _) in zip(epoch1 + epoch2, reference, strict=True):
        assert torch.equal(x, xr)


@pytest.mark.parametrize("bad, match", [
    ({"batch_size": 0}, "SimulationStream"),
    ({"rank": 2, "world_size": 2}, "SimulationStream"),
    ({"seed": -1}, r"^seed must be an int in \[0, 2\*\*32 - 1\], got -1"),  # as every seed
    ({"position": 1.5}, "SimulationStream"),
])
def test_bad_settings_are_refused(problem, bad, match):
    kwargs = {"batch_size": 4, **bad}
    batch_size = kwargs.pop("batch_size")
    with pytest.raises(ConfigError, match=match):
        SimulationStream(problem.simulate, batch_size, **kwargs)


def test_a_fit_on_the_stream_is_the_same_with_zero_and_two_workers(problem):
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,),
                         latent_dim=2)
    train = TrainConfig(num_epochs=2, batch_size=32, num_train=96, val_fraction=0.25, seed=3)
    x, y = problem.simulate(256, torch.Generator().manual_seed(1))
    losses = []
    for workers in (0, 2):
        cvae = build_cvae(config, x, y, problem=problem, seed=3)
        stream = SimulationStream(problem.simulate, train.batch_size, seed=train.seed)
        source = StreamBatches(stream, steps_per_epoch=3, num_workers=workers)
        result = fit(cvae, None, None, train, simulator=problem.simulate, batches=source,
                     progress=False)
        assert len(result.step_losses) == 2 * 3 and stream.position == 6
        losses.append(result.step_losses)
    # identical minibatches and seeds: identical losses, bit for bit
    assert losses[0] == losses[1]


def test_fit_refuses_pairs_and_a_batch_source_together(problem):
    config = ModelConfig(x_shape=problem.x_shape, y_shape=problem.y_shape, hidden_dims=(8,))
    x, y = problem.simulate(8, torch.Generator().manual_seed(0))
    cvae = build_cvae(config, x, y)
    source = StreamBatches(SimulationStream(problem.simulate, 4), steps_per_epoch=1)
    with pytest.raises(ConfigError, match="not both"):
        fit(cvae, x, y, TrainConfig(num_epochs=1), batches=source, progress=False)


def _dies_in_a_worker(num, generator):
    """A simulator that the kernel kills (SIGKILL, as the out-of-memory killer) in a worker."""
    import os
    import signal

    if torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)
    return torch.randn(num, 2, generator=generator), torch.randn(num, 1, generator=generator)


def test_a_stream_worker_that_dies_is_named_not_a_dataloader_traceback():
    """DataLoader's ``RuntimeError`` (with its traceback) is now a one-line ``WorkerDiedError``
    that ``ppl-cvae fit`` prints with the command that resumes the run."""
    from ppl_cvae.errors import WorkerDiedError

    source = StreamBatches(SimulationStream(_dies_in_a_worker, 4), steps_per_epoch=2,
                           num_workers=1)  # fmt: skip
    with pytest.raises(WorkerDiedError, match=r"a simulation worker of the stream was killed by "
                       r"SIGKILL \(what the out.*DataLoader worker.*fewer --workers"):  # fmt: skip
        list(source.epoch_batches(0))
