"""Ctrl-C (SIGINT) sent to ``ppl-cvae fit``, ``sample`` and ``evaluate`` while they work.

Each command runs in a subprocess whose work function first prints a line (the test waits for
it, so the signal lands mid-work, not during the imports) onto an ``--out`` that already holds
an output of the same command. The command must end with status 130 and one line on stderr
(no traceback), leave that output byte for byte as it was and leave nothing else under its
folder (no temporary, no half-written file, no training state of a fit that never reached its
first checkpoint). A Ctrl-C that Python swallows inside a finalizer ("Exception ignored in
...": it happened during NetCDF writes, and ``sample`` then wrote its output with exit 0) must
still stop the command before its output is renamed into place.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppl_cvae._atomic import atomic_dir, atomic_path, remembering_interrupts
from ppl_cvae.cli import main

TINY = ["--epochs", "1", "--num-train", "128", "--batch-size", "64", "--hidden-dims", "8",
        "--latent-dim", "2", "--quiet", "--threads", "1"]

DRIVER = """
import importlib, signal, sys
# as in an interactive shell: a child inherits an ignored SIGINT (from a pytest worker, say)
signal.signal(signal.SIGINT, signal.default_int_handler)
from ppl_cvae.cli import main
module, name = sys.argv[1].rsplit(":", 1)
owner = importlib.import_module(module)
if "." in name:  # a method: Class.method
    cls, name = name.split(".")
    owner = getattr(owner, cls)
work = getattr(owner, name)
def marked(*args, **kwargs):
    print("WORKING", flush=True)
    setattr(owner, name, work)
    return work(*args, **kwargs)
setattr(owner, name, marked)
sys.exit(main(sys.argv[2:]))
"""


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones included): a digest for files, '' for folders."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "" for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A tiny run, observations, pairs, and a previous output of fit, sample and evaluate."""
    root = tmp_path_factory.mktemp("interrupt")
    threads = torch.get_num_threads()
    try:
        assert main(["fit", "--problem", "linear_gaussian", "--out", str(root / "run"),
                     *TINY]) == 0
        assert main(["simulate", "--problem", "linear_gaussian", "--num", "2", "--out",
                     str(root / "obs.npz"), "--threads", "1"]) == 0
        assert main(["simulate", "--problem", "linear_gaussian", "--num", "64", "--out",
                     str(root / "pairs.npz"), "--threads", "1"]) == 0
        old = root / "old"
        old.mkdir()
        assert main(["fit", "--problem", "linear_gaussian", "--out", str(old / "fit"),
                     *TINY]) == 0
        assert main(["sample", str(root / "run"), "--observation", str(root / "obs.npz"),
                     "--num-samples", "10", "--out", str(old / "post.nc"), "--threads",
                     "1"]) == 0
        assert main(["evaluate", str(root / "run"), "--data", str(root / "pairs.npz"),
                     "--num-samples", "100", "--out", str(old / "evaluation"), "--threads",
                     "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def _interrupt(
    root: Path, tmp_path: Path, work: str, argv: list[str], sig: int = signal.SIGINT
) -> None:
    """Run ``ppl-cvae ARGV`` onto a copy of the previous outputs; Ctrl-C once ``work`` runs.

    With ``sig=SIGTERM`` the command is stopped as ``kill`` or a batch scheduler stops it: the
    same answer, with status 143.
    """
    out = tmp_path / "out"
    shutil.copytree(root / "old", out)
    before = _snapshot(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                      os.environ.get("PYTHONPATH")]))}
    argv = [str(a).replace("OUT", str(out)) for a in argv]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, work, *argv, "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the work function starts
        assert line.strip() == "WORKING", (line, proc.stderr.read() if proc.stderr else "")
        time.sleep(0.2)  # inside the work, past its first statements
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # pragma: no cover - a hang
            proc.kill()
            proc.communicate()
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 128 + sig, err
    assert lines == ["ppl-cvae: interrupted; no partial output was written"], err
    assert _snapshot(out) == before  # the previous output intact, nothing added


def test_ctrl_c_during_fit_keeps_the_previous_run(previous, tmp_path):
    """Before its first checkpoint: no training state; the run's marker back as it was."""
    _interrupt(previous, tmp_path, "pyro.infer:SVI.step",
               ["fit", "--problem", "linear_gaussian", "--out", "OUT/fit", "--overwrite",
                "--epochs", "50", "--num-train", "20000", "--batch-size", "64",
                "--hidden-dims", "64", "--quiet"])


@pytest.mark.parametrize("method, work", [
    ("amortized", "inference.sample:_write_first_chunk"),  # the temporary file exists then
    ("nuts", "inference.mcmc.chains:_run_chain"),
])
def test_ctrl_c_during_sample_keeps_the_previous_file(previous, tmp_path, method, work):
    flags = (["--num-samples", "3000000"] if method == "amortized" else
             ["--num-samples", "20000", "--chains", "2", "--warmup", "50"])
    _interrupt(previous, tmp_path, work,
               ["sample", previous / "run", "--observation", previous / "obs.npz",
                "--method", method, *flags, "--out", "OUT/post.nc", "--overwrite"])


def test_sigterm_during_sample_keeps_the_previous_file(previous, tmp_path):
    _interrupt(previous, tmp_path, "inference.sample:_write_first_chunk",
               ["sample", previous / "run", "--observation", previous / "obs.npz",
                "--num-samples", "3000000", "--out", "OUT/post.nc", "--overwrite"],
               sig=signal.SIGTERM)


def test_sigterm_in_a_forked_worker_ends_it_at_once():
    """A child forked inside the command inherits the handler; SIGTERM still ends it."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a shell's command
    try:
        with remembering_interrupts():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # answered
            ready, started = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.write(started, b"1")  # past fork's reset of pending signals
                time.sleep(30)
                os._exit(0)
            assert os.read(ready, 1) == b"1"
            os.close(ready)
            os.close(started)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_during_evaluate_keeps_the_previous_folder(previous, tmp_path):
    """Interrupted while the plots are written into the temporary folder."""
    _interrupt(previous, tmp_path, "inference.evaluate:write_evaluation",
               ["evaluate", previous / "run", "--data", previous / "pairs.npz",
                "--num-samples", "2000", "--out", "OUT/evaluation", "--overwrite"])


class _SwallowsCtrlC:
    """An object whose finalizer receives SIGINT: Python prints "Exception ignored" and goes on."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between bytecodes, here
            pass


@pytest.fixture
def sigint_default():
    """SIGINT raising KeyboardInterrupt, as in an interactive shell, whatever this worker had."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_ctrl_c_swallowed_by_a_finalizer_still_stops_the_write(tmp_path, kind, sigint_default):
    """Before: the write went on and replaced the output (exit 0 after Ctrl-C)."""
    target = tmp_path / ("out.txt" if kind == "file" else "out")
    if kind == "file":
        target.write_text("previous")
    else:
        with atomic_dir(target, command="test") as tmp:
            (tmp / "a.txt").write_text("previous")
    before = _snapshot(tmp_path)
    handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    with remembering_interrupts(), pytest.raises(KeyboardInterrupt):
        writer = atomic_path(target) if kind == "file" else atomic_dir(
            target, overwrite=True, command="test")
        with writer as tmp:
            obj = _SwallowsCtrlC()
            del obj  # the KeyboardInterrupt is raised in __del__ and swallowed there
            gc.collect()
            (tmp if kind == "file" else tmp / "a.txt").write_text("new")
    assert _snapshot(tmp_path) == before
    # the handler and the unraisable hook are restored
    assert signal.getsignal(signal.SIGINT) is handler and sys.unraisablehook is hook


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """``ppl_cvae.cli.main`` (the script and ``python -m ppl_cvae.cli``) loads torch, Pyro and
    the commands when called, holding a Ctrl-C back until they have loaded: it is then
    answered in one line with status 130 and the command does not run (before: Python's
    traceback and -2, or numpy's "cannot load module more than once per process" when the
    interrupt landed in numpy's import). Afterwards the previous SIGINT handler is back."""
    import types

    import ppl_cvae.cli

    ran = []

    class Loading(types.ModuleType):
        def __getattr__(self, name):  # a Ctrl-C while ppl_cvae.cli.run loads, then its main
            signal.raise_signal(signal.SIGINT)
            return lambda argv: ran.append(argv) or 0

    monkeypatch.setitem(sys.modules, "ppl_cvae.cli.run", Loading("ppl_cvae.cli.run"))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        argv = ["sample", "run", "--observation", "obs.npz", "--out", "p.nc"]
        assert ppl_cvae.cli.main(argv) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert ran == []
    err = capsys.readouterr().err
    assert err == "ppl-cvae: interrupted while starting; nothing was written\n"


def test_no_module_loads_outside_the_ctrl_c_handling_of_the_run():
    """After ``ppl_cvae.cli.main`` has loaded :mod:`ppl_cvae.cli.run` (Ctrl-C held back), every
    import in ``run.main`` and ``run._main`` sits inside a ``try`` that answers
    ``KeyboardInterrupt`` in one line. Before, ``run.main`` imported the training modules
    (Pyro, about a second) before its ``try``: a Ctrl-C 2.5-3.3 s after the start printed
    Python's traceback in 4 of 12 tries of the CLI audit."""
    import ast
    import inspect

    import ppl_cvae.cli.run as run

    tree = ast.parse(inspect.getsource(run))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def handles_interrupt(node):
        return any(
            isinstance(h.type, ast.Name) and h.type.id in ("KeyboardInterrupt", "BaseException")
            for h in node.handlers
        )

    def unguarded_imports(node, guarded=False):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not guarded:
            yield node.lineno
        if isinstance(node, ast.Try):
            for child in node.body:
                yield from unguarded_imports(child, guarded or handles_interrupt(node))
            for child in (*node.handlers, *node.orelse, *node.finalbody):
                yield from unguarded_imports(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            yield from unguarded_imports(child, guarded)

    for name in ("main", "_main"):
        assert list(unguarded_imports(functions[name])) == [], name


def test_importing_the_package_loads_neither_torch_nor_pyro():
    """``import ppl_cvae.cli`` (what the script and ``python -m ppl_cvae.cli`` run before
    ``main``) loads neither torch nor Pyro; the package's public names load on first use."""
    code = ("import sys, ppl_cvae.cli; assert 'torch' not in sys.modules, 'torch'; "
            "assert 'pyro' not in sys.modules, 'pyro'; assert ppl_cvae.CVAE.__name__ == 'CVAE'; "
            "assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("argv", "status", "stream", "text"),
    [(["--help"], 0, "stdout", "usage: ppl-cvae"), (["fit", "--help"], 0, "stdout", "--seed"),
     (["sample", "--bogus"], 2, "stderr", "error: the following arguments are required"),
     (["fit", "--likelihood", "nope"], 2, "stderr", "invalid choice: 'nope'")],
)
def test_help_and_usage_errors_load_neither_torch_nor_pyro(argv, status, stream, text):
    """``ppl-cvae --help``, a command's ``--help`` and a mistyped flag are answered by the
    parser alone: torch and Pyro (about 2 s to load) stay out of the process. Before, the
    parser imported the command modules and the constants' modules, and each of these took
    3 s of which 2 s were the imports."""
    code = (
        "import sys, ppl_cvae.cli\n"
        "try:\n"
        f"    ppl_cvae.cli.main({argv!r})\n"
        "except SystemExit as e:\n"
        "    print('status', e.code, file=sys.stderr)\n"
        "print('loaded', sorted(m for m in ('torch', 'pyro') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"status {status}" in out.stderr
    assert "loaded []" in out.stderr
    assert text in getattr(out, stream)


def test_an_interrupt_after_the_rename_says_the_output_is_complete(previous, tmp_path, capsys,
                                                                   monkeypatch):
    """``sample`` reads its file back after the rename (the misfit check): an interrupt there
    said "no partial output was written" over a file already replaced (the eighteenth
    audit); a checkpoint renamed into place at the interrupt made ``fit`` say its run was
    complete, without the resume line."""
    import inference.arviz_io
    from ppl_cvae._atomic import InterruptedAfterWrite
    from ppl_cvae.cli import fit as fit_cli
    from ppl_cvae.train.resume import STATE_FILE

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference.arviz_io, "load_inference_data", interrupted)
    out = tmp_path / "post.nc"
    argv = ["sample", str(previous / "run"), "--observation", str(previous / "obs.npz"),
            "--num-samples", "10", "--out", str(out), "--threads", "1"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 130 and out.is_file()
    assert "interrupted just after the output was written (it is complete)" in (
        capsys.readouterr().err
    )

    def saved_then_interrupted(out_dir, overwrite, fit_into):
        (out_dir / STATE_FILE).write_bytes(b"a saved state")
        raise InterruptedAfterWrite

    monkeypatch.setattr(fit_cli, "_write_run", saved_then_interrupted)
    run = tmp_path / "run"
    assert main(["fit", "--problem", "linear_gaussian", "--out", str(run), *TINY]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ppl-cvae: interrupted; continue with: ppl-cvae fit --resume {run}"]


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _die_or_sleep(seconds: float) -> float:
    if seconds < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(seconds)
    return seconds


def test_a_chain_worker_that_dies_is_named_and_the_others_stopped():
    """A chain worker killed (the out-of-memory killer's SIGKILL) gave a raw
    ``BrokenProcessPool`` traceback; now a one-line error that names the signal."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from inference.mcmc.chains import _map_in_pool
    from ppl_cvae.errors import WorkerDiedError

    for jobs in ([-1.0, 60.0], [60.0, -1.0]):  # the dying worker second: it named SIGTERM
        pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match=r"worker process was killed by SIGKILL \(what"):
            _map_in_pool(pool, _die_or_sleep, jobs)
        assert time.monotonic() - start < 30  # the sleeping worker was stopped, not waited for


def test_an_interrupt_stops_the_chain_workers_at_once():
    """``sample --method nuts --cores 2`` ran its chains to the end after a SIGTERM to its
    own process (``with pool:`` waited), and a SIGKILL then left them as orphans."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from inference.mcmc.chains import _map_in_pool

    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))  # a real signal
    start = time.monotonic()
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            _map_in_pool(pool, _sleep, [60.0, 60.0])
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, before)
    assert time.monotonic() - start < 30
    workers = list(pool._processes.values()) if pool._processes else []
    assert not any(process.is_alive() for process in workers)
    assert _map_in_pool(
        ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")),
        _sleep,
        [0.0, 0.1],
    ) == [0.0, 0.1]
