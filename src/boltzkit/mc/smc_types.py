"""What the SMC engine (`boltzkit.mc.smc`) is given and returns: the proposal's `Move`, the
resampling and MCMC-move settings, the adaptive schedule, and the result with its per-level
diagnostics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from boltzkit.core.errors import UnknownName, UsageError
from boltzkit.mc.resampling import RESAMPLERS


class Move(NamedTuple):
    """A proposal's output: new particles `x` `[..., d]` and `log_q` `[...]`, the log-density
    log M(x' | x) of a stochastic kernel, or -log|det J_T(x)| for a deterministic map T (so that
    the incremental weight reads log g_k(x') + log L - log g_{k-1}(x) - log_q in both cases)."""

    x: Tensor
    log_q: Tensor


@dataclass(frozen=True)
class Resampling:
    """Resample with `scheme` when ESS/N < `ess_threshold`; 1.0 means always, 0.0 never."""

    scheme: str = "systematic"
    ess_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.scheme not in RESAMPLERS:
            raise UnknownName("resampler", self.scheme, RESAMPLERS)
        _check_range("ess_threshold", self.ess_threshold, 0.0, 1.0)

    def fires(self, ess: Tensor, n: int) -> Tensor:
        if self.ess_threshold >= 1.0:
            return torch.ones_like(ess, dtype=torch.bool)
        if self.ess_threshold <= 0.0:
            return torch.zeros_like(ess, dtype=torch.bool)
        return ess / n < self.ess_threshold


@dataclass(frozen=True)
class MCMCMove:
    """`n_steps` steps of a `boltzkit.mc.mcmc` kernel invariant for the current level. With
    `adapt`, the step size is updated between levels (never within one, so each level's moves
    keep pi_k invariant) from that level's mean acceptance, one step size per replica."""

    kernel: Any
    n_steps: int = 1
    adapt: bool = True
    target_accept: float | None = None
    adapt_rate: float = 0.5

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise UsageError(f"MCMC moves need n_steps >= 1, got {self.n_steps}")
        if self.target_accept is not None:
            _check_range("target_accept", self.target_accept, 0.0, 1.0, open_=True)
        _check_range("adapt_rate", self.adapt_rate, 0.0, math.inf)


@dataclass(frozen=True)
class AdaptiveSchedule:
    """Next level by bisection so that the conditional ESS of the incremental weights,
    (sum_i W_i w_i)^2 / sum_i W_i w_i^2, is `cess_fraction` (Zhou, Johansen & Aston 2016,
    arXiv 1303.3123). Needs the identity proposal (weights that do not depend on the move)."""

    cess_fraction: float = 0.5
    max_levels: int = 10_000
    n_bisection: int = 50

    def __post_init__(self) -> None:
        _check_range("cess_fraction", self.cess_fraction, 0.0, 1.0, open_=True)
        if self.max_levels < 1 or self.n_bisection < 1:
            raise UsageError(f"need max_levels >= 1 and n_bisection >= 1, got {self.max_levels} "
                             f"and {self.n_bisection}")


@dataclass(frozen=True)
class Identity:
    """The identity proposal: x' = x, log|det J| = 0 (importance sampling, AIS, tempering)."""

    deterministic: ClassVar[bool] = True

    def propose(self, x: Tensor, src: Any, dst: Any) -> Move:
        return Move(x, torch.zeros(x.shape[:-1], dtype=torch.float64, device=x.device))


def _check_range(name: str, value: float, lo: float, hi: float, open_: bool = False) -> None:
    """UsageError unless lo <= value <= hi (lo < value < hi with `open_`); NaN never passes."""
    ok = lo < value < hi if open_ else lo <= value <= hi
    if not ok:
        interval = f"({lo}, {hi})" if open_ else f"[{lo}, {hi}]"
        raise UsageError(f"{name} must lie in {interval}, got {value}")


class SMCDiagnostics(NamedTuple):
    """Per-level records, level k = 1..K along the first dim, replicas along the second.

    lam: `[K + 1, R]` the level parameters visited (0 first, 1 last); ess: `[K, R]` ESS (a
    count) after reweighting to level k, before resampling; log_Z_increment: `[K, R]`;
    resampled: `[K, R]` bool; n_unique: `[K, R]` distinct ancestors after resampling (N when
    not resampled); accept_prob, step_size: `[K, R]` mean MCMC acceptance and step size at level
    k (NaN without moves); counts: per-level evaluation counts `[K]` (all replicas together),
    keys from `path.counts()`; stopped_by_budget: the budget forced a jump to the target.
    """

    lam: Tensor
    ess: Tensor
    log_Z_increment: Tensor
    resampled: Tensor
    n_unique: Tensor
    accept_prob: Tensor
    step_size: Tensor
    counts: dict[str, Tensor]
    stopped_by_budget: bool


class SMCResult(NamedTuple):
    """x: `[R, N, d]` final particles; log_W: `[R, N]` NORMALISED float64 log-weights
    (logsumexp 0; the unnormalised importance weights of `boltzkit.mc.estimators` are
    log_W + log_Z + log N); log_Z: `[R]` float64; diagnostics: `SMCDiagnostics`. Without
    `n_replicas` the replica dim is dropped everywhere."""

    x: Tensor
    log_W: Tensor
    log_Z: Tensor
    diagnostics: SMCDiagnostics
