"""Resampling schemes: normalised log-weights `[B, N]` -> ancestor indices `[B, N]`, one row per
independent particle system, in float64. All four are unbiased (E[offspring_i] = N W_i);
systematic counts are floor(N W_i) or ceil(N W_i); zero weights are never drawn.

References: Douc, Cappe & Moulines (2005), "Comparison of resampling schemes for particle
filtering"; Carpenter, Clifford & Fearnhead (1999); Kitagawa (1996); Liu & Chen (1998).

>>> import torch
>>> log_w = torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float64))
>>> offspring_counts(systematic(log_w)).tolist()
[[2, 1, 1, 0]]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def inverse_cdf(log_w: Tensor, u: Tensor) -> Tensor:
    """Indices i with cdf_{i-1} <= u < cdf_i for sorted u in [0, 1) (zero weights never drawn)."""
    cdf = torch.softmax(log_w.double(), dim=-1).cumsum(-1)
    cdf[..., -1] = 1.0  # round-off must not leave u beyond the last bin
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=log_w.shape[-1] - 1)


def multinomial(log_w: Tensor) -> Tensor:
    """N i.i.d. draws from the weights."""
    probs = torch.softmax(log_w.double(), dim=-1)
    return torch.multinomial(probs, log_w.shape[-1], replacement=True)


def systematic(log_w: Tensor) -> Tensor:
    """One uniform per row: u_i = (i + U) / N (Carpenter, Clifford & Fearnhead 1999)."""
    b, n = log_w.shape
    f64 = {"dtype": torch.float64, "device": log_w.device}
    u = (torch.arange(n, **f64) + torch.rand(b, 1, **f64)) / n
    return inverse_cdf(log_w, u)


def stratified(log_w: Tensor) -> Tensor:
    """One uniform per stratum: u_i = (i + U_i) / N (Kitagawa 1996)."""
    b, n = log_w.shape
    f64 = {"dtype": torch.float64, "device": log_w.device}
    u = (torch.arange(n, **f64) + torch.rand(b, n, **f64)) / n
    return inverse_cdf(log_w, u)


def residual(log_w: Tensor) -> Tensor:
    """floor(N W_i) copies of each particle, the rest multinomially from the residual weights
    N W_i - floor(N W_i) (Liu & Chen 1998)."""
    b, n = log_w.shape
    nw = torch.softmax(log_w.double(), dim=-1) * n
    counts = torch.floor(nw)
    rest = nw - counts
    n_rest = n - counts.sum(-1, keepdim=True)
    # Rows with nothing left to draw get dummy uniform residuals (their draws are masked).
    rest = torch.where(n_rest > 0.5, rest, torch.ones_like(rest))
    draws = torch.multinomial(rest, n, replacement=True)
    keep = (torch.arange(n, device=log_w.device) < n_rest).to(torch.float64)
    counts = counts.scatter_add(-1, draws, keep)
    return counts_to_indices(counts.round().long())


def counts_to_indices(counts: Tensor) -> Tensor:
    """Offspring counts `[B, N]` (rows summing to N) -> sorted ancestor indices `[B, N]`."""
    n = counts.shape[-1]
    position = torch.arange(n, device=counts.device).expand_as(counts).contiguous()
    return torch.searchsorted(counts.cumsum(-1), position, right=True)


def offspring_counts(idx: Tensor) -> Tensor:
    """Ancestor indices `[B, N]` -> offspring counts `[B, N]`."""
    return torch.zeros_like(idx).scatter_add(-1, idx, torch.ones_like(idx))


RESAMPLERS: dict[str, Callable[[Tensor], Tensor]] = {
    "multinomial": multinomial, "systematic": systematic, "stratified": stratified,
    "residual": residual,
}
