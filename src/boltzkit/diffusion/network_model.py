"""Diffusion models given by networks, with the interface the denoising kernels and
`boltzkit.mc.paths.DiffusionPath` query (score, Tweedie denoiser, Hessian, posterior covariance,
noised marginals, reference): the learned models of the annealed-MC study
(`boltzkit.diffusion.learned.LearnedModel`) and the time-conditioned networks of iDEM
(`NetworkModel`), whose score is s_theta(x, t) and, when energy-parametrised, whose noised
log-density is -E_theta(x, t).

Tweedie: D(x) = E[X_0 | X_t = x] = (x + sigma_t^2 s(x, t)) / alpha_t; the posterior covariance
Cov[X_0 | X_t = x] = (sigma_t^2 / alpha_t) dD/dx, symmetrised and with its eigenvalues floored at
`cov_floor` (sigma/alpha)^2 so that second-order kernels stay proper. Jacobians are by autograd:
d backward passes per point, counted in `n_jvp`; score and density calls are counted in
`counter` (configurations), apart from the target's own counter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from boltzkit.diffusion.schedules import Schedule
from boltzkit.targets.base import EvalCounter, Target


class AutogradModel:
    """Base class: everything derived from `score(x, t, create_graph)` by autograd."""

    schedule: Schedule
    dim: int
    cov_floor: float = 1e-6

    def __init__(self) -> None:
        self.counter = EvalCounter()
        self.n_jvp = 0

    def coefficients(self, t: float) -> tuple[float, float]:
        """(alpha_t, sigma_t) as floats."""
        return float(self.schedule.alpha(t)), float(self.schedule.sigma(t))

    def score(self, x: Tensor, t: float, create_graph: bool = False) -> Tensor:
        raise NotImplementedError

    def denoiser(self, x: Tensor, t: float) -> Tensor:
        """Tweedie: (x + sigma^2 s_theta(x)) / alpha."""
        alpha, sigma = self.coefficients(t)
        return (x + sigma**2 * self.score(x, t)) / alpha

    def hessian(self, x: Tensor, t: float) -> Tensor:
        """The Jacobian of s_theta, `[..., d, d]` (a Hessian for the energy form)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            s = self.score(x, t, create_graph=True)
            rows = [torch.autograd.grad(s[..., i].sum(), x, retain_graph=i < self.dim - 1)[0]
                    for i in range(self.dim)]
        self.n_jvp += x.numel()
        return torch.stack(rows, dim=-2).detach()

    def denoiser_jacobian(self, x: Tensor, t: float) -> Tensor:
        alpha, sigma = self.coefficients(t)
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        return (eye + sigma**2 * self.hessian(x, t)) / alpha

    def posterior_covariance(self, x: Tensor, t: float, diagonal: bool = False) -> Tensor:
        alpha, sigma = self.coefficients(t)
        jac = (sigma**2 / alpha) * self.denoiser_jacobian(x, t)
        lam, vec = torch.linalg.eigh(0.5 * (jac + jac.mT))
        lam = lam.clamp(min=self.cov_floor * (sigma / alpha) ** 2)
        cov = (vec * lam[..., None, :]) @ vec.mT
        return torch.diagonal(cov, dim1=-2, dim2=-1) if diagonal else cov

    def _count(self, x: Tensor) -> None:
        n = x.numel() // x.shape[-1]
        self.counter.n_energy += n
        self.counter.n_grad += n


class NetworkMarginal(Target):
    """log p_theta,t = -E_theta(x, t) as an unnormalised `Target`, sharing the model's counter."""

    def __init__(self, model: NetworkModel, t: float) -> None:
        super().__init__(model.dim)
        self.name, self.model, self.t = f"network-p_t(t={t:.4g})", model, float(t)
        self.counter = model.counter

    def _log_prob(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return -self.model.net.energy(flat, self.t).reshape(x.shape[:-1])


class NetworkModel(AutogradModel):
    """A time-conditioned network as a diffusion model: `net(x, t)` is the score s_theta(x, t)
    and, if the net has `energy(x, t)`, log p_t = -E_theta(x, t) (else score-only: AIS only).

    Args:
        net: the network (its parameters are frozen here: the caller passes a copy).
        schedule: its noise schedule.
        reference: the level-0 density at t_max, normalised, with exact samples.
    """

    def __init__(self, net: Any, schedule: Schedule, reference: Target) -> None:
        super().__init__()
        self.net, self.schedule, self._reference = net.requires_grad_(False), schedule, reference
        self.dim = reference.dim
        self.has_log_prob = hasattr(net, "energy")
        self._marginals: dict[float, NetworkMarginal] = {}

    def reference(self) -> Target:
        return self._reference

    def marginal(self, t: float) -> Target | None:
        if not self.has_log_prob:
            return None
        if float(t) not in self._marginals:
            self._marginals[float(t)] = NetworkMarginal(self, t)
        return self._marginals[float(t)]

    def score(self, x: Tensor, t: float, create_graph: bool = False) -> Tensor:
        self._count(x)
        flat = x.reshape(-1, x.shape[-1])
        with torch.set_grad_enabled(create_graph):
            out = self.net(flat, float(t)).reshape(x.shape)
        return out if create_graph else out.detach()
