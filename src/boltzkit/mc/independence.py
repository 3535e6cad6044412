"""Independence Metropolis-Hastings: proposals drawn afresh from a fixed density q (a flow, or
TRADE's q(x | T) at each rung of a parallel-tempering ladder), corrected to leave the target
exactly invariant, and composable with the local kernels of `boltzkit.mc.mcmc`.

With x' ~ q(. | level), accept with probability

    min(1, pi(x') q(x | level) / (pi(x) q(x' | level)))

(Tierney 1994, "Markov chains for exploring posterior distributions", Ann. Statist. 22, eq. 7;
Noe et al. 2019 use flows this way). The kernel is invariant for pi whatever q is, provided q's
log-density is exact; the proposal's quality only sets the acceptance rate. A flow trained for a
temperature range proposes at the level's own temperature (`Proposal` receives the level, whose
`temperature` is a tensor `[n_temps, 1]` inside `boltzkit.mc.tempering`).

`Cycle(kernels)` applies kernels in turn (each invariant, so their composition is): for example
a flow move for the global jumps, then MALA for local refinement.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from boltzkit.mc.mcmc import Density, Kernel, MCMCInfo, MCMCState


class Proposal(Protocol):
    """A density to propose from, possibly depending on the level (e.g. its temperature)."""

    def sample_and_log_prob(self, shape: tuple[int, ...], level: Any
                            ) -> tuple[Tensor, Tensor]:
        """Samples `[*shape, dim]` (detached) and their log q `[*shape]`."""
        ...

    def log_prob(self, x: Tensor, level: Any) -> Tensor:
        """log q(x | level) `[...]` for x `[..., dim]`."""
        ...


@dataclass(frozen=True)
class IndependenceMH(Kernel):
    """Metropolis-Hastings with proposals x' ~ q independent of the current x.

    Attributes:
        proposal: a `Proposal`.
        with_score: also compute the target's score at proposals (for a `Cycle` with kernels
            that need it); costs a gradient per proposal.
        step_size: unused (independence proposals have no scale); kept for the kernel
            interface.
    """

    proposal: Any = None
    with_score: bool = False
    step_size: float | Tensor = field(default=1.0, kw_only=True)
    default_target_accept: ClassVar[float] = 0.5

    @property
    def needs_score(self) -> bool:  # type: ignore[override]
        return self.with_score

    def __post_init__(self) -> None:
        if self.proposal is None:
            raise ValueError("IndependenceMH needs a proposal (sample_and_log_prob, log_prob)")

    def _propose(self, state: MCMCState, target: Density) -> tuple[MCMCState, Tensor, Tensor]:
        shape = tuple(state.x.shape[:-1])
        with torch.no_grad():
            x_new, log_q_new = self.proposal.sample_and_log_prob(shape, target)
            log_q_old = self.proposal.log_prob(state.x, target)
        x_new = target.remove_com(x_new.to(state.x.dtype))
        if self.with_score:
            log_prob, score = target.log_prob_and_score(x_new)
            proposal = MCMCState(x_new, log_prob.detach(), target.remove_com(score))
        else:
            proposal = MCMCState(x_new, target.log_prob(x_new).detach(), None)
        # log q(x | x') - log q(x' | x) with q(y | .) = q(y)
        log_q_ratio = (log_q_old - log_q_new).to(proposal.log_prob.dtype)
        bad = ~torch.isfinite(log_q_new) | ~torch.isfinite(log_q_old)
        log_q_ratio = torch.where(bad, torch.full_like(log_q_ratio, -math.inf), log_q_ratio)
        return proposal, log_q_ratio, bad

    def adapted(self, info: MCMCInfo, target_accept: float | None = None, rate: float = 0.05,
                average_over: tuple[int, ...] = ()) -> IndependenceMH:
        """Nothing to adapt: the proposal is fixed."""
        return self


@dataclass(frozen=True)
class Cycle(Kernel):
    """The kernels applied one after the other in each `step` (a deterministic-scan
    composition: invariant when each kernel is). The state carries a score when any kernel needs
    one; `info` is the last kernel's, with `n_nonfinite` summed and `stages` holding every
    kernel's `accept_prob` in turn.
    """

    kernels: tuple[Kernel, ...] = ()
    step_size: float | Tensor = field(default=1.0, kw_only=True)

    def __post_init__(self) -> None:
        if not self.kernels:
            raise ValueError("Cycle needs at least one kernel")
        lacking = [k for k in self.kernels if isinstance(k, IndependenceMH) and not k.with_score]
        if self.needs_score and lacking:
            raise ValueError("a Cycle with a gradient-based kernel needs IndependenceMH("
                             "with_score=True), so that the state keeps its score")

    @property
    def needs_score(self) -> bool:  # type: ignore[override]
        return any(k.needs_score for k in self.kernels)

    @property
    def evals_per_step(self) -> int:
        return sum(k.evals_per_step for k in self.kernels)

    def step(self, state: MCMCState, target: Density) -> tuple[MCMCState, MCMCInfo]:
        n_bad, info, stages = 0, None, []
        for kernel in self.kernels:
            state, info = kernel.step(state, target)
            n_bad += info.n_nonfinite
            stages.append(info.accept_prob)
        assert info is not None
        return state, info._replace(n_nonfinite=n_bad, stages=tuple(stages))

    def adapted(self, info: MCMCInfo, target_accept: float | None = None, rate: float = 0.05,
                average_over: tuple[int, ...] = ()) -> Cycle:
        """The last kernel adapted to its acceptance (`info` is its); the others unchanged."""
        last = self.kernels[-1].adapted(info, target_accept, rate, average_over)
        return dataclasses.replace(self, kernels=(*self.kernels[:-1], last))


__all__ = ["Cycle", "IndependenceMH", "Proposal"]
