"""The two-moons simulator and its tempered posterior
p_beta(theta | y) ~ p(y | theta)^beta p(theta).

Simulator (Greenberg et al. 2019, as in sbibm): a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2),
    y = (r cos a + 0.25 - |theta_1 + theta_2| / sqrt 2,  r sin a + (theta_2 - theta_1) / sqrt 2).
Its likelihood is tractable in polar coordinates around the moon centre: with
u = y - (0.25 - |theta_1 + theta_2| / sqrt 2, (theta_2 - theta_1) / sqrt 2), r = |u|, the map
(r, a) -> u has Jacobian r, so
    p(y | theta) = N(r; 0.1, 0.01^2) / (pi r)   for u_1 > 0 (a in (-pi/2, pi/2)), else 0
(up to the 1e-23 mass of r < 0).

Soft edge (`edge_width` = s > 0, radians): the angle's uniform density on (-pi/2, pi/2) gets
Gaussian shoulders exp(-(|a| - pi/2)^2 / (2 s^2)) of the same height beyond +-pi/2, normalised
by pi + s sqrt(2 pi); `simulate` draws from the same law, so likelihood and simulator stay exact
for every s, and log p is finite everywhere (generic samplers and the target contract need
that). s = 0 is the original hard-edged simulator (log p = -inf off the half-plane), used by the
TRADE experiment; the registered `two-moons` target uses s = 0.01 (0.8 % of the mass beyond
the edge). Prior N(0, 0.3^2 I) and beta in [0.4, 2.1] as in TRADE
(arXiv 2410.19492, tempered Bayesian inference); at beta = 1 the pairs (theta, y) of the joint
are exact posterior samples amortised over y.

The derivative TRADE needs, d/dbeta log p_beta = log p(y | theta), comes from autograd through
`with_beta(beta_tensor)`; the released TRADE code is off by a factor beta away from beta = 1.

>>> t = two_moons_posterior()
>>> theta, y = t.sample_joint(3)
>>> t.with_context(y).log_prob(theta).shape
torch.Size([3])
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from boltzkit.targets.base import Target

R_MEAN, R_STD, SHIFT = 0.1, 0.01, 0.25


def moon_offset(theta: Tensor) -> Tensor:
    """The observation's mean shift for parameters theta `[..., 2]`, `[..., 2]`."""
    t1, t2 = theta[..., 0], theta[..., 1]
    return torch.stack([SHIFT - (t1 + t2).abs() / math.sqrt(2), (t2 - t1) / math.sqrt(2)], -1)


def simulate(theta: Tensor, generator: torch.Generator | None = None,
             edge_width: float = 0.0) -> Tensor:
    """One observation y `[..., 2]` per parameter theta `[..., 2]` (`edge_width`: see above)."""
    shape = theta.shape[:-1]
    kw = {"dtype": theta.dtype, "device": theta.device, "generator": generator}
    a = (torch.rand(shape, **kw) - 0.5) * math.pi
    if edge_width > 0:
        shoulder = edge_width * math.sqrt(2 * math.pi)
        in_shoulder = torch.rand(shape, **kw) < shoulder / (math.pi + shoulder)
        side = torch.where(torch.rand(shape, **kw) < 0.5, -1.0, 1.0).to(a)
        a_out = side * (math.pi / 2 + edge_width * torch.randn(shape, **kw).abs())
        a = torch.where(in_shoulder, a_out, a)
    r = R_MEAN + R_STD * torch.randn(shape, **kw)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], -1) + moon_offset(theta)


def log_likelihood(y: Tensor, theta: Tensor, edge_width: float = 0.0) -> Tensor:
    """log p(y | theta), broadcasting y and theta `[..., 2]`; with `edge_width` = 0, -inf off
    the half-plane u_1 > 0, else finite everywhere (soft edge, see above)."""
    u = y - moon_offset(theta)
    r = torch.linalg.vector_norm(u, dim=-1).clamp_min(torch.finfo(u.dtype).tiny)
    log_n = -0.5 * ((r - R_MEAN) / R_STD) ** 2 - math.log(R_STD * math.sqrt(2 * math.pi))
    if edge_width > 0:
        beyond = (torch.atan2(u[..., 1], u[..., 0]).abs() - math.pi / 2).clamp_min(0)
        log_a = (-0.5 * (beyond / edge_width) ** 2
                 - math.log(math.pi + edge_width * math.sqrt(2 * math.pi)))
        return log_n + log_a - torch.log(r)
    ll = log_n - math.log(math.pi) - torch.log(r)
    return torch.where(u[..., 0] > 0, ll, torch.full_like(ll, -math.inf))


class TwoMoonsPosterior(Target):
    """p_beta(theta | y) ~ p(y | theta)^beta N(theta; 0, prior_std^2 I), theta in R^2.

    `y` `[2]` or per-sample `[n, 2]` (`with_context`), `beta` a float or a tensor broadcasting
    against the batch (`with_beta`), `edge_width` the simulator's soft angular edge (0: hard).
    Exact samples only through `sample_joint` (beta = 1).
    """

    name = "two-moons"

    def __init__(self, y: Tensor | None = None, beta: float | Tensor = 1.0,
                 prior_std: float = 0.3, edge_width: float = 0.0) -> None:
        super().__init__(2)
        if edge_width < 0:
            raise ValueError(f"edge_width must be >= 0, got {edge_width}")
        self.y = torch.zeros(2, dtype=torch.float64) if y is None else y
        self.beta, self.prior_std, self.edge_width = beta, prior_std, float(edge_width)

    def with_beta(self, beta: float | Tensor) -> TwoMoonsPosterior:
        """The posterior with likelihood power beta (shares the evaluation counter)."""
        new = copy.copy(self)
        new.beta = beta
        return new

    def with_context(self, y: Tensor) -> TwoMoonsPosterior:
        """The posterior for observation(s) y `[2]` or `[n, 2]` (shares the counter)."""
        new = copy.copy(self)
        new.y = y
        return new

    def log_prior(self, theta: Tensor) -> Tensor:
        """log N(theta; 0, prior_std^2 I), normalised."""
        s = self.prior_std
        return -0.5 * (theta / s).square().sum(-1) - 2 * math.log(s * math.sqrt(2 * math.pi))

    def _log_prob(self, theta: Tensor) -> Tensor:
        ll = log_likelihood(self.y.to(theta.dtype), theta, self.edge_width)
        # Zero the -inf entries before multiplying: d(beta * ll)/dbeta there would be 0 * inf = NaN
        # and, for a shared tensor beta, poison every sample's derivative.
        finite = torch.isfinite(ll)
        tempered = self.beta * torch.where(finite, ll, torch.zeros_like(ll))
        return torch.where(finite, tempered, ll) + self.log_prior(theta)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n prior draws `[n, 2]` (float64)."""
        return self.prior_std * torch.randn(n, 2, dtype=torch.float64, device=self.device,
                                             generator=generator)

    def sample_joint(self, n: int, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor]:
        """(theta, y) from the joint: theta | y are exact beta = 1 posterior samples."""
        theta = self.sample_prior(n, generator)
        return theta, simulate(theta, generator, self.edge_width)

    def describe(self) -> dict[str, object]:
        beta = self.beta if not isinstance(self.beta, Tensor) else "tensor"
        return {**super().describe(), "beta": beta, "prior_std": self.prior_std,
                "edge_width": self.edge_width}


def two_moons_posterior(beta: float = 1.0, prior_std: float = 0.3,
                        edge_width: float = 0.0) -> TwoMoonsPosterior:
    """The tempered two-moons posterior at y = (0, 0) (amortised use: `with_context(y)`);
    hard-edged by default (the TRADE experiment's simulator)."""
    return TwoMoonsPosterior(None, beta, prior_std, edge_width)


def two_moons(beta: float = 1.0, prior_std: float = 0.3, edge_width: float = 0.01,
              y1: float = 0.0, y2: float = 0.0) -> TwoMoonsPosterior:
    """The registered `two-moons` target: the posterior at y = (y1, y2) with a soft angular
    edge, so that log p is finite everywhere (set edge_width=0 for the hard edge)."""
    y = torch.tensor([y1, y2], dtype=torch.float64)
    return TwoMoonsPosterior(y, beta, prior_std, edge_width)
