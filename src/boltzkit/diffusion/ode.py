"""The probability-flow ODE of a diffusion model: samples with an exact log-density, so that a
score-only sampler (iDEM) gets importance weights, an ESS and a log Z estimate.

For the forward SDE dX = f(t) X dt + g(t) dW (`boltzkit.diffusion.schedules`) the ODE

    dx/dt = F(x, t) = f(t) x - 1/2 g(t)^2 s(x, t)

has the same marginals p_t as the SDE when s = grad log p_t (Song et al. 2021, arXiv
2011.13456, eq. 13). Run from t_max to 0 from x_1 ~ p_1, it maps p_1 to a density q_0, which the
instantaneous change of variables (Chen et al. 2018, arXiv 1806.07366) gives along the path:

    d/dt log q_t(x(t)) = -div F(x(t), t),   div F = f(t) d - 1/2 g(t)^2 div s(x, t),

so log q_0(x_0) = log p_1(x_1) + int_0^{t_max} div F(x(t), t) dt. With the exact score and the
exact p_1, q_0 is the data density (tested on Gaussian mixtures); with a learned score it is the
law of what the ODE produces, exactly, whatever the score's error: log w = log gamma(x_0) -
log q_0(x_0) are then valid importance weights (up to the ODE solver's tolerance).

The divergence is exact (one backward pass per coordinate) up to `exact_max_dim`, else a
Hutchinson estimate with `n_probes` independent Gaussian probes per sample, each fixed along the
path: log q is then unbiased only in the probes' mean, and its standard error across probes is
returned (`log_q_se`). For particle systems F and the probes live in the centre-of-mass-free
subspace and d counts its (n - 1) d degrees of freedom.

A trajectory whose field or divergence turns non-finite (a learned score can blow up near
t = 0) is frozen from then on and marked `diverged`, with log q = +inf (importance weight 0):
one such sample would otherwise stop the adaptive solver for the whole batch. Dropping it
restricts q to the trajectories that stay finite; the count is reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from boltzkit.diffusion.schedules import Schedule
from boltzkit.mc.noise import Particles, gaussian_noise
from boltzkit.models.cnf import _divergence

ScoreFn = Callable[[Tensor, float | Tensor], Tensor]


class FlowSample(NamedTuple):
    """x0 `[B, dim]`; log_q `[B]` (log q_0(x0), float64; +inf where diverged); log_q_se `[B]`
    (0 for the exact divergence, else the standard error over the Hutchinson probes);
    diverged `[B]` (bool: trajectories frozen at a non-finite field)."""

    x0: Tensor
    log_q: Tensor
    log_q_se: Tensor
    diverged: Tensor


def probability_flow(score_fn: ScoreFn, x1: Tensor, log_p1: Tensor, schedule: Schedule, *,
                     particles: Particles | None = None, exact_max_dim: int = 16,
                     n_probes: int = 4, rtol: float = 1e-6, atol: float = 1e-8,
                     method: str = "dopri5", divergence_sign: float = 1.0) -> FlowSample:
    """Integrates the probability-flow ODE from t_max to 0 with its log-density.

    Args:
        score_fn: (x `[B, dim]`, t) -> s(x, t) `[B, dim]`.
        x1: starting points `[B, dim]` drawn from p_1 (the schedule's prior at t_max).
        log_p1: log p_1(x1) `[B]`.
        schedule: the noise schedule (drift f, diffusion g).
        particles: COM-free field, probes and degrees of freedom, or None.
        exact_max_dim: exact divergence up to this many degrees of freedom.
        n_probes: Hutchinson probes per sample above it.
        rtol, atol, method: torchdiffeq's `odeint` settings.
        divergence_sign: 1; -1 is the deliberately broken variant the tests must catch.
    """
    from torchdiffeq import odeint

    dof = x1.shape[-1] - (particles.spatial_dim if particles is not None else 0)
    exact = dof <= exact_max_dim
    k = 1 if exact else n_probes
    probes = None if exact else torch.stack(
        [gaussian_noise(tuple(x1.shape), x1, particles) for _ in range(k)])
    project = particles.center if particles is not None else (lambda v: v)
    diverged = torch.zeros(x1.shape[0], dtype=torch.bool, device=x1.device)

    def dynamics(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = state[0]
        # the adaptive solver's first trial step can overshoot the interval; the schedule is
        # defined on [0, t_max] only
        t = t.clamp(0.0, schedule.t_max)
        f, g2 = float(schedule.drift(t)), float(schedule.diffusion(t)) ** 2
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            s = project(score_fn(x, t))
            if exact:
                div_s = _divergence(s, x).unsqueeze(0)
            else:
                div_s = torch.stack([_hutchinson_kept(s, x, p) for p in probes])
        field = f * x - 0.5 * g2 * s
        div = f * dof - 0.5 * g2 * div_s
        diverged.logical_or_(~(torch.isfinite(field).all(-1) & torch.isfinite(div).all(0)))
        field = torch.where(diverged[:, None], 0.0, field)
        div = torch.where(diverged[None], 0.0, div)
        # d/dt log q = -div F; integrating backwards in t accumulates +div F dt
        return field.detach(), -divergence_sign * div.detach()

    ts = torch.tensor([schedule.t_max, 0.0], dtype=x1.dtype, device=x1.device)
    start = log_p1.to(x1.dtype).expand(k, -1).clone()
    x0, log_q = (s[-1] for s in odeint(dynamics, (x1.detach(), start), ts, method=method,
                                          rtol=rtol, atol=atol))
    log_q = log_q.double()
    se = log_q.std(0) / math.sqrt(k) if k > 1 else torch.zeros_like(log_q[0])
    log_q = torch.where(diverged, math.inf, log_q.mean(0))
    return FlowSample(project(x0), log_q, torch.where(diverged, 0.0, se), diverged.clone())


def _hutchinson_kept(v: Tensor, x: Tensor, probe: Tensor) -> Tensor:
    """probe^T (dv/dx) probe per sample, keeping the graph for the next probe."""
    (vjp,) = torch.autograd.grad(v, x, probe, retain_graph=True)
    return (vjp * probe).sum(-1)
