"""The flow-matching CNF: change of variables against a linear flow in closed form, exact vs
Hutchinson divergence, and importance sampling of a Gaussian."""

import math

import pytest
import torch
from torch import nn

from boltzkit.mc.noise import Particles
from boltzkit.models.cnf import CNF, CNFConfig, fit, likelihood_report


class Linear(nn.Module):
    """v(y, t) = A y: y(1) = expm(A) y(0), so log q(y1) = log N(expm(-A) y1) - tr A."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, y, t):
        return y @ self.a.T


def test_log_prob_of_a_linear_flow_is_exact():
    a = torch.tensor([[0.3, -0.2, 0.0], [0.1, -0.4, 0.2], [0.0, 0.5, 0.1]], dtype=torch.float64)
    cnf = CNF(Linear(a), 3, scale=2.0, config=CNFConfig(rtol=1e-9, atol=1e-9))
    x = torch.randn(5, 3, dtype=torch.float64)
    z = (x / 2.0) @ torch.linalg.matrix_exp(-a).T
    expected = (-0.5 * z.square().sum(-1) - 1.5 * math.log(2 * math.pi) - torch.trace(a)
                - 3 * math.log(2.0))
    torch.testing.assert_close(cnf.log_prob(x, exact=True), expected, atol=1e-7, rtol=0)
    torch.manual_seed(0)
    hutch = cnf.log_prob(x.repeat(400, 1), exact=False).view(400, 5)  # independent probes
    se = hutch.std(0) / 20
    assert ((hutch.mean(0) - expected).abs() <= 5 * se + 1e-9).all()


def test_particle_flow_counts_com_free_degrees_of_freedom():
    cnf = CNF(Linear(torch.zeros(6, 6, dtype=torch.float64)), 6, particles=Particles(3, 2))
    x = Particles(3, 2).center(torch.randn(4, 6, dtype=torch.float64))
    expected = -0.5 * x.square().sum(-1) - 2 * math.log(2 * math.pi)
    torch.testing.assert_close(cnf.log_prob(x), expected)


def test_fitted_flow_recovers_a_gaussian_and_its_normaliser():
    from boltzkit.targets.base import Target

    class Gauss(Target):
        def _log_prob(self, x):
            return -0.5 * ((x - 1.0) / 0.5).square().sum(-1)  # log Z = log(2 pi 0.25)

    torch.manual_seed(1)
    data = 1.0 + 0.5 * torch.randn(2000, 2, dtype=torch.float64)
    cnf = fit(data, CNFConfig(hidden=32, n_layers=2, n_steps=800, rtol=1e-6, atol=1e-6))
    report = likelihood_report(cnf, Gauss(2), reference=data[:200], n_samples=300)
    true_nll = float(((data[:200] - 1.0) / 0.5).square().mean() + math.log(2 * math.pi * 0.25))
    assert abs(report["nll"] - true_nll) < 0.15, (report, true_nll)
    assert abs(report["log_Z"] - math.log(2 * math.pi * 0.25)) < 0.1, report
    assert report["ess_fraction"] > 0.5, report


def test_likelihood_report_with_the_exact_proposal_gives_ess_n_and_the_exact_log_Z():
    """The target is the linear flow's own density times e^c: every log-weight equals c, so the
    estimators give ESS = N and log Z = c; the broken variant (a target off by a quadratic term)
    must lose ESS."""
    from boltzkit.targets.base import Target

    a = torch.tensor([[0.3, -0.2], [0.1, -0.4]], dtype=torch.float64)
    inv = torch.linalg.matrix_exp(-a)

    class Pushforward(Target):
        def __init__(self, c, tilt):
            super().__init__(2)
            self.c, self.tilt = c, tilt

        def _log_prob(self, x):
            z = x @ inv.T
            return (-0.5 * z.square().sum(-1) - math.log(2 * math.pi) - torch.trace(a) + self.c
                    + self.tilt * x.square().sum(-1))

    cnf = CNF(Linear(a), 2, config=CNFConfig(rtol=1e-10, atol=1e-10))
    torch.manual_seed(2)
    exact = likelihood_report(cnf, Pushforward(1.7, 0.0), n_samples=200)
    assert exact["ess"] == pytest.approx(200, rel=1e-9) and exact["n_is"] == 200
    assert exact["log_Z"] == pytest.approx(1.7, abs=1e-8) and exact["log_Z_se"] < 1e-6
    broken = likelihood_report(cnf, Pushforward(1.7, 0.3), n_samples=200)
    assert broken["ess_fraction"] < 0.9, broken
