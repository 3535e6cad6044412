"""The probability-flow ODE's log-density: exact with the exact score (float64 identity on a
Gaussian mixture), and a wrong divergence sign is caught."""

from __future__ import annotations

import math

import pytest
import torch

from boltzkit.diffusion.ode import probability_flow
from boltzkit.diffusion.schedules import VESchedule, VPSchedule
from boltzkit.mc import estimators
from boltzkit.targets.gmm import GaussianMixture

F64 = torch.float64


def mixture(dim: int) -> GaussianMixture:
    means = torch.stack([-1.5 * torch.ones(dim, dtype=F64), 1.0 * torch.ones(dim, dtype=F64)])
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), means, 0.4)


def run(gmm: GaussianMixture, schedule, n: int, sign: float = 1.0, exact_max_dim: int = 16):
    torch.manual_seed(0)
    a1, s1 = float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max))
    p1 = gmm.noised(a1, s1)
    x1 = p1.sample(n).to(F64)

    def score(x, t):
        noised = gmm.noised(float(schedule.alpha(t)), float(schedule.sigma(t)))
        return noised.log_prob_and_score(x, create_graph=True)[1]  # differentiable in x

    return probability_flow(score, x1, p1.log_prob(x1), schedule, rtol=1e-9, atol=1e-11,
                            divergence_sign=sign, exact_max_dim=exact_max_dim)


@pytest.mark.parametrize("schedule", [VESchedule(sigma_min=0.01, sigma_max=3.0),
                                      VPSchedule()], ids=["ve", "vp"])
def test_exact_score_gives_the_exact_density(schedule) -> None:
    gmm = mixture(2)
    out = run(gmm, schedule, 200)
    err = (out.log_q - gmm.log_prob(out.x0)).abs().max()
    assert err < 1e-5, err
    # so the importance weights are constant: ESS = N, log Z exact (0 for a normalised mixture)
    log_w = gmm.log_prob(out.x0) - out.log_q
    assert estimators.ess_fraction(log_w) > 1 - 1e-8
    assert abs(estimators.log_Z(log_w)) < 1e-5


def test_a_wrong_divergence_sign_is_caught() -> None:
    gmm = mixture(2)
    out = run(gmm, VESchedule(sigma_min=0.01, sigma_max=3.0), 200, sign=-1.0)
    assert (out.log_q - gmm.log_prob(out.x0)).abs().max() > 0.5
    log_w = gmm.log_prob(out.x0) - out.log_q
    assert estimators.ess_fraction(log_w) < 0.9


def test_hutchinson_is_unbiased_with_its_standard_error() -> None:
    gmm = mixture(3)
    out = run(gmm, VESchedule(sigma_min=0.01, sigma_max=3.0), 300, exact_max_dim=0)
    err = out.log_q - gmm.log_prob(out.x0)
    assert (out.log_q_se > 0).all()
    # unbiased: the mean error over 300 points is within 5 of its standard errors
    assert abs(float(err.mean())) < 5 * float(out.log_q_se.pow(2).mean().sqrt()) / math.sqrt(300)
    # calibrated: E[err^2] = E[se^2] (each se^2 unbiased for the variance of its point's mean of
    # 4 probes); the ratio's sampling spread over 300 points is about 0.1, so [0.6, 1.6] is ~5 SE
    ratio = float(err.pow(2).mean() / out.log_q_se.pow(2).mean())
    assert 0.6 < ratio < 1.6, ratio


def test_a_diverging_trajectory_is_frozen_and_marked_not_fatal() -> None:
    """A score that turns NaN wherever x_0 > 1.2 (a learned score blowing up): those rows are
    marked diverged with log q = +inf (weight 0); every other row keeps the exact density, and
    the batch is not lost (without the guard the solver's NaN check stopped it)."""
    gmm, schedule = mixture(2), VESchedule(sigma_min=0.01, sigma_max=3.0)
    torch.manual_seed(0)
    p1 = gmm.noised(float(schedule.alpha(schedule.t_max)), float(schedule.sigma(schedule.t_max)))
    x1 = p1.sample(200).to(F64)

    def score(x, t):
        noised = gmm.noised(float(schedule.alpha(t)), float(schedule.sigma(t)))
        s = noised.log_prob_and_score(x, create_graph=True)[1]
        return torch.where(x[:, :1] > 1.2, math.nan, s)

    out = probability_flow(score, x1, p1.log_prob(x1), schedule, rtol=1e-9, atol=1e-11)
    assert 0 < int(out.diverged.sum()) < 200
    assert torch.isinf(out.log_q[out.diverged]).all() and (out.log_q[out.diverged] > 0).all()
    ok = ~out.diverged
    err = (out.log_q[ok] - gmm.log_prob(out.x0[ok])).abs().max()
    assert err < 1e-5, err
    assert torch.isfinite(out.x0).all()
