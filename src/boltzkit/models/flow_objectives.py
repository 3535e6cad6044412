"""What a flow is trained and judged by against a target: importance weights, forward and reverse
KL. Shared by the flow Boltzmann generator and TRADE (`boltzkit.samplers`).

Forward KL (maximum likelihood): L = -E_data[log q_theta(x)].
Reverse KL: L = E_{x~q_theta}[log q_theta(x) - log gamma(x)] = KL(q || p) - log Z.
Importance weights: log w = log gamma(x) - log q_theta(x), x ~ q_theta, in float64; a weight whose
energy overflowed (NaN, +inf) is -inf (a zero weight, counted), never NaN.

Reference: Noe et al., Boltzmann generators, Science 365 (2019), arXiv 1812.01729.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from boltzkit.mc import estimators
from boltzkit.models.flows import ConditionalFlow, dtype_of
from boltzkit.targets.base import Target


# ---- importance weights --------------------------------------------------------------------
def guarded_log_w(log_gamma: Tensor, log_q: Tensor) -> tuple[Tensor, int]:
    """log w = log gamma - log q in float64, with -inf (never NaN) where either is not finite.

    Returns the weights and how many were set to -inf.
    """
    log_w = log_gamma.detach().double() - log_q.detach().double()
    bad = ~torch.isfinite(log_w)
    return torch.where(bad, torch.full_like(log_w, -math.inf), log_w), int(bad.sum())


def summarise_weights(log_w: Tensor) -> dict[str, float]:
    """ESS (Kish, a count), ESS/N, IS log Z = LSE(log w) - log N with its delta-method SE, ELBO
    and the zero-weight count (`boltzkit.mc.estimators.weight_summary`)."""
    return estimators.weight_summary(log_w.double().flatten())


@torch.no_grad()
def reweight(
    flow: ConditionalFlow, target: Target, n: int, c: float | Tensor = 1.0,
    context: Tensor | None = None, chunk: int = 8192,
) -> tuple[Tensor, Tensor, int]:
    """n flow samples at c with guarded log weights log gamma_c(x) - log q(x | c).

    Returns (samples `[n, dim]` float64, log_w `[n]` float64, number of non-finite weights).
    """
    xs, lws, n_bad = [], [], 0
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ctx = None if context is None or context.ndim == 1 else context[start:start + m]
        cc = c[start:start + m] if isinstance(c, Tensor) and c.ndim else c
        x, log_q = flow.sample_and_log_prob(m, cc, context if ctx is None else ctx)
        lw, bad = guarded_log_w(target.log_prob(x.double()), log_q)
        xs.append(x.double())
        lws.append(lw)
        n_bad += bad
    return torch.cat(xs), torch.cat(lws), n_bad


# ---- losses ------------------------------------------------------------------------------
def forward_kl_loss(flow: ConditionalFlow, x: Tensor, c: float | Tensor = 1.0,
                    context: Tensor | None = None) -> Tensor:
    """-mean log q_theta(x | c) on samples x `[n, dim]`."""
    return -flow.log_prob(x, c, context).mean()


def reverse_kl_loss(
    flow: ConditionalFlow, target: Target, n: int, c: float | Tensor = 1.0,
    context: Tensor | None = None,
) -> tuple[Tensor, int]:
    """mean over finite samples of log q_theta(x | c) - log gamma(x), x ~ q_theta (reparametrised).

    `target` is the target at c already. Returns (loss, number of samples left out).
    """
    x, log_q = flow.sample_and_log_prob(n, c, context)
    log_gamma = target.log_prob(x)
    target.counter.n_grad += n  # the gradient flows back through the energy
    diff = log_q - log_gamma
    ok = torch.isfinite(diff)
    n_bad = int((~ok).sum())
    if not ok.any():
        return (log_q * 0).sum(), n_bad
    return diff[ok].mean(), n_bad


@dataclass(frozen=True)
class FlowProposal:
    """A flow as the proposal of `boltzkit.mc.independence.IndependenceMH`.

    The flow's condition is `c` when given, else the level's temperature times `c_ref` (per
    replica inside parallel tempering, where the level's temperature is `[n_temps, 1]`): TRADE's
    q(x | T) proposes at every rung of the ladder. Samples and log-densities come back in
    float64.

    With `basis` B `[dim, k]` (orthonormal columns), the flow lives on the k coordinates
    z = x B of the subspace the chains move in (e.g. the centre-of-mass-free one of a particle
    system): x = z B^T and q(x) = q_flow(x B), exact on the subspace because B^T B = I.
    """

    flow: ConditionalFlow
    c: float | None = None
    c_ref: float = 1.0
    basis: Tensor | None = None

    def _condition(self, level: Any, shape: tuple[int, ...]) -> Tensor | float:
        if self.c is not None:
            return self.c
        temperature = getattr(level, "temperature", 1.0)
        if not isinstance(temperature, Tensor):
            return float(temperature) * self.c_ref
        return (temperature * self.c_ref).expand(shape).reshape(-1)

    def sample_and_log_prob(self, shape: tuple[int, ...], level: Any
                            ) -> tuple[Tensor, Tensor]:
        """Samples `[*shape, dim]` and log q `[*shape]` at the level's condition."""
        n = math.prod(shape)
        c = self._condition(level, shape)
        x, log_q = self.flow.sample_and_log_prob(n, _to(c, self.flow))
        x = x.detach().double()
        if self.basis is not None:
            x = x @ self.basis.to(x).T
        return x.reshape(*shape, -1), log_q.detach().double().reshape(shape)

    def log_prob(self, x: Tensor, level: Any) -> Tensor:
        """log q(x | level's condition) `[...]` for x `[..., dim]`."""
        shape = tuple(x.shape[:-1])
        c = self._condition(level, shape)
        flat = x.reshape(-1, x.shape[-1])
        if self.basis is not None:
            flat = flat @ self.basis.to(flat)
        flat = flat.to(dtype_of(self.flow))
        return self.flow.log_prob(flat, _to(c, self.flow)).detach().double().reshape(shape)


def _to(c: Tensor | float, flow: ConditionalFlow) -> Tensor | float:
    return c.to(dtype_of(flow)) if isinstance(c, Tensor) else c
