"""The one sequential Monte Carlo engine: reweight, resample, move.

Particles x_i ~ pi_{k-1} with normalised weights W_{k-1,i} go to level k of a `boltzkit.mc.paths`
path by a forward kernel M_k (a proposal) with backward kernel L_{k-1}; the incremental weight is

    delta_k(x, x') = log g_k(x') + log L_{k-1}(x | x') - log g_{k-1}(x) - log M_k(x' | x),

or, for a deterministic map x' = T(x), log g_k(T(x)) + log|det J_T(x)| - log g_{k-1}(x)
(Del Moral, Doucet & Jasra 2006, "Sequential Monte Carlo samplers", eq. 31). Then

    log Z_k - log Z_{k-1} ~= log sum_i W_{k-1,i} exp(delta_{k,i}),

the particles are resampled when ESS/N < `ess_threshold` (weights reset to 1/N), and MCMC moves
invariant for pi_k refresh them. log Z is that of the target relative to level 0's normaliser
(absolute when level 0 is normalised, as every reference in `boltzkit.mc.paths` is).

Importance sampling, AIS, tempered SMC and diffusion-path SMC are configurations of this loop:

| method | path / schedule | proposal, backward | resampling | moves |
|---|---|---|---|---|
| IS | `GeometricPath(q, target)`, grid [0, 1] | identity | never (0.0) | none |
| AIS | any path, fixed grid | identity | never | `MCMCMove` |
| tempered SMC | `GeometricPath`, `AdaptiveSchedule()` | identity | e.g. 0.5 | `MCMCMove` |
| diffusion SMC | `DiffusionPath`, its grid | `diffusion.kernels`, `NoisingKernel()` | any | any |

Without resampling and MCMC moves the intermediate log-densities telescope out of the final
weight, log w = log g_K(x_K) - log g_0(x_0) + sum_k (log L - log M): levels without a
log-density (`has_log_prob = False`, e.g. a score-only diffusion model) are allowed then and
contribute log g = 0 (their per-level ESS is then that of partial weights only).

Replicas: particles are `[R, N, d]`, R independent runs in one call (each with its own adaptive
levels, resampling decisions and per-replica MCMC step sizes). Weights and log Z are float64.
The standard error of log Z comes from the replicas (`estimators.replica_log_Z(res.log_Z)`),
never from the final weights: after resampling they are equal whatever the error.

Zero weights: an incremental log-weight that is -inf (a vanishing target density), NaN or +inf
makes the particle's weight exactly zero (log_w = -inf, counted by `estimators.n_zero_weight`).

>>> import torch
>>> from boltzkit.mc.paths import Gaussian, GeometricPath
>>> path = GeometricPath(Gaussian(2, scale=2.0), Gaussian(2, mean=1.0))
>>> res = smc(path, torch.tensor([0.0, 1.0]), n_particles=1000, n_replicas=4)
>>> res.x.shape, res.log_Z.shape, res.diagnostics.ess.shape
(torch.Size([4, 1000, 2]), torch.Size([4]), torch.Size([1, 4]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from boltzkit.mc import estimators
from boltzkit.mc.paths import Path
from boltzkit.mc.resampling import RESAMPLERS
from boltzkit.mc.smc_types import (
    AdaptiveSchedule,
    Identity,
    MCMCMove,
    Move,
    Resampling,
    SMCDiagnostics,
    SMCResult,
)

# ---- the loop ---------------------------------------------------------------------------------


_RESAMPLE_AT_HALF = Resampling()  # frozen: safe as a shared default


def smc(
    path: Path,
    schedule: Tensor | AdaptiveSchedule | None = None,
    *,
    n_particles: int,
    n_replicas: int | None = None,
    proposal: Any = None,
    backward: Any = None,
    mcmc: MCMCMove | None = None,
    resampling: Resampling = _RESAMPLE_AT_HALF,
    budget: int | None = None,
    callback: Callable[..., None] | None = None,
) -> SMCResult:
    """Runs SMC along `path`: reweight, resample, move, level after level.

    Args:
        path: a `boltzkit.mc.paths.Path`; level 0 must have exact samples.
        schedule: increasing level parameters from 0 to 1 `[K + 1]`, an `AdaptiveSchedule`,
            or None for `path.grid`.
        n_particles: N per replica.
        n_replicas: R independent runs as a leading batch dim (None: no replica dim).
        proposal: forward kernel with `propose(x, src, dst) -> Move` and `deterministic`;
            None is the identity.
        backward: backward kernel with `log_prob(x_prev, x_new, src, dst)` for stochastic
            proposals; must be None for deterministic ones.
        mcmc: MCMC moves after each level, or None.
        resampling: scheme and ESS threshold.
        budget: target energy evaluations (`path.counts()["n_target"]`) this run may spend:
            when another level like the last (the first: reweighting, the kernel's start and
            its steps) would leave too little for the jump to the target (N R evaluations), the
            next level is the target itself, without moves. Never overspent when it pays for
            that jump; `stopped_by_budget` says whether it forced one.
        callback: called as callback("advance", n=1, lam=..., ess_fraction=...) per level.
    """
    proposal = Identity() if proposal is None else proposal
    setup = _setup(path, schedule, proposal, backward, mcmc, resampling)
    n_rep, n = n_replicas or 1, n_particles
    state, level = _init(path, n_rep, n)
    _check_telescoping(level, resampling, mcmc)
    records: dict[str, list[Tensor]] = {k: [] for k in SMCDiagnostics._fields[:7]}
    records["lam"].append(state.lam)
    counts: dict[str, list[int]] = {k: [] for k in path.counts()}
    kernel = mcmc.kernel if mcmc is not None else None
    stopped, k, start = False, 0, path.counts()["n_target"]
    level_cost, jump_cost = _level_cost(n_rep * n, mcmc), n_rep * n
    while not bool((state.lam >= 1).all()):
        k += 1
        before = path.counts()
        # Take another level only if the jump to the target (N R evaluations) still fits after it.
        stop_now = (budget is not None
                    and before["n_target"] - start + level_cost + jump_cost > budget)
        stopped = stopped or stop_now
        new_state, new_level, increment = _reweight(setup, state, level, k, stop_now)
        _check_telescoping(new_level, resampling, mcmc)
        ess = torch.as_tensor(estimators.ess(new_state.log_W), dtype=torch.float64,
                              device=state.x.device).reshape(n_rep)
        active = state.lam < 1
        new_state, fired, n_unique = _resample(new_state, resampling.fires(ess, n) & active,
                                               resampling.scheme)
        accept = step = torch.full_like(ess, math.nan)
        if mcmc is not None and not stop_now:
            x, log_g, accept, step, kernel = _move(new_state.x, new_level, mcmc, kernel)
            new_state = new_state._replace(x=x, log_g=log_g)
        for name, value in (("lam", new_state.lam), ("ess", ess), ("log_Z_increment", increment),
                            ("resampled", fired), ("n_unique", n_unique),
                            ("accept_prob", accept), ("step_size", step)):
            records[name].append(value)
        after = path.counts()
        for key in counts:
            counts[key].append(after[key] - before[key])
        level_cost = after["n_target"] - before["n_target"]
        state, level = new_state, new_level
        if callback is not None:
            callback("advance", n=1, lam=float(state.lam.min()), ess_fraction=float(ess.min()) / n)
    diag = SMCDiagnostics(**{name: torch.stack(v) for name, v in records.items()},
                          counts={key: torch.tensor(v, device=state.x.device)
                                  for key, v in counts.items()},
                          stopped_by_budget=stopped)
    result = SMCResult(state.x, state.log_W, state.log_Z, diag)
    return result if n_replicas is not None else _drop_replica_dim(result)


class SMCState(NamedTuple):
    """Particles x `[R, N, d]` at levels lam `[R]`, their normalised float64 log-weights log_W
    and log-densities log g_lam(x) `[R, N]`, and the running log Z `[R]`."""

    x: Tensor
    log_W: Tensor
    log_g: Tensor
    log_Z: Tensor
    lam: Tensor


class _Setup(NamedTuple):
    path: Path
    schedule: Tensor | AdaptiveSchedule
    proposal: Any
    backward: Any


def _setup(path: Path, schedule: Tensor | AdaptiveSchedule | None, proposal: Any, backward: Any,
           mcmc: MCMCMove | None, resampling: Resampling) -> _Setup:
    """Checks the configuration; resolves the default schedule."""
    if proposal.deterministic != (backward is None):
        raise ValueError("a stochastic proposal needs a backward kernel; a deterministic map "
                         "takes none (its weight uses log|det J|)")
    schedule = path.grid if schedule is None else schedule
    if schedule is None:
        raise ValueError("this path has no default grid: pass a schedule")
    if isinstance(schedule, AdaptiveSchedule):
        if not isinstance(proposal, Identity):
            raise ValueError("an adaptive schedule needs the identity proposal")
    else:
        schedule = _check_grid(schedule)
    return _Setup(path, schedule, proposal, backward)


def _init(path: Path, n_rep: int, n: int) -> tuple[SMCState, Any]:
    """Exact samples of level 0, equal weights, log Z = level 0's (0 when unknown)."""
    level = path.level(torch.zeros(n_rep, dtype=torch.float64, device=path.device))
    x = level.sample(n_rep * n).reshape(n_rep, n, -1)
    f64 = {"dtype": torch.float64, "device": x.device}
    state = SMCState(x, torch.full((n_rep, n), -math.log(n), **f64), _log_prob(level, x),
                     torch.full((n_rep,), float(level.log_Z or 0.0), **f64),
                     torch.zeros(n_rep, **f64))
    return state, level


def _reweight(setup: _Setup, state: SMCState, level: Any, k: int,
              stop_now: bool) -> tuple[SMCState, Any, Tensor]:
    """Moves every particle to the next level and reweights by the incremental weight
    delta = log g_k(x') + log L(x | x') - log g_{k-1}(x) - log M(x' | x); returns the new state
    (normalised weights), the new level and the log Z increments `[R]`."""
    path, x = setup.path, state.x
    if isinstance(setup.proposal, Identity):
        log_g_at = path.log_prob_fn(x)
        lam = _next_level(state, k, setup.schedule, log_g_at, stop_now)
        new_level = path.level(lam)
        x_new, log_g_new, log_ratio = x, _to64(log_g_at(lam)), 0.0
    else:
        lam = _next_level(state, k, setup.schedule, None, stop_now)
        new_level = path.level(lam)
        move = setup.proposal.propose(x, level, new_level)
        x_new, log_g_new = move.x, _log_prob(new_level, move.x)
        log_ratio = -move.log_q.double()
        if setup.backward is not None:
            log_ratio = log_ratio + setup.backward.log_prob(x, move.x, level, new_level).double()
    delta = _zero_weight_if_invalid(log_g_new - state.log_g + log_ratio)
    delta = torch.where((state.lam < 1)[:, None], delta, torch.zeros_like(delta))
    increment = torch.logsumexp(state.log_W + delta, dim=-1)
    if not bool(torch.isfinite(increment).all()):
        raise RuntimeError(f"level {k}: every particle of some replica has zero weight")
    log_w = state.log_W + delta - increment[:, None]
    return SMCState(x_new, log_w, log_g_new, state.log_Z + increment, lam), new_level, increment


def _resample(state: SMCState, fire: Tensor, scheme: str) -> tuple[SMCState, Tensor, Tensor]:
    """Resamples the replicas where `fire` `[R]`; returns the state, `fire` and the number of
    distinct ancestors `[R]` (N where nothing was resampled)."""
    n = state.x.shape[1]
    n_unique = torch.full(fire.shape, n, dtype=torch.long, device=fire.device)
    if not bool(fire.any()):
        return state, fire, n_unique
    idx = RESAMPLERS[scheme](state.log_W[fire])
    x, log_g = state.x.clone(), state.log_g.clone()
    x[fire] = torch.gather(x[fire], 1, idx[..., None].expand(-1, -1, x.shape[-1]))
    log_g[fire] = torch.gather(log_g[fire], 1, idx)
    n_unique[fire] = _n_unique(idx)
    return state._replace(x=x, log_g=log_g, log_W=_reset_weights(state.log_W, fire)), fire, n_unique


def _reset_weights(log_w: Tensor, fired: Tensor) -> Tensor:
    """Uniform weights 1/N on the replicas that resampled."""
    uniform = torch.full_like(log_w, -math.log(log_w.shape[-1]))
    return torch.where(fired[:, None], uniform, log_w)


def _next_level(state: SMCState, k: int, schedule: Tensor | AdaptiveSchedule,
                log_g_at: Callable[[Tensor], Tensor] | None, stop_now: bool) -> Tensor:
    if stop_now:
        return torch.ones_like(state.lam)
    if isinstance(schedule, AdaptiveSchedule):
        if k > schedule.max_levels:
            raise RuntimeError(f"adaptive schedule exceeded {schedule.max_levels} levels")
        return next_lambda(state.lam, state.log_W, state.log_g, log_g_at, schedule)
    return torch.full_like(state.lam, float(schedule[min(k, len(schedule) - 1)]))


def conditional_ess_fraction(log_w: Tensor, delta: Tensor) -> Tensor:
    """(sum_i W_i e^delta_i)^2 / sum_i W_i e^(2 delta_i) for normalised log_w `[R, N]`; `[R]`."""
    return torch.exp(2 * torch.logsumexp(log_w + delta, -1)
                     - torch.logsumexp(log_w + 2 * delta, -1))


def next_lambda(lam: Tensor, log_w: Tensor, log_g: Tensor,
                log_g_at: Callable[[Tensor], Tensor], schedule: AdaptiveSchedule) -> Tensor:
    """The largest lam' in (lam, 1] with conditional ESS fraction >= the target, by bisection
    (per replica; replicas already at 1 stay there)."""
    def cess(l: Tensor) -> Tensor:
        delta = _zero_weight_if_invalid(_to64(log_g_at(l)) - log_g)
        return torch.nan_to_num(conditional_ess_fraction(log_w, delta), nan=0.0)

    goal = schedule.cess_fraction
    lo, hi = lam.clone(), torch.ones_like(lam)
    done = cess(hi) >= goal
    for _ in range(schedule.n_bisection):
        mid = 0.5 * (lo + hi)
        ok = cess(mid) >= goal
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    # lo == lam only if no positive step keeps the target CESS (e.g. -inf densities): step on.
    return torch.where(done, torch.ones_like(lam), torch.where(lo > lam, lo, hi))


def _move(x: Tensor, level: Any, mcmc: MCMCMove, kernel: Any) -> tuple[Tensor, ...]:
    """MCMC steps at `level`; returns x, log g, mean acceptance and step size per replica, and
    the kernel adapted for the next level."""
    state = kernel.init(x, level)
    accept = torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)
    for _ in range(mcmc.n_steps):
        state, info = kernel.step(state, level)
        accept = accept + info.accept_prob.double() / mcmc.n_steps
    step = torch.as_tensor(kernel.step_size, dtype=torch.float64, device=x.device)
    step = step.expand(x.shape[0]) if step.ndim == 0 else step.reshape(x.shape[0], -1).mean(-1)
    if mcmc.adapt:
        kernel = kernel.adapted(info._replace(accept_prob=accept.to(info.accept_prob.dtype)),
                                mcmc.target_accept, rate=mcmc.adapt_rate, average_over=(1,))
    return state.x, _to64(state.log_prob), accept.mean(-1), step, kernel


def _level_cost(n_total: int, mcmc: MCMCMove | None) -> int:
    """Predicted target evaluations of one level of n_total particles with identity proposal:
    the reweighting, and with moves the kernel's start and its steps."""
    if mcmc is None:
        return n_total
    return n_total * (2 + mcmc.n_steps * int(getattr(mcmc.kernel, "evals_per_step", 1)))


def _log_prob(level: Any, x: Tensor) -> Tensor:
    if not getattr(level, "has_log_prob", True):
        return torch.zeros(x.shape[:-1], dtype=torch.float64, device=x.device)
    return _to64(level.log_prob(x))


def _check_telescoping(level: Any, resampling: Resampling, mcmc: MCMCMove | None) -> None:
    if getattr(level, "has_log_prob", True):
        return
    if resampling.ess_threshold > 0 or mcmc is not None:
        raise ValueError(f"{getattr(level, 'name', 'a level')} has no log-density: only AIS "
                         "without resampling (ess_threshold=0) and without MCMC moves can use it")


def _check_grid(grid: Tensor) -> Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64, device="cpu")  # read level by level
    if grid.ndim != 1 or len(grid) < 2 or float(grid[0]) != 0 or float(grid[-1]) != 1:
        raise ValueError(f"a fixed schedule must run from 0 to 1, got {grid}")
    if not bool((grid.diff() > 0).all()):
        raise ValueError("a fixed schedule must be strictly increasing")
    return grid


def _n_unique(idx: Tensor) -> Tensor:
    s = idx.sort(-1).values
    return 1 + (s.diff(dim=-1) != 0).sum(-1)


def _zero_weight_if_invalid(delta: Tensor) -> Tensor:
    """NaN and +inf incremental log-weights become -inf (zero weight, as in
    `boltzkit.mc.estimators`); -inf stays -inf. (`torch.nan_to_num(nan=-inf)` would also map
    -inf to the most negative float, a tiny positive weight that hides the zero.)"""
    invalid = torch.isnan(delta) | torch.isposinf(delta)
    return delta.masked_fill(invalid, -math.inf)


def _to64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def _drop_replica_dim(res: SMCResult) -> SMCResult:
    d = res.diagnostics
    per_level = {name: getattr(d, name)[:, 0] for name in SMCDiagnostics._fields[:7]}
    diag = d._replace(**per_level)
    return SMCResult(res.x[0], res.log_W[0], res.log_Z[0], diag)


# the engine's inputs and outputs, importable from here
__all__ = [
    "AdaptiveSchedule",
    "Identity",
    "MCMCMove",
    "Move",
    "Resampling",
    "SMCDiagnostics",
    "SMCResult",
    "conditional_ess_fraction",
    "next_lambda",
    "smc",
    "SMCState",
]
