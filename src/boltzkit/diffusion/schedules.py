"""Noise schedules of diffusion models as data, and the time grids that discretise them.

A schedule defines the noising process X_t = alpha_t X_0 + sigma_t eps, eps ~ N(0, I), t in
[0, t_max], as the marginals of the linear SDE dX = f(t) X dt + g(t) dW started at the data:
alpha_t = exp(int_0^t f), d sigma_t^2 / dt = 2 f(t) sigma_t^2 + g(t)^2. The transition from s to
t > s is X_t | X_s ~ N(alpha_{t|s} X_s, sigma_{t|s}^2 I) with alpha_{t|s} = alpha_t / alpha_s and
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2. The log signal-to-noise ratio is
lambda_t = log(alpha_t^2 / sigma_t^2), decreasing in t.

- `VPSchedule`: variance preserving with linear beta(t) = beta_min + t (beta_max - beta_min):
  f = -beta/2, g = sqrt(beta), alpha_t = exp(-B(t)/2), sigma_t^2 = 1 - alpha_t^2,
  B(t) = int_0^t beta (Song et al. 2021, arXiv 2011.13456).
- `VESchedule`: variance exploding, geometric in the iDEM form
  sigma_t = sigma_min sqrt(r^(2t) - 1), r = sigma_max / sigma_min, alpha_t = 1, so that
  sigma_0 = 0 exactly (t = 0 is the data) and sigma_1 ~ sigma_max; f = 0,
  g^2 = d sigma^2/dt = 2 log(r) sigma_min^2 r^(2t) (../shared/REFERENCE.md, iDEM settings;
  Song et al. 2021 use sigma_min r^t, which differs near t = 0). iDEM trains and samples on it.

Times are Python floats (computed in float64) or floating tensors of any shape, whose dtype and
device the results keep (float32 training batches stay float32).

Time grids run from t_max down to 0: `n_steps` noised levels from t_max to t_min inclusive, then
t = 0, where an annealed sampler places the exact target; "uniform" is uniform in t, "log_snr"
uniform in lambda, "edm" uniform in (sigma/alpha)^(1/rho) (Karras et al. 2022, arXiv 2206.00364).

>>> vp = VPSchedule()
>>> t = time_grid(vp, 4, "log_snr", t_min=0.01)
>>> t.shape, float(t[0]), float(t[-1])
(torch.Size([5]), 1.0, 0.0)
>>> lam = vp.log_snr(t[:-1])
>>> bool(torch.allclose(lam.diff(), lam.diff()[0].expand(3)))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from boltzkit.targets.base import EvalCounter, Target

GridKind = Literal["uniform", "log_snr", "edm"]


def _t(t: float | Tensor) -> Tensor:
    if isinstance(t, Tensor) and t.is_floating_point():
        return t
    # a time given as a number is a host scalar (it broadcasts against any device)
    return torch.as_tensor(t, dtype=torch.float64, device="cpu")


class Schedule(Protocol):
    """What kernels and paths need from a noise schedule; times are floats or float64 tensors."""

    t_max: float

    def alpha(self, t: float | Tensor) -> Tensor: ...

    def sigma(self, t: float | Tensor) -> Tensor: ...

    def drift(self, t: float | Tensor) -> Tensor: ...

    def diffusion(self, t: float | Tensor) -> Tensor: ...

    def diffusion_squared(self, t: float | Tensor) -> Tensor: ...

    def transition(self, s: float | Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]: ...

    def log_snr(self, t: float | Tensor) -> Tensor: ...

    def time_of_log_snr(self, log_snr: float | Tensor) -> Tensor: ...


@dataclass(frozen=True)
class VPSchedule:
    """Variance-preserving schedule with linear beta; see the module docstring.

    >>> vp = VPSchedule()
    >>> round(float(vp.alpha(1.0) ** 2 + vp.sigma(1.0) ** 2), 12)
    1.0
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_max: float = 1.0
    name: str = "vp"

    def beta(self, t: float | Tensor) -> Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + _t(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: float | Tensor) -> Tensor:
        """B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2."""
        t = _t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t: float | Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def drift(self, t: float | Tensor) -> Tensor:
        """f(t) in f(t) x, the drift of the forward SDE."""
        return -0.5 * self.beta(t)

    def diffusion(self, t: float | Tensor) -> Tensor:
        """g(t), the diffusion coefficient of the forward SDE."""
        return torch.sqrt(self.beta(t))

    def diffusion_squared(self, t: float | Tensor) -> Tensor:
        """g(t)^2 = beta(t)."""
        return self.beta(t)

    def transition(self, s: float | Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_{t|s}, sigma_{t|s}^2) for s <= t; sigma^2_{t|s} = 1 - alpha^2_{t|s} here,
        computed with expm1 so that close times keep their precision."""
        db = self.integrated_beta(t) - self.integrated_beta(s)
        return torch.exp(-0.5 * db), -torch.expm1(-db)

    def log_snr(self, t: float | Tensor) -> Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2) = -B - log(1 - e^-B)."""
        b = self.integrated_beta(t)
        return -b - torch.log(-torch.expm1(-b))

    def time_of_log_snr(self, log_snr: float | Tensor) -> Tensor:
        """The t with lambda_t = log_snr: B(t) = log(1 + e^-lambda), solved for t."""
        b = torch.nn.functional.softplus(-_t(log_snr))
        slope = self.beta_max - self.beta_min
        if slope == 0:
            return b / self.beta_min
        return (torch.sqrt(self.beta_min**2 + 2 * slope * b) - self.beta_min) / slope


@dataclass(frozen=True)
class VESchedule:
    """Variance-exploding geometric schedule sigma_t = sigma_min sqrt(r^(2t) - 1) (iDEM form).

    Forward SDE dx = g(t) dW, g(t)^2 = d sigma_t^2 / dt = 2 log(r) sigma_min^2 r^(2t), so
    x_t = x_0 + sigma_t eps; the reverse SDE starts from N(0, sigma_{t_max}^2 I) (`prior_std`).
    Reference: Akhound-Sadegh et al. 2024, arXiv 2402.06121 (the iDEM code's schedule).

    >>> ve = VESchedule(sigma_min=0.01, sigma_max=10.0)
    >>> float(ve.sigma(0.0)), round(float(ve.sigma(1.0)), 4)
    (0.0, 10.0)
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_max: float = 1.0
    name: str = "ve"

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, "
                             f"{self.sigma_max}")

    @property
    def log_r(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self) -> float:
        """sigma(t_max), the standard deviation of the reverse SDE's starting distribution."""
        return float(self.sigma(self.t_max))

    def alpha(self, t: float | Tensor) -> Tensor:
        return torch.ones_like(_t(t))

    def sigma(self, t: float | Tensor) -> Tensor:
        return self.sigma_min * torch.sqrt(torch.expm1(2 * self.log_r * _t(t)))

    def drift(self, t: float | Tensor) -> Tensor:
        return torch.zeros_like(_t(t))

    def diffusion(self, t: float | Tensor) -> Tensor:
        return self.sigma_min * torch.sqrt(2 * self.log_r * torch.exp(2 * self.log_r * _t(t)))

    def diffusion_squared(self, t: float | Tensor) -> Tensor:
        """g(t)^2 = 2 log(r) sigma_min^2 r^(2t), computed without a square root."""
        return 2 * self.log_r * self.sigma_min**2 * torch.exp(2 * self.log_r * _t(t))

    def transition(self, s: float | Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """(1, sigma_t^2 - sigma_s^2) = (1, sigma_min^2 r^(2s) (r^(2(t-s)) - 1))."""
        s, t = _t(s), _t(t)
        var = self.sigma_min**2 * torch.exp(2 * self.log_r * s) * torch.expm1(
            2 * self.log_r * (t - s))
        return torch.ones_like(var), var

    def log_snr(self, t: float | Tensor) -> Tensor:
        return -2 * torch.log(self.sigma(t))

    def time_of_log_snr(self, log_snr: float | Tensor) -> Tensor:
        """t = log(1 + e^-lambda / sigma_min^2) / (2 log r)."""
        return torch.log1p(torch.exp(-_t(log_snr)) / self.sigma_min**2) / (2 * self.log_r)


SCHEDULES: dict[str, type] = {"vp": VPSchedule, "ve": VESchedule}


def time_grid(schedule: Schedule, n_steps: int, kind: GridKind = "log_snr", *,
              t_min: float = 1e-3, rho: float = 7.0) -> Tensor:
    """Decreasing float64 times `[n_steps + 1]`: n_steps noised levels from t_max to t_min
    (inclusive), then 0.

    Args:
        schedule: the noise schedule.
        n_steps: number of transitions K (K + 1 levels, the last at t = 0).
        kind: "uniform" in t, "log_snr" uniform in lambda_t, or "edm": noise level
            s = sigma/alpha = exp(-lambda/2) uniform in s^(1/rho) (Karras et al. 2022, eq. 5).
        t_min: the least noisy noised level, 0 < t_min < t_max.
        rho: the EDM exponent.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 < t_min < schedule.t_max:
        raise ValueError(f"t_min must lie in (0, t_max={schedule.t_max}), got {t_min}")
    host = {"dtype": torch.float64, "device": "cpu"}  # a grid of times is read on the host
    u = torch.linspace(0, 1, n_steps, **host) if n_steps > 1 else torch.zeros(1, **host)
    lam_lo, lam_hi = schedule.log_snr(schedule.t_max), schedule.log_snr(t_min)
    if kind == "uniform":
        times = schedule.t_max + u * (t_min - schedule.t_max)
    elif kind == "log_snr":
        times = schedule.time_of_log_snr(lam_lo + u * (lam_hi - lam_lo))
    elif kind == "edm":
        s_max, s_min = torch.exp(-lam_lo / 2) ** (1 / rho), torch.exp(-lam_hi / 2) ** (1 / rho)
        noise = (s_max + u * (s_min - s_max)) ** rho
        times = schedule.time_of_log_snr(-2 * torch.log(noise))
    else:
        raise ValueError(f"unknown grid kind {kind!r}; valid: uniform, log_snr, edm")
    times = times.clone()
    times[0] = schedule.t_max  # exact end points despite round-off
    if n_steps > 1:
        times[-1] = t_min
    return torch.cat([times, times.new_zeros(1)])


class PerfectModel:
    """The perfect diffusion model of a Gaussian mixture: its exact noised marginals p_t, scores,
    Tweedie denoiser, posterior covariance Cov[X_0 | x_t], Hessians and exact denoising kernels
    (closed forms from `boltzkit.targets.gmm.GaussianMixture`).

    Counting, so that it compares with a network: `counter.n_energy` / `counter.n_grad` count
    density / score (or denoiser) evaluations in configurations; `n_jvp` counts Jacobian-vector
    products as a learned model would need them: d per point for a full Hessian, posterior
    covariance or its exact diagonal.

    Args:
        mixture: a `GaussianMixture` (anything with `noised`, `denoiser`, `posterior`,
            `posterior_covariance`, `denoising_kernel`).
        schedule: the noise schedule.
    """

    has_log_prob = True

    def __init__(self, mixture: Any, schedule: Schedule) -> None:
        self.mixture, self.schedule = mixture, schedule
        self.counter = EvalCounter()
        self.n_jvp = 0
        self._marginals: dict[float, Target] = {}

    def coefficients(self, t: float) -> tuple[float, float]:
        """(alpha_t, sigma_t) as floats."""
        return float(self.schedule.alpha(t)), float(self.schedule.sigma(t))

    def marginal(self, t: float) -> Target:
        """p_t, a `Target` sharing this model's counter (cached per t)."""
        t = float(t)
        if t not in self._marginals:
            marginal = self.mixture.noised(*self.coefficients(t))
            marginal.counter = self.counter
            self._marginals[t] = marginal
        return self._marginals[t]

    def reference(self) -> Target:
        """The level-0 density: p_{t_max} itself (exact samples, log Z = 0)."""
        return self.marginal(self.schedule.t_max)

    def log_prob(self, x: Tensor, t: float) -> Tensor:
        return self.marginal(t).log_prob(x)

    def score(self, x: Tensor, t: float) -> Tensor:
        return self.marginal(t).log_prob_and_score(x)[1]

    def denoiser(self, x: Tensor, t: float) -> Tensor:
        """E[X_0 | X_t = x], `[..., d]`."""
        self._count(x)
        return self.mixture.denoiser(x, *self.coefficients(t))

    def posterior_covariance(self, x: Tensor, t: float, diagonal: bool = False) -> Tensor:
        """Cov[X_0 | X_t = x], `[..., d, d]`, or its diagonal `[..., d]`."""
        self._count(x, jvp=True)
        if not diagonal:
            return self.mixture.posterior_covariance(x, *self.coefficients(t))
        law = self.mixture.posterior(x, *self.coefficients(t))
        w = law.log_weights.exp()
        centred = law.means - law.mean()[..., None, :]
        within = torch.diagonal(law.covariances, dim1=-2, dim2=-1)
        return (w[..., None] * (centred**2 + within)).sum(-2)

    def posterior_covariance_lowrank(self, x: Tensor, t: float) -> tuple[Tensor, Tensor] | None:
        """(C `[d, d]`, U `[..., d, K]`) with Cov[X_0 | X_t = x] = C + U U^T, when the mixture's
        components share one covariance (then C is the shared posterior covariance and
        U = [sqrt(w_k) (m_k - m)]_k), else None. Counted like `posterior_covariance`."""
        law = self.mixture.posterior(x, *self.coefficients(t))
        shared = law.covariances[0]
        if law.covariances.ndim != 3 or not bool((law.covariances == shared).all()):
            return None
        self._count(x, jvp=True)
        w = law.log_weights.exp()
        centred = law.means - law.mean()[..., None, :]
        return shared, (w.sqrt()[..., None] * centred).mT

    def denoiser_jacobian(self, x: Tensor, t: float) -> Tensor:
        """dD/dx = (alpha_t / sigma_t^2) Cov[X_0 | X_t = x], `[..., d, d]`."""
        alpha, sigma = self.coefficients(t)
        return (alpha / sigma**2) * self.posterior_covariance(x, t)

    def hessian(self, x: Tensor, t: float) -> Tensor:
        """grad^2 log p_t(x), `[..., d, d]`."""
        self._count(x, jvp=True, counted_by_marginal=True)
        return self.marginal(t).hessian(x)

    def exact_kernel(self, x_t: Tensor, s: float, t: float) -> Any:
        """The law of X_s given X_t = x_t (s < t), with `.sample()` and `.log_prob(x_s)`."""
        self._count(x_t)
        return self.mixture.denoising_kernel(x_t, *self.coefficients(s), *self.coefficients(t))

    def _count(self, x: Tensor, jvp: bool = False, counted_by_marginal: bool = False) -> None:
        n = x.numel() // x.shape[-1]
        if not counted_by_marginal:
            self.counter.n_energy += n
            self.counter.n_grad += n
        if jvp:
            self.n_jvp += n * x.shape[-1]
