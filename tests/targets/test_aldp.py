"""Alanine dipeptide through OpenMM: the torch energies against OpenMM's Reference platform.

Float64 equality (1e-6 relative, 1e-4 kJ/mol or kJ/(mol nm) absolute) of energies and forces on
the shipped structure, on short-MD frames at 300 K and 1000 K and on randomly perturbed frames,
for both conventions; the OpenMM context-pool backend (CPU platform, mixed precision) against
the same reference; forces against finite differences; temperature, tempering, non-finite
handling and the registry parameters. The generic Target contract runs in test_contract.py.
"""

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch

openmm = pytest.importorskip("openmm")

from boltzkit import targets  # noqa: E402
from boltzkit.core.errors import UsageError  # noqa: E402
from boltzkit.targets.molecules import MolecularTarget, aldp, aldp_fab, fused  # noqa: E402
from boltzkit.targets.molecules.energy import energy  # noqa: E402
from boltzkit.targets.molecules.parameters import from_openmm  # noqa: E402
from boltzkit.targets.molecules.systems import K_B  # noqa: E402

F64 = torch.float64
NAMES = ["aldp", "aldp-fab"]
KJ = openmm.unit.kilojoule_per_mole


@functools.cache
def target(name: str, backend: str = "torch") -> MolecularTarget:
    make = {"aldp": aldp, "aldp-fab": aldp_fab}[name]
    return make(backend=backend)


def reference_context(t: MolecularTarget, platform: str = "Reference") -> openmm.Context:
    return openmm.Context(t.molecule.system, openmm.VerletIntegrator(0.001),
                          openmm.Platform.getPlatformByName(platform))


def reference(t: MolecularTarget, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E `[b]` kJ/mol, F `[b, 66]` kJ/(mol nm)) from OpenMM's double-precision Reference."""
    context = reference_context(t)
    energies, forces = [], []
    for row in x.view(-1, 22, 3).numpy():
        context.setPositions(row)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ / openmm.unit.nanometer))
    return torch.tensor(energies, dtype=F64), torch.tensor(np.array(forces)).view(len(x), -1)


@functools.cache
def md_frames(name: str, kelvin: float, n_frames: int = 6, stride: int = 100) -> torch.Tensor:
    """Short Langevin MD from the minimised structure (CPU platform, fixed seed)."""
    t = target(name)
    integrator = openmm.LangevinMiddleIntegrator(kelvin, 1.0, 0.001)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(t.molecule.system, integrator,
                             openmm.Platform.getPlatformByName("CPU"), {"Threads": "1"})
    context.setPositions(t.molecule.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 200)
    context.setVelocitiesToTemperature(kelvin, 1)
    frames = []
    for _ in range(n_frames):
        integrator.step(stride)
        pos = context.getState(getPositions=True).getPositions(asNumpy=True)
        frames.append(pos.value_in_unit(openmm.unit.nanometer).reshape(-1))
    return torch.tensor(np.array(frames), dtype=F64)


def frames(name: str) -> dict[str, torch.Tensor]:
    t = target(name)
    g = torch.Generator().manual_seed(0)
    pdb = t.positions[None]
    return {"pdb": pdb,
            "md-300K": md_frames(name, 300.0), "md-1000K": md_frames(name, 1000.0),
            "perturbed": pdb + 0.01 * torch.randn(6, 66, generator=g, dtype=F64),
            "strongly-perturbed": pdb + 0.04 * torch.randn(4, 66, generator=g, dtype=F64)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["pdb", "md-300K", "md-1000K", "perturbed", "strongly-perturbed"])
@pytest.mark.parametrize("path", ["fused", "autograd"])
def test_torch_energies_and_forces_equal_openmm_reference(name, kind, path):
    """Both torch paths: the compiled kernel (hand-derived forces) and tensor ops + autograd."""
    if path == "fused" and fused.kernel() is None:
        pytest.skip(f"no fused kernel: {fused.build_error()}")
    t = target(name).uncounted()
    t.fused = path == "fused"
    x = frames(name)[kind]
    e_ref, f_ref = reference(t, x)
    lp, score = t.log_prob_and_score(x)
    torch.testing.assert_close(-lp * t.kT, e_ref, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(score * t.kT, f_ref, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(-t.log_prob(x) * t.kT, e_ref, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(t.potential_energy(x), e_ref, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_kernel_equals_autograd_of_the_tensor_ops(name, dtype):
    module = fused.kernel()
    if module is None:
        pytest.skip(f"no fused kernel: {fused.build_error()}")
    t = target(name)
    g = torch.Generator().manual_seed(3)
    x = (t.positions + 0.03 * torch.randn(64, 66, generator=g, dtype=F64)).to(dtype)
    ff = t._forcefield.to(x.device, dtype)
    atoms = x.view(-1, 22, 3)
    e, grad = fused.energy_and_grad(module, atoms, t._forcefield, need_grad=True)
    e_only, none = fused.energy_and_grad(module, atoms, t._forcefield, need_grad=False)
    assert e.dtype == grad.dtype == dtype
    xg = atoms.clone().requires_grad_(True)
    e_ag = energy(xg, ff)
    (grad_ag,) = torch.autograd.grad(e_ag.sum(), xg)
    tol = 1e-10 if dtype == F64 else 1e-4
    scale = grad_ag.abs().max().item()
    torch.testing.assert_close(e, e_ag.detach(), rtol=tol, atol=tol * e_ag.abs().max().item())
    torch.testing.assert_close(grad, grad_ag, rtol=tol, atol=tol * scale)
    assert none is None and torch.equal(e_only, e)


@pytest.mark.parametrize("periodicities", [(0, 5, 6), (7, 9, 1)])
def test_fused_kernel_handles_every_torsion_periodicity(periodicities):
    """The kernel groups the terms of one dihedral into a Fourier series, unrolled for
    periodicities up to 6 and by a run-time loop above; n = 0 is a constant. Both equal the
    autograd of the tensor ops on a force field with such terms (aldp itself has n <= 3)."""
    module = fused.kernel()
    if module is None:
        pytest.skip(f"no fused kernel: {fused.build_error()}")
    t = target("aldp")
    n = t._forcefield.torsion_n.clone()
    n[: len(periodicities)] = torch.tensor(periodicities, dtype=F64)
    ff = replace(t._forcefield, torsion_n=n)
    g = torch.Generator().manual_seed(4)
    atoms = (t.positions + 0.03 * torch.randn(40, 66, generator=g, dtype=F64)).view(-1, 22, 3)
    e, grad = fused.energy_and_grad(module, atoms, ff, need_grad=True)
    xg = atoms.clone().requires_grad_(True)
    e_ag = energy(xg, ff)
    (grad_ag,) = torch.autograd.grad(e_ag.sum(), xg)
    assert (e_ag - energy(atoms, t._forcefield)).abs().min() > 1e-3  # the change matters
    torch.testing.assert_close(e, e_ag.detach(), rtol=1e-10, atol=1e-10 * e_ag.abs().max().item())
    torch.testing.assert_close(grad, grad_ag, rtol=1e-10, atol=1e-10 * grad_ag.abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_a_wrong_force_field_term_is_detected(name):
    """The comparison is sharp: without the surface-area term, or with OBC2's Born-radius
    coefficients swapped for OBC1's, the energy leaves the tolerance by orders of magnitude."""
    t = target(name)
    x = frames(name)["md-300K"]
    e_ref, _ = reference(t, x)
    ff = from_openmm(t.molecule.system)
    other = (0.8, 0.0, 2.909125) if ff.gb.beta else (1.0, 0.8, 4.85)
    for gb in [replace(ff.gb, sa_factor=0.0),
               replace(ff.gb, **dict(zip(["alpha", "beta", "gamma"], other, strict=True)))]:
        broken = MolecularTarget(t.molecule, backend="torch")
        broken._forcefield = replace(ff, gb=gb)
        broken._cast.clear()
        assert (broken.potential_energy(x) - e_ref).abs().min() > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_openmm_backend_equals_reference_within_mixed_precision(name):
    t = target(name, "openmm")
    x = torch.cat([frames(name)["md-300K"], frames(name)["perturbed"]])
    e_ref, f_ref = reference(t, x)
    lp, score = t.log_prob_and_score(x)
    torch.testing.assert_close(-lp * t.kT, e_ref, rtol=1e-5, atol=1e-3)
    scale = f_ref.abs().max()
    torch.testing.assert_close(score * t.kT, f_ref, rtol=1e-4, atol=1e-5 * scale)
    # the autograd path (forces saved by the custom Function) gives the same score
    _, score_ag = targets.Target.log_prob_and_score(t, x)
    torch.testing.assert_close(score_ag, score)


@pytest.mark.parametrize("backend", ["torch", "openmm"])
def test_score_matches_finite_differences(backend):
    t = target("aldp", backend)
    x = frames("aldp")["md-300K"][:2]
    _, score = t.log_prob_and_score(x)
    h = 1e-5
    eye = h * torch.eye(66, dtype=F64)
    fd = (t.log_prob(x[:, None] + eye) - t.log_prob(x[:, None] - eye)) / (2 * h)
    # OpenMM's CPU platform computes in single precision: its FD noise is ~1e-7 E / h
    tol = 1e-4 if backend == "torch" else 2e-1
    torch.testing.assert_close(score, fd, rtol=tol, atol=tol * score.abs().max().item())


def test_log_prob_is_minus_energy_over_kT_and_temperature_is_kelvin():
    t300, t600 = aldp(300.0), aldp(600.0)
    assert t300.kT == pytest.approx(300 * K_B) and K_B == 0.0083144626
    x = frames("aldp")["md-300K"]
    e = t300.potential_energy(x)
    torch.testing.assert_close(t300.log_prob(x), -e / (K_B * 300))
    torch.testing.assert_close(t600.log_prob(x), t300.tempered(2.0).log_prob(x))
    torch.testing.assert_close(t600.score(x), t300.tempered(2.0).score(x))


@pytest.mark.parametrize("backend", ["torch", "openmm"])
def test_overlapping_atoms_give_minus_inf_and_are_counted(backend):
    t = target("aldp", backend).uncounted()
    x = t.positions.clone().view(22, 3)
    x[0] = x[5]
    batch = torch.stack([t.positions, x.reshape(-1)])
    lp = t.log_prob(batch)
    assert torch.isfinite(lp[0]) and lp[1] == float("-inf")
    assert t.counter.as_dict() == {"n_energy": 2, "n_grad": 0, "n_nonfinite": 1}
    nan_row = torch.full((1, 66), float("nan"), dtype=F64)
    assert t.log_prob(nan_row)[0] == float("-inf")


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_torch_backend_follows_dtype_and_batch_shape(dtype):
    t = target("aldp-fab")
    x = frames("aldp-fab")["md-300K"][:6].to(dtype).view(2, 3, 66)
    lp, score = t.log_prob_and_score(x)
    assert lp.shape == (2, 3) and lp.dtype == dtype and score.shape == x.shape
    e64 = t.potential_energy(x.to(F64))
    torch.testing.assert_close(-lp.to(F64) * t.kT, e64, rtol=1e-5, atol=1e-2)


def test_the_two_conventions_differ_as_documented():
    a, fab = target("aldp"), target("aldp-fab")
    assert (a.dim, fab.dim, a.n_particles) == (66, 66, 22)
    assert len(a.molecule.constraints) == 12 and len(fab.molecule.constraints) == 0
    assert a.molecule.atom_names == fab.molecule.atom_names
    kinds = {type(f).__name__ for f in fab.molecule.system.getForces()}
    assert "CustomGBForce" in kinds and "GBSAOBCForce" not in kinds
    assert "GBSAOBCForce" in {type(f).__name__ for f in a.molecule.system.getForces()}


def test_registry_parameters_and_bad_backend():
    assert targets.params("aldp") == {"temperature": 300.0, "backend": "torch"}
    t = targets.build("aldp-fab", ["temperature=450", "backend=openmm"])
    assert t.reference_temperature == 450.0 and t.backend == "openmm" and t.name == "aldp-fab"
    with pytest.raises(UsageError, match="valid backends: torch, openmm"):
        targets.build("aldp", ["backend=cuda"])
    with pytest.raises(UsageError, match="temperature must be positive"):
        targets.build("aldp", ["temperature=-1"])


def test_temperature_family_gives_the_action_derivative_in_kelvin():
    """A = dS/dT = -E / (k_B T^2) with S = E / (k_B T), by autograd through tempering."""
    from boltzkit.targets.family import Family, action_derivative

    t = target("aldp")
    x = frames("aldp")["md-300K"][:3]
    kelvin = torch.tensor([300.0, 450.0, 600.0], dtype=F64)
    log_gamma, a = action_derivative(Family(t, "temperature", c_ref=300.0), x, kelvin)
    e = t.potential_energy(x).detach()
    torch.testing.assert_close(log_gamma, -e / (K_B * kelvin))
    torch.testing.assert_close(a, -e / (K_B * kelvin**2))


@pytest.mark.parametrize("backend", ["torch", "openmm"])
def test_score_with_per_sample_temperatures_equals_autograd(backend):
    t = target("aldp", backend)
    x = frames("aldp")["md-300K"][:3]
    temps = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    lp, score = t.tempered(temps).log_prob_and_score(x)
    lp_ag, score_ag = targets.Target.log_prob_and_score(t.tempered(temps), x)
    torch.testing.assert_close(lp, lp_ag)
    torch.testing.assert_close(score, score_ag)
    torch.testing.assert_close(score[2], t.score(x[2:])[0] / 2.0)
