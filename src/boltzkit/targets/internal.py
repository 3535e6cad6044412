"""A bijection between Cartesian and internal coordinates (Z-matrix), with its log |det J|.

Three root atoms (r0, r1, r2) carry the six external degrees of freedom and three internal
ones; every other atom is placed from three earlier atoms (a, b, c) by its bond length to a, its
angle at a and its dihedral (c, b, a, atom):

    z = [bonds (m), angles (m), dihedrals (m), |r1 - r0|, |r2 - r1|, angle(r0, r1, r2)]   (3N - 6)
    external = [x_r0 (3), alpha, beta (polar and azimuthal angles of r1 - r0), gamma]      (6)

gamma is the azimuth of r2 about the axis r0 -> r1, measured in the frame (e1, e2) =
(d u / d alpha, u x e1) of the unit axis u. The Cartesian volume element is
dx = prod_atoms r^2 sin(theta) dr dtheta dphi x d1^2 sin(alpha) x d2^2 sin(theta2) d(...), so

    log |det d x / d (z, external)| = sum_atoms (2 log r + log sin theta) + 2 log d1
                                      + log sin alpha + 2 log d2 + log sin theta2.

Placement is NeRF (Parsons et al., J. Comput. Chem. 26, 1063 (2005)), sequential over atoms and
vectorised over configurations. Constrained bonds (the 12 X-H bonds of `aldp`) are Z-matrix
bonds: `constrained` marks them in z with their lengths, so that a model can hold them fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from boltzkit.targets.molecules.geometry import angle, dihedral

# (atom, a, b, c) for alanine dipeptide (atom order of targets/data/README.md), after the roots
# N (6), CA (8), C (14): psi and phi are the dihedrals of atoms 16 and 4.
ALDP_ROOTS = (6, 8, 14)
ALDP_ZMATRIX = (
    (16, 14, 8, 6), (15, 14, 8, 6), (4, 6, 8, 14), (7, 6, 8, 4), (5, 4, 6, 8), (1, 4, 6, 8),
    (0, 1, 4, 6), (2, 1, 4, 6), (3, 1, 4, 6), (9, 8, 6, 14), (10, 8, 6, 14), (11, 10, 8, 6),
    (12, 10, 8, 6), (13, 10, 8, 6), (17, 16, 14, 8), (18, 16, 14, 8), (19, 18, 16, 14),
    (20, 18, 16, 14), (21, 18, 16, 14),
)


class InternalCoordinates:
    """Cartesian `[..., 3N]` <-> (internal z `[..., 3N - 6]`, external `[..., 6]`).

    Args:
        zmatrix: rows (atom, a, b, c), each referring only to the roots or earlier rows.
        roots: the three root atoms (r0, r1, r2), r1 bonded to r0 and r2 to r1.
        constraints: (i, j, length) distance constraints; those that are Z-matrix bonds are
            reported in `constrained` (index into z) and `constrained_lengths`.
    """

    def __init__(self, zmatrix: tuple[tuple[int, int, int, int], ...] = ALDP_ZMATRIX,
                 roots: tuple[int, int, int] = ALDP_ROOTS,
                 constraints: tuple[tuple[int, int, float], ...] = ()) -> None:
        placed = set(roots)
        for atom, a, b, c in zmatrix:
            if not {a, b, c} <= placed or atom in placed:
                raise ValueError(f"Z-matrix row {(atom, a, b, c)} refers to unplaced atoms")
            placed.add(atom)
        self.n_atoms = len(placed)
        if placed != set(range(self.n_atoms)):
            raise ValueError("the Z-matrix must place atoms 0..N-1 exactly once")
        self.zmatrix = torch.tensor(zmatrix, dtype=torch.long).reshape(-1, 4)
        self.roots = roots
        bonds = {frozenset((int(r[0]), int(r[1]))): k for k, r in enumerate(self.zmatrix)}
        hits = [(bonds[frozenset((i, j))], length) for i, j, length in constraints
                if frozenset((i, j)) in bonds]
        self.constrained = torch.tensor([k for k, _ in hits], dtype=torch.long)
        self.constrained_lengths = torch.tensor([v for _, v in hits], dtype=torch.float64)

    @property
    def dim(self) -> int:
        return 3 * self.n_atoms

    def to_internal(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z `[..., 3N - 6]`, external `[..., 6]`, log |det d(z, ext)/dx| `[...]`)."""
        xa = x.unflatten(-1, (self.n_atoms, 3))
        rows = self.zmatrix.to(x.device)
        r = (xa[..., rows[:, 0], :] - xa[..., rows[:, 1], :]).norm(dim=-1)
        theta = angle(xa, rows[:, [0, 1, 2]])
        phi = dihedral(xa, rows[:, [3, 2, 1, 0]])
        r0, r1, r2 = (xa[..., i, :] for i in self.roots)
        d1, d2 = (r1 - r0).norm(dim=-1), (r2 - r1).norm(dim=-1)
        theta2 = angle(xa, torch.tensor([self.roots], device=x.device))[..., 0]
        u = (r1 - r0) / d1.unsqueeze(-1)
        alpha = torch.acos(u[..., 2].clamp(-1, 1))
        beta = torch.atan2(u[..., 1], u[..., 0])
        e1, e2 = _frame(alpha, beta)
        w = r2 - r1
        gamma = torch.atan2((w * e2).sum(-1), (w * e1).sum(-1))
        z = torch.cat([r, theta, phi, torch.stack([d1, d2, theta2], -1)], -1)
        external = torch.cat([r0, torch.stack([alpha, beta, gamma], -1)], -1)
        return z, external, -self._log_det(z, external)

    def to_cartesian(self, z: Tensor, external: Tensor) -> tuple[Tensor, Tensor]:
        """(x `[..., 3N]`, log |det dx/d(z, ext)| `[...]`), the inverse of `to_internal`."""
        m = self.zmatrix.shape[0]
        r, theta, phi = z[..., :m], z[..., m:2 * m], z[..., 2 * m:3 * m]
        d1, d2, theta2 = z[..., 3 * m], z[..., 3 * m + 1], z[..., 3 * m + 2]
        alpha, beta, gamma = external[..., 3], external[..., 4], external[..., 5]
        u = torch.stack([alpha.sin() * beta.cos(), alpha.sin() * beta.sin(), alpha.cos()], -1)
        e1, e2 = _frame(alpha, beta)
        pos: dict[int, Tensor] = {}
        i0, i1, i2 = self.roots
        pos[i0] = external[..., :3]
        pos[i1] = pos[i0] + d1.unsqueeze(-1) * u
        side = gamma.cos().unsqueeze(-1) * e1 + gamma.sin().unsqueeze(-1) * e2
        w = -theta2.cos().unsqueeze(-1) * u + theta2.sin().unsqueeze(-1) * side
        pos[i2] = pos[i1] + d2.unsqueeze(-1) * w
        for k, (atom, a, b, c) in enumerate(self.zmatrix.tolist()):
            pos[atom] = _place(pos[a], pos[b], pos[c], r[..., k], theta[..., k], phi[..., k])
        x = torch.stack([pos[i] for i in range(self.n_atoms)], -2).flatten(-2)
        return x, self._log_det(z, external)

    def _log_det(self, z: Tensor, external: Tensor) -> Tensor:
        m = self.zmatrix.shape[0]
        r, theta = z[..., :m], z[..., m:2 * m]
        d1, d2, theta2 = z[..., 3 * m], z[..., 3 * m + 1], z[..., 3 * m + 2]
        return ((2 * r.log() + theta.sin().log()).sum(-1) + 2 * d1.log()
                + external[..., 3].sin().log() + 2 * d2.log() + theta2.sin().log())


def _frame(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """(e1, e2) = (d u / d alpha, u x e1) for u = (sin a cos b, sin a sin b, cos a)."""
    e1 = torch.stack([alpha.cos() * beta.cos(), alpha.cos() * beta.sin(), -alpha.sin()], -1)
    e2 = torch.stack([-beta.sin(), beta.cos(), torch.zeros_like(beta)], -1)
    return e1, e2


def _place(a: Tensor, b: Tensor, c: Tensor, r: Tensor, theta: Tensor, phi: Tensor) -> Tensor:
    """The atom at distance r from a, angle theta at a (with b), dihedral (c, b, a, atom) = phi."""
    bc = a - b
    bc = bc / bc.norm(dim=-1, keepdim=True)
    n = torch.linalg.cross(b - c, bc)
    n = n / n.norm(dim=-1, keepdim=True)
    m = torch.linalg.cross(n, bc)
    st = theta.sin()
    local = (-r * theta.cos(), r * st * phi.cos(), r * st * phi.sin())
    return a + local[0].unsqueeze(-1) * bc + local[1].unsqueeze(-1) * m + local[2].unsqueeze(-1) * n

