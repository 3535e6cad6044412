"""Which reference a run is judged against: an explicit file, the target's exact sampler, the
project's cached reference set (`boltzkit reference`) or the published set in ../shared/data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from boltzkit.app import rundir
from boltzkit.core.errors import EnvironmentProblem, UsageError
from boltzkit.targets import Target

__all__ = ["EnvironmentProblem", "UsageError"]  # what the CLI catches, re-exported


class Reference(NamedTuple):
    """Reference samples `[n, dim]` (float64, COM-free for particle systems) and where they came
    from ("exact sampler", "published ../shared/data", "project reference", "file")."""

    samples: Tensor | None
    source: str
    path: str | None


def resolve_reference(target: Target, target_name: str, *, path: str | Path | None = None,
                      n: int = 1000, custom_params: bool = False, seed: int = 0) -> Reference:
    """Reference samples for evaluation, in order of preference: an explicit file; the target's
    exact sampler (n draws, generator seeded with `seed`); the project's own cached reference
    (boltzkit.app.reference); the published set in ../shared/data (default parameters only).
    For exact samplers `n` is the sample size to compare, and 2n reference samples are drawn."""
    dims = (target.dim, target.n_particles, target.spatial_dim)
    if path is not None:
        try:
            return Reference(rundir.load_reference(path, *dims), "file",
                             str(Path(path).resolve()))
        except rundir.RunDirError as err:
            raise UsageError(str(err)) from None
    if target.has_exact_samples:
        # Twice the sample size: evaluate compares against one half and takes the
        # reference-vs-reference noise floor from disjoint halves.
        n_ref = 2 * n
        x = target.sample(n_ref, generator=torch.Generator().manual_seed(seed))
        x = target.remove_com(x.to(torch.float64))
        return Reference(x, f"exact sampler (n={n_ref}, seed={seed})", None)
    own = _project_reference(target_name, target)
    if own is not None:
        return own
    published = None if custom_params else rundir.published_reference(target_name)
    if published is not None:
        return Reference(rundir.load_reference(published, *dims), "published ../shared/data",
                         str(published))
    return Reference(None, "none", None)


def recorded_reference(target: Target, record: Mapping[str, Any],
                        path: str | Path | None = None) -> Reference:
    recorded = (record.get("reference") or {})
    if path is None and recorded.get("source") == "file":
        path = recorded.get("path")
    return resolve_reference(target, record["target"], path=path, n=int(record["n_samples"]),
                             custom_params=bool(record.get("target_params")),
                             seed=int(record["seed"]) + 1)


def project_reference_path(target_name: str, target: Target | None = None) -> Path | None:
    """The largest cached reference made by `boltzkit reference` for this target (matching
    `target`'s parameters when given), or None."""
    from boltzkit.app import reference as project_reference

    path = project_reference.cached_path(target_name, target)
    return Path(path) if path is not None and Path(path).exists() else None


def _project_reference(target_name: str, target: Target) -> Reference | None:
    path = project_reference_path(target_name, target)
    if path is None:
        return None
    samples = rundir.load_reference(path, target.dim, target.n_particles, target.spatial_dim)
    return Reference(samples, "project reference (boltzkit reference)", str(path))


# ---- for the CLI's tables -----------------------------------------------------------------
def resolve_reference_source(target: Target, target_name: str) -> str:
    """Where `boltzkit sample` would take this target's reference from (nothing is loaded)."""
    if target.has_exact_samples:
        return "exact"
    if project_reference_path(target_name, target) is not None:
        return "cached"
    if rundir.published_reference(target_name) is not None:
        return "published"
    return "none yet"
