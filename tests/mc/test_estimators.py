"""Estimators: exact identities in float64, and calibration of the standard errors against the
spread over independent replicas (each with a broken variant that must fail)."""

import math

import pytest
import torch

from boltzkit.mc import estimators as E

Z5 = 5.0  # z-score of the statistical checks (Bonferroni over the suite)


def normal_log_pdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def kl_normal(m1, s1, m2, s2):
    """KL(N(m1, s1^2) || N(m2, s2^2))."""
    return math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


# ---- exact identities --------------------------------------------------------------------------
def test_ess_equal_weights_is_n_and_one_hot_is_one():
    n = 1000
    assert E.ess(torch.full((n,), -3.2, dtype=torch.float64)) == pytest.approx(n, rel=1e-12)
    assert E.ess_fraction(torch.zeros(n)) == pytest.approx(1.0, rel=1e-12)
    one_hot = torch.full((n,), float("-inf"))
    one_hot[17] = 50.0
    assert E.ess(one_hot) == pytest.approx(1.0, rel=1e-12)
    # large log-weights must not overflow: log space throughout
    assert E.ess(torch.tensor([1000.0, 1000.0, -1000.0])) == pytest.approx(2.0, rel=1e-12)


def test_ess_is_batched_over_leading_dims():
    log_w = torch.zeros(3, 4, 10)
    log_w[1, 2, 1:] = float("-inf")
    out = E.ess(log_w)
    assert out.shape == (3, 4) and out.dtype == torch.float64
    assert out[1, 2].item() == pytest.approx(1.0) and out[0, 0].item() == pytest.approx(10.0)


def test_all_zero_weights_are_explicit_not_nan():
    log_w = torch.full((5,), float("-inf"))
    assert E.ess(log_w) == 0.0 and E.ess_fraction(log_w) == 0.0
    assert E.log_Z(log_w) == float("-inf")
    assert E.log_Z_se(log_w) == math.inf
    assert E.elbo(log_w) == float("-inf")
    summary = E.weight_summary(log_w)
    assert not any(v != v for v in summary.values())
    assert summary["n_zero_weight"] == 5


def test_nan_and_posinf_weights_are_zero_weight_counted_and_warned():
    log_w = torch.tensor([0.0, float("nan"), 0.0, float("inf"), float("-inf")])
    with pytest.warns(RuntimeWarning, match="2 of 5"):
        assert E.ess(log_w) == pytest.approx(2.0)
    with pytest.warns(RuntimeWarning):
        assert E.log_Z(log_w) == pytest.approx(math.log(2 / 5))
    assert E.n_invalid(log_w) == 2 and E.n_zero_weight(log_w) == 1
    summary = E.weight_summary(log_w)
    assert summary["n_invalid_weight"] == 2 and summary["ess"] == pytest.approx(2.0)


def test_perfect_proposal_gives_exact_log_Z_and_full_ess():
    # gamma = e^3.7 N(1, 2^2), q = N(1, 2^2): every weight is Z, both directions.
    g = torch.Generator().manual_seed(0)
    log_Z_true = 3.7
    x = 1.0 + 2.0 * torch.randn(4096, generator=g, dtype=torch.float64)
    log_w = (normal_log_pdf(x, 1.0, 2.0) + log_Z_true) - normal_log_pdf(x, 1.0, 2.0)
    assert E.log_Z(log_w) == pytest.approx(log_Z_true, abs=1e-12)
    assert E.ess(log_w) == pytest.approx(4096, rel=1e-12)
    assert E.log_Z_se(log_w) == pytest.approx(0.0, abs=1e-6)
    assert E.elbo(log_w) == pytest.approx(log_Z_true, abs=1e-12)
    assert E.eubo(log_w) == pytest.approx(log_Z_true, abs=1e-12)
    assert E.forward_ess(log_w) == pytest.approx(4096, rel=1e-12)
    assert E.forward_ess_fraction(log_w) == pytest.approx(1.0, rel=1e-12)


def test_forward_ess_is_zero_when_q_misses_a_reference_sample():
    r = torch.zeros(100, dtype=torch.float64)
    r[3] = float("inf")  # q(y_3) = 0
    assert E.forward_ess(r) == 0.0
    r[3] = float("nan")
    with pytest.warns(RuntimeWarning, match="dropped"):
        assert E.forward_ess(r) == pytest.approx(99.0)
    with pytest.warns(RuntimeWarning, match="dropped"):
        assert E.eubo(r) == pytest.approx(0.0)


def test_snis_ignores_values_at_zero_weight_and_flags_empty_sets():
    log_w = torch.tensor([[0.0, 0.0, float("-inf")], [float("-inf")] * 3])
    values = torch.tensor([[1.0, 3.0, float("nan")], [1.0, 2.0, 3.0]])
    with pytest.warns(RuntimeWarning, match="no positive weight"):
        est = E.snis(log_w, values)
    assert est.mean[0].item() == pytest.approx(2.0) and est.se[0].item() == pytest.approx(0.5**0.5)
    assert math.isnan(est.mean[1].item()) and est.se[1].item() == math.inf
    vec = E.snis(torch.zeros(4), torch.arange(8.0).reshape(4, 2))  # event dims
    assert vec.mean.tolist() == pytest.approx([3.0, 4.0])


def test_batch_helpers():
    log_w = torch.arange(12.0)
    assert E.split_batches(log_w, 4).shape == (3, 4)
    with pytest.raises(ValueError, match="multiple"):
        E.split_batches(log_w, 5)
    mae = E.batch_mean_abs_error(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2.0)
    assert mae.mean == pytest.approx(0.5)
    assert mae.se == pytest.approx(torch.tensor([1.0, 1, 0, 0]).std().item() / 2)


# ---- statistical checks ------------------------------------------------------------------------
def _replicas(n_rep, n, seed, q_std=1.5, mean=1.0, log_Z_true=5.0):
    """x ~ N(0, q_std^2) in [n_rep, n]; gamma = e^{log_Z_true} N(mean, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = q_std * torch.randn(n_rep, n, generator=g, dtype=torch.float64)
    log_w = normal_log_pdf(x, mean, 1.0) + log_Z_true - normal_log_pdf(x, 0.0, q_std)
    return x, log_w


def _se_calibrated(estimates, se, n_rep):
    """mean reported SE^2 matches the replica variance: |ratio - 1| <= 5 sqrt(2 / (R - 1))."""
    ratio = (se**2).mean() / estimates.var()
    return abs(ratio.item() - 1.0) <= Z5 * math.sqrt(2.0 / (n_rep - 1))


def test_snis_mean_and_se_match_the_spread_over_replicas():
    n_rep, n = 2000, 1000
    x, log_w = _replicas(n_rep, n, seed=1)
    est = E.snis(log_w, x)
    assert abs(est.mean.mean().item() - 1.0) <= Z5 * est.mean.std().item() / math.sqrt(n_rep)
    assert _se_calibrated(est.mean, est.se, n_rep)
    # broken: the SE of the unnormalised estimator, without centring at mu
    W = torch.softmax(log_w, dim=-1)
    broken_se = ((W * x) ** 2).sum(-1).sqrt()
    assert not _se_calibrated(est.mean, broken_se, n_rep)


def test_log_Z_and_its_se_match_the_spread_over_replicas():
    n_rep, n = 2000, 1000
    _, log_w = _replicas(n_rep, n, seed=2)
    est, se = E.log_Z(log_w), E.log_Z_se(log_w)
    assert abs(est.mean().item() - 5.0) <= Z5 * est.std().item() / math.sqrt(n_rep)
    assert _se_calibrated(est, se, n_rep)
    # broken: the relative spread of one weight, not of their mean (missing 1/sqrt(N))
    assert not _se_calibrated(est, se * math.sqrt(n), n_rep)


def test_elbo_and_eubo_match_closed_form_kls():
    # q = N(0, 1.5^2), pi = N(1, 1), log Z = 5: ELBO = log Z - KL(q||pi), EUBO = log Z + KL(pi||q)
    n = 200_000
    x, log_w = _replicas(1, n, seed=3)
    g = torch.Generator().manual_seed(4)
    y = 1.0 + torch.randn(n, generator=g, dtype=torch.float64)
    r = normal_log_pdf(y, 1.0, 1.0) + 5.0 - normal_log_pdf(y, 0.0, 1.5)
    elbo_true = 5.0 - kl_normal(0.0, 1.5, 1.0, 1.0)
    eubo_true = 5.0 + kl_normal(1.0, 1.0, 0.0, 1.5)
    assert abs(E.elbo(log_w[0]) - elbo_true) <= Z5 * log_w.std().item() / math.sqrt(n)
    assert abs(E.eubo(r) - eubo_true) <= Z5 * r.std().item() / math.sqrt(n)


def test_forward_and_reverse_ess_fractions_agree_with_closed_form():
    # both tend to 1 / E_q[(pi/q)^2] = sqrt(2 s^2 - 1) / s^2 for pi = N(0,1), q = N(0, s^2)
    s, n = 1.5, 400_000
    truth = math.sqrt(2 * s**2 - 1) / s**2
    g = torch.Generator().manual_seed(5)
    x = s * torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    log_w = normal_log_pdf(x, 0.0, 1.0) - normal_log_pdf(x, 0.0, s)
    r = normal_log_pdf(y, 0.0, 1.0) - normal_log_pdf(y, 0.0, s)
    assert E.ess_fraction(log_w) == pytest.approx(truth, rel=0.01)
    assert E.forward_ess_fraction(r) == pytest.approx(truth, rel=0.01)
    # broken: Kish's formula applied to the reference samples estimates something else
    assert E.ess_fraction(r) != pytest.approx(truth, rel=0.05)


def test_log_Z_error_decays_at_the_monte_carlo_rate():
    _, log_w = _replicas(1, 2**18, seed=6)
    sizes = [2**k for k in range(6, 13)]
    maes = [E.batch_mean_abs_error(E.log_Z(E.split_batches(log_w[0], b)), 5.0).mean for b in sizes]
    slope = torch.linalg.lstsq(
        torch.stack([torch.ones(len(sizes)), torch.tensor(sizes).log()], 1).double(),
        torch.tensor(maes, dtype=torch.float64).log().unsqueeze(1),
    ).solution[1].item()
    assert slope == pytest.approx(-0.5, abs=0.1)


def test_normalised_weights_sum_to_one_and_empty_rows_are_zero() -> None:
    lw = torch.tensor([[0.0, math.log(3.0), -math.inf], [-math.inf, -math.inf, -math.inf]])
    W = E.normalised_weights(lw)
    assert W.dtype == torch.float64
    assert torch.allclose(W[0], torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    assert torch.equal(W[1], torch.zeros(3, dtype=torch.float64))  # not NaN
    with pytest.warns(RuntimeWarning, match="NaN or \\+inf"):
        assert E.normalised_weights(torch.tensor([0.0, math.nan]))[1] == 0.0
