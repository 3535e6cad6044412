"""iDEM made exact by SMC along its diffusion path (`boltzkit.samplers.idem.smc`): with the exact
noised log-densities of a Gaussian mixture in place of the network the weights are constant and
log Z exact in float64 (exact kernel), and log Z and the mode weights are right within their
standard errors (first-order kernel); levels of the wrong sign fail both checks. The energy
network's score is its gradient; the iDEM sampler with correction=smc keeps the sampler contract
(counts, budget, unnormalised weights); bad combinations are one-line errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from tests.samplers.test_contract import (
    Tally,
    check_budget,
    check_counts,
    check_result,
    check_weights,
    snapshot,
)

from boltzkit.core.errors import UsageError
from boltzkit.diffusion.schedules import PerfectModel, VESchedule
from boltzkit.models.energy_net import TimeEnergy
from boltzkit.samplers import idem
from boltzkit.samplers.idem.smc import SMCSettings, smc_correction
from boltzkit.targets.base import Target
from boltzkit.targets.mixtures import two_modes

Z = 5.0
SCHEDULE = VESchedule(1e-3, 5.0)


class Negated(Target):
    """A level of the wrong sign: log g = +E instead of -E (the broken variant)."""

    def __init__(self, level: Target) -> None:
        super().__init__(level.dim)
        self.level, self.counter = level, level.counter

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -self.level._log_prob(x)


class WrongSignModel(PerfectModel):
    """The perfect model whose intermediate levels have the wrong sign."""

    def marginal(self, t: float) -> Target:
        level = super().marginal(t)
        return level if float(t) == self.schedule.t_max else Negated(level)


def heavy_mode_weight(x: torch.Tensor, log_w: torch.Tensor) -> float:
    """Weighted mass of the mode at -a 1 (truth 2/3)."""
    return float((log_w.exp() * (x.sum(-1) < 0)).sum())


def test_exact_kernel_on_exact_levels_has_constant_weights_and_exact_log_Z() -> None:
    torch.manual_seed(0)
    mix = two_modes(2, 2.0)
    res = smc_correction(PerfectModel(mix, SCHEDULE), mix, 500, SMCSettings("exact", 20))
    assert abs(float(res.log_Z) - mix.log_Z) < 1e-10
    assert float(res.log_W.max() - res.log_W.min()) < 1e-10
    broken = smc_correction(WrongSignModel(mix, SCHEDULE), mix, 500, SMCSettings("exact", 20))
    assert abs(float(broken.log_Z) - mix.log_Z) > 1e-3


def _replicated(model: PerfectModel, mix: Target, n_runs: int) -> tuple[list[float], list[float]]:
    z_hats, heavy = [], []
    for seed in range(n_runs):
        torch.manual_seed(seed)
        res = smc_correction(model, mix, 1000, SMCSettings("first-order-forward", 30))
        z_hats.append(math.exp(float(res.log_Z)))
        heavy.append(heavy_mode_weight(res.x, res.log_W))
    return z_hats, heavy


def _within(values: list[float], truth: float) -> bool:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return abs(mean - truth) <= Z * se + 1e-12


def test_first_order_smc_on_exact_levels_is_unbiased_within_se() -> None:
    """Z-hat (unbiased in SMC) and the heavy mode's weight over 12 independent runs."""
    mix = two_modes(2, 2.0)
    z_hats, heavy = _replicated(PerfectModel(mix, SCHEDULE), mix, 12)
    assert _within(z_hats, 1.0), z_hats
    assert _within(heavy, 2 / 3), heavy
    z_bad, heavy_bad = _replicated(WrongSignModel(mix, SCHEDULE), mix, 12)
    assert not (_within(z_bad, 1.0) and _within(heavy_bad, 2 / 3))


def test_energy_network_score_is_minus_its_gradient_and_invariant() -> None:
    torch.manual_seed(0)
    net = TimeEnergy(8, SCHEDULE.sigma, "egnn", 16, 2, (4, 2)).double()
    for p in net.parameters():  # away from the zero-initialised readout
        torch.nn.init.normal_(p, std=0.3)
    x, t = torch.randn(6, 8, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net.energy(xg, t).sum(), xg)
    assert torch.allclose(net(x, t), -grad, atol=1e-12)
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    moved = (x.view(6, 4, 2) @ rot.T + 0.7).flip(1).reshape(6, 8)
    assert torch.allclose(net.energy(moved, t), net.energy(x, t), atol=1e-10)


TINY = {"hidden": 8, "n_layers": 1, "n_outer": 3, "n_inner": 2, "batch_size": 8, "n_mc": 4,
        "n_generate": 8, "n_sde_steps": 5, "buffer_size": 20, "n_init": 8, "sigma_min": 0.01,
        "sigma_max": 2.0, "checkpoint_every": 0, "dtype": "float64", "correction": "smc",
        "parametrisation": "energy", "smc_steps": 10, "smc_mcmc_steps": 2, "smc_step_size": 0.1}


@pytest.mark.parametrize("budget", [None, 200])
def test_idem_with_smc_keeps_the_sampler_contract(budget: int | None) -> None:
    torch.manual_seed(0)
    target = Tally()
    before = snapshot(target)
    cfg = dataclasses.replace(idem.Config(), **TINY)
    res = idem.sample(target, cfg, n_samples=16, budget=budget)
    check_result(res, 16, 2)
    check_counts(res, target, before)
    check_weights(res)
    assert res.diagnostics["n_net"] > 0 and res.diagnostics["smc_levels"] == 10
    if budget is not None:
        check_budget(res, budget)
    else:  # training plus the correction: 16 weights, 16 (1 + 2) at the last level's moves
        assert res.counts["n_energy"] == 3 * 2 * 8 * 4 + 16 * 4


def test_score_network_allows_ais_only_and_bad_settings_are_one_line_errors() -> None:
    base = dataclasses.replace(idem.Config(), **{**TINY, "smc_mcmc_steps": 0})
    with pytest.raises(UsageError, match="parametrisation=energy"):
        dataclasses.replace(base, parametrisation="score")
    with pytest.raises(UsageError, match="first-order-forward"):
        dataclasses.replace(base, smc_kernel="exact")
    ais = dataclasses.replace(base, parametrisation="score", smc_ess_threshold=0.0)
    torch.manual_seed(0)
    res = idem.sample(Tally(), ais, n_samples=16)
    check_weights(res)
    assert res.diagnostics["smc_n_resampled"] == 0
    with pytest.raises(UsageError, match="smc correction"):
        idem.sample(Tally(), base, n_samples=16, budget=40)  # a step costs 32, the weights 16
