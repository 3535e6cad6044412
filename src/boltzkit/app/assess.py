"""Evaluating a finished run directory: metrics against the reference with noise floors, the
sanity check's warnings, figures and summary.md (`evaluate_run`; `boltzkit evaluate`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boltzkit import targets
from boltzkit.app import rundir, summary
from boltzkit.core.errors import EnvironmentProblem, UsageError
from boltzkit.evaluate import sanity
from boltzkit.targets import Target

__all__ = ["EnvironmentProblem", "UsageError"]  # what the CLI catches, re-exported
from boltzkit.app.references import Reference, recorded_reference
from boltzkit.core.seeding import seed_everything


def evaluate_run(run_dir: str | Path, *, reference: Reference | None = None,
                 reference_path: str | Path | None = None, figures: bool = True
                 ) -> dict[str, Any]:
    """(Re)computes metrics.json (and the figures) of a finished run directory.

    The global RNGs are seeded with the run's seed first, so evaluating a run twice gives the
    same numbers. Samples with non-finite coordinates are dropped and counted
    (`n_nonfinite_samples`).
    """
    run_dir = Path(run_dir)
    try:
        record = rundir.read_record(run_dir, require=rundir.RECORD_KEYS)
        x_np, log_w_np, log_Z = rundir.read_samples(run_dir)
    except rundir.RunDirError as err:
        raise UsageError(str(err)) from None
    target = targets.build(record["target"], record.get("target_params", {})).uncounted()
    if reference is None:
        reference = recorded_reference(target, record, reference_path)
    x = torch.as_tensor(x_np)
    if x.ndim != 2 or x.shape[1] != target.dim:
        raise UsageError(f"{run_dir}: samples have shape {tuple(x.shape)}, target "
                         f"{record['target']!r} needs [n, {target.dim}]")
    log_w = None if log_w_np is None else torch.as_tensor(log_w_np)
    seed_everything(int(record["seed"]))
    metrics = _evaluate(x, log_w, target, reference.samples, seed=int(record["seed"]))
    if log_Z is not None:
        metrics["sampler_log_Z"] = log_Z
        if target.log_Z is not None:
            metrics["sampler_log_Z_error"] = log_Z - float(target.log_Z)
    _use_sampler_log_Z_se(metrics, _read_diagnostics(run_dir))
    counts = record.get("counts") or {}
    metrics.update({f"count_{k}": v for k, v in counts.items()})
    metrics["reference_source"] = reference.source
    written = rundir.write_metrics(run_dir, metrics)
    finite = x[torch.isfinite(x).all(dim=1)]
    energies, ref_energies = _energies(target, finite, reference.samples)
    warnings = sanity.warnings_for(written, energies, ref_energies, target.typical_energy_max)
    rundir.update_record(run_dir, warnings=warnings)
    if figures:
        draw_figures(run_dir, finite, target, reference.samples, energies, ref_energies)
    summary.write(run_dir, {**record, "warnings": warnings}, written, _read_diagnostics(run_dir),
                  warnings)
    return written


def _energies(target: Target, x: Tensor, reference: Tensor | None
              ) -> tuple[Tensor, Tensor | None]:
    with torch.no_grad():
        energies = target.energy(x.to(torch.float64))
        ref = None if reference is None else target.energy(reference.to(torch.float64))
    return energies, ref


def _read_diagnostics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / rundir.DIAGNOSTICS_FILE
    if not path.exists():
        return {}
    diagnostics = rundir.read_json_object(path)
    return diagnostics.get("diagnostics") or {}


def _use_sampler_log_Z_se(metrics: dict[str, Any], diagnostics: Mapping[str, Any]) -> None:
    """A sampler that reports its own log Z standard error (SMC: from independent replicas)
    overrides the delta-method one of its weights, which after resampling measures nothing;
    None when it has none (a single replica)."""
    if "log_Z_se" not in diagnostics:
        return
    metrics["sampler_log_Z_se"] = diagnostics["log_Z_se"]
    if "log_Z_se" in metrics:
        metrics["log_Z_se"] = diagnostics["log_Z_se"]


def draw_figures(run_dir: Path, x: Tensor, target: Target, reference: Tensor | None,
                 energies: Tensor, reference_energies: Tensor | None) -> None:
    from boltzkit.app import plots  # matplotlib only when figures are asked for

    plots.run_figures(run_dir, x, energies, reference=reference,
                      reference_energies=reference_energies, n_particles=target.n_particles,
                      spatial_dim=target.spatial_dim, diagnostics=_read_diagnostics(run_dir),
                      molecule=bool(getattr(target, "is_molecule", False)))


# ---- internals ----------------------------------------------------------------------------
def _evaluate(x: Tensor, log_w: Tensor | None, target: Target, reference: Tensor | None,
              seed: int) -> dict[str, Any]:
    """`boltzkit.evaluate.evaluation.evaluate` with a generator seeded from the run (reproducible
    subsets)."""
    from boltzkit.evaluate import evaluation

    return dict(evaluation.evaluate(x, target, reference=reference, log_w=log_w,
                                 generator=torch.Generator().manual_seed(seed)))
