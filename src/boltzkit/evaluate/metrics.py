"""Sample-quality metrics: W1 / W2 (exact OT), sliced W2, energy W1 / W2, MMD, mode weights.

Conventions (../shared/REFERENCE.md, "Metrics"); every docstring states its own:

- Distances between sample sets are computed exactly (POT, float64) with uniform weights unless
  weights are given; "W2" always means the square-rooted distance, never W2^2.
- Energies are the target's reduced energies E/kT (`Target.energy`). Energy metrics take finite
  energies only: exclude non-finite ones with `finite_energies`, which also counts them.
- Particle-system metrics (interatomic distances, distance W2 / TV, symmetry-aware W2) live in
  `boltzkit.evaluate.particle_metrics` and are re-exported here; `boltzkit.evaluate.evaluation`
  collects everything into one flat dict whose keys are explained by its `CONVENTIONS`.

>>> import torch
>>> energy_w2(torch.zeros(5), torch.full((5,), 3.0))  # W2, not W2^2 = 9
3.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import ot
import torch
from torch import Tensor

from boltzkit.evaluate.particle_metrics import (
    DistanceTV,
    distance_tv,
    distance_w2,
    interatomic_distances,
    symmetry_cost,
    symmetry_w2,
)

_NUM_ITER_MAX = 10**7  # POT's default (1e5) stops early on 2000 x 2000 problems


def _np64(x: Tensor) -> np.ndarray:
    return torch.as_tensor(x).detach().to("cpu", torch.float64).numpy()


def _weights(w: Tensor | None, n: int) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    arr = _np64(w).reshape(-1)
    if arr.shape[0] != n or (arr < 0).any() or not arr.sum() > 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    return arr / arr.sum()


def _check_sets(a: Tensor, b: Tensor) -> tuple[np.ndarray, np.ndarray]:
    a_, b_ = _np64(a), _np64(b)
    if a_.ndim != 2 or b_.ndim != 2 or a_.shape[1] != b_.shape[1] or not len(a_) or not len(b_):
        raise ValueError(f"expected non-empty [n, dim] sets, got {a_.shape} and {b_.shape}")
    if not (np.isfinite(a_).all() and np.isfinite(b_).all()):
        raise ValueError("samples have non-finite coordinates; exclude (and count) them first")
    return a_, b_


def x_w2(a: Tensor, b: Tensor, weights_a: Tensor | None = None,
         weights_b: Tensor | None = None) -> float:
    """Exact W2 between two sample sets in raw coordinates, square-rooted.

    W2 = sqrt(min_pi sum_ij pi_ij |a_i - b_j|^2), solved by POT `ot.emd2` on the squared Euclidean
    cost; uniform weights 1/n_a, 1/n_b unless given (then normalised). Memory O(n_a n_b), time
    roughly cubic: 2000 vs 2000 takes a few seconds. Report n_a and n_b with the value.

    Args:
        a, b: samples `[n_a, dim]`, `[n_b, dim]`.
        weights_a, weights_b: optional non-negative weights `[n_a]`, `[n_b]`.
    """
    a_, b_ = _check_sets(a, b)
    cost = ot.dist(a_, b_, metric="sqeuclidean")
    w2_sq = ot.emd2(_weights(weights_a, len(a_)), _weights(weights_b, len(b_)), cost,
                    numItermax=_NUM_ITER_MAX)
    return math.sqrt(max(float(w2_sq), 0.0))


def x_w1(a: Tensor, b: Tensor, weights_a: Tensor | None = None,
         weights_b: Tensor | None = None) -> float:
    """Exact W1 between two sample sets: min_pi sum_ij pi_ij |a_i - b_j| (POT `ot.emd2`, Euclidean
    cost); weights, sizes and cost as in `x_w2`."""
    a_, b_ = _check_sets(a, b)
    cost = ot.dist(a_, b_, metric="euclidean")
    return float(ot.emd2(_weights(weights_a, len(a_)), _weights(weights_b, len(b_)), cost,
                         numItermax=_NUM_ITER_MAX))


def sliced_w2(a: Tensor, b: Tensor, n_projections: int = 128,
              generator: torch.Generator | None = None) -> float:
    """Monte Carlo sliced W2: sqrt(mean_k W2^2(a theta_k, b theta_k)), theta_k uniform on S^{d-1}.

    Each 1-D W2^2 is exact (quantile coupling, POT `ot.wasserstein_1d`, uniform weights), the
    directions are `n_projections` normalised Gaussian draws from `generator`. Sliced W2 <= W2.

    Args:
        a, b: samples `[n_a, dim]`, `[n_b, dim]`.
    """
    a_, b_ = _check_sets(a, b)
    theta = torch.randn(n_projections, a_.shape[1], generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=-1, keepdim=True)).numpy()
    w2_sq = ot.wasserstein_1d(a_ @ theta.T, b_ @ theta.T, p=2)
    return math.sqrt(max(float(np.mean(w2_sq)), 0.0))


def finite_energies(energies: Tensor) -> tuple[Tensor, int]:
    """(the finite energies, the number of non-finite ones excluded)."""
    e = torch.as_tensor(energies).detach().reshape(-1)
    keep = torch.isfinite(e)
    return e[keep], int((~keep).sum())


def _energies_np(e: Tensor, name: str) -> np.ndarray:
    arr = _np64(e).reshape(-1)
    if not arr.size or not np.isfinite(arr).all():
        raise ValueError(f"{name} must be non-empty and finite; use finite_energies() first")
    return arr


def energy_w2(energies_a: Tensor, energies_b: Tensor) -> float:
    """Exact 1-D W2 between two sets of (reduced) energies, square-rooted.

    W2 = sqrt(emd2_1d(E_a, E_b)), uniform weights, any sizes. POT's `emd2_1d` returns W2 squared;
    the iDEM code logs that square as "energy W2", a flaw this function does not repeat.

    Args:
        energies_a, energies_b: finite energies `[n_a]`, `[n_b]`.
    """
    a = _energies_np(energies_a, "energies_a")
    b = _energies_np(energies_b, "energies_b")
    return math.sqrt(max(float(ot.emd2_1d(a, b)), 0.0))


def energy_w1(energies_a: Tensor, energies_b: Tensor) -> float:
    """Exact 1-D W1 between two sets of (reduced) energies: integral |F_a^-1 - F_b^-1| (uniform
    weights, any sizes; POT `emd2_1d` with the |x - y| cost)."""
    a = _energies_np(energies_a, "energies_a")
    b = _energies_np(energies_b, "energies_b")
    return float(ot.emd2_1d(a, b, metric="euclidean"))


class MMD(NamedTuple):
    """Unbiased squared MMD estimate (may be slightly negative) and the bandwidth used."""

    mmd2: float
    bandwidth: float


def mmd(a: Tensor, b: Tensor, bandwidth: float | None = None) -> MMD:
    """Unbiased estimate of MMD^2 with the Gaussian kernel k(x, y) = exp(-|x - y|^2 / (2 h^2)).

    MMD^2_u = mean_{i!=j} k(a_i, a_j) + mean_{i!=j} k(b_i, b_j) - 2 mean_{i,j} k(a_i, b_j)
    (Gretton et al. 2012, eq. 3). Without a bandwidth, h is the median heuristic: the median
    Euclidean distance between distinct points of the pooled sample. Memory O((n_a + n_b)^2).

    Args:
        a, b: samples `[n_a, dim]`, `[n_b, dim]`, each with at least 2 points.
    """
    a_, b_ = (torch.as_tensor(s) for s in _check_sets(a, b))
    na, nb = len(a_), len(b_)
    if na < 2 or nb < 2:
        raise ValueError("the unbiased MMD needs at least 2 points per set")
    d2 = torch.cdist(torch.cat([a_, b_]), torch.cat([a_, b_])).square()
    if bandwidth is None:
        off = ~torch.eye(na + nb, dtype=torch.bool)
        bandwidth = d2[off].median().sqrt().item()
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    k = torch.exp(-d2 / (2.0 * bandwidth**2))
    kaa, kbb, kab = k[:na, :na], k[na:, na:], k[:na, na:]
    within_a = (kaa.sum() - kaa.trace()) / (na * (na - 1))
    within_b = (kbb.sum() - kbb.trace()) / (nb * (nb - 1))
    mmd2 = within_a + within_b - 2.0 * kab.mean()
    return MMD(mmd2.item(), float(bandwidth))


# ---- mixtures ----------------------------------------------------------------------------------
def is_mixture(target: object) -> bool:
    """Whether `target` exposes `weights` and `assign` or `component_log_prob` (GaussianMixture)."""
    return hasattr(target, "weights") and (
        hasattr(target, "assign") or hasattr(target, "component_log_prob")
    )


def mode_assignments(x: Tensor, target: object) -> Tensor:
    """Index of the most likely component of each sample, `[n]` (long).

    Uses `target.assign(x)` when present, else argmax_k of `target.component_log_prob(x)`
    (`[n, K]`, log w_k + log N_k(x): the component with the largest posterior responsibility).
    """
    if hasattr(target, "assign"):
        return torch.as_tensor(target.assign(x), device=x.device).long()
    return target.component_log_prob(x).argmax(dim=-1)


def mode_weights(x: Tensor, target: object) -> Tensor:
    """Empirical component weights: the fraction of samples assigned to each component, `[K]`.

    Assignment is to the most likely component (`mode_assignments`).
    """
    k = len(target.weights)
    labels = mode_assignments(x, target).reshape(-1).cpu()
    return torch.bincount(labels, minlength=k).to(torch.float64) / max(labels.numel(), 1)


class ModeWeightError(NamedTuple):
    """Absolute errors of the empirical mode weights, in percentage points."""

    max_pp: float
    mean_pp: float


def mode_weight_error(x: Tensor, target: object) -> ModeWeightError:
    """max_k and mean_k of 100 |w_hat_k - w_k| (percentage points), w = `target.weights`."""
    truth = torch.as_tensor(target.weights).detach().to("cpu", torch.float64)
    err = 100.0 * (mode_weights(x, target) - truth / truth.sum()).abs()
    return ModeWeightError(err.max().item(), err.mean().item())


def mode_weight_error_floor(weights: Tensor, n: int, n_repeats: int = 200,
                            generator: torch.Generator | None = None
                            ) -> tuple[NoiseFloor, NoiseFloor]:
    """The `mode_weight_error` (max_pp, mean_pp) of n exact samples: mean and std over
    n_repeats multinomial draws of the n mode labels from the true weights w (the error's
    floor; for a max over K modes of multinomial noise it is about 100 sqrt(w (1 - w) / n)
    times the expected maximum of K half-normals)."""
    w = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    w = w / w.sum()
    counts = torch.stack([torch.bincount(torch.multinomial(w, n, True, generator=generator),
                                         minlength=len(w)) for _ in range(n_repeats)])
    err = 100.0 * (counts.double() / n - w).abs()
    tails = err.max(1).values, err.mean(1)
    return tuple(NoiseFloor(t.mean().item(), t.std().item() if n_repeats > 1 else 0.0, n, n)
                 for t in tails)  # type: ignore[return-value]


def mode_coverage(x: Tensor, target: object) -> float:
    """Entropic mode coverage exp(H(w_hat)) / K in (0, 1], H(w) = -sum_k w_k log w_k (0 log 0 = 0).

    exp(H) is the effective number of modes visited: 1 / K for a sampler stuck in one mode, 1 for
    equal weights on all K. For unequal true weights the exact value is exp(H(w)) / K < 1.
    """
    w = mode_weights(x, target)
    h = -(w * torch.where(w > 0, w.log(), torch.zeros_like(w))).sum()
    return h.exp().item() / len(w)


# ---- noise floor -------------------------------------------------------------------------------
class NoiseFloor(NamedTuple):
    """A metric between two disjoint reference subsets: mean and std over repeats, and sizes."""

    mean: float
    std: float
    n_a: int
    n_b: int


def noise_floor(
    metric: Callable[[Tensor, Tensor], float], reference: Tensor, n_a: int, n_b: int,
    n_repeats: int = 5, generator: torch.Generator | None = None,
) -> NoiseFloor:
    """The value a perfect sampler would get: metric(R_a, R_b) for disjoint random subsets of the
    reference of sizes n_a and n_b (drawn without replacement), mean and std (divisor
    n_repeats - 1; 0 for one repeat) over `n_repeats` independent splits.

    Args:
        metric: f(samples, reference) -> float, as compared on the sampler's output.
        reference: reference rows `[N, ...]` (coordinates, energies or distances); needs
            N >= n_a + n_b.
    """
    n = len(reference)
    if n_a + n_b > n or min(n_a, n_b) < 1:
        raise ValueError(f"need n_a + n_b <= {n} reference rows, got {n_a} + {n_b}")
    values = []
    for _ in range(n_repeats):
        perm = torch.randperm(n, generator=generator).to(reference.device)
        values.append(metric(reference[perm[:n_a]], reference[perm[n_a : n_a + n_b]]))
    v = torch.tensor(values, dtype=torch.float64)
    std = v.std().item() if n_repeats > 1 else 0.0
    return NoiseFloor(v.mean().item(), std, n_a, n_b)


__all__ = [
    "MMD",
    "DistanceTV",
    "ModeWeightError",
    "NoiseFloor",
    "distance_tv",
    "distance_w2",
    "energy_w1",
    "energy_w2",
    "finite_energies",
    "interatomic_distances",
    "is_mixture",
    "mmd",
    "mode_assignments",
    "mode_coverage",
    "mode_weight_error",
    "mode_weight_error_floor",
    "mode_weights",
    "noise_floor",
    "sliced_w2",
    "symmetry_cost",
    "symmetry_w2",
    "x_w1",
    "x_w2",
]
