"""TRADE: the derivative A against finite differences for every parametrised target, the loss at
the exact solution, recovery of other temperatures from the boundary alone, and the machinery
(conditions, causality weights, EMA, guards, budgets, checkpoints, every method)."""

import math

import pytest
import torch

from boltzkit import targets
from boltzkit.samplers import trade
from boltzkit.targets.family import Family, action_derivative, surrogate_family
from boltzkit.targets.two_moons import TwoMoonsPosterior, log_likelihood, simulate

SMALL = dict(kind="affine", n_layers=2, hidden=16, depth=1, lr=5e-3, warmup_steps=50,
             c_min=0.5, c_max=2.0, n_conditions=4, n_per_condition=32, n_grid=5, rho="mse",
             latent_scaling=False, log_every=10)


# ---- A = dS/dc by autograd vs finite differences ---------------------------------------------
def _registered(name, parameter, c_range, **kwargs):
    def make():
        return Family(targets.get(name, **kwargs), parameter), c_range
    return make


FAMILIES = {
    "gmm-temperature": _registered("tempered-gmm-2d", "temperature", (0.162, 6.16)),
    "gmm-beta": _registered("tempered-gmm-2d", "beta", (0.162, 6.16)),
    "multi-well-temperature": _registered("multi-well-5d", "temperature", (0.5, 2.0)),
    "phi4-kappa": _registered("phi4", "kappa", (0.22, 0.32)),
    "two-moons-beta": lambda: (Family(TwoMoonsPosterior(), "beta"), (0.4, 2.1)),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_action_derivative_matches_finite_differences(name):
    family, (lo, hi) = FAMILIES[name]()
    torch.manual_seed(0)
    n, dim = 16, family.target.dim
    x = 0.3 * torch.randn(n, dim, dtype=torch.float64) + (0.5 if "gmm" in name else 0.0)
    c = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(lo), math.log(hi)))
    ctx = None
    if "moons" in name:  # observations near each theta's moon, so that gamma > 0
        ctx = simulate(x)
    log_gamma, a = action_derivative(family, x, c, ctx)
    assert torch.isfinite(a).all()
    h = 1e-6 * c
    plus = family.at(c + h, ctx).log_prob(x)
    minus = family.at(c - h, ctx).log_prob(x)
    torch.testing.assert_close(a, -(plus - minus) / (2 * h), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(log_gamma, family.at(c, ctx).log_prob(x))


def test_two_moons_beta_derivative_is_minus_log_likelihood_not_times_beta():
    """d/dbeta [beta log p(y|theta) + log p(theta)] = log p(y|theta) at every beta; the released
    code's convention would give beta times it."""
    torch.manual_seed(0)
    theta = 0.3 * torch.randn(64, 2, dtype=torch.float64)
    y = simulate(theta)
    family = Family(TwoMoonsPosterior(), "beta")
    for beta in (0.5, 2.0):
        _, a = action_derivative(family, theta, torch.full((64,), beta, dtype=torch.float64), y)
        ll = log_likelihood(y, theta)
        torch.testing.assert_close(a, -ll)
        assert (a + beta * ll).abs().max() > 1e-2


def test_family_rejects_unknown_parameter(gaussian):
    with pytest.raises(ValueError, match="with_kappa"):
        Family(gaussian, "kappa")


# ---- the exact solution -----------------------------------------------------------------------
def _exact_loss(gaussian, flow, parameter="temperature", n_groups=400, m=32):
    config = trade.Config(rho="mse", n_per_condition=m, c0=1.0)
    c = torch.exp(torch.linspace(math.log(0.3), math.log(3.0), n_groups, dtype=torch.float64))
    losses, info = trade.propagation_loss(flow, Family(gaussian, parameter), c, config)
    return losses.detach(), info


def test_trade_loss_is_zero_within_se_at_the_exact_solution(gaussian, exact_flow):
    """With q = N(mu, T Sigma) the residual is only the SNIS error of E_T[A]. In log-c units
    A = -chi2_d / (2T), so each group's MSE loss has mean d / (2m) and sd sqrt(2) d / (2m)."""
    torch.manual_seed(0)
    losses, info = _exact_loss(gaussian, exact_flow())
    m, d = 32, 2
    assert min(info["ess_fraction"]) == pytest.approx(1.0, abs=1e-9), "constant weights"
    se = math.sqrt(2) * d / (2 * m) / math.sqrt(len(losses))
    assert abs(losses.mean().item() - d / (2 * m)) < 5 * se


@pytest.mark.parametrize("broken", ["wrong flow family", "wrong parametrisation"])
def test_trade_loss_detects_a_wrong_solution(gaussian, exact_flow, broken):
    torch.manual_seed(0)
    if broken == "wrong flow family":
        losses, _ = _exact_loss(gaussian, exact_flow(power=2.0))
    else:  # the target read as an inverse temperature: A has the wrong sign and scale
        losses, _ = _exact_loss(gaussian, exact_flow(), parameter="beta")
    m, d = 32, 2
    se = math.sqrt(2) * d / (2 * m) / math.sqrt(len(losses))
    assert losses.mean().item() - d / (2 * m) > 20 * se


@pytest.mark.parametrize("rho", ["huber", "mse"])
def test_fitted_constant_loss_is_zero_at_the_exact_solution_and_not_elsewhere(
        gaussian, exact_flow, rho):
    """constant="fitted": at q = p, d/dc log q + A is constant in x, so the residual vanishes
    (no SNIS error at all); a wrong flow family leaves a clear residual."""
    torch.manual_seed(0)
    config = trade.Config(rho=rho, n_per_condition=32, c0=1.0, constant="fitted")
    c = torch.exp(torch.linspace(math.log(0.3), math.log(3.0), 50, dtype=torch.float64))
    exact, _ = trade.propagation_loss(exact_flow(), Family(gaussian), c, config)
    wrong, _ = trade.propagation_loss(exact_flow(power=2.0), Family(gaussian), c, config)
    assert exact.abs().max() < 1e-10
    assert wrong.mean() > 0.05


def test_residual_scale_spread_keeps_the_exact_solution_and_divides_by_the_spread(
        gaussian, exact_flow):
    """residual_scale="spread": the exact solution still has zero residual; the divisor is
    max(1, 1.4826 MAD) per condition over the valid points."""
    torch.manual_seed(0)
    config = trade.Config(n_per_condition=32, c0=1.0, constant="fitted", residual_scale="spread")
    c = torch.exp(torch.linspace(math.log(0.3), math.log(3.0), 20, dtype=torch.float64))
    exact, _ = trade.propagation_loss(exact_flow(), Family(gaussian), c, config)
    assert exact.abs().max() < 1e-10
    v = torch.tensor([0.0, 10.0, 20.0, 1e6, 0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    valid = torch.tensor([True, True, True, False, True, True, True, True])
    spread = trade._spread(v, valid, 2, 4)
    torch.testing.assert_close(spread, torch.tensor([14.826] * 4 + [1.0] * 4,
                                                    dtype=torch.float64))


def test_fitted_constant_is_the_huber_location_and_resists_outliers():
    """MSE: the mean. Huber: the root of sum clip(v - k, +-delta) = 0, within 5 SE of the bulk's
    centre with 2 % far outliers, where the plain mean (the broken variant) is dragged away."""
    torch.manual_seed(0)
    n = 2000
    v = 3.0 + 0.5 * torch.randn(n, dtype=torch.float64)
    v[: n // 50] = 1e4
    valid = torch.ones(n, dtype=torch.bool)
    ones = torch.ones(n, dtype=torch.float64)
    huber = trade.Config(residual_in_log_c=False, huber_delta=1.0)
    k = trade.fitted_constant(v, valid, ones, 1, huber)
    assert abs(float((v - k).clamp(-1.0, 1.0).sum())) < 1e-6
    se = 0.5 / math.sqrt(n)
    assert abs(float(k) - 3.0) < 5 * se + 0.5 * 0.02 * 1.5  # + the Huber bias of 2 % outliers
    mean = trade.fitted_constant(v, valid, ones, 1, trade.Config(residual_in_log_c=False,
                                                                 rho="mse"))
    torch.testing.assert_close(mean, v.mean().reshape(1))
    assert abs(float(mean) - 3.0) > 100
    # residual in log c: the location of c * v, returned in units of v
    c = torch.full((n,), 0.5, dtype=torch.float64)
    k_log = trade.fitted_constant(v, valid, c, 1, trade.Config(huber_delta=0.5))
    torch.testing.assert_close(k_log, k, rtol=1e-6, atol=1e-6)


# ---- training from the boundary alone ---------------------------------------------------------
def _recovers(flow, gaussian, temp, n=2000):
    """Flow samples' covariance within 5 SE of T Sigma (SE of a Gaussian sample covariance)."""
    x = flow.sample(n, temp).double()
    sigma = temp * gaussian.tempered(1.0).precision.inverse()
    se = torch.sqrt((torch.diagonal(sigma)[:, None] * torch.diagonal(sigma)[None, :]
                     + sigma**2) / n)
    return bool(((torch.cov(x.T) - sigma).abs() < 5 * se).all())


def test_trade_from_the_boundary_recovers_other_temperatures(gaussian):
    """NLL at T = 1 only plus the propagation loss, affine flow without latent scaling: at
    T = 0.5 and 2 the flow's covariance is T Sigma within 5 SE, the IS log Z is within 5 SE of
    the closed form, and ESS/N > 0.9. The broken variant (no propagation) fails the same test."""
    family, data = _train_and_check_recovery(gaussian, trade.Config(n_steps=300, **SMALL))
    baseline = trade.Config(**{**trade.Config(n_steps=150, **SMALL).__dict__,
                               "method": "latent_nll"})
    flow0 = trade.build_flow(baseline, 2, data.x)
    trade.train(flow0, family, baseline, data)
    assert _recovers(flow0, gaussian, 1.0)
    assert not _recovers(flow0, gaussian, 2.0)


@pytest.mark.slow
def test_trade_with_the_fitted_constant_recovers_other_temperatures(gaussian):
    """The same recovery as above with E_c[A] fitted instead of importance sampled (it
    converges more slowly: 500 steps; about 20 s on the loaded 2-core machine, so slow)."""
    _train_and_check_recovery(gaussian, trade.Config(n_steps=500, constant="fitted", **SMALL))


def _train_and_check_recovery(gaussian, config):
    """Trains from 4000 samples at T = 1 and asserts, at T = 0.5 and 2: ESS/N > 0.9, IS log Z
    within 5 SE of the closed form, covariance T Sigma within 5 SE. Returns (family, data)."""
    torch.manual_seed(0)
    family = Family(gaussian)
    data = trade.Data(gaussian.sample(4000).float(), 1.0)
    flow = trade.build_flow(config, 2, data.x)
    trade.train(flow, family, config, data)
    for temp in (0.5, 2.0):
        ev = trade.evaluate(flow, family, temp, 8000)
        assert ev["ess_fraction"] > 0.9
        assert abs(ev["log_Z"] - ev["log_Z_true"]) < 5 * ev["log_Z_se"] + 1e-3
        assert _recovers(flow, gaussian, temp)
    return family, data


# ---- machinery --------------------------------------------------------------------------------
def test_causality_weights_by_hand():
    c = torch.tensor([0.5, 0.7, 1.0, 1.4, 2.0], dtype=torch.float64)
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    w = trade.causality_weights(c, losses, 1.0, eps=0.5)
    expected = torch.exp(-0.5 * torch.tensor([2.0 + 3.0, 3.0, 0.0, 3.0, 3.0 + 4.0]))
    torch.testing.assert_close(w, expected.double())


def test_curriculum_widens_from_c0():
    torch.manual_seed(0)
    config = trade.Config(c_min=0.2, c_max=5.0, curriculum_start=0.1)
    early = trade.curriculum_conditions(config, 20000, 0.0)
    late = trade.curriculum_conditions(config, 20000, 1.0)
    assert early.min() >= 0.2 and late.max() <= 5.0
    assert torch.log(early).abs().median() < 0.25 * torch.log(late).abs().median()
    # at the end log c is uniform on [log 0.2, log 5]: mean 0 within 5 SE
    se = math.log(25) / math.sqrt(12 * 20000)
    assert torch.log(late).mean().abs() < 5 * se


def test_grid_ema_interpolates_in_log_c():
    ema = trade.GridEMA(trade.Config(c_min=0.5, c_max=2.0, n_grid=3))
    ema.values = torch.tensor([1.0, 3.0, 7.0], dtype=torch.float64)
    c = torch.tensor([0.5, 1.0, 2.0, math.sqrt(2.0), 9.0], dtype=torch.float64)
    torch.testing.assert_close(ema(c), torch.tensor([1.0, 3.0, 7.0, 5.0, 7.0]).double())


def test_snis_rows_without_weight_give_zero_not_nan():
    log_w = torch.tensor([[0.0, 0.0], [-math.inf, -math.inf]], dtype=torch.float64)
    mean, ess = trade.snis(log_w, torch.tensor([[1.0, 3.0], [math.inf, 5.0]]))
    torch.testing.assert_close(mean, torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(ess, torch.tensor([2.0, 0.0], dtype=torch.float64))


VARIANTS = {
    "trade-flow_c-curriculum": {},
    "trade-fitted-grid": {"constant": "fitted", "conditions": "grid"},
    "trade-flow_c0-grid": {"expectation": "flow_c0", "conditions": "grid"},
    "trade-ema-grid": {"expectation": "ema", "conditions": "grid", "ema_every": 2},
    "trade-energy-free": {"energy_free": True, "rho": "huber"},
    "trade-data-free": {"boundary": "reverse_kl"},
    "latent_nll": {"method": "latent_nll", "latent_scaling": True},
    "reverse_kl": {"method": "reverse_kl"},
    "nll_reverse_kl": {"method": "nll_reverse_kl"},
    "reweight": {"method": "reweight"},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_method_trains_and_returns_weighted_samples(gaussian, name):
    torch.manual_seed(0)
    config = trade.Config(**{**SMALL, "n_steps": 6, "warmup_steps": 2, "n_data": 500,
                             "c_sample": 1.5, **VARIANTS[name]})
    res = trade.sample(gaussian, config, n_samples=300, budget=None)
    assert res.samples.shape == (300, 2) and not torch.isnan(res.log_w).any()
    assert all(math.isfinite(h["loss"]) for h in res.diagnostics["history"])
    assert res.diagnostics["c"] == 1.5 and math.isfinite(res.log_Z)
    if name == "trade-energy-free":
        assert res.counts["n_energy"] == 300, "energy-free training evaluates no energy"


@pytest.mark.parametrize("name", VARIANTS)
def test_budget_holds_across_the_warm_up_boundary(gaussian, name):
    """Warm-up steps cost nothing; the first propagation step must still fit the budget (its
    cost is predicted, not taken from the free step before it). A budget below n_samples is a
    clear error."""
    torch.manual_seed(0)
    config = trade.Config(**{**SMALL, "n_steps": 6, "warmup_steps": 2, "n_data": 500,
                             **VARIANTS[name]})
    budget = 300 + 100  # under one propagation step (4 x 32) plus the 300 final weights
    res = trade.sample(gaussian, config, n_samples=300, budget=budget)
    assert res.counts["n_energy"] <= budget and res.samples.shape == (300, 2)
    costs = [trade.step_cost(config, k) for k in range(config.n_steps)]
    assert res.diagnostics["stopped_by_budget"] == (sum(costs) > 100)
    assert res.diagnostics["n_steps"] == (6 if sum(costs) <= 100 else
                                          next(k for k in range(6) if sum(costs[:k + 1]) > 100))
    with pytest.raises(ValueError, match="smaller than n_samples"):
        trade.sample(gaussian, config, n_samples=300, budget=299)


def test_step_cost_is_an_upper_bound(gaussian):
    """Measured evaluations per step never exceed step_cost, for every method."""
    for name, variant in VARIANTS.items():
        config = trade.Config(**{**SMALL, "n_steps": 4, "warmup_steps": 1, "ema_every": 2,
                                 **variant})
        family = Family(gaussian.uncounted())
        data = trade.Data(gaussian.sample(200).float(), 1.0)
        flow = trade.build_flow(config, 2, data.x)
        record = {"n_nonfinite": 0}
        ema = trade.GridEMA(config) if config.expectation == "ema" else None
        for step in range(config.n_steps):
            before = family.target.counter.n_energy
            trade.step_loss(flow, family, config, data, ema, step, record)
            spent = family.target.counter.n_energy - before
            assert spent <= trade.step_cost(config, step), (name, step)


def test_energy_free_family_needs_a_known_power():
    with pytest.raises(ValueError, match="energy-free"):
        surrogate_family(torch.nn.Linear(1, 1), Family(TwoMoonsPosterior(), "beta"), 1.0)


def test_propagation_loss_guards_non_finite_energies(gaussian):
    """Two-moons posteriors vanish off a half-plane: those samples are left out and counted."""
    torch.manual_seed(0)
    config = trade.Config(**{**SMALL, "c_min": 0.4, "c_max": 2.1})
    flow = trade.build_flow(config, 2, context_dim=2)
    theta, y = TwoMoonsPosterior().sample_joint(4)
    c = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    losses, info = trade.propagation_loss(flow, Family(TwoMoonsPosterior(), "beta"), c, config,
                                          context=y.float())
    assert info["n_nonfinite"] > 0 and torch.isfinite(losses).all()


def test_budget_and_resume(gaussian, tmp_path):
    config = trade.Config(**{**SMALL, "n_steps": 8, "warmup_steps": 0, "checkpoint_every": 2})
    family = Family(gaussian)
    data = trade.Data(gaussian.sample(200).float(), 1.0)
    torch.manual_seed(0)
    record = trade.train(trade.build_flow(config, 2, data.x), family, config, data,
                         budget=500, run_dir=tmp_path)
    per_step = 4 * 32
    assert record["stopped_by_budget"] and record["n_steps"] == 500 // per_step
    resumed = Family(gaussian.uncounted())
    again = trade.train(trade.build_flow(config, 2, data.x), resumed, config, data,
                        run_dir=tmp_path, resume=True)
    assert again["n_steps"] == 8
    assert resumed.target.counter.n_energy == 8 * per_step


def test_validation_keeps_the_flow_of_lowest_held_apart_nll(gaussian):
    """A spline flow fitted to 12 points overfits; with validation samples the returned flow
    is the one of the lowest recorded validation NLL (exactly: its parameters are restored),
    after the warm-up only, and it beats the last step's flow, which the same training without
    validation returns (the broken variant: no selection)."""
    def fit(validation):
        torch.manual_seed(0)
        config = trade.Config(**{**SMALL, "kind": "spline", "hidden": 64, "lr": 1e-2,
                                 "method": "latent_nll", "n_steps": 400, "warmup_steps": 100,
                                 "validate_every": 20})
        flow = trade.build_flow(config, 2, data.x)
        return flow, trade.train(flow, Family(gaussian), config, data, validation=validation)

    torch.manual_seed(1)
    data, held = (trade.Data(gaussian.sample(n).float(), 1.0) for n in (12, 4000))
    flow, record = fit(held)
    nlls = [v["nll"] for v in record["validation"]]
    assert [v["step"] for v in record["validation"]][0] == 100 and len(nlls) == 16
    assert record["best_validation_nll"] == min(nlls) < nlls[-1]
    assert trade.validation_nll(flow, held) == pytest.approx(min(nlls), abs=1e-6)
    last, _ = fit(None)
    assert trade.validation_nll(last, held) == pytest.approx(nlls[-1], abs=1e-4)
    assert trade.validation_nll(last, held) > trade.validation_nll(flow, held)
