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
- D-alanine: improper (N, C, CB, CA) of the wrong sign (`targets.molecules.is_d_alanine`).
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
