"""Molecular metrics: torsions (against OpenMM's own dihedral), Ramachandran histograms with
their axis convention, KL/TV against closed forms and noise floors, the phi > 0 population
within 5 SE, the D-alanine fraction on the PDB and its mirror image; each with a broken variant
(swapped axes, psi of the wrong sign, the wrong torsion) that must fail."""

import math

import numpy as np
import pytest
import torch

from boltzkit.evaluate import molecular
from boltzkit.targets.molecules import backbone_torsions, is_d_alanine
from boltzkit.targets.molecules.systems import data_file

F64 = torch.float64
Z = 5.0


def pdb_positions() -> torch.Tensor:
    """The shipped structure `[22, 3]` in nm, read without openmm (PDB columns 31-54)."""
    lines = [ln for ln in data_file("alanine-dipeptide.pdb").read_text().splitlines()
             if ln.startswith(("ATOM", "HETATM"))]
    xyz = [[float(ln[30 + 8 * k: 38 + 8 * k]) for k in range(3)] for ln in lines]
    return 0.1 * torch.tensor(xyz, dtype=F64)


def rotate_about(x: torch.Tensor, a: int, b: int, moving: list[int], angle: float):
    """Rotates atoms `moving` by `angle` (right-handed) about the axis from atom a to atom b."""
    axis = (x[b] - x[a]) / (x[b] - x[a]).norm()
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = torch.eye(3, dtype=F64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    out = x.clone()
    out[moving] = (x[moving] - x[b]) @ rot.T + x[b]
    return out


def with_torsions(phi: float, psi: float) -> torch.Tensor:
    """The PDB (phi = psi = pi) with its backbone turned to (phi, psi), flat `[66]`."""
    x = pdb_positions()
    x = rotate_about(x, 6, 8, list(range(9, 22)), phi - math.pi)  # C-terminal side of N-CA
    x = rotate_about(x, 8, 14, list(range(15, 22)), psi - math.pi)  # ... of CA-C
    return x.reshape(-1)


def wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def test_backbone_torsions_follow_bond_rotations():
    grid = [(-1.4, 2.6), (-1.4, -0.7), (1.0, 0.5), (2.9, -3.0)]
    x = torch.stack([with_torsions(p, s) for p, s in grid])
    got = backbone_torsions(x)
    assert got.shape == (4, 2)
    torch.testing.assert_close(wrap(got - torch.tensor(grid, dtype=F64)),
                               torch.zeros(4, 2, dtype=F64), atol=1e-9, rtol=0)


def test_torsions_equal_openmm_dihedrals_and_a_wrong_psi_sign_fails():
    openmm = pytest.importorskip("openmm")
    x = torch.stack([with_torsions(p, s) for p, s in [(-1.4, 2.6), (-1.2, -0.7), (1.0, 0.5)]])
    ours = molecular.torsions(x)
    for col, atoms in enumerate([(4, 6, 8, 14), (6, 8, 14, 16)]):
        system = openmm.System()
        for _ in range(22):
            system.addParticle(1.0)
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*atoms, [])
        system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                 openmm.Platform.getPlatformByName("Reference"))
        theirs = []
        for row in x.view(-1, 22, 3).numpy():
            context.setPositions(row)
            energy = context.getState(getEnergy=True).getPotentialEnergy()
            theirs.append(energy.value_in_unit(openmm.unit.kilojoule_per_mole))
        theirs = torch.tensor(theirs, dtype=F64)
        torch.testing.assert_close(ours[:, col], theirs, atol=1e-9, rtol=0)
        if col == 1:
            assert (-ours[:, col] - theirs).abs().max() > 0.5, "psi of the wrong sign must fail"


def test_histogram_axes_and_wrapping():
    h = molecular.ramachandran_histogram(torch.tensor([[-2.5, 1.0]], dtype=F64), n_bins=30)
    assert h.shape == (30, 30) and h[3, 19] == 1.0 and h.sum() == 1.0
    swapped = molecular.ramachandran_histogram(torch.tensor([[1.0, -2.5]], dtype=F64), n_bins=30)
    assert swapped[3, 19] == 0.0, "phi must be the first axis"
    edge = molecular.ramachandran_histogram(torch.tensor([[math.pi, -math.pi]], dtype=F64), 30)
    assert edge[0, 0] == 1.0


def test_kl_and_tv_against_closed_forms():
    centre = -math.pi + math.pi / 30  # the centre of bin 0 (of 30)
    a, b = [centre, centre], [centre, centre + 2 * math.pi / 30]
    ref = torch.tensor([a, b] * 500, dtype=F64)  # p = (1/2, 1/2)
    samples = torch.tensor([a] * 250 + [b] * 750, dtype=F64)  # q = (1/4, 3/4)
    exact = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert molecular.ramachandran_kl(samples, ref) == pytest.approx(exact, abs=1e-6)
    assert molecular.ramachandran_tv(samples, ref) == pytest.approx(0.25, abs=1e-12)
    assert molecular.ramachandran_kl(ref, ref) == pytest.approx(0.0, abs=1e-6)
    # an empty sample bin costs a large but finite amount
    assert 5 < molecular.ramachandran_kl(torch.tensor([a] * 1000, dtype=F64), ref) < 20


def mixture(n: int, seed: int, alpha_l: float = 0.05) -> torch.Tensor:
    """(phi, psi) from three wrapped Gaussians: C7eq/beta, alpha_R and (weight alpha_l) alpha_L."""
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor([[-1.4, 2.6], [-1.3, -0.7], [1.0, 0.6]], dtype=F64)
    w = torch.tensor([0.65 * (1 - alpha_l) / 0.95, 0.30 * (1 - alpha_l) / 0.95, alpha_l])
    k = torch.multinomial(w.to(F64), n, replacement=True, generator=g)
    return wrap(means[k] + 0.3 * torch.randn(n, 2, generator=g, dtype=F64))


def noise_floor(metric, n: int, replicates: int = 8) -> float:
    """mean + Z sd of the metric between independent same-law sets of size n."""
    values = np.array([metric(mixture(n, 100 + 2 * r), mixture(n, 101 + 2 * r))
                       for r in range(replicates)])
    return values.mean() + Z * values.std(ddof=1)


@pytest.mark.parametrize("metric", [molecular.ramachandran_kl, molecular.ramachandran_tv])
def test_histogram_metrics_separate_swapped_axes_and_wrong_psi_sign(metric):
    n = 10_000
    threshold = noise_floor(metric, n)
    ref, samples = mixture(n, 0), mixture(n, 1)
    assert metric(samples, ref) < threshold
    assert metric(samples.flip(-1), ref) > threshold, "swapped axes must fail"
    wrong_psi = samples * torch.tensor([1.0, -1.0], dtype=F64)
    assert metric(wrong_psi, ref) > threshold, "psi of the wrong sign must fail"


def test_weighted_histogram_recovers_the_target_law():
    """Samples with alpha_L weight 0.3, reweighted to 0.05: agree with the reference law."""
    n = 10_000
    proposal = mixture(n, 2, alpha_l=0.3)
    in_l = proposal[:, 0] > 0  # the alpha_L mode is (nearly) the phi > 0 half
    log_w = torch.where(in_l, math.log(0.05 / 0.3), math.log(0.95 / 0.7)).to(F64)
    ref = mixture(n, 3)
    threshold = noise_floor(molecular.ramachandran_tv, n)
    assert molecular.ramachandran_tv(proposal, ref, log_w=log_w) < 1.5 * threshold
    assert molecular.ramachandran_tv(proposal, ref) > threshold, "unweighted must fail"


def phi_positive_truth(alpha_l: float = 0.05) -> float:
    """P(wrapped phi in (0, pi)) of `mixture`: sum over modes and windings of Gaussian masses."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), 0.3)
    total = 0.0
    for mean, w in [(-1.4, 0.65 * (1 - alpha_l) / 0.95), (-1.3, 0.30 * (1 - alpha_l) / 0.95),
                    (1.0, alpha_l)]:
        for k in range(-2, 3):
            lo, hi = 2 * math.pi * k - mean, 2 * math.pi * k + math.pi - mean
            total += w * float(normal.cdf(torch.tensor(hi)) - normal.cdf(torch.tensor(lo)))
    return total


def test_phi_positive_population_within_five_se_and_wrong_torsion_fails():
    n = 20_000
    x = mixture(n, 4)
    truth = phi_positive_truth()
    est = molecular.phi_positive_population(x)
    assert est.ess == pytest.approx(n) and est.se > 0
    assert abs(est.fraction - truth) < Z * est.se
    wrong = molecular.phi_positive_population(x.flip(-1))  # psi > 0 instead of phi > 0
    assert abs(wrong.fraction - truth) > Z * wrong.se


def markov_torsions(n: int, seed: int, stay: float = 0.99, p_l: float = 0.05) -> torch.Tensor:
    """A correlated (phi, psi) series: a two-state Markov chain (phi = +1.2 with stationary
    probability p_l, the phi > 0 state kept with probability `stay`), as alternating geometric
    sojourns, phi = -1.2 otherwise."""
    g = torch.Generator().manual_seed(seed)
    leave = torch.tensor([(1 - stay) * p_l / (1 - p_l), 1 - stay], dtype=F64)  # from R, from L
    start = int(torch.rand(1, generator=g) < p_l)
    states = (torch.arange(n) + start) % 2  # alternate R (0) and L (1); at most n sojourns
    u = torch.rand(n, generator=g, dtype=F64)
    lengths = (torch.log1p(-u) / torch.log1p(-leave[states])).floor().long() + 1
    phi = torch.where(states.repeat_interleave(lengths)[:n] == 1, 1.2, -1.2).to(F64)
    return torch.stack([phi, torch.zeros_like(phi)], -1)


def test_batch_means_se_covers_a_correlated_series_and_the_iid_se_does_not():
    """Over 20 independent correlated series: |p - 0.05| <= 5 SE for batch means in all of
    them; the i.i.d. SE (the broken variant) is too small by about sqrt((1 + rho)/(1 - rho))
    ~ 14 and fails in most."""
    batch_ok, iid_ok = 0, 0
    for seed in range(20):
        x = markov_torsions(20_000, seed)
        bm = molecular.phi_positive_population(x, n_blocks=20)
        iid = molecular.phi_positive_population(x)
        batch_ok += abs(bm.fraction - 0.05) < Z * bm.se
        iid_ok += abs(iid.fraction - 0.05) < Z * iid.se
        assert bm.ess < iid.ess
    assert batch_ok == 20 and iid_ok < 15
    with pytest.raises(ValueError, match="n_blocks"):
        molecular.phi_positive_population(markov_torsions(10, 0), n_blocks=1)


def test_d_alanine_fraction_on_the_pdb_and_its_mirror_image():
    x = pdb_positions()
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    rotation = q * torch.sign(torch.det(q))  # proper rotation, det +1
    moved = x @ rotation.T + torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    mirror = x * torch.tensor([-1.0, 1.0, 1.0], dtype=F64)
    batch = torch.stack([x, moved, mirror, mirror @ rotation.T]).reshape(4, 66)
    assert is_d_alanine(batch).tolist() == [False, False, True, True]
    frac = molecular.d_alanine_fraction(batch)
    assert frac.fraction == 0.5
    weighted = molecular.d_alanine_fraction(batch, log_w=torch.log(torch.tensor(
        [3.0, 3.0, 1.0, 1.0], dtype=F64)))
    assert weighted.fraction == pytest.approx(0.25)
    # a proper dihedral is not a chirality check: rotating about N-CA changes phi, not L/D
    turned = with_torsions(-1.4, 2.6).view(1, 66)
    assert not is_d_alanine(turned).item()


def test_molecular_metrics_keys_and_self_comparison():
    x = torch.stack([with_torsions(p, s) for p, s in mixture(200, 6).tolist()])
    out = molecular.molecular_metrics(x, x)
    assert out["ramachandran_tv_30x30"] == pytest.approx(0.0)
    assert out["ramachandran_kl_ref_to_samples_30x30_nats"] == pytest.approx(0.0, abs=1e-5)
    assert out["d_alanine_fraction"] == 0.0 and out["ess"] == pytest.approx(200)
    assert out["phi_positive_fraction"] == out["phi_positive_fraction_reference"]


def test_circular_w1_goes_the_short_way_round_and_a_linear_w1_fails():
    a, b = torch.full((5,), -3.0, dtype=F64), torch.full((7,), 3.0, dtype=F64)
    assert molecular.circular_w1(a, b) == pytest.approx(2 * math.pi - 6.0, abs=1e-12)
    linear = float((a.sort().values.mean() - b.sort().values.mean()).abs())  # broken variant
    assert abs(linear - (2 * math.pi - 6.0)) > 1
    # point mass at 0 vs uniform on the circle: E|U| = pi / 2, SE from sd(|U|) = pi / sqrt(12)
    n = 20_000
    u = (torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1) * math.pi
    w1 = molecular.circular_w1(torch.zeros(3, dtype=F64), u)
    assert abs(w1 - math.pi / 2) < Z * math.pi / math.sqrt(12 * n)
    assert molecular.circular_w1(u, u + 2 * math.pi) == pytest.approx(0.0, abs=1e-9)


def test_free_energy_profile_of_two_levels_and_a_wrong_sign_fails():
    """phi in [0, pi) with probability 1 / (1 + e^-2), else in [-pi, 0): F = 2 kT on the left."""
    gen = torch.Generator().manual_seed(1)
    n = 40_000
    left = torch.rand(n, generator=gen) < 1 / (1 + math.exp(2.0))
    phi = torch.rand(n, generator=gen, dtype=F64) * math.pi - torch.where(left, math.pi, 0.0)
    prof = molecular.free_energy_profile(phi, n_bins=12, n_blocks=20)
    expect = torch.where(prof.centres < 0, 2.0, 0.0).to(F64)
    # F is relative to the smallest bin: compare differences to the right half's mean
    shift = prof.free_energy[prof.centres > 0].mean()
    assert ((prof.free_energy - shift - expect).abs() < Z * prof.se + 0.05).all()
    broken = -prof.free_energy  # +log p instead of -log p
    assert not ((broken - broken[prof.centres > 0].mean() - expect).abs() < Z * prof.se
                + 0.05).all()


def test_evaluate_adds_torsion_metrics_with_floors_for_molecules_and_drops_symmetry_w2():
    pytest.importorskip("openmm")
    from boltzkit.evaluate.evaluation import CONVENTIONS, evaluate
    from boltzkit.targets.molecules import aldp_fab

    target = aldp_fab()
    gen = torch.Generator().manual_seed(2)
    base = with_torsions(-1.4, 2.6)  # C7eq; its mirror image sits at phi = +1.4
    ref = base + 0.003 * torch.randn(400, 66, generator=gen, dtype=F64)
    x = base + 0.003 * torch.randn(100, 66, generator=gen, dtype=F64)
    out = evaluate(x, target, reference=ref, generator=gen, n_repeats=2)
    for key in ("ramachandran_kl_ref_to_samples_30x30_nats", "ramachandran_tv_30x30",
                "phi_w1_circular_rad", "psi_w1_circular_rad", "energy_w1"):
        assert key in out and f"{key}_floor" in out and key in CONVENTIONS
    assert "symmetry_w2" not in out and out["d_alanine_fraction"] == 0.0
    assert out["phi_positive_fraction_reference"] == molecular.torsions(ref)[:, 0].gt(0).double(
        ).mean().item()
    mirrored = evaluate(-x, target, reference=ref, generator=gen, n_repeats=0)
    assert mirrored["d_alanine_fraction"] == 1.0
    assert mirrored["phi_w1_circular_rad"] > 10 * out["phi_w1_circular_rad_floor"]


def test_run_figures_draw_ramachandran_and_free_energy_for_molecules(tmp_path):
    from boltzkit.app import plots

    x = torch.stack([with_torsions(-1.4 + 0.1 * k, 2.6) for k in range(20)])
    paths = plots.run_figures(tmp_path, x, torch.zeros(20), reference=x, n_particles=22,
                              spatial_dim=3, molecule=True)
    names = {p.name for p in paths}
    assert {"ramachandran.png", "free_energy_phi.png"} <= names
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    assert "ramachandran.png" not in {p.name for p in plots.run_figures(
        tmp_path / "plain", x, torch.zeros(20), n_particles=22, spatial_dim=3)}
