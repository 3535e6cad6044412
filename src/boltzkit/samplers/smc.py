"""The "smc" sampler: tempered SMC from a Gaussian reference to any target, behind the sampler
convention (`boltzkit.samplers`).

The path is geometric, log g_lam = (1 - lam) log N(x; 0, s^2 I) + lam log gamma(x) (COM-free
Gaussian for particle systems), the next lam is chosen by bisection so that the conditional ESS
is `cess_fraction` N, particles are resampled when ESS/N < `ess_threshold`, and `n_mcmc_steps`
MALA/RWMH/HMC steps invariant for the current level refresh them, the step size adapted between
levels towards the kernel's optimal acceptance. The estimate of log Z is absolute (the
reference is normalised). Everything runs in `boltzkit.mc.smc.smc`; see there for the weights.

A budget (target energy evaluations) makes the run jump to lam = 1 once another level would
overspend (`diagnostics["stopped_by_budget"]`). SMC runs are short and not checkpointed:
`run_dir` is unused and `resume=True` starts afresh (said in `diagnostics["resumed"]`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, Literal

import torch

from boltzkit.core import presets
from boltzkit.core.errors import UnknownName
from boltzkit.mc.mcmc import kernel_from_name
from boltzkit.mc.paths import Gaussian, GeometricPath
from boltzkit.mc.resampling import RESAMPLERS
from boltzkit.mc.smc import AdaptiveSchedule, MCMCMove, Resampling, smc
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.samplers.run import spent_since


@dataclass(frozen=True)
class Config:
    """Tempered-SMC hyperparameters; n_particles None means n_samples."""

    n_particles: int | None = None
    cess_fraction: float = 0.5
    ess_threshold: float = 0.5
    resampler: str = "systematic"
    kernel: Literal["mala", "rwmh", "hmc"] = "mala"
    n_mcmc_steps: int = 5
    step_size: float = 0.05
    target_accept: float | None = None
    reference_scale: float = 1.0
    max_levels: int = 1000


PRESET_FILE = "smc"  # boltzkit/presets/smc.toml


def preset_names() -> list[str]:
    """Named settings in `boltzkit/presets/smc.toml`."""
    return presets.names(presets.load(PRESET_FILE))


def preset(name: str) -> Config:
    """Named settings (`boltzkit/presets/smc.toml`); an unknown key is an error."""
    return presets.apply(Config(), presets.load(PRESET_FILE), name, kind="SMC preset")


def sample(
    target: Any, config: Config, *, n_samples: int, budget: int | None = None,
    callback: Callback = null_callback, run_dir: FsPath | None = None, resume: bool = False,
) -> SampleResult:
    """Weighted particles `[n, dim]`, the log Z estimate and per-level traces; n = n_particles,
    or n_samples equally weighted ones (log_w None) when they differ. log_w are importance
    weights in the convention of `boltzkit.mc.estimators`: LSE(log_w) - log n = log Z-hat."""
    if config.resampler not in RESAMPLERS:
        raise UnknownName("resampler", config.resampler, RESAMPLERS)
    started = time.perf_counter()
    counts0 = dict(target.counter.as_dict())
    reference = Gaussian(target.dim, scale=config.reference_scale,
                         n_particles=target.n_particles, spatial_dim=target.spatial_dim)
    kernel = kernel_from_name(config.kernel, step_size=config.step_size)
    n = config.n_particles or n_samples
    callback("start", total=0, unit="level", description=f"smc on {target.name}")
    res = smc(GeometricPath(reference, target),
              AdaptiveSchedule(config.cess_fraction, max_levels=config.max_levels),
              n_particles=n, mcmc=MCMCMove(kernel, config.n_mcmc_steps,
                                           target_accept=config.target_accept),
              resampling=Resampling(config.resampler, config.ess_threshold), budget=budget,
              callback=callback)
    callback("end")
    d = res.diagnostics
    # As importance weights: mean(exp(log_w)) = Z-hat, so estimators.log_Z(log_w) = log Z-hat.
    samples, log_w = res.x.detach(), res.log_w + res.log_Z + math.log(n)
    if n != n_samples:  # equally weighted draws from the weighted particles
        samples = samples[torch.multinomial(res.log_w.exp(), n_samples, replacement=True)]
        log_w = None
    diagnostics = {
        "n_levels": len(d.lam) - 1, "lam": d.lam.tolist(),
        "ess_fraction": (d.ess / n).tolist(), "resampled": d.resampled.tolist(),
        "n_resampled": int(d.resampled.sum()), "accept_prob": d.accept_prob.tolist(),
        "step_size": d.step_size.tolist(), "stopped_by_budget": d.stopped_by_budget,
        "resumed": False, "wall_s": time.perf_counter() - started, "n_particles": n,
    }
    return SampleResult(samples, log_w, float(res.log_Z), diagnostics,
                        spent_since(target, counts0))
