"""GaussianMixture: closed-form score and Hessian, noised marginals, posteriors, denoising kernels.

Exact identities are checked pointwise in float64; statistical checks use |error| <= 5 SE, and each
has a deliberately broken variant that must fail.
"""

import math

import pytest
import torch

from boltzkit.targets.base import Target
from boltzkit.targets.gmm import GaussianMixture
from boltzkit.targets.noised import posterior_law

F64 = torch.float64


def random_gmm(d: int = 3, k: int = 4, seed: int = 0, full: bool = True) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(k, generator=g, dtype=F64) + 0.2
    means = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    if not full:
        return GaussianMixture(weights, means, 0.3 + torch.rand(k, d, generator=g, dtype=F64))
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    return GaussianMixture(weights, means, covariance=a @ a.mT / d + 0.2 * torch.eye(d))


def moments(gmm: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    w = gmm.weights
    mean = w @ gmm.means
    centred = gmm.means - mean
    cov = torch.einsum("k,kij->ij", w, gmm.covariances + centred[:, :, None] * centred[:, None])
    return mean, cov


def moment_z_scores(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """|sample moment - truth| / SE for every mean and covariance entry."""
    n = x.shape[0]
    c = x - mean
    z_mean = (c.mean(0) - 0) / (c.var(0) / n).sqrt()
    prods = c[:, :, None] * c[:, None, :]
    z_cov = (prods.mean(0) - cov) / (prods.var(0) / n).sqrt()
    return torch.cat([z_mean.abs(), z_cov.abs().flatten()])


# ---- the mixture itself -------------------------------------------------------------------
@pytest.mark.parametrize("full", [True, False])
def test_score_and_hessian_match_autograd_and_finite_differences(full):
    gmm = random_gmm(full=full)
    x = gmm.sample(6, torch.Generator().manual_seed(1)) + 0.3
    lp, score = gmm.log_prob_and_score(x)
    lp_ag, score_ag = Target.log_prob_and_score(gmm, x)
    torch.testing.assert_close(lp, lp_ag)
    torch.testing.assert_close(score, score_ag)
    hess = gmm.hessian(x)
    hess_ag = torch.stack([torch.autograd.functional.hessian(gmm._log_prob, xi) for xi in x])
    torch.testing.assert_close(hess, hess_ag)
    h = 1e-5
    eye = h * torch.eye(3, dtype=F64)
    fd_score = (gmm.log_prob(x[:, None] + eye) - gmm.log_prob(x[:, None] - eye)) / (2 * h)
    fd_hess = (gmm.score(x[:, None] + eye) - gmm.score(x[:, None] - eye)) / (2 * h)
    torch.testing.assert_close(score, fd_score, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(hess, fd_hess, rtol=1e-6, atol=1e-7)


def test_analytic_score_supports_double_backward_and_tempering():
    gmm = random_gmm()
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    score = gmm.tempered(2.0).score(x, create_graph=True)
    (div,) = torch.autograd.grad(score.sum(), x)
    torch.testing.assert_close(gmm.tempered(2.0).hessian(x.detach()), gmm.hessian(x.detach()) / 2)
    expected = torch.einsum("nij->nj", gmm.hessian(x.detach())) / 2
    torch.testing.assert_close(div, expected)


def test_log_Z_is_zero_by_quadrature():
    scipy_integrate = pytest.importorskip("scipy.integrate")
    gmm = random_gmm(d=2, k=3, seed=3)
    grid = torch.linspace(-14, 14, 701, dtype=F64)
    xy = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    density = gmm.log_prob(xy).exp().numpy()
    z = scipy_integrate.simpson(scipy_integrate.simpson(density, x=grid.numpy()), x=grid.numpy())
    assert abs(z - 1.0) < 1e-9 and gmm.log_Z == 0.0


def test_samples_have_the_mixture_moments_and_weights():
    gmm = random_gmm(seed=4)
    x = gmm.sample(40_000, torch.Generator().manual_seed(0))
    mean, cov = moments(gmm)
    assert moment_z_scores(x, mean, cov).max() < 5
    counts = torch.bincount(gmm.assign(x), minlength=4).to(F64) / len(x)
    se = (gmm.weights * (1 - gmm.weights) / len(x)).sqrt()
    assert ((counts - gmm.weights).abs() / se).max() < 5  # components are well separated


def test_dtype_follows_inputs_and_parameters():
    gmm = random_gmm()
    assert gmm.sample(3).dtype == F64
    x32 = torch.randn(4, 3)
    assert gmm.log_prob(x32).dtype == torch.float32 and gmm.score(x32).dtype == torch.float32
    g32 = GaussianMixture([1.0, 1.0], [[0.0], [1.0]])
    assert g32.means.dtype == torch.get_default_dtype() and g32.sample(2).dtype == g32.means.dtype


def test_weights_are_normalised_and_bad_inputs_raise():
    gmm = GaussianMixture([2, 6], [[0.0, 0.0], [1.0, 1.0]], [0.5, 2.0])
    torch.testing.assert_close(gmm.weights, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(gmm.covariances[1], torch.diag(torch.tensor([0.25, 4.0])))
    means = [[0.0, 0.0], [1.0, 1.0]]
    bad = [
        dict(weights=[1.0], means=means),
        dict(weights=[1.0, -1.0], means=means),
        dict(weights=[1.0, 1.0], means=[0.0, 1.0]),
        dict(weights=[1.0, 1.0], means=means, scales=[1.0, 1.0, 1.0]),
        dict(weights=[1.0, 1.0], means=means, scales=0.0),
        dict(weights=[1.0, 1.0], means=means, covariance=[[1.0, 2.0], [2.0, 1.0]]),
        dict(weights=[1.0, 1.0], means=means, covariance=[[1.0, 0.5], [0.0, 1.0]]),
        dict(weights=[1.0, 1.0], means=means, covariance=torch.eye(3)),
        dict(weights=[1.0, 1.0], means=means, scales=1.0, covariance=torch.eye(2)),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            GaussianMixture(**kwargs)


# ---- noised marginals ---------------------------------------------------------------------
def test_noised_mixture_is_the_law_of_alpha_x_plus_sigma_eps():
    gmm, (alpha, sigma) = random_gmm(seed=5), (0.6, 0.8)
    g = torch.Generator().manual_seed(2)
    x0 = gmm.sample(40_000, g)
    xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    noised = gmm.noised(alpha, sigma)
    assert moment_z_scores(xt, *moments(noised)).max() < 5
    broken = GaussianMixture(gmm.weights, alpha * gmm.means,
                             covariance=alpha * gmm.covariances + sigma**2 * torch.eye(3))
    assert moment_z_scores(xt, *moments(broken)).max() > 5


def test_noised_log_prob_per_point_levels_match_scalar_levels():
    gmm = random_gmm()
    x = torch.randn(4, 3, dtype=F64)
    alpha = torch.tensor([1.0, 0.8, 0.5, 0.1], dtype=F64)
    sigma = (1 - alpha**2).sqrt() + 1e-3
    lp = gmm.noised_log_prob(x, alpha, sigma)
    den = gmm.denoiser(x, alpha, sigma)
    kernel = gmm.denoising_kernel(x, alpha, sigma, 0.9 * alpha, (1 - 0.81 * alpha**2).sqrt())
    xs = kernel.sample()
    for i in range(4):
        a, s = float(alpha[i]), float(sigma[i])
        torch.testing.assert_close(lp[i], gmm.noised(a, s).log_prob(x[i]))
        torch.testing.assert_close(den[i], gmm.denoiser(x[i], a, s))
        k_i = gmm.denoising_kernel(x[i], a, s, 0.9 * a, (1 - 0.81 * a**2) ** 0.5)
        torch.testing.assert_close(kernel.log_prob(xs)[i], k_i.log_prob(xs[i]))


def test_posterior_limits():
    gmm = random_gmm()
    x = torch.randn(5, 3, dtype=F64)
    prior = gmm.posterior(x, 0.0, 1.0)  # pure noise: the posterior is the prior
    torch.testing.assert_close(prior.log_weights, gmm.log_weights.expand(5, -1))
    torch.testing.assert_close(prior.covariances, gmm.covariances)
    torch.testing.assert_close(gmm.denoiser(x, 1.0, 0.0), x)  # no noise: x_0 = x_t


@pytest.mark.parametrize("alpha, sigma", [(0.9, 0.3), (0.5, 1.2), (1.0, 0.05)])
def test_tweedie_identities_hold_exactly(alpha, sigma):
    gmm = random_gmm(seed=6)
    xt = gmm.noised(alpha, sigma).sample(8, torch.Generator().manual_seed(3))
    noised = gmm.noised(alpha, sigma)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(gmm.denoiser(xt, alpha, sigma),
                               (xt + sigma**2 * noised.score(xt)) / alpha)
    torch.testing.assert_close(gmm.posterior_covariance(xt, alpha, sigma),
                               sigma**2 / alpha**2 * (eye + sigma**2 * noised.hessian(xt)))


def test_posterior_is_bayes_pointwise():
    gmm, (alpha, sigma) = random_gmm(seed=7), (0.7, 0.6)
    g = torch.Generator().manual_seed(4)
    xt = gmm.noised(alpha, sigma).sample(6, g)
    x0 = gmm.sample(6, g)
    log_lik = -0.5 * ((xt - alpha * x0) ** 2).sum(-1) / sigma**2 - 1.5 * math.log(
        2 * math.pi * sigma**2)
    bayes = gmm.log_prob(x0) + log_lik - gmm.noised(alpha, sigma).log_prob(xt)
    torch.testing.assert_close(gmm.posterior(xt, alpha, sigma).log_prob(x0), bayes)


def test_denoiser_matches_self_normalised_importance_sampling():
    gmm, (alpha, sigma) = random_gmm(seed=8), (0.8, 0.7)
    g = torch.Generator().manual_seed(5)
    xt = gmm.noised(alpha, sigma).sample(1, g)[0]
    x0 = gmm.sample(200_000, g)
    log_w = -0.5 * ((xt - alpha * x0) ** 2).sum(-1) / sigma**2
    w = torch.softmax(log_w, 0)
    est = w @ x0
    se = ((w[:, None] ** 2) * (x0 - est) ** 2).sum(0).sqrt()  # delta-method SE of SNIS
    assert (((est - gmm.denoiser(xt, alpha, sigma)) / se).abs() < 5).all()
    assert (((est - gmm.denoiser(xt, alpha, 0.5 * sigma)) / se).abs() > 5).any()


# ---- the exact denoising kernel p(x_s | x_t) -----------------------------------------------
LEVELS = dict(alpha_s=0.9, sigma_s=(1 - 0.81) ** 0.5, alpha_t=0.6, sigma_t=0.8)


def kernel_bayes(gmm, xt, xs, alpha_s, sigma_s, alpha_t, sigma_t):
    a_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - a_ts**2 * sigma_s**2
    log_lik = -0.5 * ((xt - a_ts * xs) ** 2).sum(-1) / var_ts - 0.5 * xs.shape[-1] * math.log(
        2 * math.pi * var_ts)
    return (gmm.noised(alpha_s, sigma_s).log_prob(xs) + log_lik
            - gmm.noised(alpha_t, sigma_t).log_prob(xt))


def test_denoising_kernel_log_prob_is_bayes_pointwise_and_broken_variant_is_not():
    gmm = random_gmm(seed=9)
    g = torch.Generator().manual_seed(6)
    xt = gmm.noised(LEVELS["alpha_t"], LEVELS["sigma_t"]).sample(7, g)
    kernel = gmm.denoising_kernel(xt, **LEVELS)
    xs = kernel.sample(g)
    assert xs.shape == (7, 3)
    torch.testing.assert_close(kernel.log_prob(xs), kernel_bayes(gmm, xt, xs, **LEVELS))
    a_s, s_s = LEVELS["alpha_s"], LEVELS["sigma_s"]
    as_tensor = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    broken = posterior_law(xt, gmm.log_weights, a_s * gmm.means,
                           a_s**2 * gmm.eigvals + s_s**2, gmm.eigvecs,
                           as_tensor(LEVELS["alpha_t"] / a_s), as_tensor(LEVELS["sigma_t"]))
    assert not torch.allclose(broken.log_prob(xs), kernel_bayes(gmm, xt, xs, **LEVELS))


def test_denoising_kernel_maps_p_t_samples_to_p_s_samples():
    gmm = random_gmm(seed=10)
    g = torch.Generator().manual_seed(7)
    n = 40_000
    xt = gmm.noised(LEVELS["alpha_t"], LEVELS["sigma_t"]).sample(n, g)
    xs = gmm.denoising_kernel(xt, **LEVELS).sample(g)
    target = moments(gmm.noised(LEVELS["alpha_s"], LEVELS["sigma_s"]))
    assert moment_z_scores(xs, *target).max() < 5
    broken = dict(LEVELS, sigma_t=1.3)  # the kernel of a different forward process
    xs_broken = gmm.denoising_kernel(xt, **broken).sample(g)
    assert moment_z_scores(xs_broken, *target).max() > 5


def test_denoising_kernel_samples_have_its_own_moments():
    gmm = random_gmm(seed=11)
    xt = gmm.noised(LEVELS["alpha_t"], LEVELS["sigma_t"]).sample(1, torch.Generator())
    kernel = gmm.denoising_kernel(xt.expand(30_000, 3), **LEVELS)
    xs = kernel.sample(torch.Generator().manual_seed(8))
    assert moment_z_scores(xs, kernel.mean()[0], kernel.covariance()[0]).max() < 5


def test_denoising_kernel_rejects_reversed_levels_and_tempered_mixtures():
    gmm = random_gmm()
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="less noisy"):
        gmm.denoising_kernel(x, 0.6, 0.8, 0.9, 0.3)
    with pytest.raises(ValueError, match="untempered"):
        gmm.tempered(2.0).noised(0.5, 0.5)


def test_per_axis_diagonal_path_equals_the_component_path():
    """The low-dimensional diagonal fast path gives the general [.., K, d] computation's values
    (float64, anisotropic scales, points near and far from the means); a wrong axis pairing
    of means and scales would not."""
    from boltzkit.targets.gmm import _diagonal_log_prob_and_score
    from boltzkit.targets.noised import component_terms, score_and_hessian_terms

    torch.manual_seed(0)
    means = torch.randn(5, 3, dtype=torch.float64) * 4
    scales = torch.rand(5, 3, dtype=torch.float64) + 0.3
    gmm = GaussianMixture(torch.rand(5) + 0.1, means, scales)
    x = torch.cat([torch.randn(200, 3, dtype=torch.float64) * s for s in (1.0, 5.0, 50.0)])
    log_w, mu, lam, vecs = gmm._params(x)
    assert vecs is None
    clp, z = component_terms(x, log_w, mu, lam, vecs)
    score, _ = score_and_hessian_terms(clp, z, lam, vecs, hessian=False)
    lp, fast_score = _diagonal_log_prob_and_score(x, log_w, mu, lam)
    torch.testing.assert_close(lp, torch.logsumexp(clp, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_score, score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gmm.log_prob_and_score(x)[1], score, rtol=1e-10, atol=1e-10)
    _, swapped = _diagonal_log_prob_and_score(x, log_w, mu, lam.flip(-1))
    assert (swapped - score).abs().max() > 1e-3
