"""Vectorised internal coordinates of molecules: bond lengths, bond angles and dihedrals.

Every function takes coordinates `x` of shape `[..., n_atoms, 3]` and an index tensor whose rows
name the atoms, and returns one value per row over the leading batch shape. They are plain
tensor ops, differentiable twice, device- and dtype-following.

>>> x = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=torch.float64)
>>> float(angle(x, torch.tensor([[0, 1, 2]]))[0])  # pi / 2
1.5707963267948966
>>> float(dihedral(x, torch.tensor([[0, 1, 2, 3]]))[0])  # pi / 2: right-handed
1.5707963267948966
"""

from __future__ import annotations

import torch
from torch import Tensor

# Alanine dipeptide backbone torsions (atom indices of targets/data/alanine-dipeptide.pdb):
# phi = C(ACE)-N-CA-C, psi = N-CA-C-N(NME).
PHI_ATOMS = (4, 6, 8, 14)
PSI_ATOMS = (6, 8, 14, 16)
# The improper at CA: (N, C, CB, CA) in the same atom order; < 0 for L-alanine (`is_d_alanine`).
CA_IMPROPER_ATOMS = (6, 14, 10, 8)


def as_atoms(x: Tensor, n_atoms: int | None = None) -> Tensor:
    """`[..., 3 n]` flat coordinates (or `[..., n, 3]` already) as `[..., n, 3]`."""
    if x.ndim >= 2 and x.shape[-1] == 3 and (n_atoms is None or x.shape[-2] == n_atoms):
        return x
    if x.shape[-1] % 3:
        raise ValueError(f"expected [..., 3 * n_atoms] coordinates, got {tuple(x.shape)}")
    return x.unflatten(-1, (x.shape[-1] // 3, 3))


def distance(x: Tensor, pairs: Tensor) -> Tensor:
    """|x_j - x_i| for rows (i, j) of `pairs` `[m, 2]`; returns `[..., m]`."""
    diff = x[..., pairs[:, 1], :] - x[..., pairs[:, 0], :]
    return diff.square().sum(-1).sqrt()


def angle(x: Tensor, triples: Tensor) -> Tensor:
    """The angle at j between bonds j->i and j->k, in [0, pi], for rows (i, j, k) `[m, 3]`.

    atan2(|u x v|, u . v) rather than acos(u . v / |u||v|): finite gradient at 0 and pi.
    """
    u = x[..., triples[:, 0], :] - x[..., triples[:, 1], :]
    v = x[..., triples[:, 2], :] - x[..., triples[:, 1], :]
    return torch.atan2(torch.linalg.cross(u, v).norm(dim=-1), (u * v).sum(-1))


def dihedral(x: Tensor, quads: Tensor) -> Tensor:
    """The IUPAC dihedral angle in (-pi, pi] for rows (i, j, k, l) `[m, 4]`; returns `[..., m]`.

    With b1 = x_j - x_i, b2 = x_k - x_j, b3 = x_l - x_k:
    phi = atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)), positive when, looking along b2,
    bond k-l is turned clockwise from bond j-i (OpenMM's and mdtraj's convention).
    """
    p = [x[..., quads[:, c], :] for c in range(4)]
    b1, b2, b3 = p[1] - p[0], p[2] - p[1], p[3] - p[2]
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    y = b2.norm(dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))


def backbone_torsions(x: Tensor) -> Tensor:
    """(phi, psi) of alanine dipeptide `[..., 2]` in radians, for x `[..., 66]` or `[..., 22, 3]`.

    phi = dihedral(4, 6, 8, 14), psi = dihedral(6, 8, 14, 16) (REFERENCE.md, "Alanine dipeptide").
    """
    quads = torch.tensor([PHI_ATOMS, PSI_ATOMS], device=x.device)
    return dihedral(as_atoms(x, 22), quads)


def is_d_alanine(x: Tensor) -> Tensor:
    """Whether each configuration is the D enantiomer (mirror image at CA), bool `[...]`.

    The improper dihedral (N, C, CB, CA) is negative for L-alanine (the shipped PDB; there
    det[C - CA, CB - CA, N - CA] > 0, the CORN rule) and changes sign under any reflection; a
    planar CA (dihedral exactly 0) counts as L.
    """
    quads = torch.tensor([CA_IMPROPER_ATOMS], device=x.device)
    return dihedral(as_atoms(x, 22), quads)[..., 0] > 0
