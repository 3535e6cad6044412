"""DW-4 and Lennard-Jones: energies against naive loops and closed forms, the analytic gradient
against autograd, double backward, invariances, overlapping particles and counting.
(Shapes, dtypes, tempering and the score at grid points: tests/targets/test_contract.py.)"""

import itertools
import math

import pytest
import torch

from boltzkit import targets
from boltzkit.targets.base import Target
from boltzkit.targets.particles import DoubleWell, LennardJones

F64 = torch.float64
NAMES = ["dw4", "lj13", "lj55", "lj13-eacf"]


def configurations(target: Target, n: int, seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    """n random float64 configurations at roughly the system's density, COM-free."""
    g = torch.Generator().manual_seed(seed)
    scale = spread * target.n_particles ** (1 / target.spatial_dim)
    if isinstance(target, DoubleWell):
        scale *= 4.0
    return target.remove_com(scale * torch.randn(n, target.dim, generator=g, dtype=F64))


def naive_energy(target: Target, x: torch.Tensor) -> float:
    """The REFERENCE.md formula for one configuration, by a double loop over particles."""
    n, d = target.n_particles, target.spatial_dim
    p = x.reshape(n, d).tolist()
    com = [sum(p[i][k] for i in range(n)) / n for k in range(d)]
    e = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = math.dist(p[i], p[j])
            if isinstance(target, DoubleWell):
                e += 0.5 * (0.9 * (r - 4) ** 4 - 4 * (r - 4) ** 2)  # each unordered pair once
            else:  # iDEM: ordered pairs; EACF: unordered pairs
                e += (1.0 if target.name != "lj13-eacf" else 0.5) * (r**-12 - 2 * r**-6)
        if isinstance(target, LennardJones):
            e += 0.5 * sum((p[i][k] - com[k]) ** 2 for k in range(d))
    return e


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-10) -> None:
    """Relative to each entry and to the largest one (cancellation in near-zero components)."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())


def differentiable_energy(target: Target, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        return target.energy(x.clone().requires_grad_(True)).detach()


def test_registry_builds_the_canonical_systems():
    dw, lj13, lj55, eacf = (targets.get(name) for name in NAMES)
    assert (dw.n_particles, dw.spatial_dim, dw.dim, dw.harmonic) == (4, 2, 8, 0.0)
    assert (dw.a, dw.b, dw.offset) == (0.9, -4.0, 4.0)
    assert (lj13.n_particles, lj13.spatial_dim, lj13.dim, lj13.pair_factor) == (13, 3, 39, 2.0)
    assert (lj55.n_particles, lj55.dim, lj55.pair_factor) == (55, 165, 2.0)
    assert (eacf.dim, eacf.pair_factor, eacf.harmonic) == (39, 1.0, lj13.harmonic)
    assert [t.name for t in (dw, lj13, lj55, eacf)] == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_energy_matches_a_naive_double_loop(name):
    target = targets.get(name)
    x = configurations(target, 4, spread=0.7)
    naive = torch.tensor([naive_energy(target, xi) for xi in x], dtype=F64)
    torch.testing.assert_close(target.energy(x), naive, rtol=1e-12, atol=0)
    torch.testing.assert_close(differentiable_energy(target, x), naive, rtol=1e-12, atol=0)


def test_closed_form_pair_energies():
    two = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=F64)  # r = 1, the LJ minimum
    harmonic = 0.5 * 2 * 0.5**2
    assert LennardJones(2).energy(two).item() == pytest.approx(-2 + harmonic, rel=1e-15)
    assert LennardJones(2, pair_factor=1.0).energy(two).item() == pytest.approx(-1 + harmonic)
    r_min = 4 + math.sqrt(20 / 9)  # d/du (0.9 u^4 - 4 u^2) = 0 at u^2 = 20/9
    for r, e in [(4.0, 0.0), (r_min, -40 / 9), (0.0, 0.9 * 256 - 4 * 16)]:
        x = torch.tensor([[0.0, 0.0, r, 0.0]], dtype=F64)
        assert DoubleWell(2).energy(x).item() == pytest.approx(e, rel=1e-14, abs=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_analytic_score_matches_autograd(name):
    target = targets.get(name)
    target.chunk_size = 7  # several chunks, the last one short
    x = configurations(target, 30, seed=1).reshape(3, 10, target.dim)  # iDEM's [B, K, dim]
    lp, score = target.log_prob_and_score(x)
    lp_ag, score_ag = Target.log_prob_and_score(target, x)
    assert lp.shape == (3, 10) and score.shape == x.shape
    assert_close(lp, lp_ag, rtol=1e-12)
    assert_close(score, score_ag)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_analytic_score_matches_autograd_on_published_data(name, published):
    target = targets.get(name)
    x = published(name)[:500]
    lp, score = target.log_prob_and_score(x)
    lp_ag, score_ag = Target.log_prob_and_score(target, x)
    assert_close(lp, lp_ag, rtol=1e-12)
    assert_close(score, score_ag)


def test_tensor_temperature_broadcasts_over_the_score():
    target = targets.get("lj13")
    x = configurations(target, 12, seed=2).reshape(3, 4, target.dim)
    hot = target.tempered(torch.tensor([[1.0], [2.0], [4.0]], dtype=F64))
    lp, score = hot.log_prob_and_score(x)
    lp_ag, score_ag = Target.log_prob_and_score(hot, x)
    assert_close(lp, lp_ag)
    assert_close(score, score_ag)


@pytest.mark.parametrize("name", NAMES)
def test_float32_follows_float64(name):
    target = targets.get(name)
    x = configurations(target, 20, seed=3)
    lp32, s32 = target.log_prob_and_score(x.float())
    lp64, s64 = target.log_prob_and_score(x.float().double())
    assert lp32.dtype == s32.dtype == torch.float32
    assert_close(lp32.double(), lp64, rtol=1e-5)
    assert_close(s32.double(), s64, rtol=1e-5)


@pytest.mark.parametrize("name", ["dw4", "lj13"])
def test_double_backward_hessian_vector_product(name):
    target = targets.get(name)
    x = configurations(target, 3, seed=4, spread=0.8)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    xg = x.clone().requires_grad_(True)
    _, score = target.log_prob_and_score(xg, create_graph=True)
    (hvp,) = torch.autograd.grad((score * v).sum(), xg)
    h = 1e-6
    fd = (target.score(x + h * v) - target.score(x - h * v)) / (2 * h)
    assert_close(hvp, fd, rtol=1e-6)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=F64))
    return q * torch.sign(torch.diagonal(r))  # Haar; det = +1 or -1 (reflections count too)


@pytest.mark.parametrize("name", NAMES)
def test_energy_is_invariant_and_score_equivariant(name):
    target = targets.get(name)
    n, d = target.n_particles, target.spatial_dim
    x = configurations(target, 5, seed=6)
    lp, score = target.log_prob_and_score(x)
    shift = torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=F64)
    moved = (x.view(5, n, d) + 3 * shift).reshape(5, -1)
    assert_close(target.log_prob(moved), lp)
    rot = random_orthogonal(d, seed=8)
    lp_rot, score_rot = target.log_prob_and_score((x.view(5, n, d) @ rot.T).reshape(5, -1))
    assert_close(lp_rot, lp)
    assert_close(score_rot, (score.view(5, n, d) @ rot.T).reshape(5, -1))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(9))
    lp_perm, score_perm = target.log_prob_and_score(x.view(5, n, d)[:, perm].reshape(5, -1))
    assert_close(lp_perm, lp)
    assert_close(score_perm, score.view(5, n, d)[:, perm].reshape(5, -1))


@pytest.mark.parametrize("name", NAMES)
def test_centre_of_mass(name):
    target = targets.get(name)
    n, d = target.n_particles, target.spatial_dim
    x = 5.0 + configurations(target, 6, seed=10)
    centred = target.remove_com(x)
    assert centred.view(6, n, d).mean(1).abs().max() < 1e-12
    assert_close(target.energy(centred), target.energy(x))
    score = target.score(x).view(6, n, d)
    # translation invariance: the forces sum to zero, the score lies in the COM-free subspace
    assert score.sum(1).abs().max() < 1e-9 * score.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", ["lj13", "lj13-eacf"])
def test_overlapping_lj_particles_give_minus_inf_not_nan(name, dtype):
    target = targets.get(name).uncounted()
    x = configurations(target, 4, seed=11).to(dtype)
    x[1, 3:6] = x[1, 0:3]  # particles 0 and 1 coincide in configuration 1
    assert target.energy(x)[1] == math.inf
    lp, score = target.log_prob_and_score(x)
    assert lp[1] == -math.inf and torch.isfinite(lp[[0, 2, 3]]).all()
    assert torch.isfinite(score[[0, 2, 3]]).all()
    assert torch.isnan(score[1]).any()  # documented: the score is NaN where E = +inf
    assert target.counter.n_nonfinite == 2  # energy(), then log_prob_and_score()
    lp_ag, _ = Target.log_prob_and_score(target, x)
    assert lp_ag[1] == -math.inf
    assert target.counter.n_nonfinite == 3


def test_coincident_dw4_particles_have_a_finite_energy_and_score():
    target = targets.get("dw4")
    x = configurations(target, 2, seed=12)
    x[0, 2:4] = x[0, 0:2]
    lp, score = target.log_prob_and_score(x)
    assert torch.isfinite(lp).all() and torch.isfinite(score).all()
    _, score_ag = Target.log_prob_and_score(target, x)
    assert_close(score, score_ag)  # both take the subgradient 0 for the pair


@pytest.mark.parametrize("name", NAMES)
def test_counts_follow_the_batch_size(name):
    target = targets.get(name).uncounted()
    x = configurations(target, 6, seed=13).reshape(2, 3, target.dim)
    target.log_prob_and_score(x)
    target.log_prob_and_score(x[0], create_graph=True)
    target.energy(x)
    assert (target.counter.n_energy, target.counter.n_grad) == (6 + 3 + 6, 6 + 3)


def test_fast_and_autograd_paths_agree_over_many_chunk_sizes():
    target = LennardJones(5)
    x = configurations(target, 40, seed=14)
    reference = Target.log_prob_and_score(target, x)
    for chunk_size in [1, 3, 40, 1000]:
        target.chunk_size = chunk_size
        for got, want in zip(target.log_prob_and_score(x), reference, strict=True):
            assert_close(got, want, rtol=1e-12)


@pytest.mark.parametrize("n, d", list(itertools.product([2, 3, 6], [1, 2, 3])))
def test_any_particle_count_and_dimension(n, d):
    for target in (DoubleWell(n, d), LennardJones(n, d)):
        x = configurations(target, 3, seed=15)
        got = target.log_prob_and_score(x)
        want = Target.log_prob_and_score(target, x)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)
