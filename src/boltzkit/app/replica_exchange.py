"""Langevin MD of replicas of one OpenMM system over a temperature ladder, with exchanges.

Replica k runs LangevinMiddleIntegrator at T_k (T_0 < T_1 < ... , geometric from T_0 to T_max).
After every `steps_per_frame` steps, neighbours (k, k + 1) exchange configurations (positions and
velocities, the velocities rescaled by sqrt(T_new / T_old)) with probability

    min(1, exp((beta_k - beta_{k+1}) (E_k - E_{k+1}))),   beta = 1 / (k_B T),

the standard parallel-tempering criterion (Sugita & Okamoto, Chem. Phys. Lett. 314, 141 (1999)),
which leaves the product of the replicas' Boltzmann densities invariant; the even pairs
(0, 1), (2, 3), ... are tried after even frames and the odd pairs after odd frames (deterministic
even-odd alternation, Okabe et al., Chem. Phys. Lett. 335, 435 (2001)). With one replica this is
plain Langevin MD.

The whole state (each context's OpenMM checkpoint: positions, velocities, integrator RNG; the
exchange RNG; the frame count; the frames so far) round-trips through `snapshot` / `restore`, so
an interrupted run resumes where it stopped and gives the frames an uninterrupted run gives.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boltzkit.targets.molecules.systems import K_B  # kJ/(mol K)


def ladder(temperature_K: float, temperature_max_K: float, n_replicas: int) -> list[float]:
    """Geometric temperatures T_k = T_0 (T_max / T_0)^(k / (n - 1)), k = 0..n-1 (T_0 alone for
    n = 1)."""
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be at least 1, got {n_replicas}")
    if n_replicas == 1:
        return [float(temperature_K)]
    if not temperature_max_K > temperature_K:
        raise ValueError(f"temperature_max_K ({temperature_max_K}) must exceed the temperature "
                         f"({temperature_K}) for replica exchange")
    ratio = temperature_max_K / temperature_K
    return [float(temperature_K * ratio ** (k / (n_replicas - 1))) for k in range(n_replicas)]


def log_acceptance(beta_i: float, beta_j: float, energy_i: float, energy_j: float) -> float:
    """log of the exchange acceptance ratio, (beta_i - beta_j) (E_i - E_j) (energies in kJ/mol,
    beta in mol/kJ)."""
    return (beta_i - beta_j) * (energy_i - energy_j)


@dataclass
class ExchangeStats:
    """Attempted and accepted exchanges per neighbour pair (k, k + 1)."""

    attempted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [a / t if t else float("nan") for a, t in zip(self.accepted, self.attempted,
                                                              strict=True)]


class Replicas:
    """OpenMM contexts of one system at the ladder's temperatures (see the module docstring).

    Args:
        system: the `openmm.System`.
        temperatures: the ladder in kelvin, coldest first.
        friction_per_ps, timestep_fs: Langevin settings.
        seed: seeds each integrator (seed + k), the initial velocities and the exchanges.
        platform: OpenMM platform name ("CPU": one thread per context).
    """

    def __init__(self, system: Any, temperatures: list[float], friction_per_ps: float,
                 timestep_fs: float, seed: int, platform: str = "CPU") -> None:
        import openmm
        import openmm.unit as unit

        self.temperatures, self.seed = list(temperatures), seed
        self.contexts, self.integrators = [], []
        chosen = openmm.Platform.getPlatformByName(platform)
        options = {"Threads": "1"} if platform == "CPU" else {}
        for k, kelvin in enumerate(self.temperatures):
            integrator = openmm.LangevinMiddleIntegrator(
                kelvin * unit.kelvin, friction_per_ps / unit.picosecond,
                timestep_fs * unit.femtosecond)
            integrator.setRandomNumberSeed(seed + k)
            self.integrators.append(integrator)
            self.contexts.append(openmm.Context(system, integrator, chosen, options))
        self.rng = np.random.default_rng(seed)
        n_pairs = len(self.temperatures) - 1
        self.stats = ExchangeStats([0] * n_pairs, [0] * n_pairs)

    def start(self, positions: np.ndarray, minimise: bool) -> None:
        """Sets every replica to `positions` `[n_atoms, 3]` (nm), constrained, optionally
        energy-minimised, with velocities drawn at its temperature."""
        import openmm
        import openmm.unit as unit

        for k, (context, kelvin) in enumerate(zip(self.contexts, self.temperatures,
                                                  strict=True)):
            context.setPositions(np.asarray(positions, dtype=np.float64))
            context.applyConstraints(1e-8)
            if minimise:
                openmm.LocalEnergyMinimizer.minimize(context, 1.0, 500)
            context.setVelocitiesToTemperature(kelvin * unit.kelvin, self.seed + k)

    def step(self, n_steps: int) -> None:
        """n_steps integration steps of every replica."""
        for integrator in self.integrators:
            integrator.step(n_steps)

    def frame(self, k: int = 0) -> tuple[np.ndarray, float]:
        """(positions `[n_atoms, 3]` nm, potential energy kJ/mol) of replica k."""
        import openmm.unit as unit

        state = self.contexts[k].getState(getPositions=True, getEnergy=True)
        return (state.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))

    def exchange(self, parity: int) -> None:
        """Tries the exchanges of the pairs (k, k + 1) with k = parity, parity + 2, ..."""
        for k in range(parity, len(self.contexts) - 1, 2):
            states = [self.contexts[i].getState(getPositions=True, getVelocities=True,
                                                getEnergy=True) for i in (k, k + 1)]
            e = [_kj(s.getPotentialEnergy()) for s in states]
            beta = [1.0 / (K_B * self.temperatures[i]) for i in (k, k + 1)]
            self.stats.attempted[k] += 1
            log_a = log_acceptance(beta[0], beta[1], e[0], e[1])
            if math.log(self.rng.random()) < min(0.0, log_a):
                self.stats.accepted[k] += 1
                self._swap(k, states)

    def _swap(self, k: int, states: list[Any]) -> None:
        for target, source in ((k, 1), (k + 1, 0)):
            scale = math.sqrt(self.temperatures[target] / self.temperatures[k + source])
            context = self.contexts[target]
            context.setPositions(states[source].getPositions(asNumpy=True))
            context.setVelocities(states[source].getVelocities(asNumpy=True) * scale)

    def snapshot(self) -> dict[str, Any]:
        """The replicas' state: OpenMM checkpoints, exchange RNG and statistics."""
        return {"contexts": [np.frombuffer(c.createCheckpoint(), dtype=np.uint8)
                             for c in self.contexts],
                "rng": json.dumps(self.rng.bit_generator.state),
                "attempted": list(self.stats.attempted), "accepted": list(self.stats.accepted)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Undoes everything since `snapshot` was taken (same system, ladder and platform)."""
        for context, blob in zip(self.contexts, snapshot["contexts"], strict=True):
            context.loadCheckpoint(np.asarray(blob, dtype=np.uint8).tobytes())
        self.rng.bit_generator.state = json.loads(str(snapshot["rng"]))
        self.stats = ExchangeStats([int(v) for v in snapshot["attempted"]],
                                   [int(v) for v in snapshot["accepted"]])


def _kj(quantity: Any) -> float:
    import openmm.unit as unit

    return float(quantity.value_in_unit(unit.kilojoule_per_mole))


__all__ = ["ExchangeStats", "K_B", "Replicas", "ladder", "log_acceptance"]
