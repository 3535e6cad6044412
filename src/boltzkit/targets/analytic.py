"""Non-particle analytic targets with exact samples and log Z at every temperature.

many-well-32 (FAB, arXiv 2208.01893), funnel-10 (Neal, Ann. Statist. 31, 2003) and multi-well-5d
(TRADE, arXiv 2410.19492). All are products of 1-D or 2-D factors, so that log Z(T) reduces to
1-D quadrature or a closed form and sampling is exact per coordinate: the quartic factors
exp((c1 x + c2 x^2 - c4 x^4) / T) are drawn by rejection from a piecewise-constant envelope that
provably dominates them (a bin's chord maximum plus max|g''| h^2 / 8), so samples are exact up
to the mass beyond |x| = R, below e^-80 of the total.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from boltzkit.targets.base import Target
from boltzkit.targets.quadrature import log_integral

_TAIL = 80.0  # the box keeps everything with log-density above max - _TAIL
_STEP = 1e-3  # envelope bin width and quadrature step


class Quartic1D:
    """The 1-D density exp(g(x) / T) with g(x) = c1 x + c2 x^2 - c4 x^4, c4 > 0.

    Exact sampling by rejection and log normaliser by quadrature (relative error ~1e-13: the
    step 1e-3 resolves every length scale ~ T^(1/4) / c4^(1/4) for T >= 1e-3).
    """

    def __init__(self, c1: float, c2: float, c4: float, temperature: float = 1.0) -> None:
        if c4 <= 0 or temperature <= 0:
            raise ValueError("Quartic1D needs c4 > 0 and temperature > 0")
        self.c1, self.c2, self.c4, self.temperature = c1, c2, c4, temperature
        self.radius = self._radius()

    def log_density(self, x: Tensor) -> Tensor:
        """g(x) / T (unnormalised)."""
        return (self.c1 * x + self.c2 * x**2 - self.c4 * x**4) / self.temperature

    def _radius(self) -> float:
        # All critical points lie within the Cauchy bound of c1 + 2 c2 x - 4 c4 x^3; beyond it
        # g decreases, so grow R until g(+-R) falls _TAIL below the maximum.
        radius = 1.0 + max(abs(self.c1), 2 * abs(self.c2)) / (4 * self.c4)
        grid = torch.linspace(-radius, radius, 20_001, dtype=torch.float64, device="cpu")
        top = self.log_density(grid).max()
        ends = torch.tensor([-1.0, 1.0], dtype=torch.float64, device="cpu")
        while bool((self.log_density(radius * ends) > top - _TAIL).any()):
            radius *= 1.25
        return radius

    def log_Z(self) -> float:
        """log integral of exp(g / T) over R."""
        r = self.radius
        step = _STEP * min(1.0, math.sqrt(self.temperature))
        return log_integral(self.log_density, [-r], [r], [step])

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Tensor:
        """n exact draws `[n]` (float64, on `device`: the generator's, if one is given)."""
        f64 = {"dtype": torch.float64, "device": device}
        edges = torch.arange(-self.radius, self.radius + _STEP, _STEP, **f64)
        lo, hi = edges[:-1], edges[1:]
        g_lo, g_hi = self.log_density(lo), self.log_density(hi)
        curvature = 2 * abs(self.c2) + 12 * self.c4 * torch.maximum(lo**2, hi**2)
        curvature = curvature / self.temperature  # >= max |g''| / T on the bin
        log_env = torch.maximum(g_lo, g_hi) + curvature * _STEP**2 / 8
        cdf = torch.cumsum(torch.exp(log_env - log_env.max()), 0)
        cdf = cdf / cdf[-1]
        out: list[Tensor] = []
        remaining = n
        while remaining > 0:
            m = int(1.1 * remaining) + 16
            u = torch.rand(3, m, generator=generator, **f64)
            b = torch.searchsorted(cdf, u[0]).clamp(max=len(cdf) - 1)
            x = lo[b] + _STEP * u[1]
            keep = u[2].log() < self.log_density(x) - log_env[b]
            out.append(x[keep][:remaining])
            remaining -= len(out[-1])
        return torch.cat(out) if out else torch.zeros(0, **f64)


class ManyWell(Target):
    """n_pairs independent pairs (x1, x2) = (x[2i], x[2i+1]) with
    E(x1, x2) = -0.5 x1 - 6 x1^2 + x1^4 + x2^2 / 2 (FAB, arXiv 2208.01893, App. E).

    log Z = n_pairs (log Z1 + log(2 pi) / 2), Z1 = int exp(0.5 x + 6 x^2 - x^4) = 11784.50927;
    a pair's right well (x1 > 0) holds mass 0.844307.
    """

    exact_sampler = True
    exact_tempered_sampler = True

    def __init__(self, n_pairs: int = 16) -> None:
        super().__init__(2 * n_pairs)
        self.n_pairs = n_pairs
        self.name = "many-well-32" if n_pairs == 16 else f"many-well-{2 * n_pairs}"

    def _log_prob(self, x: Tensor) -> Tensor:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return (0.5 * x1 + 6 * x1**2 - x1**4 - 0.5 * x2**2).sum(-1)

    def well(self, temperature: float = 1.0) -> Quartic1D:
        """The 1-D double-well factor of x1 at temperature T."""
        return Quartic1D(0.5, 6.0, 1.0, temperature)

    def _tempered_log_Z(self, temperature: float) -> float:
        log_gauss = 0.5 * math.log(2 * math.pi * temperature)
        return self.n_pairs * (self.well(temperature).log_Z() + log_gauss)

    def _log_Z(self) -> float:
        return self._tempered_log_Z(1.0)

    def _tempered_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        temperature = float(self.temperature)
        x1 = self.well(temperature).sample(n * self.n_pairs, generator, self.device)
        x2 = math.sqrt(temperature) * torch.randn(n, self.n_pairs, dtype=torch.float64,
                                                  device=self.device, generator=generator)
        x1 = x1.reshape(n, self.n_pairs)
        return torch.stack([x1, x2], dim=-1).reshape(n, self.dim)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self._tempered_sample(n, generator)


class Funnel(Target):
    """Neal's funnel: x0 ~ N(0, scale^2), x_i | x0 ~ N(0, exp(x0)), i = 1..dim-1; log Z = 0.

    Tempered, p^(1/T) is again a funnel-shaped law with closed forms (beta = 1/T, m = dim - 1):
    x0 ~ N(m (1 - beta) scale^2 / (2 beta), scale^2 / beta), x_i | x0 ~ N(0, T exp(x0)).
    """

    exact_sampler = True
    exact_tempered_sampler = True

    def __init__(self, dim: int = 10, scale: float = 3.0) -> None:
        super().__init__(dim)
        if dim < 2:
            raise ValueError("the funnel needs dim >= 2")
        self.scale = scale
        self.name = "funnel-10" if (dim, scale) == (10, 3.0) else f"funnel-{dim}"

    def _log_prob(self, x: Tensor) -> Tensor:
        x0, rest = x[..., 0], x[..., 1:]
        log_2pi = math.log(2 * math.pi)
        lp0 = -0.5 * (x0 / self.scale) ** 2 - math.log(self.scale) - 0.5 * log_2pi
        m = self.dim - 1
        return lp0 - 0.5 * (rest**2).sum(-1) * torch.exp(-x0) - 0.5 * m * (x0 + log_2pi)

    def _tempered_log_Z(self, temperature: float) -> float:
        beta, m, s2 = 1.0 / temperature, self.dim - 1, self.scale**2
        log_2pi = math.log(2 * math.pi)
        slope = m * (1 - beta) / 2  # from integrating out the x_i
        log_z0 = (-0.5 * beta * (log_2pi + math.log(s2)) + 0.5 * (log_2pi + math.log(s2 / beta))
                  + 0.5 * slope**2 * s2 / beta)
        return log_z0 + m * (0.5 * (1 - beta) * log_2pi - 0.5 * math.log(beta))

    def _log_Z(self) -> float:
        return 0.0

    def _tempered_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        temperature = float(self.temperature)
        beta, m, s2 = 1.0 / temperature, self.dim - 1, self.scale**2
        eps = torch.randn(n, self.dim, dtype=torch.float64, device=self.device,
                          generator=generator)
        x0 = m * (1 - beta) * s2 / (2 * beta) + math.sqrt(s2 / beta) * eps[:, 0]
        rest = torch.exp(0.5 * x0)[:, None] * math.sqrt(temperature) * eps[:, 1:]
        return torch.cat([x0[:, None], rest], dim=-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self._tempered_sample(n, generator)


class MultiWell(Target):
    """p(x | T) ~ exp(-u(x) / T), u(x) = sum_i x_i^4 - 4 x_i^2: 2^dim modes at x_i = +-sqrt(2)
    (TRADE, arXiv 2410.19492; data at T = 1, evaluation at T = 0.5).

    A product of identical 1-D factors: log Z(T) = dim * log int exp(-(x^4 - 4 x^2) / T) dx.
    """

    exact_sampler = True
    exact_tempered_sampler = True

    def __init__(self, dim: int = 5) -> None:
        super().__init__(dim)
        self.name = "multi-well-5d" if dim == 5 else f"multi-well-{dim}d"

    def _log_prob(self, x: Tensor) -> Tensor:
        return -(x**4 - 4 * x**2).sum(-1)

    def factor(self, temperature: float = 1.0) -> Quartic1D:
        """The 1-D factor exp(-(x^4 - 4 x^2) / T)."""
        return Quartic1D(0.0, 4.0, 1.0, temperature)

    def _tempered_log_Z(self, temperature: float) -> float:
        return self.dim * self.factor(temperature).log_Z()

    def _log_Z(self) -> float:
        return self._tempered_log_Z(1.0)

    def _tempered_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self.factor(float(self.temperature)).sample(
            n * self.dim, generator, self.device).reshape(n, self.dim)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self._tempered_sample(n, generator)


def many_well_32() -> ManyWell:
    """16 independent double-well pairs in R^32; log Z = 164.695675."""
    return ManyWell(16)


def funnel_10() -> Funnel:
    """Neal's funnel in R^10: x0 ~ N(0, 3^2), x_i ~ N(0, exp(x0)); log Z = 0."""
    return Funnel(10, 3.0)


def multi_well_5d() -> MultiWell:
    """u(x) = sum_i x_i^4 - 4 x_i^2 in R^5 (32 modes), p ~ exp(-u / T)."""
    return MultiWell(5)
