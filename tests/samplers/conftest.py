"""A correlated Gaussian family N(mu, T Sigma) and the affine flow that represents it exactly, for
the flow-BG and TRADE tests (exact tempered densities, samples and log Z at every T)."""

import math

import pytest
import torch
from torch import nn

from boltzkit.targets.base import Target

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
CHOL = torch.tensor([[1.0, 0.0], [0.8, 0.5]], dtype=torch.float64)  # Sigma = L L^T


class Gaussian(Target):
    """gamma(x) = exp(-(x - mu)^T Sigma^-1 (x - mu) / 2): tempered, N(mu, T Sigma)."""

    name = "gaussian"
    exact_sampler = True
    exact_tempered_sampler = True

    def __init__(self) -> None:
        super().__init__(2)
        self.precision = torch.cholesky_inverse(CHOL)

    def _log_prob(self, x):
        d = x - MU.to(x.dtype)
        return -0.5 * torch.einsum("...i,ij,...j->...", d, self.precision.to(x.dtype), d)

    def _sample(self, n, generator):
        return self._tempered_sample(n, generator)

    def _tempered_sample(self, n, generator):
        z = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        return MU + math.sqrt(float(self.temperature)) * z @ CHOL.T

    def _log_Z(self):
        return self._tempered_log_Z(1.0)

    def _tempered_log_Z(self, temperature):
        return math.log(2 * math.pi * temperature) + float(torch.log(torch.diagonal(CHOL)).sum())


class ExactGaussianFlow(nn.Module):
    """x = mu + sqrt(c) L z, z ~ N(0, I): q(x | c) = N(mu, c Sigma), the exact tempered family
    (an affine flow; `power` = 2 gives the wrong family N(mu, c^2 Sigma))."""

    def __init__(self, power: float = 1.0) -> None:
        super().__init__()
        self.mu, self.chol, self.power = nn.Parameter(MU.clone()), nn.Parameter(CHOL.clone()), power

    def log_prob(self, x, c, context=None):
        c = torch.as_tensor(c, dtype=x.dtype).expand(len(x))
        var = c ** self.power
        z = torch.linalg.solve_triangular(self.chol, (x - self.mu).T, upper=False).T
        log_det = torch.log(torch.diagonal(self.chol)).sum() + torch.log(var)
        return -0.5 * z.square().sum(-1) / var - log_det - math.log(2 * math.pi)

    def sample_and_log_prob(self, n, c, context=None):
        c = torch.as_tensor(c, dtype=torch.float64).expand(n)
        z = torch.randn(n, 2, dtype=torch.float64)
        x = self.mu + torch.sqrt(c ** self.power)[:, None] * z @ self.chol.T
        return x, self.log_prob(x, c)


@pytest.fixture
def gaussian():
    return Gaussian()


@pytest.fixture
def exact_flow():
    return ExactGaussianFlow
