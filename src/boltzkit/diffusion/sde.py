"""The reverse-time SDE of a diffusion model, integrated by Euler-Maruyama.

The reverse of the forward SDE dX = f(t) X dt + g(t) dW (`boltzkit.diffusion.schedules`) is
dX = (f X - g^2 grad log p_t(X)) dt + g dW-bar run from t_max back to 0 (Anderson 1982; Song et
al. 2021, arXiv 2011.13456). With a learned score s(x, t) in place of grad log p_t, n_steps
uniform steps h = t_max / n_steps, t_k = t_max - k h:

    x_{t_{k+1}} = x_{t_k} + h (g^2 s(x_{t_k}, t_k) - f x_{t_k}) + noise_scale g sqrt(h) z_k,

the step of `boltzkit.diffusion.kernels.euler_maruyama_step` (the SMC proposal `EulerMaruyama`
draws the same step). `noise_scale` < 1 is the iDEM configs' damping of the noise (1 is the
exact reverse SDE). For particle systems z_k ~ N(0, P) is COM-free (`boltzkit.mc.noise`) and
the result is projected onto the COM-free subspace.

>>> import torch
>>> from boltzkit.diffusion.schedules import VESchedule
>>> ve = VESchedule(sigma_min=0.1, sigma_max=2.0)
>>> _ = torch.manual_seed(0)
>>> x1 = (1 + ve.prior_std**2) ** 0.5 * torch.randn(4000, 1, dtype=torch.float64)  # p_1
>>> x0 = reverse_sde(lambda x, t: -x / (1 + float(ve.sigma(t)) ** 2), x1, ve, 200)
>>> abs(float(x0.var()) - 1.0) < 0.1  # the data law N(0, 1)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from boltzkit.diffusion.kernels import euler_maruyama_step
from boltzkit.diffusion.schedules import Schedule
from boltzkit.mc.noise import Particles, gaussian_noise

ScoreFn = Callable[[Tensor, float], Tensor]


def uniform_times(t_max: float, n_steps: int) -> list[float]:
    """Decreasing times t_k = t_max - k (t_max / n_steps), k = 0..n_steps, the last exactly 0."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    dt = t_max / n_steps
    return [t_max - k * dt for k in range(n_steps)] + [0.0]


def reverse_sde_step(score_fn: ScoreFn, x: Tensor, schedule: Schedule, t: float, s: float, *,
                     noise_scale: float = 1.0, particles: Particles | None = None) -> Tensor:
    """One step from t back to s < t: mean + noise_scale sqrt(var) z with (mean, var) from
    `euler_maruyama_step` and z standard normal (COM-free for `particles`).

    The score is evaluated before z is drawn, so a score function that draws random numbers
    (a Monte Carlo estimate) sees the RNG first.
    """
    mean, var = euler_maruyama_step(x, score_fn(x, t), schedule, t, s)
    z = gaussian_noise(tuple(x.shape), x, particles)
    return mean + (noise_scale * math.sqrt(var)) * z


def reverse_sde(score_fn: ScoreFn, x1: Tensor, schedule: Schedule, n_steps: int, *,
                noise_scale: float = 1.0, particles: Particles | None = None) -> Tensor:
    """Euler-Maruyama integration of the reverse-time SDE from t_max to 0 (module docstring).

    Args:
        score_fn: (x `[B, dim]`, t float) -> score `[B, dim]`.
        x1: starting points `[B, dim]` at t_max (e.g. N(0, sigma(t_max)^2 I) for VE).
        schedule: the noise schedule (`VESchedule` for iDEM).
        n_steps: number of uniform steps.
        noise_scale: multiplies the diffusion term (1: the exact reverse SDE).
        particles: COM-free noise and a COM-free result, or None.

    Returns:
        The samples at t = 0 `[B, dim]` (a new tensor).
    """
    times = uniform_times(schedule.t_max, n_steps)
    x = x1
    for t, s in zip(times[:-1], times[1:], strict=True):
        x = reverse_sde_step(score_fn, x, schedule, t, s, noise_scale=noise_scale,
                             particles=particles)
    return particles.center(x) if particles is not None else x
