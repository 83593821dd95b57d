"""``ppl-cvae simulate``: (x, y) pairs from a problem's prior and forward operator, to ``.npz``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ppl_cvae.cli.common import _check_new_file, _check_simulation_memory, _problem_from_args

log = logging.getLogger("ppl_cvae")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate (x, y) pairs from a problem's prior and forward operator."""
    from ppl_cvae.data.io import save_pairs
    from ppl_cvae.problems.checked_simulator import CheckedSimulator

    out = Path(args.out)
    _check_new_file(out, args.overwrite, [], ".npz", "simulate")
    problem, _ = _problem_from_args(args)
    _check_simulation_memory(problem, args.num, "--num")
    # the checks of fit's simulator: shapes, finite float tensors, sys.exit in problem code
    simulate = CheckedSimulator(
        problem.simulate, problem.x_shape, problem.y_shape, f"problem {problem.name!r}"
    )
    x, y = simulate(args.num, torch.Generator().manual_seed(args.seed))
    if not simulate.is_reproducible():  # as fit says it
        log.warning(
            "%s does not give the same pairs for the same generator (it draws from another "
            "RNG): --seed does not fix the pairs written",
            simulate.source,
        )
    assert y is not None  # a conditional problem: the checked simulator returns y
    save_pairs(out, x, y, overwrite=args.overwrite, written_by="ppl-cvae simulate")
    print(f"wrote {args.num} pairs x {tuple(x.shape[1:])}, y {tuple(y.shape[1:])} to {out}")
    return 0
