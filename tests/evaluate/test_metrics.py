"""Metrics: closed forms, exact invariances, and the flaws they must not repeat (squared energy W2,
silently dropped out-of-range distances, biased MMD)."""

import math

import numpy as np
import ot
import pytest
import torch

from boltzkit.evaluate import metrics as M
from boltzkit.evaluate.evaluation import CONVENTIONS, evaluate
from boltzkit.targets.base import Target

Z5 = 5.0
F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- W2 and friends ----------------------------------------------------------------------------
def test_w2_between_gaussian_samples_matches_closed_form():
    # W2^2(N(0, 1), N(3, 2^2)) = (0 - 3)^2 + (1 - 2)^2 = 10; a squared "W2" would read 100.
    n_rep, n, truth = 20, 400, 10.0
    g = gen(0)
    w2_sq = []
    for _ in range(n_rep):
        a = torch.randn(n, 1, generator=g, dtype=F64)
        b = 3.0 + 2.0 * torch.randn(n, 1, generator=g, dtype=F64)
        w2 = M.x_w2(a, b)
        assert w2 == pytest.approx(M.energy_w2(a[:, 0], b[:, 0]), rel=1e-9)  # 1-D OT twice
        w2_sq.append(w2**2)
    v = torch.tensor(w2_sq)
    assert abs(v.mean().item() - truth) <= Z5 * v.std().item() / math.sqrt(n_rep)


def test_w2_of_a_set_with_itself_is_zero_and_weights_are_used():
    x = torch.randn(60, 3, generator=gen(1), dtype=F64)
    assert M.x_w2(x, x) == pytest.approx(0.0, abs=1e-7)
    assert M.x_w1(x, x) == pytest.approx(0.0, abs=1e-7)
    a, b = torch.zeros(2, 1), torch.tensor([[0.0], [1.0]])
    # weights (1, 0) on b: every mass of a goes to b_0 = 0
    assert M.x_w2(a, b, weights_b=torch.tensor([1.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    assert M.x_w2(a, b) == pytest.approx(math.sqrt(0.5))
    assert M.x_w1(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-finite"):
        M.x_w2(torch.tensor([[float("nan")]]), b)


def test_energy_w2_is_the_square_root_of_pots_emd2_1d():
    g = gen(2)
    e_a = torch.randn(300, generator=g, dtype=F64)
    e_b = 0.5 + 1.3 * torch.randn(200, generator=g, dtype=F64)
    assert M.energy_w2(e_a, e_b) == pytest.approx(math.sqrt(ot.emd2_1d(e_a.numpy(), e_b.numpy())))
    # a shift by 3 has W1 = W2 = 3; the iDEM flaw (logging emd2_1d itself) would report 9
    assert M.energy_w2(e_a, e_a + 3.0) == pytest.approx(3.0, rel=1e-9)
    assert M.energy_w1(e_a, e_a + 3.0) == pytest.approx(3.0, rel=1e-9)
    finite, n_bad = M.finite_energies(torch.tensor([1.0, float("inf"), float("nan"), 2.0]))
    assert n_bad == 2 and finite.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="finite_energies"):
        M.energy_w2(torch.tensor([1.0, float("inf")]), e_b)


def test_sliced_w2_exact_in_1d_and_closed_form_for_a_shift():
    g = gen(3)
    a, b = torch.randn(100, 1, generator=g, dtype=F64), torch.randn(80, 1, generator=g, dtype=F64)
    assert M.sliced_w2(a, b, 8, gen(0)) == pytest.approx(M.x_w2(a, b), rel=1e-9)
    # shift by v in 2-D: W2^2 along theta is (theta.v)^2, mean |v|^2 / 2, var |v|^4 / 8
    x, v, n_proj = torch.randn(200, 2, generator=g, dtype=F64), torch.tensor([3.0, 4.0]), 2000
    sw2_sq = M.sliced_w2(x, x + v, n_proj, gen(1)) ** 2
    assert abs(sw2_sq - 12.5) <= Z5 * 25.0 / math.sqrt(8 * n_proj)
    assert M.sliced_w2(x, x + v, 64, gen(1)) <= M.x_w2(x, x + v) + 1e-9


def test_mmd_is_unbiased_where_the_v_statistic_is_not():
    n_rep, n, g = 300, 30, gen(4)
    unbiased, v_stat = [], []
    for _ in range(n_rep):
        a, b = torch.randn(n, 2, generator=g, dtype=F64), torch.randn(n, 2, generator=g, dtype=F64)
        res = M.mmd(a, b, bandwidth=1.0)
        unbiased.append(res.mmd2)
        k = lambda u, w: torch.exp(-torch.cdist(u, w) ** 2 / 2)  # noqa: E731
        v_stat.append((k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()).item())
    for vals, ok in ((unbiased, True), (v_stat, False)):
        t = torch.tensor(vals)
        assert (abs(t.mean().item()) <= Z5 * t.std().item() / math.sqrt(n_rep)) == ok
    a = torch.randn(200, 2, generator=g, dtype=F64)
    res = M.mmd(a, a + 2.0)
    assert res.mmd2 > 0.3
    pooled = torch.cat([a, a + 2.0])
    d = torch.cdist(pooled, pooled)
    assert res.bandwidth == pytest.approx(d[~torch.eye(400, dtype=torch.bool)].median().item())


# ---- particle metrics --------------------------------------------------------------------------
def random_orthogonal(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def symmetric_copy(x, n_particles, d, g):
    """Each row rotated or reflected, relabelled and translated at random; rows shuffled."""
    xp = x.reshape(len(x), n_particles, d)
    rots = torch.stack([random_orthogonal(d, g) for _ in range(len(x))])
    perms = torch.stack([torch.randperm(n_particles, generator=g) for _ in range(len(x))])
    y = (xp @ rots)[torch.arange(len(x))[:, None], perms] + torch.randn(len(x), 1, d, generator=g)
    return y.reshape(len(x), -1)[torch.randperm(len(x), generator=g)]


@pytest.mark.parametrize("n_particles,d", [(4, 2), (7, 3)])  # exact enumeration, alternation
def test_symmetry_w2_is_zero_for_a_transformed_copy_while_x_w2_is_not(n_particles, d):
    g = gen(5)
    x = torch.randn(30, n_particles * d, generator=g, dtype=F64)
    y = symmetric_copy(x, n_particles, d, g)
    assert M.symmetry_w2(x, y, n_particles, d) == pytest.approx(0.0, abs=1e-5)
    assert M.x_w2(x, y) > 1.0
    z = torch.randn(25, n_particles * d, generator=g, dtype=F64)  # unrelated set
    com_free = lambda t: (  # noqa: E731
        t.reshape(len(t), n_particles, d) - t.reshape(len(t), n_particles, d).mean(1, True)
    ).reshape(len(t), -1)
    assert 0.1 < M.symmetry_w2(x, z, n_particles, d) <= M.x_w2(com_free(x), com_free(z)) + 1e-9


def test_alternating_alignment_never_beats_exhaustive_enumeration():
    g = gen(6)
    a, b = torch.randn(12, 10, generator=g, dtype=F64), torch.randn(9, 10, generator=g, dtype=F64)
    exact = M.symmetry_cost(a, b, 5, 2)
    approx = M.symmetry_cost(a, b, 5, 2, max_exact_particles=0)
    assert (approx >= exact - 1e-9).all()
    assert (approx <= exact + 1e-9).float().mean() > 0.8  # mostly finds the optimum


def test_interatomic_distances_and_distance_w2():
    x = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 4.0]])
    assert M.interatomic_distances(x, 3, 2).tolist() == [[3.0, 4.0, 5.0]]
    g = gen(7)
    y = torch.randn(50, 12, generator=g, dtype=F64)
    d = M.interatomic_distances(y, 4, 3)
    assert d.shape == (50, 6)
    rotated = (y.reshape(50, 4, 3) @ random_orthogonal(3, g)).reshape(50, 12)
    assert torch.allclose(M.interatomic_distances(rotated, 4, 3), d, atol=1e-12)
    assert M.distance_w2(d, d + 0.25) == pytest.approx(0.25, rel=1e-9)


def test_distance_tv_counts_out_of_range_distances_in_full():
    ref = 1.0 + torch.rand(9000, generator=gen(8), dtype=F64)
    assert M.distance_tv(ref, ref, 50) == (0.0, 0, 0.0)
    # 10 % of the generated distances beyond the reference range: p = 0.9 q inside, p_out = 0.1
    gen_d = torch.cat([ref, torch.full((1000,), 3.0, dtype=F64)])
    res = M.distance_tv(gen_d, ref, 50)
    assert res.n_out_of_range == 1000 and res.fraction_out_of_range == pytest.approx(0.1)
    assert res.tv == pytest.approx(0.1, abs=1e-12)  # dropping them would give 0
    nan_d = torch.tensor([float("nan"), 0.0, 10.0])
    assert M.distance_tv(nan_d, ref, 50) == (1.0, 3, 1.0)


# ---- mixtures ----------------------------------------------------------------------------------
class TinyMixture(Target):
    """Isotropic 2-D Gaussian mixture with the GaussianMixture mode API (weights, assign)."""

    name = "tiny-mixture"
    exact_sampler = True

    def __init__(self, weights, means, std=0.5):
        super().__init__(2)
        self.weights = torch.tensor(weights, dtype=F64)
        self.means, self.std = torch.tensor(means, dtype=F64), std

    def component_log_prob(self, x):
        sq = ((x[..., None, :] - self.means) ** 2).sum(-1)
        return self.weights.log() - 0.5 * sq / self.std**2 - math.log(2 * math.pi * self.std**2)

    def assign(self, x):
        return self.component_log_prob(x).argmax(-1)

    def _log_prob(self, x):
        return torch.logsumexp(self.component_log_prob(x), -1)

    def _log_Z(self):
        return 0.0

    def _sample(self, n, generator):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return self.means[k] + self.std * torch.randn(n, 2, generator=generator, dtype=F64)


MIX = dict(weights=[0.5, 0.3, 0.2], means=[[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])


def test_mode_weights_of_exact_samples_within_5_se():
    t, n = TinyMixture(**MIX), 5000
    x = t.sample(n, gen(9))
    w_hat, w = M.mode_weights(x, t), t.weights
    se = (w * (1 - w) / n).sqrt()
    assert ((w_hat - w).abs() <= Z5 * se).all()
    err = M.mode_weight_error(x, t)
    assert err.max_pp <= Z5 * 100 * se.max().item() and err.mean_pp <= err.max_pp
    h = torch.exp(-(w * w.log()).sum()).item() / 3
    assert M.mode_coverage(x, t) == pytest.approx(h, abs=0.02)


def test_mode_metrics_of_a_collapsed_sampler():
    t = TinyMixture(**MIX)
    x = torch.tensor(MIX["means"][1], dtype=F64).expand(100, 2)  # all in component 1
    assert M.mode_weights(x, t).tolist() == [0.0, 1.0, 0.0]
    err = M.mode_weight_error(x, t)
    assert err.max_pp == pytest.approx(70.0) and err.mean_pp == pytest.approx(140.0 / 3)
    assert M.mode_coverage(x, t) == pytest.approx(1.0 / 3)


@pytest.mark.parametrize("n_drawn", [100, 50])
def test_mode_weight_floor_is_the_multinomial_error(n_drawn: int):
    # two equal modes: max_k 100 |w_hat_k - 1/2| = (100 / n) |B - n/2|, B ~ Binomial(n, 1/2),
    # and E|B - n/2| = (n/2) C(n, n/2) / 2^n for even n; the floor of 50 samples must miss n = 100
    n, repeats = 100, 400
    max_floor, mean_floor = M.mode_weight_error_floor(torch.tensor([1.0, 1.0]), n_drawn,
                                                      repeats, gen(3))
    expected = 100 / n * (n / 2) * math.comb(n, n // 2) / 2**n
    ok = abs(max_floor.mean - expected) < Z5 * max_floor.std / math.sqrt(repeats)
    assert ok == (n_drawn == n), (max_floor, expected)
    assert mean_floor.mean == pytest.approx(max_floor.mean)  # both modes err alike


def test_noise_floor_uses_disjoint_subsets_of_the_stated_sizes():
    ref = torch.arange(100.0).unsqueeze(1)
    overlap = lambda a, b: float(len(set(a[:, 0].tolist()) & set(b[:, 0].tolist())))  # noqa: E731
    floor = M.noise_floor(overlap, ref, 40, 60, n_repeats=4, generator=gen(10))
    assert floor == (0.0, 0.0, 40, 60)
    with pytest.raises(ValueError, match="n_a \\+ n_b"):
        M.noise_floor(overlap, ref, 60, 60)
    x = torch.randn(400, 2, generator=gen(11), dtype=F64)
    w2_floor = M.noise_floor(M.x_w2, x, 100, 100, n_repeats=3, generator=gen(12))
    assert 0.0 < w2_floor.mean < 1.0 and w2_floor.std > 0.0


# ---- evaluate ----------------------------------------------------------------------------------
class TinyCluster(Target):
    """3 particles in 2-D: sum over pairs (r - 1)^2 + 1e-3 r^-12, confined by 0.5 |x|^2 (E = inf
    when two particles coincide)."""

    name = "tiny-cluster"
    n_particles, spatial_dim = 3, 2

    def __init__(self):
        super().__init__(6)

    def _log_prob(self, x):
        r = M.interatomic_distances(x, 3, 2)
        return -(((r - 1) ** 2 + 1e-3 * r**-12).sum(-1) + 0.5 * (x**2).sum(-1))


def _check_keys(out, expected):
    assert set(expected) <= set(out), sorted(set(expected) - set(out))
    for key, value in out.items():
        assert isinstance(value, float) and value == value, key  # floats, never NaN
        assert key.removesuffix("_std").removesuffix("_floor") in CONVENTIONS, key


def test_evaluate_on_a_mixture_with_weights_and_exact_reference():
    t = TinyMixture(**MIX)
    x = t.sample(300, gen(13))
    x[0] = float("nan")
    log_w = torch.zeros(300, dtype=F64)  # a perfect proposal
    out = evaluate(x, t, log_w=log_w, max_ot=150, n_repeats=2, generator=gen(14))
    keys = ["n_samples", "n_nonfinite_samples", "n_nonfinite_energy", "ess", "log_Z",
            "log_Z_error", "mode_weight_error_max_pp", "mode_coverage", "n_eval", "x_w2",
            "x_w2_floor", "x_w2_floor_std", "energy_w1", "energy_w2", "energy_w2_floor"]
    _check_keys(out, keys)
    assert out["n_nonfinite_samples"] == 1.0 and out["n_eval"] == 150.0
    assert out["ess"] == pytest.approx(300.0) and out["log_Z_error"] == pytest.approx(0.0)
    assert out["x_w2"] < 3 * out["x_w2_floor"]  # exact samples sit at the noise floor
    assert t.counter.n_energy == 0, "evaluation must not be charged to the sampler's budget"


def test_evaluate_on_a_particle_system_counts_infinite_energies():
    t = TinyCluster()
    g = gen(15)
    ref = torch.randn(120, 6, generator=g, dtype=F64)
    x = torch.randn(50, 6, generator=g, dtype=F64)
    x[3] = 0.0  # all particles at one point: E = inf
    out = evaluate(x, t, reference=ref, max_ot=60, max_symmetry=20, n_repeats=2, generator=g)
    keys = ["n_nonfinite_energy", "x_w2", "energy_w2", "distance_w2", "distance_tv",
            "distance_out_of_range", "symmetry_w2", "n_eval_symmetry", "symmetry_w2_floor",
            "distance_tv_floor"]
    _check_keys(out, keys)
    assert out["n_nonfinite_energy"] == 1.0 and out["n_eval"] == 50.0
    assert out["n_eval_symmetry"] == 20.0 and out["symmetry_w2"] <= out["x_w2"] + 1e-9
    assert all(np.isfinite(v) for v in out.values())
    assert t.counter.n_energy == 0


# ---- published reference data (skipped when ../shared/data is absent) ---------------------------
DATA = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize(
    "name,n_particles,d,published", [("DW4", 4, 2, 1.78), ("LJ13-1000", 13, 3, 3.53)]
)
def test_raw_w2_noise_floor_matches_the_published_value(name, n_particles, d, published):
    path = DATA / f"test_split_{name}.npy"
    if not path.exists():
        pytest.skip(f"{path} not available")
    x = torch.as_tensor(np.load(path), dtype=F64)
    x = (x.reshape(len(x), n_particles, d) - x.reshape(len(x), n_particles, d).mean(1, True))
    floor = M.noise_floor(M.x_w2, x.reshape(len(x), -1), 1000, 1000, 1, gen(16))
    assert floor.mean == pytest.approx(published, rel=0.03)  # replica std is about 1 %
