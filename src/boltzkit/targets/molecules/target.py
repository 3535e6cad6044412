"""A molecule in implicit solvent as a Boltzmann target: log gamma(x) = -E(x) / (k_B T).

x is the flattened Cartesian coordinates `[..., 3 n_atoms]` in nm (atom-major: x_0, y_0, z_0,
x_1, ...), E the OpenMM potential energy in kJ/mol, k_B = 0.0083144626 kJ/(mol K) and T the
reference temperature in kelvin; `tempered(t)` divides log gamma by t as for every target (so
the density at T' kelvin is `tempered(T' / T)`, and `Family(target, "temperature", c_ref=T)`
takes the condition in kelvin).

Two backends compute the same E (equal to 1e-6 relative in float64; tests/targets/test_aldp.py):
- "torch" (default): `energy.energy` on the force field read from the OpenMM system: batched,
  device- and dtype-following, forces by autograd in chunks that fit in cache; on CPU, when no
  autograd graph is asked for, the compiled kernel `fused.py` (same energy, hand-derived
  forces, threads over configurations) unless `target.fused = False` or it cannot be built.
- "openmm": a pool of OpenMM contexts (`openmm_pool.ContextPool`; CUDA platform where present,
  else CPU, both mixed precision), forces from OpenMM; differentiable once through its forces.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from boltzkit.core.errors import UnknownName
from boltzkit.targets.base import Target
from boltzkit.targets.molecules import fused
from boltzkit.targets.molecules.energy import energy
from boltzkit.targets.molecules.openmm_pool import ContextPool
from boltzkit.targets.molecules.parameters import ForceField, from_openmm
from boltzkit.targets.molecules.systems import K_B, MolecularSystem

BACKENDS = ("torch", "openmm")
# Configurations per autograd chunk of the torch backend (pair temporaries stay in cache).
_CHUNK = 1024


class MolecularTarget(Target):
    """log gamma(x) = -E(x) / (k_B T) for an OpenMM system (see the module docstring).

    Args:
        molecule: the OpenMM system with its reference structure.
        temperature: reference temperature T in kelvin.
        backend: "torch" or "openmm".
        name: the registry name.
        n_workers: OpenMM contexts (threads) of the "openmm" backend; default: all cores.
    """

    fused: bool = True  # use the compiled CPU kernel where it applies
    is_molecule: bool = True  # evaluation and plots add torsion metrics and figures

    def __init__(self, molecule: MolecularSystem, temperature: float = 300.0,
                 backend: str = "torch", name: str = "molecule",
                 n_workers: int | None = None) -> None:
        if backend not in BACKENDS:
            raise UnknownName("backend", backend, BACKENDS)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (kelvin), got {temperature}")
        super().__init__(3 * molecule.n_atoms)
        self.n_particles, self.spatial_dim = molecule.n_atoms, 3
        self.molecule, self.backend, self.name = molecule, backend, name
        self.reference_temperature = float(temperature)
        self.kT = K_B * self.reference_temperature  # kJ/mol
        self.pool = ContextPool(molecule.system, n_workers)
        self._forcefield = from_openmm(molecule.system) if backend == "torch" else None
        self._cast: dict[tuple[torch.device, torch.dtype], ForceField] = {}

    @property
    def positions(self) -> Tensor:
        """The reference structure `[3 n_atoms]` in nm, float64."""
        return torch.as_tensor(self.molecule.positions, dtype=torch.float64).reshape(-1)

    def initial_state(self) -> Tensor:
        """Where MCMC chains start (plus their `init_scale` noise): the reference structure
        `[dim]` (an L-alanine; random Cartesian starts are mostly not a molecule)."""
        return self.positions

    def potential_energy(self, x: Tensor) -> Tensor:
        """E(x) in kJ/mol, `[...]` (uncounted; differentiable)."""
        self.check_input(x)
        return self._energy(x)

    def _log_prob(self, x: Tensor) -> Tensor:
        if self.backend == "torch" and not (torch.is_grad_enabled() and x.requires_grad):
            return -self._torch_chunks(x, need_grad=False)[0] / self.kT
        return -self._energy(x) / self.kT

    def log_prob_and_score(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(log_prob, score) with forces from the backend in one pass; with create_graph=True
        by the base class (torch backend only: OpenMM forces are differentiable once)."""
        if create_graph:
            return super().log_prob_and_score(x, create_graph=True)
        self.check_input(x)
        n = x[..., 0].numel()
        self.counter.n_energy += n
        self.counter.n_grad += n
        if self.backend == "torch":
            e, grad_e = self._torch_chunks(x.detach(), need_grad=True)
        else:
            e, grad_e = _openmm_energy_and_grad(self.pool, x.detach())
        t = self.temperature
        lp = self._finite_or_minus_inf(-e / self.kT) / t
        if isinstance(t, Tensor):
            return lp, grad_e / (-self.kT * t.unsqueeze(-1))
        return lp, grad_e.mul_(-1.0 / (self.kT * t))  # in place: one pass over the forces

    def describe(self) -> dict[str, object]:
        facts = super().describe()
        facts.update(reference_temperature_K=self.reference_temperature, backend=self.backend,
                     n_constraints=len(self.molecule.constraints))
        return facts

    # ---- backends -----------------------------------------------------------------------
    def _energy(self, x: Tensor) -> Tensor:
        if self.backend == "openmm" and torch.is_grad_enabled() and x.requires_grad:
            return _OpenMMEnergy.apply(x, self.pool)
        if self.backend == "openmm":
            return _openmm_energy_and_grad(self.pool, x, forces=False)[0]
        atoms = x.unflatten(-1, (self.n_particles, 3))
        return energy(atoms, self._forcefield_for(x.device, x.dtype))

    def _forcefield_for(self, device: torch.device, dtype: torch.dtype) -> ForceField:
        key = (device, dtype)
        if key not in self._cast:
            self._cast[key] = self._forcefield.to(device, dtype)
        return self._cast[key]

    def _torch_chunks(self, x: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """(E `[...]`, dE/dx `[..., dim]` or None) by the torch backend: the compiled kernel
        on CPU where available, else autograd chunk by chunk."""
        flat = x.reshape(-1, self.dim)
        module = fused.kernel() if self.fused and x.device.type == "cpu" else None
        if module is not None:
            ff_x = self._forcefield_for(x.device, x.dtype)
            e, grad = fused.energy_and_grad(module, flat.view(-1, self.n_particles, 3), ff_x,
                                            need_grad)
            return e.view(x.shape[:-1]), None if grad is None else grad.view(x.shape)
        ff = self._forcefield_for(x.device, x.dtype)
        e = flat.new_empty(flat.shape[0])
        grad = torch.empty_like(flat) if need_grad else None
        for start in range(0, flat.shape[0], _CHUNK):
            rows = slice(start, start + _CHUNK)
            chunk = flat[rows].view(-1, self.n_particles, 3)
            with torch.set_grad_enabled(need_grad):
                if need_grad:
                    chunk = chunk.detach().requires_grad_(True)
                e_chunk = energy(chunk, ff)
                if need_grad:
                    (g,) = torch.autograd.grad(e_chunk.sum(), chunk)
                    grad[rows] = g.reshape(-1, self.dim)
            e[rows] = e_chunk.detach()
        return e.view(x.shape[:-1]), None if grad is None else grad.view(x.shape)


def _openmm_energy_and_grad(pool: ContextPool, x: Tensor, forces: bool = True
                            ) -> tuple[Tensor, Tensor | None]:
    """(E `[...]` kJ/mol, dE/dx `[..., dim]` or None) from OpenMM, in x's dtype and device."""
    flat = x.detach().reshape(-1, x.shape[-1] // 3, 3).to("cpu", torch.float64).numpy()
    e, force = pool.evaluate(flat, forces=forces)
    as_x = {"dtype": x.dtype, "device": x.device}
    e_t = torch.as_tensor(e, **as_x).view(x.shape[:-1])
    return e_t, None if force is None else -torch.as_tensor(force, **as_x).view(x.shape)


class _OpenMMEnergy(torch.autograd.Function):
    """E(x) from OpenMM with dE/dx = -F saved for the backward pass (once differentiable)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, pool: ContextPool) -> Tensor:
        e, grad_e = _openmm_energy_and_grad(pool, x)
        ctx.save_for_backward(grad_e)
        return e

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (grad_e,) = ctx.saved_tensors
        return grad_out.unsqueeze(-1) * grad_e, None

