"""Gaussian mixtures with exact samples, scores, Hessians and noised marginals (the named
mixtures gmm40, two-modes and tempered-gmm-2d are in `boltzkit.targets.mixtures`).

log p(x) = LSE_k [log w_k + log N(x; mu_k, Sigma_k)], normalised (log Z = 0). Under the noising
X_t = alpha X_0 + sigma eps the law of X_t is again a mixture (means alpha mu_k, covariances
alpha^2 Sigma_k + sigma^2 I), which makes the mixture a "perfect diffusion model" oracle: exact
noised scores, Tweedie denoisers, posterior covariances and denoising kernels (see noised.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from boltzkit.targets.base import Target
from boltzkit.targets.noised import (
    MixtureLaw,
    as_level,
    component_terms,
    from_eigen,
    posterior_law,
    score_and_hessian_terms,
)
from boltzkit.targets.quadrature import log_integral

_Params = tuple[Tensor, Tensor, Tensor, Tensor | None]


class GaussianMixture(Target):
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in any dimension, normalised (log Z = 0).

    Covariances are held as eigendecompositions Sigma_k = U_k diag(lam_k) U_k^T (U = I exactly
    for diagonal ones), so that noising, denoising and posteriors stay O(K d^2) per point.
    Parameters keep the dtype of `means` (the default dtype for integer or list input); `log_prob`
    and friends cast them to the dtype and device of their input, `sample` returns the
    parameters' dtype.

    Args:
        weights: `[K]`, positive; normalised here (they need not sum to one).
        means: `[K, d]`.
        scales: per-axis standard deviations, a scalar, `[d]` or `[K, d]`; default 1.
        covariance: full covariances `[K, d, d]` or `[d, d]`, symmetric positive definite
            (instead of `scales`).
        name: the target's name.

    >>> gmm = GaussianMixture([1.0, 3.0], [[-1.0], [1.0]], 0.5)
    >>> gmm.weights.tolist(), gmm.log_Z
    ([0.25, 0.75], 0.0)
    """

    exact_sampler = True

    def __init__(
        self,
        weights: Tensor | list[float],
        means: Tensor | list[list[float]],
        scales: Tensor | float | list[float] | None = None,
        *,
        covariance: Tensor | list | None = None,
        name: str = "gmm",
    ) -> None:
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(means.shape)}")
        n_comp, dim = means.shape
        weights = _check_weights(weights, n_comp, means)
        if covariance is not None:
            if scales is not None:
                raise ValueError("give either scales or covariance, not both")
            eigvals, eigvecs = _eigen_from_covariance(covariance, n_comp, dim, means)
        else:
            eigvals, eigvecs = _eigen_from_scales(scales, n_comp, dim, means), None
        super().__init__(dim)
        self.name = name
        self._set_params(weights.log(), means, eigvals, eigvecs)

    @classmethod
    def from_eigendecomposition(
        cls, log_weights: Tensor, means: Tensor, eigvals: Tensor, eigvecs: Tensor | None,
        name: str = "gmm",
    ) -> GaussianMixture:
        """Builds a mixture from normalised log-weights `[K]`, means `[K, d]` and covariance
        eigendecompositions (eigvals `[K, d]` > 0, orthogonal eigvecs `[K, d, d]` or None for
        the identity), without re-validating them."""
        new = cls.__new__(cls)
        Target.__init__(new, means.shape[-1])
        new.name = name
        new._set_params(log_weights, means, eigvals, eigvecs)
        return new

    def _set_params(self, log_w: Tensor, means: Tensor, eigvals: Tensor,
                    eigvecs: Tensor | None) -> None:
        self.log_weights, self.means, self.eigvals, self.eigvecs = log_w, means, eigvals, eigvecs
        self._cast: dict[tuple[torch.dtype, torch.device], _Params] = {}
        self._log_Z_cache: dict[float, float] = {}

    # ---- parameters ---------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> Tensor:
        """Normalised component weights `[K]`."""
        return self.log_weights.exp()

    @property
    def covariances(self) -> Tensor:
        """Component covariances `[K, d, d]`."""
        return from_eigen(self.eigvals, self.eigvecs)

    def _params(self, like: Tensor) -> _Params:
        key = (like.dtype, like.device)
        if key not in self._cast:
            def cast(t: Tensor | None) -> Tensor | None:
                return None if t is None else t.to(dtype=like.dtype, device=like.device)

            self._cast[key] = (cast(self.log_weights), cast(self.means), cast(self.eigvals),
                               cast(self.eigvecs))
        return self._cast[key]

    # ---- Target -------------------------------------------------------------------------
    def _log_prob(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(x), dim=-1)

    def _log_Z(self) -> float:
        return 0.0

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        if n == 0:
            return self.means.new_zeros(0, self.dim)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=self.means.dtype, device=self.means.device,
                          generator=generator)
        z = self.eigvals[k].sqrt() * eps
        if self.eigvecs is not None:
            z = (self.eigvecs[k] @ z[..., None])[..., 0]
        return self.means[k] + z

    def _tempered_log_Z(self, temperature: float) -> float | None:
        """log integral of p^(1/T) by grid quadrature in d <= 2, else None.

        Step: the narrowest std times min(sqrt(T), 1/2) -- not wider at high T, where the
        sharp ridges of log p between modes (width ~ std^2 / distance) gain weight; box: the
        means +- 10 tempered widest stds. Relative error < 1e-9 for T in [0.1, 5] on
        tempered-gmm-2d (checked against twice finer grids); cost grows like T.
        """
        if self.dim > 2:
            return None
        if temperature not in self._log_Z_cache:
            std_min, std_max = self.eigvals.min().sqrt().item(), self.eigvals.max().sqrt().item()
            step = std_min * min(math.sqrt(temperature), 0.5)
            reach = 10 * std_max * math.sqrt(temperature)
            lows = (self.means.min(0).values - reach).tolist()
            highs = (self.means.max(0).values + reach).tolist()
            self._log_Z_cache[temperature] = log_integral(
                lambda x: self._log_prob(x) / temperature, lows, highs, [step] * self.dim)
        return self._log_Z_cache[temperature]

    def log_prob_and_score(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(log_prob, score) in closed form: score = sum_k r_k(x) Sigma_k^{-1} (mu_k - x) / T
        with responsibilities r = softmax(component_log_prob)."""
        self.check_input(x)
        n = x.numel() // self.dim
        self.counter.n_energy += n
        self.counter.n_grad += n
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            x_in = x if create_graph else x.detach()
            log_w, means, eigvals, eigvecs = self._params(x)
            if eigvecs is None and self.dim <= _PER_AXIS_MAX_DIM:
                flat = x_in.reshape(-1, self.dim)
                rows = max(256, _CHUNK_ELEMENTS // self.n_components)  # [rows, K] stays in cache
                parts = [_diagonal_log_prob_and_score(xc, log_w, means, eigvals)
                         for xc in flat.split(rows)]
                lp = torch.cat([p[0] for p in parts]).reshape(x.shape[:-1])
                score = torch.cat([p[1] for p in parts]).reshape(x.shape)
            else:
                clp, z = component_terms(x_in, log_w, means, eigvals, eigvecs)
                score, _ = score_and_hessian_terms(clp, z, eigvals, eigvecs, hessian=False)
                lp = torch.logsumexp(clp, dim=-1)
            lp = self._finite_or_minus_inf(lp)
        t = self.temperature  # a tensor broadcasts against the batch shape, not the coordinates
        return lp / t, score / (t[..., None] if isinstance(t, Tensor) else t)

    # ---- mixture-specific ---------------------------------------------------------------
    def component_log_prob(self, x: Tensor) -> Tensor:
        """log w_k + log N(x; mu_k, Sigma_k), `[..., K]` (of the untempered mixture)."""
        log_w, means, eigvals, eigvecs = self._params(x)
        return component_terms(x, log_w, means, eigvals, eigvecs)[0]

    def assign(self, x: Tensor) -> Tensor:
        """Index of the most likely component for each point, `[...]` (long)."""
        self.check_input(x)
        return self.component_log_prob(x).argmax(dim=-1)

    def hessian(self, x: Tensor) -> Tensor:
        """Hessian of log_prob, `[..., d, d]`: (sum_k r_k (g_k g_k^T - Sigma_k^{-1}) - g g^T) / T
        with g_k = Sigma_k^{-1} (mu_k - x) and g = sum_k r_k g_k. Counted as energy + gradient."""
        self.check_input(x)
        n = x.numel() // self.dim
        self.counter.n_energy += n
        self.counter.n_grad += n
        log_w, means, eigvals, eigvecs = self._params(x)
        clp, z = component_terms(x, log_w, means, eigvals, eigvecs)
        t = self.temperature
        hess = score_and_hessian_terms(clp, z, eigvals, eigvecs, hessian=True)[1]
        return hess / (t[..., None, None] if isinstance(t, Tensor) else t)

    # ---- noised marginals (X_t = alpha X_0 + sigma eps) ---------------------------------
    def noised(self, alpha: float | Tensor, sigma: float | Tensor) -> GaussianMixture:
        """The exact law of X_t = alpha X_0 + sigma eps: means alpha mu_k, covariances
        alpha^2 Sigma_k + sigma^2 I (same weights). A new target with its own counter.

        Args:
            alpha, sigma: python floats or 0-dim tensors (differentiable); per-point levels are
                taken by `noised_log_prob`, `denoiser`, `posterior` and `denoising_kernel`.
        """
        self._require_untempered("noised")
        a, s = as_level(alpha, self.means), as_level(sigma, self.means)
        if a.ndim or s.ndim:
            raise ValueError("noised() takes scalar alpha and sigma; per-point levels: "
                             "noised_log_prob / denoiser / posterior")
        eigvals = a**2 * self.eigvals + s**2
        if not bool((eigvals > 0).all()):
            raise ValueError(f"noised covariance is singular (alpha={float(a)}, sigma={float(s)})")
        return GaussianMixture.from_eigendecomposition(
            self.log_weights, a * self.means, eigvals, self.eigvecs, name=f"{self.name}-noised")

    def noised_log_prob(self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """log p_t(x_t), `[...]`, with alpha, sigma scalars or broadcastable to `[...]`
        (differentiable in x_t, alpha and sigma; not counted: an oracle, not the target)."""
        self._require_untempered("noised_log_prob")
        log_w, means, eigvals, eigvecs = self._params(x_t)
        a, s = as_level(alpha, x_t)[..., None, None], as_level(sigma, x_t)[..., None, None]
        clp, _ = component_terms(x_t, log_w, a * means, a**2 * eigvals + s**2, eigvecs)
        return torch.logsumexp(clp, dim=-1)

    def posterior(self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> MixtureLaw:
        """p(x_0 | x_t), a Gaussian mixture per point (noised.py has the formulas).

        Returns:
            MixtureLaw(log_weights `[..., K]`, means `[..., K, d]`, covariances `[K, d, d]`
            (`[..., K, d, d]` for per-point alpha, sigma)), with `.mean()`, `.covariance()`,
            `.sample()` and `.log_prob(x_0)`.
        """
        self._require_untempered("posterior")
        self.check_input(x_t)
        log_w, means, eigvals, eigvecs = self._params(x_t)
        return posterior_law(x_t, log_w, means, eigvals, eigvecs, as_level(alpha, x_t),
                             as_level(sigma, x_t))

    def denoiser(self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """E[X_0 | X_t = x_t] `[..., d]`; equals Tweedie's (x_t + sigma^2 score_t(x_t)) / alpha
        and stays finite at alpha = 0 (it is then the prior mean)."""
        return self.posterior(x_t, alpha, sigma).mean()

    def posterior_covariance(self, x_t: Tensor, alpha: float | Tensor,
                             sigma: float | Tensor) -> Tensor:
        """Cov[X_0 | X_t = x_t] `[..., d, d]` = (sigma^2 / alpha^2)(I + sigma^2 hessian_t(x_t))
        (second-order Tweedie)."""
        return self.posterior(x_t, alpha, sigma).covariance()

    def denoising_kernel(
        self,
        x_t: Tensor,
        alpha_s: float | Tensor,
        sigma_s: float | Tensor,
        alpha_t: float | Tensor,
        sigma_t: float | Tensor,
    ) -> MixtureLaw:
        """The exact kernel p(x_s | x_t) between two marginals of one diffusion (s less noisy).

        p(x_s | x_t) is the posterior of the prior p_s under x_t = alpha_ts x_s + sigma_ts eps
        with alpha_ts = alpha_t / alpha_s, sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2, i.e.
        p_s(x_s) N(x_t; alpha_ts x_s, sigma_ts^2 I) / p_t(x_t) (Bayes).

        Returns:
            A `MixtureLaw`; `.sample()` draws x_s `[..., d]`, `.log_prob(x_s)` is `[...]`.
        """
        self._require_untempered("denoising_kernel")
        self.check_input(x_t)
        log_w, means, eigvals, eigvecs = self._params(x_t)
        a_s, s_s = as_level(alpha_s, x_t), as_level(sigma_s, x_t)
        a_t, s_t = as_level(alpha_t, x_t), as_level(sigma_t, x_t)
        if not bool((a_s > 0).all()):
            raise ValueError("denoising_kernel needs alpha_s > 0")
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        if not bool((var_ts > 0).all()):
            raise ValueError("denoising_kernel needs sigma_t^2 > (alpha_t/alpha_s)^2 sigma_s^2 "
                             "(s must be less noisy than t)")
        a_s = a_s[..., None, None]
        return posterior_law(x_t, log_w, a_s * means, a_s**2 * eigvals + s_s[..., None, None]**2,
                             eigvecs, a_ts, var_ts.sqrt())

    def _require_untempered(self, what: str) -> None:
        if not (isinstance(self.temperature, float | int) and self.temperature == 1):
            raise ValueError(f"{what} is defined for the untempered mixture only "
                             f"(temperature {self.temperature}); a tempered GMM is not a GMM")

    def __repr__(self) -> str:
        return (f"GaussianMixture(name={self.name!r}, dim={self.dim}, "
                f"n_components={self.n_components})")


# ---- input validation ---------------------------------------------------------------------
def _check_weights(weights: Tensor | list[float], n_comp: int, like: Tensor) -> Tensor:
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device)
    if w.shape != (n_comp,):
        raise ValueError(f"weights must have shape [K] = [{n_comp}], got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all() and (w > 0).all()):
        raise ValueError("weights must be finite and positive")
    return w / w.sum()


def _eigen_from_scales(scales: Tensor | float | list[float] | None, n_comp: int, dim: int,
                       like: Tensor) -> Tensor:
    s = torch.ones(()) if scales is None else torch.as_tensor(scales)
    s = s.to(dtype=like.dtype, device=like.device)
    if s.shape not in ((), (dim,), (n_comp, dim)):
        raise ValueError(f"scales must be a scalar, [d] = [{dim}] or [K, d] = [{n_comp}, {dim}], "
                         f"got {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError("scales must be finite and positive")
    return (s**2).expand(n_comp, dim).clone()


def _eigen_from_covariance(covariance: Tensor | list, n_comp: int, dim: int,
                           like: Tensor) -> tuple[Tensor, Tensor]:
    c = torch.as_tensor(covariance).to(dtype=like.dtype, device=like.device)
    if c.shape == (dim, dim):
        c = c.expand(n_comp, dim, dim)
    if c.shape != (n_comp, dim, dim):
        raise ValueError(f"covariance must have shape [K, d, d] = [{n_comp}, {dim}, {dim}] or "
                         f"[d, d], got {tuple(c.shape)}")
    scale = c.abs().amax(dim=(-2, -1), keepdim=True)
    if not bool(((c - c.mT).abs() <= 1e-6 * scale).all()):
        raise ValueError("covariance must be symmetric")
    eigvals, eigvecs = torch.linalg.eigh(0.5 * (c + c.mT))
    if not bool((eigvals > 0).all()):
        raise ValueError("covariance must be positive definite")
    return eigvals, eigvecs


_PER_AXIS_MAX_DIM = 8
_CHUNK_ELEMENTS = 1 << 16
_EXP_FLOOR = -87.0


def _diagonal_log_prob_and_score(x: Tensor, log_w: Tensor, means: Tensor,
                                 eigvals: Tensor) -> tuple[Tensor, Tensor]:
    """log p and its score for diagonal covariances in low dimension, axis by axis with
    `[..., K]` intermediates only (no `[..., K, d]` tensors, whose size-d reductions are slow):
    g_kj = (x_j - mu_kj) / lam_kj, log N_k = -0.5 sum_j (x_j - mu_kj) g_kj + const, one exp
    pass shared by the log-sum-exp and the responsibilities r, score_j = -sum_k r_k g_kj. The
    same values as `component_terms` and `score_and_hessian_terms`, up to rounding (and terms
    below e^-87 of the largest counted as e^-87)."""
    inv = 1.0 / eigvals  # [K, d]
    d = x.shape[-1]
    clp = log_w - 0.5 * (eigvals.log().sum(-1) + d * math.log(2 * math.pi))
    grads = []
    for j in range(d):
        diff = x[..., j, None] - means[:, j]
        g = diff * inv[:, j]
        clp = clp - 0.5 * diff * g
        grads.append(g)
    peak = clp.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    # exp of arguments below -87 (float32 denormals and underflow) is ~10x slower on x86; such
    # terms are < 1.7e-38 of the largest, so they are clamped there (no visible change).
    e = torch.exp((clp - peak).clamp_(min=_EXP_FLOOR))
    total = e.sum(dim=-1, keepdim=True)
    r = e / total
    score = torch.stack([-(r * g).sum(-1) for g in grads], dim=-1)
    return (peak + total.log()).squeeze(-1), score
