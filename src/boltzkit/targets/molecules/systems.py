"""OpenMM systems of the molecular targets, built from the files shipped in `targets/data`.

Two alanine-dipeptide conventions are in use (../shared/REFERENCE.md, "Alanine dipeptide"); both
are built here from the same 22-atom molecule (atom order in `targets/data/README.md`):

- `aldp_tsf_system()`: TRADE / TSF (bgmol `AlanineDipeptideTSF`): the PDB structure with openmm's
  amber99sbildn.xml + amber96_obc.xml (OBC2 GB/SA via `GBSAOBCForce`), no cutoff, H-bond
  constraints (the 12 constrained X-H bonds carry no bond term).
- `aldp_fab_system()`: FAB / ASBS (openmmtools `AlanineDipeptideImplicit`): the AMBER ff96 prmtop
  with OBC1 implicit solvent (a `CustomGBForce`), no cutoff, no constraints.

openmm is imported inside the functions, so that `boltzkit.targets` imports without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

# Molar gas constant in kJ/(mol K) (CODATA 2018, as openmm.unit.MOLAR_GAS_CONSTANT_R).
K_B = 0.0083144626


@dataclass(frozen=True)
class MolecularSystem:
    """An OpenMM system with its reference structure.

    Attributes:
        system: the `openmm.System` (forces, masses, constraints).
        positions: reference coordinates `[n_atoms, 3]` in nm, float64.
        atom_names: atom names in topology order.
        constraints: `(i, j, length_nm)` per distance constraint.
    """

    system: Any
    positions: np.ndarray
    atom_names: tuple[str, ...]
    constraints: tuple[tuple[int, int, float], ...]

    @property
    def n_atoms(self) -> int:
        return len(self.atom_names)


def data_file(name: str) -> Path:
    """Path of a file shipped in `boltzkit/targets/data`."""
    path = Path(str(resources.files("boltzkit.targets").joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"boltzkit data file {name!r} is missing from {path.parent}")
    return path


def _openmm_app() -> Any:
    """openmm.app, or an ImportError that says how to install it."""
    try:
        import openmm.app as app
    except ImportError as err:
        raise ModuleNotFoundError("molecular targets need openmm: pip install 'boltzkit[md]' "
                                  f"({err})", name="openmm") from None
    return app


def aldp_tsf_system() -> MolecularSystem:
    """The TRADE/TSF alanine dipeptide: amber99sbildn + amber96_obc, NoCutoff, HBonds."""
    app = _openmm_app()

    pdb = app.PDBFile(str(data_file("alanine-dipeptide.pdb")))
    forcefield = app.ForceField("amber99sbildn.xml", "amber96_obc.xml")
    system = forcefield.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                     constraints=app.HBonds)
    return _wrap(system, pdb.topology, pdb.getPositions(asNumpy=True))


def aldp_fab_system() -> MolecularSystem:
    """The FAB/ASBS alanine dipeptide: AMBER ff96 prmtop + OBC1, no cutoff, no constraints."""
    app = _openmm_app()

    prmtop = app.AmberPrmtopFile(str(data_file("alanine-dipeptide.prmtop")))
    inpcrd = app.AmberInpcrdFile(str(data_file("alanine-dipeptide.crd")))
    system = prmtop.createSystem(implicitSolvent=app.OBC1, constraints=None,
                                 nonbondedCutoff=None)
    return _wrap(system, prmtop.topology, inpcrd.getPositions(asNumpy=True))


def _wrap(system: Any, topology: Any, positions: Any) -> MolecularSystem:
    import openmm.unit as unit

    xyz = np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float64)
    names = tuple(atom.name for atom in topology.atoms())
    constraints = []
    for k in range(system.getNumConstraints()):
        i, j, length = system.getConstraintParameters(k)
        constraints.append((int(i), int(j), float(length.value_in_unit(unit.nanometer))))
    return MolecularSystem(system, xyz, names, tuple(constraints))
