"""Parallel tempering (replica exchange) over any `boltzkit.mc.mcmc` kernel.

Replica k targets pi_k(x) ~ pi(x)^(1/T_k) with T_0 = 1 < T_1 < ... < T_{K-1} = T_max. Replicas
are an extra leading batch dimension, x `[n_temps, n_chains, dim]`, and one kernel call moves all
of them: the kernel runs on `target.tempered(T)` with T a `[n_temps, 1]` tensor. After each
kernel step, neighbouring replicas (k, k+1) exchange configurations, even pairs on even steps
and odd pairs on odd steps, with probability

    min(1, pi_k(x_{k+1}) pi_{k+1}(x_k) / (pi_k(x_k) pi_{k+1}(x_{k+1})))
    = min(1, exp((beta_k - beta_{k+1}) * (E_k - E_{k+1}))),   beta = 1/T, E = -log pi,

computed from the stored log_probs (untempered: log pi = T_k * log pi_k), so swaps cost no
evaluation. Both moves leave prod_k pi_k invariant, hence the T = 1 replica samples pi.

>>> import torch
>>> from boltzkit.mc.mcmc import MALA
>>> from boltzkit.targets import Target
>>> class Normal(Target):
...     def _log_prob(self, x):
...         return -0.5 * (x**2).sum(-1)
>>> pt = ParallelTempering(MALA(0.1), geometric_ladder(4, T_max=10.0))
>>> state = pt.init(torch.zeros(4, 50, 2), Normal(2))
>>> state, info = pt.step(state, Normal(2))
>>> info.swap_accept_prob.shape, [round(t, 3) for t in pt.temperatures]
(torch.Size([3, 50]), [1.0, 2.154, 4.642, 10.0])

Ladder adaptation (`adapted_ladder`) moves the interior temperatures towards equal swap rates
between neighbours (a rate above the mean widens that gap in log T); like step-size adaptation it
belongs in burn-in only. References: Swendsen & Wang (1986); Geyer (1991); Earl & Deem (2005),
"Parallel tempering: theory, applications, and new perspectives"; Vousden, Farr & Mandel (2016,
arXiv 1501.05823) for ladder adaptation towards equal swap rates.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from boltzkit.mc.mcmc import Kernel, MCMCInfo, MCMCState


class PTState(NamedTuple):
    """`chains`: the kernel state of every replica, x `[n_temps, ..., dim]`, with log_prob and
    score of each replica's tempered target; `n_steps`: steps taken (its parity picks the
    swap pairs)."""

    chains: MCMCState
    n_steps: int


class PTInfo(NamedTuple):
    """`kernel`: the kernel's `MCMCInfo` `[n_temps, ...]`; `swap_accept_prob` and `swapped`
    `[n_temps - 1, ...]` for the pair (k, k+1), zero/False where the pair was not attempted;
    `swap_attempted` `[n_temps - 1]` bool."""

    kernel: MCMCInfo
    swap_accept_prob: Tensor
    swapped: Tensor
    swap_attempted: Tensor


def geometric_ladder(n_temps: int, T_max: float) -> tuple[float, ...]:
    """T_k = T_max^(k / (n_temps - 1)), k = 0..n_temps-1 (constant ratio between neighbours)."""
    if n_temps < 1 or T_max < 1.0:
        raise ValueError(f"need n_temps >= 1 and T_max >= 1, got {n_temps}, {T_max}")
    if n_temps == 1:
        return (1.0,)
    return tuple(float(T_max ** (k / (n_temps - 1))) for k in range(n_temps))


def swap_log_ratio(log_prob_lo: Tensor, log_prob_hi: Tensor, T_lo: Tensor | float,
                   T_hi: Tensor | float) -> Tensor:
    """log acceptance ratio of exchanging x_lo (at T_lo) and x_hi (at T_hi).

    (beta_lo - beta_hi) * (E_lo - E_hi) with E = -log pi the untempered energy, from the
    untempered `log_prob`s. NaN (both -inf) is returned as -inf.
    """
    log_r = (1.0 / T_lo - 1.0 / T_hi) * (log_prob_hi - log_prob_lo)
    return torch.where(torch.isnan(log_r), -math.inf, log_r)


@dataclass(frozen=True)
class ParallelTempering:
    """Replica exchange between `temperatures` (increasing, the first 1) with `kernel` moves.

    The kernel's step size may be a float, a `[n_temps, 1]` tensor (one per temperature, see
    `adapted`) or a `[n_temps, n_chains]` tensor.
    """

    kernel: Kernel
    temperatures: tuple[float, ...]

    def __post_init__(self) -> None:
        temps = tuple(float(t) for t in self.temperatures)
        if not temps or temps[0] != 1.0 or any(b <= a for a, b in itertools.pairwise(temps)):
            raise ValueError(f"temperatures must increase from 1.0, got {temps}")
        object.__setattr__(self, "temperatures", temps)

    @property
    def n_temps(self) -> int:
        return len(self.temperatures)

    def temperature_tensor(self, x: Tensor) -> Tensor:
        """The ladder shaped `[n_temps, 1, ...]` to broadcast against x's batch shape."""
        shape = (self.n_temps,) + (1,) * (x.ndim - 2)
        return torch.tensor(self.temperatures, dtype=x.dtype, device=x.device).view(shape)

    def tempered(self, target: Any, x: Tensor) -> Any:
        """`target.tempered(T)` with the ladder as a tensor matching x's batch shape."""
        return target.tempered(self.temperature_tensor(x))

    def init(self, x: Tensor, target: Any) -> PTState:
        """The state at x `[n_temps, ..., dim]` (replicas first)."""
        if x.ndim < 2 or x.shape[0] != self.n_temps:
            raise ValueError(f"x must have shape [n_temps={self.n_temps}, ..., dim], "
                             f"got {tuple(x.shape)}")
        return PTState(self.kernel.init(x, self.tempered(target, x)), 0)

    def step(self, state: PTState, target: Any) -> tuple[PTState, PTInfo]:
        """A kernel step of every replica, then swaps between neighbour pairs of one parity."""
        temps = self.temperature_tensor(state.chains.x)
        chains, kernel_info = self.kernel.step(state.chains, target.tempered(temps))
        chains, swap_prob, swapped, attempted = self._swap(chains, temps, state.n_steps % 2)
        info = PTInfo(kernel_info, swap_prob, swapped, attempted)
        return PTState(chains, state.n_steps + 1), info

    def adapted(self, info: PTInfo, target_accept: float | None = None, rate: float = 0.05,
                per_chain: bool = False) -> ParallelTempering:
        """New PT whose kernel step sizes move towards `target_accept`: one step size per
        temperature (acceptance averaged over chains), or per chain if `per_chain`."""
        dims = () if per_chain else tuple(range(1, info.kernel.accept_prob.ndim))
        kernel = self.kernel.adapted(info.kernel, target_accept, rate, average_over=dims)
        return dataclasses.replace(self, kernel=kernel)

    def adapted_ladder(self, state: PTState, swap_rates: Tensor, rate: float = 0.1
                       ) -> tuple[ParallelTempering, PTState]:
        """A ladder moved towards equal swap rates, and the state re-expressed on it.

        Gaps in log T are scaled by exp(rate * (A_k - mean A)) for pair rates `swap_rates`
        `[n_temps - 1]`, then renormalised so that T_0 = 1 and T_max stay fixed. The state's
        log_probs and scores are rescaled to the new temperatures (no evaluation).
        """
        if self.n_temps < 3:
            return self, state
        # The ladder is a tuple of floats: computed on the host whatever the chains' device.
        cpu64 = {"dtype": torch.float64, "device": "cpu"}
        log_t = torch.log(torch.tensor(self.temperatures, **cpu64))
        gaps = torch.diff(log_t)
        rates = swap_rates.detach().to(torch.float64).cpu()
        gaps = gaps * torch.exp(rate * (rates - rates.mean()))
        gaps = gaps * (log_t[-1] / gaps.sum())
        temps = torch.exp(torch.cat([torch.zeros(1, **cpu64), gaps.cumsum(0)]))
        temps[-1] = self.temperatures[-1]
        new = dataclasses.replace(self, temperatures=tuple(temps.tolist()))
        return new, PTState(_retemper(state.chains, self, new), state.n_steps)

    def _swap(self, chains: MCMCState, temps: Tensor, parity: int
              ) -> tuple[MCMCState, Tensor, Tensor, Tensor]:
        x = chains.x
        pair_shape = (self.n_temps - 1,) + x.shape[1:-1]
        swap_prob = x.new_zeros(pair_shape)
        swapped_all = torch.zeros(pair_shape, dtype=torch.bool, device=x.device)
        attempted = torch.zeros(self.n_temps - 1, dtype=torch.bool, device=x.device)
        if parity >= self.n_temps - 1:  # no pair of this parity (one or two temperatures)
            return chains, swap_prob, swapped_all, attempted
        log_pi = chains.log_prob * temps  # untempered log pi of each replica's configuration
        lo = torch.arange(parity, self.n_temps - 1, 2, device=x.device)
        hi = lo + 1
        log_r = swap_log_ratio(log_pi[lo], log_pi[hi], temps[lo], temps[hi])
        swapped = torch.log(torch.rand_like(log_r)) < log_r
        perm = torch.arange(self.n_temps, device=x.device).view(temps.shape)
        perm = perm.expand(log_pi.shape).clone()
        perm[lo] = torch.where(swapped, hi.view(-1, *temps.shape[1:]), perm[lo])
        perm[hi] = torch.where(swapped, lo.view(-1, *temps.shape[1:]), perm[hi])
        vec_perm = perm.unsqueeze(-1).expand(x.shape)
        score = chains.score
        if score is not None:
            score = torch.gather(score * temps.unsqueeze(-1), 0, vec_perm) / temps.unsqueeze(-1)
        new = MCMCState(torch.gather(x, 0, vec_perm), torch.gather(log_pi, 0, perm) / temps,
                        score)
        swap_prob[lo] = torch.exp(log_r.clamp(max=0.0))
        swapped_all[lo] = swapped
        attempted[lo] = True
        return new, swap_prob, swapped_all, attempted


def _retemper(chains: MCMCState, old: ParallelTempering, new: ParallelTempering) -> MCMCState:
    factor = old.temperature_tensor(chains.x) / new.temperature_tensor(chains.x)
    score = None if chains.score is None else chains.score * factor.unsqueeze(-1)
    return MCMCState(chains.x, chains.log_prob * factor, score)


__all__ = ["PTInfo", "PTState", "ParallelTempering", "geometric_ladder", "swap_log_ratio"]
