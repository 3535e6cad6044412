"""The Monte Carlo layer follows its particles' device: every MCMC kernel (with adaptation), the
resamplers, parallel tempering (with ladder adaptation) and the SMC engine on geometric and
tempering paths; and a kernel that draws its noise without `device=` is caught."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from tests.devices.guard import assert_on, strict
from torch import Tensor

from boltzkit.mc import estimators, mcmc, paths, resampling, smc, tempering
from boltzkit.targets import get
from boltzkit.targets.base import Target

KERNELS = [mcmc.RWMH(step_size=0.3), mcmc.MALA(step_size=0.3),
           mcmc.HMC(step_size=0.2, n_leapfrog=3)]


def targets_on(device: str) -> list[Target]:
    """A plain and a particle target (the COM projection on the particles' device)."""
    return [get("two-modes").to(device), get("dw4").to(device)]


def start(target: Target, device: str, *batch: int) -> Tensor:
    x = torch.randn(*batch, target.dim, dtype=torch.float64)
    return target.remove_com(x).to(device)


def run_kernel(kernel: Any, target: Target, x: Tensor, n_steps: int = 3) -> tuple[Any, Any]:
    state = kernel.init(x, target)
    for _ in range(n_steps):
        state, info = kernel.step(state, target)
        kernel = kernel.adapted(info)
    return state, info


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: type(k).__name__)
def test_kernel_follows_its_chains(kernel: mcmc.Kernel, device: str) -> None:
    for target in targets_on(device):
        x = start(target, device, 16)
        with strict(device):
            state, info = run_kernel(kernel, target, x)
        assert state.x.shape == x.shape
        assert_on((state, info), device)


@pytest.mark.parametrize("scheme", sorted(resampling.RESAMPLERS))
def test_resampler_follows_its_weights(scheme: str, device: str) -> None:
    log_w = torch.randn(3, 20, dtype=torch.float64).to(device)
    with strict(device):
        idx = resampling.RESAMPLERS[scheme](log_w)
        counts = resampling.offspring_counts(idx)
        ess = estimators.ess(log_w)
    assert idx.shape == log_w.shape and bool((counts.sum(-1) == 20).all())
    assert_on((idx, counts, ess), device)


def test_parallel_tempering_follows_its_replicas(device: str) -> None:
    pt = tempering.ParallelTempering(mcmc.MALA(step_size=0.3), (1.0, 2.0, 4.0))
    for target in targets_on(device):
        x = start(target, device, 3, 8)
        with strict(device):
            state = pt.init(x, target)
            for _ in range(4):
                state, info = pt.step(state, target)
                pt = pt.adapted(info)
            pt, state = pt.adapted_ladder(state, torch.tensor([0.2, 0.6], device="cpu"))
            state, info = pt.step(state, target)
        assert state.chains.x.shape == x.shape
        assert_on((state, info), device)


def smc_runs(target: Target) -> dict[str, Any]:
    """Geometric path with MALA moves and an adaptive schedule, tempering path on a grid."""
    reference = paths.Gaussian(target.dim, scale=2.0, n_particles=target.n_particles,
                               spatial_dim=target.spatial_dim).to(target.device)
    move = smc.MCMCMove(mcmc.MALA(step_size=0.2), n_steps=2)
    return {
        "geometric": lambda: smc.smc(paths.GeometricPath(reference, target),
                                     smc.AdaptiveSchedule(0.5, max_levels=50), n_particles=32,
                                     n_replicas=2, mcmc=move),
        "grid": lambda: smc.smc(paths.GeometricPath(reference, target),
                                torch.linspace(0, 1, 5, device="cpu"), n_particles=32,
                                resampling=smc.Resampling("residual", 1.0), mcmc=move),
    }


def test_smc_engine_follows_its_particles(device: str) -> None:
    for target in targets_on(device):
        for name, run in smc_runs(target).items():
            with strict(device):
                res = run()
            assert res.x.shape[-1] == target.dim, name
            assert_on(res, device)
    funnel = get("funnel-10").to(device)
    with strict(device):
        res = smc.smc(paths.TemperingPath(funnel, 0.5), torch.linspace(0, 1, 4, device="cpu"),
                      n_particles=16)
    assert_on(res, device)


# ---- the guard catches a kernel that forgets device= -----------------------------------------
@dataclasses.dataclass(frozen=True)
class DefaultDeviceNoise(mcmc.RWMH):
    """Deliberately broken: the random-walk noise is created on the default device."""

    def _propose(self, state: mcmc.MCMCState, target: Any) -> tuple[Any, Tensor, Tensor]:
        noise = torch.randn(state.x.shape, dtype=state.x.dtype)  # no device=
        x = state.x + self._h(state.x) * target.remove_com(noise)
        zero = torch.zeros_like(state.log_prob)
        return mcmc.MCMCState(x, target.log_prob(x), None), zero, zero.bool()


def test_a_kernel_without_device_is_caught(device: str) -> None:
    target = get("two-modes").to(device)
    x = start(target, device, 16)
    run_kernel(DefaultDeviceNoise(step_size=0.3), target, x)  # unguarded: passes on CPU
    with pytest.raises(RuntimeError, match="device"), strict(device):
        run_kernel(DefaultDeviceNoise(step_size=0.3), target, x)
