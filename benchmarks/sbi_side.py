"""The sbi / sbibm half of ``benchmarks/sbi_compare.py``, run inside ``.venv-sbi``.

sbibm pins old versions of sbi and its dependencies, so this script runs in its own virtual
environment (``python benchmarks/sbi_compare.py --setup`` makes it) and talks to the
comparison script through files only. It never imports ``ppl_cvae``. Three subcommands:

``prepare``
    Simulate the training set of one sbibm task and write, into a work folder,
    ``train.npz`` (``x``: parameters theta ``(N, theta_dim)``, ``y``: data ``(N, data_dim)``,
    float32, the format of ``ppl-cvae fit --data``), ``observations.npz`` (``y``: the chosen
    observations ``(M, data_dim)``, ``x``: their true parameters ``(M, theta_dim)``,
    ``num_observation``: sbibm's numbers ``(M,)``, the format of ``ppl-cvae sample
    --observation``) and ``reference.npz`` (``samples``: sbibm's reference posterior samples
    ``(M, 10000, theta_dim)``, shipped inside the sbibm package: nothing is downloaded).
``npe``
    Train sbi's neural posterior estimation (NPE-C with a neural spline flow, as sbibm runs
    it) on the same ``train.npz``, draw posterior samples for each observation and write
    ``npe_samples.npz`` (``samples``, ``(M, S, theta_dim)``) and ``npe.json`` (timings).
``score``
    C2ST accuracy of sample files against the reference samples, with sbibm's metric
    (MLP classifier, 5-fold cross-validation, inputs z-scored with the reference's moments);
    writes a JSON ``{label: [c2st per observation]}``.

Every output is written to a temporary beside it and renamed when complete.

References
----------
Lueckmann, Boelts, Greenberg, Goncalves and Macke (2021), "Benchmarking simulation-based
inference", AISTATS, arXiv:2101.04653 (sbibm, its tasks, reference posteriors and C2ST).
Papamakarios and Murray (2016), "Fast epsilon-free inference of simulation models with
Bayesian conditional density estimation", NeurIPS, arXiv:1605.06376 (NPE).
Greenberg, Nonnenmacher and Macke (2019), "Automatic posterior transformation for
likelihood-free inference", ICML, arXiv:1905.07488 (NPE-C, sbi's ``SNPE_C``).
Durkan, Bekasov, Murray and Papamakarios (2019), "Neural spline flows", NeurIPS,
arXiv:1906.04032 (the ``nsf`` density estimator).
Lopez-Paz and Oquab (2017), "Revisiting classifier two-sample tests", ICLR, arXiv:1610.06545
(C2ST).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary beside ``target``, then rename it onto ``target``."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npz(target: Path, **arrays: np.ndarray) -> None:
    """Write arrays to an uncompressed ``.npz`` atomically.

    Parameters
    ----------
    target : Path
        Output file; its suffix must be ``.npz``.
    **arrays : ndarray
        Arrays stored under their keyword names.

    Raises
    ------
    ValueError
        If ``target`` does not end in ``.npz``.
    """
    if target.suffix != ".npz":
        raise ValueError(f"expected an .npz target, got {str(target)!r}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    _atomic_write(target, write)


def save_json(target: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (temporary beside ``target``, then rename)."""

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2) + "\n")

    _atomic_write(target, write)


def _seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def prepare(
    task_name: str,
    num_simulations: int,
    observations: Sequence[int],
    seed: int,
    work_dir: Path,
) -> dict[str, Any]:
    """Simulate a task's training set and store its observations and reference samples.

    Parameters
    ----------
    task_name : str
        sbibm task name, e.g. ``"gaussian_linear"`` (theta and data 10-D) or ``"two_moons"``
        (theta and data 2-D).
    num_simulations : int
        Number ``N`` of prior simulations ``(theta, x_sbi)`` in the training set, ``>= 2``.
    observations : sequence of int
        sbibm observation numbers, each in 1..10.
    seed : int
        Seed of torch's and numpy's global generators (sbibm's prior and simulators draw from
        them).
    work_dir : Path
        Existing folder that receives ``train.npz``, ``observations.npz`` and
        ``reference.npz`` (see the module docstring for their arrays and shapes).

    Returns
    -------
    dict
        ``task``, ``num_simulations``, ``observations``, ``theta_dim``, ``data_dim``,
        ``seed`` and ``simulate_s`` (seconds spent simulating).

    Raises
    ------
    ValueError
        If ``num_simulations < 2`` or an observation number is outside 1..10.
    """
    import sbibm

    if num_simulations < 2:
        raise ValueError(f"num_simulations must be >= 2, got {num_simulations}")
    bad = [i for i in observations if not 1 <= i <= 10]
    if bad:
        raise ValueError(f"sbibm observations are numbered 1..10, got {bad}")
    task = sbibm.get_task(task_name)
    _seed_all(seed)
    start = time.perf_counter()
    theta = task.get_prior()(num_samples=num_simulations)
    data = task.get_simulator()(theta)
    simulate_s = time.perf_counter() - start
    save_npz(
        work_dir / "train.npz",
        x=theta.numpy().astype(np.float32),
        y=data.numpy().astype(np.float32),
    )
    y_obs = np.stack([task.get_observation(num_observation=i)[0].numpy() for i in observations])
    x_true = np.stack(
        [task.get_true_parameters(num_observation=i)[0].numpy() for i in observations]
    )
    save_npz(
        work_dir / "observations.npz",
        y=y_obs.astype(np.float32),
        x=x_true.astype(np.float32),
        num_observation=np.asarray(observations, dtype=np.int64),
    )
    reference = np.stack(
        [task.get_reference_posterior_samples(num_observation=i).numpy() for i in observations]
    )
    save_npz(work_dir / "reference.npz", samples=reference.astype(np.float32))
    return {
        "task": task_name,
        "num_simulations": num_simulations,
        "observations": list(observations),
        "theta_dim": int(theta.shape[1]),
        "data_dim": int(data.shape[1]),
        "seed": seed,
        "simulate_s": simulate_s,
    }


def train_npe(
    task_name: str,
    work_dir: Path,
    num_samples: int,
    seed: int,
    batch_size: int = 50,
    hidden_features: int = 50,
) -> dict[str, Any]:
    """Train sbi's NPE on ``train.npz`` and draw posterior samples for each observation.

    One amortized network is trained (a single round of NPE-C on prior simulations: the
    density estimator ``q(theta | x)`` is a neural spline flow with 5 transforms and
    ``hidden_features`` units, theta and x z-scored per dimension; sbibm's NPE settings) and
    evaluated at every observation; training stops when the validation loss has not improved
    for 20 epochs (sbi's default).

    Parameters
    ----------
    task_name : str
        sbibm task name; gives the prior (proposal and support of the posterior).
    work_dir : Path
        Folder written by :func:`prepare`; receives ``npe_samples.npz`` (``samples``,
        ``(M, num_samples, theta_dim)``, float32) and ``npe.json``.
    num_samples : int
        Posterior draws per observation, ``>= 1``.
    seed : int
        Seed of torch's and numpy's global generators before training and before sampling.
    batch_size : int, optional
        Training minibatch size (sbi's default 50).
    hidden_features : int, optional
        Hidden units of the flow's networks (sbibm's 50).

    Returns
    -------
    dict
        ``train_s`` and ``sample_s`` (seconds), ``epochs`` trained, ``best_validation_log_prob``
        and the settings used.

    Raises
    ------
    ValueError
        If ``num_samples < 1``.
    """
    import sbibm
    import torch
    from sbi.inference import SNPE_C
    from sbi.utils.get_nn_models import posterior_nn
    from torch.utils.tensorboard.writer import SummaryWriter

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    task = sbibm.get_task(task_name)
    with np.load(work_dir / "train.npz") as f:
        theta = torch.from_numpy(f["x"])
        data = torch.from_numpy(f["y"])
    with np.load(work_dir / "observations.npz") as f:
        y_obs = torch.from_numpy(f["y"])
    _seed_all(seed)
    start = time.perf_counter()
    inference = SNPE_C(
        task.get_prior_dist(),
        density_estimator=posterior_nn(
            model="nsf",
            hidden_features=hidden_features,
            z_score_x="independent",
            z_score_theta="independent",
        ),
        summary_writer=SummaryWriter(log_dir=str(work_dir / "sbi-logs")),  # not ./sbi-logs
        show_progress_bars=False,
    )
    estimator = inference.append_simulations(theta, data).train(training_batch_size=batch_size)
    train_s = time.perf_counter() - start
    posterior = inference.build_posterior(estimator)
    _seed_all(seed + 1)
    start = time.perf_counter()
    samples = np.stack(
        [
            posterior.sample((num_samples,), x=y_obs[i : i + 1], show_progress_bars=False)
            .detach()
            .numpy()
            for i in range(y_obs.shape[0])
        ]
    )
    sample_s = time.perf_counter() - start
    save_npz(work_dir / "npe_samples.npz", samples=samples.astype(np.float32))
    summary = inference.summary
    info = {
        "train_s": train_s,
        "sample_s": sample_s,
        "epochs": int(len(summary["validation_log_probs"])),
        "best_validation_log_prob": float(max(summary["validation_log_probs"])),
        "density_estimator": "nsf",
        "hidden_features": hidden_features,
        "batch_size": batch_size,
        "num_simulations": int(theta.shape[0]),
        "threads": torch.get_num_threads(),
        "seed": seed,
    }
    save_json(work_dir / "npe.json", info)
    return info


def score(reference_file: Path, sample_files: dict[str, Path], seed: int = 1) -> dict[str, Any]:
    """C2ST accuracy of each sample file against the reference posterior samples.

    Parameters
    ----------
    reference_file : Path
        ``.npz`` with ``samples`` of shape ``(M, R, theta_dim)`` (``reference.npz``).
    sample_files : dict of str to Path
        Label -> ``.npz`` with ``samples`` of shape ``(M, S, theta_dim)``, the same ``M``
        observations in the same order.
    seed : int, optional
        Seed of the classifier and of the cross-validation folds (sbibm's default 1).

    Returns
    -------
    dict
        Label -> list of ``M`` C2ST accuracies (0.5: indistinguishable from the reference;
        1: fully separable). Both sets are cut to their common size ``min(R, S)`` (the first
        draws of each) so the two classes are balanced and chance accuracy is 0.5.

    Raises
    ------
    ValueError
        If a sample file's shape differs from the reference's in ``M`` or ``theta_dim``, or
        holds NaN/inf.

    Notes
    -----
    sbibm's ``c2st``: an ``MLPClassifier`` with two hidden layers of ``10 theta_dim`` ReLU
    units, trained to tell reference from candidate samples; both are z-scored with the
    reference's mean and sd; the accuracy is averaged over 5 folds. sbi 0.21's own ``c2st``
    defaults to a random forest, so sbibm's is used to match the published figures.
    """
    import torch
    from sbibm.metrics import c2st

    with np.load(reference_file) as f:
        reference = f["samples"]
    out: dict[str, Any] = {}
    for label, path in sample_files.items():
        with np.load(path) as f:
            samples = f["samples"]
        if (
            samples.ndim != 3
            or samples.shape[0] != reference.shape[0]
            or (samples.shape[2] != reference.shape[2])
        ):
            raise ValueError(
                f"{str(path)!r} has samples of shape {samples.shape}; expected "
                f"({reference.shape[0]}, S, {reference.shape[2]}) like the reference"
            )
        if not np.isfinite(samples).all():
            raise ValueError(f"{str(path)!r} holds NaN or inf samples")
        n = min(reference.shape[1], samples.shape[1])  # balanced classes: chance is 0.5
        out[label] = [
            float(
                c2st(
                    torch.from_numpy(reference[i, :n]).float(),
                    torch.from_numpy(samples[i, :n]).float(),
                    seed=seed,
                )[0]
            )
            for i in range(reference.shape[0])
        ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand (see the module docstring); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--task", required=True)
    p.add_argument("--num-simulations", type=int, required=True)
    p.add_argument("--observations", type=int, nargs="+", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    n = sub.add_parser("npe")
    n.add_argument("--task", required=True)
    n.add_argument("--work-dir", type=Path, required=True)
    n.add_argument("--num-samples", type=int, required=True)
    n.add_argument("--seed", type=int, required=True)
    n.add_argument("--batch-size", type=int, default=50)
    s = sub.add_parser("score")
    s.add_argument("--reference", type=Path, required=True)
    s.add_argument("--samples", nargs="+", required=True, metavar="LABEL=FILE")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.command == "prepare":
        info = prepare(args.task, args.num_simulations, args.observations, args.seed, args.work_dir)
        save_json(args.work_dir / "prepare.json", info)
    elif args.command == "npe":
        info = train_npe(args.task, args.work_dir, args.num_samples, args.seed, args.batch_size)
    else:
        files = dict(item.split("=", 1) for item in args.samples)
        info = score(args.reference, {k: Path(v) for k, v in files.items()}, args.seed)
        save_json(args.out, info)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
