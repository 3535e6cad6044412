"""iDEM made exact by sequential Monte Carlo along its own diffusion path.

The trained network defines noised levels between a Gaussian reference and the target,

    g_0 = N(0, (v + sigma_1^2) I),   g_k(x) = exp(-E_theta(x, t_k)),   g_K = gamma,

t_0 = 1 > t_1 > ... > t_K = 0 (`time_grid`, uniform in t), and the one SMC engine
(`boltzkit.mc.smc`) moves N particles level by level with a denoising kernel M of
`boltzkit.diffusion.kernels` (first-order, second-order, DDPM, Euler-Maruyama, or a transport
map: DDIM, probability-flow Euler) and the forward noising kernel L as backward kernel:

    delta_k = log g_k(x') + log L(x | x') - log g_{k-1}(x) - log M(x' | x),

resampling when ESS/N < `smc_ess_threshold`, optionally refreshing with MALA steps invariant
for g_k (at the last level, for gamma itself). The weights and log Z are those of SMC samplers
(Del Moral, Doucet & Jasra 2006) whatever the network's error; the network only sets their
variance. This needs log-densities at the intermediate levels, i.e. the energy-parametrised iDEM
(`parametrisation = "energy"`, `boltzkit.models.energy_net.TimeEnergy`); a score network allows
AIS only (no resampling, no moves: the intermediate densities telescope out of the weights,
Grenioux & Noble, arXiv 2601.21026, Sec. 5).

Coordinates: the sampler's (x / scale); for particle systems the COM-free subspace in an
orthonormal basis B, z = (x / scale) B^T, so that the kernels' isotropic Gaussians live on the
(n - 1) d degrees of freedom. Importance weights returned in the target's coordinates carry
+ dof log scale (the Jacobian of x = scale y).

Counts: the target is evaluated N times at the last reweighting and, with moves, N (1 + n_moves)
more at the last level (`correction_cost`), reserved in the budget before training; the
network's calls and Jacobian-vector products are reported apart (`n_net`, `n_jvp`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from boltzkit.core.errors import UsageError
from boltzkit.diffusion.kernels import KERNELS, NoisingKernel, make_kernel
from boltzkit.diffusion.network_model import NetworkModel
from boltzkit.diffusion.schedules import time_grid
from boltzkit.mc import estimators
from boltzkit.mc.mcmc import MALA
from boltzkit.mc.paths import DiffusionPath, Gaussian
from boltzkit.mc.smc import MCMCMove, Resampling, SMCResult, smc
from boltzkit.samplers.idem.exact import Weighted
from boltzkit.targets.base import Target

SMC_KERNELS = tuple(k for k in KERNELS if k != "exact")  # "exact" needs a Gaussian mixture


def check_config(config: Any) -> None:
    """One-line errors for combinations the SMC correction cannot run."""
    if config.smc_kernel not in SMC_KERNELS:
        raise UsageError(f"smc_kernel {config.smc_kernel!r} is not one of "
                         f"{', '.join(SMC_KERNELS)}")
    if not config.smc_t_min < 1.0:
        raise UsageError(f"smc_t_min must lie in (0, 1), got {config.smc_t_min}")
    if (config.correction == "smc" and config.parametrisation == "score"
            and (config.smc_ess_threshold > 0 or config.smc_mcmc_steps > 0)):
        raise UsageError("correction=smc with a score network has no intermediate "
                         "log-densities: set parametrisation=energy, or smc_ess_threshold=0 and "
                         "smc_mcmc_steps=0 (AIS)")


def correction_cost(config: Any, n_samples: int) -> int:
    """Target evaluations of the correction of `n_samples`: the weights (N), and with MALA
    moves their start and steps at the last level (N (1 + n_moves))."""
    if config.correction == "ode":
        return n_samples
    if config.correction == "smc":
        moves = config.smc_mcmc_steps
        return n_samples * (1 + (1 + moves if moves else 0))
    return 0


class SamplerCoordinates(Target):
    """gamma in the sampler's coordinates z: x = scale (z B) with B `[m, dim]` orthonormal rows
    (the COM-free basis of a particle system) or the identity; shares the target's counter."""

    def __init__(self, target: Target, scale: float, basis: Tensor | None) -> None:
        super().__init__(target.dim if basis is None else basis.shape[0])
        self.name = f"{target.name} (sampler coordinates)"
        self.base, self.scale, self.basis = target, float(scale), basis
        self.counter = target.counter

    def to_target(self, z: Tensor) -> Tensor:
        return self.scale * (z if self.basis is None else z @ self.basis.to(z))

    def _log_prob(self, z: Tensor) -> Tensor:
        # counted once, by this target's log_prob, on the shared counter
        return self.base._log_prob(self.to_target(z)) / self.base.temperature


class InBasis(nn.Module):
    """A network of iDEM's coordinates y seen in z = y B^T: s_z = s_y(z B) B^T and
    E_z = E_y(z B) (B orthonormal, so densities need no Jacobian)."""

    def __init__(self, net: nn.Module, basis: Tensor) -> None:
        super().__init__()
        self.net, self.basis = net, basis
        if hasattr(net, "energy"):
            self.energy = self._energy

    def forward(self, z: Tensor, t: Tensor | float) -> Tensor:
        return self.net(z @ self.basis, t) @ self.basis.mT

    def _energy(self, z: Tensor, t: Tensor | float) -> Tensor:
        return self.net.energy(z @ self.basis, t)


@dataclass(frozen=True)
class SMCSettings:
    """The correction's settings (iDEM's `smc_*` fields): kernel name, noised levels, the least
    noisy level's time, ESS/N resampling threshold (0: AIS), MALA steps per level and size."""

    kernel: str = "first-order-forward"
    n_steps: int = 100
    t_min: float = 1e-3
    ess_threshold: float = 0.5
    mcmc_steps: int = 0
    step_size: float = 0.01

    @classmethod
    def of(cls, config: Any) -> SMCSettings:
        return cls(config.smc_kernel, config.smc_steps, config.smc_t_min,
                   config.smc_ess_threshold, config.smc_mcmc_steps, config.smc_step_size)


def smc_correction(model: Any, target: Target, n: int, settings: SMCSettings) -> SMCResult:
    """SMC (or AIS) from `model`'s reference to `target` along `model`'s noised levels;
    `model` is any diffusion model of `boltzkit.mc.paths` (a `NetworkModel`, or the exact
    `PerfectModel` of a mixture in the tests)."""
    times = time_grid(model.schedule, settings.n_steps, "uniform", t_min=settings.t_min)
    path = DiffusionPath(model, target, times)
    kernel = make_kernel(settings.kernel)
    mcmc = (MCMCMove(MALA(settings.step_size), settings.mcmc_steps)
            if settings.mcmc_steps else None)
    threshold = settings.ess_threshold if model.has_log_prob else 0.0
    return smc(path, n_particles=n, proposal=kernel, mcmc=mcmc,
               backward=None if kernel.deterministic else NoisingKernel(),
               resampling=Resampling("systematic", threshold))


def network_model(net: nn.Module, schedule: Any, particles: Any, dim: int, config: Any,
                  device: torch.device) -> NetworkModel:
    """The trained network (a float64 copy, in z coordinates) as a diffusion model, with the
    reference N(0, (v + sigma_1^2) I) on its m degrees of freedom."""
    net = copy.deepcopy(net).double()
    if particles is not None:
        net = InBasis(net, particles.basis(torch.empty(0, dtype=torch.float64, device=device)))
    dof = particles.dof if particles is not None else dim
    std = math.sqrt(config.energy_data_var + schedule.prior_std**2)
    return NetworkModel(net, schedule, Gaussian(dof, scale=std, device=device))


def weighted_samples(net: nn.Module, target: Target, schedule: Any, particles: Any, n: int,
                     config: Any, device: torch.device) -> Weighted:
    """n SMC particles of the trained `net` with unnormalised importance weights against
    `target` (target coordinates), log Z and the correction's diagnostics."""
    model = network_model(net, schedule, particles, target.dim, config, device)
    basis = model.net.basis if isinstance(model.net, InBasis) else None
    coords = SamplerCoordinates(target, config.scale, basis)
    res = smc_correction(model, coords, n, SMCSettings.of(config))
    dof = coords.dim
    shift = dof * math.log(config.scale)
    log_w = res.log_W + float(res.log_Z) + math.log(n) + shift
    d = res.diagnostics
    ess = (d.ess / n).tolist()
    summary = estimators.weight_summary(log_w)
    summary.update(correction=f"SMC along the network's diffusion path ({config.smc_kernel})",
                   smc_min_ess_fraction=min(ess),
                   smc_final_ess_fraction=ess[-1], smc_n_resampled=int(d.resampled.sum()),
                   smc_levels=len(ess), n_net=model.counter.n_energy, n_jvp=model.n_jvp)
    x = coords.to_target(res.x).to(dtype=getattr(torch, config.dtype))
    return Weighted(x.detach(), log_w.detach(), float(summary["log_Z"]), summary)
