"""Noise schedules, time grids and denoising kernels against closed forms: SDE consistency,
exact identities on the exact path, log-determinants against finite differences, and the weak
order of Euler-Maruyama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from boltzkit.diffusion.kernels import (
    DDPM,
    KERNELS,
    EulerMaruyama,
    ExactGMM,
    FirstOrder,
    NoisingKernel,
    SecondOrder,
    lowrank_gaussian_move,
    make_kernel,
)
from boltzkit.diffusion.schedules import PerfectModel, VESchedule, VPSchedule, time_grid
from boltzkit.mc.paths import DiffusionPath
from boltzkit.mc.smc import Resampling, smc
from boltzkit.targets.base import Target
from boltzkit.targets.gmm import GaussianMixture
from boltzkit.targets.mixtures import two_modes

SCHEDULES = [VPSchedule(), VESchedule(sigma_min=0.01, sigma_max=5.0)]


class Shifted(Target):
    """exp(c) p(x): the target with log Z = c, for exact log Z checks."""

    def __init__(self, inner: Target, log_Z: float) -> None:
        super().__init__(inner.dim)
        self.inner, self.shift = inner, log_Z

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._log_prob(x) + self.shift

    def _log_Z(self) -> float:
        return self.shift


class DenseModel(PerfectModel):
    """The perfect model without the low-rank shortcut (forces the dense code paths)."""

    def posterior_covariance_lowrank(self, x, t):  # noqa: ANN001, ANN201
        return None


def step_levels(model: PerfectModel, target: Target, t: float, s: float):  # noqa: ANN201
    path = DiffusionPath(model, target, torch.tensor([model.schedule.t_max, t, s, 0.0])
                         if s > 0 else torch.tensor([model.schedule.t_max, t, 0.0]))
    lam = lambda u: torch.tensor([1 - u / model.schedule.t_max], dtype=torch.float64)  # noqa: E731
    return path.level(lam(t)), path.level(lam(s))


# ---- schedules and grids -----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "ve"])
def test_schedule_is_the_marginal_of_its_sde(schedule) -> None:  # noqa: ANN001
    """d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2, by central differences."""
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)
    h = 1e-6
    d_alpha = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    d_var = (schedule.sigma(t + h) ** 2 - schedule.sigma(t - h) ** 2) / (2 * h)
    f, g = schedule.drift(t), schedule.diffusion(t)
    assert torch.allclose(d_alpha, f * schedule.alpha(t), rtol=1e-6, atol=1e-9)
    assert torch.allclose(d_var, 2 * f * schedule.sigma(t) ** 2 + g**2, rtol=1e-6)
    assert float(schedule.sigma(0.0)) == 0.0 and float(schedule.alpha(0.0)) == 1.0


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "ve"])
def test_squared_diffusion_and_vectorised_times_keep_the_input_dtype(schedule) -> None:  # noqa: ANN001
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(schedule.diffusion_squared(t), schedule.diffusion(t) ** 2,
                               rtol=1e-13, atol=0)
    if isinstance(schedule, VESchedule):  # alpha = 1: g^2 = d sigma^2 / dt, by autograd
        (d_var,) = torch.autograd.grad(schedule.sigma(t[1:]).square().sum(), t)
        torch.testing.assert_close(schedule.diffusion_squared(t.detach())[1:], d_var[1:])
    t32 = t.detach().float()
    for fn in (schedule.sigma, schedule.alpha, schedule.drift, schedule.diffusion_squared):
        out = fn(t32)
        assert out.dtype == torch.float32 and out.shape == (5,)
        torch.testing.assert_close(out.double(), fn(t.detach()), rtol=1e-6, atol=1e-6)
    assert fn(0.5).dtype == torch.float64 and fn(torch.tensor(1)).dtype == torch.float64


def test_ve_schedule_prior_std_and_validation() -> None:
    ve = VESchedule(0.01, 2.0)
    assert math.isclose(ve.prior_std, 0.01 * math.sqrt(200.0**2 - 1), rel_tol=1e-12)
    for bad in [(1.0, 0.5), (0.0, 1.0), (1.0, 1.0)]:
        with pytest.raises(ValueError, match="sigma_min < sigma_max"):
            VESchedule(*bad)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "ve"])
def test_transitions_compose_and_match_the_marginals(schedule) -> None:  # noqa: ANN001
    r, s, t = 0.1, 0.35, 0.8
    a_sr, v_sr = schedule.transition(r, s)
    a_ts, v_ts = schedule.transition(s, t)
    a_tr, v_tr = schedule.transition(r, t)
    assert torch.allclose(a_tr, a_ts * a_sr, rtol=1e-12)
    assert torch.allclose(v_tr, v_ts + a_ts**2 * v_sr, rtol=1e-12)
    a_t0, v_t0 = schedule.transition(0.0, t)
    assert torch.allclose(a_t0, schedule.alpha(t)) and torch.allclose(v_t0, schedule.sigma(t) ** 2)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=["vp", "ve"])
def test_log_snr_inverts(schedule) -> None:  # noqa: ANN001
    t = torch.linspace(0.01, 1.0, 17, dtype=torch.float64)
    lam = schedule.log_snr(t)
    assert bool((lam.diff() < 0).all())
    assert torch.allclose(schedule.time_of_log_snr(lam), t, rtol=1e-10)
    assert torch.allclose(lam, torch.log(schedule.alpha(t) ** 2 / schedule.sigma(t) ** 2))


@pytest.mark.parametrize("kind", ["uniform", "log_snr", "edm"])
def test_time_grids(kind: str) -> None:
    vp = VPSchedule()
    t = time_grid(vp, 10, kind, t_min=0.01, rho=7.0)
    assert t.shape == (11,) and float(t[0]) == 1.0 and float(t[-2]) == 0.01 and float(t[-1]) == 0
    assert bool((t.diff() < 0).all())
    inner = t[:-1]
    spacing = {"uniform": inner, "log_snr": vp.log_snr(inner),
               "edm": torch.exp(-vp.log_snr(inner) / 2) ** (1 / 7.0)}[kind]
    assert torch.allclose(spacing.diff(), spacing.diff()[:1].expand(9), rtol=1e-8)
    with pytest.raises(ValueError, match="t_min"):
        time_grid(vp, 10, kind, t_min=1.5)


# ---- the perfect model -------------------------------------------------------------------------


def test_perfect_model_covariance_forms_agree() -> None:
    gmm = two_modes(4, 1.0, "rotated")
    model, x = PerfectModel(gmm, VPSchedule()), gmm.sample(5)
    c, u = model.posterior_covariance_lowrank(x, 0.3)
    dense = model.posterior_covariance(x, 0.3)
    assert torch.allclose(c + u @ u.mT, dense, atol=1e-12)
    assert torch.allclose(model.posterior_covariance(x, 0.3, diagonal=True),
                          torch.diagonal(dense, dim1=-2, dim2=-1), atol=1e-12)
    h = 1e-6
    eye = torch.eye(4, dtype=torch.float64)
    fd = torch.stack([(model.denoiser(x + h * e, 0.3) - model.denoiser(x - h * e, 0.3)) / (2 * h)
                      for e in eye], -1)
    assert torch.allclose(model.denoiser_jacobian(x, 0.3), fd, atol=1e-7)


# ---- kernels -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("s", [0.35, 0.0])
def test_kernel_contract(name: str, s: float) -> None:
    torch.manual_seed(0)
    gmm = two_modes(3, 1.5)
    model = PerfectModel(gmm, VPSchedule())
    src, dst = step_levels(model, gmm, 0.5, s)
    x = model.marginal(0.5).sample(7).reshape(7, 3)
    move = make_kernel(name).propose(x, src, dst)
    assert move.x.shape == (7, 3) and move.log_q.shape == (7,)
    assert move.x.dtype == move.log_q.dtype == torch.float64
    assert bool(torch.isfinite(move.x).all() and torch.isfinite(move.log_q).all())
    if not make_kernel(name).deterministic:
        log_l = NoisingKernel().log_prob(x, move.x, src, dst)
        assert log_l.shape == (7,) and bool(torch.isfinite(log_l).all())


@pytest.mark.parametrize("name", ["ddim", "pf-euler"])
@pytest.mark.parametrize("model_cls", [PerfectModel, DenseModel], ids=["lowrank", "dense"])
def test_transport_log_det_matches_finite_differences(name: str, model_cls: type) -> None:
    torch.manual_seed(0)
    gmm = two_modes(3, 1.0, "rotated")
    model = model_cls(gmm, VPSchedule())
    src, dst = step_levels(model, gmm, 0.4, 0.3)
    kernel = make_kernel(name)
    x = model.marginal(0.4).sample(4)
    move = kernel.propose(x, src, dst)
    h, eye = 1e-6, torch.eye(3, dtype=torch.float64)
    jac = torch.stack([(kernel.propose(x + h * e, src, dst).x - kernel.propose(x - h * e, src,
                                                                                dst).x) / (2 * h)
                       for e in eye], -1)
    assert torch.allclose(-move.log_q, torch.linalg.slogdet(jac)[1], atol=1e-6)


def test_lowrank_gaussian_density_and_law() -> None:
    torch.manual_seed(0)
    d, k = 5, 2
    a = torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64))
    u = torch.randn(d, k, dtype=torch.float64)
    mean = torch.ones(20000, d, dtype=torch.float64)
    move = lowrank_gaussian_move(mean, a, u.expand(20000, d, k))
    cov = a + u @ u.T
    exact = torch.distributions.MultivariateNormal(mean[0], cov)
    assert torch.allclose(move.log_q, exact.log_prob(move.x), atol=1e-10)
    z = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (move.x - mean).T, upper=False)
    se = 1 / math.sqrt(20000)
    assert float(z.mean(1).abs().max()) < 5 * se
    assert float((z.var(1) - 1).abs().max()) < 5 * math.sqrt(2) * se


def test_ddpm_is_first_order_with_ratio_variance() -> None:
    gmm = two_modes(3, 1.5)
    model = PerfectModel(gmm, VPSchedule())
    src, dst = step_levels(model, gmm, 0.5, 0.4)
    x = model.marginal(0.5).sample(6)
    m1, v1 = DDPM().mean_and_var(x, src, dst)
    m2, v2 = FirstOrder("ratio").mean_and_var(x, src, dst)
    assert torch.allclose(m1, m2, atol=1e-12) and math.isclose(v1, v2, rel_tol=1e-12)
    src0, dst0 = step_levels(model, gmm, 0.5, 0.0)
    _, v0 = FirstOrder("ratio").mean_and_var(x, src0, dst0)
    assert v0 > 0  # never a zero-variance step ending at t = 0


# ---- exact identities on the exact path ----------------------------------------------------------


def exact_path(mixture: GaussianMixture, log_Z: float, n_steps: int = 6,
               model_cls: type = PerfectModel) -> DiffusionPath:
    vp = VPSchedule()
    return DiffusionPath(model_cls(mixture, vp), Shifted(mixture, log_Z),
                         time_grid(vp, n_steps, "log_snr", t_min=1e-3))


def test_exact_kernel_on_exact_path_has_constant_weights_and_exact_log_Z() -> None:
    torch.manual_seed(0)
    path = exact_path(two_modes(4, 2.0), log_Z=0.75)
    res = smc(path, n_particles=400, n_replicas=2, proposal=ExactGMM(), backward=NoisingKernel(),
              resampling=Resampling(ess_threshold=1.0))
    assert torch.allclose(res.diagnostics.ess, torch.full_like(res.diagnostics.ess, 400.0),
                          rtol=1e-10)
    assert torch.allclose(res.log_Z, torch.full_like(res.log_Z, 0.75), rtol=0, atol=1e-10)
    assert torch.allclose(res.log_W, torch.full_like(res.log_W, -math.log(400)), atol=1e-10)


@pytest.mark.parametrize("kernel", [SecondOrder("full"), SecondOrder("diagonal")])
@pytest.mark.parametrize("model_cls", [PerfectModel, DenseModel], ids=["lowrank", "dense"])
def test_second_order_is_exact_for_gaussian_data(kernel: SecondOrder, model_cls: type) -> None:
    """p(x_s | x_t) is Gaussian for Gaussian data, and second order matches its two moments
    (a diagonal data covariance keeps the diagonal variant exact)."""
    torch.manual_seed(0)
    gauss = GaussianMixture([1.0], torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64),
                            [0.3, 1.0, 2.0])
    res = smc(exact_path(gauss, -1.25, model_cls=model_cls), n_particles=300, proposal=kernel,
              backward=NoisingKernel())
    assert torch.allclose(res.diagnostics.ess, torch.full_like(res.diagnostics.ess, 300.0),
                          rtol=1e-9)
    assert abs(float(res.log_Z) + 1.25) < 1e-9


def test_wrong_backward_kernel_breaks_the_exact_identity() -> None:
    """The noising density evaluated the wrong way round, N(x_s; a x_t, v), is not a density
    in x_t: weights stop being constant and log Z is off."""

    class Swapped(NoisingKernel):
        def log_prob(self, x_prev, x_new, src, dst):  # noqa: ANN001, ANN201
            return super().log_prob(x_new, x_prev, src, dst)

    torch.manual_seed(0)
    res = smc(exact_path(two_modes(4, 2.0), 0.0), n_particles=400, proposal=ExactGMM(),
              backward=Swapped())
    assert float(res.diagnostics.ess.min()) < 0.9 * 400
    assert abs(float(res.log_Z)) > 0.5


# ---- convergence order -------------------------------------------------------------------------


def test_euler_maruyama_has_weak_order_one() -> None:
    """Gaussian data make every Euler-Maruyama step affine-Gaussian, so the law of the sample at
    t = 0 is propagated exactly; its variance error is regressed on the step size."""
    vp = VPSchedule()
    data = GaussianMixture([1.0], torch.tensor([[0.7]], dtype=torch.float64), 0.4)
    model = PerfectModel(data, vp)
    errors, steps = [], [16, 32, 64, 128, 256]
    for n in steps:
        times = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
        path = DiffusionPath(model, data, times)
        mean, var = vp.alpha(1.0) * 0.7, vp.alpha(1.0) ** 2 * 0.16 + vp.sigma(1.0) ** 2
        for k in range(n):
            src, dst = (path.level(torch.tensor([float(g)])) for g in path.grid[k:k + 2])
            m, v = EulerMaruyama().mean_and_var(torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                                                src, dst)
            slope, icpt = m[1, 0] - m[0, 0], m[0, 0]
            mean, var = slope * mean + icpt, slope**2 * var + v
        errors.append(abs(float(var) - 0.16) + abs(float(mean) - 0.7))
    order = float(np.polyfit(np.log(1.0 / np.array(steps)), np.log(errors), 1)[0])
    assert abs(order - 1.0) < 0.1, (order, errors)
