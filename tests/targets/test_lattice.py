"""phi^4 in hopping form: the action against a site-by-site loop, kappa derivatives, observables."""

import pytest
import torch

from boltzkit.targets.lattice import Phi4, binder_cumulant, magnetisation, phi4, susceptibility

F64 = torch.float64


def naive_action(phi: torch.Tensor, lam: float, kappa: float) -> float:
    L = phi.shape[0]
    s = 0.0
    for i in range(L):
        for j in range(L):
            p = float(phi[i, j])
            s += (1 - 2 * lam) * p**2 + lam * p**4
            s -= 2 * kappa * p * (float(phi[(i + 1) % L, j]) + float(phi[i, (j + 1) % L]))
    return s


def test_action_matches_site_loop_and_row_major_layout():
    target = Phi4(L=4, lam=0.3, kappa=0.27)
    x = torch.randn(3, 16, dtype=F64, generator=torch.Generator().manual_seed(0))
    for xi, lp in zip(x, target.log_prob(x), strict=True):
        assert abs(-float(lp) - naive_action(xi.reshape(4, 4), 0.3, 0.27)) < 1e-12
    assert target.dim == 16 and target.field(x).shape == (3, 4, 4)
    torch.testing.assert_close(target.field(x)[:, 1, 0], x[:, 4])


def test_action_symmetries():
    target = phi4()
    x = torch.randn(5, 64, dtype=F64)
    field = target.field(x)
    for y in (-x, torch.roll(field, 3, -1).reshape(5, 64), torch.roll(field, 2, -2).reshape(5, 64),
              field.transpose(-1, -2).reshape(5, 64)):
        torch.testing.assert_close(target.log_prob(y), target.log_prob(x))


def test_kappa_derivative_by_autograd_closed_form_and_finite_differences():
    x = torch.randn(6, 64, dtype=F64)
    kappa = torch.full((6,), 0.25, dtype=F64, requires_grad=True)
    target = phi4().with_kappa(kappa)
    lp = target.log_prob(x)
    assert lp.shape == (6,)
    (grad,) = torch.autograd.grad(lp.sum(), kappa)
    torch.testing.assert_close(-grad, target.dS_dkappa(x))
    h = 1e-6
    fd = (phi4(kappa=0.25 + h).action(x) - phi4(kappa=0.25 - h).action(x)) / (2 * h)
    torch.testing.assert_close(fd, target.dS_dkappa(x), rtol=1e-7, atol=1e-7)


def test_with_kappa_is_a_new_target_sharing_the_counter():
    base = phi4()
    other = base.with_kappa(0.29)
    assert (base.kappa, other.kappa) == (0.25, 0.29)
    other.log_prob(torch.zeros(3, 64))
    assert base.counter.n_energy == 3
    assert not base.has_exact_samples and base.log_Z is None
    with pytest.raises(NotImplementedError):
        base.sample(2)


def test_observables_on_known_configurations():
    ones = torch.ones(4, 64, dtype=F64)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64)[:, None] * ones
    torch.testing.assert_close(magnetisation(0.5 * ones), torch.full((4,), 0.5, dtype=F64))
    assert float(susceptibility(signs)) == 0.0
    assert abs(float(binder_cumulant(signs)) - 2 / 3) < 1e-12
    m = torch.tensor([1.0, 3.0], dtype=F64)[:, None].expand(2, 64)
    # <m^2> = 5, <|m|>^2 = 4, V = 64
    assert abs(float(susceptibility(m)) - 64.0) < 1e-12
