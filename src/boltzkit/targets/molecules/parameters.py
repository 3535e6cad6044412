"""Force-field parameters read from an `openmm.System`, as tensors for `energy.py`.

Supported forces (what amber99sbildn + amber96_obc and a prmtop with OBC1 create):
HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce without cutoff
(exceptions carry the exclusions and the scaled 1-4 pairs), GBSAOBCForce (OBC2 + ACE surface
term) or the CustomGBForce of openmm.app's GBSAOBC1Force/GBSAOBC2Force; CMMotionRemover adds no
energy. Anything else raises NotImplementedError, naming `backend=openmm` as the way out.

Units are OpenMM's: nm, radians, kJ/mol, elementary charges.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

# OpenMM's 1/(4 pi eps0) in kJ nm / (mol e^2) (SimTKOpenMMRealType.h).
ONE_4PI_EPS0 = 138.93545764438198


@dataclass(frozen=True)
class GBParameters:
    """OBC generalized Born + ACE surface area (Onufriev, Bashford & Case 2004).

    B_i = 1 / (1/or_i - tanh(alpha psi - beta psi^2 + gamma psi^3) / rho_i), psi = or_i I_i,
    rho_i = or_i + offset; E = prefactor (sum_i q_i^2 / (2 B_i) + sum_{i<j} q_i q_j / f_ij)
    + sa_factor sum_i (rho_i + probe)^2 (rho_i / B_i)^6, f_ij = sqrt(r^2 + B_i B_j
    exp(-r^2 / (4 B_i B_j))). `engulf` adds OpenMM's GBSAOBCForce term for an atom inside
    another's scaled sphere (Tinker's correction), absent from the CustomGBForce versions.
    """

    charge: Tensor
    offset_radius: Tensor
    scaled_radius: Tensor
    prefactor: float
    alpha: float
    beta: float
    gamma: float
    offset: float
    sa_factor: float
    probe: float
    engulf: bool


@dataclass(frozen=True)
class ForceField:
    """Bonded and nonbonded parameters of one molecule (index tensors long, values float64).

    pairs `[p, 2]` are all atom pairs i < j; `nb` indexes the pairs (or exception rows) that
    carry Coulomb or Lennard-Jones energy, with qq = q_i q_j / (4 pi eps0) and (sigma, epsilon).
    """

    n_atoms: int
    bonds: Tensor
    bond_length: Tensor
    bond_k: Tensor
    angles: Tensor
    angle_theta: Tensor
    angle_k: Tensor
    torsions: Tensor
    torsion_n: Tensor
    torsion_phase: Tensor
    torsion_k: Tensor
    pairs: Tensor
    nb_pair: Tensor
    nb_qq: Tensor
    nb_sigma: Tensor
    nb_epsilon: Tensor
    gb: GBParameters | None

    def to(self, device: torch.device, dtype: torch.dtype) -> ForceField:
        """A copy with float tensors in `dtype` and everything on `device`."""
        def move(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.to(device, dtype if v.is_floating_point() else v.dtype)
            if isinstance(v, GBParameters):
                return replace(v, **{f.name: move(getattr(v, f.name)) for f in fields(v)})
            return v
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def from_openmm(system: Any) -> ForceField:
    """Reads the parameters of every force of `system` (see the module docstring)."""
    import openmm

    n = system.getNumParticles()
    parts: dict[str, Any] = {"gb": None, **_bonds(None, n), **_angles(None, n),
                             **_torsions(None, n)}
    readers = {openmm.HarmonicBondForce: _bonds, openmm.HarmonicAngleForce: _angles,
               openmm.PeriodicTorsionForce: _torsions, openmm.NonbondedForce: _nonbonded,
               openmm.GBSAOBCForce: _gbsa_obc, openmm.CustomGBForce: _custom_obc}
    kinds = [type(f) for f in system.getForces() if not isinstance(f, openmm.CMMotionRemover)]
    for kind in kinds:
        if kind not in readers or kinds.count(kind) > 1:
            why = "has no torch implementation" if kind not in readers else "appears twice"
            raise NotImplementedError(f"{kind.__name__} {why}; use backend=openmm")
    for force in system.getForces():
        if type(force) in readers:
            parts.update(readers[type(force)](force, n))
    if "nb_pair" not in parts:
        raise NotImplementedError("a system without NonbondedForce; use backend=openmm")
    return ForceField(n_atoms=n, **parts)


def _f64(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _long(rows: list[Any], width: int) -> Tensor:
    return torch.tensor(rows, dtype=torch.long).reshape(-1, width)


def _bonds(force: Any, n: int) -> dict[str, Tensor]:
    rows = [force.getBondParameters(k) for k in range(force.getNumBonds())] if force else []
    return {"bonds": _long([r[:2] for r in rows], 2),
            "bond_length": _f64([r[2]._value for r in rows]),
            "bond_k": _f64([r[3]._value for r in rows])}


def _angles(force: Any, n: int) -> dict[str, Tensor]:
    rows = [force.getAngleParameters(k) for k in range(force.getNumAngles())] if force else []
    return {"angles": _long([r[:3] for r in rows], 3),
            "angle_theta": _f64([r[3]._value for r in rows]),
            "angle_k": _f64([r[4]._value for r in rows])}


def _torsions(force: Any, n: int) -> dict[str, Tensor]:
    rows = [force.getTorsionParameters(k) for k in range(force.getNumTorsions())] if force else []
    return {"torsions": _long([r[:4] for r in rows], 4),
            "torsion_n": _f64([r[4] for r in rows]),
            "torsion_phase": _f64([r[5]._value for r in rows]),
            "torsion_k": _f64([r[6]._value for r in rows])}


def _nonbonded(force: Any, n: int) -> dict[str, Tensor]:
    if force.getNonbondedMethod() != force.NoCutoff:
        raise NotImplementedError("NonbondedForce with a cutoff or periodic box; "
                                  "use backend=openmm")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise NotImplementedError("NonbondedForce parameter offsets; use backend=openmm")
    atoms = [force.getParticleParameters(i) for i in range(n)]
    q, sig, eps = ([a[c]._value for a in atoms] for c in range(3))
    # Lorentz-Berthelot combination for every pair, then the exceptions replace theirs.
    params = {(i, j): (q[i] * q[j], 0.5 * (sig[i] + sig[j]), math.sqrt(eps[i] * eps[j]))
              for i, j in itertools.combinations(range(n), 2)}
    for k in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(k)
        params[min(i, j), max(i, j)] = (qq._value, s._value, e._value)
    pairs = list(itertools.combinations(range(n), 2))
    live = [p for p, (qq, _, e) in enumerate(params[ij] for ij in pairs) if qq != 0 or e != 0]
    values = [params[pairs[p]] for p in live]
    return {"pairs": _long(pairs, 2), "nb_pair": torch.tensor(live, dtype=torch.long),
            "nb_qq": ONE_4PI_EPS0 * _f64([v[0] for v in values]),
            "nb_sigma": _f64([v[1] for v in values]),
            "nb_epsilon": _f64([v[2] for v in values])}


def _gbsa_obc(force: Any, n: int) -> dict[str, GBParameters]:
    """GBSAOBCForce: OBC2 (alpha, beta, gamma) = (1, 0.8, 4.85), offset 0.009 nm, ACE probe
    0.14 nm with 4 pi times the surface-area energy (OpenMM's ReferenceObc)."""
    if force.getNonbondedMethod() != force.NoCutoff:
        raise NotImplementedError("GBSAOBCForce with a cutoff; use backend=openmm")
    rows = [force.getParticleParameters(i) for i in range(n)]
    offset = 0.009
    offset_radius = _f64([r[1]._value for r in rows]) - offset
    inv = 1 / force.getSoluteDielectric() - 1 / force.getSolventDielectric()
    return {"gb": GBParameters(
        charge=_f64([r[0]._value for r in rows]), offset_radius=offset_radius,
        scaled_radius=offset_radius * _f64([r[2] for r in rows]),
        prefactor=-ONE_4PI_EPS0 * inv, alpha=1.0, beta=0.8, gamma=4.85, offset=offset,
        sa_factor=4 * math.pi * force.getSurfaceAreaEnergy()._value, probe=0.14, engulf=True)}


_NUMBER = r"([0-9.eE+-]+)"


def _custom_obc(force: Any, n: int) -> dict[str, GBParameters]:
    """The CustomGBForce of openmm.app.internal.customgbforces GBSAOBC1Force / GBSAOBC2Force
    (no salt: kappa = 0), recognised by its expressions; constants are read from them."""
    n_params = force.getNumPerParticleParameters()
    names = [force.getPerParticleParameterName(k) for k in range(n_params)]
    values = [force.getComputedValueParameters(k)[1] for k in range(force.getNumComputedValues())]
    terms = [force.getEnergyTermParameters(k)[0] for k in range(force.getNumEnergyTerms())]
    born = re.search(rf"tanh\({_NUMBER}\*psi(?:-{_NUMBER}\*psi\^2)?\+{_NUMBER}\*psi\^3\)",
                     values[1] if len(values) == 2 else "")
    self_term = re.match(rf"-0\.5\*{_NUMBER}\*\(1/soluteDielectric-1/solventDielectric\)"
                         r"\*charge\^2/B;", terms[0] if terms else "")
    surface = re.match(rf"{_NUMBER}\*\(radius\+{_NUMBER}\)\^2\*\(radius/B\)\^6;",
                       terms[1] if len(terms) == 3 else "")
    if (names != ["charge", "or", "sr"] or not (born and self_term and surface)
            or "select(step(r+sr2-or1)" not in values[0] or force.getNonbondedMethod() != 0
            or force.getNumExclusions() or "kappa=0;" not in terms[0]):
        raise NotImplementedError("a CustomGBForce other than openmm.app's OBC1/OBC2 "
                                  "(without salt); use backend=openmm")
    constants = dict(re.findall(rf"(\w+)={_NUMBER}", terms[0]))
    rows = [force.getParticleParameters(i) for i in range(n)]
    inv = 1 / float(constants["soluteDielectric"]) - 1 / float(constants["solventDielectric"])
    alpha, beta, gamma = (float(v) if v else 0.0 for v in born.groups())
    return {"gb": GBParameters(
        charge=_f64([r[0] for r in rows]), offset_radius=_f64([r[1] for r in rows]),
        scaled_radius=_f64([r[2] for r in rows]), prefactor=-float(self_term[1]) * inv,
        alpha=alpha, beta=beta, gamma=gamma, offset=float(constants["offset"]),
        sa_factor=float(surface[1]), probe=float(surface[2]), engulf=False)}
