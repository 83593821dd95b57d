"""Our amortized posterior against sbi's NPE on sbibm tasks, scored by C2ST.

For each sbibm task (default ``gaussian_linear`` and ``two_moons``): simulate ``N`` (default
10,000) prior pairs once, train sbi's NPE (a neural spline flow, as sbibm runs it) on them, fit
``ppl-cvae fit --data train.npz`` with its defaults (the defaults choose the family from the
sizes of x and y) and with any extra flag sets given by ``--ours-args``, draw 10,000 posterior
samples per observation from each, and score every sample set against sbibm's reference
posterior samples of observations 1-5 with one C2ST implementation (sbibm's; 0.5 is perfect,
1 fully separable). Prints a table (C2ST per observation, training times, thread count,
median and mean per task) and writes the figures to a JSON (``--out``).

Vocabulary: ``x`` is what the CVAE generates, the parameters theta of sbi; ``y`` is the data,
sbi's ``x``.

sbibm and sbi pin old versions, so they live in their own virtual environment,
``.venv-sbi`` at the repository root, with the same CPU torch wheel as the project (2.13.0):

    python benchmarks/sbi_compare.py --setup            # once: creates .venv-sbi

and the helper ``benchmarks/sbi_side.py`` runs there (simulation, NPE, C2ST); this script runs
in the project's environment and calls ``ppl-cvae`` as a subprocess. Run::

    OMP_NUM_THREADS=1 python benchmarks/sbi_compare.py --threads 1
    python benchmarks/sbi_compare.py --ours-args "" --ours-args "--likelihood flow" --skip-npe

About 1.5 hours on 1 thread of the busy 2-core machine for both tasks: NPE training 3 to 8
minutes per task, our fit under a minute, and sbibm's C2ST the bulk (about 5 minutes per
observation and method on gaussian_linear's 10-D samples, under 2 on two_moons).

References
----------
Lueckmann, Boelts, Greenberg, Goncalves and Macke (2021), "Benchmarking simulation-based
inference", AISTATS, arXiv:2101.04653 (sbibm tasks, reference posteriors, C2ST protocol).
Papamakarios and Murray (2016), arXiv:1605.06376; Greenberg, Nonnenmacher and Macke (2019),
arXiv:1905.07488 (NPE). Lopez-Paz and Oquab (2017), "Revisiting classifier two-sample tests",
ICLR, arXiv:1610.06545 (C2ST).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SBI_VENV = ROOT / ".venv-sbi"
SBI_SIDE = ROOT / "benchmarks" / "sbi_side.py"
REQUIREMENTS = ROOT / "benchmarks" / "sbi_requirements.txt"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel of constraints.txt; unpinned, pip pulls CUDA builds
TASKS = ("gaussian_linear", "two_moons")
NPE_TARGETS = {"gaussian_linear": 0.553, "two_moons": 0.561}  # issue 10, measured with sbi NPE


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def setup_sbi_env(venv: Path = SBI_VENV) -> None:
    """Create the sbi/sbibm virtual environment with the pinned versions.

    Installs ``torch==2.13.0`` first (the local CPU wheel), then ``sbibm`` and ``sbi`` with
    ``benchmarks/sbi_requirements.txt`` as constraints, so no dependency upgrades torch.

    Parameters
    ----------
    venv : Path, optional
        Folder of the environment (default ``.venv-sbi`` at the repository root, ignored by
        git). An existing environment is reused and completed.

    Raises
    ------
    subprocess.CalledProcessError
        If ``venv`` creation or a ``pip install`` fails.
    """
    if not _python(venv).is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(_python(venv)), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, TORCH_PIN], check=True)
    subprocess.run([*pip, "-c", str(REQUIREMENTS), "sbibm", "sbi", "future"], check=True)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(cmd: Sequence[str], threads: int, log: Path) -> str:
    """Run ``cmd``, append its output to ``log`` and return its stdout; raise on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), cwd=ROOT)
    with open(log, "a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed with status {proc.returncode}: {shlex.join(cmd)}\n"
            f"{proc.stderr[-3000:]}\n(full output in {log})"
        )
    return proc.stdout


def _sbi(args: Sequence[str], threads: int, log: Path, venv: Path) -> str:
    return _run([str(_python(venv)), str(SBI_SIDE), "--threads", str(threads), *args], threads, log)


def posterior_samples(path: str | os.PathLike[str]) -> np.ndarray:
    """Read the posterior draws of ``x`` from a ``ppl-cvae sample`` file as one array.

    Parameters
    ----------
    path : str or path
        InferenceData NetCDF written by ``ppl-cvae sample``: group ``posterior``, variable
        ``x`` with dims ``(chain, draw, observation, *x_dims)`` (older files without the
        ``observation`` dim get it on reading).

    Returns
    -------
    ndarray, shape (M, S, d), float32
        ``M`` observations, ``S = chain * draw``
        samples each, ``d = prod(x_shape)`` (the event axes flattened in C order); the layout
        ``benchmarks/sbi_side.py score`` reads.

    Raises
    ------
    ppl_cvae.errors.DataError
        If the file cannot be read or has no ``posterior`` group.
    """
    from inference.arviz_io import load_inference_data

    x = load_inference_data(path)["posterior"]["x"]  # with the observation dim, also old files
    event = [d for d in x.dims if d not in ("chain", "draw", "observation")]
    x = x.stack(sample=("chain", "draw")).transpose("observation", "sample", *event)
    values = np.asarray(x.values, dtype=np.float32)
    return values.reshape(values.shape[0], values.shape[1], -1)


def save_samples(target: Path, samples: np.ndarray) -> None:
    """Write ``samples`` of shape ``(M, S, d)`` to ``target`` (``.npz``, key ``samples``).

    Raises
    ------
    ValueError
        If ``samples`` is not 3-D.
    """
    from ppl_cvae._atomic import atomic_path

    if samples.ndim != 3:
        raise ValueError(f"expected samples of shape (M, S, d), got {samples.shape}")
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, samples=samples)


def run_ours(
    work: Path, label: str, extra: str, args: argparse.Namespace, log: Path
) -> dict[str, Any]:
    """Fit and sample one configuration of ours on a task's ``train.npz``.

    Parameters
    ----------
    work : Path
        The task's work folder (``train.npz``, ``observations.npz``).
    label : str
        Folder-safe name of the configuration (``ours_<i>``).
    extra : str
        Extra ``ppl-cvae fit`` flags, shell-quoted (``""``: the defaults).
    args : argparse.Namespace
        This script's arguments (seed, threads, num_samples).
    log : Path
        File that collects the subprocess output.

    Returns
    -------
    dict
        ``args``, ``fit_s`` (seconds inside ``fit``), ``epochs``, ``best_epoch``, ``sample_s``
        (wall seconds of ``ppl-cvae sample``), ``samples`` (the ``.npz`` path).

    Raises
    ------
    RuntimeError
        If ``ppl-cvae`` exits with an error.
    """
    from ppl_cvae.train.checkpoint import load_checkpoint

    cli = [sys.executable, "-m", "ppl_cvae.cli"]
    run_dir = work / label
    fit_cmd = [*cli, "fit", "--data", str(work / "train.npz"), "--out", str(run_dir)]
    fit_cmd += ["--seed", str(args.seed), "--quiet", "--overwrite", *shlex.split(extra)]
    _run(fit_cmd, args.threads, log)
    _, meta = load_checkpoint(run_dir / "model.pt")
    posterior = work / f"{label}_posterior.nc"
    start = time.perf_counter()
    _run(
        [
            *cli,
            "sample",
            str(run_dir),
            "--observation",
            str(work / "observations.npz"),
            "--num-samples",
            str(args.num_samples),
            "--seed",
            str(args.seed),
            "--out",
            str(posterior),
            "--overwrite",
        ],
        args.threads,
        log,
    )
    sample_s = time.perf_counter() - start
    samples_file = work / f"{label}_samples.npz"
    save_samples(samples_file, posterior_samples(posterior))
    epochs = sum(1 for _ in open(run_dir / "metrics.csv")) - 1
    return {
        "args": extra,
        "fit_s": float(meta["extra"]["fit_seconds"]),
        "epochs": epochs,
        "best_epoch": int(meta["extra"]["best_epoch"]),
        "sample_s": sample_s,
        "samples": str(samples_file),
    }


def run_task(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Prepare, train NPE and ours, and score one task; return its figures.

    Returns
    -------
    dict
        ``prepare`` (simulation info), ``npe`` (timings, ``c2st`` per observation) unless
        ``--skip-npe``, ``ours`` (one entry per configuration, with ``c2st``).
    """
    work = Path(args.work_dir) / task
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    venv = Path(args.sbi_venv)
    _sbi(
        [
            "prepare",
            "--task",
            task,
            "--num-simulations",
            str(args.num_simulations),
            "--observations",
            *map(str, args.observations),
            "--seed",
            str(args.seed),
            "--work-dir",
            str(work),
        ],
        args.threads,
        log,
        venv,
    )
    result: dict[str, Any] = {"prepare": json.loads((work / "prepare.json").read_text())}
    files: dict[str, Path] = {}
    if not args.skip_npe:
        _sbi(
            [
                "npe",
                "--task",
                task,
                "--work-dir",
                str(work),
                "--num-samples",
                str(args.num_samples),
                "--seed",
                str(args.seed),
                "--batch-size",
                str(args.npe_batch_size),
            ],
            args.threads,
            log,
            venv,
        )
        result["npe"] = json.loads((work / "npe.json").read_text())
        files["npe"] = work / "npe_samples.npz"
    result["ours"] = []
    for i, extra in enumerate(args.ours_args or [""]):
        ours = run_ours(work, f"ours_{i}", extra, args, log)
        result["ours"].append(ours)
        files[f"ours_{i}"] = Path(ours["samples"])
    scores_file = work / "c2st.json"
    _sbi(
        [
            "score",
            "--reference",
            str(work / "reference.npz"),
            "--samples",
            *(f"{k}={v}" for k, v in files.items()),
            "--out",
            str(scores_file),
        ],
        args.threads,
        log,
        venv,
    )
    scores = json.loads(scores_file.read_text())
    if "npe" in result:
        result["npe"]["c2st"] = scores["npe"]
    for i, ours in enumerate(result["ours"]):
        ours["c2st"] = scores[f"ours_{i}"]
    return result


def format_table(results: dict[str, Any], observations: Sequence[int], threads: int) -> str:
    """Format the C2ST table: one row per task and observation, then median and mean.

    Parameters
    ----------
    results : dict
        Task -> what :func:`run_task` returned.
    observations : sequence of int
        sbibm observation numbers, in the order of the C2ST lists.
    threads : int
        Torch thread count of every training run (printed in the header).

    Returns
    -------
    str
        A Markdown table followed by one line of training times per task.
    """
    lines = []
    for task, res in results.items():
        cols = [f"ours {o['args'] or 'defaults'}" for o in res["ours"]]
        if "npe" in res:
            cols.append("NPE")
        rows = [o["c2st"] for o in res["ours"]] + ([res["npe"]["c2st"]] if "npe" in res else [])
        lines.append(f"\n{task} (C2ST, 0.5 is perfect; {threads} thread(s))")
        lines.append("| observation | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for j, num in enumerate(observations):
            lines.append(f"| {num} | " + " | ".join(f"{r[j]:.3f}" for r in rows) + " |")
        lines.append("| median | " + " | ".join(f"{statistics.median(r):.3f}" for r in rows) + " |")
        lines.append("| mean | " + " | ".join(f"{statistics.fmean(r):.3f}" for r in rows) + " |")
        times = [
            f"ours {o['args'] or 'defaults'}: fit {o['fit_s']:.0f} s ({o['epochs']} epochs, "
            f"best {o['best_epoch']})"
            for o in res["ours"]
        ]
        if "npe" in res:
            times.append(
                f"NPE: train {res['npe']['train_s']:.0f} s ({res['npe']['epochs']} epochs)"
            )
        lines.append("training: " + "; ".join(times))
    return "\n".join(lines)


def write_json(target: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``target`` atomically (temporary, then rename)."""
    from ppl_cvae._atomic import atomic_path

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def main(args: argparse.Namespace) -> int:
    """Set up the sbi environment (``--setup``) or run the comparison; return the exit status."""
    if args.setup:
        setup_sbi_env(Path(args.sbi_venv))
        print(f"sbi environment ready: {args.sbi_venv}")
        return 0
    if not _python(Path(args.sbi_venv)).is_file():
        print(
            f"no sbi environment at {args.sbi_venv}: run `python benchmarks/sbi_compare.py "
            "--setup` first",
            file=sys.stderr,
        )
        return 2
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {task: run_task(task, args) for task in args.tasks}
    wall_s = time.perf_counter() - start
    print(format_table(results, args.observations, args.threads))
    print(f"\nwall time {wall_s:.0f} s; issue 10's NPE figures: {NPE_TARGETS}")
    doc = {
        "tasks": results,
        "num_simulations": args.num_simulations,
        "num_samples": args.num_samples,
        "observations": list(args.observations),
        "seed": args.seed,
        "threads": args.threads,
        "wall_s": wall_s,
        "c2st": "sbibm.metrics.c2st (MLP, 5 folds, z-scored by the reference)",
    }
    write_json(Path(args.out), doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="create the sbi environment, exit")
    parser.add_argument("--sbi-venv", default=str(SBI_VENV), help="the sbi/sbibm environment")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="sbibm task names")
    parser.add_argument(
        "--observations", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="sbibm numbers"
    )
    parser.add_argument("--num-simulations", type=int, default=10_000)
    parser.add_argument("--num-samples", type=int, default=10_000, help="posterior draws")
    parser.add_argument(
        "--ours-args",
        action="append",
        help="extra `ppl-cvae fit` flags of one configuration of ours, quoted; repeatable; "
        '"" = the defaults (the default when none is given)',
    )
    parser.add_argument("--skip-npe", action="store_true", help="score only our configurations")
    parser.add_argument("--npe-batch-size", type=int, default=50, help="sbi's default 50")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "sbi_compare"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "sbi_compare" / "results.json"))
    raise SystemExit(main(parser.parse_args()))
