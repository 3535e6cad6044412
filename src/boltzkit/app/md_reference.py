"""Molecular-dynamics reference samples of a molecular target (OpenMM Langevin dynamics).

The published alanine-dipeptide references (../shared/REFERENCE.md, "Alanine dipeptide") come
from Langevin dynamics with friction 1/ps and a 2 fs step with H-bond constraints, one frame per
ps. `run_md` runs the same dynamics on the target's own OpenMM system: LangevinMiddleIntegrator
(Zhang et al., J. Phys. Chem. A 123, 6056 (2019)), which samples the Boltzmann density of the
system's potential at the given temperature, on the constrained manifold where the system has
constraints (`aldp`) -- the density a generative model must match with those bonds fixed.
Without constraints (`aldp-fab`) the 2 fs step is too long for X-H bonds: the default step is
then 0.5 fs.

With `n_replicas` > 1 the run is replica exchange over a geometric temperature ladder
(`app/replica_exchange.py`): at 300 K plain MD of `aldp` stays in phi < 0 for nanoseconds, and
the exchanges with hotter replicas carry the 300 K replica into phi > 0.

Frames are correlated (one per `steps_per_frame` steps): standard errors of their averages
need batch means (or a block bootstrap), not the i.i.d. formula.

`make_md_reference` is the cached, fingerprinted reference of `boltzkit reference aldp`
(`app/reference.py` dispatches molecular targets here): the frames, and in the metadata the
energy mean and phi > 0 population with batch-means SEs, the configurational temperature and
the MD facts; a checkpoint beside the cache file lets an interrupted reference resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from boltzkit.app.reference import ReferenceSet
from boltzkit.app.replica_exchange import Replicas, ladder
from boltzkit.samplers import Callback, null_callback
from boltzkit.targets.molecules import MolecularTarget


@dataclass(frozen=True)
class MDConfig:
    """Langevin MD settings.

    Attributes:
        temperature_K: bath temperature; None: the target's (reference temperature times its
            tempering factor).
        n_frames: frames recorded after equilibration.
        steps_per_frame: integration steps between frames (500 x 2 fs = 1 ps, as published).
        n_equilibration_steps: steps discarded after the energy minimisation.
        friction_per_ps: Langevin friction coefficient (1/ps).
        timestep_fs: integration step; None: 2 fs with constraints, 0.5 fs without.
        seed: the integrator's and the initial velocities' random seed.
        platform: OpenMM platform ("CPU", or "Reference" for double precision).
        n_replicas: replicas on a geometric temperature ladder from `temperature_K` to
            `temperature_max_K`, exchanging after every frame (`replica_exchange`); 1: plain MD.
        temperature_max_K: the hottest replica's temperature (n_replicas > 1).
        checkpoint_every_frames: frames between checkpoints (when a checkpoint file is given).
    """

    temperature_K: float | None = None
    n_frames: int = 1000
    steps_per_frame: int = 500
    n_equilibration_steps: int = 5000
    friction_per_ps: float = 1.0
    timestep_fs: float | None = None
    seed: int = 0
    platform: str = "CPU"
    n_replicas: int = 1
    temperature_max_K: float = 600.0
    checkpoint_every_frames: int = 100


class MDTrajectory(NamedTuple):
    """Frames of an MD run.

    positions `[n_frames, dim]` float64 in nm; potential_energy `[n_frames]` in kJ/mol (OpenMM's);
    n_steps: integration steps run in all, over every replica (each one force evaluation);
    wall_s: seconds; config: the settings with the temperature and step resolved, plus the
    ladder `temperatures_K` and the neighbour `exchange_rates` (for run records).
    """

    positions: Tensor
    potential_energy: Tensor
    n_steps: int
    wall_s: float
    config: dict[str, Any]


def resolved(config: MDConfig, target: MolecularTarget) -> MDConfig:
    """The config with `temperature_K` and `timestep_fs` filled in from the target."""
    kelvin = config.temperature_K
    if kelvin is None:
        if isinstance(target.temperature, Tensor):
            raise ValueError("MD needs one temperature; the target carries a tensor of them")
        kelvin = target.reference_temperature * float(target.temperature)
    step = config.timestep_fs
    if step is None:
        step = 2.0 if target.molecule.constraints else 0.5
    if not (kelvin > 0 and step > 0 and config.n_frames >= 0 and config.steps_per_frame >= 1
            and config.n_replicas >= 1 and config.checkpoint_every_frames >= 1
            and (config.n_replicas == 1 or config.temperature_max_K > kelvin)):
        raise ValueError(f"invalid MD settings: {config}")
    return MDConfig(**{**asdict(config), "temperature_K": float(kelvin),
                       "timestep_fs": float(step)})


def run_md(target: MolecularTarget, config: MDConfig = MDConfig(), start: Tensor | None = None,
           progress: Callable[[int, int], None] | None = None,
           checkpoint: Path | None = None) -> MDTrajectory:
    """Langevin MD (or replica exchange, `config.n_replicas` > 1) of the target's OpenMM system;
    see the module docstring. Frames are those of the coldest replica (`temperature_K`).

    Args:
        target: a molecular target (`aldp`, `aldp-fab`).
        config: the MD settings.
        start: initial coordinates `[dim]` in nm; default the target's structure, minimised.
        progress: called as progress(frames_done, n_frames) after every frame (and once on
            resuming).
        checkpoint: a file for the run's state, written every `checkpoint_every_frames` frames
            and on KeyboardInterrupt (the state after the last whole frame, so an interrupt
            mid-step loses that frame's steps); a run finding it resumes from it (same config),
            and deletes it when done.
    """
    config = resolved(config, target)
    temperatures = ladder(config.temperature_K, config.temperature_max_K, config.n_replicas)
    replicas = Replicas(target.molecule.system, temperatures, config.friction_per_ps,
                        config.timestep_fs, config.seed, config.platform)
    run = _resume(checkpoint, config, replicas)
    if run is None:
        xyz = target.molecule.positions if start is None else start.detach().view(-1, 3).numpy()
        replicas.start(xyz, minimise=start is None)
        began = time.perf_counter()
        replicas.step(config.n_equilibration_steps)
        run = _Progress([], [], time.perf_counter() - began)
    elif progress is not None:
        progress(len(run.frames), config.n_frames)
    began = time.perf_counter() - run.wall_s
    # The state after the last whole frame: what an interrupt (even mid-step) writes.
    last = (replicas.snapshot(), len(run.frames)) if checkpoint is not None else None
    try:
        for k in range(len(run.frames), config.n_frames):
            replicas.step(config.steps_per_frame)
            if config.n_replicas > 1:
                replicas.exchange(k % 2)
            xyz_k, e_k = replicas.frame(0)
            run.frames.append(xyz_k.reshape(-1))
            run.energies.append(e_k)
            if checkpoint is not None:
                last = (replicas.snapshot(), k + 1)
                if (k + 1) % config.checkpoint_every_frames == 0:
                    _save_checkpoint(checkpoint, config, *last, run, time.perf_counter() - began)
            if progress is not None:
                progress(k + 1, config.n_frames)
    except KeyboardInterrupt:
        if last is not None:
            _save_checkpoint(checkpoint, config, *last, run, time.perf_counter() - began)
        raise
    n_steps = config.n_replicas * (config.n_equilibration_steps
                                   + config.n_frames * config.steps_per_frame)
    record = {**asdict(config), "temperatures_K": temperatures,
              "exchange_rates": replicas.stats.rates()}
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return MDTrajectory(torch.as_tensor(np.array(run.frames).reshape(-1, target.dim)),
                        torch.as_tensor(np.array(run.energies, dtype=np.float64)),
                        n_steps, time.perf_counter() - began, record)


class _Progress(NamedTuple):
    frames: list[np.ndarray]
    energies: list[float]
    wall_s: float


def _key(config: MDConfig) -> str:
    """What a checkpoint must agree with (everything but the checkpoint interval)."""
    facts = {k: v for k, v in asdict(config).items() if k != "checkpoint_every_frames"}
    return json.dumps(facts, sort_keys=True)


def _save_checkpoint(path: Path, config: MDConfig, snap: dict[str, Any], n_done: int,
                     run: _Progress, wall_s: float) -> None:
    """Atomically writes a replicas' snapshot and the first `n_done` frames to `path` (.npz)."""
    run = _Progress(run.frames[:n_done], run.energies[:n_done], wall_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    n_atoms3 = len(run.frames[0]) if run.frames else 0
    np.savez(tmp, config=np.array(_key(config)), wall_s=np.array(wall_s),
             frames=np.array(run.frames, dtype=np.float64).reshape(len(run.frames), n_atoms3),
             energies=np.array(run.energies, dtype=np.float64), rng=np.array(snap["rng"]),
             attempted=np.array(snap["attempted"], dtype=np.int64),
             accepted=np.array(snap["accepted"], dtype=np.int64),
             **{f"context_{k}": blob for k, blob in enumerate(snap["contexts"])})
    tmp.replace(path)


def _resume(path: Path | None, config: MDConfig, replicas: Replicas) -> _Progress | None:
    """The run stored in checkpoint `path` with `replicas` restored, or None (no file)."""
    if path is None or not path.exists():
        return None
    with np.load(path) as data:
        if str(data["config"]) != _key(config):
            raise ValueError(f"checkpoint {path} was written with other MD settings; delete it "
                             "or use those settings")
        contexts = [data[f"context_{k}"] for k in range(config.n_replicas)]
        replicas.restore({"contexts": contexts, "rng": str(data["rng"]),
                          "attempted": data["attempted"].tolist(),
                          "accepted": data["accepted"].tolist()})
        return _Progress(list(data["frames"]), data["energies"].tolist(), float(data["wall_s"]))


def summarise(target: MolecularTarget, trajectory: MDTrajectory, n_blocks: int = 10
              ) -> dict[str, float]:
    """Reference facts of an MD run: mean potential energy (kJ/mol) and the phi > 0 population,
    each with its batch-means SE over `n_blocks` contiguous blocks (the frames are correlated),
    the D-alanine fraction (MD cannot change chirality: 0 from the shipped L structure), the
    frame count, integration steps and steps per second."""
    from boltzkit.evaluate import molecular

    energy = trajectory.potential_energy
    size = len(energy) // n_blocks
    if size < 1:
        raise ValueError(f"{len(energy)} frames cannot fill {n_blocks} blocks")
    means = energy[: size * n_blocks].view(n_blocks, size).mean(1)
    pop = molecular.phi_positive_population(molecular.torsions(trajectory.positions),
                                            n_blocks=n_blocks)
    return {"n_frames": float(len(energy)), "energy_mean_kJ_mol": float(energy.mean()),
            "energy_mean_se_batch_means": float(means.std() / n_blocks**0.5),
            "phi_positive_fraction": pop.fraction, "phi_positive_fraction_se_batch_means": pop.se,
            "d_alanine_fraction": molecular.d_alanine_fraction(trajectory.positions).fraction,
            "n_steps": float(trajectory.n_steps),
            "steps_per_second": trajectory.n_steps / max(trajectory.wall_s, 1e-9)}


# Frames of the configurational-temperature check (its Laplacians cost ~0.1 s per frame).
_CHECK_FRAMES = 200


def make_md_reference(target: MolecularTarget, n_samples: int, *, sets: Sequence[str] = (),
                      seed: int = 0, callback: Callback = null_callback,
                      cache: Path | str | None = None, refresh: bool = False) -> ReferenceSet:
    """MD reference frames of a molecular target (n_samples frames at its temperature), from
    the cache when present; `sets` are `key=value` overrides of `MDConfig` (n_frames is
    n_samples, seed is `seed`). Resumes from the checkpoint an interrupted call left."""
    from boltzkit.app import reference
    from boltzkit.core.config import override
    from boltzkit.core.errors import UsageError

    fixed = {"temperature_K": "the target's temperature (--temperature)",
             "n_frames": "n_samples (--n-samples)", "seed": "the seed (--seed)"}
    for item in sets:
        key = str(item).split("=", 1)[0].strip()
        if key in fixed:
            raise UsageError(f"--set {key}=... is not an MD reference setting: it is "
                             f"{fixed[key]}")
    if n_samples < 2:
        raise UsageError(f"an MD reference needs at least 2 frames, got {n_samples}")
    config = override(MDConfig(), list(sets))
    config = resolved(replace(config, n_frames=int(n_samples), seed=seed), target)
    key = {"fingerprint": reference.target_fingerprint(target), "method": "md",
           "config": json.loads(_key(config)), "n_samples": int(n_samples), "seed": seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache or reference.cache_dir()) / f"{target.name}-{digest}.npz"
    if path.exists() and not refresh:
        return reference.load(path)
    trajectory = _run_with_events(target, config, callback,
                                  path.with_name(path.stem + ".checkpoint.npz"))
    metadata = {**key, "path": str(path), "target": target.describe(),
                **_md_facts(trajectory)}
    metadata["checks"] = {**summarise(target, trajectory, n_blocks=min(10, n_samples)),
                          **_configurational_temperature(target, trajectory.positions)}
    reference.save(path, trajectory.positions, metadata)
    return reference.ReferenceSet(trajectory.positions, metadata)


def _run_with_events(target: MolecularTarget, config: MDConfig, callback: Callback,
                     checkpoint: Path) -> MDTrajectory:
    """run_md with "start" / "advance" / "end" progress events (one per frame)."""
    label = f"MD {target.name} {config.temperature_K:g} K"
    if config.n_replicas > 1:
        label += f" ({config.n_replicas} replicas to {config.temperature_max_K:g} K)"
    callback("start", total=config.n_frames, unit="frame", description=label)
    if checkpoint.exists():
        callback("log", message=f"resuming from {checkpoint}")
    last = [0]

    def progress(done: int, total: int) -> None:
        callback("advance", n=done - last[0])
        last[0] = done

    trajectory = run_md(target, config, progress=progress, checkpoint=checkpoint)
    callback("end")
    return trajectory


def _md_facts(trajectory: MDTrajectory) -> dict[str, Any]:
    import openmm

    import boltzkit

    return {"method": "OpenMM LangevinMiddleIntegrator" + (
                " replica exchange" if trajectory.config["n_replicas"] > 1 else "")
            + ", frames of the coldest replica after equilibration",
            "md": trajectory.config, "counts": {"n_force_evals": trajectory.n_steps},
            "wall_s": trajectory.wall_s, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "boltzkit_version": boltzkit.__version__, "openmm_version": openmm.__version__}


def _configurational_temperature(target: MolecularTarget, positions: Tensor) -> dict[str, Any]:
    """theta = E|grad U|^2 / E[lap U] on up to _CHECK_FRAMES evenly spaced frames (1 for
    unconstrained samples; with holonomic constraints the Cartesian identity does not hold,
    so the value is recorded with a note and not expected to be 1)."""
    from boltzkit.evaluate.thermo import configurational_temperature

    if len(positions) < 2:
        return {}
    stride = max(1, len(positions) // _CHECK_FRAMES)
    theta = configurational_temperature(target, positions[::stride][:_CHECK_FRAMES])
    out: dict[str, Any] = {"configurational_temperature": theta.mean,
                           "configurational_temperature_se": theta.se,
                           "configurational_temperature_n_frames": len(
                               positions[::stride][:_CHECK_FRAMES])}
    if target.molecule.constraints:
        out["configurational_temperature_note"] = (
            "not expected to be 1: the H-bond constraints make the Cartesian identity "
            "E|grad U|^2 = E lap U inexact")
    return out
