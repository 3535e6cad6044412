"""Denoising kernels: SMC proposals along a diffusion path, from a noised level at time t to a
less noisy one at s < t, each with its log-density or, for deterministic maps, log|det J|.

Notation (see `boltzkit.diffusion.schedules`): a = alpha_{t|s}, v = sigma^2_{t|s};
D(x) = E[X_0 | X_t = x] the denoiser, Sigma_0(x) = Cov[X_0 | X_t = x], H_t = grad^2 log p_t.
The exact kernel p(x_s | x_t) = p_s(x_s) N(x_t; a x_s, v I) / p_t(x_t) has (Tweedie, first and
second order)

    mean  m(x_t) = (x_t + v grad log p_t(x_t)) / a = (a sigma_s^2 / sigma_t^2) x_t + c D(x_t),
    cov   (v / a^2)(I + v H_t(x_t)) = r I + c^2 Sigma_0(x_t),
    with  r = sigma_s^2 v / sigma_t^2,  c = alpha_s v / sigma_t^2.

| name | proposal | weight term |
|---|---|---|
| `FirstOrder("ratio")` | N(m, r I) | log M |
| `FirstOrder("forward")` | N(m, v I) | log M |
| `EulerMaruyama` | N(x + h (g^2 score - f x), g^2 h I), h = t - s, f, g at t | log M |
| `DDPM` | q(x_s given x_t and x_0 = D(x_t)) = N(., r I), Ho et al. 2020 | log M |
| `SecondOrder("full" / "diagonal")` | N(m, r I + c^2 Sigma_0) or its diagonal | log M |
| `DDIM` | x_s = alpha_s D + sigma_s (x_t - alpha_t D) / sigma_t (Song et al. 2021) | log det J |
| `ProbabilityFlowEuler` | x_s = x_t - h (f x_t - g^2 score / 2) | log det J |
| `ExactGMM` | p(x_s given x_t) of the perfect model (oracle) | log M |

With the exact denoiser, DDPM ancestral sampling and `FirstOrder("ratio")` are the same law
(computed through x_0 and through the score); a test checks it. r = 0 when s = 0 (sigma_0 = 0):
an ancestral step ending at t = 0 would have zero variance and no density, so `FirstOrder` and
`DDPM` use the forward variance v for that step. Jacobians: DDIM's is
(sigma_s/sigma_t) I + (alpha_s - alpha_t sigma_s/sigma_t) dD/dx, probability flow's
(1 - h f) I + (h g^2 / 2) H_t; log|det| is exact (dense, chunked over particles). The backward
kernel of every stochastic proposal is the forward noising kernel `NoisingKernel`,
L(x_t | x_s) = N(x_t; a x_s, v I). References: Grenioux & Noble, arXiv 2601.21026; Ho et al.,
arXiv 2006.11239; Song et al., arXiv 2010.02502 and 2011.13456.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from boltzkit.mc.smc import Move

# Dense d x d work is chunked to about this many matrix entries per chunk (16 MB in float64).
_CHUNK_ENTRIES = 2**21


class StepCoefficients(NamedTuple):
    """Scalars of one step from t (noisier) to s; see the module docstring."""

    t: float
    s: float
    alpha_t: float
    sigma_t: float
    alpha_s: float
    sigma_s: float
    a: float
    v: float
    r: float
    c: float


def coefficients(src: Any, dst: Any) -> StepCoefficients:
    """The coefficients of the step from level `src` (time t) to level `dst` (time s < t)."""
    if not dst.t < src.t:
        raise ValueError(f"a denoising step needs s < t, got s={dst.t}, t={src.t}")
    a, v = (float(c) for c in src.model.schedule.transition(dst.t, src.t))
    r = dst.sigma**2 * v / src.sigma**2
    c = dst.alpha * v / src.sigma**2
    return StepCoefficients(src.t, dst.t, src.alpha, src.sigma, dst.alpha, dst.sigma, a, v, r, c)


def tweedie_mean(x: Tensor, denoised: Tensor, k: StepCoefficients) -> Tensor:
    """E[X_s | X_t = x] = (a sigma_s^2 / sigma_t^2) x + c D(x)."""
    return (k.a * k.sigma_s**2 / k.sigma_t**2) * x + k.c * denoised


@dataclass(frozen=True)
class FirstOrder:
    """N(m(x_t), var I): the exact one-step mean with an isotropic variance, "ratio"
    r = sigma_s^2 v / sigma_t^2 (DDPM's posterior variance) or "forward" v (DDPM's beta_t)."""

    variance: Literal["ratio", "forward"] = "ratio"
    deterministic: ClassVar[bool] = False

    def mean_and_var(self, x: Tensor, src: Any, dst: Any) -> tuple[Tensor, float]:
        """The proposal N(mean, var I)."""
        k = coefficients(src, dst)
        if self.variance not in ("ratio", "forward"):
            raise ValueError(f"variance must be 'ratio' or 'forward', got {self.variance!r}")
        var = k.r if self.variance == "ratio" and k.r > 0 else k.v
        return tweedie_mean(x, src.model.denoiser(x, k.t), k), var

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        return gaussian_move(*self.mean_and_var(x, src, dst))


def euler_maruyama_step(x: Tensor, score: Tensor, schedule: Any, t: float,
                        s: float) -> tuple[Tensor, float]:
    """Mean and variance of one Euler-Maruyama step of the reverse SDE
    dx = (f x - g^2 score) dt + g dW, backwards from t to s < t, f and g at t:

    x_s ~ N(x_t + h (g^2 score - f x_t), g^2 h I), h = t - s (weak order 1 in h).

    The one step behind the `EulerMaruyama` SMC proposal and `boltzkit.diffusion.sde`.

    Args:
        x: states at time t `[..., d]`.
        score: grad log p_t(x) `[..., d]`.
        schedule: anything with `drift(t)` and `diffusion_squared(t)` (a `Schedule`).
        t: the current (noisier) time.
        s: the time stepped to.

    Reference: Song et al. 2021, arXiv 2011.13456, eq. (6).
    """
    h = t - s
    f, g2 = float(schedule.drift(t)), float(schedule.diffusion_squared(t))
    return x + h * (g2 * score - f * x), g2 * h


@dataclass(frozen=True)
class EulerMaruyama:
    """One Euler-Maruyama step of the reverse SDE dx = (f x - g^2 score) dt + g dW, backwards
    from t to s: x_s = x_t + h (g^2 score - f x_t) + g sqrt(h) z, f, g at t
    (`euler_maruyama_step`)."""

    deterministic: ClassVar[bool] = False

    def mean_and_var(self, x: Tensor, src: Any, dst: Any) -> tuple[Tensor, float]:
        """The proposal N(mean, var I)."""
        return euler_maruyama_step(x, src.model.score(x, src.t), src.model.schedule, src.t,
                                   dst.t)

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        return gaussian_move(*self.mean_and_var(x, src, dst))


@dataclass(frozen=True)
class DDPM:
    """Ancestral sampling with x_0 plugged in: x_s ~ q(x_s | x_t, x_0 = D(x_t)), the forward
    posterior N((a sigma_s^2/sigma_t^2) x_t + c x_0, r I) (Ho et al. 2020, eq. 6-7)."""

    deterministic: ClassVar[bool] = False

    def mean_and_var(self, x: Tensor, src: Any, dst: Any) -> tuple[Tensor, float]:
        """The proposal N(mean, var I)."""
        k = coefficients(src, dst)
        x0 = src.model.denoiser(x, k.t)
        mean = (k.a * k.sigma_s**2 / k.sigma_t**2) * x + (k.alpha_s * k.v / k.sigma_t**2) * x0
        return mean, k.r if k.r > 0 else k.v

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        return gaussian_move(*self.mean_and_var(x, src, dst))


@dataclass(frozen=True)
class SecondOrder:
    """N(m(x_t), r I + c^2 Sigma_0(x_t)): the exact mean and covariance of p(x_s | x_t) when
    that law is Gaussian; "full" covariance or its "diagonal"."""

    covariance: Literal["full", "diagonal"] = "full"
    deterministic: ClassVar[bool] = False

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        k, model = coefficients(src, dst), src.model
        mean = tweedie_mean(x, model.denoiser(x, k.t), k)
        if self.covariance == "diagonal":
            return gaussian_move(mean, k.r + k.c**2 * model.posterior_covariance(x, k.t, True))
        if self.covariance != "full":
            raise ValueError(f"covariance must be 'full' or 'diagonal', got {self.covariance!r}")
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        factors = _lowrank(model, x, k.t)
        if factors is not None:
            return lowrank_gaussian_move(mean, k.r * eye + k.c**2 * factors[0], k.c * factors[1])

        def cov(xc: Tensor) -> Tensor:
            return k.r * eye + k.c**2 * model.posterior_covariance(xc, k.t)

        return full_gaussian_move(mean, cov, x)


@dataclass(frozen=True)
class DDIM:
    """The deterministic DDIM step x_s = alpha_s D + sigma_s (x_t - alpha_t D) / sigma_t
    (eta = 0), with log|det J| from the denoiser's Jacobian."""

    deterministic: ClassVar[bool] = True

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        k, model = coefficients(src, dst), src.model
        ratio = k.sigma_s / k.sigma_t
        x_new = ratio * x + (k.alpha_s - k.alpha_t * ratio) * model.denoiser(x, k.t)
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        factors = _lowrank(model, x, k.t)
        if factors is not None:  # dD/dx = (alpha_t / sigma_t^2) Cov[X_0 | x_t]
            gamma = (k.alpha_s - k.alpha_t * ratio) * k.alpha_t / k.sigma_t**2
            return Move(x_new, -lowrank_log_abs_det(ratio, gamma, *factors))

        def jac(xc: Tensor) -> Tensor:
            return ratio * eye + (k.alpha_s - k.alpha_t * ratio) * model.denoiser_jacobian(xc, k.t)

        return Move(x_new, -log_abs_det(jac, x))


@dataclass(frozen=True)
class ProbabilityFlowEuler:
    """One Euler step of the probability-flow ODE dx/dt = f x - g^2 score / 2, backwards from t
    to s; log|det J| exact from the score's Jacobian (the Hessian of log p_t)."""

    deterministic: ClassVar[bool] = True

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        schedule, model, h = src.model.schedule, src.model, src.t - dst.t
        f, g2 = float(schedule.drift(src.t)), float(schedule.diffusion(src.t)) ** 2
        x_new = x - h * (f * x - 0.5 * g2 * model.score(x, src.t))
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        factors = _lowrank(model, x, src.t)
        if factors is not None:  # H_t = (alpha^2 Cov[X_0 | x_t] / sigma^2 - I) / sigma^2
            a2, s2 = src.alpha**2, src.sigma**2
            beta, gamma = 1 - h * f - 0.5 * h * g2 / s2, 0.5 * h * g2 * a2 / s2**2
            return Move(x_new, -lowrank_log_abs_det(beta, gamma, *factors))

        def jac(xc: Tensor) -> Tensor:
            return (1 - h * f) * eye + 0.5 * h * g2 * model.hessian(xc, src.t)

        return Move(x_new, -log_abs_det(jac, x))


@dataclass(frozen=True)
class ExactGMM:
    """The exact denoising kernel p(x_s | x_t) of the perfect model (oracle): with the exact
    path every incremental weight is constant (Bayes' rule)."""

    deterministic: ClassVar[bool] = False

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        law = src.model.exact_kernel(x, dst.t, src.t)
        x_new = law.sample()
        return Move(x_new, law.log_prob(x_new))


@dataclass(frozen=True)
class NoisingKernel:
    """The backward kernel L(x_t | x_s) = N(x_t; a x_s, v I), the forward noising transition."""

    def log_prob(self, x_prev: Tensor, x_new: Tensor, src: Any, dst: Any) -> Tensor:
        """log L(x_prev | x_new) for x_prev at level `src` (time t), x_new at `dst` (s < t)."""
        a, v = (float(c) for c in src.model.schedule.transition(dst.t, src.t))
        return gaussian_log_prob(x_prev, a * x_new, v)


KERNELS: dict[str, Callable[[], Any]] = {
    "first-order-ratio": lambda: FirstOrder("ratio"),
    "first-order-forward": lambda: FirstOrder("forward"),
    "euler-maruyama": EulerMaruyama,
    "ddpm": DDPM,
    "second-order": lambda: SecondOrder("full"),
    "second-order-diag": lambda: SecondOrder("diagonal"),
    "ddim": DDIM,
    "pf-euler": ProbabilityFlowEuler,
    "exact": ExactGMM,
}


def make_kernel(name: str) -> Any:
    """The kernel registered under `name`; unknown names list the valid ones."""
    if name not in KERNELS:
        raise KeyError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNELS)}")
    return KERNELS[name]()


# ---- Gaussian helpers ---------------------------------------------------------------------
def gaussian_log_prob(x: Tensor, mean: Tensor, var: float | Tensor) -> Tensor:
    """log N(x; mean, diag(var)), var a scalar or `[..., d]`; `[...]`."""
    d = x.shape[-1]
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    log_det = torch.log(var).sum(-1) if var.ndim else d * torch.log(var)
    return -0.5 * (((x - mean) ** 2 / var).sum(-1) + log_det + d * math.log(2 * math.pi))


def gaussian_move(mean: Tensor, var: float | Tensor) -> Move:
    """x = mean + sqrt(var) z with its log-density (var a scalar or `[..., d]`)."""
    var = torch.as_tensor(var, dtype=mean.dtype, device=mean.device)
    z = torch.randn_like(mean)
    d = mean.shape[-1]
    log_det = torch.log(var).sum(-1) if var.ndim else d * torch.log(var)
    log_q = -0.5 * ((z**2).sum(-1) + log_det + d * math.log(2 * math.pi))
    return Move(mean + var.sqrt() * z, log_q)


def _chunk_size(d: int) -> int:
    return max(1, _CHUNK_ENTRIES // (d * d))


def full_gaussian_move(mean: Tensor, cov_of: Callable[[Tensor], Tensor], x: Tensor) -> Move:
    """x' = mean + L z with L L^T = cov_of(x), chunked over particles to bound memory."""
    d = x.shape[-1]
    flat_x, flat_m = x.reshape(-1, d), mean.reshape(-1, d)
    out_x, out_lq = [], []
    for i in range(0, flat_x.shape[0], _chunk_size(d)):
        chol, info = torch.linalg.cholesky_ex(cov_of(flat_x[i:i + _chunk_size(d)]))
        if bool(info.any()):
            raise RuntimeError("a proposal covariance is not positive definite")
        m = flat_m[i:i + _chunk_size(d)]
        z = torch.randn_like(m)
        out_x.append(m + (chol @ z[..., None])[..., 0])
        log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        out_lq.append(-0.5 * (z**2).sum(-1) - log_det - 0.5 * d * math.log(2 * math.pi))
    return Move(torch.cat(out_x).reshape(x.shape), torch.cat(out_lq).reshape(x.shape[:-1]))


def log_abs_det(jac_of: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log|det jac_of(x)| `[...]`, chunked over particles."""
    d = x.shape[-1]
    flat = x.reshape(-1, d)
    parts = [torch.linalg.slogdet(jac_of(flat[i:i + _chunk_size(d)]))[1]
             for i in range(0, flat.shape[0], _chunk_size(d))]
    return torch.cat(parts).reshape(x.shape[:-1])


# ---- posterior covariances C + U U^T shared across particles up to a rank-K term ----------------
def _lowrank(model: Any, x: Tensor, t: float) -> tuple[Tensor, Tensor] | None:
    """The model's (C, U) factors of Cov[X_0 | x_t] = C + U U^T when it has them."""
    if not hasattr(model, "posterior_covariance_lowrank"):
        return None
    return model.posterior_covariance_lowrank(x, t)


def lowrank_gaussian_move(mean: Tensor, a: Tensor, u: Tensor) -> Move:
    """x' ~ N(mean, A + U U^T) for a shared A `[d, d]` and per-particle U `[..., d, K]`:
    x' = mean + L_A z_1 + U z_2; the log-density by Woodbury and the determinant lemma,
    O(d^2 K) per particle instead of a d x d Cholesky factorisation each."""
    chol = torch.linalg.cholesky(a)
    a_inv = torch.cholesky_inverse(chol)
    z1, z2 = torch.randn_like(mean), torch.randn(u.shape[:-1][:-1] + u.shape[-1:],
                                                   dtype=mean.dtype, device=mean.device)
    e = z1 @ chol.mT + (u @ z2[..., None])[..., 0]
    a_inv_u = a_inv @ u
    cap = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device) + u.mT @ a_inv_u
    cap_chol = torch.linalg.cholesky(cap)
    b = (a_inv_u.mT @ e[..., None])
    quad = (e * (e @ a_inv)).sum(-1) - (torch.cholesky_solve(b, cap_chol) * b).sum((-2, -1))
    log_det = 2 * torch.log(torch.diagonal(chol)).sum() + 2 * torch.log(
        torch.diagonal(cap_chol, dim1=-2, dim2=-1)).sum(-1)
    d = mean.shape[-1]
    return Move(mean + e, -0.5 * (quad + log_det + d * math.log(2 * math.pi)))


def lowrank_log_abs_det(beta: float, gamma: float, c: Tensor, u: Tensor) -> Tensor:
    """log|det(beta I + gamma (C + U U^T))| `[...]` for shared C `[d, d]` and U `[..., d, K]`:
    log|det B| + log|det(I_K + gamma U^T B^-1 U)|, B = beta I + gamma C (determinant lemma)."""
    lam, q = torch.linalg.eigh(c)
    b_eig = beta + gamma * lam
    uq = q.mT @ u
    cap = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device) + gamma * (
        uq.mT @ (uq / b_eig[:, None]))
    return torch.log(b_eig.abs()).sum() + torch.linalg.slogdet(cap)[1]
