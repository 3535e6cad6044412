"""Where TRADE evaluates its residual and with which constant: the conditions c (a curriculum
widening from c0, a log grid with causality weights) and the estimates of E_c[A] (self-normalised
importance sampling, a per-grid-point EMA of it, or the constant fitted to the residual).
`boltzkit.samplers.trade` re-exports everything here.

Causality weights: Wang, Sankaran, Perdikaris, arXiv 2203.07404.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from boltzkit.mc import estimators
from boltzkit.models.flows import ConditionalFlow, dtype_of
from boltzkit.samplers.trade.config import Config
from boltzkit.targets.family import Family, action_derivative


# ---- conditions -------------------------------------------------------------------------
def log_grid(config: Config) -> Tensor:
    """n_grid conditions log-spaced over [c_min, c_max], float64 on `config.device`."""
    return torch.logspace(math.log10(config.c_min), math.log10(config.c_max), config.n_grid,
                          dtype=torch.float64, device=config.device)


def curriculum_conditions(config: Config, n: int, progress: float) -> Tensor:
    """n conditions log c = log c0 +- r u^(1/alpha) (side length), u ~ U(0, 1), the side chosen
    in proportion to its log length. Over the curriculum (progress 0 -> 1) the reach r widens
    from curriculum_start to 1 and the skew exponent alpha grows from curriculum_start to 1, so
    that training ends log-uniform over [c_min, c_max]."""
    p = min(max(progress, 0.0), 1.0)
    alpha = reach = config.curriculum_start + (1 - config.curriculum_start) * p
    lo, hi, mid = math.log(config.c_min), math.log(config.c_max), math.log(config.c0)
    f64 = {"dtype": torch.float64, "device": config.device}
    upper = torch.rand(n, **f64) < (hi - mid) / (hi - lo)
    s = reach * torch.rand(n, **f64) ** (1 / alpha)
    return torch.exp(torch.where(upper, mid + s * (hi - mid), mid - s * (mid - lo)))


def causality_weights(c: Tensor, losses: Tensor, c0: float, eps: float) -> Tensor:
    """w_k = exp(-eps * sum of the losses at grid points from c0 (included) towards c_k, c_k
    excluded, on c_k's side of c0): a point is trained once the ones nearer c0 are.

    Args: c `[K]` grid, losses `[K]` per-point losses (detached inside).
    """
    dist = torch.log(c) - math.log(c0)
    towards = (torch.sign(dist)[:, None] == torch.sign(dist)[None, :]) | (dist == 0)[None, :]
    closer = dist.abs()[None, :] < dist.abs()[:, None]
    mask = (towards & closer).to(losses.dtype)
    return torch.exp(-eps * (mask @ losses.detach()))


# ---- E_c[A] ------------------------------------------------------------------------------
def snis(log_w: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Self-normalised means along the last axis and their Kish ESS (`boltzkit.mc.estimators`).

    Rows whose weights are all zero (every sample had a non-finite energy) give mean 0 and ESS 0,
    so that a training step never sees a NaN.
    """
    empty = torch.isneginf(log_w).all(-1, keepdim=True)
    log_w = torch.where(empty, torch.zeros_like(log_w), log_w.double())
    mean = torch.as_tensor(estimators.snis(log_w, values.double()).mean, device=log_w.device)
    ess = torch.as_tensor(estimators.ess(log_w), device=log_w.device)
    return torch.where(empty[..., 0], 0.0, mean), torch.where(empty[..., 0], 0.0, ess)


def fitted_constant(v: Tensor, valid: Tensor, c: Tensor, g: Tensor | int, config: Config
                    ) -> Tensor:
    """Per condition the k minimising sum_x rho((v(x) - k) * scale) over the valid points
    (scale = c when the residual is in log c): the mean for MSE, the Huber M-estimate of
    location for Huber (Newton steps from the median), so that a few far-out flow samples
    cannot drag the constant, and with it the residual of every other point.

    Args: v `[g * m]` = d/dc log q + A, valid `[g * m]` mask, c `[g * m]` conditions.
    """
    scale = c if config.residual_in_log_c else torch.ones_like(c)
    v = (v * scale).view(g, -1)
    ok = valid.view(g, -1)
    n_ok = ok.sum(-1).clamp_min(1)
    if config.rho == "mse":
        k = torch.where(ok, v, 0.0).sum(-1) / n_ok
    else:
        k = torch.nanmedian(torch.where(ok, v, math.nan), -1).values.nan_to_num(0.0)
        for _ in range(20):
            r = v - k[:, None]
            inside = ok & (r.abs() <= config.huber_delta)
            step = (torch.where(ok, r.clamp(-config.huber_delta, config.huber_delta), 0.0)
                    .sum(-1) / inside.sum(-1).clamp_min(1))
            k = k + step
    return k / scale.view(g, -1)[:, 0]


class GridEMA:
    """E_c[A] on the log grid, an exponential moving average of SNIS estimates from flow samples
    at each grid point, refreshed every `ema_every` steps; linear in log c between points."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.log_c = torch.log(log_grid(config))
        self.values = torch.zeros_like(self.log_c)
        self.ess_fraction = torch.zeros_like(self.log_c)
        self.started = False

    @torch.no_grad()
    def refresh(self, flow: ConditionalFlow, family: Family) -> None:
        m = self.config.n_ema_samples
        c = torch.exp(self.log_c).to(dtype_of(flow)).repeat_interleave(m)
        x, log_q = flow.sample_and_log_prob(len(c), c)
        log_gamma, a = action_derivative(family, x, c)
        valid = torch.isfinite(log_gamma) & torch.isfinite(a) & torch.isfinite(log_q)
        log_w = torch.where(valid, log_gamma.double() - log_q.double(), -math.inf)
        a = torch.where(valid, a, torch.zeros_like(a))
        mean, ess = snis(log_w.view(-1, m), a.view(-1, m))
        decay = self.config.ema_decay if self.started else 0.0
        self.values = decay * self.values + (1 - decay) * mean
        self.ess_fraction, self.started = ess / m, True

    def __call__(self, c: Tensor) -> Tensor:
        s = torch.log(c.double()).clamp(self.log_c[0], self.log_c[-1])
        k = torch.searchsorted(self.log_c, s).clamp(1, len(self.log_c) - 1)
        t = (s - self.log_c[k - 1]) / (self.log_c[k] - self.log_c[k - 1])
        return (1 - t) * self.values[k - 1] + t * self.values[k]
