"""The EGNN: E(n) and permutation equivariance in float64, COM-free output, and the exact
reformulations (split first layer, shared first-layer node state, chunked in-place inference)."""

import pytest
import torch
from torch.nn import functional as F

from boltzkit.models.egnn import EGNN

N, D = 5, 3


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = EGNN(N, D, hidden=24, n_layers=3, chunk_edges=3 * N * (N - 1)).double()
    with torch.no_grad():
        for p in model.parameters():  # away from the near-identity initialisation
            p.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, N * D, generator=gen, dtype=torch.float64)
    t = torch.rand(7, generator=gen, dtype=torch.float64)
    return x, t


def _orthogonal(det_sign: float) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(2),
                                       dtype=torch.float64))
    if torch.linalg.det(q) * det_sign < 0:
        q[:, 0] = -q[:, 0]
    return q


def _act(x, q=None, shift=None, perm=None):
    xp = x.view(-1, N, D)
    if perm is not None:
        xp = xp[:, perm]
    if q is not None:
        xp = xp @ q.T
    if shift is not None:
        xp = xp + shift
    return xp.reshape(x.shape)


def test_output_shape_dtype_and_zero_com(net, inputs):
    x, t = inputs
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == torch.float64
    assert out.view(-1, N, D).sum(1).abs().max() < 1e-12
    assert out.abs().mean() > 1e-2, "the test network must not be trivial"


@pytest.mark.parametrize("det_sign", [1.0, -1.0], ids=["rotation", "reflection"])
def test_orthogonal_equivariance(net, inputs, det_sign):
    x, t = inputs
    q = _orthogonal(det_sign)
    torch.testing.assert_close(net(_act(x, q=q), t), _act(net(x, t), q=q), atol=1e-12, rtol=0)


def test_translation_invariance(net, inputs):
    x, t = inputs
    shift = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(net(_act(x, shift=shift), t), net(x, t), atol=1e-12, rtol=0)


def test_permutation_equivariance(net, inputs):
    x, t = inputs
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(net(_act(x, perm=perm), t), _act(net(x, t), perm=perm),
                               atol=1e-12, rtol=0)


def test_broken_equivariance_is_detected(net, inputs):
    """The tests above would fail for a network that sees absolute coordinates."""
    x, t = inputs
    q = _orthogonal(1.0)
    err = (net(_act(x, q=q) + 0.1 * _act(x, q=q) ** 2, t) - _act(net(x + 0.1 * x**2, t), q=q))
    assert err.abs().max() > 1e-3


def test_chunked_inplace_inference_matches_autograd_path(net, inputs):
    x, t = inputs
    reference = net(x, t)
    with torch.no_grad():
        chunked = net(x, t)
        scalar_time = net(x, 0.37)
    torch.testing.assert_close(chunked, reference.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(scalar_time, net(x, torch.full((7,), 0.37, dtype=torch.float64)),
                               atol=1e-12, rtol=0)


def test_split_first_edge_layer_equals_concatenated_linear(net, inputs):
    """W [h_i, h_j, r_ij] + b computed on concatenated edge features equals the split form."""
    x, _ = inputs
    layer = net.layers[1]
    torch.manual_seed(3)
    h = torch.randn(7, N, 24, dtype=torch.float64)
    xp = x.view(7, N, D)
    r2 = (xp[:, :, None] - xp[:, None]).square().sum(-1, keepdim=True)
    rows, cols = torch.where(~torch.eye(N, dtype=torch.bool))
    feats = torch.cat([h[:, rows], h[:, cols], r2[:, rows, cols]], dim=-1)
    weight = torch.cat([layer.edge_src.weight, layer.edge_dst.weight,
                        layer.edge_dist[:, None]], dim=1)
    expected = F.linear(feats, weight, layer.edge_src.bias).view(7, N, N - 1, 24)
    r2_edges = r2[:, rows, cols].view(7, N, N - 1, 1)
    got = layer._first_edge_layer(h, r2_edges, net.col, inplace=False)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_gradients_reach_every_parameter(net, inputs):
    x, t = inputs
    net.zero_grad()
    net(x, t).square().sum().backward()
    missing = [name for name, p in net.named_parameters()
               if p.grad is None or p.grad.abs().max() == 0]
    assert not missing


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
def test_symmetric_first_layer_equals_both_directions(net, inputs, grad):
    """Messages once per pair (shared first-layer state) give the same function as both edge
    directions, with scalar and per-sample time."""
    x, t = inputs
    with torch.set_grad_enabled(grad):
        net.symmetric_first_layer = False
        both = net(x, t), net(x, 0.37)
        net.symmetric_first_layer = True
        pairs = net(x, t), net(x, 0.37)
    for a, b in zip(pairs, both, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    layer, h = net.layers[0], net.time_embed(t.reshape(-1, 1, 1))
    xp = x.view(-1, N, D)
    x_pairs, h_pairs = layer(xp, h, net.col, (net.pair_first, net.pair_second))
    x_both, h_both = layer(xp, h, net.col, None)
    swapped, _ = layer(xp, h, net.col, (net.pair_second, net.pair_first))  # (j, i): same sums
    missing, _ = layer(xp, h, net.col, (net.pair_first[1:], net.pair_second[1:]))
    torch.testing.assert_close(x_pairs, x_both, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_pairs, h_both, atol=1e-12, rtol=0)
    torch.testing.assert_close(swapped, x_both, atol=1e-12, rtol=0)
    assert (missing - x_both).abs().max() > 1e-3  # the comparison sees one pair left out
