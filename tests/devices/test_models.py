"""Networks follow their inputs' device once moved there (`module.to(device)`): every flow kind
(log_prob, sampling, a backward pass), the EGNN on both of its paths, the time MLP and the energy
and score nets; the fused EGNN kernel is CPU-only, so a non-CPU input takes the library path; the
denoising kernels of `boltzkit.diffusion.kernels` (their Gaussian moves) follow their means."""

from __future__ import annotations

import typing

import pytest
import torch
from tests.devices.guard import assert_on, strict

from boltzkit.diffusion import kernels
from boltzkit.models import fused
from boltzkit.models.egnn import EGNN
from boltzkit.models.energy_net import EnergyNet, ScoreNet
from boltzkit.models.flows import FlowConfig, FlowKind, make_flow
from boltzkit.models.mlp import TimeMLP

KINDS = list(typing.get_args(FlowKind))


@pytest.mark.parametrize("kind", KINDS)
def test_flow_follows_its_device(kind: str, device: str) -> None:
    config = FlowConfig(dim=4, kind=kind, n_layers=2, hidden=8, depth=1,
                        latent_power=0.0 if kind == "circular" else 1.0)
    flow = make_flow(config, torch.randn(64, 4)).to(device)
    c = torch.tensor([0.5, 1.0, 2.0], device=device)
    with strict(device):
        x, log_q = flow.sample_and_log_prob(3, c)
        log_q2 = flow.log_prob(x.detach(), c)
        log_q2.sum().backward()
        at_one = flow.sample(5, 1.0)
    assert x.shape == (3, 4)
    assert_on((x, log_q, log_q2, at_one), device)
    assert all(p.grad is not None and p.grad.device.type == torch.device(device).type
               for p in flow.parameters() if p.requires_grad)


@pytest.mark.parametrize("fuse", [False, True], ids=["library", "fused"])
def test_egnn_follows_its_device(fuse: bool, device: str) -> None:
    if fuse and device == "cpu" and fused.egnn_kernel() is None:
        pytest.skip(f"no fused kernel: {fused.build_error()}")
    net = EGNN(4, 3, hidden=8, n_layers=2, fused=fuse).to(device)
    x = torch.randn(5, 12, device=device)
    with strict(device):
        with torch.no_grad():  # the fused kernel runs without autograd only
            out = net(x, torch.rand(5, device=device))
            out_scalar_t = net(x, 0.3)
        with_grad = net(x.requires_grad_(True), 0.3)
    assert_on((out, out_scalar_t, with_grad), device)


def test_the_fused_kernel_is_cpu_only() -> None:
    """A non-CPU input never reaches the C++ kernel (meta stands in for a GPU here)."""
    net = EGNN(4, 3, hidden=8, n_layers=2, fused=True)
    with torch.no_grad():
        assert net._kernel(torch.zeros(2, 12, device="meta")) is None
        out = net.to("meta")(torch.zeros(2, 12, device="meta"), 0.5)
    assert out.device.type == "meta" and out.shape == (2, 12)


def test_small_networks_follow_their_device(device: str) -> None:
    mlp, energy, score = (TimeMLP(3, hidden=8, n_layers=2, time_dim=4).to(device),
                          EnergyNet(3, hidden=8, n_layers=2).to(device),
                          ScoreNet(3, hidden=8, n_layers=2).to(device))
    x = torch.randn(6, 3, device=device)
    with strict(device):
        outs = (mlp(x, torch.rand(6, device=device)), energy(x, 0.8, 0.6),
                energy.score(x, 0.8, 0.6), score(x, 0.8, 0.6))
    assert_on(outs, device)


def test_gaussian_moves_follow_their_mean(device: str) -> None:
    f64 = {"dtype": torch.float64, "device": device}
    mean = torch.randn(2, 8, 3, **f64)
    a, u = 0.2 * torch.eye(3, **f64), torch.randn(2, 8, 3, 2, **f64)
    with strict(device):
        move = kernels.gaussian_move(mean, 0.3)
        log_p = kernels.gaussian_log_prob(move.x, mean, torch.tensor(0.3, device=device))
        lowrank = kernels.lowrank_gaussian_move(mean, a, u)
    assert_on((move, log_p, lowrank), device)
