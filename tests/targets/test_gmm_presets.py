"""The GMM presets carry the constants of ../shared/REFERENCE.md exactly."""

import math

import pytest
import torch

from boltzkit.targets.gmm import GaussianMixture
from boltzkit.targets.mixtures import (
    TRADE_GMM_COVARIANCES,
    TRADE_GMM_MEANS,
    gmm40,
    tempered_gmm_2d,
    two_modes,
)

F64 = torch.float64


def test_gmm40_means_table_is_the_seeded_draw():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        u = torch.rand(40, 2)
    target = gmm40()
    torch.testing.assert_close(target.means, (u.double() - 0.5) * 80, rtol=0, atol=1e-5)
    torch.testing.assert_close(target.means[:3], torch.tensor(
        [[-0.2995, 21.4577], [-32.9218, -29.4376], [-15.4062, 10.7263]], dtype=F64),
        rtol=0, atol=1e-4)
    std = math.log1p(math.e)
    assert abs(std - 1.31326) < 1e-5
    eye = torch.eye(2, dtype=F64).expand(40, 2, 2)
    torch.testing.assert_close(target.covariances, std**2 * eye)
    torch.testing.assert_close(target.weights, torch.full((40,), 1 / 40, dtype=F64))
    assert (target.name, target.dim, target.log_Z) == ("gmm40", 2, 0.0)


def heavy_mode_z(target: GaussianMixture, n: int, seed: int) -> float:
    """(fraction of samples assigned to the mode at -a*1 - 2/3) / SE."""
    x = target.sample(n, torch.Generator().manual_seed(seed))
    frac = (target.assign(x) == 0).double().mean().item()
    return (frac - 2 / 3) / math.sqrt(2 / 9 / n)


@pytest.mark.parametrize("variant", ["isotropic", "anisotropic", "rotated"])
def test_two_modes_heavy_mode_weight_and_broken_variant(variant):
    target = two_modes(d=4, a=3.0, variant=variant)
    torch.testing.assert_close(target.weights, torch.tensor([2 / 3, 1 / 3], dtype=F64))
    torch.testing.assert_close(target.means, 3.0 * torch.tensor([[-1.0] * 4, [1.0] * 4], dtype=F64))
    assert abs(heavy_mode_z(target, 20_000, seed=1)) < 5
    broken = GaussianMixture([1.0, 1.0], target.means, covariance=target.covariances)
    assert abs(heavy_mode_z(broken, 20_000, seed=1)) > 5


def test_two_modes_covariances():
    d = 5
    iso, aniso = two_modes(d), two_modes(d, variant="anisotropic")
    torch.testing.assert_close(iso.covariances[0], 0.05 * torch.eye(d, dtype=F64))
    variances = 0.05 * torch.logspace(-1, 0, d, dtype=F64)
    torch.testing.assert_close(aniso.covariances[1], torch.diag(variances))
    state = torch.get_rng_state()
    rotated = two_modes(d, variant="rotated")
    assert torch.equal(state, torch.get_rng_state()), "the rotation must not touch the global RNG"
    cov = rotated.covariances[0]
    torch.testing.assert_close(torch.linalg.eigvalsh(cov), variances)
    assert (cov - torch.diag(torch.diagonal(cov))).abs().max() > 1e-3
    torch.testing.assert_close(two_modes(d, variant="rotated").covariances, rotated.covariances)
    with pytest.raises(ValueError, match="valid: isotropic"):
        two_modes(variant="tilted")


def test_tempered_gmm_2d_constants():
    target = tempered_gmm_2d()
    torch.testing.assert_close(target.means, torch.tensor(TRADE_GMM_MEANS, dtype=F64))
    a, b, d = torch.tensor(TRADE_GMM_COVARIANCES, dtype=F64).T
    cov = target.covariances
    for got, want in [(cov[:, 0, 0], a), (cov[:, 0, 1], b), (cov[:, 1, 0], b), (cov[:, 1, 1], d)]:
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(target.weights, torch.full((6,), 1 / 6, dtype=F64))
    assert TRADE_GMM_MEANS[1] == (3.0, 7.0) and TRADE_GMM_COVARIANCES[5] == (0.15, 0.0294, 1.5)


def test_tempered_gmm_2d_log_Z_matches_independent_quadrature():
    integrate = pytest.importorskip("scipy.integrate")
    target, temperature = tempered_gmm_2d(), 0.5
    xs = torch.arange(-9.0, 11.0, 0.02, dtype=F64)
    ys = torch.arange(-9.0, 12.0, 0.02, dtype=F64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1)
    density = (target.log_prob(grid) / temperature).exp().numpy()
    z = integrate.simpson(integrate.simpson(density, x=ys.numpy()), x=xs.numpy())
    assert abs(target.tempered(temperature).log_Z - math.log(z)) < 1e-7
