"""The "smc" sampler: tempered SMC from a Gaussian reference to any target, behind the sampler
convention (`boltzkit.samplers`).

The path is geometric, log g_lam = (1 - lam) log N(x; 0, s^2 I) + lam log gamma(x) (COM-free
Gaussian for particle systems), the next lam is chosen by bisection so that the conditional ESS
is `cess_fraction` N, particles are resampled when ESS/N < `ess_threshold`, and `n_mcmc_steps`
MALA/RWMH/HMC steps invariant for the current level refresh them, the step size adapted between
levels towards the kernel's optimal acceptance. Everything runs in `boltzkit.mc.smc.smc`; see
there for the weights.

log Z and its standard error come from `n_replicas` independent SMC runs of `n_particles` each:
log Z-hat = LSE_r(log Z_r) - log R with the replica SE of `boltzkit.mc.estimators.replica_log_Z`
(`diagnostics["log_Z_se"]`; None for R = 1). The particle weights cannot give one: after the
last resampling they are all equal whatever the error of log Z.

Budget (target energy evaluations), spent to within one MCMC step:
1. batches of `n_replicas` replicas run while the budget pays for another batch like the first
   (more replicas: a smaller log Z SE and more particles); the first batch jumps to lam = 1
   when the budget cannot pay for its next level (`stopped_by_budget`);
2. what is left, less than a batch, goes to MCMC steps at the target on every particle (they
   keep pi invariant, so the weights and log Z are unchanged), with each replica's last
   adapted step size.
A budget below 2 N R (a start and the jump to the target for every particle) is an error that
says how many samples it buys. Progress is reported in energy evaluations of that budget.

Samples: the pooled weighted particles (log_w = log W_{r,i} + log Z_r + log N, so that
LSE(log_w) - log(R N) = log Z-hat) when there are exactly n_samples of them, else n_samples
equally weighted draws from them (systematic resampling; log_w None). SMC runs are short and not
checkpointed: `run_dir` is unused and `resume=True` starts afresh (`diagnostics["resumed"]`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from boltzkit.core import presets
from boltzkit.core.errors import UnknownName, UsageError
from boltzkit.mc import estimators
from boltzkit.mc.mcmc import kernel_from_name
from boltzkit.mc.paths import Gaussian, GeometricPath
from boltzkit.mc.resampling import RESAMPLERS, inverse_cdf
from boltzkit.mc.smc import AdaptiveSchedule, MCMCMove, Resampling, SMCResult, smc
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.samplers.run import spent_since


@dataclass(frozen=True)
class Config:
    """Tempered-SMC hyperparameters; n_particles (per replica) None means
    ceil(n_samples / n_replicas)."""

    n_particles: int | None = None
    n_replicas: int = 4
    cess_fraction: float = 0.5
    ess_threshold: float = 0.5
    resampler: str = "systematic"
    kernel: Literal["mala", "rwmh", "hmc"] = "mala"
    n_mcmc_steps: int = 5
    step_size: float = 0.05
    target_accept: float | None = None
    reference_scale: float = 1.0
    max_levels: int = 1000
    device: str = "cpu"  # where the particles live; the target must be there (`Target.to`)

    def __post_init__(self) -> None:
        if self.resampler not in RESAMPLERS:
            raise UnknownName("resampler", self.resampler, RESAMPLERS)
        _at_least("n_particles", self.n_particles, 1)
        _at_least("n_replicas", self.n_replicas, 1)
        _at_least("n_mcmc_steps", self.n_mcmc_steps, 1)
        _at_least("max_levels", self.max_levels, 1)
        _inside("cess_fraction", self.cess_fraction, 0.0, 1.0, closed=False)
        _inside("ess_threshold", self.ess_threshold, 0.0, 1.0, closed=True)
        if self.target_accept is not None:
            _inside("target_accept", self.target_accept, 0.0, 1.0, closed=False)
        for name in ("step_size", "reference_scale"):
            _inside(name, getattr(self, name), 0.0, math.inf, closed=False)


def _at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise UsageError(f"smc: {name} must be >= {low}, got {value}")


def _inside(name: str, value: float, lo: float, hi: float, *, closed: bool) -> None:
    ok = lo <= value <= hi if closed else lo < value < hi
    if not ok:
        where = f"[{lo}, {hi}]" if closed else f"({lo}, {hi})"
        raise UsageError(f"smc: {name} must lie in {where}, got {value}")


PRESET_FILE = "smc"  # boltzkit/presets/smc.toml


def preset_names() -> list[str]:
    """Named settings in `boltzkit/presets/smc.toml`."""
    return presets.names(presets.load(PRESET_FILE))


def preset(name: str) -> Config:
    """Named settings (`boltzkit/presets/smc.toml`); an unknown key is an error."""
    return presets.apply(Config(), presets.load(PRESET_FILE), name, kind="SMC preset")


class _Spend:
    """Turns the engine's per-level events into progress in energy evaluations."""

    def __init__(self, target: Any, callback: Callback) -> None:
        self.target, self.callback = target, callback
        self.reported = target.counter.n_energy

    def __call__(self, event: str, **info: Any) -> None:
        if event == "advance":
            info["n"] = self.target.counter.n_energy - self.reported
            self.reported += info["n"]
        self.callback(event, **info)


def min_budget(n_particles: int, n_replicas: int) -> int:
    """The fewest energy evaluations a run can take: every particle's jump to the target (level
    0, the reference, costs none), 2 N R with the moves' start counted at the reference."""
    return 2 * n_particles * n_replicas


def sample(
    target: Any, config: Config, *, n_samples: int, budget: int | None = None,
    callback: Callback = null_callback, run_dir: FsPath | None = None, resume: bool = False,
) -> SampleResult:
    """n_samples particles `[n_samples, dim]` of R N pooled replica particles (weighted when
    R N = n_samples), log Z-hat over the replicas and per-level traces (module docstring).
    log_w are importance weights in the convention of `boltzkit.mc.estimators`:
    LSE(log_w) - log n = log Z-hat."""
    started = time.perf_counter()
    counts0 = dict(target.counter.as_dict())
    n_rep = config.n_replicas
    n = config.n_particles or math.ceil(n_samples / n_rep)
    _check_budget(budget, n, n_rep, config.n_particles is None)
    spend = _Spend(target, callback)
    callback("start", total=budget, unit="energy evals", description=f"smc on {target.name}")
    batches = _run_batches(target, config, n, budget, spend)
    pool = _pool(batches)
    moves = _final_moves(target, config, pool, budget, counts0["n_energy"], spend)
    callback("end")
    samples, log_w = _output(pool._replace(x=moves.x), n_samples)
    estimate = estimators.replica_log_Z(pool.log_Z)
    diagnostics = _diagnostics(batches, pool, moves, n, estimate, started, budget)
    counts = spent_since(target, counts0)
    return SampleResult(samples, log_w, float(estimate.mean), diagnostics, counts)


def _check_budget(budget: int | None, n: int, n_rep: int, sized_by_samples: bool) -> None:
    if budget is None or budget >= min_budget(n, n_rep):
        return
    if sized_by_samples:
        buys = n_rep * (budget // min_budget(1, n_rep))
        raise UsageError(f"smc: budget {budget} buys at most {buys} samples ({n_rep} replicas; "
                         f"every particle costs at least 2 energy evaluations); lower "
                         f"--n-samples or raise --budget")
    raise UsageError(f"smc: budget {budget} does not pay for {n_rep} x {n} particles (at least "
                     f"{min_budget(n, n_rep)} energy evaluations); lower n_particles or "
                     f"n_replicas or raise --budget")


def _run_batches(target: Any, config: Config, n: int, budget: int | None,
                 spend: _Spend) -> list[SMCResult]:
    """Batches of n_replicas SMC runs while the budget pays for another like the first."""
    reference = Gaussian(target.dim, scale=config.reference_scale,
                         n_particles=target.n_particles, spatial_dim=target.spatial_dim,
                         device=config.device)
    path = GeometricPath(reference, target)
    kernel = kernel_from_name(config.kernel, step_size=config.step_size)
    mcmc = MCMCMove(kernel, config.n_mcmc_steps, target_accept=config.target_accept)
    schedule = AdaptiveSchedule(config.cess_fraction, max_levels=config.max_levels)
    resampling = Resampling(config.resampler, config.ess_threshold)
    start, batches = target.counter.n_energy, []
    while True:
        before = target.counter.n_energy
        left = None if budget is None else budget - (before - start)
        batches.append(smc(path, schedule, n_particles=n, n_replicas=config.n_replicas,
                           mcmc=mcmc, resampling=resampling, budget=left, callback=spend))
        cost = target.counter.n_energy - before
        if budget is None or budget - (target.counter.n_energy - start) < cost:
            return batches


class _Pool(NamedTuple):
    x: Tensor  # [R, N, d]
    log_W: Tensor  # [R, N] normalised per replica
    log_Z: Tensor  # [R]
    step_size: Tensor  # [R] last finite adapted step size (NaN when none)


def _pool(batches: list[SMCResult]) -> _Pool:
    steps = []
    for b in batches:
        s = b.diagnostics.step_size
        finite = torch.isfinite(s).all(dim=1)
        steps.append(s[finite][-1] if bool(finite.any()) else torch.full_like(s[0], math.nan))
    return _Pool(torch.cat([b.x for b in batches]), torch.cat([b.log_W for b in batches]),
                 torch.cat([b.log_Z for b in batches]), torch.cat(steps))


class _Moves(NamedTuple):
    x: Tensor
    n_steps: int
    accept_prob: float


def _final_moves(target: Any, config: Config, pool: _Pool, budget: int | None, start: int,
                 spend: _Spend) -> _Moves:
    """MCMC steps at the target on every particle with what the batches left of the budget."""
    n_total = pool.x.shape[0] * pool.x.shape[1]
    left = 0 if budget is None else budget - (target.counter.n_energy - start)
    kernel = kernel_from_name(config.kernel, step_size=config.step_size)
    step_cost = n_total * kernel.evals_per_step
    n_steps = max((left - n_total) // step_cost, 0)  # the kernel's start costs n_total
    if n_steps == 0:
        return _Moves(pool.x, 0, math.nan)
    step = torch.where(torch.isfinite(pool.step_size), pool.step_size,
                       torch.full_like(pool.step_size, config.step_size))
    kernel = dataclasses.replace(kernel, step_size=step.to(pool.x.dtype)[:, None])
    state = kernel.init(pool.x, target)
    accept = 0.0
    for _ in range(n_steps):
        state, info = kernel.step(state, target)
        accept += float(info.accept_prob.double().mean()) / n_steps
        spend("advance", accept=accept)
    return _Moves(state.x.detach(), n_steps, accept)


def _output(pool: _Pool, n_samples: int) -> tuple[Tensor, Tensor | None]:
    """The pooled particles with importance weights, or n_samples equally weighted draws."""
    n_rep, n, dim = pool.x.shape
    log_w = (pool.log_W + pool.log_Z[:, None] + math.log(n)).reshape(-1)
    x = pool.x.reshape(n_rep * n, dim).detach()
    if n_rep * n == n_samples:
        return x, log_w
    f64 = {"dtype": torch.float64, "device": log_w.device}
    u = (torch.arange(n_samples, **f64) + torch.rand((), **f64)) / n_samples
    idx = inverse_cdf(log_w[None], u[None])[0]
    return x[idx[torch.randperm(n_samples, device=idx.device)]], None


def _diagnostics(batches: list[SMCResult], pool: _Pool, moves: _Moves, n: int,
                 estimate: estimators.Estimate, started: float, budget: int | None
                 ) -> dict[str, Any]:
    d = batches[0].diagnostics
    n_rep = pool.x.shape[0]
    se = float(estimate.se)
    return {
        "n_batches": len(batches), "n_replicas": n_rep, "n_particles": n,
        "log_Z_replicas": pool.log_Z.tolist(), "log_Z_se": se if math.isfinite(se) else None,
        "log_Z_se_method": "spread of independent replicas (estimators.replica_log_Z)",
        "n_levels": [len(b.diagnostics.lam) - 1 for b in batches],
        "lam": d.lam[:, 0].tolist(), "ess_fraction": (d.ess.min(dim=1).values / n).tolist(),
        "resampled": d.resampled.any(dim=1).tolist(),
        "n_resampled": int(sum(int(b.diagnostics.resampled.sum()) for b in batches)),
        "accept_prob": d.accept_prob.mean(dim=1).tolist(),
        "step_size": d.step_size.mean(dim=1).tolist(),
        "n_zero_weight": int(torch.isneginf(pool.log_W).sum()),
        "n_final_mcmc_steps": moves.n_steps, "final_accept_prob": moves.accept_prob,
        # a budget sizes the run (batches, then final moves), as it sizes MCMC runs
        "stopped_by_budget": budget is not None,
        "jumped_to_target": any(b.diagnostics.stopped_by_budget for b in batches),
        "resumed": False, "wall_s": time.perf_counter() - started,
    }
