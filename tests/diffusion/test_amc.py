"""Diffusion annealed MC end to end: learned models (exact when the data are Gaussian), the
"smc" sampler, and the amc-gmm experiment (quick preset here, the acceptance preset marked
slow)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from boltzkit.diffusion.kernels import DDIM, FirstOrder, NoisingKernel, SecondOrder
from boltzkit.diffusion.learned import DSMConfig, LearnedModel, level_diagnostics, train_dsm
from boltzkit.diffusion.schedules import PerfectModel, VPSchedule, time_grid
from boltzkit.experiments import amc_gmm
from boltzkit.mc.paths import DiffusionPath
from boltzkit.mc.smc import Resampling, smc
from boltzkit.models.energy_net import EnergyNet, ScoreNet
from boltzkit.samplers import SampleResult
from boltzkit.samplers import smc as smc_sampler
from boltzkit.targets.gmm import GaussianMixture
from boltzkit.targets.mixtures import two_modes

VP = VPSchedule()


def gaussian_data(d: int, scale: float) -> GaussianMixture:
    # The scale as a float64 tensor: a Python float would pass through float32 in GaussianMixture.
    return GaussianMixture([1.0], torch.zeros(1, d, dtype=torch.float64),
                           torch.tensor(scale, dtype=torch.float64))


def exact_untrained(net_cls: type, d: int = 3, scale: float = 0.7) -> LearnedModel:
    """An untrained net is its Gaussian base term, N(0, (alpha^2 s^2 + sigma^2) I): exactly p_t
    for N(0, s^2 I) data."""
    torch.manual_seed(0)
    return LearnedModel(net_cls(d, hidden=16, n_layers=2, data_var=scale**2).double(), VP,
                        data_var=scale**2)


# ---- learned models ----------------------------------------------------------------------------


def test_energy_net_score_and_learned_jacobians_match_finite_differences() -> None:
    torch.manual_seed(0)
    net = EnergyNet(3, hidden=16, n_layers=2).double()
    for p in net.parameters():  # leave the zero initialisation: a non-trivial network
        torch.nn.init.normal_(p, std=0.3)
    model = LearnedModel(net, VP, data_var=1.0)
    x, t, h = torch.randn(4, 3, dtype=torch.float64), 0.4, 1e-6
    eye = torch.eye(3, dtype=torch.float64)
    lp = lambda z: model.log_prob(z, t)  # noqa: E731
    fd_score = torch.stack([(lp(x + h * e) - lp(x - h * e)) / (2 * h) for e in eye], -1)
    assert torch.allclose(model.score(x, t), fd_score, atol=1e-6)
    fd_jac = torch.stack([(model.denoiser(x + h * e, t) - model.denoiser(x - h * e, t)) / (2 * h)
                          for e in eye], -1)
    assert torch.allclose(model.denoiser_jacobian(x, t), fd_jac, atol=1e-5)
    cov = model.posterior_covariance(x, t)
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    assert model.n_jvp > 0


@pytest.mark.parametrize("net_cls", [EnergyNet, ScoreNet])
def test_level_diagnostics_are_exact_for_a_correct_model(net_cls: type) -> None:
    model = exact_untrained(net_cls)
    diag = level_diagnostics(model, PerfectModel(gaussian_data(3, 0.7), VP),
                             torch.tensor([0.9, 0.5, 0.1, 0.01]), n_samples=300)
    assert float(diag.fisher.max()) < 1e-12
    if net_cls is EnergyNet:
        assert torch.allclose(diag.ess_fraction, torch.ones(4, dtype=torch.float64))
        assert torch.allclose(diag.mode_weights, torch.ones(4, 1, dtype=torch.float64))
    else:
        assert bool(diag.ess_fraction.isnan().all() and diag.mode_weights.isnan().all())


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_learned_path_of_a_correct_model_gives_exact_weights(covariance: str) -> None:
    """Second order through autograd Jacobians is exact for Gaussian data."""
    torch.manual_seed(1)
    data = gaussian_data(3, 0.7)
    path = DiffusionPath(exact_untrained(EnergyNet), data, time_grid(VP, 5, t_min=1e-3))
    res = smc(path, n_particles=200, proposal=SecondOrder(covariance), backward=NoisingKernel())
    assert abs(float(res.log_Z)) < 1e-9
    assert torch.allclose(res.diagnostics.ess, torch.full_like(res.diagnostics.ess, 200.0))


def test_learned_transport_log_det_matches_finite_differences() -> None:
    torch.manual_seed(1)
    net = EnergyNet(3, hidden=16, n_layers=2).double()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model = LearnedModel(net, VP, data_var=1.0)
    path = DiffusionPath(model, gaussian_data(3, 1.0), torch.tensor([1.0, 0.5, 0.4, 0.0]))
    src, dst = path.level(path.grid[1:2]), path.level(path.grid[2:3])
    x, h, eye = torch.randn(4, 3, dtype=torch.float64), 1e-6, torch.eye(3, dtype=torch.float64)
    move = DDIM().propose(x, src, dst)
    jac = torch.stack([(DDIM().propose(x + h * e, src, dst).x
                        - DDIM().propose(x - h * e, src, dst).x) / (2 * h) for e in eye], -1)
    assert torch.allclose(-move.log_q, torch.linalg.slogdet(jac)[1], atol=1e-6)


def test_score_model_runs_ais_only() -> None:
    torch.manual_seed(2)
    data = gaussian_data(3, 0.7)
    path = DiffusionPath(exact_untrained(ScoreNet), data, time_grid(VP, 5, t_min=1e-3))
    res = smc(path, n_particles=200, proposal=SecondOrder("full"), backward=NoisingKernel(),
              resampling=Resampling(ess_threshold=0.0))
    assert abs(float(res.log_Z)) < 1e-9  # telescoped: only the reference and the target
    with pytest.raises(ValueError, match="no log-density"):
        smc(path, n_particles=20, proposal=FirstOrder(), backward=NoisingKernel())


def test_denoising_score_matching_approaches_the_exact_score() -> None:
    """The Fisher divergence to the exact noised score falls with training (the DSM loss itself
    is dominated by its irreducible part)."""
    target, times = two_modes(2, 2.0), torch.tensor([0.6, 0.3])
    fisher = []
    for n_steps in (0, 150):
        torch.manual_seed(3)
        cfg = DSMConfig(n_steps=n_steps, hidden=32, n_layers=2, n_train=2000, batch_size=128,
                        lr=3e-3)
        model = train_dsm(target, VP, cfg).model
        fisher.append(level_diagnostics(model, PerfectModel(target, VP), times, 1000).fisher)
    assert bool((fisher[1] < 0.5 * fisher[0]).all()), fisher


# ---- the "smc" sampler -------------------------------------------------------------------------


def test_smc_sampler_convention_and_log_Z() -> None:
    torch.manual_seed(4)
    target = two_modes(2, 2.0)
    res = smc_sampler.sample(target, smc_sampler.preset("quick"), n_samples=1000)
    assert isinstance(res, SampleResult)
    assert res.samples.shape == (1000, 2) and res.log_w.shape == (1000,)
    assert abs(res.log_Z) < 0.2  # log Z = 0; a few SE of a 1000-particle run
    assert math.isclose(float(torch.logsumexp(res.log_w, 0)) - math.log(1000), res.log_Z)
    assert res.counts["n_energy"] == target.counter.n_energy > 0
    weights = torch.softmax(res.log_w, 0)
    heavy = float((weights * (target.assign(res.samples) == 0)).sum())
    assert abs(heavy - 2 / 3) < 0.1
    json.dumps(res.diagnostics)  # JSON-serialisable
    fewer = smc_sampler.sample(target, smc_sampler.Config(n_particles=200), n_samples=100,
                               budget=2000)
    assert fewer.samples.shape == (100, 2) and fewer.log_w is None
    assert fewer.diagnostics["stopped_by_budget"]


# ---- the experiment ----------------------------------------------------------------------------


def test_amc_gmm_quick_preset_writes_its_tables(tmp_path) -> None:  # noqa: ANN001
    headline = amc_gmm.run(tmp_path, ["preset=quick", "models=perfect,learned-score"],
                           lambda event, **info: None)
    for name in ("results.csv", "results.md", "learned_levels.csv", "configs.json",
                 "error_vs_dim.png", "ess_traces.png"):
        assert (tmp_path / name).exists(), name
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    # perfect: 4 kernels x 2 (MCMC or not); learned-score: 3 kernels (no exact, no MCMC)
    assert len(rows) == headline["n_runs"] == 11
    exact = [r for r in rows if r["kernel"] == "exact" and r["model"] == "perfect"]
    assert all(float(r["abs_log_Z_error"]) < 1e-10 for r in exact)
    assert all(float(r["min_ess_fraction"]) > 0.999 for r in exact)
    assert math.isfinite(headline["second-order/abs_log_Z_error"])
    assert "| mixture | d |" in (tmp_path / "results.md").read_text()
    levels = list(csv.DictReader(open(tmp_path / "learned_levels.csv")))
    assert len(levels) == 7 and all(r["ess_fraction"] == "nan" for r in levels)


def test_amc_gmm_rejects_unknown_keys_and_names(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(KeyError, match="valid keys"):
        amc_gmm.run(tmp_path, ["bogus=1"], lambda event, **info: None)
    with pytest.raises(KeyError, match="valid amc-gmm presets: acceptance"):
        amc_gmm.run(tmp_path, ["preset=bogus"], lambda event, **info: None)
    with pytest.raises(KeyError, match="valid kernels"):
        amc_gmm.run(tmp_path, ["kernels=bogus"], lambda event, **info: None)
    mix = amc_gmm.make_mixture("modes-8", 5, 3.0)
    assert mix.n_components == 8 and mix.dim == 5


def test_second_order_and_transport_beat_first_order_at_d32() -> None:
    """A cheap version of the acceptance claim that does not hinge on Monte Carlo noise:
    minimum ESS and log Z error, two-modes d = 32, a = 3, N = 500."""
    target, cfg = two_modes(32, 3.0), amc_gmm.Config(n_particles=500)
    model = PerfectModel(target, VP)
    rows = {k: amc_gmm.run_one(target, model, k, False, 0, cfg)[0]
            for k in ("first-order-ratio", "second-order", "ddim")}
    assert rows["first-order-ratio"]["min_ess_fraction"] < 0.05
    for k in ("second-order", "ddim"):
        assert rows[k]["min_ess_fraction"] > 0.3
        assert rows[k]["abs_log_Z_error"] < 0.1 < rows["first-order-ratio"]["abs_log_Z_error"]


@pytest.mark.slow
def test_amc_gmm_acceptance(tmp_path) -> None:  # noqa: ANN001
    """The issue's acceptance run (about two minutes on one core)."""
    headline = amc_gmm.run(tmp_path, ["preset=acceptance"], lambda event, **info: None)
    assert headline["acceptance_passed"], headline
