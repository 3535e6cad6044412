"""Flow-assisted PT: the flow's moves carry chains between modes a local kernel cannot cross
and restore the right mode weights (without them the weights stay where the chains started);
the budget covers all three phases; the flow on a particle system lives on the
centre-of-mass-free subspace with an exact density there."""

from __future__ import annotations

import json
import math

import pytest
import torch

from boltzkit.core.errors import UsageError
from boltzkit.models.flow_objectives import FlowProposal
from boltzkit.models.flows import FlowConfig, make_flow
from boltzkit.samplers import flow_pt, mcmc
from boltzkit.targets.base import Target
from boltzkit.targets.particles import DoubleWell

WEIGHT = 0.75  # of the mode at x_0 = +4


class TwoModes(Target):
    """0.25 N((-4, 0), 0.5^2 I) + 0.75 N((4, 0), 0.5^2 I): a barrier of about 32 nats that MALA
    with small steps never crosses."""

    name = "two-modes"

    def _log_prob(self, x):
        shift = torch.tensor([4.0, 0.0], dtype=x.dtype)
        right = math.log(WEIGHT) - 2.0 * ((x - shift) ** 2).sum(-1)
        left = math.log(1 - WEIGHT) - 2.0 * ((x + shift) ** 2).sum(-1)
        return torch.logaddexp(left, right)


SMALL = dict(n_temps=1, n_chains=64, init_scale=4.0, step_size=0.05, burn_in=0.2,
             kind="spline", n_layers=2, hidden=32, depth=1, bound=8.0, flow_steps=300,
             flow_lr=5e-3, n_data=2048, checkpoint_every=0)


def right_fraction_and_se(samples: torch.Tensor, n_chains: int) -> tuple[float, float]:
    """Fraction of samples with x_0 > 0 and its batch-means SE (8 blocks of kept times; rows
    are time-major, n_chains per time)."""
    right = (samples[:, 0] > 0).double().reshape(-1, n_chains).mean(1)
    blocks = right[: len(right) // 8 * 8].reshape(8, -1).mean(1)
    return float(right.mean()), float(blocks.std() / math.sqrt(8))


@pytest.mark.parametrize("flow_moves", [True, False])
def test_flow_moves_restore_the_mode_weights(flow_moves: bool, monkeypatch) -> None:
    torch.manual_seed(0)
    if not flow_moves:  # broken variant: the same run with the flow's moves left out
        real = mcmc.sample
        monkeypatch.setattr(flow_pt.mcmc, "sample",
                            lambda *a, proposal=None, **k: real(*a, **k))
    config = flow_pt.Config(**SMALL)
    result = flow_pt.sample(TwoModes(2), config, n_samples=2048, budget=200_000)
    fraction, se = right_fraction_and_se(result.samples, config.n_chains)
    ok = abs(fraction - WEIGHT) < 4 * se
    assert ok == flow_moves, (fraction, se)
    if flow_moves:
        assert result.diagnostics["flow_acceptance"] > 0.2
        assert result.diagnostics["flow_move"] == "kept"


class FarAway:
    """A proposal whose samples sit where the target has no mass."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def sample_and_log_prob(self, shape, level):
        x = 100.0 + torch.randn(*shape, 2, dtype=torch.float64)
        return x, self.log_prob(x, level)

    def log_prob(self, x, level):
        return -0.5 * ((x - 100.0) ** 2).sum(-1) - math.log(2 * math.pi)


def test_a_flow_whose_moves_are_never_accepted_is_dropped_after_the_trial(monkeypatch) -> None:
    torch.manual_seed(3)
    monkeypatch.setattr(flow_pt, "FlowProposal", FarAway)
    result = flow_pt.sample(TwoModes(2), flow_pt.Config(**SMALL), n_samples=512,
                            budget=50_000)
    assert result.diagnostics["flow_move"] == "dropped"
    assert max(result.diagnostics["flow_trial_acceptance_per_temperature"]) < 0.01
    assert result.diagnostics["acceptance_per_stage"] == []  # phase 4 ran without the move
    assert result.counts["n_energy"] <= 50_000


def test_the_budget_covers_explore_training_and_sampling() -> None:
    torch.manual_seed(1)
    config = flow_pt.Config(**SMALL)
    result = flow_pt.sample(TwoModes(2), config, n_samples=512, budget=50_000)
    spent, explore = result.counts["n_energy"], result.diagnostics["explore_n_energy"]
    assert spent <= 50_000 and spent > 50_000 - 2 * 64 * 2  # the rest buys no whole step
    assert 0 < explore <= config.train_fraction * 50_000
    with pytest.raises(UsageError, match="larger --budget"):
        flow_pt.sample(TwoModes(2), config, n_samples=64, budget=300)


def test_particle_flows_live_on_the_centre_of_mass_free_subspace() -> None:
    torch.manual_seed(2)
    target = DoubleWell()
    basis = flow_pt.subspace_basis(target)
    assert basis is not None and basis.shape == (8, 6)
    assert torch.allclose(basis.T @ basis, torch.eye(6, dtype=basis.dtype), atol=1e-12)
    assert flow_pt.subspace_basis(TwoModes(2)) is None
    flow = make_flow(FlowConfig(dim=6, kind="affine", n_layers=2, hidden=8, conditional=False,
                                latent_power=1.0)).double()
    proposal = FlowProposal(flow, basis=basis)
    level = target.tempered(torch.tensor([[1.0], [3.0]], dtype=torch.float64))
    x, log_q = proposal.sample_and_log_prob((2, 5), level)
    assert torch.allclose(target.remove_com(x), x, atol=1e-12)
    assert torch.allclose(proposal.log_prob(x, level), log_q, atol=1e-9)


def test_presets_carry_the_pt_settings() -> None:
    config = flow_pt.preset("dw4")
    assert (config.n_temps, config.T_max, config.init_relax_steps) == (6, 10.0, 100)
    assert "dw4" in flow_pt.preset_names()


def test_a_trade_run_s_flow_proposes_at_every_rung_from_the_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from boltzkit.cli import app

    cli = CliRunner()
    trade_dir, pt_dir = tmp_path / "trade", tmp_path / "flow-pt"
    common = ["--seed", "0", "--quiet", "--no-figures"]
    made = cli.invoke(app, ["sample", "two-modes", "--sampler", "trade", "--budget", "20000",
                            "--n-samples", "200", "--out", str(trade_dir), *common,
                            "--set", "n_steps=60", "--set", "warmup_steps=30",
                            "--set", "kind=affine", "--set", "hidden=16", "--set", "c_min=0.5",
                            "--set", "c_max=4.0"])
    assert made.exit_code == 0, made.output
    run = cli.invoke(app, ["sample", "two-modes", "--sampler", "flow-pt", "--budget", "60000",
                           "--n-samples", "256", "--out", str(pt_dir), *common, "--set",
                           f"flow_from={trade_dir}", "--set", "n_temps=3", "--set", "T_max=4",
                           "--set", "n_chains=32", "--set", "trial_fraction=0.2"])
    assert run.exit_code == 0, run.output
    diagnostics = json.loads((pt_dir / "diagnostics.json").read_text())["diagnostics"]
    counts = json.loads((pt_dir / "diagnostics.json").read_text())["counts"]
    assert diagnostics["flow_from"] == str(trade_dir) and "explore" not in diagnostics
    assert len(diagnostics["flow_trial_acceptance_per_temperature"]) == 3
    assert counts["n_energy"] <= 60_000
    proposal, _ = flow_pt.proposal_from_run(trade_dir, TwoModes(2))
    assert proposal.c is None  # q(x | c = T) at rung T
    bad = cli.invoke(app, ["sample", "two-modes", "--sampler", "flow-pt", "--budget", "60000",
                           "--out", str(tmp_path / "bad"), *common, "--set",
                           f"flow_from={tmp_path}"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "not a finished flow or trade run directory" in bad.output


@pytest.mark.parametrize("budget", [5_000, 12_000, 50_000])
def test_affordable_samples_is_what_a_run_with_the_flow_move_returns(budget: int) -> None:
    torch.manual_seed(4)
    config = flow_pt.pt_config(flow_pt.Config(**{**SMALL, "n_temps": 2, "n_chains": 16}))
    proposal = FlowProposal(make_flow(FlowConfig(dim=2, kind="affine", n_layers=2, hidden=8,
                                                 conditional=False)).double())
    n = mcmc.affordable_samples(config, budget, proposal)
    assert n == mcmc.sample(TwoModes(2), config, n_samples=n, budget=budget,
                            proposal=proposal).samples.shape[0]
    with pytest.raises(UsageError, match="buys at most"):
        mcmc.sample(TwoModes(2), config, n_samples=n + 1, budget=budget, proposal=proposal)
