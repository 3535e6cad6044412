"""The SMC engine: exact identities, resamplers, statistical tests against closed forms (each with
a broken variant that must fail) and the Monte Carlo rate of log Z."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from boltzkit.diffusion.kernels import gaussian_log_prob
from boltzkit.mc import smc as smc_module
from boltzkit.mc.mcmc import MALA
from boltzkit.mc.paths import Gaussian, GeometricPath, Path, TemperingPath
from boltzkit.mc.resampling import RESAMPLERS, counts_to_indices, inverse_cdf, offspring_counts
from boltzkit.mc.smc import (
    AdaptiveSchedule,
    MCMCMove,
    Move,
    Resampling,
    conditional_ess_fraction,
    smc,
)

Z_SCORE = 5.0  # thresholds are Z_SCORE standard errors (Bonferroni over the suite)


class ShiftedGaussian(Gaussian):
    """exp(c) N(mean, scale^2 I): unnormalised, log Z = c."""

    def __init__(self, dim: int, mean: float, scale: float, log_Z: float) -> None:
        super().__init__(dim, mean, scale)
        self.shift = log_Z

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return super()._log_prob(x) + self.shift

    def _log_Z(self) -> float:
        return self.shift


def gaussian_path(dim: int = 3, log_Z: float = 1.5) -> GeometricPath:
    return GeometricPath(Gaussian(dim, scale=1.5), ShiftedGaussian(dim, 1.0, 0.5, log_Z))


def z_stat(values: torch.Tensor, truth: float) -> float:
    """|mean - truth| in standard errors of the mean over replicas."""
    se = values.std() / math.sqrt(len(values))
    return float((values.mean() - truth).abs() / se)


def unbiased_stats(res: smc_module.SMCResult, log_Z: float) -> tuple[float, float]:
    """z-statistics of Z-hat/Z - 1 and of the unbiased mean estimate Z-hat/Z sum_i W_i x_i."""
    ratio = torch.exp(res.log_Z - log_Z)
    mean = ratio[:, None] * (res.log_w.exp()[..., None] * res.x).sum(1)
    return z_stat(ratio - 1, 0.0), z_stat(mean[:, 0], 1.0)


# ---- resamplers --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(RESAMPLERS))
def test_resampler_offspring_counts_are_unbiased(scheme: str) -> None:
    torch.manual_seed(0)
    n, reps = 8, 4000
    log_w = torch.log_softmax(torch.randn(n, dtype=torch.float64) * 1.5, 0)
    counts = offspring_counts(RESAMPLERS[scheme](log_w.expand(reps, n).contiguous()))
    assert bool((counts.sum(-1) == n).all())
    expected = n * log_w.exp()
    se = counts.double().std(0) / math.sqrt(reps)
    assert float(((counts.double().mean(0) - expected).abs() / se).max()) < Z_SCORE


def test_broken_resampler_fails_the_offspring_test() -> None:
    """Systematic resampling with the uniform frozen at 1/2 is biased; the test must see it."""
    torch.manual_seed(0)
    n, reps = 8, 4000
    log_w = torch.log_softmax(torch.randn(n, dtype=torch.float64) * 1.5, 0)
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    idx = inverse_cdf(log_w.expand(reps, n), u.expand(reps, n))
    # Frozen u makes the counts deterministic: any deviation from N W is a bias.
    deviation = (offspring_counts(idx).double().mean(0) - n * log_w.exp()).abs()
    se = offspring_counts(idx).double().std(0) / math.sqrt(reps) + 1e-12
    assert float((deviation / se).max()) > Z_SCORE


def test_systematic_counts_are_floor_or_ceil_of_n_w() -> None:
    torch.manual_seed(1)
    n = 50
    log_w = torch.log_softmax(torch.randn(200, n, dtype=torch.float64) * 2, -1)
    nw = n * log_w.exp()
    counts = offspring_counts(RESAMPLERS["systematic"](log_w)).double()
    assert bool(((counts == nw.floor()) | (counts == nw.ceil())).all())
    residual = offspring_counts(RESAMPLERS["residual"](log_w)).double()
    assert bool((residual >= nw.floor()).all())


def test_counts_to_indices_round_trip_and_zero_weights() -> None:
    counts = torch.tensor([[0, 3, 0, 1], [4, 0, 0, 0]])
    idx = counts_to_indices(counts)
    assert idx.tolist() == [[1, 1, 1, 3], [0, 0, 0, 0]]
    assert torch.equal(offspring_counts(idx), counts)
    log_w = torch.log(torch.tensor([[0.0, 0.5, 0.0, 0.5]], dtype=torch.float64))
    for resample in RESAMPLERS.values():
        assert set(resample(log_w.expand(100, 4).contiguous()).unique().tolist()) <= {1, 3}


# ---- exact identities --------------------------------------------------------------------------


def test_perfect_proposal_gives_ess_n_and_exact_log_Z() -> None:
    torch.manual_seed(0)
    path = GeometricPath(Gaussian(4, 1.0, 0.5), ShiftedGaussian(4, 1.0, 0.5, log_Z=-2.25))
    res = smc(path, torch.tensor([0.0, 1.0]), n_particles=500, n_replicas=3,
              resampling=Resampling(ess_threshold=0.0))
    assert torch.allclose(res.diagnostics.ess, torch.full_like(res.diagnostics.ess, 500.0),
                          rtol=1e-12)
    assert torch.allclose(res.log_Z, torch.full_like(res.log_Z, -2.25), rtol=0, atol=1e-12)


def test_ais_with_identity_moves_telescopes() -> None:
    torch.manual_seed(0)
    path = gaussian_path()
    grid = torch.linspace(0, 1, 7, dtype=torch.float64) ** 2
    res = smc(path, grid, n_particles=300, resampling=Resampling(ess_threshold=0.0))
    log_w = path.target.log_prob(res.x) - path.reference.log_prob(res.x)
    assert torch.allclose(res.log_Z, torch.logsumexp(log_w, 0) - math.log(300), atol=1e-10)
    assert torch.allclose(res.log_w, torch.log_softmax(log_w, 0), atol=1e-10)
    assert torch.equal(res.diagnostics.lam, grid)


def test_thresholds_one_and_zero_mean_always_and_never() -> None:
    torch.manual_seed(0)
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    always = smc(gaussian_path(), grid, n_particles=100, resampling=Resampling(ess_threshold=1.0))
    never = smc(gaussian_path(), grid, n_particles=100, resampling=Resampling(ess_threshold=0.0))
    assert bool(always.diagnostics.resampled.all())
    assert not bool(never.diagnostics.resampled.any())
    assert bool((always.diagnostics.n_unique < 100).all())
    assert torch.allclose(always.log_w, torch.full_like(always.log_w, -math.log(100)))


# ---- statistical tests against closed forms ----------------------------------------------------


def test_importance_sampling_recovers_Z_and_mean() -> None:
    torch.manual_seed(0)
    res = smc(gaussian_path(), torch.tensor([0.0, 1.0]), n_particles=200, n_replicas=400,
              resampling=Resampling(ess_threshold=0.0))
    z_Z, z_mean = unbiased_stats(res, 1.5)
    assert z_Z < Z_SCORE and z_mean < Z_SCORE


def _mala_move() -> MCMCMove:
    # No adaptation: a kernel tuned on the particles would make Z-hat biased at O(1/N).
    return MCMCMove(MALA(step_size=0.1), n_steps=2, adapt=False)


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_ais_and_smc_recover_Z_and_mean(threshold: float) -> None:
    torch.manual_seed(1)
    grid = torch.linspace(0, 1, 6, dtype=torch.float64)
    res = smc(gaussian_path(), grid, n_particles=100, n_replicas=400, mcmc=_mala_move(),
              resampling=Resampling("systematic", threshold))
    assert (threshold > 0) == bool(res.diagnostics.resampled.any())
    z_Z, z_mean = unbiased_stats(res, 1.5)
    assert z_Z < Z_SCORE and z_mean < Z_SCORE


def test_weights_not_reset_after_resampling_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smc_module, "_reset_weights", lambda log_w, fired: log_w)
    torch.manual_seed(1)
    grid = torch.linspace(0, 1, 6, dtype=torch.float64)
    res = smc(gaussian_path(), grid, n_particles=100, n_replicas=400, mcmc=_mala_move(),
              resampling=Resampling("systematic", 0.5))
    z_Z, z_mean = unbiased_stats(res, 1.5)
    assert max(z_Z, z_mean) > Z_SCORE


@dataclass(frozen=True)
class AR1:
    """M(x' | x) = N(x'; rho x, v I), an autoregressive proposal."""

    rho: float = 0.9
    var: float = 0.1
    deterministic: ClassVar[bool] = False

    def propose(self, x: torch.Tensor, src: object, dst: object) -> Move:
        x_new = self.rho * x + math.sqrt(self.var) * torch.randn_like(x)
        return Move(x_new, gaussian_log_prob(x_new, self.rho * x, self.var))


@dataclass(frozen=True)
class AR1Backward:
    """L(x | x') = N(x; rho x', v I); `swapped` evaluates it the wrong way round, N(x'; rho x, v),
    which is not a density in x (the classic bug of reusing the forward density)."""

    rho: float = 0.9
    var: float = 0.1
    swapped: bool = False

    def log_prob(self, x_prev: torch.Tensor, x_new: torch.Tensor, src: object,
                 dst: object) -> torch.Tensor:
        if self.swapped:
            return gaussian_log_prob(x_new, self.rho * x_prev, self.var)
        return gaussian_log_prob(x_prev, self.rho * x_new, self.var)


@pytest.mark.parametrize("swapped", [False, True])
def test_stochastic_proposal_with_backward_kernel(swapped: bool) -> None:
    torch.manual_seed(2)
    grid = torch.linspace(0, 1, 4, dtype=torch.float64)
    res = smc(gaussian_path(), grid, n_particles=100, n_replicas=1000, proposal=AR1(),
              backward=AR1Backward(swapped=swapped), resampling=Resampling("multinomial", 0.5))
    z_Z, z_mean = unbiased_stats(res, 1.5)
    if swapped:
        assert max(z_Z, z_mean) > Z_SCORE
    else:
        assert z_Z < Z_SCORE and z_mean < Z_SCORE


def test_adaptive_tempering_hits_the_conditional_ess_and_recovers_Z() -> None:
    torch.manual_seed(3)
    path = gaussian_path(dim=5)
    res = smc(path, AdaptiveSchedule(cess_fraction=0.6), n_particles=300, n_replicas=200,
              mcmc=MCMCMove(MALA(step_size=0.1), n_steps=2))
    lam = res.diagnostics.lam
    assert bool((lam[-1] == 1).all()) and bool((lam.diff(dim=0) >= 0).all())
    assert lam.shape[0] > 3  # the schedule really was adapted
    assert bool((res.diagnostics.step_size[-1] != 0.1).all())  # and the step size too
    # Adaptive levels and step sizes bias Z-hat at O(1/N) only, far below this test's SE.
    z_Z, z_mean = unbiased_stats(res, 1.5)
    assert z_Z < Z_SCORE and z_mean < Z_SCORE


def test_next_lambda_meets_the_target_conditional_ess() -> None:
    torch.manual_seed(0)
    path = gaussian_path(dim=5)
    x = path.reference.sample(400).reshape(2, 200, 5)
    log_w = torch.log_softmax(torch.randn(2, 200, dtype=torch.float64), -1)
    log_g = path.reference.log_prob(x)
    lam = torch.tensor([0.0, 0.3], dtype=torch.float64)
    log_g = path.level(lam).log_prob(x)
    f = path.log_prob_fn(x)
    nxt = smc_module.next_lambda(lam, log_w, log_g, f, AdaptiveSchedule(0.5))
    assert bool((nxt > lam).all())
    cess = conditional_ess_fraction(log_w, f(nxt) - log_g)
    assert torch.allclose(cess, torch.full_like(cess, 0.5), atol=1e-6)


class TemperableGaussian(ShiftedGaussian):
    """exp(c) N(mean, s^2 I) with exact samples and normaliser of every tempered version."""

    exact_tempered_sampler = True

    def _tempered_sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.mean + self.scale * math.sqrt(float(self.temperature)) * eps

    def _tempered_log_Z(self, temperature: float) -> float:
        # integral of (e^c N(x; m, s^2))^(1/T) dx
        s2 = self.scale**2
        return (self.shift / temperature + 0.5 * self.dim * (
            math.log(2 * math.pi * s2 * temperature) - math.log(2 * math.pi * s2) / temperature))


def test_tempering_path_recovers_Z_from_a_hot_start() -> None:
    torch.manual_seed(5)
    target = TemperableGaussian(3, 1.0, 0.5, log_Z=1.5)
    grid = torch.linspace(0, 1, 6, dtype=torch.float64)
    res = smc(TemperingPath(target, beta_0=0.25), grid, n_particles=100, n_replicas=400,
              mcmc=_mala_move(), resampling=Resampling("systematic", 0.5))
    z_Z, z_mean = unbiased_stats(res, 1.5)
    assert z_Z < Z_SCORE and z_mean < Z_SCORE


# ---- convergence order -------------------------------------------------------------------------


def test_smc_log_Z_error_falls_like_n_to_the_minus_half() -> None:
    """Regress log RMSE(log Z-hat) on log N; the slope's SE comes from each point's SE
    (delta method on the squared errors), the threshold is Z_SCORE of it."""
    torch.manual_seed(4)
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    sizes = [32, 64, 128, 256, 512, 1024]
    reps = 300
    log_rmse, var_log_rmse = [], []
    for n in sizes:
        res = smc(gaussian_path(dim=2), grid, n_particles=n, n_replicas=reps, mcmc=_mala_move(),
                  resampling=Resampling("systematic", 0.5))
        sq = (res.log_Z - 1.5) ** 2
        log_rmse.append(0.5 * math.log(float(sq.mean())))
        var_log_rmse.append(float(sq.var() / reps / (4 * sq.mean() ** 2)))
    x = torch.log(torch.tensor(sizes, dtype=torch.float64))
    y, w = torch.tensor(log_rmse), 1 / torch.tensor(var_log_rmse)
    xm = (w * x).sum() / w.sum()
    slope = float((w * (x - xm) * y).sum() / (w * (x - xm) ** 2).sum())
    se = float(1 / torch.sqrt((w * (x - xm) ** 2).sum()))
    assert abs(slope + 0.5) < Z_SCORE * se, (slope, se)
    assert se < 0.1  # the test has the power to tell -1/2 from -1/4 or -1


# ---- replicas, budgets, score-only levels ------------------------------------------------------


def test_replica_dim_is_dropped_without_n_replicas() -> None:
    torch.manual_seed(0)
    res = smc(gaussian_path(), torch.tensor([0.0, 0.5, 1.0]), n_particles=50)
    assert res.x.shape == (50, 3) and res.log_w.shape == (50,) and res.log_Z.shape == ()
    assert res.diagnostics.ess.shape == (2,) and res.diagnostics.lam.shape == (3,)
    assert res.log_w.dtype == torch.float64


def test_budget_jumps_to_the_target_and_counts_evaluations() -> None:
    torch.manual_seed(0)
    path = gaussian_path()
    path.target.log_prob(torch.zeros(50, 3))  # spent before: not charged to this run
    res = smc(path, AdaptiveSchedule(0.9), n_particles=100, budget=700,
              mcmc=MCMCMove(MALA(step_size=0.1), n_steps=1))
    assert res.diagnostics.stopped_by_budget
    assert float(res.diagnostics.lam[-1]) == 1.0
    spent = int(res.diagnostics.counts["n_target"].sum())
    assert spent == path.target.counter.n_energy - 50
    assert 700 - 300 < spent <= 700  # levels cost 300 (reweight, init, step); the jump 100


class ScoreOnlyPath(Path):
    """A three-level path whose middle level has no log-density."""

    def __init__(self) -> None:
        self.inner = gaussian_path()
        self.target = self.inner.target
        self.grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def level(self, lam: torch.Tensor):  # noqa: ANN201
        level = self.inner.level(lam)
        if float(lam.reshape(-1)[0]) == 0.5:
            level.has_log_prob = False
        return level


def test_levels_without_log_density_telescope_in_ais_only() -> None:
    torch.manual_seed(0)
    path = ScoreOnlyPath()
    res = smc(path, proposal=AR1(), backward=AR1Backward(), n_particles=50,
              resampling=Resampling(ess_threshold=0.0))
    assert bool(torch.isfinite(res.log_Z))
    with pytest.raises(ValueError, match="no log-density"):
        smc(path, proposal=AR1(), backward=AR1Backward(), n_particles=50)


def test_configuration_errors() -> None:
    path = gaussian_path()
    with pytest.raises(ValueError, match="backward kernel"):
        smc(path, torch.tensor([0.0, 1.0]), n_particles=10, proposal=AR1())
    with pytest.raises(ValueError, match="adaptive schedule"):
        smc(path, AdaptiveSchedule(), n_particles=10, proposal=AR1(), backward=AR1Backward())
    with pytest.raises(ValueError, match="from 0 to 1"):
        smc(path, torch.tensor([0.0, 0.5]), n_particles=10)
    with pytest.raises(KeyError, match="valid"):
        Resampling("bogus")
