"""Metrics for alanine dipeptide: Ramachandran (phi, psi) histograms, the phi > 0 population
and the D-alanine fraction (../shared/REFERENCE.md, "Alanine dipeptide").

Conventions (stated in every output key):
- torsions in radians on [-pi, pi), phi = dihedral(4, 6, 8, 14), psi = dihedral(6, 8, 14, 16);
- the Ramachandran histogram has `n_bins` x `n_bins` equal bins over [-pi, pi)^2, phi on the
  first axis, psi on the second (TRADE evaluates 30 x 30);
- `ramachandran_kl` is KL(reference || samples) = sum_b p_b log(p_b / q_b) in nats, with
  q = (counts + eps) / (n + eps * n_bins^2) so that an empty sample bin costs a finite amount
  (eps = 1e-6 pseudo-counts by default; the reference side is not smoothed);
- `ramachandran_tv` = 0.5 sum_b |p_b - q_b| (no smoothing), in [0, 1];
- the phi > 0 population (alpha_L / C7ax) with a standard error from the Kish effective sample
  size, SE = sqrt(p (1 - p) / ESS) (i.i.d. or importance-weighted samples), or for correlated
  frames (MD, MCMC) from batch means over `n_blocks` contiguous blocks,
  SE = sd(block means) / sqrt(n_blocks) (Flegal & Jones, Ann. Statist. 38, 1034 (2010));
- D-alanine: improper (N, C, CB, CA) of the wrong sign (`targets.molecules.is_d_alanine`);
- per-torsion W1 on the circle (`circular_w1`), in radians: the shorter way round counts;
- the free energy along phi, F_b = -log p_b - min_b(-log p_b) in kT over `n_bins` equal bins,
  with SE(F_b) = SE(p_b) / p_b, SE(p_b) by batch means over `n_blocks` contiguous blocks.
Samples may carry log-weights (self-normalised importance sampling, weights in float64).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from boltzkit.targets.molecules.geometry import backbone_torsions, is_d_alanine

N_BINS = 30
PSEUDO_COUNT = 1e-6


class Population(NamedTuple):
    """A population fraction with its standard error and the effective sample size used."""

    fraction: float
    se: float
    ess: float


def torsions(x: Tensor) -> Tensor:
    """(phi, psi) `[n, 2]` in radians of Cartesian configurations `[n, 66]` (nm)."""
    return backbone_torsions(x.detach()).to(torch.float64)


def _weights(n: int, log_w: Tensor | None, device: torch.device) -> Tensor:
    """Normalised float64 weights (uniform when log_w is None)."""
    if log_w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    if log_w.shape != (n,):
        raise ValueError(f"log_w must have shape [{n}], got {tuple(log_w.shape)}")
    return torch.softmax(log_w.detach().to(torch.float64), 0)


def ramachandran_histogram(phi_psi: Tensor, n_bins: int = N_BINS,
                           log_w: Tensor | None = None) -> Tensor:
    """Probabilities `[n_bins, n_bins]` (phi on axis 0, psi on axis 1) of torsions `[n, 2]`.

    Angles are wrapped into [-pi, pi) first, so +pi falls in the first bin like -pi.
    """
    if phi_psi.ndim != 2 or phi_psi.shape[1] != 2:
        raise ValueError(f"expected (phi, psi) of shape [n, 2], got {tuple(phi_psi.shape)}")
    wrapped = torch.remainder(phi_psi.to(torch.float64) + math.pi, 2 * math.pi)
    index = (wrapped * (n_bins / (2 * math.pi))).long().clamp_(0, n_bins - 1)
    flat = index[:, 0] * n_bins + index[:, 1]
    w = _weights(len(phi_psi), log_w, phi_psi.device)
    hist = torch.zeros(n_bins * n_bins, dtype=torch.float64, device=phi_psi.device)
    return hist.index_add_(0, flat, w).view(n_bins, n_bins)


def histogram_kl(p: Tensor, q: Tensor, n_q: float, eps: float = PSEUDO_COUNT) -> float:
    """KL(p || q~) in nats with q~ = (n_q q + eps) / (n_q + eps K), K the number of bins."""
    q_smooth = (n_q * q + eps) / (n_q + eps * q.numel())
    support = p > 0
    return float((p[support] * (p[support] / q_smooth[support]).log()).sum())


def ramachandran_kl(samples: Tensor, reference: Tensor, n_bins: int = N_BINS,
                    log_w: Tensor | None = None, eps: float = PSEUDO_COUNT) -> float:
    """KL(reference || samples) of the (phi, psi) histograms, nats; inputs are torsions `[n, 2]`.

    With weights, n_q is the samples' Kish ESS (the pseudo-count scale).
    """
    p = ramachandran_histogram(reference, n_bins)
    q = ramachandran_histogram(samples, n_bins, log_w)
    return histogram_kl(p, q, kish_ess(_weights(len(samples), log_w, samples.device)), eps)


def ramachandran_tv(samples: Tensor, reference: Tensor, n_bins: int = N_BINS,
                    log_w: Tensor | None = None) -> float:
    """0.5 sum |p - q| of the (phi, psi) histograms; inputs are torsions `[n, 2]`."""
    p = ramachandran_histogram(reference, n_bins)
    q = ramachandran_histogram(samples, n_bins, log_w)
    return float(0.5 * (p - q).abs().sum())


def kish_ess(w: Tensor) -> float:
    """(sum w)^2 / sum w^2 of non-negative weights."""
    return float(w.sum() ** 2 / w.square().sum())


def weighted_fraction(indicator: Tensor, log_w: Tensor | None = None) -> Population:
    """The (weighted) mean of a boolean `[n]` with SE sqrt(p (1 - p) / ESS)."""
    w = _weights(len(indicator), log_w, indicator.device)
    p = float((w * indicator.to(torch.float64)).sum())
    ess = kish_ess(w)
    return Population(p, math.sqrt(max(p * (1 - p), 0.0) / ess), ess)


def batch_means_fraction(indicator: Tensor, n_blocks: int = 20) -> Population:
    """The mean of a boolean time series `[n]` with the batch-means SE over `n_blocks`
    contiguous blocks (the tail that does not fill a block is dropped from the SE only); `ess`
    is p (1 - p) / SE^2, the effective number of independent frames."""
    if not 2 <= n_blocks <= len(indicator):
        raise ValueError(f"n_blocks must be in [2, {len(indicator)}], got {n_blocks}")
    values = indicator.to(torch.float64)
    size = len(values) // n_blocks
    means = values[: size * n_blocks].view(n_blocks, size).mean(1)
    p = float(values.mean())
    se = float(means.std() / math.sqrt(n_blocks))
    return Population(p, se, p * (1 - p) / se**2 if se > 0 else float(len(values)))


def phi_positive_population(phi_psi: Tensor, log_w: Tensor | None = None,
                            n_blocks: int | None = None) -> Population:
    """The fraction with phi > 0 (the alpha_L / C7ax region) and its SE: i.i.d./importance
    weighted by default, batch means over `n_blocks` for a correlated series (no weights)."""
    if n_blocks is not None:
        if log_w is not None:
            raise ValueError("batch means take an unweighted time series; drop log_w")
        return batch_means_fraction(phi_psi[:, 0] > 0, n_blocks)
    return weighted_fraction(phi_psi[:, 0] > 0, log_w)


def d_alanine_fraction(x: Tensor, log_w: Tensor | None = None) -> Population:
    """The fraction of D-alanine configurations among Cartesian samples `[n, 66]`."""
    return weighted_fraction(is_d_alanine(x.detach()), log_w)


def circular_w1(a: Tensor, b: Tensor) -> float:
    """W1 between two samples of angles `[n]`, `[m]` (radians) on the circle of length 2 pi.

    W1 = min_c int_{-pi}^{pi} |F(t) - G(t) - c| dt, F and G the empirical CDFs on [-pi, pi),
    the minimiser c a weighted median of F - G (Rabin, Delon & Gousseau, J. Math. Imaging
    Vis. 41, 147 (2011)).
    """
    a, b = (torch.remainder(v.detach().to(torch.float64) + math.pi, 2 * math.pi) - math.pi
            for v in (a, b))
    points = torch.cat([a, b]).sort().values
    edges = torch.cat([points.new_tensor([-math.pi]), points, points.new_tensor([math.pi])])
    lengths = edges.diff()
    cdf = [torch.searchsorted(v.sort().values, edges[:-1], right=True) / len(v) for v in (a, b)]
    d = cdf[0] - cdf[1]
    order = d.argsort()
    weight = lengths[order].cumsum(0)
    c = d[order][torch.searchsorted(weight, weight[-1] / 2).clamp(max=len(d) - 1)]
    return float((lengths * (d - c).abs()).sum())


def torsion_comparisons() -> dict[str, object]:
    """name -> metric(samples, reference) on torsions `[n, 2]`, for `evaluation.evaluate`
    (each gets a noise floor from reference splits there)."""
    return {
        f"ramachandran_kl_ref_to_samples_{N_BINS}x{N_BINS}_nats": ramachandran_kl,
        f"ramachandran_tv_{N_BINS}x{N_BINS}": ramachandran_tv,
        "phi_w1_circular_rad": lambda a, b: circular_w1(a[:, 0], b[:, 0]),
        "psi_w1_circular_rad": lambda a, b: circular_w1(a[:, 1], b[:, 1]),
    }


def population_metrics(samples: Tensor, reference: Tensor | None,
                       log_w: Tensor | None = None) -> dict[str, float]:
    """phi > 0 population of samples `[n, 66]` with its i.i.d./Kish SE (too small for
    correlated MCMC output), the reference's (batch means over 10 blocks: MD frames are a time
    series) and the D-alanine fraction."""
    pop = phi_positive_population(torsions(samples), log_w)
    out = {"phi_positive_fraction": pop.fraction, "phi_positive_fraction_se": pop.se,
           "d_alanine_fraction": d_alanine_fraction(samples, log_w).fraction}
    if reference is not None and len(reference) >= 10:
        ref = phi_positive_population(torsions(reference), n_blocks=10)
        out.update(phi_positive_fraction_reference=ref.fraction,
                   phi_positive_fraction_reference_se_batch_means=ref.se)
    return out


class Profile(NamedTuple):
    """Free energy along an angle: bin centres `[n_bins]` (rad), F `[n_bins]` (kT, min 0;
    inf where a bin is empty) and its SE `[n_bins]` (nan where undefined)."""

    centres: Tensor
    free_energy: Tensor
    se: Tensor


def free_energy_profile(angle: Tensor, n_bins: int = 36, n_blocks: int = 10) -> Profile:
    """F_b = -log p_b - min(-log p) of angles `[n]` with batch-means SEs (module docstring)."""
    n_blocks = max(2, min(n_blocks, len(angle)))
    wrapped = torch.remainder(angle.detach().to(torch.float64) + math.pi, 2 * math.pi)
    index = (wrapped * (n_bins / (2 * math.pi))).long().clamp_(0, n_bins - 1)
    size = len(index) // n_blocks
    blocks = torch.nn.functional.one_hot(index[: size * n_blocks], n_bins).to(torch.float64)
    block_p = blocks.view(n_blocks, size, n_bins).mean(1)
    p = torch.bincount(index, minlength=n_bins).to(torch.float64) / len(index)
    se_p = block_p.std(0) / math.sqrt(n_blocks)
    f = -p.log()
    f = f - f[torch.isfinite(f)].min()
    se = torch.where(p > 0, se_p / p, torch.full_like(p, float("nan")))
    centres = (torch.arange(n_bins, dtype=torch.float64) + 0.5) * (2 * math.pi / n_bins) - math.pi
    return Profile(centres, f, se)


def molecular_metrics(samples: Tensor, reference: Tensor, log_w: Tensor | None = None,
                      n_bins: int = N_BINS) -> dict[str, float]:
    """The Ramachandran KL/TV, phi > 0 populations and D-alanine fraction of Cartesian samples
    `[n, 66]` against a Cartesian reference `[m, 66]` (keys name the conventions)."""
    s, r = torsions(samples), torsions(reference)
    pop, pop_ref = phi_positive_population(s, log_w), phi_positive_population(r)
    chiral = d_alanine_fraction(samples, log_w)
    return {
        f"ramachandran_kl_ref_to_samples_{n_bins}x{n_bins}_nats": ramachandran_kl(
            s, r, n_bins, log_w),
        f"ramachandran_tv_{n_bins}x{n_bins}": ramachandran_tv(s, r, n_bins, log_w),
        "phi_positive_fraction": pop.fraction, "phi_positive_fraction_se": pop.se,
        "phi_positive_fraction_reference": pop_ref.fraction,
        "phi_positive_fraction_reference_se_iid": pop_ref.se,
        "d_alanine_fraction": chiral.fraction, "ess": pop.ess,
    }
