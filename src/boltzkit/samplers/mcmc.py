"""MCMC baselines behind the sampler convention: "rwmh", "mala", "hmc" (independent chains) and
"pt" (parallel tempering over one of those kernels).

Several registry names map to this module, so the method travels with the config's type:

    CONFIGS = {"rwmh": RWMHConfig, "mala": MALAConfig, "hmc": HMCConfig, "pt": PTConfig}
    Config(sampler="mala")                 -> CONFIGS[sampler]()
    preset(name, sampler="pt")             -> a named config (boltzkit/presets/mcmc.toml)
    sample(target, config, *, n_samples, budget, callback, run_dir=None, resume=False, x0=None)
                                           -> SampleResult; the method is type(config)
    sample_named(name, target, config=None, **same keywords)

Independent chains are parallel tempering with the one-temperature ladder (1.0,), so one loop
serves all four. A run of S steps costs n_temps * n_chains * evals_per_step energy evaluations
per step (evals_per_step = n_leapfrog for HMC, else 1) plus n_temps * n_chains to start. With a
budget, S is the most steps the budget pays for (`stopped_by_budget` = True); without one, S is
the fewest that give n_samples. The first `burn_in` fraction of steps adapts the step size (one
per temperature, Robbins-Monro towards `target_accept`) and, for PT, the ladder (towards equal
swap rates); the kernel is frozen afterwards, so the kept samples come from a fixed, exact
kernel. Samples are the T = 1 chains at ceil(n_samples / n_chains) times spread evenly (at least
`thinning` apart) over the post-burn-in steps, ending at the last step.

Initial state: x0 `[n_chains, dim]` or `[n_temps, n_chains, dim]` if given, else
init_scale * N(0, I) per coordinate (projected onto the centre-of-mass-free subspace for
particle systems), then `init_relax_steps` capped uphill steps (`boltzkit.mc.mcmc.relax`, counted
in the budget) that pull overlapping particles apart. With `run_dir`, the state is
checkpointed (`boltzkit.samplers.run`) every `checkpoint_every` steps (default: every tenth of the
run; 0: never) and at the end, and `resume=True` continues from it; with the same budget the
resumed run is bit for bit the one that was not interrupted (the checkpoint holds the RNG state).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from boltzkit.core import presets
from boltzkit.core.config import override
from boltzkit.core.errors import UnknownName, UsageError
from boltzkit.mc.independence import Cycle, IndependenceMH, Proposal
from boltzkit.mc.mcmc import Kernel, MCMCState, kernel_from_name, relax
from boltzkit.mc.tempering import ParallelTempering, PTInfo, PTState, geometric_ladder
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.samplers.run import Run, require

CHECKPOINT = "mcmc_checkpoint.pt"
KernelName = Literal["rwmh", "mala", "hmc"]


@dataclass(frozen=True)
class ChainsConfig:
    """Hyperparameters shared by every MCMC sampler (see the module docstring)."""

    n_chains: int = 128
    burn_in: float = 0.25  # fraction of the steps spent adapting, then discarded
    thinning: int = 1  # minimum spacing, in steps, between kept samples of a chain
    step_size: float = 0.01
    target_accept: float | None = None  # None: the kernel's default (0.234, 0.574, 0.65)
    adapt_rate: float = 0.3  # Robbins-Monro gain on log step size (acceptance averaged over chains)
    init_scale: float = 1.0  # std of the N(0, s^2 I) start (COM-free for particles)
    init_relax_steps: int = 0  # capped uphill steps before MCMC (`mcmc.relax`), counted
    init_relax_max_move: float = 0.02
    dtype: Literal["float32", "float64"] = "float64"
    device: str = "cpu"
    checkpoint_every: int | None = None  # steps; None: every tenth of the run; 0: never

    def __post_init__(self) -> None:
        for name in ("n_chains", "thinning"):
            _check(name, getattr(self, name), ">= 1", getattr(self, name) >= 1)
        _check("init_relax_steps", self.init_relax_steps, ">= 0", self.init_relax_steps >= 0)
        if self.checkpoint_every is not None:
            _check("checkpoint_every", self.checkpoint_every, ">= 0 (0: never; none: every "
                   "tenth of the run)", self.checkpoint_every >= 0)
        for name in ("step_size", "init_scale", "init_relax_max_move"):
            value = getattr(self, name)
            _check(name, value, "> 0 and finite", 0 < value < math.inf)
        _check("burn_in", self.burn_in, "a fraction in [0, 1)", 0 <= self.burn_in < 1)
        _check("adapt_rate", self.adapt_rate, ">= 0", self.adapt_rate >= 0)
        if self.target_accept is not None:
            _check("target_accept", self.target_accept, "in (0, 1)",
                   0 < self.target_accept < 1)


def _check(name: str, value: float, valid: str, ok: bool) -> None:
    """UsageError saying what is valid unless `ok` (NaN fails every comparison, so never ok)."""
    if not ok:
        raise UsageError(f"{name} must be {valid}, got {value}")


@dataclass(frozen=True)
class RWMHConfig(ChainsConfig):
    """Random-walk Metropolis chains; step_size is the proposal std per coordinate."""

    step_size: float = 0.1


@dataclass(frozen=True)
class MALAConfig(ChainsConfig):
    """MALA chains; x' = x + h grad log pi + sqrt(2h) xi with h = step_size."""

    step_size: float = 0.01


@dataclass(frozen=True)
class HMCConfig(ChainsConfig):
    """HMC chains with n_leapfrog leapfrog steps of size step_size (unit mass)."""

    step_size: float = 0.05
    n_leapfrog: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("n_leapfrog", self.n_leapfrog, ">= 1", self.n_leapfrog >= 1)


@dataclass(frozen=True)
class PTConfig(ChainsConfig):
    """Parallel tempering: n_chains per temperature on a geometric ladder 1..T_max."""

    kernel: KernelName = "mala"
    n_leapfrog: int = 10  # used when kernel = "hmc"
    n_temps: int = 8
    T_max: float = 20.0
    adapt_ladder: bool = True  # move the ladder towards equal swap rates during burn-in
    ladder_every: int = 50  # steps between ladder updates

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_leapfrog", "n_temps", "ladder_every"):
            _check(name, getattr(self, name), ">= 1", getattr(self, name) >= 1)
        _check("T_max", self.T_max, ">= 1 and finite", 1 <= self.T_max < math.inf)


CONFIGS: dict[str, type[ChainsConfig]] = {
    "rwmh": RWMHConfig, "mala": MALAConfig, "hmc": HMCConfig, "pt": PTConfig}

def Config(sampler: str = "mala") -> ChainsConfig:  # noqa: N802 - the convention's name
    """The default config of `sampler` (one of CONFIGS)."""
    if sampler not in CONFIGS:
        raise UnknownName("MCMC sampler", sampler, CONFIGS)
    return CONFIGS[sampler]()


PRESET_FILE = "mcmc"  # boltzkit/presets/mcmc.toml


def preset_names() -> list[str]:
    """Named settings in `boltzkit/presets/mcmc.toml`."""
    return presets.names(presets.load(PRESET_FILE))


def preset(name: str, sampler: str = "pt") -> ChainsConfig:
    """Named settings (`boltzkit/presets/mcmc.toml`) for `sampler`: the table's common keys and
    its `sampler` sub-table; a key the sampler lacks is an error."""
    values = presets.resolve(presets.load(PRESET_FILE), name, sampler=sampler, kind="MCMC preset",
                             samplers=tuple(CONFIGS))
    return override(Config(sampler), values)


def sampler_name(config: ChainsConfig) -> str:
    """The registry name of a config's method."""
    for name, cls in CONFIGS.items():
        if type(config) is cls:
            return name
    raise TypeError(f"not an MCMC config: {type(config).__name__}")


def build(config: ChainsConfig, proposal: Proposal | None = None) -> ParallelTempering:
    """The (one-temperature, for chains) parallel-tempering object a config describes; with a
    `proposal`, every step is an independence move from it, then the local kernel
    (`boltzkit.mc.independence.Cycle`)."""
    name = sampler_name(config)
    kernel_name = config.kernel if isinstance(config, PTConfig) else name
    extra = {"n_leapfrog": config.n_leapfrog} if kernel_name == "hmc" else {}
    kernel: Kernel = kernel_from_name(kernel_name, step_size=config.step_size, **extra)
    if proposal is not None:
        kernel = Cycle((IndependenceMH(proposal, with_score=kernel.needs_score), kernel))
    ladder = geometric_ladder(config.n_temps, config.T_max) if name == "pt" else (1.0,)
    return ParallelTempering(kernel, ladder)


def affordable_samples(config: ChainsConfig, budget: int, proposal: Proposal | None = None
                       ) -> int:
    """How many T = 1 samples `sample(..., proposal=proposal)` can return under `budget` (0 if
    not even a step)."""
    pt = build(config, proposal)
    n_walkers = pt.n_temps * config.n_chains
    spare = budget - n_walkers * (1 + config.init_relax_steps)
    n_steps = max(spare // (n_walkers * pt.kernel.evals_per_step), 0)
    n_post = n_steps - int(config.burn_in * n_steps)
    return math.ceil(n_post / config.thinning) * config.n_chains


def sample_named(name: str, target: Any, config: ChainsConfig | None = None,
                 **kwargs: Any) -> SampleResult:
    """`sample(target, config or Config(name), **kwargs)`, checking the config matches `name`."""
    config = Config(name) if config is None else config
    if sampler_name(config) != name:
        raise TypeError(f"sampler {name!r} got a {type(config).__name__}")
    return sample(target, config, **kwargs)


def sample(
    target: Any, config: ChainsConfig, *, n_samples: int, budget: int | None = None,
    callback: Callback = null_callback, run_dir: Path | None = None, resume: bool = False,
    x0: Tensor | None = None, proposal: Proposal | None = None,
) -> SampleResult:
    """n_samples detached T = 1 samples `[n_samples, dim]` (equally weighted, log_w None).
    With `proposal` (a `boltzkit.mc.independence.Proposal`, e.g. a trained flow), each step
    first proposes from it at every rung (`build`); its acceptance is reported per
    temperature as `acceptance_per_stage[0]`."""
    started = time.perf_counter()
    pt = build(config, proposal)
    n_walkers = pt.n_temps * config.n_chains
    step_cost = n_walkers * pt.kernel.evals_per_step
    run = Run(target, budget=budget, run_dir=run_dir, checkpoint_name=CHECKPOINT,
              callback=callback)
    ckpt = run.load(resume)
    if ckpt is None:
        require(budget, n_walkers * (1 + config.init_relax_steps) + step_cost,
                f"the start and one step of {n_walkers} walkers")
        pt, state, rec = _start(pt, target, config, x0)
    else:
        pt, state, rec = _restore(pt, ckpt, config)
    n_steps = _n_steps(config, n_samples, run.remaining, rec.t, step_cost)
    if rec.n_burn is None:  # a resumed run keeps its burn-in: adaptation never restarts
        rec.n_burn = int(config.burn_in * n_steps)
    n_burn = rec.n_burn
    times = _keep_times(n_steps, n_burn, math.ceil(n_samples / config.n_chains), config.thinning)
    if len(times) * config.n_chains < n_samples:
        raise UsageError(
            f"budget {budget:,} buys at most {len(times) * config.n_chains:,} samples "
            f"({n_steps - n_burn} post-burn-in steps of {config.n_chains} chains, thinning "
            f"{config.thinning}); ask for fewer --n-samples or give a larger --budget")
    run.checkpoint_every = (max(1, n_steps // 10) if config.checkpoint_every is None
                            else config.checkpoint_every)
    rec.trace_every = max(1, n_steps // 200)
    run.start(total=n_steps - rec.t, unit="step",
              description=f"{sampler_name(config)} on {getattr(target, 'name', 'target')}")
    report_every, reported = max(1, n_steps // 100), rec.t
    with run.deferred_interrupts():
        while rec.t < n_steps and not run.stop_before(step_cost):
            state, info = pt.step(state, target)
            pt, state = rec.record(pt, state, info, config, burning=rec.t < n_burn)
            if rec.t in times:
                rec.kept[rec.t] = state.chains.x[0].detach().clone()
            rec.t += 1
            if rec.t - reported >= report_every or rec.t == n_steps:
                run.advance(rec.t - reported, accept=rec.last_accept)
                reported = rec.t
            if run.due(rec.t):
                run.save(_state(pt, state, rec, config))
            if run.interrupted is not None:
                run.stop_for_interrupt(_state(pt, state, rec, config))
    run.save(_state(pt, state, rec, config))
    run.end()
    samples = _select(rec.kept, n_samples)
    diagnostics = rec.summary(pt)
    diagnostics.update(
        sampler=sampler_name(config), n_steps=rec.t, n_burn_in_steps=n_burn,
        n_chains=config.n_chains, n_collected=int(samples.shape[0]),
        # the steps are sized to the budget; stopped early: something else spent from the
        # (shared) counter
        stopped_by_budget=budget is not None, stopped_early=run.stopped_by_budget,
        wall_s=time.perf_counter() - started)
    return SampleResult(samples, None, None, diagnostics, run.spent)


def _start(pt: ParallelTempering, target: Any, config: ChainsConfig, x0: Tensor | None
           ) -> tuple[ParallelTempering, PTState, _Record]:
    x = _initial_x(target, config, pt.n_temps, x0)
    x = relax(x, target, config.init_relax_steps, config.init_relax_max_move)
    return pt, pt.init(x, target), _Record(pt.n_temps)


# ---- the run's bookkeeping -------------------------------------------------------------
@dataclass
class _Record:
    """Mutable per-run accumulators (never handed to a caller)."""

    n_temps: int
    t: int = 0
    n_burn: int | None = None
    kept: dict[int, Tensor] = dataclasses.field(default_factory=dict)
    accept_sum: list[float] | None = None  # [n_temps], post-burn-in
    swap_sum: list[float] | None = None  # [n_temps - 1], post-burn-in
    swap_n: list[float] | None = None
    window_sum: list[float] | None = None  # swap rates since the last ladder update (burn-in)
    window_n: list[float] | None = None
    stage_sum: list[list[float]] = dataclasses.field(default_factory=list)  # [stage][temp]
    n_post: int = 0
    n_nonfinite: int = 0
    last_accept: float = float("nan")
    trace_every: int = 10
    trace: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("accept_sum", "swap_sum", "swap_n", "window_sum", "window_n"):
            if getattr(self, name) is None:
                size = self.n_temps if name == "accept_sum" else self.n_temps - 1
                setattr(self, name, [0.0] * size)

    def record(self, pt: ParallelTempering, state: PTState, info: PTInfo, config: ChainsConfig,
               burning: bool) -> tuple[ParallelTempering, PTState]:
        """Accumulates one step's diagnostics; in burn-in, returns the adapted pt and state."""
        accept = info.kernel.accept_prob.detach().flatten(1).mean(1).tolist()
        swap = info.swap_accept_prob.detach().flatten(1).mean(1).tolist()
        attempted = info.swap_attempted.tolist()
        self.n_nonfinite += info.kernel.n_nonfinite
        self.last_accept = accept[0]
        if self.t % self.trace_every == 0:
            self.trace.append({"step": self.t, "accept": accept[0],
                               "step_size": _first_step_size(pt)})
        if not burning:
            _add(self.accept_sum, accept)
            _add(self.swap_sum, swap)
            _add(self.swap_n, attempted)
            for i, stage in enumerate(info.kernel.stages):
                if i == len(self.stage_sum):
                    self.stage_sum.append([0.0] * self.n_temps)
                _add(self.stage_sum[i], stage.detach().flatten(1).mean(1).tolist())
            self.n_post += 1
            return pt, state
        pt = pt.adapted(info, config.target_accept, config.adapt_rate)
        _add(self.window_sum, swap)
        _add(self.window_n, attempted)
        if (isinstance(config, PTConfig) and config.adapt_ladder and pt.n_temps > 2
                and (self.t + 1) % config.ladder_every == 0):
            rates = [s / max(n, 1) for s, n in zip(self.window_sum, self.window_n, strict=True)]
            pt, state = pt.adapted_ladder(state, torch.tensor(rates, device="cpu"))
            self.window_sum = [0.0] * (self.n_temps - 1)
            self.window_n = [0.0] * (self.n_temps - 1)
        return pt, state

    def summary(self, pt: ParallelTempering) -> dict[str, Any]:
        step = pt.kernel.step_size
        accept = [a / max(self.n_post, 1) for a in self.accept_sum]
        return {
            "acceptance": accept[0],
            "acceptance_per_temperature": accept,
            "acceptance_per_stage": [[a / max(self.n_post, 1) for a in stage]
                                     for stage in self.stage_sum],
            "swap_rates": [s / max(n, 1) for s, n in zip(self.swap_sum, self.swap_n, strict=True)],
            "temperatures": list(pt.temperatures),
            "step_size": step.flatten().tolist() if isinstance(step, Tensor) else [float(step)],
            "n_nonfinite": self.n_nonfinite,
            "trace": self.trace,
        }


def _add(total: list[float], values: list[float] | list[bool]) -> None:
    for i, v in enumerate(values):
        total[i] += float(v)


def _first_step_size(pt: ParallelTempering) -> float:
    step = pt.kernel.step_size
    return float(step.flatten()[0]) if isinstance(step, Tensor) else float(step)


# ---- planning ---------------------------------------------------------------------------
def _n_steps(config: ChainsConfig, n_samples: int, remaining: int | None, t: int,
             step_cost: int) -> int:
    """Total steps: t plus what the remaining budget pays for, or the fewest for n_samples."""
    if remaining is not None:
        return t + max(remaining // step_cost, 0)
    n_post = math.ceil(n_samples / config.n_chains) * max(config.thinning, 1)
    return math.ceil(n_post / (1.0 - config.burn_in))


def _keep_times(n_steps: int, n_burn: int, n_times: int, thinning: int) -> set[int]:
    """Up to n_times step indices in [n_burn, n_steps), evenly spread, ending at the last."""
    n_post = n_steps - n_burn
    if n_post <= 0:
        return set()
    stride = max(thinning, n_post // max(n_times, 1), 1)
    return {n_steps - 1 - j * stride for j in range(n_times) if n_steps - 1 - j * stride >= n_burn}


def _select(kept: dict[int, Tensor], n_samples: int) -> Tensor:
    if not kept:
        raise RuntimeError("no post-burn-in step was taken: raise the budget or lower burn_in")
    x = torch.cat([kept[t] for t in sorted(kept)])  # time-major
    if x.shape[0] > n_samples:
        x = x[torch.linspace(0, x.shape[0] - 1, n_samples, device=x.device).round().long()]
    return x.detach()


def _initial_x(target: Any, config: ChainsConfig, n_temps: int, x0: Tensor | None) -> Tensor:
    dtype, device = getattr(torch, config.dtype), torch.device(config.device)
    if x0 is not None:
        x0 = x0.to(dtype=dtype, device=device)
        return x0.expand(n_temps, *x0.shape) if x0.ndim == 2 else x0
    x = config.init_scale * torch.randn(n_temps, config.n_chains, target.dim, dtype=dtype,
                                        device=device)
    centre = getattr(target, "initial_state", None)  # molecules: around their structure
    if centre is not None:
        x = x + centre().to(dtype=dtype, device=device)
    return target.remove_com(x)


# ---- checkpoints ------------------------------------------------------------------------
def _state(pt: ParallelTempering, state: PTState, rec: _Record, config: ChainsConfig
           ) -> dict[str, Any]:
    return {"config": dataclasses.asdict(config), "temperatures": pt.temperatures,
            "step_size": pt.kernel.step_size, "chains": state.chains._asdict(),
            "n_steps": state.n_steps, "record": dataclasses.asdict(rec), "step": rec.t}


def _restore(pt: ParallelTempering, ckpt: dict[str, Any], config: ChainsConfig
             ) -> tuple[ParallelTempering, PTState, _Record]:
    if ckpt["config"] != dataclasses.asdict(config):
        raise UsageError("the checkpoint was written with a different config; resume with the "
                         f"recorded one: {ckpt['config']}")
    kernel = dataclasses.replace(pt.kernel, step_size=ckpt["step_size"])
    pt = ParallelTempering(kernel, tuple(ckpt["temperatures"]))
    state = PTState(MCMCState(**ckpt["chains"]), ckpt["n_steps"])
    return pt, state, _Record(**ckpt["record"])


__all__ = ["CONFIGS", "ChainsConfig", "Config", "HMCConfig", "MALAConfig", "affordable_samples",
           "PTConfig", "RWMHConfig", "build", "preset", "sample", "sample_named",
           "sampler_name"]
