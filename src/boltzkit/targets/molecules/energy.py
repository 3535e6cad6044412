"""Batched torch potential energies of an AMBER-type force field with OBC implicit solvent.

E(x) = E_bond + E_angle + E_torsion + E_coulomb + E_lj + E_gb, in kJ/mol for x `[..., n, 3]` in
nm, with the parameters of `parameters.ForceField` (read from an `openmm.System`):

- E_bond = sum k/2 (r - r0)^2,  E_angle = sum k/2 (theta - theta0)^2,
- E_torsion = sum k (1 + cos(n phi - phase)),
- E_coulomb + E_lj = sum over non-excluded pairs of qq/r + 4 eps ((sigma/r)^12 - (sigma/r)^6),
  the 1-4 pairs with their scaled exception parameters,
- E_gb: OBC generalized Born with the ACE surface-area term (`parameters.GBParameters`;
  Onufriev, Bashford & Case, Proteins 55, 383 (2004); the pair integral of Hawkins, Cramer &
  Truhlar, J. Phys. Chem. 100, 19824 (1996)).

Plain tensor ops: gradients (forces) by autograd, device and dtype follow x.
"""

from __future__ import annotations

import torch
from torch import Tensor

from boltzkit.targets.molecules.geometry import angle, dihedral
from boltzkit.targets.molecules.parameters import ForceField, GBParameters


def energy(x: Tensor, ff: ForceField) -> Tensor:
    """The total potential energy `[...]` in kJ/mol of x `[..., n_atoms, 3]` in nm."""
    return sum(energy_terms(x, ff).values())


def energy_terms(x: Tensor, ff: ForceField) -> dict[str, Tensor]:
    """The energy split by force: bond, angle, torsion, nonbonded (Coulomb + LJ), gb."""
    i, j = ff.pairs[:, 0], ff.pairs[:, 1]
    r = (x[..., j, :] - x[..., i, :]).square().sum(-1).sqrt()  # every pair i < j: [..., p]
    terms = {"bond": bond_energy(x, ff), "angle": angle_energy(x, ff),
             "torsion": torsion_energy(x, ff), "nonbonded": nonbonded_energy(r, ff)}
    if ff.gb is not None:
        terms["gb"] = gb_energy(r, ff.pairs, ff.gb)
    return terms


def bond_energy(x: Tensor, ff: ForceField) -> Tensor:
    """sum k/2 (r - r0)^2."""
    d = x[..., ff.bonds[:, 1], :] - x[..., ff.bonds[:, 0], :]
    stretch = d.square().sum(-1).sqrt() - ff.bond_length
    return (0.5 * ff.bond_k * stretch.square()).sum(-1)


def angle_energy(x: Tensor, ff: ForceField) -> Tensor:
    """sum k/2 (theta - theta0)^2, theta the angle at the middle atom."""
    bend = angle(x, ff.angles) - ff.angle_theta
    return (0.5 * ff.angle_k * bend.square()).sum(-1)


def torsion_energy(x: Tensor, ff: ForceField) -> Tensor:
    """sum k (1 + cos(n phi - phase)), phi the IUPAC dihedral (propers and impropers alike)."""
    phi = dihedral(x, ff.torsions)
    return (ff.torsion_k * (1 + torch.cos(ff.torsion_n * phi - ff.torsion_phase))).sum(-1)


def nonbonded_energy(r: Tensor, ff: ForceField) -> Tensor:
    """Coulomb qq/r + Lennard-Jones 4 eps (s^12 - s^6), s = sigma/r, over the live pairs."""
    r = r[..., ff.nb_pair]
    s6 = (ff.nb_sigma / r) ** 6
    return (ff.nb_qq / r + 4 * ff.nb_epsilon * (s6.square() - s6)).sum(-1)


def born_radii(r: Tensor, pairs: Tensor, gb: GBParameters) -> Tensor:
    """OBC effective Born radii `[..., n]` from the pair distances r `[..., p]` (i < j).

    I_i = sum_{j != i} H(r_ij, or_i, sr_j) (half the Hawkins-Cramer-Truhlar integral of atom
    j's scaled sphere outside atom i's offset sphere); psi = or_i I_i.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    # Both directions of every pair: atom a's integral over atom b's sphere.
    a, b = torch.cat([i, j]), torch.cat([j, i])
    rr = torch.cat([r, r], dim=-1)
    h = _pair_integral(rr, gb.offset_radius[a], gb.scaled_radius[b], gb.engulf)
    integral = h.new_zeros(*h.shape[:-1], gb.charge.shape[0]).index_add_(-1, a, h)
    psi = gb.offset_radius * integral
    rho = gb.offset_radius + gb.offset
    tanh = torch.tanh(psi * (gb.alpha + psi * (-gb.beta + psi * gb.gamma)))
    return 1 / (1 / gb.offset_radius - tanh / rho)


def _pair_integral(r: Tensor, or_i: Tensor, sr_j: Tensor, engulf: bool) -> Tensor:
    """0.5 (1/L - 1/U + (r - sr^2/r)(1/U^2 - 1/L^2)/4 + log(L/U)/(2r)), zero where the spheres
    do not overlap (or_i >= r + sr_j); with `engulf`, + (1/or_i - 1/L) where atom i lies inside
    atom j's scaled sphere (or_i < sr_j - r)."""
    upper = r + sr_j
    lower = torch.maximum(or_i.expand_as(r), (r - sr_j).abs())
    inv_u, inv_l = 1 / upper, 1 / lower
    h = (inv_l - inv_u + 0.25 * (r - sr_j.square() / r) * (inv_u.square() - inv_l.square())
         + 0.5 * torch.log(lower / upper) / r)
    if engulf:
        h = h + torch.where(or_i < sr_j - r, 2 * (1 / or_i - inv_l), 0.0)
    return torch.where(or_i < upper, 0.5 * h, 0.0)


def gb_energy(r: Tensor, pairs: Tensor, gb: GBParameters) -> Tensor:
    """Polar GB energy plus the ACE surface-area term (see `parameters.GBParameters`)."""
    born = born_radii(r, pairs, gb)
    q = gb.charge
    self_term = (0.5 * q.square() / born).sum(-1)
    i, j = pairs[:, 0], pairs[:, 1]
    bb = born[..., i] * born[..., j]
    f = (r.square() + bb * torch.exp(-r.square() / (4 * bb))).sqrt()
    pair_term = (q[i] * q[j] / f).sum(-1)
    rho = gb.offset_radius + gb.offset
    surface = ((rho + gb.probe).square() * (rho / born) ** 6).sum(-1)
    return gb.prefactor * (self_term + pair_term) + gb.sa_factor * surface
