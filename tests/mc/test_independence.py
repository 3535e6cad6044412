"""Independence Metropolis-Hastings (flows as moves): exact samples stay exact, alone, in a
cycle with MALA and at every rung of parallel tempering; a broken acceptance ratio fails."""

from __future__ import annotations

import math

import pytest
import torch
from tests.mc.test_mcmc import (
    F64,
    Gaussian2D,
    Mixture2D,
    Z,
    features,
    reversibility_z,
    run_from_exact,
    z_scores,
)
from torch import Tensor

from boltzkit.mc.independence import Cycle, IndependenceMH
from boltzkit.mc.mcmc import MALA
from boltzkit.mc.tempering import ParallelTempering, geometric_ladder
from boltzkit.models.flow_objectives import FlowProposal
from boltzkit.models.flows import FlowConfig, make_flow


class GaussianProposal:
    """q(x | level) = N(m, s^2 T I), T the level's temperature (1 outside tempering)."""

    def __init__(self, m: float = 0.5, s: float = 1.6, dim: int = 2) -> None:
        self.m, self.s, self.dim = m, s, dim

    def _scale(self, level, shape) -> Tensor:
        temperature = getattr(level, "temperature", 1.0)
        return (self.s * torch.as_tensor(temperature, dtype=F64).sqrt()).expand(shape)

    def sample_and_log_prob(self, shape, level):
        scale = self._scale(level, shape)
        x = self.m + scale.unsqueeze(-1) * torch.randn(*shape, self.dim, dtype=F64)
        return x, self.log_prob(x, level)

    def log_prob(self, x, level):
        scale = self._scale(level, x.shape[:-1])
        return (-0.5 * ((x - self.m) / scale.unsqueeze(-1)) ** 2).sum(-1) - self.dim * (
            torch.log(scale) + 0.5 * math.log(2 * math.pi))


class NoProposalRatio(IndependenceMH):
    """Broken variant: accepts with pi(x') / pi(x), forgetting q(x) / q(x')."""

    def _propose(self, state, target):
        proposal, ratio, bad = super()._propose(state, target)
        return proposal, torch.zeros_like(ratio), bad


@pytest.mark.parametrize("broken", [False, True])
def test_independence_mh_leaves_the_target_invariant(broken: bool) -> None:
    kind = NoProposalRatio if broken else IndependenceMH
    target = Mixture2D()
    x0, x1, x3 = run_from_exact(kind(GaussianProposal()), target)
    invariance = z_scores(features(x3), target.feature_means()).abs().max()
    if broken:
        assert invariance > Z
        return
    assert (x1 != x0).any(-1).double().mean() > 0.2  # it does move
    assert invariance < Z
    assert reversibility_z(x0, x1).abs().max() < Z


def test_a_cycle_with_mala_stays_exact_and_counts_both() -> None:
    target = Mixture2D()
    cycle = Cycle((IndependenceMH(GaussianProposal(), with_score=True), MALA(0.5)))
    assert cycle.needs_score and cycle.evals_per_step == 2
    target.counter.reset()
    x0, _, x3 = run_from_exact(cycle, target, n=20_000)
    assert target.counter.n_energy == 20_000 * (1 + 2 * 3)  # init + 3 cycles of 2
    assert z_scores(features(x3), target.feature_means()).abs().max() < Z
    with pytest.raises(ValueError, match="with_score=True"):
        Cycle((IndependenceMH(GaussianProposal()), MALA(0.5)))


@pytest.mark.parametrize("broken", [False, True])
def test_per_rung_proposals_keep_every_tempered_replica_exact(broken: bool) -> None:
    """q(x | T) at each rung (as TRADE's flow would give); replicas start exact at T_k S."""
    torch.manual_seed(0)
    kind = NoProposalRatio if broken else IndependenceMH
    target, n = Gaussian2D(), 10_000
    pt = ParallelTempering(kind(GaussianProposal(m=0.3, s=1.3)), geometric_ladder(4, 8.0))
    temps = torch.tensor(pt.temperatures, dtype=F64)
    state = pt.init(target.exact(temps, n), target)
    for _ in range(3):
        state, info = pt.step(state, target)
    x = state.chains.x
    second = torch.stack([x[..., 0], x[..., 0] ** 2, x[..., 1] ** 2, x[..., 0] * x[..., 1]], -1)
    truth = temps.view(-1, 1) * torch.tensor([0.0, 1.0, 1.0, 0.8], dtype=F64)
    z = (second.mean(1) - truth) / (second.std(1) / math.sqrt(n))
    assert (z.abs().max() > Z) if broken else (z.abs().max() < Z)


def test_a_flow_proposes_at_each_replicas_temperature() -> None:
    torch.manual_seed(0)
    flow = make_flow(FlowConfig(dim=2, kind="affine", n_layers=2, hidden=16)).double()
    proposal = FlowProposal(flow)
    level = Gaussian2D().tempered(torch.tensor([[1.0], [4.0]], dtype=F64))
    x, log_q = proposal.sample_and_log_prob((2, 5), level)
    assert x.shape == (2, 5, 2) and log_q.shape == (2, 5) and x.dtype == F64
    direct = torch.stack([flow.log_prob(x[k], c) for k, c in enumerate((1.0, 4.0))])
    assert torch.allclose(proposal.log_prob(x, level), direct, atol=1e-10)
    assert torch.allclose(log_q, direct, atol=1e-8)
    # a flow's log q is exact, so even an untrained one gives an exact move
    x0, _, x3 = run_from_exact(IndependenceMH(FlowProposal(flow, c=1.0)), Mixture2D(), n=8000)
    assert z_scores(features(x3), Mixture2D().feature_means()).abs().max() < Z
