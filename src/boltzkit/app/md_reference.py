"""Molecular-dynamics reference samples of a molecular target (OpenMM Langevin dynamics).

The published alanine-dipeptide references (../shared/REFERENCE.md, "Alanine dipeptide") come
from Langevin dynamics with friction 1/ps and a 2 fs step with H-bond constraints, one frame per
ps. `run_md` runs the same dynamics on the target's own OpenMM system: LangevinMiddleIntegrator
(Zhang et al., J. Phys. Chem. A 123, 6056 (2019)), which samples the Boltzmann density of the
system's potential at the given temperature, on the constrained manifold where the system has
constraints (`aldp`) -- the density a generative model must match with those bonds fixed.
Without constraints (`aldp-fab`) the 2 fs step is too long for X-H bonds: the default step is
then 0.5 fs.

Frames are correlated (one per `steps_per_frame` steps): standard errors of their averages
need a block bootstrap, not the i.i.d. formula.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

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
    """

    temperature_K: float | None = None
    n_frames: int = 1000
    steps_per_frame: int = 500
    n_equilibration_steps: int = 5000
    friction_per_ps: float = 1.0
    timestep_fs: float | None = None
    seed: int = 0
    platform: str = "CPU"


class MDTrajectory(NamedTuple):
    """Frames of an MD run.

    positions `[n_frames, dim]` float64 in nm; potential_energy `[n_frames]` in kJ/mol (OpenMM's);
    n_steps: integration steps run in all (each one force evaluation); wall_s: seconds; config:
    the settings with the temperature and step resolved (for run records).
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
    if not (kelvin > 0 and step > 0 and config.n_frames >= 0 and config.steps_per_frame >= 1):
        raise ValueError(f"invalid MD settings: {config}")
    return MDConfig(**{**asdict(config), "temperature_K": float(kelvin),
                       "timestep_fs": float(step)})


def run_md(target: MolecularTarget, config: MDConfig = MDConfig(), start: Tensor | None = None,
           progress: Callable[[int, int], None] | None = None) -> MDTrajectory:
    """Langevin MD of the target's OpenMM system; see the module docstring.

    Args:
        target: a molecular target (`aldp`, `aldp-fab`).
        config: the MD settings.
        start: initial coordinates `[dim]` in nm; default the target's structure, minimised.
        progress: called as progress(frames_done, n_frames) after every frame.
    """
    import openmm
    import openmm.unit as unit

    config = resolved(config, target)
    integrator = openmm.LangevinMiddleIntegrator(
        config.temperature_K * unit.kelvin, config.friction_per_ps / unit.picosecond,
        config.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(config.seed)
    platform = openmm.Platform.getPlatformByName(config.platform)
    options = {"Threads": "1"} if config.platform == "CPU" else {}
    context = openmm.Context(target.molecule.system, integrator, platform, options)
    xyz = target.molecule.positions if start is None else start.detach().view(-1, 3).numpy()
    context.setPositions(np.asarray(xyz, dtype=np.float64))
    context.applyConstraints(1e-8)
    if start is None:
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 500)
    context.setVelocitiesToTemperature(config.temperature_K * unit.kelvin, config.seed)
    begin = time.perf_counter()
    integrator.step(config.n_equilibration_steps)
    frames, energies = [], []
    for k in range(config.n_frames):
        integrator.step(config.steps_per_frame)
        state = context.getState(getPositions=True, getEnergy=True)
        frames.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer).reshape(-1))
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        if progress is not None:
            progress(k + 1, config.n_frames)
    n_steps = config.n_equilibration_steps + config.n_frames * config.steps_per_frame
    return MDTrajectory(torch.as_tensor(np.array(frames).reshape(-1, target.dim)),
                        torch.as_tensor(np.array(energies, dtype=np.float64)),
                        n_steps, time.perf_counter() - begin, asdict(config))


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
