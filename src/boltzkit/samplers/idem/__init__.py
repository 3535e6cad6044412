"""iDEM: Iterated Denoising Energy Matching (Akhound-Sadegh et al., ICML 2024, arXiv 2402.06121).

A diffusion sampler trained from the energy and its gradient alone. Outer loop: draw new samples
from the reverse SDE driven by the network and push them into a FIFO buffer. Inner loop: Adam
steps on lambda(t) |s_theta(x_t, t) - clip(S_K(x_t, t))|^2 with x_t = x_0 + sigma(t) eps, x_0
from the buffer (pDEM: from the prior) and S_K the Monte Carlo estimate of the noised target's
score (`core.mc_score`); the VE schedule and the reverse SDE are the diffusion layer's
(`boltzkit.diffusion.schedules.VESchedule`, `boltzkit.diffusion.sde.reverse_sde`).

Conventions that differ from the paper's text (they follow its code): the LJ energy counts
ordered pairs (see REFERENCE.md); the GMM run works in coordinates divided by 50 (`scale`).

>>> cfg = preset("dw4")
>>> cfg.sigma_max, cfg.n_mc, cfg.clip_score, cfg.clip_per_particle
(3.0, 1000, 20.0, True)
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from boltzkit.core import presets
from boltzkit.core.config import check_ranges, to_dict
from boltzkit.core.errors import UsageError
from boltzkit.diffusion.schedules import VESchedule
from boltzkit.diffusion.sde import reverse_sde
from boltzkit.mc.noise import Particles, gaussian_noise
from boltzkit.models.egnn import EGNN
from boltzkit.samplers import Callback, SampleResult, distributed, null_callback
from boltzkit.samplers.idem import smc as idem_smc
from boltzkit.samplers.idem.core import (
    FifoBuffer,
    buffer_init,
    buffer_push,
    buffer_sample,
    clip_norm,
    dem_loss,
    loss_weight,
    mc_score,
)
from boltzkit.samplers.idem.exact import weighted_samples
from boltzkit.samplers.idem.networks import build_network
from boltzkit.samplers.idem.run import CHECKPOINT, CountingEvaluator, OutOfBudget
from boltzkit.samplers.run import Run, require
from boltzkit.targets.base import Target


@dataclass(frozen=True)
class Config:
    """iDEM hyperparameters; defaults are the paper's DW-4 settings (see `preset`).

    Schedule: sigma(t) = sigma_min sqrt((sigma_max/sigma_min)^(2t) - 1). Estimator: `n_mc`
    samples K, clipped to `clip_score` (whole vector, or per particle on particle systems), the
    perturbed batch bounded by `max_elements` numbers. Loop: `n_outer` x (`n_inner` Adam steps
    on batches of `batch_size`, then `n_generate` samples from an `n_sde_steps`-step reverse SDE
    with noise factor `noise_scale`). `init_buffer`: "prior" (N(0, sigma(1)^2)), "model" (the
    untrained network's reverse SDE) or "estimator" (reverse SDE driven by clip(S_K) itself:
    the paper's GMM run; oracle-like, costs n_init * n_sde_steps * n_mc evaluations).
    `training_points`: "buffer" (iDEM) or "prior" (pDEM). `scale`: the sampler works in
    x / scale (GMM: 50). `ema_decay`: generate with an exponential moving average of the weights
    (not in the paper presets). `train_chunk_edges`: an EGNN training batch is run forward and
    backward in chunks of about this many graph edges, gradients accumulated (the same gradient,
    up to summation order, with activations that stay in cache: about 2x faster on LJ-13 at
    batch 512, BENCHMARKS.md); 0 = the whole batch at once. `fused_egnn`: generation (no
    autograd) runs the EGNN's edge work through the compiled kernel of `boltzkit.models.fused`,
    the same function up to rounding and about 2x faster on LJ-13 (BENCHMARKS.md); it is built
    once on first use, and library calls are used where no C++ compiler is available.
    `n_shards` > 1: each training batch is S seeded shards of batch_size / S (x0, t, noise and
    the B x K estimator), shared out over the data-parallel ranks when torch.distributed is
    initialised (`boltzkit.samplers.distributed`): the trajectory does not depend on the number
    of ranks; generation runs whole on every rank, in lock-step.
    `correction`: "ode" or "smc" return weighted samples (`exact.py`, `smc.py`; `smc_*` set the
    SMC's kernel, levels, resampling and MALA moves); `parametrisation = "energy"` learns
    E_theta(x, t) instead of the score, which SMC with resampling needs.
    """

    network: Literal["auto", "mlp", "egnn"] = "auto"
    hidden: int = 128
    n_layers: int = 3
    sigma_min: float = 1e-5
    sigma_max: float = 3.0
    n_mc: int = 1000
    clip_score: float | None = 20.0
    clip_per_particle: bool = True
    loss_weight: Literal["sigma2", "one"] = "one"
    loss_weight_eps: float = 1e-3
    buffer_size: int = 10_000
    n_outer: int = 1000
    n_inner: int = 100
    batch_size: int = 512
    n_generate: int = 1000
    n_sde_steps: int = 1000
    noise_scale: float = 1.0
    lr: float = 1e-3
    ema_decay: float | None = None
    grad_clip: float | None = 0.5
    init_buffer: Literal["prior", "model", "estimator"] = "model"
    n_init: int = 1000
    training_points: Literal["buffer", "prior"] = "buffer"
    scale: float = 1.0
    max_elements: int = 1 << 21
    train_chunk_edges: int = 8192
    fused_egnn: bool = True
    checkpoint_every: int = 10
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"  # where the network and samples live; the target must be there
    # "ode": return samples of the probability-flow ODE with importance weights (exact log q;
    # `boltzkit.samplers.idem.exact`), costing n_samples energy evaluations; "smc": SMC along
    # the network's noised levels (`boltzkit.samplers.idem.smc`, needs parametrisation
    # "energy" unless it is AIS); "none": the SDE's
    correction: Literal["none", "ode", "smc"] = "none"
    ode_tolerance: float = 1e-5
    n_shards: int = 1
    # "energy": the network outputs E_theta(x, t), score = -grad E (`models.energy_net.TimeEnergy`)
    parametrisation: Literal["score", "energy"] = "score"
    energy_data_var: float = 1.0  # the energy network's base Gaussian, N(0, v + sigma_t^2)
    smc_kernel: str = "first-order-forward"  # a `boltzkit.diffusion.kernels` name
    smc_steps: int = 100  # transitions: levels uniform in t from 1 to smc_t_min, then the target
    smc_t_min: float = 1e-3
    smc_ess_threshold: float = 0.5  # resample below this ESS/N; 0: AIS
    smc_mcmc_steps: int = 0  # MALA steps per level (for the last level: on the target)
    smc_step_size: float = 0.01

    def __post_init__(self) -> None:
        check_ranges(self, positive=(
            "hidden", "n_layers", "sigma_min", "sigma_max", "n_mc", "clip_score", "buffer_size",
            "n_outer", "n_inner", "batch_size", "n_generate", "n_sde_steps", "lr", "grad_clip",
            "n_init", "scale", "max_elements", "ode_tolerance", "n_shards", "energy_data_var",
            "smc_steps", "smc_t_min", "smc_step_size"),
            nonnegative=("loss_weight_eps", "noise_scale", "checkpoint_every",
                         "train_chunk_edges", "smc_mcmc_steps"),
            fractions=("ema_decay", "smc_ess_threshold"))
        idem_smc.check_config(self)
        if self.sigma_min >= self.sigma_max:
            raise UsageError(f"iDEM needs sigma_min < sigma_max, got {self.sigma_min}, "
                             f"{self.sigma_max}")


PRESET_FILE = "idem"  # boltzkit/presets/idem.toml


def preset_names() -> list[str]:
    """The named settings (`boltzkit/presets/idem.toml`): each paper configuration and its
    "-quick" version."""
    return presets.names(presets.load(PRESET_FILE))


def preset(name: str) -> Config:
    """Named settings: "gmm40", "dw4", "lj13", "lj55" (the iDEM code's values, REFERENCE.md) and
    "<name>-quick" (runs in minutes on 2 CPU cores; a smoke test, not a result)."""
    return presets.apply(Config(), presets.load(PRESET_FILE), name, kind="iDEM preset")


def sample(target: Target, config: Config, *, n_samples: int, budget: int | None = None,
           callback: Callback = null_callback, run_dir: Any = None,
           resume: bool = False) -> SampleResult:
    """Trains iDEM on `target` and returns `n_samples` from its reverse SDE.

    Args:
        target: the unnormalised density (particle systems get COM-free noise and an EGNN).
        config: hyperparameters (`preset(name)` for the paper's).
        n_samples: number of samples returned (generated after training).
        budget: maximum number of target energy evaluations (configurations); training stops
            before a step would exceed it. None: no limit.
        callback: progress hook ("start", "advance", "log", "end").
        run_dir: directory for checkpoints (every `checkpoint_every` outer iterations, and at
            the end; 0: none).
        resume: continue from the checkpoint in `run_dir` (network, optimizer, buffer, RNG state,
            evaluation counts, traces).

    Returns:
        SampleResult with equally weighted samples (log_w None, log_Z None) in the target's
        coordinates, diagnostics (losses, time split, stopped_by_budget) and counts.
    """
    inner = config.batch_size * config.n_mc
    require(budget, inner, f"one inner training step of iDEM (batch_size {config.batch_size} x "
            f"n_mc {config.n_mc}); an outer iteration costs {inner * config.n_inner:,}")
    reserve = idem_smc.correction_cost(config, n_samples)
    if reserve:
        require(budget, inner + reserve, f"one inner training step of iDEM and the "
                f"{config.correction} correction (weights) of the {n_samples} returned samples")
    training = _Training(target, config, budget, run_dir, callback=callback, reserve=reserve)
    run = training.run
    if resume:
        training.restore()
    run.start(total=config.n_outer, unit="iteration", description="iDEM")
    try:
        if training.iteration == 0 and len(training.buffer.data) == 0:
            training.fill_initial_buffer()
        while training.iteration < config.n_outer:
            loss = training.outer_iteration()
            run.advance(1, loss=loss, n_energy=run.spent["n_energy"])
            if run.due(training.iteration):
                training.save()
    except OutOfBudget:
        step = config.batch_size * config.n_mc
        run.log(f"iDEM: budget of {budget:,} evaluations reached at outer iteration "
                f"{training.iteration} (one inner step costs {step:,}, an outer iteration "
                f"{step * config.n_inner:,})")
    training.save()
    diagnostics = training.diagnostics()
    if config.correction != "none":
        net = training.ema if training.ema is not None else training.net
        weighted = (weighted_samples(net, target, training.schedule, training.particles,
                                     n_samples, scale=config.scale, like=training.like,
                                     batch=config.n_generate, tolerance=config.ode_tolerance)
                    if config.correction == "ode" else idem_smc.weighted_samples(
                        net, target, training.schedule, training.particles, n_samples, config,
                        training.device))
        run.end()
        return SampleResult(weighted.samples, weighted.log_w, weighted.log_Z,
                            {**diagnostics, **weighted.diagnostics}, run.spent)
    samples = training.generate(n_samples) * config.scale
    run.end()
    return SampleResult(samples.detach(), None, None, diagnostics, run.spent)


class _Training:
    """The mutable state of one iDEM run (network, optimizer, buffer, counters, traces)."""

    def __init__(self, target: Target, config: Config, budget: int | None, run_dir: Any, *,
                 callback: Callback = null_callback, reserve: int = 0) -> None:
        self.config, self.target = config, target
        self.dtype = getattr(torch, config.dtype)
        self.device = torch.device(config.device)
        self.like = torch.empty(0, dtype=self.dtype, device=self.device)
        self.particles = (Particles(target.n_particles, target.spatial_dim)
                          if target.is_particle_system else None)
        self.schedule = VESchedule(config.sigma_min, config.sigma_max)
        with self.device:  # parameters and buffers (edge lists) are made there
            self.net = build_network(config, target).to(dtype=self.dtype)
        self.world, self.seed = distributed.world(), torch.initial_seed()
        self.sharded = config.n_shards > 1 or self.world.size > 1
        if self.sharded:
            distributed.check_shards(config.n_shards, config.batch_size, self.world)
            distributed.broadcast_parameters(self.net, self.world)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.ema = copy.deepcopy(self.net) if config.ema_decay is not None else None
        self.buffer: FifoBuffer = buffer_init(target.dim, config.buffer_size, self.like)
        self.run = Run(target, budget=budget, reserve=reserve, run_dir=run_dir,
                       checkpoint_every=config.checkpoint_every if self.world.rank == 0 else 0,
                       checkpoint_name=CHECKPOINT, callback=callback)
        self.evaluate = CountingEvaluator(self.run, config.scale)
        self.iteration = 0
        self.resumed_from: int | None = None
        self.started = time.perf_counter()
        self.wall_before = 0.0  # wall seconds of the earlier processes of a resumed run
        self.traces: dict[str, list[float]] = {"loss": [], "ess_mean": []}
        self.seconds = {"estimator": 0.0, "network": 0.0, "sde": 0.0}
        edges = (target.n_particles * (target.n_particles - 1)
                 if isinstance(self.net, EGNN) else 0)
        self.train_chunk = (max(1, config.train_chunk_edges // edges)
                            if edges and config.train_chunk_edges > 0 else config.batch_size)

    # ---- loop ---------------------------------------------------------------------------------
    def outer_iteration(self) -> float:
        c = self.config
        losses, ess = [], []
        for i in range(c.n_inner):
            loss, ess_mean = self.inner_step(self.iteration * c.n_inner + i)
            losses.append(loss)
            ess.append(ess_mean)
        self.buffer = buffer_push(self.buffer, self.generate(c.n_generate))
        self.iteration += 1
        self.traces["loss"].append(sum(losses) / len(losses))
        self.traces["ess_mean"].append(sum(ess) / len(ess))
        return self.traces["loss"][-1]

    def inner_step(self, step: int = 0) -> tuple[float, float]:
        """One Adam step on the DEM loss of a batch (its S shards when sharded: this rank's
        computed, gradients, loss, ESS and counts summed over the ranks). Returns (loss, mean
        estimator ESS)."""
        c = self.config
        self.run.check(c.batch_size * c.n_mc)
        self.optimizer.zero_grad(set_to_none=True)
        if self.sharded:
            before, n = self.target.counter.as_dict(), c.batch_size // c.n_shards
            parts = distributed.shard_map(lambda s: self.batch_loss(n, 1 / c.n_shards),
                                          c.n_shards, self.world, self.seed, step)
            distributed.sum_gradients(self.net.parameters(), self.world)
            distributed.share_counts(self.target, before, self.world)
            means = [sum(p) / c.n_shards for p in zip(*parts, strict=True)]
            loss, ess = distributed.all_sums(means, self.world)
        else:
            loss, ess = self.batch_loss(c.batch_size)
        if c.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for avg, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                    avg.lerp_(p, 1.0 - c.ema_decay)
        return loss, ess

    def batch_loss(self, n: int, share: float = 1.0) -> tuple[float, float]:
        """Draws n training points, their S_K targets and adds share x the gradient of their
        DEM loss to the parameters' .grad. Returns (loss, mean estimator ESS) of the n."""
        c = self.config
        x0 = self.prior(n) if c.training_points == "prior" else buffer_sample(self.buffer, n)
        t = torch.rand(n, dtype=self.dtype, device=self.device)
        sigma = self.schedule.sigma(t)
        xt = x0 + sigma.unsqueeze(1) * gaussian_noise(tuple(x0.shape), x0, self.particles)
        start = time.perf_counter()
        est = mc_score(self.evaluate, xt, sigma, c.n_mc, particles=self.particles,
                       max_elements=c.max_elements)
        goal = self.clip(est.score)
        mid = time.perf_counter()
        weight = loss_weight(self.schedule, t, c.loss_weight, c.loss_weight_eps)
        loss = self.backward(xt, t, goal, weight, share)
        self.seconds["estimator"] += mid - start
        self.seconds["network"] += time.perf_counter() - mid
        return loss, est.ess.mean().item()

    def backward(self, xt: Tensor, t: Tensor, goal: Tensor, weight: Tensor,
                 share: float = 1.0) -> float:
        """Adds share x the gradient of the DEM loss over the batch to the parameters' .grad,
        in chunks of `train_chunk` samples: sum over chunks of (|chunk| / B) dem_loss(chunk) is
        the batch loss, so the accumulated gradient is the batch gradient. Returns the loss."""
        size, total = self.train_chunk, 0.0
        for i in range(0, len(xt), size):
            part = slice(i, i + size)
            loss = dem_loss(self.net(xt[part], t[part]), goal[part], weight[part])
            frac = len(xt[part]) / len(xt)
            (loss * (frac * share)).backward()
            total += loss.item() * frac
        return total

    def clip(self, score: Tensor) -> Tensor:
        """clip(S_K): per particle when configured and the target is a particle system."""
        per_particle = self.config.clip_per_particle and self.particles is not None
        return clip_norm(score, self.config.clip_score, self.particles, per_particle)

    def prior(self, n: int) -> Tensor:
        eps = gaussian_noise((n, self.target.dim), self.like, self.particles)
        return self.schedule.prior_std * eps

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """n samples from the network's reverse SDE in batches of `n_generate`, in the sampler's
        coordinates x / scale (as stored in the buffer)."""
        c = self.config
        net = self.ema if self.ema is not None else self.net
        start = time.perf_counter()
        out = [reverse_sde(net, self.prior(min(c.n_generate, n - i)), self.schedule,
                           c.n_sde_steps, noise_scale=c.noise_scale, particles=self.particles)
               for i in range(0, n, c.n_generate)]
        self.seconds["sde"] += time.perf_counter() - start
        return torch.cat(out) if out else self.like.new_empty(0, self.target.dim)

    def fill_initial_buffer(self) -> None:
        c = self.config
        if c.training_points == "prior":
            return
        if c.init_buffer == "prior":
            x = self.prior(c.n_init)
        elif c.init_buffer == "model":
            x = self.generate(c.n_init)
        else:
            x = self._estimator_sde(c.n_init)
        self.buffer = buffer_push(self.buffer, x)

    def _estimator_sde(self, n: int) -> Tensor:
        c = self.config

        def score(x: Tensor, t: float) -> Tensor:
            self.run.check(len(x) * c.n_mc)
            est = mc_score(self.evaluate, x, self.schedule.sigma(t).to(x), c.n_mc,
                           particles=self.particles, max_elements=c.max_elements)
            return self.clip(est.score)

        start = time.perf_counter()
        x = reverse_sde(score, self.prior(n), self.schedule, c.n_sde_steps,
                        noise_scale=c.noise_scale, particles=self.particles)
        self.seconds["estimator"] += time.perf_counter() - start
        return x

    # ---- records ------------------------------------------------------------------------------
    def wall_seconds(self) -> float:
        """Wall time of the run so far, over every process of a resumed run."""
        return self.wall_before + time.perf_counter() - self.started

    def diagnostics(self) -> dict[str, Any]:
        return {
            "stopped_by_budget": self.run.stopped_by_budget,
            "outer_iterations": self.iteration,
            "resumed_from": self.resumed_from,
            "wall_seconds": self.wall_seconds(),
            "buffer_size": len(self.buffer.data),
            "loss_trace": self.traces["loss"],
            "estimator_ess_trace": self.traces["ess_mean"],
            "seconds": dict(self.seconds),
            "config": to_dict(self.config),
        }

    def save(self) -> None:
        """Checkpoints the run (`Run.save` adds the counts and the RNG states)."""
        self.run.save({
            "iteration": self.iteration, "net": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.data,
            "traces": self.traces, "seconds": self.seconds,
            "stopped_by_budget": self.run.stopped_by_budget,
            "wall_seconds": self.wall_seconds(),
            "config": dataclasses.asdict(self.config), "shard_seed": self.seed,
        })

    def restore(self) -> None:
        """Continues from the checkpoint in run_dir, if any (counts and RNG restored too)."""
        state = self.run.load(resume=True)
        if state is None:
            return
        self.net.load_state_dict(state["net"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer = FifoBuffer(state["buffer"].to(self.like), self.config.buffer_size)
        self.iteration = self.resumed_from = state["iteration"]
        self.traces, self.seconds = state["traces"], state["seconds"]
        self.seed = state.get("shard_seed", self.seed)
        self.wall_before = state.get("wall_seconds", sum(self.seconds.values()))
