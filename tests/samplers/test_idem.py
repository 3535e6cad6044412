"""iDEM: the Monte Carlo score estimator against closed forms, clipping, the FIFO buffer, the
shared schedule and reverse SDE against the pre-refactor implementation (float64, same seed),
budgets, checkpoint/resume, presets, and an end-to-end GMM run. The reverse SDE's weak order is
tested in tests/diffusion/test_sde.py."""

import dataclasses
import math

import pytest
import torch

from boltzkit.core.errors import UsageError
from boltzkit.diffusion.schedules import VESchedule
from boltzkit.diffusion.sde import reverse_sde
from boltzkit.mc.noise import Particles, gaussian_noise, standard_normal
from boltzkit.samplers import idem
from boltzkit.samplers.idem.core import (
    _combine,
    buffer_init,
    buffer_push,
    buffer_sample,
    clip_norm,
    dem_loss,
    loss_weight,
    mc_score,
)
from boltzkit.targets.base import Target

Z = 5.0  # z-score threshold (Bonferroni over the checks of one test)


class Gaussian(Target):
    """N(m, s2 I); its noised score at level sigma is -(x - m) / (s2 + sigma^2)."""

    name = "gaussian"

    def __init__(self, dim: int, m: float, s2: float) -> None:
        super().__init__(dim)
        self.m, self.s2 = m, s2

    def _log_prob(self, x):
        return -0.5 * (x - self.m).square().sum(-1) / self.s2

    def noised_score(self, x, sigma):
        return -(x - self.m) / (self.s2 + sigma**2)


class PairWell(Target):
    """A soft 4-particle 2-D pair double well (a stand-in for DW-4 with the same structure)."""

    name = "pair-well"
    n_particles, spatial_dim = 4, 2

    def __init__(self) -> None:
        super().__init__(8)

    def _log_prob(self, x):
        xp = x.view(*x.shape[:-1], 4, 2)
        i, j = torch.triu_indices(4, 4, 1)
        d = (xp[..., i, :] - xp[..., j, :]).norm(dim=-1)
        return -(0.1 * (d - 2) ** 4 - 0.5 * (d - 2) ** 2).sum(-1)


# ---- noise, clipping, loss ---------------------------------------------------------------
def test_com_free_noise_has_unit_variance_per_degree_of_freedom():
    torch.manual_seed(0)
    p = Particles(4, 3)
    eps = gaussian_noise((20000, 12), torch.empty(0, dtype=torch.float64), p)
    assert eps.view(-1, 4, 3).sum(1).abs().max() < 1e-12
    # E|eps|^2 = (n - 1) d for noise on the (n-1)d-dimensional COM-free subspace.
    sq = eps.square().sum(-1)
    assert abs(sq.mean() - 9.0) < Z * sq.std() / math.sqrt(len(sq))


def test_com_free_basis_is_orthonormal_and_large_draws_are_reproducible():
    p = Particles(5, 3)
    b = p.basis(torch.empty(0, dtype=torch.float64))
    torch.testing.assert_close(b @ b.T, torch.eye(12, dtype=torch.float64))
    assert (b.view(12, 5, 3).sum(1)).abs().max() < 1e-12
    threads = torch.get_num_threads()
    draws = []
    for n_threads in (1, 2):
        torch.set_num_threads(n_threads)
        torch.manual_seed(0)
        draws.append(standard_normal((1 << 20) + 3, torch.empty(0)))
    torch.set_num_threads(threads)
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    assert abs(draws[0].mean()) < Z / 1024 and abs(draws[0].std() - 1) < Z * 0.71 / 1024


def test_clipping_whole_vector_and_per_particle():
    v = torch.tensor([[3.0, 4.0, 0.3, 0.4], [0.0, 0.0, 6.0, 8.0]], dtype=torch.float64)
    whole = clip_norm(v, 2.0)
    torch.testing.assert_close(whole.norm(dim=-1), torch.full((2,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(whole / whole.norm(dim=-1, keepdim=True),
                               v / v.norm(dim=-1, keepdim=True))
    per = clip_norm(v, 2.0, Particles(2, 2), per_particle=True)
    torch.testing.assert_close(per, torch.tensor([[1.2, 1.6, 0.3, 0.4], [0.0, 0.0, 1.2, 1.6]],
                                                 dtype=torch.float64))
    assert clip_norm(v, None) is v
    with pytest.raises(ValueError):
        clip_norm(v, 1.0, None, per_particle=True)


def test_dem_loss_is_weighted_mean_squared_error():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    goal = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert math.isclose(float(dem_loss(pred, goal, torch.tensor([2.0, 1.0]))), (5.0 + 1.0) / 2)


# ---- Monte Carlo score estimator -------------------------------------------------------------
def test_chunk_combination_is_exact():
    torch.manual_seed(0)
    lp = torch.randn(6, 50, dtype=torch.float64) * 3
    lp[0, :30] = -math.inf  # a chunk with no mass
    s = torch.randn(6, 50, 2, dtype=torch.float64)
    lse = torch.full((6,), -math.inf, dtype=torch.float64)
    acc = torch.zeros(6, 2, dtype=torch.float64)
    for lo, hi in [(0, 30), (30, 45), (45, 50)]:
        lse_c = torch.logsumexp(lp[:, lo:hi], 1)
        w = torch.softmax(lp[:, lo:hi], 1).nan_to_num(0.0)
        lse, acc = _combine(lse, acc, lse_c, (w[..., None] * s[:, lo:hi]).sum(1))
    torch.testing.assert_close(lse, torch.logsumexp(lp, 1))
    torch.testing.assert_close(acc, (torch.softmax(lp, 1)[..., None] * s).sum(1))


@pytest.mark.parametrize("sigma_factor,should_pass", [(1.0, True), (1.3, False)],
                         ids=["exact", "broken-wrong-sigma"])
def test_estimator_matches_noised_gaussian_score_within_se(sigma_factor, should_pass):
    """Mean of R independent estimates per point vs the closed form, |err| <= 5 SE. The broken
    variant perturbs with the wrong noise level and must fail."""
    torch.manual_seed(1)
    target = Gaussian(3, m=0.5, s2=1.0)
    n_points, reps, k = 16, 100, 2000
    x = 0.5 + torch.randn(n_points, 3, dtype=torch.float64)
    sigma = torch.linspace(0.3, 1.0, n_points, dtype=torch.float64)
    est = mc_score(target.log_prob_and_score, x.repeat_interleave(reps, 0),
                   (sigma * sigma_factor).repeat_interleave(reps), k, max_elements=1 << 21)
    s = est.score.view(n_points, reps, 3)
    se = s.std(1) / math.sqrt(reps)
    z = ((s.mean(1) - target.noised_score(x, sigma[:, None])) / se).abs()
    assert (z.max() <= Z) == should_pass, f"max z = {z.max():.2f}"


def test_estimator_rmse_falls_like_k_to_the_minus_half():
    torch.manual_seed(2)
    target = Gaussian(2, m=0.0, s2=1.0)
    x = torch.randn(1000, 2, dtype=torch.float64)
    sigma = torch.full((1000,), 0.8, dtype=torch.float64)
    exact = target.noised_score(x, 0.8)
    ks = [50, 200, 800, 3200]
    rmse = [float((mc_score(target.log_prob_and_score, x, sigma, k).score - exact)
                  .square().mean().sqrt()) for k in ks]
    slope = torch.linalg.lstsq(torch.tensor([[math.log(k), 1.0] for k in ks]),
                               torch.tensor(rmse).log()[:, None]).solution[0].item()
    assert -0.6 < slope < -0.4, (slope, rmse)


def test_estimator_is_one_batched_call_and_chunks_under_the_memory_bound():
    target = Gaussian(4, m=0.0, s2=1.0)
    calls = []

    def spy(y):
        calls.append(y.shape[0])
        return target.log_prob_and_score(y)

    x = torch.randn(10, 4)
    mc_score(spy, x, torch.ones(10), 100, max_elements=1 << 20)
    assert calls == [1000]
    calls.clear()
    est = mc_score(spy, x, torch.ones(10), 100, max_elements=10 * 4 * 30)
    assert calls == [300, 300, 300, 100] and est.score.shape == (10, 4)


def test_estimator_particles_com_free_and_overlap_safe():
    torch.manual_seed(3)
    target = PairWell()
    x = Particles(4, 2).center(torch.randn(6, 8))
    x[0] = 0.0  # all particles on top of each other: infinite gradients have zero weight
    est = mc_score(target.log_prob_and_score, x, torch.full((6,), 0.5), 50,
                   particles=Particles(4, 2))
    assert torch.isfinite(est.score).all()
    assert est.score.view(6, 4, 2).sum(1).abs().max() < 1e-5
    assert ((est.ess >= 1 - 1e-6) & (est.ess <= 50 + 1e-6)).all()


# ---- replay buffer ---------------------------------------------------------------------------
def test_buffer_is_fifo_and_functional():
    buf = buffer_init(2, capacity=5)
    batches = [torch.full((3, 2), float(i)) for i in range(3)]
    states = [buf]
    for b in batches:
        states.append(buffer_push(states[-1], b))
    assert [len(s.data) for s in states] == [0, 3, 5, 5]
    torch.testing.assert_close(states[-1].data[:, 0], torch.tensor([1.0, 1, 2, 2, 2]))
    torch.testing.assert_close(states[1].data[:, 0], torch.zeros(3))  # old states unchanged
    draws = buffer_sample(states[-1], 1000)
    assert set(draws[:, 0].tolist()) == {1.0, 2.0}
    with pytest.raises(ValueError):
        buffer_sample(buf, 1)


# ---- the shared schedule and reverse SDE against the pre-refactor code -------------------------
class _FrozenGeometricSchedule:
    """Frozen copy of the removed `samplers.idem.core.GeometricSchedule` (commit 22b107a), kept
    only here as the reference that the shared `VESchedule` + `diffusion.sde.reverse_sde` must
    match."""

    def __init__(self, sigma_min, sigma_max):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def sigma(self, t):
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * self.log_ratio * t))

    def g2(self, t):
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
        return 2 * self.log_ratio * self.sigma_min**2 * torch.exp(2 * self.log_ratio * t)

    @property
    def prior_std(self):
        return float(self.sigma(1.0))


def _frozen_reverse_sde(score_fn, x1, schedule, n_steps, noise_scale=1.0, particles=None):
    """Frozen copy of the removed `samplers.idem.core.reverse_sde` loop (commit 22b107a)."""
    dt = 1.0 / n_steps
    x = x1.clone()
    for k in range(n_steps):
        t = 1.0 - k * dt
        g2 = float(schedule.g2(t))
        drift = score_fn(x, t)
        z = gaussian_noise(tuple(x.shape), x, particles)
        x = x + (g2 * dt) * drift + (noise_scale * math.sqrt(g2 * dt)) * z
    return particles.center(x) if particles is not None else x


# Values printed by the pre-refactor code (commit 22b107a) for the run in the test below.
_OLD_SDE_ROW0 = [-1.34965555928885483, -0.43177872922873595, 0.01332856057003558,
                 0.91548763607036610]


def test_shared_reverse_sde_reproduces_the_old_idem_loop_in_float64():
    """Same seed, float64: the shared VE schedule and reverse SDE give the old samples to 1e-10,
    with COM-free noise and damping; the score function draws random numbers (as S_K does), so
    the order of RNG use is checked too."""
    p = Particles(4, 2)
    runs = []
    for sch, sde in [(_FrozenGeometricSchedule(0.01, 2.0), _frozen_reverse_sde),
                     (VESchedule(0.01, 2.0), reverse_sde)]:
        torch.manual_seed(3)
        x1 = sch.prior_std * torch.randn(5, 8, dtype=torch.float64)
        runs.append(sde(lambda x, t, s=sch: -x / (1 + float(s.sigma(t)) ** 2), x1, sch, 7,
                        noise_scale=0.9, particles=p))
        torch.manual_seed(4)
        x1 = torch.randn(6, 3, dtype=torch.float64)
        runs.append(sde(lambda x, t: -x + 0.1 * torch.randn_like(x), x1, sch, 13))
    torch.testing.assert_close(runs[0][0, :4], torch.tensor(_OLD_SDE_ROW0, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    for old, new in [(runs[0], runs[2]), (runs[1], runs[3])]:
        assert old.abs().max() > 0.1
        torch.testing.assert_close(new, old, rtol=0, atol=1e-10)
    t = torch.rand(100, dtype=torch.float32)
    old_sch, new_sch = _FrozenGeometricSchedule(1e-5, 3.0), VESchedule(1e-5, 3.0)
    assert torch.equal(new_sch.sigma(t), old_sch.sigma(t))  # float32 stays float32, same bits
    assert torch.equal(loss_weight(new_sch, t, "sigma2"), loss_weight(old_sch, t, "sigma2"))
    assert new_sch.prior_std == old_sch.prior_std


@pytest.mark.parametrize("variant", [dict(), dict(init_buffer="estimator", noise_scale=0.9),
                                     dict(network="mlp", init_buffer="prior")],
                         ids=["egnn", "estimator-buffer", "mlp"])
def test_idem_run_reproduces_the_old_schedule_and_sde_in_float64(variant, monkeypatch):
    """A whole float64 run (training on generated buffers, then sampling) with the shared
    schedule and SDE equals the same run with the frozen pre-refactor ones, to 1e-10."""
    runs = []
    for frozen in (True, False):
        with monkeypatch.context() as m:
            if frozen:
                m.setattr(idem, "VESchedule", _FrozenGeometricSchedule)
                m.setattr(idem, "reverse_sde", _frozen_reverse_sde)
            torch.manual_seed(11)
            runs.append(idem.sample(PairWell(), _tiny(dtype="float64", **variant), n_samples=6))
    assert runs[0].samples.abs().mean() > 0.1
    torch.testing.assert_close(runs[1].samples, runs[0].samples, rtol=0, atol=1e-10)
    assert runs[1].diagnostics["loss_trace"] == pytest.approx(
        runs[0].diagnostics["loss_trace"], rel=1e-10)


# ---- presets ---------------------------------------------------------------------------------
def test_presets_carry_the_published_settings():
    expect = {  # REFERENCE.md, "Published settings worth matching" (iDEM code values)
        "gmm40": (1e-5, 1.0, 500, 70.0, False, "sigma2", 5e-4, 512, 1000, 1.0, 1000),
        "dw4": (1e-5, 3.0, 1000, 20.0, True, "one", 1e-3, 512, 1000, 1.0, 1000),
        "lj13": (0.01, 2.0, 1000, 20.0, True, "one", 1e-3, 512, 1000, 0.9, 1000),
        "lj55": (0.5, 4.0, 100, 20.0, True, "one", 1e-3, 128, 128, 0.5, 2000),
    }
    for name, values in expect.items():
        c = idem.preset(name)
        got = (c.sigma_min, c.sigma_max, c.n_mc, c.clip_score, c.clip_per_particle,
               c.loss_weight, c.lr, c.batch_size, c.n_generate, c.noise_scale, c.n_outer)
        assert got == values, name
        assert (c.buffer_size, c.n_inner, c.n_sde_steps, c.grad_clip) == (10_000, 100, 1000, 0.5)
    assert idem.preset("gmm40").scale == 50.0 and idem.preset("gmm40").init_buffer == "estimator"
    assert [idem.preset(n).n_layers for n in ("dw4", "lj13", "lj55")] == [3, 5, 5]
    assert all(idem.preset(f"{n}-quick").n_outer < 100 for n in expect)
    with pytest.raises(KeyError, match="valid"):
        idem.preset("dw5")


# ---- the training loop -----------------------------------------------------------------------
TINY = dict(hidden=8, n_layers=1, n_outer=4, n_inner=2, batch_size=8, n_mc=4, n_generate=8,
            n_sde_steps=5, buffer_size=20, n_init=8, checkpoint_every=1, sigma_min=0.01,
            sigma_max=2.0)


def _tiny(**kw):
    return idem.Config(**{**TINY, **kw})


def test_budget_stops_training_before_it_is_exceeded():
    torch.manual_seed(6)
    target = PairWell()
    step = 8 * 4
    res = idem.sample(target, _tiny(), n_samples=10, budget=5 * step + 7)
    assert res.diagnostics["stopped_by_budget"] is True
    assert res.counts["n_energy"] == 5 * step == target.counter.n_energy
    assert res.samples.shape == (10, 8) and torch.isfinite(res.samples).all()
    assert res.samples.view(10, 4, 2).sum(1).abs().max() < 1e-4
    full = idem.sample(PairWell(), _tiny(), n_samples=3, budget=None)
    assert full.diagnostics["stopped_by_budget"] is False
    assert full.counts["n_energy"] == 4 * 2 * step


def test_resume_continues_a_killed_run_exactly(tmp_path):
    torch.manual_seed(7)
    straight = idem.sample(PairWell(), _tiny(), n_samples=5)
    torch.manual_seed(7)
    idem.sample(PairWell(), _tiny(n_outer=2), n_samples=5, run_dir=tmp_path)  # "killed" at 2
    first = torch.load(tmp_path / "idem_checkpoint.pt", weights_only=False)["wall_seconds"]
    probe = idem._Training(PairWell(), _tiny(), None, tmp_path)
    rng = torch.get_rng_state()
    probe.restore()  # the killed run's wall time carries over into the resumed one
    torch.set_rng_state(rng)
    assert probe.wall_before == first > 0
    resumed = idem.sample(PairWell(), _tiny(), n_samples=5, run_dir=tmp_path, resume=True)
    assert resumed.diagnostics["resumed_from"] == 2
    assert resumed.diagnostics["wall_seconds"] > first
    assert resumed.counts == straight.counts
    assert resumed.diagnostics["loss_trace"] == straight.diagnostics["loss_trace"]
    torch.testing.assert_close(resumed.samples, straight.samples)


@pytest.mark.parametrize("variant", [dict(training_points="prior"), dict(init_buffer="estimator"),
                                     dict(init_buffer="prior", network="mlp")])
def test_variants_run(variant):
    torch.manual_seed(8)
    res = idem.sample(PairWell(), _tiny(n_outer=1, **variant), n_samples=4)
    assert res.samples.shape == (4, 8) and torch.isfinite(res.samples).all()
    assert len(res.diagnostics["loss_trace"]) == 1


def test_quick_gmm_run_improves_on_its_initial_buffer():
    from boltzkit import targets
    from boltzkit.evaluate import metrics

    torch.manual_seed(0)
    target = targets.get("gmm40")
    cfg = idem.preset("gmm40-quick")
    res = idem.sample(target, cfg, n_samples=1000)
    initial = cfg.scale * cfg.sigma_max * torch.randn(1000, 2)  # the "prior" initial buffer
    reference = target.sample(1000).float()
    w2_init, w2 = metrics.x_w2(initial, reference), metrics.x_w2(res.samples, reference)
    cov_init = metrics.mode_coverage(initial, target)
    cov = metrics.mode_coverage(res.samples, target)
    assert w2 < 0.5 * w2_init and cov > cov_init + 0.1, (w2_init, w2, cov_init, cov)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dw4-quick", "lj13-quick", "lj55-quick"])
def test_quick_particle_presets_run(name):
    from boltzkit import targets

    torch.manual_seed(0)
    target = targets.get(name.removesuffix("-quick"))
    res = idem.sample(target, idem.preset(name), n_samples=100)
    assert torch.isfinite(res.samples).all() and res.samples.shape == (100, target.dim)


@pytest.mark.parametrize("chunk_edges", [12, 36, 0])
def test_chunked_training_gradient_equals_the_batch_gradient(chunk_edges):
    # 12 edges per PairWell sample: chunks of 1 and 3 samples (uneven: 8 = 3 + 3 + 2), and off.
    torch.manual_seed(9)
    cfg = _tiny(dtype="float64", train_chunk_edges=chunk_edges)
    run = idem._Training(PairWell(), cfg, None, None)
    assert run.train_chunk == (cfg.batch_size if chunk_edges == 0 else chunk_edges // 12)
    xt, t = torch.randn(8, 8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    goal, weight = torch.randn(8, 8, dtype=torch.float64), torch.rand(8, dtype=torch.float64)
    loss = run.backward(xt, t, goal, weight)
    chunked = [p.grad.clone() for p in run.net.parameters()]
    run.optimizer.zero_grad()
    whole = dem_loss(run.net(xt, t), goal, weight)
    whole.backward()
    assert loss == pytest.approx(whole.item(), rel=1e-12)
    for a, p in zip(chunked, run.net.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def test_fused_generation_gives_the_same_run_in_float64():
    # The fused EGNN kernel (generation only) changes rounding, not the run: same seed, same
    # samples, through training on generated buffers and the final reverse SDE.
    from boltzkit.models import fused

    if fused.egnn_kernel() is None:
        pytest.skip(f"no fused kernel: {fused.build_error()}")
    runs = []
    for flag in (True, False):
        torch.manual_seed(7)
        cfg = _tiny(dtype="float64", fused_egnn=flag, hidden=12, n_layers=2)
        runs.append(idem.sample(PairWell(), cfg, n_samples=5).samples)
    assert runs[0].abs().mean() > 0.1
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-8, atol=1e-10)


def test_ode_correction_returns_importance_weights_with_their_cost_counted() -> None:
    """correction="ode": samples of the probability-flow ODE with log w = log gamma - log q;
    LSE(log_w) - log n is the returned log Z, and the weights cost n_samples evaluations."""
    from boltzkit.targets import get

    torch.manual_seed(0)
    target = get("two-modes", d=2)
    cfg = idem.Config(network="mlp", hidden=16, n_layers=2, n_outer=2, n_inner=3,
                      batch_size=16, n_mc=8, n_generate=64, n_sde_steps=10, buffer_size=64,
                      n_init=32, sigma_min=0.01, sigma_max=3.0, checkpoint_every=0,
                      dtype="float64", correction="ode", ode_tolerance=1e-4)
    res = idem.sample(target, cfg, n_samples=64, budget=None)
    assert res.samples.shape == (64, 2) and res.log_w.shape == (64,)
    assert res.log_w.dtype == torch.float64 and torch.isfinite(res.log_w).all()
    assert abs(float(torch.logsumexp(res.log_w, 0)) - math.log(64) - res.log_Z) < 1e-9
    assert 0 < res.diagnostics["ess_fraction"] <= 1
    plain = idem.sample(target, dataclasses.replace(cfg, correction="none"), n_samples=64,
                        budget=None)
    assert res.counts["n_energy"] - plain.counts["n_energy"] == 64  # the weights' cost
    budget = res.counts["n_energy"]
    with pytest.raises(UsageError, match="weights"):
        idem.sample(target, cfg, n_samples=10**6, budget=budget)
