"""One-file checkpoints: weights, configuration, standardisers, problem and package version."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ppl_cvae._atomic import atomic_path
from ppl_cvae.config import ModelConfig
from ppl_cvae.errors import CheckpointError, PplCvaeError
from ppl_cvae.models.cvae import CVAE
from ppl_cvae.problems.base import Problem, make_problem

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "ppl_cvae.checkpoint.v1"


def save_checkpoint(
    path: str | os.PathLike[str],
    cvae: CVAE,
    *,
    problem: Problem | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``cvae`` to one file atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or path
        Target file (conventionally ``RUN_DIR/model.pt``).
    cvae : CVAE
        Model to store: its ``ModelConfig``, state dict (weights, standardisers, basis).
    problem : Problem, optional
        Stored as its :meth:`~ppl_cvae.problems.base.Problem.spec` so that loading rebuilds the
        forward operator; a problem that cannot be serialised is stored as ``None``.
    extra : dict, optional
        JSON-like metadata (training configuration, data source, ...).

    Returns
    -------
    Path
        The written file.
    """
    from ppl_cvae import __version__

    spec = None
    if problem is not None:
        try:
            spec = problem.spec()
        except PplCvaeError:
            spec = None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "model_config": cvae.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in cvae.state_dict().items()},
        "misfit_std": cvae.misfit_std,
        "problem": spec,
        "extra": extra or {},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], problem: Problem | None = None
) -> tuple[CVAE, dict[str, Any]]:
    """Restore a CVAE that samples identically to the saved one.

    Parameters
    ----------
    path : str or path
        A checkpoint file, or a run folder containing ``model.pt``.
    problem : Problem, optional
        Overrides the stored problem (needed for problems built from user callables).

    Returns
    -------
    cvae : CVAE
        In eval mode, on the CPU.
    meta : dict
        ``{"version", "problem" (Problem or None), "problem_spec", "extra"}``.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, not a ppl_cvae checkpoint, or its weights do not
        fit its configuration.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on corrupt files
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a ppl_cvae checkpoint (expected format {CHECKPOINT_FORMAT})"
        )
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except PplCvaeError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has an invalid configuration: {err}"
        ) from err
    spec = payload.get("problem")
    if problem is None and spec is not None:
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        problem = make_problem(spec["name"], **kwargs)
    transform = None
    if config.constrained_coefficients:
        if problem is None or not hasattr(problem, "coefficient_transform"):
            raise CheckpointError(
                f"{str(path)!r} needs its problem's coefficient_transform(); pass the problem"
            )
        transform = problem.coefficient_transform()
    cvae = CVAE(
        config,
        coefficient_transform=transform,
        forward_operator=problem.forward if problem is not None else None,
        misfit_std=float(payload.get("misfit_std", 1.0)),
    )
    try:
        cvae.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(
            f"weights in {str(path)!r} do not fit its configuration: {err}"
        ) from err
    cvae.eval()
    meta = {
        "version": payload.get("version"),
        "problem": problem,
        "problem_spec": spec,
        "extra": payload.get("extra", {}),
    }
    return cvae, meta
