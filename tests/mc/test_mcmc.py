"""MCMC kernels, parallel tempering and the MCMC samplers.

Statistical checks compare against closed forms with |error| <= 5 SE (chains are independent, so
the SE is the across-chain one); each has a deliberately broken variant that must fail.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from boltzkit.mc.mcmc import HMC, MALA, RWMH, Kernel, MCMCInfo, MCMCState, relax
from boltzkit.mc.tempering import ParallelTempering, geometric_ladder, swap_log_ratio
from boltzkit.samplers import mcmc as mcmc_samplers
from boltzkit.targets.base import Target

F64 = torch.float64
Z = 5.0


class Mixture2D(Target):
    """Two correlated Gaussians, weights 0.3 / 0.7; exact samples and moments."""

    weights = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.0]], dtype=F64)
    covs = torch.tensor([[[0.5, 0.0], [0.0, 0.3]], [[1.0, 0.6], [0.6, 1.0]]], dtype=F64)
    exact_sampler = True

    def __init__(self) -> None:
        super().__init__(2)

    def _log_prob(self, x: Tensor) -> Tensor:
        d = x.unsqueeze(-2) - self.means.to(x)
        prec = torch.linalg.inv(self.covs).to(x)
        quad = torch.einsum("...ki,kij,...kj->...k", d, prec, d)
        log_norm = -0.5 * torch.logdet(2 * math.pi * self.covs).to(x)
        return torch.logsumexp(self.weights.log().to(x) + log_norm - 0.5 * quad, dim=-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, 2, 1, dtype=F64, generator=generator)
        return self.means[k] + (torch.linalg.cholesky(self.covs)[k] @ eps).squeeze(-1)

    def feature_means(self) -> Tensor:
        """Exact E[x0], E[x1], E[x0^2], E[x1^2], E[x0 x1], P(x0 > 0)."""
        w, m, c = self.weights, self.means, self.covs
        second = c + m[:, :, None] * m[:, None, :]
        p_pos = 0.5 * torch.erfc(-m[:, 0] / torch.sqrt(2 * c[:, 0, 0]))
        return torch.stack([w @ m[:, 0], w @ m[:, 1], w @ second[:, 0, 0], w @ second[:, 1, 1],
                            w @ second[:, 0, 1], w @ p_pos])


def features(x: Tensor) -> Tensor:
    return torch.stack([x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1],
                        (x[:, 0] > 0).to(x.dtype)], dim=-1)


def z_scores(values: Tensor, truth: Tensor | float = 0.0) -> Tensor:
    """(mean - truth) / SE per column, for independent rows."""
    return (values.mean(0) - truth) / (values.std(0) / math.sqrt(values.shape[0]))


class Harmonic(Target):
    """n particles bound to their centre: E = |x - x_com|^2 / 2 (COM-free standard Gaussian)."""

    def __init__(self, n_particles: int = 4, spatial_dim: int = 2) -> None:
        super().__init__(n_particles * spatial_dim)
        self.n_particles, self.spatial_dim = n_particles, spatial_dim

    def _log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * (self.remove_com(x) ** 2).sum(-1)


class Bimodal1D(Target):
    """0.25 N(-4, 0.5^2) + 0.75 N(4, 0.5^2): a 32-nat barrier that MALA alone cannot cross."""

    def __init__(self) -> None:
        super().__init__(1)

    def _log_prob(self, x: Tensor) -> Tensor:
        left = math.log(0.25) - 2.0 * (x[..., 0] + 4.0) ** 2
        right = math.log(0.75) - 2.0 * (x[..., 0] - 4.0) ** 2
        return torch.logaddexp(left, right)


class NaNRegion(Target):
    """Standard normal whose energy is NaN for x0 > 1 (and score NaN where x1 > 1.5)."""

    def __init__(self) -> None:
        super().__init__(2)

    def _log_prob(self, x: Tensor) -> Tensor:
        lp = -0.5 * (x**2).sum(-1)
        lp = torch.where(x[..., 0] > 1.0, torch.full_like(lp, math.nan), lp)
        return lp + torch.where(x[..., 1] > 1.5, torch.sqrt(-torch.ones_like(lp)), 0.0 * lp)


class NoMH:
    """Broken variant: always accepts the kernel's proposal (MALA -> ULA, HMC without MH)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def init(self, x: Tensor, target: Target) -> MCMCState:
        return self.kernel.init(x, target)

    def step(self, state: MCMCState, target: Target) -> tuple[MCMCState, MCMCInfo]:
        proposal, _, _ = self.kernel._propose(state, target)
        ones = torch.ones_like(proposal.log_prob)
        return proposal, MCMCInfo(ones, ones.bool(), 0)


KERNELS = {"rwmh": RWMH(1.5), "mala": MALA(0.5), "hmc": HMC(0.8, 3)}


def run_from_exact(kernel, target_of_kernel: Target, n: int = 20_000, n_steps: int = 3,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """(x after 1 step, x after n_steps) for chains started at exact samples of Mixture2D."""
    torch.manual_seed(seed)
    x0 = Mixture2D().sample(n)
    state = kernel.init(x0, target_of_kernel)
    state, _ = kernel.step(state, target_of_kernel)
    x1 = state.x
    for _ in range(n_steps - 1):
        state, _ = kernel.step(state, target_of_kernel)
    return x0, x1, state.x


def reversibility_z(x0: Tensor, x1: Tensor) -> Tensor:
    """Under detailed balance (x0, x1) is exchangeable: E[f(x0) g(x1) - f(x1) g(x0)] = 0."""
    f0, f1 = features(x0), features(x1)
    pairs = [(0, 2), (1, 3), (0, 3), (1, 4), (5, 1)]
    d = torch.stack([f0[:, i] * f1[:, j] - f1[:, i] * f0[:, j] for i, j in pairs], dim=-1)
    return z_scores(d)


# ---- kernel contract -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc"])
def test_kernel_contract(name: str) -> None:
    torch.manual_seed(0)
    target = Mixture2D()
    kernel = dataclasses.replace(KERNELS[name], step_size=torch.full((3, 5), 0.3, dtype=F64))
    state = kernel.init(torch.randn(3, 5, 2, dtype=F64), target)
    before = [t.clone() for t in state if t is not None]
    target.counter.reset()
    new, info = kernel.step(state, target)
    assert [t.clone() for t in state if t is not None][0].equal(before[0])  # not mutated
    assert new.x.shape == (3, 5, 2) and new.x.dtype == F64
    assert new.log_prob.shape == info.accept_prob.shape == info.accepted.shape == (3, 5)
    assert info.accepted.dtype == torch.bool and isinstance(info.n_nonfinite, int)
    assert target.counter.n_energy == 15 * kernel.evals_per_step
    assert torch.allclose(new.log_prob, target.log_prob(new.x))
    if kernel.needs_score:
        assert torch.allclose(new.score, target.score(new.x))
    else:
        assert new.score is None
    moved = (new.x != state.x).any(-1)
    assert moved.equal(info.accepted)


@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc"])
def test_particle_moves_stay_centre_of_mass_free(name: str) -> None:
    torch.manual_seed(0)
    target = Harmonic(4, 2)
    state = KERNELS[name].init(torch.randn(64, 8, dtype=F64) + 3.0, target)
    for _ in range(5):
        state, info = KERNELS[name].step(state, target)
    com = state.x.view(64, 4, 2).mean(1)
    assert info.accepted.any() and com.abs().max() < 1e-12


# ---- invariance and detailed balance ----------------------------------------------------
@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc"])
def test_kernels_leave_the_target_invariant_and_are_reversible(name: str) -> None:
    target = Mixture2D()
    x0, x1, x3 = run_from_exact(KERNELS[name], target)
    assert (x1 != x0).any(-1).float().mean() > 0.3  # large steps, many moves
    assert z_scores(features(x3), target.feature_means()).abs().max() < Z
    assert reversibility_z(x0, x1).abs().max() < Z


@pytest.mark.parametrize("broken", ["ula", "hmc-no-mh", "rwmh-wrong-temperature"])
def test_broken_kernels_fail_the_same_checks(broken: str) -> None:
    target = Mixture2D()
    kernel, kernel_target = {
        "ula": (NoMH(KERNELS["mala"]), target),
        "hmc-no-mh": (NoMH(KERNELS["hmc"]), target),
        "rwmh-wrong-temperature": (KERNELS["rwmh"], target.tempered(1.3)),
    }[broken]
    x0, x1, x3 = run_from_exact(kernel, kernel_target)
    invariance = z_scores(features(x3), target.feature_means()).abs().max()
    assert invariance > Z
    if broken == "ula":  # the discretised Langevin step is not reversible either
        assert reversibility_z(x0, x1).abs().max() > Z


# ---- adaptation and non-finite values ---------------------------------------------------
@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc"])
@pytest.mark.parametrize("start", [1e-3, 10.0])
def test_adaptation_moves_acceptance_towards_its_target(name: str, start: float) -> None:
    torch.manual_seed(0)
    target = Harmonic(6, 2)
    kernel = dataclasses.replace(KERNELS[name], step_size=start)
    state = kernel.init(torch.randn(256, 12, dtype=F64), target)
    first = None
    for _ in range(150):
        state, info = kernel.step(state, target)
        first = float(info.accept_prob.mean()) if first is None else first
        kernel = kernel.adapted(info, rate=0.3, average_over=(0,))
    goal = kernel.default_target_accept
    accept = []
    for _ in range(20):
        state, info = kernel.step(state, target)
        accept.append(float(info.accept_prob.mean()))
    assert abs(first - goal) > 0.2
    assert abs(sum(accept) / len(accept) - goal) < 0.1
    assert kernel.step_size.shape == (1,)


def test_per_chain_adaptation_keeps_the_chain_shape() -> None:
    info = MCMCInfo(torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([[True, False]]), 0)
    kernel = MALA(0.1).adapted(info, target_accept=0.5, rate=1.0)
    assert torch.allclose(kernel.step_size, 0.1 * torch.exp(torch.tensor([[0.5, -0.5]], dtype=F64)))


@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc"])
def test_nonfinite_proposals_are_rejected_and_counted(name: str) -> None:
    torch.manual_seed(0)
    target = NaNRegion()
    kernel = dataclasses.replace(KERNELS[name], step_size=0.8)
    state = kernel.init(torch.randn(500, 2, dtype=F64).clamp(max=0.5), target)
    n_nonfinite = 0
    for _ in range(10):
        state, info = kernel.step(state, target)
        n_nonfinite += info.n_nonfinite
        assert torch.isfinite(state.x).all() and torch.isfinite(state.log_prob).all()
        assert not info.accepted[info.accept_prob == 0].any()
    assert n_nonfinite > 50
    assert (state.x[:, 0] <= 1.0).all()
    if kernel.needs_score:
        assert torch.isfinite(state.score).all() and (state.x[:, 1] <= 1.5).all()


def test_a_chain_outside_the_support_accepts_the_first_finite_proposal() -> None:
    torch.manual_seed(0)
    target = NaNRegion()
    state = MALA(1.0).init(torch.tensor([[2.0, 0.0]], dtype=F64).expand(200, 2), target)
    assert torch.isinf(state.log_prob).all()
    for _ in range(30):
        state, _ = MALA(1.0).step(state, target)
    assert torch.isfinite(state.log_prob).float().mean() > 0.9


class LennardJones(Target):
    """E = sum_{i<j} r^-12 - 2 r^-6 (minimum -1 at r = 1) + |x - x_com|^2 / 2."""

    def __init__(self, n_particles: int = 5) -> None:
        super().__init__(3 * n_particles)
        self.n_particles, self.spatial_dim = n_particles, 3

    def _log_prob(self, x: Tensor) -> Tensor:
        i, j = torch.triu_indices(self.n_particles, self.n_particles, 1)
        xp = x.reshape(*x.shape[:-1], self.n_particles, 3)
        inv6 = (xp[..., i, :] - xp[..., j, :]).square().sum(-1) ** -3
        return -(inv6**2 - 2 * inv6).sum(-1) - 0.5 * (self.remove_com(x) ** 2).sum(-1)


def test_relax_pulls_overlapping_particles_apart() -> None:
    torch.manual_seed(0)
    target = LennardJones(5)
    x = 0.3 * torch.randn(64, 15, dtype=F64)
    assert target.energy(x).max() > 1e6
    target.counter.reset()
    x = relax(x, target, n_steps=100)
    assert target.counter.n_grad == 100 * 64
    assert target.energy(x).max() < 0.0  # bound: every pair near the well
    assert x.view(64, 5, 3).mean(1).abs().max() < 1e-12


# ---- parallel tempering -----------------------------------------------------------------
def test_geometric_ladder() -> None:
    ladder = geometric_ladder(5, 16.0)
    assert ladder == pytest.approx((1.0, 2.0, 4.0, 8.0, 16.0))
    assert geometric_ladder(1, 10.0) == (1.0,)
    with pytest.raises(ValueError):
        ParallelTempering(MALA(), (1.0, 3.0, 2.0))


def test_swap_ratio_matches_the_direct_density_ratio() -> None:
    torch.manual_seed(0)
    target = Mixture2D()
    x_lo, x_hi = 2 * torch.randn(100, 2, dtype=F64), 2 * torch.randn(100, 2, dtype=F64)
    T_lo, T_hi = 1.7, 4.2
    lo, hi = target.tempered(T_lo), target.tempered(T_hi)
    direct = lo.log_prob(x_hi) + hi.log_prob(x_lo) - lo.log_prob(x_lo) - hi.log_prob(x_hi)
    formula = swap_log_ratio(target.log_prob(x_lo), target.log_prob(x_hi), T_lo, T_hi)
    assert torch.allclose(formula, direct)
    # a colder replica holding the higher energy always swaps
    e_lo, e_hi = -target.log_prob(x_lo), -target.log_prob(x_hi)
    assert (formula[e_lo > e_hi] > 0).all()


def test_pt_state_stays_consistent_and_swaps_cost_nothing() -> None:
    torch.manual_seed(0)
    target = Mixture2D()
    pt = ParallelTempering(MALA(torch.full((4, 1), 0.3, dtype=F64)), geometric_ladder(4, 8.0))
    state = pt.init(torch.randn(4, 50, 2, dtype=F64), target)
    target.counter.reset()
    n_swapped = 0
    for _ in range(20):
        state, info = pt.step(state, target)
        n_swapped += int(info.swapped.sum())
        assert info.swap_attempted.tolist() == ([True, False, True] if state.n_steps % 2 else
                                                [False, True, False])
    assert n_swapped > 50
    assert target.counter.n_energy == 20 * 4 * 50
    tempered = target.uncounted().tempered(pt.temperature_tensor(state.chains.x))
    assert torch.allclose(state.chains.log_prob, tempered.log_prob(state.chains.x))
    assert torch.allclose(state.chains.score, tempered.score(state.chains.x))


class Gaussian2D(Target):
    """N(0, S) with S = [[1, 0.8], [0.8, 1]]; exact samples at every temperature (T S)."""

    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)

    def __init__(self) -> None:
        super().__init__(2)

    def _log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * (x * (x @ torch.linalg.inv(self.cov).to(x))).sum(-1)

    def exact(self, temperatures: Tensor, n: int) -> Tensor:
        eps = torch.randn(len(temperatures), n, 2, dtype=F64)
        return temperatures.sqrt().view(-1, 1, 1) * eps @ torch.linalg.cholesky(self.cov).T


@pytest.mark.parametrize("broken", [False, True])
def test_pt_leaves_every_tempered_replica_invariant(broken: bool, monkeypatch) -> None:
    """Replicas start at exact samples of their tempered targets; after kernel moves and swaps
    each still has covariance T_k S. Broken variant: the swap ratio with its sign flipped."""
    if broken:
        import boltzkit.mc.tempering as tempering

        monkeypatch.setattr(tempering, "swap_log_ratio",
                            lambda *a: -swap_log_ratio(*a))
    torch.manual_seed(0)
    target, n = Gaussian2D(), 10_000
    pt = ParallelTempering(MALA(0.5), geometric_ladder(4, 8.0))
    temps = torch.tensor(pt.temperatures, dtype=F64)
    state = pt.init(target.exact(temps, n), target)
    for _ in range(4):
        state, _ = pt.step(state, target)
    x = state.chains.x
    second = torch.stack([x[..., 0] ** 2, x[..., 1] ** 2, x[..., 0] * x[..., 1]], -1)
    truth = temps.view(-1, 1) * torch.tensor([1.0, 1.0, 0.8], dtype=F64)
    z = (second.mean(1) - truth) / (second.std(1) / math.sqrt(n))
    assert (z.abs().max() > Z) == broken


def test_ladder_adaptation_keeps_ends_and_rescales_the_state() -> None:
    target = Mixture2D()
    pt = ParallelTempering(MALA(0.1), geometric_ladder(4, 8.0))
    state = pt.init(torch.randn(4, 10, 2, dtype=F64), target)
    new, new_state = pt.adapted_ladder(state, torch.tensor([0.9, 0.1, 0.5]), rate=0.5)
    t_old, t_new = pt.temperatures, new.temperatures
    assert t_new[0] == 1.0 and t_new[-1] == pytest.approx(8.0)
    assert t_new[1] / t_new[0] > t_old[1] / t_old[0]  # the easy pair's gap widens
    assert t_new[2] / t_new[1] < t_old[2] / t_old[1]  # the hard pair's gap narrows
    tempered = target.uncounted().tempered(new.temperature_tensor(state.chains.x))
    assert torch.allclose(new_state.chains.log_prob, tempered.log_prob(state.chains.x))


def mode_weight_z(samples: Tensor, n_chains: int) -> tuple[float, float]:
    """(weight of the right mode, z against 0.75) with the SE across independent chains."""
    right = (samples[..., 0] > 0).to(F64).reshape(-1, n_chains)  # [time, chain]
    per_chain = right.mean(0)
    weight = float(per_chain.mean())
    return weight, (weight - 0.75) / (float(per_chain.std()) / math.sqrt(n_chains) + 1e-12)


def test_pt_recovers_mode_weights_where_mala_chains_do_not() -> None:
    torch.manual_seed(0)
    target, budget = Bimodal1D(), 200_000
    common = {"step_size": 0.05, "burn_in": 0.2, "init_scale": 4.0}
    pt_config = mcmc_samplers.PTConfig(n_chains=64, n_temps=6, T_max=50.0, **common)
    pt = mcmc_samplers.sample(target, pt_config, n_samples=64 * 100, budget=budget)
    weight, z = mode_weight_z(pt.samples, 64)
    assert abs(z) < Z and abs(weight - 0.75) < 0.05
    assert min(pt.diagnostics["swap_rates"]) > 0.3
    # the same budget on MALA chains alone: each keeps the basin it started in (about half)
    mala_config = mcmc_samplers.MALAConfig(n_chains=256, **common)
    mala = mcmc_samplers.sample(target, mala_config, n_samples=256 * 100, budget=budget)
    weight, z = mode_weight_z(mala.samples, 256)
    assert abs(z) > Z and abs(weight - 0.5) < 0.1


# ---- samplers ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc", "pt"])
def test_samplers_respect_the_budget(name: str) -> None:
    torch.manual_seed(0)
    target = Harmonic(3, 2)
    config = mcmc_samplers.preset("quick", sampler=name)
    config = dataclasses.replace(config, n_chains=16)
    budget = 5_000
    result = mcmc_samplers.sample_named(name, target, config, n_samples=300, budget=budget)
    assert result.counts["n_energy"] <= budget == target.counter.n_energy + (
        budget - result.counts["n_energy"])
    assert result.counts["n_energy"] > 0.9 * budget
    assert result.samples.shape == (min(300, result.diagnostics["n_collected"]), 6)
    assert not result.samples.requires_grad
    assert result.log_w is None and result.diagnostics["stopped_by_budget"]
    assert result.diagnostics["n_nonfinite"] == 0
    assert 0.0 < result.diagnostics["acceptance"] < 1.0
    with pytest.raises(ValueError, match="does not pay"):
        mcmc_samplers.sample(target, config, n_samples=10, budget=10)


def test_sampler_without_budget_collects_n_samples_from_its_chains() -> None:
    torch.manual_seed(0)
    config = mcmc_samplers.MALAConfig(n_chains=20, thinning=3, step_size=0.3)
    result = mcmc_samplers.sample(Harmonic(3, 2), config, n_samples=100, budget=None)
    d = result.diagnostics
    assert result.samples.shape == (100, 6) and not d["stopped_by_budget"]
    assert d["n_steps"] == math.ceil(5 * 3 / 0.75) and d["n_collected"] == 100


def test_config_names_and_presets() -> None:
    assert type(mcmc_samplers.Config("hmc")) is mcmc_samplers.HMCConfig
    assert mcmc_samplers.sampler_name(mcmc_samplers.preset("dw4", sampler="pt")) == "pt"
    assert not hasattr(mcmc_samplers.preset("dw4", sampler="mala"), "T_max")
    with pytest.raises(KeyError, match="valid"):
        mcmc_samplers.Config("nuts")
    with pytest.raises(TypeError):
        mcmc_samplers.sample_named("pt", Harmonic(), mcmc_samplers.MALAConfig(), n_samples=1)
    with pytest.raises(ValueError, match="burn_in"):
        mcmc_samplers.sample(Harmonic(), mcmc_samplers.MALAConfig(burn_in=1.0), n_samples=1)


def test_resume_continues_from_the_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    target = Harmonic(3, 2)
    config = mcmc_samplers.PTConfig(n_chains=8, n_temps=3, T_max=4.0, checkpoint_every=10)
    first = mcmc_samplers.sample(target, config, n_samples=50, budget=3_000, run_dir=tmp_path)
    assert (tmp_path / mcmc_samplers.CHECKPOINT).exists()
    target.counter.reset()
    second = mcmc_samplers.sample(target, config, n_samples=50, budget=6_000, run_dir=tmp_path,
                                  resume=True)
    assert second.counts["n_energy"] <= 6_000
    # the resumed run charges the counter with the interrupted one's evaluations first
    assert target.counter.n_energy == second.counts["n_energy"] > first.counts["n_energy"]
    assert second.diagnostics["n_steps"] > first.diagnostics["n_steps"]
    with pytest.raises(ValueError, match="different config"):
        mcmc_samplers.sample(target, dataclasses.replace(config, T_max=5.0), n_samples=50,
                             budget=9_000, run_dir=tmp_path, resume=True)
