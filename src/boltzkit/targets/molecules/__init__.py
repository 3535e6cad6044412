"""Molecules in implicit solvent through OpenMM: alanine dipeptide in its two conventions.

- `aldp` (TRADE / TSF): amber99sbildn + amber96_obc (OBC2), NoCutoff, H-bond constraints.
- `aldp-fab` (FAB / ASBS): AMBER ff96 prmtop + OBC1, no cutoff, no constraints.

Both: 22 atoms, x `[..., 66]` in nm, log gamma = -E / (k_B T) with E in kJ/mol
(../shared/REFERENCE.md, "Alanine dipeptide"). The structure files ship in `targets/data`;
openmm (the `md` extra) is needed to build either target.
"""

from __future__ import annotations

from boltzkit.targets.molecules.geometry import backbone_torsions, dihedral, is_d_alanine
from boltzkit.targets.molecules.systems import aldp_fab_system, aldp_tsf_system
from boltzkit.targets.molecules.target import BACKENDS, MolecularTarget


def aldp(temperature: float = 300.0, backend: str = "torch") -> MolecularTarget:
    """Alanine dipeptide as in TRADE / TSF (bgmol `AlanineDipeptideTSF`) at `temperature` K.

    The H-bond constraints carry no energy term: a sampler must hold those 12 bonds at their
    constrained lengths (`target.molecule.constraints`) for the density to be the MD one.
    """
    return MolecularTarget(aldp_tsf_system(), temperature, backend, name="aldp")


def aldp_fab(temperature: float = 300.0, backend: str = "torch") -> MolecularTarget:
    """Alanine dipeptide as in FAB / ASBS (openmmtools `AlanineDipeptideImplicit`,
    constraints=None) at `temperature` K."""
    return MolecularTarget(aldp_fab_system(), temperature, backend, name="aldp-fab")


__all__ = ["BACKENDS", "MolecularTarget", "aldp", "aldp_fab", "backbone_torsions", "dihedral",
           "is_d_alanine"]
