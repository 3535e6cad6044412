"""A molecule with rigid bond constraints as a target on its free internal coordinates.

`aldp` holds its 12 X-H bonds rigid (OpenMM's `constraints=HBonds`): its configurations live on
a manifold of dimension 3N - 12, and a sampler that moves every Cartesian coordinate lets the
bonds drift (they carry no energy term). Constrained molecular dynamics samples, on that
manifold, the law with density

    pi(q) ∝ exp(-U(x(q)) / kT) sqrt(det G(q)),   G = J^T M J,  J = dx/dq,

in any coordinates q of the manifold (M the diagonal mass matrix: the momenta integrate out to
sqrt(det G); Fixman, PNAS 71, 3050 (1974); Ciccotti & Ryckaert, Comput. Phys. Rep. 4, 345
(1986)). With q the free Z-matrix coordinates plus the six external ones, and the constrained
bond lengths as further coordinates of the full space, the partitioned inverse gives

    det G = det(G_full) det(Z),   Z_kl = sum_a (1/m_a) grad_a sigma_k . grad_a sigma_l,

where G_full = J_full^T M J_full is the metric of all 3N Z-matrix coordinates (so sqrt(det
G_full) = prod_a m_a^(3/2) |det dx/d(z, ext)|) and Z the mass-weighted Gram matrix of the
constraints sigma_k = |x_i - x_j| (grad_i sigma = u_ij, grad_j sigma = -u_ij). Hence, up to a
constant,

    log pi(y) = -U(x(y)) / kT + log |det dx/d(z, ext)| + 1/2 log det Z(x(y)),

the last term being the mass-metric factor that makes samples of this target equal in law to
constrained MD (it varies by about 1e-3 over typical configurations). The six external
coordinates are held at the reference structure's (the density does not depend on them).

The coordinates y are the free internal ones, standardised: bonds and angles as (z - z_ref) / s
with s = sqrt(kT_ref / k) the harmonic width of the force field's term for that bond or angle
(a fixed fallback where it has none), dihedrals in radians as they are (periodic: y and y + 2 pi
are the same configuration; `wrap` maps them to (-pi, pi]). The constant Jacobian of the
standardisation changes no law, and one MCMC step size then suits every coordinate.

Tempering divides only the Boltzmann factor: `tempered(t)` is the molecule at t times the
reference temperature, exp(-U / (kT t)) sqrt(det G), not the whole density to the power 1/t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from boltzkit.targets.base import Target, _batch_size
from boltzkit.targets.internal import ALDP_ROOTS, ALDP_ZMATRIX, InternalCoordinates
from boltzkit.targets.molecules.parameters import from_openmm
from boltzkit.targets.molecules.target import MolecularTarget

BOND, ANGLE, DIHEDRAL = 0, 1, 2
# Widths for Z-matrix bonds and angles that carry no harmonic term (nm, rad).
_FALLBACK_WIDTH = {BOND: 0.005, ANGLE: 0.05}


class ConstrainedInternalTarget(Target):
    """The molecule of `target` on its free internal coordinates y (module docstring).

    Args:
        target: a `MolecularTarget` whose constraints are all bonds of the Z-matrix.
        zmatrix, roots: the Z-matrix (`targets.internal`); default: alanine dipeptide's.

    Attributes:
        kinds: `[dim]` long, BOND / ANGLE / DIHEDRAL per coordinate of y.
        circular: `[dim]` bool, the dihedrals (periodic with period 2 pi).
    """

    def __init__(self, target: MolecularTarget,
                 zmatrix: tuple[tuple[int, int, int, int], ...] = ALDP_ZMATRIX,
                 roots: tuple[int, int, int] = ALDP_ROOTS) -> None:
        molecule = target.molecule
        ic = InternalCoordinates(zmatrix, roots, molecule.constraints)
        if len(ic.constrained) != len(molecule.constraints):
            raise ValueError(f"{target.name}: {len(molecule.constraints)} constraints, of which "
                             f"only {len(ic.constrained)} are Z-matrix bonds")
        self.ic, self.target = ic, target
        self._inner = target.uncounted()  # evaluations are counted once, by this target
        self._inner.temperature = 1.0
        m = ic.zmatrix.shape[0]
        all_kinds = torch.tensor([BOND] * m + [ANGLE] * m + [DIHEDRAL] * m + [BOND, BOND, ANGLE])
        keep = torch.ones(len(all_kinds), dtype=torch.bool)
        keep[ic.constrained] = False
        self.free = torch.nonzero(keep).squeeze(-1)
        # z = cat(free values, constrained lengths)[order]
        self._order = torch.argsort(torch.cat([self.free, ic.constrained]))
        super().__init__(len(self.free))
        self.name = f"{target.name}-internal"
        self.kinds = all_kinds[self.free]
        self.circular = self.kinds == DIHEDRAL
        z_ref, self._external = ic.to_internal(target.positions)[:2]
        self._z_ref = z_ref
        self._shift = torch.where(self.circular, 0.0, z_ref[self.free])
        self._scale = self._widths(target)
        self._constraints_ij = torch.tensor([(i, j) for i, j, _ in molecule.constraints])
        self._gram = _constraint_gram(molecule.constraints, _masses(molecule.system))
        self.reference_temperature = target.reference_temperature
        self.temperature = target.temperature

    # ---- coordinates ---------------------------------------------------------------------
    def to_cartesian(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(x `[..., 3N]` in nm, log |det dx/d(z, ext)| `[...]`) for y `[..., dim]`."""
        lengths = self.ic.constrained_lengths.to(y).expand(*y.shape[:-1], -1)
        z_free = y * self._scale.to(y) + self._shift.to(y)
        z = torch.cat([z_free, lengths], -1)[..., self._order.to(y.device)]
        return self.ic.to_cartesian(z, self._external.to(y).expand(*y.shape[:-1], -1))

    def from_cartesian(self, x: Tensor) -> Tensor:
        """y `[..., dim]` of Cartesian x `[..., 3N]` (dihedrals in (-pi, pi]; the constrained
        bond lengths and the orientation of x are dropped)."""
        z = self.ic.to_internal(x)[0]
        return (z[..., self.free.to(x.device)] - self._shift.to(x)) / self._scale.to(x)

    def wrap(self, y: Tensor) -> Tensor:
        """y with its dihedrals mapped to (-pi, pi] (the same configurations)."""
        wrapped = torch.remainder(y + math.pi, 2 * math.pi) - math.pi
        return torch.where(self.circular.to(y.device), wrapped, y)

    def initial_state(self) -> Tensor:
        """The reference structure's y `[dim]` (where MCMC chains start)."""
        return self.from_cartesian(self.target.positions)

    def log_mass_metric(self, x: Tensor) -> Tensor:
        """1/2 log det Z(x) `[...]`, the mass-metric factor of the constraints (docstring)."""
        ij = self._constraints_ij.to(x.device)
        atoms = x.unflatten(-1, (-1, 3))
        u = atoms[..., ij[:, 0], :] - atoms[..., ij[:, 1], :]
        u = u / u.norm(dim=-1, keepdim=True)
        gram = self._gram.to(x) * (u @ u.transpose(-1, -2))
        # cholesky_ex: a non-finite configuration (a diverged flow sample) gives NaN here, and
        # -inf from log_prob, instead of an exception for the whole batch
        factor, info = torch.linalg.cholesky_ex(torch.nan_to_num(gram))
        half_log_det = factor.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        bad = (info != 0) | ~torch.isfinite(gram).all(-1).all(-1)
        return torch.where(bad, torch.full_like(half_log_det, float("nan")), half_log_det)

    # ---- density -------------------------------------------------------------------------
    def _log_jacobian(self, y: Tensor, x: Tensor, log_det: Tensor) -> Tensor:
        """log |det dx/d(z, ext)| + 1/2 log det Z, and -inf where a bond length is not
        positive or an angle not in (0, pi)."""
        log_jac = log_det + self.log_mass_metric(x)
        z_free = y * self._scale.to(y) + self._shift.to(y)
        kinds = self.kinds.to(y.device)
        outside = (((kinds == BOND) & (z_free <= 0))
                   | ((kinds == ANGLE) & ((z_free <= 0) | (z_free >= math.pi)))).any(-1)
        return torch.where(outside, torch.full_like(log_jac, float("-inf")), log_jac)

    def _parts(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(-U/kT_ref, log Jacobian + mass metric), each `[...]`."""
        x, log_det = self.to_cartesian(y)
        return self._inner._log_prob(x), self._log_jacobian(y, x, log_det)

    def _log_prob(self, y: Tensor) -> Tensor:
        log_boltzmann, log_jac = self._parts(y)
        return log_boltzmann + log_jac

    def log_prob(self, y: Tensor) -> Tensor:
        """-U/(kT t) + log Jacobian + mass metric `[...]` (only the energy is tempered)."""
        self.check_input(y)
        self.counter.n_energy += _batch_size(y)
        log_boltzmann, log_jac = self._parts(y)
        return self._finite_or_minus_inf(log_boltzmann / self.temperature + log_jac)

    def log_prob_and_score(self, y: Tensor, create_graph: bool = False
                           ) -> tuple[Tensor, Tensor]:
        """(log_prob, grad_y log_prob): the Cartesian forces from the molecule's fast path,
        pulled back through x(y) by one vector-Jacobian product."""
        if create_graph:
            return self._log_prob_and_score_graph(y)
        self.check_input(y)
        n = _batch_size(y)
        self.counter.n_energy += n
        self.counter.n_grad += n
        t = self.temperature
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            x, log_det = self.to_cartesian(y)
            log_jac = self._log_jacobian(y, x, log_det)
            log_boltzmann, score_x = self._inner.log_prob_and_score(x.detach())
            score_x = score_x / (t.unsqueeze(-1) if isinstance(t, Tensor) else t)
            score_x = torch.where(torch.isfinite(score_x), score_x, torch.zeros_like(score_x))
            finite_jac = torch.where(torch.isfinite(log_jac), log_jac, torch.zeros_like(log_jac))
            (grad,) = torch.autograd.grad((x * score_x).sum() + finite_jac.sum(), y)
        lp = self._finite_or_minus_inf(log_boltzmann / t + log_jac.detach())
        return lp, grad

    def _log_prob_and_score_graph(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(y)
        n = _batch_size(y)
        self.counter.n_energy += n
        self.counter.n_grad += n
        with torch.enable_grad():
            if not y.requires_grad:
                y = y.detach().requires_grad_(True)
            log_boltzmann, log_jac = self._parts(y)
            lp = self._finite_or_minus_inf(log_boltzmann / self.temperature + log_jac)
            (grad,) = torch.autograd.grad(lp.sum(), y, create_graph=True)
        return lp, grad

    def describe(self) -> dict[str, object]:
        facts = super().describe()
        facts.update(molecule=self.target.name, n_constraints=len(self._constraints_ij),
                     reference_temperature_K=self.reference_temperature,
                     coordinates="free internal (standardised bonds and angles, dihedrals)")
        return facts

    def _widths(self, target: MolecularTarget) -> Tensor:
        """s per free coordinate: sqrt(kT / k) of the harmonic term, 1 for dihedrals."""
        ff = from_openmm(target.molecule.system)
        bond_k = {frozenset(map(int, b)): float(k)
                  for b, k in zip(ff.bonds, ff.bond_k, strict=True)}
        angle_k = {(int(a[1]), frozenset((int(a[0]), int(a[2])))): float(k)
                   for a, k in zip(ff.angles, ff.angle_k, strict=True)}
        rows = self.ic.zmatrix.tolist()
        r0, r1, r2 = self.ic.roots
        bonds = [frozenset(r[:2]) for r in rows] + [frozenset((r0, r1)), frozenset((r1, r2))]
        angles = [(r[1], frozenset((r[0], r[2]))) for r in rows] + [(r1, frozenset((r0, r2)))]
        m = len(rows)
        per_z = ([bond_k.get(b) for b in bonds[:m]] + [angle_k.get(a) for a in angles[:m]]
                 + [None] * m + [bond_k.get(b) for b in bonds[m:]] + [angle_k.get(angles[m])])
        kinds = [BOND] * m + [ANGLE] * m + [DIHEDRAL] * m + [BOND, BOND, ANGLE]
        widths = [1.0 if kind == DIHEDRAL else
                  (math.sqrt(target.kT / k) if k else _FALLBACK_WIDTH[kind])
                  for kind, k in zip(kinds, per_z, strict=True)]
        return torch.tensor(widths, dtype=torch.float64)[self.free]


def _masses(system: object) -> Tensor:
    """Atomic masses in dalton `[n_atoms]`."""
    import openmm.unit as unit

    n = system.getNumParticles()  # type: ignore[attr-defined]
    return torch.tensor([system.getParticleMass(i).value_in_unit(unit.dalton)  # type: ignore
                         for i in range(n)], dtype=torch.float64)


def _constraint_gram(constraints: tuple[tuple[int, int, float], ...], masses: Tensor) -> Tensor:
    """C `[K, K]` with Z = C * (u_k . u_l): C_kl = sum over shared atoms a of s_ka s_la / m_a,
    s = +1 for the first atom of a constraint and -1 for the second."""
    k = len(constraints)
    gram = torch.zeros(k, k, dtype=torch.float64)
    for a_row, (i, j, _) in enumerate(constraints):
        for b_row, (p, q, _) in enumerate(constraints):
            for atom, s in ((i, 1.0), (j, -1.0)):
                for other, t in ((p, 1.0), (q, -1.0)):
                    if atom == other:
                        gram[a_row, b_row] += s * t / masses[atom]
    return gram


def constrained_space(target: Target) -> ConstrainedInternalTarget | None:
    """The free-coordinate target of a molecule with constraints, else None."""
    constraints = getattr(getattr(target, "molecule", None), "constraints", ())
    if not constraints or not isinstance(target, MolecularTarget):
        return None
    return ConstrainedInternalTarget(target)
