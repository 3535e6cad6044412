"""many-well-32, funnel-10, multi-well-5d: constants, exact log Z(T) and exact samplers."""

import math

import pytest
import torch

from boltzkit.targets.analytic import Funnel, Quartic1D, funnel_10, many_well_32, multi_well_5d

F64 = torch.float64
integrate = pytest.importorskip("scipy.integrate")


def density(factor: Quartic1D):
    return lambda x: math.exp(float(factor.log_density(torch.tensor(x, dtype=F64))))


def quad_log_Z(factor: Quartic1D) -> float:
    val, _ = integrate.quad(density(factor), -10, 10, epsabs=0, epsrel=1e-13, limit=500,
                            points=[-2, 0, 2])
    return math.log(val)


def ks_statistic(x: torch.Tensor, factor: Quartic1D) -> float:
    """sqrt(n) * sup |F_n - F| with the exact CDF from a fine cumulative Simpson grid."""
    grid = torch.linspace(-6, 6, 120_001, dtype=F64)
    pdf = factor.log_density(grid).exp().numpy()
    cdf = torch.from_numpy(integrate.cumulative_simpson(pdf, x=grid.numpy(), initial=0))
    cdf = cdf / cdf[-1]
    xs = x.sort().values
    f = torch.from_numpy(__import__("numpy").interp(xs.numpy(), grid.numpy(), cdf.numpy()))
    n = len(xs)
    i = torch.arange(1, n + 1, dtype=F64)
    return math.sqrt(n) * max((i / n - f).max().item(), (f - (i - 1) / n).max().item())


def test_many_well_constants():
    target = many_well_32()
    assert target.dim == 32 and target.name == "many-well-32"
    assert abs(target.log_Z - 164.695675) < 1e-6
    well = target.well()
    assert abs(math.exp(quad_log_Z(well)) - 11784.50927) < 1e-4
    assert abs(target.log_Z - 16 * (quad_log_Z(well) + 0.5 * math.log(2 * math.pi))) < 1e-8
    right, _ = integrate.quad(density(well), 0, 10, epsrel=1e-13)
    assert abs(right / math.exp(quad_log_Z(well)) - 0.844307) < 1e-6
    x = torch.randn(3, 32, dtype=F64)
    x1, x2 = x[:, 0::2], x[:, 1::2]
    energy = (-0.5 * x1 - 6 * x1**2 + x1**4 + 0.5 * x2**2).sum(-1)
    torch.testing.assert_close(target.log_prob(x), -energy)


def test_many_well_right_well_mass_from_samples_and_broken_variant():
    n = 4000
    x = many_well_32().sample(n, torch.Generator().manual_seed(0))
    frac = (x[:, 0::2] > 0).double().mean().item()
    se = math.sqrt(0.844307 * (1 - 0.844307) / (16 * n))
    assert abs(frac - 0.844307) < 5 * se
    symmetric = Quartic1D(0.0, 6.0, 1.0).sample(16 * n, torch.Generator().manual_seed(0))
    assert abs((symmetric > 0).double().mean().item() - 0.844307) > 5 * se


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_quartic_sampler_is_exact_and_wrong_temperature_fails(temperature):
    factor = Quartic1D(0.5, 6.0, 1.0, temperature)
    x = factor.sample(20_000, torch.Generator().manual_seed(1))
    assert ks_statistic(x, factor) < 1.95  # the 0.1 % quantile of the Kolmogorov law
    assert abs(factor.log_Z() - quad_log_Z(factor)) < 1e-10
    wrong = Quartic1D(0.5, 6.0, 1.0, 1.1 * temperature).sample(20_000, torch.Generator())
    assert ks_statistic(wrong, factor) > 1.95


def test_multi_well_log_Z_at_both_temperatures():
    target = multi_well_5d()
    for temperature in (1.0, 0.5):
        factor = Quartic1D(0.0, 4.0, 1.0, temperature)
        assert abs(target.tempered(temperature).log_Z - 5 * quad_log_Z(factor)) < 1e-9
    x = torch.randn(4, 5, dtype=F64)
    torch.testing.assert_close(target.log_prob(x), -(x**4 - 4 * x**2).sum(-1))
    torch.testing.assert_close(target.tempered(0.5).log_prob(x), -2 * (x**4 - 4 * x**2).sum(-1))


def test_multi_well_tempered_samples_populate_every_mode():
    x = multi_well_5d().tempered(0.5).sample(20_000, torch.Generator().manual_seed(2))
    mode = ((x > 0).long() * (2 ** torch.arange(5))).sum(-1)
    counts = torch.bincount(mode, minlength=32).double()
    se = math.sqrt(20_000 / 32 * (1 - 1 / 32))
    assert ((counts - 20_000 / 32).abs() / se).max() < 5


def test_funnel_is_normalised_and_its_samples_standardise():
    target = funnel_10()
    x = target.sample(20_000, torch.Generator().manual_seed(3))
    x0, eps = x[:, 0], x[:, 1:] * torch.exp(-0.5 * x[:, :1])
    standardised = torch.cat([x0[:, None] / 3, eps], dim=1)
    z_mean = standardised.mean(0) / math.sqrt(1 / 20_000)
    z_var = (standardised.var(0) - 1) / math.sqrt(2 / 20_000)
    assert z_mean.abs().max() < 5 and z_var.abs().max() < 5
    normal = torch.distributions.Normal
    expected = normal(0.0, 3.0).log_prob(x0) + normal(0.0, torch.exp(0.5 * x0)[:, None]).log_prob(
        x[:, 1:]).sum(-1)
    torch.testing.assert_close(target.log_prob(x), expected)
    assert target.log_Z == 0.0


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_tempered_funnel_log_Z_matches_quadrature_in_2d(temperature):
    # In (x0, u = x1 exp(-x0 / 2)) the integrand is smooth and Simpson's rule converges fast.
    target = Funnel(2, 3.0).tempered(temperature)
    x0 = torch.linspace(-40, 40, 1601, dtype=F64)
    u = torch.linspace(-20, 20, 801, dtype=F64)
    g0, gu = torch.meshgrid(x0, u, indexing="ij")
    x = torch.stack([g0, gu * torch.exp(0.5 * g0)], -1)
    density = (target.log_prob(x) + 0.5 * g0).exp().numpy()
    z = integrate.simpson(integrate.simpson(density, x=u.numpy()), x=x0.numpy())
    assert abs(target.log_Z - math.log(z)) < 1e-8
