"""Contract tests run over every flow configuration: inverse, log-det vs the autograd Jacobian in
float64, sample/log_prob consistency (formula and law), conditioning used, normalisation, and
latent temperature scaling exact for a volume-preserving flow."""

import math

import pytest
import torch

from boltzkit.models.flows import ConditionalFlow, FlowConfig, make_flow

CONFIGS = {
    "affine": FlowConfig(dim=3, kind="affine", latent_power=1.0),
    "affine-context": FlowConfig(dim=3, kind="affine", context_dim=2),
    "additive": FlowConfig(dim=3, kind="additive", latent_power=1.0),
    "spline": FlowConfig(dim=3, kind="spline", latent_power=-1.0, bound=4.0),
    "spline-context": FlowConfig(dim=3, kind="spline", context_dim=1, activation="relu"),
    "circular": FlowConfig(dim=3, kind="circular"),
    "mixed": FlowConfig(dim=3, kind="mixed", circular=(0,), latent_power=1.0, bound=4.0),
    "latent-only": FlowConfig(dim=3, kind="affine", conditional=False, latent_power=1.0),
}
C = torch.tensor([0.4, 0.7, 1.0, 1.6, 2.5], dtype=torch.float64)


def _flow(name: str, dim: int | None = None) -> ConditionalFlow:
    torch.manual_seed(1)
    config = CONFIGS[name]
    if dim is not None:
        config = FlowConfig(**{**config.__dict__, "dim": dim})
    flow = ConditionalFlow(config).double()
    if config.kind != "circular":  # exercise the standardisation in every check
        circ = flow.circular  # (angles are never standardised)
        flow.standardise(
            torch.where(circ, 0.0, torch.linspace(-0.3, 0.4, config.dim, dtype=torch.float64)),
            torch.where(circ, 1.0, torch.linspace(0.8, 1.5, config.dim, dtype=torch.float64)))
    return flow


def _context(flow: ConditionalFlow, n: int) -> torch.Tensor | None:
    k = flow.config.context_dim
    return torch.randn(n, k, dtype=torch.float64) if k else None


def _latent(flow: ConditionalFlow, x: torch.Tensor, c: torch.Tensor, ctx) -> torch.Tensor:
    return flow.transform(c, ctx)((x - flow.loc) / flow.scale)


@pytest.mark.parametrize("name", CONFIGS)
def test_inverse_round_trip(name):
    flow = _flow(name)
    ctx = _context(flow, len(C))
    x = flow.sample(len(C), C, ctx)
    t = flow.transform(C, ctx)
    x_std = (x - flow.loc) / flow.scale
    torch.testing.assert_close(t.inv(t(x_std)), x_std, atol=1e-9, rtol=0)
    assert x.dtype == torch.float64 and x.shape == (len(C), 3)


@pytest.mark.parametrize("name", CONFIGS)
def test_log_prob_matches_autograd_jacobian(name):
    flow = _flow(name)
    ctx = _context(flow, len(C))
    x = flow.sample(len(C), C, ctx)
    log_q = flow.log_prob(x, C, ctx)
    for i in range(len(C)):
        ci, cti = C[i:i + 1], None if ctx is None else ctx[i:i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda xi, ci=ci, cti=cti: _latent(flow, xi[None], ci, cti)[0], x[i])
        z = _latent(flow, x[i:i + 1], ci, cti)
        base = flow._base_log_prob(z, ci)[0]
        torch.testing.assert_close(log_q[i], base + torch.linalg.slogdet(jac)[1])


@pytest.mark.parametrize("name", CONFIGS)
def test_sample_and_log_prob_agree(name):
    flow = _flow(name)
    ctx = _context(flow, 64)
    c = C.repeat(13)[:64]
    x, log_q = flow.sample_and_log_prob(64, c, ctx)
    torch.testing.assert_close(flow.log_prob(x, c, ctx), log_q, atol=1e-8, rtol=1e-8)
    assert torch.isfinite(log_q).all()


@pytest.mark.parametrize("name", CONFIGS)
def test_conditioning_changes_the_density(name):
    flow = _flow(name)
    ctx = _context(flow, 32)
    x = flow.sample(32, 1.0, ctx)
    assert (flow.log_prob(x, 0.5, ctx) - flow.log_prob(x, 2.0, ctx)).abs().max() > 1e-3
    if ctx is not None:
        assert (flow.log_prob(x, 1.0, ctx) - flow.log_prob(x, 1.0, -ctx)).abs().max() > 1e-3


@pytest.mark.parametrize("name", [n for n in CONFIGS if "context" not in n])
def test_density_normalised_and_samples_follow_it(name):
    """2-D quadrature: integral of q is 1 and the quadrature mean matches the sample mean
    within 5 standard errors (law of the samples = density)."""
    flow = _flow(name, dim=2)
    c = 1.7
    periodic = torch.linspace(-math.pi, math.pi, 241, dtype=torch.float64)[:-1]
    line = torch.linspace(-8.0, 8.0, 241, dtype=torch.float64)
    # periodic grid for angles: each point of the circle once
    g0, g1 = (periodic if bool(a) else line for a in flow.circular)
    h = (g0[1] - g0[0]) * (g1[1] - g1[0])
    xy = torch.cartesian_prod(g0, g1)
    with torch.no_grad():
        q = torch.exp(flow.log_prob(xy, c))
    assert abs(float(q.sum() * h) - 1) < 5e-3
    mean_quad = (q[:, None] * xy).sum(0) * h
    x = flow.sample(5_000, c)
    se = x.std(0) / math.sqrt(len(x))
    assert ((x.mean(0) - mean_quad).abs() < 5 * se + 1e-3).all()


def test_latent_scaling_exact_for_volume_preserving_flow():
    """log q(x|T) - log q(x|1)/T is constant in x for a volume-preserving flow blind to T, and
    equals -(d/2) log(2 pi T) + (d/2 log 2 pi + sum log s)/T - sum log s (s: standardisation)."""
    flow = _flow("additive")
    flow = ConditionalFlow(FlowConfig(**{**flow.config.__dict__, "conditional": False})).double()
    flow.standardise(torch.zeros(3), torch.tensor([0.5, 1.0, 2.0]))
    x = flow.sample(200, 1.0)
    d, log_s = 3, math.log(0.5 * 1.0 * 2.0)
    for temp in (0.3, 2.0, 5.0):
        gap = flow.log_prob(x, temp) - flow.log_prob(x, 1.0) / temp
        expected = -d / 2 * math.log(2 * math.pi * temp) + (d / 2 * math.log(2 * math.pi)
                                                             + log_s) / temp - log_s
        torch.testing.assert_close(gap, torch.full_like(gap, expected))


def test_latent_scaling_not_exact_for_affine_flow():
    """The broken variant of the previous test: an affine (volume-changing) flow fails it."""
    torch.manual_seed(0)
    flow = ConditionalFlow(FlowConfig(dim=3, kind="affine", conditional=False,
                                      latent_power=1.0)).double()
    x = flow.sample(200, 1.0)
    gap = flow.log_prob(x, 2.0) - flow.log_prob(x, 1.0) / 2.0
    assert gap.std() > 1e-3


def test_make_flow_standardises_and_follows_dtype():
    data = torch.randn(500, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    flow = make_flow(FlowConfig(dim=2, kind="spline"), data)
    torch.testing.assert_close(flow.loc, data.mean(0))
    x, log_q = flow.sample_and_log_prob(8, 1.0)
    assert x.dtype == log_q.dtype == torch.float32
    with pytest.raises(ValueError, match="latent_power"):
        ConditionalFlow(FlowConfig(dim=2, kind="circular", latent_power=1.0))


def test_mixed_flow_is_periodic_in_its_angles_and_not_in_its_reals():
    flow = _flow("mixed")
    x = flow.sample(256, 1.0)
    assert (x[:, 0].abs() <= math.pi).all() and (x[:, 1:].abs() > math.pi).any()
    turned = x.clone()
    turned[:, 0] += 2 * math.pi  # the same point of the circle: the same density
    torch.testing.assert_close(flow.log_prob(turned, 1.0), flow.log_prob(x, 1.0))
    shifted = x.clone()
    shifted[:, 1] += 2 * math.pi  # a real coordinate: another point, another density
    assert (flow.log_prob(shifted, 1.0) - flow.log_prob(x, 1.0)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="circular indices"):
        ConditionalFlow(FlowConfig(dim=3, kind="mixed", circular=(3,)))
