"""The fused EGNN kernel (boltzkit.models.fused) computes the library-call forward pass: equal in
float64 up to summation order, and in float32 as close to a float64 reference as the library
path itself. Skipped, with the build error, where no C++ compiler is available."""

import copy

import pytest
import torch

from boltzkit.models import fused
from boltzkit.models.egnn import EGNN

kernel = fused.egnn_kernel()
pytestmark = pytest.mark.skipif(kernel is None, reason=f"no fused kernel: {fused.build_error()}")


def _net(n: int, hidden: int, n_layers: int, dtype: torch.dtype, **kw) -> EGNN:
    torch.manual_seed(0)
    net = EGNN(n, 3, hidden=hidden, n_layers=n_layers, **kw).to(dtype)
    with torch.no_grad():
        for p in net.parameters():  # away from the near-identity initialisation
            p.normal_(0.0, 0.4)
    return net


def _both(net: EGNN, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        net.fused = False
        lib = net(x, t)
        net.fused = True
        return lib, net(x, t)


@pytest.mark.parametrize("per_sample_t", [True, False], ids=["t-per-sample", "t-scalar"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["pairs", "all-edges"])
@pytest.mark.parametrize("hidden,attention,tanh", [(24, True, True), (13, False, False)],
                         ids=["H24-gated", "H13-plain"])
def test_float64_equals_library_path(per_sample_t, symmetric, hidden, attention, tanh):
    # H = 13 exercises the scalar tail of the vector loops; batch 7 with 2-sample tiles leaves a
    # partial tile; the library path runs in its own chunks.
    net = _net(5, hidden, 3, torch.float64, attention=attention, tanh=tanh,
               symmetric_first_layer=symmetric, chunk_edges=60, fused_tile_edges=40)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 15, generator=gen, dtype=torch.float64)
    t = torch.rand(7, generator=gen, dtype=torch.float64) if per_sample_t else 0.37
    lib, out = _both(net, x, t)
    assert lib.abs().mean() > 1e-2, "the test network must not be trivial"
    assert torch.allclose(out, lib, rtol=1e-10, atol=1e-12), (out - lib).abs().max()
    assert out.view(7, 5, 3).sum(1).abs().max() < 1e-10  # centre of mass


def test_float64_detects_a_wrong_parameter():
    # The comparison above can fail: a 1e-6 change of one coordinate-MLP bias is visible.
    net = _net(5, 24, 3, torch.float64, fused_tile_edges=40)
    x = torch.randn(7, 15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        net.fused = False
        lib = net(x, 0.5)
        net.layers[1].coord_hidden.bias[3] += 1e-6
        net.fused = True
        out = net(x, 0.5)
    assert not torch.allclose(out, lib, rtol=1e-10, atol=1e-12)


def test_float32_error_matches_the_library_path():
    # LJ-13 shape at paper width: each float32 path against the float64 library reference.
    net64 = _net(13, 128, 3, torch.float64)
    net32 = copy.deepcopy(net64).float()
    x = torch.randn(40, 39, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ref = net64(x, 0.3)
    lib, out = _both(net32, x.float(), 0.3)
    err_lib = (lib.double() - ref).abs().max().item()
    err_fused = (out.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err_lib < 1e-4 * scale, "float32 library path itself is off"
    print(f"float32 errors: library {err_lib:.2e}, fused {err_fused:.2e}, scale {scale:.2f}")
    # Both paths round differently but equally coarsely: the fused error must be of the
    # library path's order (a wrong activation or weight gives errors of order `scale`).
    assert err_fused < 4 * err_lib + 1e-6 * scale, (err_fused, err_lib, scale)


def test_silu_extremes_and_non_finite_inputs():
    # Large |pre-activations| hit the exp clamp at [-87, 88]; NaN inputs stay NaN.
    net = _net(4, 16, 2, torch.float32)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(3)) * 40.0
    lib, out = _both(net, x, 0.9)
    assert torch.isfinite(out).all()
    # float32 rounding (1e-7) amplified through two layers at inputs of size 40: 1e-4 relative.
    assert torch.allclose(out, lib, rtol=1e-4, atol=1e-4 * lib.abs().max().item())
    x[1, 0] = float("nan")
    _, out = _both(net, x, 0.9)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()


def test_autograd_uses_the_library_path():
    # With gradients the kernel is bypassed: the output is differentiable and unchanged.
    net = _net(5, 16, 2, torch.float64, fused=True)
    x = torch.randn(4, 15, dtype=torch.float64, requires_grad=True)
    out = net(x, 0.4)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert torch.allclose(net(x, 0.4), out.detach(), rtol=1e-10, atol=1e-12)


def test_bad_edge_lists_and_widths_are_refused():
    net = _net(4, 8, 1, torch.float32)
    layer, x, h = net.layers[0], torch.randn(2, 4, 3), torch.randn(1, 1, 8)
    first, second = net.pair_first.clone(), net.pair_second.clone()

    def call(src, pair_second):
        return kernel.egnn_edges(
            x, src, torch.zeros_like(src), first, pair_second, True, layer.edge_dist,
            layer.edge_out.weight, layer.edge_out.bias, layer.attention.weight[0], 0.0, True,
            layer.coord_hidden.weight, layer.coord_hidden.bias, layer.coord_out.weight[0],
            15.0, True, False, 64)

    with torch.no_grad():
        call(h, second)  # valid
        bad = second.clone()
        bad[0] = 4
        with pytest.raises(RuntimeError, match=r"edge endpoints must lie in \[0, n\)"):
            call(h, bad)
        with pytest.raises(RuntimeError, match="feature widths"):
            call(h[..., :7], second)
