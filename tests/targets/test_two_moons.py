"""Two-moons: the likelihood is the simulator's density (normalised in y, moments of simulated
observations), the posterior's beta and context act as documented, and support edges are -inf
(never NaN, also for the beta derivative)."""

import math

import pytest
import torch

from boltzkit.targets.two_moons import (
    TwoMoonsPosterior,
    log_likelihood,
    moon_offset,
    simulate,
    two_moons_posterior,
)

THETA = torch.tensor([0.2, -0.4], dtype=torch.float64)


def _y_grid(theta, h=0.001):
    """Midpoint rule with cell edges on the support's straight edge u_1 = 0."""
    centre = moon_offset(theta)
    k = torch.arange(-200, 200, dtype=torch.float64) + 0.5
    axes = [float(centre[i]) + h * k for i in range(2)]
    return torch.cartesian_prod(*axes), h


def test_likelihood_is_normalised_in_y():
    y, h = _y_grid(THETA)
    mass = float(torch.exp(log_likelihood(y, THETA)).sum() * h * h)
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_simulated_observations_follow_the_likelihood():
    """Mean and second moment of simulated y within 5 SE of the quadrature values; a simulator
    with the wrong ring radius fails."""
    y, h = _y_grid(THETA)
    p = torch.exp(log_likelihood(y, THETA)) * h * h
    mean = (p[:, None] * y).sum(0) / p.sum()
    torch.manual_seed(0)
    draws = simulate(THETA.expand(20_000, 2))
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - mean).abs() < 5 * se).all()
    radius = torch.linalg.vector_norm(draws - moon_offset(THETA), dim=-1)
    quad_radius = (p * torch.linalg.vector_norm(y - moon_offset(THETA), dim=-1)).sum() / p.sum()
    assert abs(radius.mean() - quad_radius) < 5 * radius.std() / math.sqrt(len(radius))
    assert abs(1.1 * radius.mean() - quad_radius) > 5 * radius.std() / math.sqrt(len(radius))


def test_posterior_combines_tempered_likelihood_and_prior():
    torch.manual_seed(0)
    theta, y = TwoMoonsPosterior().sample_joint(64)
    post = two_moons_posterior().with_context(y)
    for beta in (0.4, 2.1):
        expected = beta * log_likelihood(y, theta) + post.log_prior(theta)
        torch.testing.assert_close(post.with_beta(beta).log_prob(theta), expected)
    assert torch.isfinite(post.log_prob(theta)).all(), "joint draws lie in the support"


def test_support_edge_is_minus_inf_and_beta_gradient_stays_finite():
    post = two_moons_posterior()  # y = 0: support |theta_1 + theta_2| > 0.25 sqrt(2)
    theta = torch.tensor([[0.0, 0.0], [0.4, 0.3], [-0.1, 0.05]], dtype=torch.float64)
    beta = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    lp = post.with_beta(beta).log_prob(theta)
    assert torch.isneginf(lp[[0, 2]]).all() and torch.isfinite(lp[1])
    (grad,) = torch.autograd.grad(lp[1], beta)
    torch.testing.assert_close(grad, log_likelihood(post.y, theta[1]))
    (grad_all,) = torch.autograd.grad(post.with_beta(beta).log_prob(theta)[1:2].sum(), beta)
    assert torch.isfinite(grad_all)
    assert post.counter.n_nonfinite == 4


def test_soft_edge_likelihood_is_normalised_finite_and_matches_the_simulator():
    """edge_width s > 0: finite log p everywhere, unit mass in y, and the simulated fraction of
    observations beyond the edge (u_1 < 0) equals the likelihood's s sqrt(2 pi) / (pi + ...)
    within 5 SE; the hard-edged simulator fails that check."""
    s = 0.05
    y, h = _y_grid(THETA)
    ll = log_likelihood(y, THETA, s)
    assert torch.isfinite(ll).all()
    assert float(torch.exp(ll).sum() * h * h) == pytest.approx(1.0, abs=2e-3)
    shoulder = s * math.sqrt(2 * math.pi)
    expected = shoulder / (math.pi + shoulder)
    n = 40_000
    se = math.sqrt(expected * (1 - expected) / n)
    g = torch.Generator().manual_seed(1)

    def beyond(width: float) -> float:
        u = simulate(THETA.expand(n, 2), g, width) - moon_offset(THETA)
        return float((u[:, 0] < 0).double().mean())

    assert abs(beyond(s) - expected) < 5 * se
    assert abs(beyond(0.0) - expected) > 5 * se
    post = TwoMoonsPosterior(edge_width=s)
    assert torch.isfinite(post.log_prob(torch.tensor([[0.0, 0.0], [-0.1, 0.05]]))).all()
