"""Flow Boltzmann generator: exact identities with the perfect flow, guarded weights, training by
forward / reverse KL against closed forms, budgets and checkpoints."""

import math

import pytest
import torch

from boltzkit.models import flow_objectives
from boltzkit.samplers import flow as flow_bg
from boltzkit.targets.base import Target

SMALL = dict(kind="affine", n_layers=2, hidden=16, depth=1, lr=5e-3, log_every=10)


class Holey(Target):
    """A standard normal whose energy is NaN for x_0 > 1 and overflows to +inf for x_0 < -2."""

    name = "holey"

    def _log_prob(self, x):
        lp = -0.5 * (x**2).sum(-1)
        lp = torch.where(x[..., 0] > 1, torch.full_like(lp, math.nan), lp)
        return torch.where(x[..., 0] < -2, torch.full_like(lp, -math.inf), lp)


def test_perfect_proposal_gives_ess_n_and_exact_log_Z(gaussian, exact_flow):
    torch.manual_seed(0)
    for temp in (0.5, 1.0, 3.0):
        _, log_w, n_bad = flow_objectives.reweight(exact_flow(), gaussian.tempered(temp), 4096,
                                                   temp)
        summary = flow_objectives.summarise_weights(log_w)
        assert n_bad == 0
        assert summary["ess"] == pytest.approx(4096, rel=1e-12)
        assert summary["log_Z"] == pytest.approx(gaussian.tempered(temp).log_Z, abs=1e-12)


def test_guarded_weights_are_never_nan():
    log_gamma = torch.tensor([0.0, math.nan, -math.inf, math.inf, 1.0])
    log_q = torch.tensor([0.0, 0.0, 0.0, 0.0, math.nan])
    log_w, n_bad = flow_objectives.guarded_log_w(log_gamma, log_q)
    assert n_bad == 4 and log_w.dtype == torch.float64
    assert not torch.isnan(log_w).any() and torch.isneginf(log_w[1:]).all()


def test_reverse_kl_survives_non_finite_energies():
    torch.manual_seed(0)
    target = Holey(2)
    config = flow_bg.Config(objective="reverse", n_steps=30, batch_size=128, **SMALL)
    res = flow_bg.sample(target, config, n_samples=2000, budget=None)
    assert res.diagnostics["n_nonfinite"] > 0, "the holes must be hit and counted"
    assert res.diagnostics["n_nonfinite_weights"] > 0
    assert not torch.isnan(res.log_w).any() and math.isfinite(res.log_Z)
    assert all(math.isfinite(h["loss"]) for h in res.diagnostics["history"])


@pytest.mark.parametrize("objective", ["forward", "reverse", "both"])
def test_training_recovers_log_Z(gaussian, objective):
    """A 2-D Gaussian: ESS/N > 0.9 and the IS log Z within 5 SE of the closed form."""
    torch.manual_seed(1)
    config = flow_bg.Config(objective=objective, n_steps=250, batch_size=256, n_data=4000,
                            **SMALL)
    res = flow_bg.sample(gaussian, config, n_samples=8000, budget=None)
    d = res.diagnostics
    assert d["ess_fraction"] > 0.9
    assert abs(res.log_Z - gaussian.log_Z) < 5 * d["log_Z_se"] + 1e-3
    expected_energy = (0 if objective == "forward" else 250 * 256) + 8000
    assert res.counts["n_energy"] == expected_energy


def test_budget_stops_training_and_is_respected(gaussian):
    config = flow_bg.Config(objective="reverse", n_steps=1000, batch_size=100, **SMALL)
    res = flow_bg.sample(gaussian, config, n_samples=500, budget=2000)
    assert res.diagnostics["stopped_by_budget"]
    assert res.counts["n_energy"] <= 2000 and res.diagnostics["n_steps"] == 15


def test_budget_below_n_samples_is_an_error_and_forward_kl_spends_nothing(gaussian):
    config = flow_bg.Config(objective="forward", n_steps=5, batch_size=100, n_data=200, **SMALL)
    with pytest.raises(ValueError, match="smaller than n_samples"):
        flow_bg.sample(gaussian, config, n_samples=500, budget=499)
    res = flow_bg.sample(gaussian, config, n_samples=500, budget=500)
    assert res.counts["n_energy"] == 500 and res.diagnostics["n_steps"] == 5
    assert not res.diagnostics["stopped_by_budget"]


def test_forward_kl_needs_exact_samples():
    with pytest.raises(ValueError, match="exact samples"):
        flow_bg.sample(Holey(2), flow_bg.Config(objective="forward"), n_samples=10, budget=None)


def test_resume_continues_from_checkpoint_and_keeps_the_budget(gaussian, tmp_path):
    config = flow_bg.Config(objective="reverse", n_steps=6, batch_size=10, checkpoint_every=2,
                            **SMALL)
    torch.manual_seed(0)
    flow = flow_bg.make_flow(config.flow_config(2, conditional=False))
    first = flow_bg.train(flow, gaussian, config, budget=45, run_dir=tmp_path)
    assert first["stopped_by_budget"] and first["n_steps"] == 4
    resumed_target = gaussian.uncounted()
    again = flow_bg.train(flow_bg.make_flow(config.flow_config(2, conditional=False)),
                          resumed_target, config, budget=60, run_dir=tmp_path, resume=True)
    assert again["n_steps"] == 6
    assert resumed_target.counter.n_energy == 60, "the resumed run is charged the first 40"
