"""Internal coordinates (targets/internal.py): the round trip, log |det J| against the autograd
Jacobian in float64 (a log-det without its sin(theta) terms must fail), phi and psi among the
dihedrals, and the constrained X-H bonds of aldp among the Z-matrix bonds."""

import pytest
import torch

from boltzkit.targets.internal import ALDP_ZMATRIX, InternalCoordinates
from boltzkit.targets.molecules import backbone_torsions
from boltzkit.targets.molecules.systems import data_file

F64 = torch.float64


def structures(n: int, scale: float = 0.02, seed: int = 0) -> torch.Tensor:
    lines = [ln for ln in data_file("alanine-dipeptide.pdb").read_text().splitlines()
             if ln.startswith(("ATOM", "HETATM"))]
    xyz = [[float(ln[30 + 8 * k: 38 + 8 * k]) for k in range(3)] for ln in lines]
    x = 0.1 * torch.tensor(xyz, dtype=F64).reshape(-1)
    g = torch.Generator().manual_seed(seed)
    return x + scale * torch.randn(n, 66, generator=g, dtype=F64)


def test_round_trip_and_shapes():
    ic = InternalCoordinates()
    x = structures(8).view(2, 4, 66)
    z, external, log_det = ic.to_internal(x)
    assert z.shape == (2, 4, 60) and external.shape == (2, 4, 6) and log_det.shape == (2, 4)
    back, log_det_inv = ic.to_cartesian(z, external)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det_inv, -log_det)


def test_log_det_equals_the_autograd_jacobian():
    ic = InternalCoordinates()
    z, external, _ = ic.to_internal(structures(3, seed=1))

    def inverse(v: torch.Tensor) -> torch.Tensor:
        return ic.to_cartesian(v[:60], v[60:])[0]

    for zi, ei in zip(z, external, strict=True):
        jac = torch.autograd.functional.jacobian(inverse, torch.cat([zi, ei]))
        exact = torch.linalg.slogdet(jac).logabsdet
        _, log_det = ic.to_cartesian(zi, ei)
        assert abs(log_det - exact) < 1e-9
        m = len(ALDP_ZMATRIX)
        no_sines = (2 * zi[:m].log()).sum() + 2 * zi[3 * m:3 * m + 2].log().sum()
        assert abs(no_sines - exact) > 1e-3, "a log-det without sin(theta) must fail"


def test_phi_and_psi_are_internal_dihedrals():
    ic = InternalCoordinates()
    x = structures(5, scale=0.05, seed=2)
    z, _, _ = ic.to_internal(x)
    atoms = [row[0] for row in ALDP_ZMATRIX]
    m = len(atoms)
    torsions = backbone_torsions(x)
    torch.testing.assert_close(z[:, 2 * m + atoms.index(4)], torsions[:, 0])
    torch.testing.assert_close(z[:, 2 * m + atoms.index(16)], torsions[:, 1])


def test_the_constrained_hydrogen_bonds_are_zmatrix_bonds():
    pytest.importorskip("openmm")
    from boltzkit.targets.molecules import aldp

    constraints = aldp().molecule.constraints
    ic = InternalCoordinates(constraints=constraints)
    assert len(ic.constrained) == len(constraints) == 12
    z, external, _ = ic.to_internal(structures(2))
    z[:, ic.constrained] = ic.constrained_lengths
    x, _ = ic.to_cartesian(z, external)
    atoms = x.view(-1, 22, 3)
    for i, j, length in constraints:
        torch.testing.assert_close((atoms[:, i] - atoms[:, j]).norm(dim=-1),
                                   torch.full((2,), length, dtype=F64))


def test_an_invalid_zmatrix_is_refused():
    with pytest.raises(ValueError, match="unplaced"):
        InternalCoordinates(zmatrix=((3, 4, 1, 0),) + ALDP_ZMATRIX[1:])
