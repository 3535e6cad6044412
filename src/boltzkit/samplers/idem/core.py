"""The pieces of iDEM (Akhound-Sadegh et al. 2024, arXiv 2402.06121) that are its own, each
testable alone: the Monte Carlo score estimator S_K, score clipping, the FIFO replay buffer and
the DEM loss. The noise schedule (`boltzkit.diffusion.schedules.VESchedule`), the reverse SDE
(`boltzkit.diffusion.sde.reverse_sde`) and the COM-free noise (`boltzkit.mc.noise`) are the
shared diffusion and Monte Carlo layers'.

Particle systems are handled through `Particles` (n_particles, spatial_dim): noise is drawn in
the centre-of-mass-free subspace and outputs are projected onto it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from boltzkit.diffusion.schedules import Schedule
from boltzkit.mc.noise import Particles, gaussian_noise

LogProbAndScore = Callable[[Tensor], tuple[Tensor, Tensor]]


# ---- Monte Carlo score estimator -------------------------------------------------------------
class ScoreEstimate(NamedTuple):
    """S_K(x, t) `[B, dim]`, log (1/K) sum_i gamma(x + sigma eps_i) `[B]`, and the Kish ESS of
    the self-normalised weights `[B]` (a count out of K)."""

    score: Tensor
    log_mean: Tensor
    ess: Tensor


def mc_score(log_prob_and_score: LogProbAndScore, x: Tensor, sigma: Tensor, n_mc: int, *,
             particles: Particles | None = None, max_elements: int = 1 << 21) -> ScoreEstimate:
    """The iDEM Monte Carlo estimator of the noised target's score.

    S_K(x, t) = grad_x log (1/K) sum_i gamma(x + sigma_t eps_i)
             = sum_i softmax_i(log gamma(x + sigma_t eps_i)) grad log gamma(x + sigma_t eps_i),
    eps_i ~ N(0, I) (COM-free for particles). All B x K perturbed points go to the target in one
    batched call `[B*K, dim]`; when B K dim exceeds `max_elements` the K samples are split into
    chunks whose log-sum-exp and weighted scores are combined exactly.

    Args:
        log_prob_and_score: x `[N, dim]` -> (log gamma `[N]`, grad log gamma `[N, dim]`).
        x: points `[B, dim]`.
        sigma: noise levels `[B]` (or a scalar).
        n_mc: K, Monte Carlo samples per point.
        particles: layout for COM-free noise, or None.
        max_elements: memory bound on the perturbed batch, in numbers.

    Reference: Akhound-Sadegh et al. 2024, arXiv 2402.06121, eq. (8).
    """
    b, dim = x.shape
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(b).reshape(b, 1, 1)
    chunk = max(1, min(n_mc, max_elements // max(1, b * dim)))
    lse = torch.full((b,), -math.inf, dtype=x.dtype, device=x.device)
    lse2 = lse.clone()
    acc = torch.zeros_like(x)
    for start in range(0, n_mc, chunk):
        k = min(chunk, n_mc - start)
        eps = gaussian_noise((b, k, dim), x, particles)
        pts = torch.addcmul(x.unsqueeze(1), eps, sigma, out=eps)
        lp, score = log_prob_and_score(pts.view(b * k, dim))
        lp, score = lp.view(b, k), score.view(b, k, dim)
        # One exp pass gives the chunk's weights, log-sum-exp and sum of squared weights.
        peak = _finite_or_zero(lp.amax(dim=1))
        weights = torch.exp(lp - peak.unsqueeze(1))
        total = weights.sum(dim=1)
        norm = torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(1)
        acc_c = torch.bmm(weights.unsqueeze(1), score).squeeze(1) / norm
        if not torch.isfinite(acc_c).all():  # 0 * inf from overlapping particles: zero weight
            safe = torch.where(torch.isfinite(score), score, torch.zeros_like(score))
            acc_c = torch.bmm(weights.unsqueeze(1), safe).squeeze(1) / norm
        lse_c = peak + torch.log(total)
        lse, acc = _combine(lse, acc, lse_c, acc_c)
        lse2 = torch.logaddexp(lse2, 2 * peak + torch.log(weights.square().sum(dim=1)))
    acc = torch.where(torch.isfinite(lse).unsqueeze(1), acc, torch.zeros_like(acc))
    if particles is not None:
        acc = particles.center(acc)
    ess = torch.exp(2 * lse - lse2)
    return ScoreEstimate(acc, lse - math.log(n_mc), torch.nan_to_num(ess, nan=0.0))


def _finite_or_zero(v: Tensor) -> Tensor:
    return torch.where(torch.isfinite(v), v, torch.zeros_like(v))


def _combine(lse: Tensor, acc: Tensor, lse_c: Tensor, acc_c: Tensor) -> tuple[Tensor, Tensor]:
    # Running softmax-weighted mean: acc holds sum_i w_i s_i / sum_i w_i over chunks so far.
    new = torch.logaddexp(lse, lse_c)
    safe = _finite_or_zero(new)
    a = torch.where(torch.isfinite(lse), torch.exp(lse - safe), torch.zeros_like(lse))
    c = torch.where(torch.isfinite(lse_c), torch.exp(lse_c - safe), torch.zeros_like(lse_c))
    return new, acc * a.unsqueeze(1) + acc_c * c.unsqueeze(1)


# ---- clipping --------------------------------------------------------------------------------
def clip_norm(v: Tensor, max_norm: float | None, particles: Particles | None = None,
              per_particle: bool = False) -> Tensor:
    """v scaled down to Euclidean norm `max_norm` where larger: over the whole vector, or per
    particle (each particle's spatial_dim-vector separately). None: no clipping."""
    if max_norm is None:
        return v
    if per_particle:
        if particles is None:
            raise ValueError("per-particle clipping needs a particle layout")
        vp = v.reshape(*v.shape[:-1], particles.n_particles, particles.spatial_dim)
        return _clip_last(vp, max_norm).reshape(v.shape)
    return _clip_last(v, max_norm)


def _clip_last(v: Tensor, max_norm: float) -> Tensor:
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v * torch.clamp(max_norm / norm.clamp_min(1e-30), max=1.0)


# ---- replay buffer ---------------------------------------------------------------------------
class FifoBuffer(NamedTuple):
    """A first-in-first-out replay buffer: `data` `[n, dim]`, oldest row first, n <= capacity."""

    data: Tensor
    capacity: int


def buffer_init(dim: int, capacity: int, like: Tensor | None = None) -> FifoBuffer:
    """An empty buffer (dtype and device of `like`)."""
    kw = {"dtype": like.dtype, "device": like.device} if like is not None else {}
    return FifoBuffer(torch.empty(0, dim, **kw), int(capacity))


def buffer_push(buffer: FifoBuffer, x: Tensor) -> FifoBuffer:
    """A new buffer with the rows of x appended and the oldest rows beyond capacity dropped."""
    data = torch.cat([buffer.data, x.detach().to(buffer.data)])[-buffer.capacity:]
    return FifoBuffer(data, buffer.capacity)


def buffer_sample(buffer: FifoBuffer, n: int) -> Tensor:
    """n rows drawn uniformly with replacement."""
    if len(buffer.data) == 0:
        raise ValueError("cannot sample from an empty buffer")
    idx = torch.randint(len(buffer.data), (n,), device=buffer.data.device)
    return buffer.data[idx]


# ---- DEM loss --------------------------------------------------------------------------------
def loss_weight(schedule: Schedule, t: Tensor, kind: str, eps: float = 1e-3) -> Tensor:
    """lambda(t): "sigma2" = sigma(t)^2 + eps (the iDEM GMM setting), "one" = 1."""
    if kind == "sigma2":
        return schedule.sigma(t).square() + eps
    if kind == "one":
        return torch.ones_like(t)
    raise ValueError(f"unknown loss weight {kind!r}; valid: 'sigma2', 'one'")


def dem_loss(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """(1/B) sum_b lambda(t_b) (1/dim) |s_theta(x_b, t_b) - clip(S_K(x_b, t_b))|^2."""
    return (weight * (prediction - target).square().mean(dim=-1)).mean()
