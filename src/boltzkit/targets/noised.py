"""Closed forms for Gaussian mixtures under Gaussian noising X_t = alpha X_0 + sigma eps.

A mixture is held in eigen form: component k has mean mu_k and covariance
Sigma_k = U_k diag(lam_k) U_k^T, so that noising only maps lam -> alpha^2 lam + sigma^2 and every
noised quantity costs O(K d^2) per point, also with a different (alpha, sigma) per point.
`U = None` stands for identity eigenvectors (diagonal covariances).

Posterior of one component given y = alpha x + sigma eps, eps ~ N(0, I) (Bishop, PRML, eq. 2.116):
Cov = U diag(lam sigma^2 / (alpha^2 lam + sigma^2)) U^T,
mean = mu + U diag(alpha lam / (alpha^2 lam + sigma^2)) U^T (y - alpha mu),
and the component weights become w_k N(y; alpha mu_k, alpha^2 Sigma_k + sigma^2 I), normalised.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class MixtureLaw(NamedTuple):
    """A batch of Gaussian mixtures sum_k w_k N(y; m_k, C_k), one per leading index.

    Returned by `GaussianMixture.posterior` (the law of X_0 given x_t) and
    `GaussianMixture.denoising_kernel` (the law of X_s given x_t).

    Attributes:
        log_weights: `[..., K]`, normalised (logsumexp over K is 0).
        means: `[..., K, d]`.
        covariances: `[K, d, d]`, or `[..., K, d, d]` when the noise levels vary per point.
    """

    log_weights: Tensor
    means: Tensor
    covariances: Tensor

    def mean(self) -> Tensor:
        """The mixture mean sum_k w_k m_k, `[..., d]`."""
        return (self.log_weights.exp()[..., None] * self.means).sum(-2)

    def covariance(self) -> Tensor:
        """The mixture covariance sum_k w_k (C_k + (m_k - m)(m_k - m)^T), `[..., d, d]`."""
        w = self.log_weights.exp()
        centred = self.means - self.mean()[..., None, :]
        between = torch.einsum("...k,...ki,...kj->...ij", w, centred, centred)
        return between + torch.einsum("...k,...kij->...ij", w, self.covariances)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One draw per mixture, `[..., d]` (component by its weight, then its Gaussian)."""
        batch, (n_comp, d) = self.log_weights.shape[:-1], self.means.shape[-2:]
        probs = self.log_weights.exp().reshape(-1, n_comp)
        k = torch.multinomial(probs, 1, replacement=True, generator=generator).reshape(batch)
        mean_k = self.means.gather(-2, k[..., None, None].expand(*batch, 1, d))[..., 0, :]
        chol = torch.linalg.cholesky(self.covariances)
        if chol.ndim == 3:
            chol_k = chol[k]
        else:
            chol_k = chol.expand(*batch, n_comp, d, d).gather(
                -3, k[..., None, None, None].expand(*batch, 1, d, d))[..., 0, :, :]
        eps = torch.randn(*batch, d, 1, dtype=self.means.dtype, device=self.means.device,
                          generator=generator)
        return mean_k + (chol_k @ eps)[..., 0]

    def log_prob(self, y: Tensor) -> Tensor:
        """Normalised log-density at y `[..., d]` (broadcast against the batch), `[...]`."""
        chol = torch.linalg.cholesky(self.covariances)
        eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        z = torch.einsum("...kij,...kj->...ki", chol_inv, y[..., None, :] - self.means)
        log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        d = self.means.shape[-1]
        log_n = -0.5 * (z**2).sum(-1) - log_det - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(self.log_weights + log_n, dim=-1)


def rotate_in(v: Tensor, eigvecs: Tensor | None) -> Tensor:
    """U_k^T v_k for v `[..., K, d]`."""
    return v if eigvecs is None else torch.einsum("...kj,kji->...ki", v, eigvecs)


def rotate_out(v: Tensor, eigvecs: Tensor | None) -> Tensor:
    """U_k v_k for v `[..., K, d]`."""
    return v if eigvecs is None else torch.einsum("kij,...kj->...ki", eigvecs, v)


def from_eigen(eigvals: Tensor, eigvecs: Tensor | None) -> Tensor:
    """U diag(lam) U^T, `[..., K, d, d]` for lam `[..., K, d]`."""
    if eigvecs is None:
        return torch.diag_embed(eigvals)
    return torch.einsum("kij,...kj,klj->...kil", eigvecs, eigvals, eigvecs)


def component_terms(
    x: Tensor, log_w: Tensor, means: Tensor, eigvals: Tensor, eigvecs: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(log w_k + log N(x; mu_k, Sigma_k) `[..., K]`, z = U^T (x - mu_k) `[..., K, d]`).

    `means` and `eigvals` are `[K, d]` or `[..., K, d]` (broadcast against x `[..., d]`).
    """
    z = rotate_in(x[..., None, :] - means, eigvecs)
    d = x.shape[-1]
    log_n = -0.5 * ((z**2 / eigvals).sum(-1) + eigvals.log().sum(-1) + d * math.log(2 * math.pi))
    return log_w + log_n, z


def score_and_hessian_terms(
    clp: Tensor, z: Tensor, eigvals: Tensor, eigvecs: Tensor | None, hessian: bool
) -> tuple[Tensor, Tensor | None]:
    """Score and (optionally) Hessian of log sum_k exp(clp_k).

    With r = softmax(clp) and g_k = -Sigma_k^{-1} (x - mu_k):
    score = sum_k r_k g_k; Hessian = sum_k r_k (g_k g_k^T - Sigma_k^{-1}) - score score^T.
    """
    r = torch.softmax(clp, dim=-1)
    g_k = -rotate_out(z / eigvals, eigvecs)
    score = (r[..., None] * g_k).sum(-2)
    if not hessian:
        return score, None
    precision = from_eigen(1.0 / eigvals, eigvecs)
    hess = torch.einsum("...k,...ki,...kj->...ij", r, g_k, g_k)
    hess = hess - torch.einsum("...k,...kij->...ij", r, precision)
    return score, hess - score[..., :, None] * score[..., None, :]


def as_level(value: float | Tensor, like: Tensor) -> Tensor:
    """A noise coefficient as a tensor of the parameters' dtype and device, shape `[...]`."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def posterior_law(
    y: Tensor,
    log_w: Tensor,
    means: Tensor,
    eigvals: Tensor,
    eigvecs: Tensor | None,
    alpha: Tensor,
    sigma: Tensor,
) -> MixtureLaw:
    """Law of X given Y = y for X ~ sum_k w_k N(mu_k, Sigma_k), Y = alpha X + sigma eps.

    Args:
        y: `[..., d]`; alpha, sigma: `[]` or broadcastable to `[...]`, sigma > 0 or alpha != 0.
        log_w `[K]`, means `[K, d]`, eigvals `[K, d]`, eigvecs `[K, d, d]` or None: the prior.
    """
    a, s2 = alpha[..., None, None], (sigma**2)[..., None, None]
    obs_eigvals = a**2 * eigvals + s2
    clp, z = component_terms(y, log_w, a * means, obs_eigvals, eigvecs)
    log_weights = clp - torch.logsumexp(clp, dim=-1, keepdim=True)
    post_means = means + rotate_out(a * eigvals / obs_eigvals * z, eigvecs)
    post_eigvals = eigvals * s2 / obs_eigvals
    return MixtureLaw(log_weights, post_means, from_eigen(post_eigvals, eigvecs))
