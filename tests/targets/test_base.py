"""The Target base class: counting, tempering, non-finite handling, input checks."""

import pytest
import torch

from boltzkit.targets.base import Target, remove_com


class Quadratic(Target):
    name = "quadratic"

    def _log_prob(self, x):
        return -0.5 * (x**2).sum(-1)


class HoleyQuadratic(Quadratic):
    """NaN energy in the half-space x_0 > 1."""

    def _log_prob(self, x):
        lp = super()._log_prob(x)
        return torch.where(x[..., 0] > 1, torch.full_like(lp, float("nan")), lp)


def test_counts_energy_and_gradient_calls_by_configuration():
    t = Quadratic(3)
    t.log_prob(torch.zeros(4, 5, 3))
    t.score(torch.zeros(7, 3))
    assert t.counter.as_dict() == {"n_energy": 27, "n_grad": 7, "n_nonfinite": 0}
    t.tempered(2.0).log_prob(torch.zeros(2, 3))
    assert t.counter.n_energy == 29, "tempered copies must share the counter"
    t.uncounted().log_prob(torch.zeros(5, 3))
    assert t.counter.n_energy == 29, "uncounted copies must not charge the budget"
    t.counter.reset()
    assert t.counter.as_dict() == {"n_energy": 0, "n_grad": 0, "n_nonfinite": 0}


def test_tempering_divides_log_prob_and_composes():
    t = Quadratic(2)
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(t.tempered(1.0).log_prob(x), t.log_prob(x))
    torch.testing.assert_close(t.tempered(2.0).tempered(3.0).log_prob(x), t.log_prob(x) / 6)
    torch.testing.assert_close(t.tempered(4.0).score(x), -x / 4)


def test_tensor_temperature_gives_autograd_derivative():
    t = Quadratic(2)
    temp = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    x = torch.ones(2, 2, dtype=torch.float64)
    lp = t.tempered(temp).log_prob(x)
    (g,) = torch.autograd.grad(lp.sum(), temp)
    # d/dT (-E/T) = E/T^2 with E = 1 at x = (1, 1)
    torch.testing.assert_close(g, 1.0 / temp.detach() ** 2)


def test_score_matches_closed_form_and_allows_double_backward():
    t = Quadratic(3)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    s = t.score(x, create_graph=True)
    torch.testing.assert_close(s, -x)
    (h,) = torch.autograd.grad(s[:, 0].sum(), x)
    torch.testing.assert_close(h[:, 0], -torch.ones(4, dtype=torch.float64))


def test_nonfinite_energies_become_minus_inf_and_are_counted():
    t = HoleyQuadratic(2)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    lp = t.log_prob(x)
    assert lp[0] == 0 and torch.isneginf(lp[1:]).all()
    assert t.counter.n_nonfinite == 2
    assert not torch.isnan(t.energy(x)).any()


@pytest.mark.parametrize(
    "x, err",
    [(torch.zeros(4, 2), ValueError), (torch.zeros(4, 3, dtype=torch.long), TypeError),
     ([0.0, 0.0, 0.0], TypeError)],
)
def test_bad_input_is_a_clear_error(x, err):
    with pytest.raises(err, match="quadratic"):
        Quadratic(3).log_prob(x)


def test_bad_temperature_and_no_sampler_are_errors():
    with pytest.raises(ValueError, match="positive"):
        Quadratic(2).tempered(-1.0)
    with pytest.raises(NotImplementedError, match="no exact sampler"):
        Quadratic(2).sample(3)
    assert not Quadratic(2).has_exact_samples


def test_remove_com_centres_particles():
    x = torch.randn(5, 4 * 3, dtype=torch.float64)
    y = remove_com(x, 4, 3).reshape(5, 4, 3)
    torch.testing.assert_close(y.mean(1), torch.zeros(5, 3, dtype=torch.float64))
    torch.testing.assert_close(remove_com(y.reshape(5, 12), 4, 3), y.reshape(5, 12))
