"""TimeMLP and the sinusoidal time embedding."""

import math

import torch

from boltzkit.models.mlp import SinusoidalEmbedding, TimeMLP


def test_embedding_is_sin_cos_of_scaled_time():
    emb = SinusoidalEmbedding(8, max_period=100.0, scale=10.0)
    t = torch.tensor([0.0, 0.3], dtype=torch.float64)
    e = emb(t)
    assert e.shape == (2, 8) and e.dtype == torch.float64
    freqs = torch.tensor([100.0 ** (-k / 4) for k in range(4)], dtype=torch.float64)
    torch.testing.assert_close(e[1, :4], torch.sin(3.0 * freqs))
    torch.testing.assert_close(e[1, 4:], torch.cos(3.0 * freqs))
    torch.testing.assert_close(e.square().reshape(2, 2, 4).sum(1), torch.ones(2, 4,
                               dtype=torch.float64))
    assert math.isclose(e[0, 4].item(), 1.0)


def test_untrained_mlp_predicts_zero_and_learns_time_dependence():
    torch.manual_seed(0)
    net = TimeMLP(dim=3, hidden=16, n_layers=2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert net(x, torch.rand(5, dtype=torch.float64)).abs().max() == 0
    # One gradient step towards a time-dependent target moves the output off zero, differently
    # for different times: time reaches the output.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    t = torch.tensor([0.1, 0.9], dtype=torch.float64)
    xx = torch.zeros(2, 3, dtype=torch.float64)
    for _ in range(2):
        opt.zero_grad()
        loss = (net(xx, t) - torch.stack([torch.ones(3), -torch.ones(3)]).double()).square().sum()
        loss.backward()
        opt.step()
    out = net(xx, t)
    assert out[0].mean() > 0 > out[1].mean()


def test_scalar_time_broadcasts_over_batch():
    torch.manual_seed(1)
    net = TimeMLP(dim=2, hidden=8, n_layers=1)
    torch.nn.init.normal_(net.output.weight)
    x = torch.randn(4, 2)
    torch.testing.assert_close(net(x, 0.25), net(x, torch.full((4,), 0.25)))
