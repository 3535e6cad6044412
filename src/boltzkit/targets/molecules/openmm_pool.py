"""Batched energies and forces from a pool of OpenMM contexts, one per worker thread.

OpenMM evaluates one configuration per `Context.setPositions` + `getState` call; a batch is
split into contiguous chunks, one per context, evaluated in threads (OpenMM releases the GIL
inside its C++ calls, so the threads run on separate cores). Each CPU-platform context runs
single-threaded: 22 atoms are far too few to share between threads. The platform is CUDA where
OpenMM offers it (mixed precision, as the CPU platform computes), else CPU.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_platform() -> str:
    """"CUDA" where OpenMM lists its CUDA platform (the plugin loads only with a CUDA driver),
    else "CPU"."""
    import openmm

    names = {openmm.Platform.getPlatform(i).getName()
             for i in range(openmm.Platform.getNumPlatforms())}
    return "CUDA" if "CUDA" in names else "CPU"


_OPTIONS = {"CPU": {"Threads": "1"}, "CUDA": {"Precision": "mixed"}}


class ContextPool:
    """E(x) in kJ/mol and F = -dE/dx in kJ/(mol nm) for batches of coordinates in nm.

    Args:
        system: the `openmm.System`.
        n_workers: contexts (and threads); default: the cores available.
        platform: OpenMM platform name ("CPU", "CUDA", or "Reference" for the double-precision
            reference implementation the tests compare against); default `default_platform()`.
    """

    def __init__(self, system: Any, n_workers: int | None = None,
                 platform: str | None = None) -> None:
        self.system = system
        self.n_workers = int(n_workers or default_workers())
        self.platform = platform or default_platform()
        self._contexts: list[Any] = []
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Contexts and threads do not pickle or copy; a copy builds its own on first use.
        state = dict(self.__dict__)
        state.update(_contexts=[], _lock=None, _executor=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def evaluate(self, x: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(E `[b]`, F `[b, n_atoms, 3]` or None) for x `[b, n_atoms, 3]` in nm (float64).

        Rows with non-finite coordinates get E = NaN (and F = NaN) without reaching OpenMM.
        """
        x = np.ascontiguousarray(x, dtype=np.float64)
        energy = np.full(x.shape[0], np.nan)
        force = np.full(x.shape, np.nan) if forces else None
        good = np.flatnonzero(np.isfinite(x).all(axis=(1, 2)))
        chunks = [c for c in np.array_split(good, min(self.n_workers, max(1, good.size))) if c.size]
        contexts = self._ensure(len(chunks))
        if len(chunks) == 1:
            _run(contexts[0], x, chunks[0], energy, force)
        elif chunks:
            jobs = [self._pool().submit(_run, c, x, rows, energy, force)
                    for c, rows in zip(contexts, chunks, strict=False)]
            for job in jobs:
                job.result()
        return energy, force

    def _ensure(self, n: int) -> list[Any]:
        import openmm

        with self._lock:
            platform = openmm.Platform.getPlatformByName(self.platform)
            options = _OPTIONS.get(self.platform, {})
            while len(self._contexts) < n:
                integrator = openmm.VerletIntegrator(0.001)
                self._contexts.append(openmm.Context(self.system, integrator, platform, options))
            return self._contexts[:n]

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.n_workers, thread_name_prefix="openmm")
        return self._executor


def _run(context: Any, x: np.ndarray, rows: np.ndarray, energy: np.ndarray,
         force: np.ndarray | None) -> None:
    import openmm.unit as unit

    kj, kj_nm = unit.kilojoule_per_mole, unit.kilojoule_per_mole / unit.nanometer
    want_forces = force is not None
    for r in rows:
        context.setPositions(x[r])
        state = context.getState(getEnergy=True, getForces=want_forces)
        energy[r] = state.getPotentialEnergy().value_in_unit(kj)
        if want_forces:
            force[r] = state.getForces(asNumpy=True).value_in_unit(kj_nm)
