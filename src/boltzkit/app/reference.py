"""Reference sample sets by parallel tempering, cached on disk with a record of how they were made.

    samples, metadata = make_reference("dw4", 10_000)        # or a Target instance

The run is `boltzkit.samplers.mcmc` with a `PTConfig` (`reference_config(name)`: the
sampler's preset with longer thinning; burn-in adapts step sizes and ladder, then the kernel is
frozen and exact); samples are the T = 1 replicas. The RNG is seeded with `seed` inside
`torch.random.fork_rng`, so a reference is reproducible and the caller's RNG state is left alone.

Cache: `$BOLTZKIT_CACHE/references/<name>-<hash>.npz` (BOLTZKIT_CACHE defaults to
~/.cache/boltzkit), the hash covering the target's fingerprint (its name, dimensions and
log_prob at fixed points, so any parameter change shows), the config, n_samples and the seed.
The file holds `samples` and `metadata` (JSON: config, seed, counts, acceptance, swap rates,
ladder, wall time, versions, and the checks below); a `.json` copy of the metadata sits beside it.

Checks recorded in the metadata: the configurational temperature (E|grad E|^2 / E[lap E],
should be 1; `boltzkit.evaluate.thermo`) and, for the published systems (dw4, lj13 with default
parameters, when ../shared/data is present), energy W2 and interatomic-distance TV against the
published test split, beside the same metrics between as many rows of the published validation
split and the test split (the noise floor at this sample size).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

import boltzkit
from boltzkit.samplers import Callback, null_callback
from boltzkit.samplers.mcmc import PTConfig, preset, preset_names, sample
from boltzkit.targets.base import Target

DEFAULT_N_SAMPLES = 10_000
_FINGERPRINT_POINTS = 16


class ReferenceSet(NamedTuple):
    """Reference samples `[n, dim]` (float64, COM-free for particles) and how they were made."""

    samples: Tensor
    metadata: dict[str, Any]


def reference_config(name: str) -> PTConfig:
    """The PT config for target `name`: preset "reference-<name>" of
    `boltzkit/presets/mcmc.toml` (long thinning on top of the target's sampler preset), else the
    PTConfig defaults."""
    key = f"reference-{name}"
    return preset(key, sampler="pt") if key in preset_names() else PTConfig()


def cache_dir() -> Path:
    """$BOLTZKIT_CACHE/references, by default ~/.cache/boltzkit/references."""
    root = os.environ.get("BOLTZKIT_CACHE") or Path.home() / ".cache" / "boltzkit"
    return Path(root) / "references"


def make_reference(
    target: Target | str,
    n_samples: int | None = None,
    *,
    config: PTConfig | None = None,
    sets: Sequence[str] = (),
    params: Sequence[str] | Mapping[str, Any] = (),
    seed: int = 0,
    callback: Callback = null_callback,
    cache: Path | str | None = None,
    refresh: bool = False,
) -> ReferenceSet:
    """Reference samples of `target` by parallel tempering (molecular targets: OpenMM MD,
    `app.md_reference.make_md_reference`), from the cache when present.

    Args:
        target: a Target, or a registered name built with `params` (`key=value` strings or a
            mapping).
        n_samples: number of samples (default 10,000).
        config: the PT config (default `reference_config(name)`); `sets` are `key=value`
            overrides applied on top.
        seed: seeds the run (recorded); the caller's RNG state is restored afterwards.
        callback: progress events, passed to the sampler.
        cache: cache directory (default `cache_dir()`); `refresh=True` regenerates.
    """
    from boltzkit.core.config import override

    target = _build(target, params)
    n_samples = DEFAULT_N_SAMPLES if n_samples is None else int(n_samples)
    if getattr(target, "is_molecule", False):  # OpenMM Langevin MD / replica exchange
        if config is not None:
            raise ValueError("molecular references run MD: pass MDConfig overrides as `sets`")
        from boltzkit.app.md_reference import make_md_reference

        return make_md_reference(target, n_samples, sets=sets, seed=seed, callback=callback,
                                 cache=cache, refresh=refresh)
    config = override(config or reference_config(target.name), list(sets))
    fingerprint = target_fingerprint(target)
    key = {"fingerprint": fingerprint, "config": dataclasses.asdict(config),
           "n_samples": n_samples, "seed": seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache or cache_dir()) / f"{target.name}-{digest}.npz"
    if path.exists() and not refresh:
        return load(path)
    samples, metadata = _generate(target, n_samples, config, seed, callback)
    metadata.update(key, path=str(path), target=target.describe())
    metadata["checks"] = _checks(target, samples)
    save(path, samples, metadata)
    return ReferenceSet(samples, metadata)


def cached_path(name: str, target: Target | None = None, cache: Path | str | None = None
                ) -> Path | None:
    """The cached reference of target `name` with the most samples (matching `target`'s
    fingerprint when given, else any parameters), or None."""
    fingerprint = None if target is None else target_fingerprint(target)
    best, best_n = None, -1
    for path in sorted(Path(cache or cache_dir()).glob(f"{name}-*.json")):
        if path.stem.rsplit("-", 1)[0] != name:  # "aldp-*" also matches "aldp-fab-*"
            continue
        meta = json.loads(path.read_text())
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            continue
        if meta.get("n_samples", 0) > best_n and path.with_suffix(".npz").exists():
            best, best_n = path.with_suffix(".npz"), meta["n_samples"]
    return best


def save(path: Path, samples: Tensor, metadata: dict[str, Any]) -> None:
    """Writes samples and metadata to `path` (.npz) and the metadata to `path` (.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(metadata, indent=1, default=str)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, samples=samples.detach().cpu().numpy(), metadata=np.array(text))
    tmp.replace(path)
    path.with_suffix(".json").write_text(text)


def load(path: Path | str) -> ReferenceSet:
    """A reference written by `save`."""
    with np.load(path) as data:
        samples = torch.as_tensor(data["samples"], dtype=torch.float64)
        metadata = json.loads(str(data["metadata"]))
    return ReferenceSet(samples, metadata)


def target_fingerprint(target: Target) -> str:
    """Hash of name, dimensions, temperature and log_prob at fixed points (not counted)."""
    quiet = target.uncounted()
    gen = torch.Generator().manual_seed(12345)
    x = quiet.remove_com(torch.randn(_FINGERPRINT_POINTS, target.dim, generator=gen,
                                     dtype=torch.float64))
    with torch.no_grad():
        values = quiet.log_prob(x).tolist()
    facts = {k: v for k, v in target.describe().items() if k != "log_Z"}
    payload = json.dumps({"facts": facts, "log_prob": [f"{v:.10g}" for v in values]},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---- internals ----------------------------------------------------------------------------
def _build(target: Target | str, params: Sequence[str] | Mapping[str, Any]) -> Target:
    if isinstance(target, Target):
        if params:
            raise ValueError("params apply to a target given by name, not to a Target")
        return target
    from boltzkit import targets

    return targets.build(target, params)


def _generate(target: Target, n_samples: int, config: PTConfig, seed: int,
              callback: Callback) -> tuple[Tensor, dict[str, Any]]:
    devices = [torch.device(config.device).index or 0] if config.device.startswith("cuda") else []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        on_device = target if target.device == torch.device(config.device) else target.to(
            config.device)
        result = sample(on_device, config, n_samples=n_samples, budget=None, callback=callback)
    d = result.diagnostics
    metadata = {
        "method": "parallel tempering (boltzkit.mc.tempering), T = 1 replicas after burn-in",
        "counts": result.counts,
        "acceptance": d["acceptance_per_temperature"],
        "swap_rates": d["swap_rates"],
        "temperatures": d["temperatures"],
        "step_size": d["step_size"],
        "n_steps": d["n_steps"],
        "n_burn_in_steps": d["n_burn_in_steps"],
        "n_nonfinite": d["n_nonfinite"],
        "wall_s": time.perf_counter() - started,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "boltzkit_version": boltzkit.__version__,
        "torch_version": torch.__version__,
    }
    return result.samples.to(dtype=torch.float64, device="cpu"), metadata  # kept on the host


def _checks(target: Target, samples: Tensor) -> dict[str, Any]:
    quiet = target.uncounted()
    checks = _configurational_temperature(quiet, samples)
    checks.update(_against_published(quiet, samples))
    return checks


def _configurational_temperature(target: Target, samples: Tensor) -> dict[str, Any]:
    """theta = E|grad E|^2 / E[lap E] (1 for samples of the target) and its SE, which assumes
    independent samples."""
    try:
        from boltzkit.evaluate.thermo import configurational_temperature
    except ImportError:
        return {"configurational_temperature": "unavailable (no boltzkit.evaluate.thermo)"}
    try:
        theta, se = configurational_temperature(target, samples)
    except ValueError as err:  # non-finite gradients: recorded, the samples are kept
        return {"configurational_temperature": f"unavailable ({err})"}
    return {"configurational_temperature": float(theta), "configurational_temperature_se":
            float(se)}


def _against_published(target: Target, samples: Tensor) -> dict[str, Any]:
    """Energy W2 and distance TV vs the published test split (and its val-vs-test floor)."""
    from boltzkit import targets
    from boltzkit.app import rundir

    test, val = rundir.published_reference(target.name, 0), rundir.published_reference(
        target.name, 1)
    if test is None or not target.is_particle_system:
        return {}
    try:
        default = targets.get(target.name)
    except (KeyError, ImportError):
        return {"published": f"not compared (no registered target {target.name!r})"}
    if target_fingerprint(target) != target_fingerprint(default):
        return {"published": "not compared (target parameters differ from the published set)"}
    dims = (target.dim, target.n_particles, target.spatial_dim)
    published = rundir.load_reference(test, *dims)
    out: dict[str, Any] = {"published_file": test.name, "published_n": len(published)}
    out.update(_compare(target, samples, published, "vs_published"))
    if val is not None:  # the floor at our sample size: the first n validation rows
        floor_set = rundir.load_reference(val, *dims)[: len(samples)]
        out.update(_compare(target, floor_set, published, "published_val_vs_test"))
        out["published_val_n"] = len(floor_set)
    return out


def _compare(target: Target, x: Tensor, ref: Tensor, label: str) -> dict[str, Any]:
    from boltzkit.evaluate import metrics

    with torch.no_grad():
        e_x, n_bad = metrics.finite_energies(target.energy(x))
        e_ref, _ = metrics.finite_energies(target.energy(ref))
    d = (metrics.interatomic_distances(x, target.n_particles, target.spatial_dim),
         metrics.interatomic_distances(ref, target.n_particles, target.spatial_dim))
    return {f"energy_w2_{label}": metrics.energy_w2(e_x, e_ref),
            f"distance_tv_{label}": metrics.distance_tv(*d).tv,
            f"n_nonfinite_energies_{label}": n_bad}


__all__ = ["ReferenceSet", "cache_dir", "cached_path", "load", "make_reference",
           "reference_config", "save", "target_fingerprint"]
