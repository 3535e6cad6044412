"""The reverse SDE (Euler-Maruyama): weak order one with the exact score, the damped-noise
heuristic as a broken variant, the same step as the SMC proposal `EulerMaruyama`, COM-free
particle output, and the time grid."""

from __future__ import annotations

import math

import pytest
import torch

from boltzkit.diffusion.kernels import EulerMaruyama
from boltzkit.diffusion.schedules import PerfectModel, VESchedule, VPSchedule
from boltzkit.diffusion.sde import reverse_sde, reverse_sde_step, uniform_times
from boltzkit.mc.noise import Particles
from boltzkit.mc.paths import DiffusionPath
from boltzkit.targets.mixtures import two_modes

Z = 5.0  # z-score threshold


def _gaussian_score(schedule: VESchedule, m: float, s2: float):  # noqa: ANN202
    """The noised score of N(m, s2 I) under a VE schedule: -(x - m) / (s2 + sigma_t^2)."""
    return lambda x, t: -(x - m) / (s2 + float(schedule.sigma(t)) ** 2)


def _variance_error(n_steps: int, noise_scale: float = 1.0, n: int = 20_000):  # noqa: ANN202
    sch = VESchedule(0.5, 4.0)
    x1 = 1.0 + math.sqrt(0.25 + sch.prior_std**2) * torch.randn(n, 4, dtype=torch.float64)
    x0 = reverse_sde(_gaussian_score(sch, 1.0, 0.25), x1, sch, n_steps, noise_scale=noise_scale)
    var = (x0 - 1.0).square().mean()
    se = (x0 - 1.0).square().std() / math.sqrt(x0.numel())
    return float(var - 0.25), float(se), float(x0.mean() - 1.0)


def test_reverse_sde_with_exact_score_returns_the_gaussian_with_weak_order_one() -> None:
    torch.manual_seed(4)
    steps = [8, 16, 32, 64]
    errs = [_variance_error(n) for n in steps]
    for err, se, mean_err in errs:
        assert abs(err) > Z * se, "errors must dominate Monte Carlo noise for the slope"
        assert abs(mean_err) < Z * 0.5 / math.sqrt(80_000)
    slope = torch.linalg.lstsq(torch.tensor([[math.log(n), 1.0] for n in steps]),
                               torch.tensor([abs(e) for e, _, _ in errs]).log()[:, None]
                               ).solution[0].item()
    assert -1.5 < slope < -0.75, (slope, errs)
    assert abs(errs[-1][0]) < 0.015  # 0.0085 by the exact Euler-Maruyama variance recursion


def test_damped_noise_sde_does_not_converge_to_the_target() -> None:
    """Broken variant for the test above: the noise_scale < 1 heuristic shrinks the law."""
    torch.manual_seed(5)
    err, se, _ = _variance_error(64, noise_scale=0.9)
    assert err < -0.02 and abs(err) > Z * se, (err, se)


@pytest.mark.parametrize("schedule", [VPSchedule(), VESchedule(0.01, 3.0)], ids=["vp", "ve"])
def test_reverse_sde_step_is_the_smc_euler_maruyama_proposal(schedule) -> None:  # noqa: ANN001
    """Same seed, same state: the reverse-SDE step and the SMC kernel's proposal agree."""
    data = two_modes(2, 1.5)
    model = PerfectModel(data, schedule)
    path = DiffusionPath(model, data, torch.tensor([1.0, 0.6, 0.0], dtype=torch.float64))
    src, dst = path.level(torch.tensor([0.4], dtype=torch.float64)), path.level(
        torch.tensor([1.0], dtype=torch.float64))
    assert math.isclose(src.t, 0.6) and dst.t == 0.0
    x = torch.randn(50, 2, dtype=torch.float64)
    torch.manual_seed(1)
    proposal = EulerMaruyama().propose(x, src, dst).x
    torch.manual_seed(1)
    step = reverse_sde_step(model.score, x, schedule, src.t, dst.t)
    torch.testing.assert_close(step, proposal, rtol=1e-14, atol=1e-14)


def test_particle_output_is_com_free_and_a_new_tensor() -> None:
    torch.manual_seed(2)
    p, sch = Particles(4, 3), VESchedule(0.01, 2.0)
    x1 = sch.prior_std * torch.randn(6, 12, dtype=torch.float64)
    x1_copy = x1.clone()
    x0 = reverse_sde(lambda x, t: -x + 0.3, x1, sch, 5, particles=p)  # a drift with a COM part
    assert x0.view(6, 4, 3).sum(1).abs().max() < 1e-12
    assert torch.equal(x1, x1_copy)


def test_uniform_times() -> None:
    times = uniform_times(1.0, 49)
    assert len(times) == 50 and times[0] == 1.0 and times[-1] == 0.0
    assert all(a > b for a, b in zip(times[:-1], times[1:], strict=True))
    assert times[:3] == [1.0 - k * (1.0 / 49) for k in range(3)]
    with pytest.raises(ValueError, match="n_steps"):
        uniform_times(1.0, 0)
