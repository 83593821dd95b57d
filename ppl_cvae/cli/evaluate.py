"""``ppl-cvae evaluate``, ``diagnose`` and ``score``: the commands that judge a run or a posterior.

:func:`cmd_evaluate` checks a fitted run on held-out (x, y) pairs (coverage, RMSE, misfit,
SBC, TARP; a JSON file and figures); :func:`cmd_diagnose` writes the uncertainty report of a
posterior file (summary CSV and plots); :func:`cmd_score` scores a Two Birds posterior file with
the challenge's criteria.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ppl_cvae._atomic import atomic_dir, atomic_path
from ppl_cvae._json import dumps_strict, finite_or_null
from ppl_cvae._memory import check_memory
from ppl_cvae.cli.common import (
    _check_new_file,
    _check_one_hot,
    _check_out_dir,
    _load_run,
    _warn_problem_unavailable,
)
from ppl_cvae.device import resolve_device
from ppl_cvae.errors import ConfigError, DataError, ShapeError

log = logging.getLogger("ppl_cvae")


def _warn_not_finite(kind: str, where: str, found: list[tuple[str, str]]) -> None:
    """Log one warning naming the non-finite values (dotted path, word) written as null."""
    if not found:
        return
    names = ", ".join(f"{path} ({word})" for path, word in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    log.warning(
        "%d %s(s) not finite, written as null in %s: %s%s",
        len(found), kind, where, names, more,
    )


def _trained_on(run_dir: str, x: Any, y: Any) -> bool:
    """Return whether pairs ``x, y`` are the ones the run in ``run_dir`` was fitted on.

    Compares their :func:`~ppl_cvae.train.resume.data_digest` with the ``data_digest`` that
    ``fit`` records in ``RUN/config.json`` for a data file or dataset; False where the run
    records none (pairs simulated from a problem), or ``run_dir`` is a ``model.pt``.
    """
    from ppl_cvae.train.resume import data_digest

    config = Path(run_dir) / "config.json"
    try:
        recorded = json.loads(config.read_text(encoding="utf-8")).get("data_digest")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(recorded, str) and recorded == data_digest(x, y)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a run on held-out (x, y) pairs: coverage, RMSE, misfit, SBC, TARP; JSON + PNGs."""
    from inference.evaluate import (
        VERDICTS,
        evaluate_model,
        not_finite_metrics,
        write_evaluation,
    )
    from inference.posterior import bytes_per_draw
    from ppl_cvae.data.io import load_pairs

    out = Path(args.out)
    _check_out_dir(out, args.overwrite, [args.run_dir, args.data], "evaluate")
    cvae, meta = _load_run(args)
    cvae.to(resolve_device(args.device))
    config = cvae.config
    problem = meta["problem"]
    _warn_problem_unavailable(meta, "the report has no data misfit and no exact posterior")
    x, y = load_pairs(args.data)
    if tuple(x.shape[1:]) != config.x_shape or tuple(y.shape[1:]) != config.y_shape:
        raise ShapeError(
            f"{args.data!r} holds x {tuple(x.shape[1:])}, y {tuple(y.shape[1:])}; the model "
            f"has x {config.x_shape}, y {config.y_shape}"
        )
    if (meta.get("extra") or {}).get("condition") == "label":
        _check_one_hot(y, args.data, cvae.data_layout, "pair")
    if problem is None and cvae.data_layout is not None:
        _warn_if_layout_differs(cvae.data_layout, args.data)
    trained_on = _trained_on(args.run_dir, x, y)
    if trained_on:
        log.warning(
            "%s holds the very pairs run %s was fitted on (the same SHA-256 digest): coverage, "
            "SBC and TARP on the pairs the networks learnt are optimistic; evaluate on "
            "held-out pairs (e.g. ppl-cvae simulate ... --seed N with another seed)",
            args.data,
            args.run_dir,
        )
    if args.max_observations is not None:
        x, y = x[: args.max_observations], y[: args.max_observations]
    check_memory(
        2 * bytes_per_draw(cvae, x.shape[0], problem=problem) * args.num_samples,
        f"{args.num_samples} posterior draws for each of {x.shape[0]} held-out pairs",
        hint="lower --num-samples or --max-observations",
    )
    metrics, x_draws, exact = evaluate_model(
        cvae, x, y, problem=problem, num_samples=args.num_samples, seed=args.seed
    )
    metrics["run_dir"] = str(args.run_dir)
    metrics["data"] = str(args.data)
    metrics["training_pairs"] = trained_on
    metrics["problem"] = problem.name if problem is not None else None
    with atomic_dir(out, overwrite=args.overwrite, command="evaluate") as tmp_dir:
        layout = cvae.data_layout  # a data file's units of x, when fitted without a problem
        write_evaluation(
            tmp_dir,
            metrics,
            x,
            x_draws,
            exact=exact,
            problem=problem,
            seed=args.seed,
            y_obs=y,
            x_unit=layout.units.get("x") if problem is None and layout is not None else None,
        )
    summary = (
        f"coverage 50%: {metrics['coverage_50']:.3f}, 90%: {metrics['coverage_90']:.3f}; "
        f"RMSE posterior mean / prior mean: {metrics['rmse_ratio']:.3f}; posterior "
        f"contraction: {metrics['posterior_contraction']:.3f}"
    )
    if "chi2_per_datum" in metrics:
        summary += f"; chi2 per datum: {metrics['chi2_per_datum']:.3f}"
        if "misfit_outside" in metrics:
            outside = metrics["misfit_outside"]
            summary += (
                f" (median; mean {metrics['chi2_per_datum_mean']:.3f}, {outside['count']} "
                f"observations outside [{outside['range'][0]:.3f}, {outside['range'][1]:.3f}])"
            )
    if "facies" in metrics:
        facies = metrics["facies"]
        reliability = facies["reliability"]
        deviation = (
            f"not judged ({reliability['max_deviation_not_judged']})"
            if "max_deviation_not_judged" in reliability
            else f"{reliability['max_deviation']:.3f}"
        )
        summary += (
            f"; facies accuracy of the posterior mode: {facies['mode_accuracy']:.3f}, "
            f"reliability max deviation: {deviation}"
        )
    if "training_range" in metrics:
        outside = metrics["training_range"]
        summary += (
            f"; values outside the training range of x: draws {outside['draws_outside']:.2%}, "
            f"held-out truths {outside['truths_outside']:.2%}"
        )
    calibration = metrics["calibration"]
    verdicts = [
        f"{name} {_verdict_word(calibration[key])}"
        for key, name in (
            ("finite", "finite draws"),
            ("coverage", "coverage"),
            ("misfit", "misfit"),
            ("sbc", "SBC"),
            ("tarp", "TARP"),
            ("training_range", "training range"),
        )
        if key in calibration
    ]
    summary += f"; calibration (false alarm {calibration['false_alarm']:g}): " + ", ".join(verdicts)
    print(f"{summary} ({metrics['num_observations']} held-out pairs); wrote {out}")
    for key in VERDICTS:
        for failure in calibration.get(key, {}).get("failures", [])[:5]:
            print(f"{key} failed: {failure}")
    for note in calibration["notes"]:
        print(f"note: {note}")
    _warn_not_finite(
        "metric",
        'metrics.json (its "not_finite" says why)',
        [(m["metric"], m["value"]) for m in not_finite_metrics(metrics)],
    )
    return 0


def _warn_if_layout_differs(trained: Any, path: str) -> None:
    """Warn when held-out pairs name other dims, coordinates or units than the training file.

    Both are :class:`~ppl_cvae.data.layout.DataLayout`; a file that names nothing (``.npz``)
    is not compared. Pairs in ``ohm m`` evaluated by a run trained on ``log10(ohm m)``, or
    depths in ft against m, give metrics of nothing.
    """
    from ppl_cvae.data.layout import read_layout

    held_out = read_layout(path)
    if held_out is None:
        return
    differs = []
    for which in ("x", "y"):
        if trained.units.get(which) != held_out.units.get(which):
            differs.append(
                f"{which} in {held_out.units.get(which)!r}, trained on "
                f"{trained.units.get(which)!r}"
            )
        dims = getattr(trained, f"{which}_dims"), getattr(held_out, f"{which}_dims")
        if dims[0] != dims[1]:
            differs.append(f"{which} on dims {dims[1]}, trained on {dims[0]}")
    for name, values in trained.coords.items():
        other = held_out.coords.get(name)
        if other is not None and tuple(other) != tuple(values):
            unit = held_out.units.get(name, "")
            differs.append(f"coordinate {name!r} ({unit or 'no unit'}) has other values")
    if differs:
        log.warning(
            "%s does not describe its pairs as the training file did: %s; are they in the same "
            "units and on the same grid?",
            path,
            "; ".join(differs),
        )


def _verdict_word(verdict: dict) -> str:
    """'failed', 'passed', or 'not judged' (too few held-out pairs for the test to fail)."""
    if verdict["failures"]:
        return "failed"
    return "passed" if verdict.get("judged", True) else "not judged"


# --------------------------------------------------------------------------- diagnose
def cmd_diagnose(args: argparse.Namespace) -> int:
    """Write the uncertainty report (summary CSV and plots) of a posterior file."""
    from inference.arviz_io import check_posterior, load_inference_data
    from inference.report import write_report

    out = Path(args.out)
    _check_out_dir(out, args.overwrite, [args.posterior], "diagnose")
    idata = load_inference_data(args.posterior)
    # z is optional: importance, NUTS and latent-free flows draw x alone
    check_posterior(idata, args.posterior, require=(("posterior", "x"), ("observed_data", "y")))
    with atomic_dir(out, overwrite=args.overwrite, command="diagnose") as tmp_dir:
        files = write_report(idata, tmp_dir, max_observations=args.max_observations)
        verdict = (
            _sampler_verdict(idata)
            + _truth_lines(tmp_dir / "summary.csv")
            + _misfit_verdict(tmp_dir / "misfit.csv", idata)
        )
    print(f"wrote {len(files)} files to {out}")
    for line in verdict:
        print(line)
    return 0


def _sampler_verdict(idata: Any) -> list[str]:
    """Return the verdict a correction stored in its file (``correction_summary``), one line.

    ``sample`` printed it when it ran; the file keeps it
    (:func:`inference.sample.sample_corrected`), so the report says, before the misfit, when
    the draws are not to be trusted (a misfit within the noise does not make draws of failed
    chains or collapsed weights a posterior).
    """
    attrs = idata["posterior"].attrs
    summary = attrs.get("correction_summary")
    if not isinstance(summary, str):
        return []
    ok = attrs.get("correction_ok")
    if ok is not None and not int(ok):
        return [f"sampler: WARNING: the correction FAILED, so its draws are not trustworthy "
                f"whatever their misfit: {summary}"]
    return [f"sampler: {summary}"]


def _truth_lines(path: Path) -> list[str]:
    """Lines saying how the posterior sits around the truth, one per variable that has one.

    From the ``true``, ``true_z`` and ``true_in_hdi`` columns of ``summary.csv``
    (:func:`inference.report.truth_columns`); nothing when the file holds no truth.
    """
    import pandas as pd

    table = pd.read_csv(path, index_col=0)
    if "true_in_hdi" not in table.columns:
        return []
    lines = []
    names = table.index.astype(str).str.split("[", n=1).str[0]
    for var in dict.fromkeys(names):
        rows = table[(names == var) & table["true"].notna()]
        if rows.empty:
            continue
        inside = rows["true_in_hdi"].astype(str).str.lower().eq("true")
        z = rows["true_z"].abs().dropna()
        spread = (
            f"; |z| median {z.median():.2f}, largest {z.max():.2f}" if len(z) else ""
        )
        lines.append(
            f"truth: {var} inside the 90% HDI at {int(inside.sum())} of {len(rows)} values "
            f"({inside.mean():.3f}){spread} (the values of one observation are correlated: "
            "calibration over many is ppl-cvae evaluate's)"
        )
    return lines


def _misfit_verdict(path: Path, idata: Any = None, most: int = 5) -> list[str]:
    """Lines saying which observations' draws misfit the data beyond the noise model.

    :func:`inference.diagnostics.ppc.check_ppc` of the draws' own misfit where the file has it
    (:func:`~inference.diagnostics.ppc.exact_misfit_table`, the figure ``ppl-cvae sample``
    judged), else of ``misfit.csv`` (:func:`inference.diagnostics.ppc.run_ppc`, estimated from
    the posterior predictive); nothing for a file without noise information.
    """
    import pandas as pd

    from inference.diagnostics.ppc import check_ppc, exact_misfit_table

    table = exact_misfit_table(idata) if idata is not None else None
    if table is None:
        table, source, allowed = pd.read_csv(path), "misfit.csv", "m data and S draws"
    else:
        source = "sample_stats.chi2_per_datum: each draw's own misfit, as ppl-cvae sample judged"
        allowed = "m data"
    rows = table[table["data"] == "all"]
    if not len(rows):
        return [
            "misfit: none (the file holds no posterior predictive: the run has no forward "
            "operator; sample with --problem to add one), so misfit.csv has its header only"
        ]
    if not bool(rows["whitened"].all()):
        return []
    failures = check_ppc(table)
    if not failures:
        return [
            f"misfit: the draws of all {len(rows)} observations fit the data as the noise "
            f"model allows (chi2 per datum within its plausible range for {allowed}, "
            f"false alarm 6e-5; {source}). This checks the fit to the data only: draws too "
            "wide, too narrow or biased within that range pass it; their calibration is "
            "judged by ppl-cvae evaluate on held-out pairs (SBC, coverage, TARP)"
        ]
    lines = [
        f"misfit: WARNING: the draws of {len(failures)} of {len(rows)} observations misfit the "
        f"data beyond the noise model (chi2 per datum outside its plausible range for "
        f"{allowed}; {source}):"
    ]
    lines += [f"  {message}" for message in failures[:most]]
    if len(failures) > most:
        lines.append(f"  ... and {len(failures) - most} more")
    return lines


# --------------------------------------------------------------------------- score
def cmd_score(args: argparse.Namespace) -> int:
    """Score a Two Birds posterior file (or a challenge submission) by the challenge's criteria."""
    from ppl_cvae.data.io import WRITTEN_BY_KEY
    from ppl_cvae.problems.two_birds import FUNCTION_PAIRS, score_samples

    inputs = [args.posterior]
    if args.out:
        _check_new_file(Path(args.out), args.overwrite, inputs, ".json", "score")
    if args.submission:
        if Path(args.posterior).suffix.lower() == ".pt":
            raise ConfigError("--submission writes the draws of a posterior .nc; this is a .pt")
        _check_new_file(Path(args.submission), args.overwrite, inputs, ".pt", "score")
        if args.out and Path(args.out).resolve() == Path(args.submission).resolve():
            raise ConfigError("--out and --submission name the same file")
    if Path(args.posterior).suffix.lower() == ".pt":
        x, y, functions = _submission_draws(args.posterior, args.functions)
    else:
        x, y, functions = _posterior_draws(args.posterior, args.functions)
    if not isinstance(functions, str) or functions not in FUNCTION_PAIRS:
        raise ConfigError(f"unknown functions {functions!r}; expected {sorted(FUNCTION_PAIRS)}")
    if tuple(x.shape[2:]) != (1, 50, 2) or tuple(y.shape) != (x.shape[1], 1, 50, 2):
        raise ShapeError(
            f"{args.posterior!r} does not hold Two Birds models and data "
            f"(x {tuple(x.shape)}, y {tuple(y.shape)})"
        )
    score = score_samples(x, y, FUNCTION_PAIRS[functions])
    report, not_finite = finite_or_null(score.to_dict())
    if not_finite:  # strict JSON: null, and the file says which and why
        report["not_finite"] = [
            {"score": path, "value": word, "why": "the draws or the data give no finite score"}
            for path, word in not_finite
        ]
    # the file names its command, so that --overwrite may replace it later (and nothing else)
    text = dumps_strict({**report, WRITTEN_BY_KEY: "ppl-cvae score"}, indent=2)
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            tmp.write_text(text)
    summary = {k: v for k, v in report.items() if not isinstance(v, list)}
    print(dumps_strict(summary, indent=2))
    where = f'{args.out} (its "not_finite" says why)' if args.out else "the printed summary"
    _warn_not_finite("score", where, not_finite)
    missing = int(score.num_observations_without_solutions or 0)
    if missing:
        log.warning(
            "%d of %d observations have no exact solution under the functions %r: their y were "
            "not made by them (wrong --functions, or a file sampled with the wrong problem?)",
            missing,
            y.shape[0],
            functions,
        )
    if args.submission:
        _write_submission(Path(args.submission), x, y)
        print(f"wrote the submission ({x.shape[0]} draws for each of {y.shape[0]} Y) to "
              f"{args.submission}")
    return 0


def _posterior_draws(path: str, functions: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Return the draws of every chain ``(C S, M, 1, 50, 2)``, the data and the functions."""
    from inference.arviz_io import check_posterior, load_inference_data

    idata = load_inference_data(path)
    check_posterior(idata, path, require=(("posterior", "x"), ("observed_data", "y")))
    if functions is None:
        spec: Any = idata.attrs.get("problem")  # str, dict or None (TypeError below)
        try:
            spec = json.loads(spec) if isinstance(spec, str) else spec
            functions = spec["functions"]
        except (TypeError, KeyError, json.JSONDecodeError) as err:
            raise DataError(
                f"{path!r} does not record its Two Birds functions; pass --functions"
            ) from err
    draws = torch.as_tensor(idata["posterior"]["x"].values)  # (C, S, M, *x_shape)
    x = draws.reshape(-1, *draws.shape[2:])  # every chain's draws, not chain 0's alone
    y = torch.as_tensor(idata["observed_data"]["y"].values)  # (M, 1, 50, 2)
    return x, y, functions


def _submission_draws(path: str, functions: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Return a challenge submission's draws ``(S, M, 1, 50, 2)`` grouped by their Y.

    The pairs are read under the safe rule of :func:`~ppl_cvae.data.io.load_pairs`; the draws
    of one observation are the rows with the same ``Y`` (in order of first appearance), and
    every observation must have as many.
    """
    from ppl_cvae.data.io import load_pairs

    if functions is None:
        raise ConfigError(f"{path!r} is a submission: name its function pair with --functions")
    x, y = load_pairs(path)
    if tuple(x.shape[1:]) != (1, 50, 2) or tuple(y.shape[1:]) != (1, 50, 2):
        raise ShapeError(
            f"{path!r} does not hold Two Birds pairs (X {tuple(x.shape)}, Y {tuple(y.shape)}); "
            "expected (N, 1, 50, 2) each"
        )
    unique, inverse = torch.unique(y.reshape(len(y), -1), dim=0, return_inverse=True)
    first = torch.full((len(unique),), len(y), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(y)), reduce="amin")
    order = torch.argsort(first)  # observations in order of first appearance
    counts = torch.bincount(inverse, minlength=len(unique))
    if bool((counts != counts[0]).any()):
        raise ShapeError(
            f"{path!r} holds {len(unique)} distinct Y with different numbers of X "
            f"({int(counts.min())} to {int(counts.max())}); a submission gives each Y as many"
        )
    groups = [torch.nonzero(inverse == int(k)).flatten() for k in order]
    draws = torch.stack([x[rows] for rows in groups], dim=1)  # (S, M, 1, 50, 2)
    return draws, y[torch.stack([rows[0] for rows in groups])], functions


def _write_submission(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    """Write draws ``(S, M, 1, 50, 2)`` as the challenge's TensorDataset, atomically.

    Rows ``m S .. m S + S - 1`` hold the ``S`` draws of observation ``m`` with its ``Y``
    repeated, float32, as the challenge's ``submission_sample.pt`` (50 blocks of 30).
    """
    from torch.utils.data import TensorDataset

    num_draws, num_obs = x.shape[:2]
    xs = x.detach().to(torch.float32).transpose(0, 1).reshape(num_obs * num_draws, 1, 50, 2)
    ys = y.detach().to(torch.float32).repeat_interleave(num_draws, dim=0)
    with atomic_path(path) as tmp:
        torch.save(TensorDataset(xs.contiguous(), ys.contiguous()), tmp)
