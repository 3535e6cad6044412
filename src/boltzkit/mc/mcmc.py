"""Batched Metropolis-Hastings kernels: random-walk Metropolis (RWMH), MALA and HMC.

Every kernel is a frozen dataclass of hyperparameters with an `init`/`step` pair over an
immutable `MCMCState` (the blackjax pattern); the chains are the leading dimensions of
`x` `[..., dim]`, so one call moves thousands of chains (or replicas x chains, see
`boltzkit.mc.tempering`). `target` is anything with `log_prob(x)`, `log_prob_and_score(x)` and
`remove_com(x)`, e.g. a `boltzkit.targets.Target`, a tempered copy or an SMC path level.

>>> import torch
>>> from boltzkit.targets import Target
>>> class Normal(Target):
...     def _log_prob(self, x):
...         return -0.5 * (x**2).sum(-1)
>>> target, kernel = Normal(2), MALA(step_size=0.5)
>>> state = kernel.init(torch.zeros(100, 2), target)
>>> state, info = kernel.step(state, target)
>>> state.x.shape, info.accept_prob.shape, info.n_nonfinite
(torch.Size([100, 2]), torch.Size([100]), 0)
>>> kernel.adapted(info).step_size.shape  # per-chain step sizes
torch.Size([100])

Particle systems (DW-4, LJ-n) are sampled on the centre-of-mass-free subspace
V = {x : sum_i x_i = 0}. `init` projects the start onto V, and every proposal stays in V:
Gaussian noise, drifts and momenta are projected with `target.remove_com`, the orthogonal
projection P onto V. Projected standard noise P xi is exactly a standard Gaussian on V
((n-1)*d orthonormal directions), so each proposal has a density with respect to Lebesgue
measure on V given by the same formula as in the full space (|x' - m|^2 only sees V, and the
normalising constants are equal in both directions and cancel). The Metropolis-Hastings ratio is
therefore the usual one, and the kernel leaves invariant the target restricted to V, which is
the COM-free Boltzmann density that the particle targets define.

Non-finite values: a proposal whose log_prob is -inf/NaN, whose score (or any score along an HMC
trajectory) is non-finite, or whose coordinates overflow is rejected and counted in
`MCMCInfo.n_nonfinite`; a chain never becomes NaN. A chain that starts where log_prob = -inf
accepts the first finite proposal (it had zero probability, so nothing is lost).

Step-size adaptation (`kernel.adapted(info)`) is a Robbins-Monro update of log step size,
log h <- log h + rate * (accept_prob - target_accept), per chain. Adapting while sampling makes
the chain inhomogeneous and breaks the invariance argument, so samplers adapt only during
burn-in and then freeze the kernel.

References: Metropolis et al. (1953); Hastings (1970); Roberts & Tweedie (1996) for MALA;
Duane et al. (1987) and Neal (2011, arXiv 1206.1901) for HMC; Roberts, Gelman & Gilks (1997)
and Roberts & Rosenthal (1998) for the optimal acceptances 0.234 and 0.574; Andrieu & Thoms
(2008) for Robbins-Monro adaptation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor

from boltzkit.core.errors import UnknownName, UsageError


class Density(Protocol):
    """What a kernel needs from a target (a `Target`, a tempered copy, an SMC path level)."""

    def log_prob(self, x: Tensor) -> Tensor: ...

    def log_prob_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def remove_com(self, x: Tensor) -> Tensor: ...


class MCMCState(NamedTuple):
    """Positions `x` `[..., dim]`, their `log_prob` `[...]` and `score` `[..., dim]` (None for
    kernels that need no gradient). Values refer to the target the state was built with."""

    x: Tensor
    log_prob: Tensor
    score: Tensor | None


class MCMCInfo(NamedTuple):
    """Per-step diagnostics: `accept_prob` `[...]` (the MH acceptance probability min(1, r),
    0 for rejected non-finite proposals), `accepted` `[...]` bool, `n_nonfinite` the number of
    proposals rejected for non-finite values; `stages`, for a composition of kernels
    (`boltzkit.mc.independence.Cycle`), the `accept_prob` of each kernel in turn."""

    accept_prob: Tensor
    accepted: Tensor
    n_nonfinite: int
    stages: tuple[Tensor, ...] = ()


@dataclass(frozen=True)
class Kernel:
    """Base class: Metropolis-Hastings with a kernel-specific proposal.

    Attributes:
        step_size: float, or a tensor broadcasting against the batch shape `[...]` of x
            (per chain, per replica, ...).
    """

    step_size: float | Tensor
    needs_score: ClassVar[bool] = True
    default_target_accept: ClassVar[float] = 0.5

    def __post_init__(self) -> None:
        # Python numbers only: tensor step sizes come from `adapted` (exp of a log, so > 0), and
        # checking them would synchronise a GPU at every adaptation.
        if not isinstance(self.step_size, Tensor) and not 0 < self.step_size < math.inf:
            raise UsageError(f"{type(self).__name__} step_size must be > 0 and finite, got "
                             f"{self.step_size}")

    @property
    def evals_per_step(self) -> int:
        """Target evaluations per chain per `step` (energy, and gradient if `needs_score`)."""
        return 1

    def init(self, x: Tensor, target: Density) -> MCMCState:
        """The state at x `[..., dim]` (projected onto the COM-free subspace for particles)."""
        x = target.remove_com(x.detach())
        if self.needs_score:
            log_prob, score = target.log_prob_and_score(x)
            return MCMCState(x, log_prob.detach(), target.remove_com(score))
        return MCMCState(x, target.log_prob(x).detach(), None)

    def step(self, state: MCMCState, target: Density) -> tuple[MCMCState, MCMCInfo]:
        """One Metropolis-Hastings step of every chain: propose, then accept with probability
        min(1, pi(x') q(x | x') / (pi(x) q(x' | x)))."""
        proposal, log_q_ratio, bad = self._propose(state, target)
        return _metropolis(state, proposal, log_q_ratio, bad)

    def adapted(
        self,
        info: MCMCInfo,
        target_accept: float | None = None,
        rate: float = 0.05,
        average_over: tuple[int, ...] = (),
    ) -> Kernel:
        """A new kernel with log step size moved by rate * (accept_prob - target_accept).

        Args:
            info: the `MCMCInfo` of the last step; its `accept_prob` sets the new step sizes'
                shape (per chain), or averaged over `average_over` dims (e.g. `(1,)` for one
                step size per temperature of a `[n_temps, n_chains]` batch).
            target_accept: defaults to the kernel's `default_target_accept`.
            rate: Robbins-Monro gain; use it in burn-in only (see the module docstring).
        """
        accept = info.accept_prob.detach()
        if average_over:
            accept = accept.mean(dim=average_over, keepdim=True)
        goal = self.default_target_accept if target_accept is None else target_accept
        log_h = torch.log(torch.as_tensor(self.step_size, dtype=accept.dtype,
                                          device=accept.device))
        return dataclasses.replace(self, step_size=torch.exp(log_h + rate * (accept - goal)))

    def _propose(self, state: MCMCState, target: Density) -> tuple[MCMCState, Tensor, Tensor]:
        """(proposal, log q(x | x') - log q(x' | x) `[...]`, extra rejection mask `[...]`)."""
        raise NotImplementedError

    def _h(self, x: Tensor) -> Tensor | float:
        """The step size shaped to broadcast against x `[..., dim]`."""
        if isinstance(self.step_size, Tensor):
            return self.step_size.to(dtype=x.dtype, device=x.device).unsqueeze(-1)
        return float(self.step_size)


@dataclass(frozen=True)
class RWMH(Kernel):
    """Random-walk Metropolis: x' = x + h * P xi, xi ~ N(0, I); symmetric, so r = pi(x')/pi(x).

    `step_size` h is the proposal standard deviation per coordinate.
    """

    step_size: float | Tensor = 0.1
    needs_score: ClassVar[bool] = False
    default_target_accept: ClassVar[float] = 0.234

    def _propose(self, state: MCMCState, target: Density) -> tuple[MCMCState, Tensor, Tensor]:
        x = state.x + self._h(state.x) * target.remove_com(torch.randn_like(state.x))
        log_prob = target.log_prob(x).detach()
        zero = torch.zeros_like(log_prob)
        return MCMCState(x, log_prob, None), zero, torch.zeros_like(log_prob, dtype=torch.bool)


@dataclass(frozen=True)
class MALA(Kernel):
    """Metropolis-adjusted Langevin: x' = x + h * grad log pi(x) + sqrt(2h) * P xi.

    q(x' | x) = N(x'; x + h grad log pi(x), 2h I) on the COM-free subspace, so
    log q(x | x') - log q(x' | x) = (|x' - x - h s(x)|^2 - |x - x' - h s(x')|^2) / (4h).
    Roberts & Tweedie (1996), Bernoulli 2(4).
    """

    step_size: float | Tensor = 0.01
    default_target_accept: ClassVar[float] = 0.574

    def _propose(self, state: MCMCState, target: Density) -> tuple[MCMCState, Tensor, Tensor]:
        h = self._h(state.x)
        noise = target.remove_com(torch.randn_like(state.x))
        x = state.x + h * _finite_or_zero(state.score) + _sqrt(2 * h) * noise
        log_prob, score = target.log_prob_and_score(x)
        score = target.remove_com(score)
        back = state.x - x - h * _finite_or_zero(score)
        h_batch = h.squeeze(-1) if isinstance(h, Tensor) else h
        # |x' - x - h s(x)|^2 / (4h) = |noise|^2 / 2 exactly; computing it so avoids cancellation.
        log_q_ratio = 0.5 * (noise**2).sum(-1) - (back**2).sum(-1) / (4 * h_batch)
        return MCMCState(x, log_prob.detach(), score), log_q_ratio, ~_all_finite(score)


@dataclass(frozen=True)
class HMC(Kernel):
    """Hamiltonian Monte Carlo with unit mass, `n_leapfrog` leapfrog steps of size `step_size`.

    H(x, p) = -log pi(x) + |p|^2 / 2 with p ~ N(0, P); the leapfrog map is volume-preserving and
    reversible (on the COM-free subspace too), so r = exp(H(x, p) - H(x', p')).
    Neal (2011), "MCMC using Hamiltonian dynamics", arXiv 1206.1901.
    """

    step_size: float | Tensor = 0.05
    n_leapfrog: int = 10
    default_target_accept: ClassVar[float] = 0.65

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_leapfrog < 1:
            raise UsageError(f"HMC n_leapfrog must be >= 1, got {self.n_leapfrog}")

    @property
    def evals_per_step(self) -> int:
        return self.n_leapfrog

    def _propose(self, state: MCMCState, target: Density) -> tuple[MCMCState, Tensor, Tensor]:
        eps = self._h(state.x)
        p0 = target.remove_com(torch.randn_like(state.x))
        x, score = state.x, _finite_or_zero(state.score)
        bad = torch.zeros(state.x.shape[:-1], dtype=torch.bool, device=state.x.device)
        p = p0 + 0.5 * eps * score
        for i in range(self.n_leapfrog):
            x = x + eps * p
            log_prob, score = target.log_prob_and_score(x)
            score = target.remove_com(score)
            # A trajectory that meets a non-finite value is rejected at the end; zeroing its
            # force keeps it finite (and out of the target's NaN path) until then.
            bad = bad | ~torch.isfinite(log_prob) | ~_all_finite(score)
            score = torch.where(bad.unsqueeze(-1), torch.zeros_like(score), score)
            p = p + (eps if i < self.n_leapfrog - 1 else 0.5 * eps) * score
        log_q_ratio = 0.5 * ((p0**2).sum(-1) - (p**2).sum(-1))
        return MCMCState(x, log_prob.detach(), score), log_q_ratio, bad


def relax(x: Tensor, target: Density, n_steps: int, max_move: float = 0.02) -> Tensor:
    """Start-up minimiser: n_steps of x <- x + max_move * s / max(|s|_inf, 1), s = P grad log pi.

    Moves every configuration uphill in log_prob by at most `max_move` per coordinate and step,
    which pulls overlapping particles (Lennard-Jones energies of 1e6 and more) apart before MCMC
    starts; MALA and HMC cannot take useful steps from there. Not an MCMC move: burn-in follows.
    Costs n_steps energy and gradient evaluations per configuration.
    """
    x = target.remove_com(x.detach())
    for _ in range(n_steps):
        _, score = target.log_prob_and_score(x)
        score = _finite_or_zero(target.remove_com(score))
        x = x + max_move * score / score.abs().amax(-1, keepdim=True).clamp(min=1.0)
    return x


KERNELS: dict[str, type[Kernel]] = {"rwmh": RWMH, "mala": MALA, "hmc": HMC}


def kernel_from_name(name: str, **hyperparameters: Any) -> Kernel:
    """`KERNELS[name](**hyperparameters)`; unknown names list the valid ones."""
    if name not in KERNELS:
        raise UnknownName("kernel", name, KERNELS)
    return KERNELS[name](**hyperparameters)


def _metropolis(
    state: MCMCState, proposal: MCMCState, log_q_ratio: Tensor, bad: Tensor
) -> tuple[MCMCState, MCMCInfo]:
    bad = bad | ~torch.isfinite(proposal.log_prob) | ~_all_finite(proposal.x)
    log_alpha = proposal.log_prob - state.log_prob + log_q_ratio
    # NaN arises only from non-finite pieces; treat it as a rejection.
    log_alpha = torch.where(bad | torch.isnan(log_alpha), -math.inf, log_alpha)
    accept_prob = torch.exp(log_alpha.clamp(max=0.0))
    accepted = torch.log(torch.rand_like(accept_prob)) < log_alpha
    keep = accepted.unsqueeze(-1)
    score = None
    if state.score is not None and proposal.score is not None:
        score = torch.where(keep, proposal.score, state.score)
    new = MCMCState(
        torch.where(keep, proposal.x, state.x),
        torch.where(accepted, proposal.log_prob, state.log_prob),
        score,
    )
    return new, MCMCInfo(accept_prob, accepted, int(bad.sum()))


def _sqrt(h: Tensor | float) -> Tensor | float:
    return torch.sqrt(h) if isinstance(h, Tensor) else math.sqrt(h)


def _all_finite(x: Tensor) -> Tensor:
    return torch.isfinite(x).all(dim=-1)


def _finite_or_zero(score: Tensor | None) -> Tensor:
    # A state outside the support (log_prob = -inf) may carry a NaN score; drift-free moves
    # from there still reach finite proposals.
    if score is None:
        raise ValueError("this kernel needs a state with a score (build it with kernel.init)")
    return torch.where(torch.isfinite(score), score, torch.zeros_like(score))



__all__ = ["HMC", "KERNELS", "MALA", "RWMH", "Density", "Kernel", "MCMCInfo", "MCMCState",
           "kernel_from_name", "relax"]
